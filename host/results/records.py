"""A result record: one measured model, with everything that produced the measurement.

Frozen dataclasses, built by the board-session layer (or by ``quantize``) and written by the
store; the JSON document of a record (``Record.as_json``) is what ``results show --json`` and
``results export --format json`` print, and ``Record.from_json`` reads it back.

A record made from a signed board result keeps the agent's signature (``signature``, a
``SignedResult``): the JSON document then holds ``signature`` (base64), ``signed_payload``
(the exact signed bytes, ASCII text), ``signature_algorithm`` and ``agent_cert_pem``, all
null for an unsigned record. ``edgetune.host.results.verify`` checks them.
"""

from __future__ import annotations

import base64
import datetime as _dt
from dataclasses import dataclass, field, replace
from typing import Any, Dict, Mapping, Optional, Tuple

from edgetune.protos.messages import SignedResult

KINDS = ("bench", "eval", "quantize", "compare", "demo")


@dataclass(frozen=True)
class ModelRef:
    """The measured model: its hash names it; the file name is only a label."""

    sha256: str
    name: str = ""
    size_bytes: Optional[int] = None
    parent_sha256: Optional[str] = None      # the float model it was quantized from

    def as_json(self) -> Dict[str, Any]:
        return {"sha256": self.sha256, "name": self.name, "size_bytes": self.size_bytes,
                "parent_sha256": self.parent_sha256}


@dataclass(frozen=True)
class Record:
    """One measurement. ``id`` and ``created`` are given by the store when it is added."""

    kind: str
    model: ModelRef
    metrics: Mapping[str, Any]
    options: Mapping[str, Any] = field(default_factory=dict)
    device: Mapping[str, Any] = field(default_factory=dict)       # name, address, arch, ...
    board_state: Mapping[str, Any] = field(default_factory=dict)  # cpu_freq_mhz, temperature_c
    host: Mapping[str, Any] = field(default_factory=dict)         # edgetune_version, hostname
    dataset_sha256: Optional[str] = None
    label: str = ""
    run_id: Optional[str] = None
    job_id: Optional[str] = None
    samples_ms: Optional[Tuple[float, ...]] = None
    id: str = ""
    created: Optional[_dt.datetime] = None
    signature: Optional[SignedResult] = None       # the agent's, when it signs

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown record kind {self.kind!r}; one of {', '.join(KINDS)}")

    @property
    def device_name(self) -> Optional[str]:
        name = self.device.get("name")
        return str(name) if name else None

    def stored(self, record_id: str, created: _dt.datetime) -> "Record":
        return replace(self, id=record_id, created=created)

    def as_json(self, *, samples: bool = True, signature: Optional[bool] = None) -> Dict[str, Any]:
        """The record's JSON document. ``samples=False`` (a listing) leaves out the raw
        samples and, unless ``signature`` says otherwise, the signature keys."""
        doc: Dict[str, Any] = {
            "id": self.id, "kind": self.kind,
            "created": self.created.isoformat() if self.created else None,
            "label": self.label, "run_id": self.run_id,
            "model": self.model.as_json(), "dataset_sha256": self.dataset_sha256,
            "device": dict(self.device), "board_state": dict(self.board_state),
            "host": dict(self.host), "options": dict(self.options),
            "metrics": dict(self.metrics), "job_id": self.job_id,
        }
        if samples and self.samples_ms is not None:
            doc["samples_ms"] = list(self.samples_ms)
        if samples if signature is None else signature:
            doc.update(signature_json(self.signature))
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "Record":
        model = doc["model"]
        created = doc.get("created")
        samples = doc.get("samples_ms")
        return cls(
            kind=doc["kind"],
            model=ModelRef(sha256=model["sha256"], name=model.get("name") or "",
                           size_bytes=model.get("size_bytes"),
                           parent_sha256=model.get("parent_sha256")),
            metrics=dict(doc.get("metrics") or {}), options=dict(doc.get("options") or {}),
            device=dict(doc.get("device") or {}), board_state=dict(doc.get("board_state") or {}),
            host=dict(doc.get("host") or {}), dataset_sha256=doc.get("dataset_sha256"),
            label=doc.get("label") or "", run_id=doc.get("run_id"), job_id=doc.get("job_id"),
            samples_ms=tuple(samples) if samples is not None else None,
            id=doc.get("id") or "",
            created=_dt.datetime.fromisoformat(created) if created else None,
            signature=signature_from_json(doc))


SIGNATURE_KEYS = ("signature", "signed_payload", "signature_algorithm", "agent_cert_pem")


def signature_json(signed: Optional[SignedResult]) -> Dict[str, Any]:
    """The signature keys of a record's JSON document (all None when unsigned)."""
    if signed is None:
        return dict.fromkeys(SIGNATURE_KEYS)
    return {"signature": base64.b64encode(signed.signature).decode("ascii"),
            "signed_payload": signed.payload.decode("utf-8", "surrogateescape"),
            "signature_algorithm": signed.algorithm, "agent_cert_pem": signed.agent_cert_pem}


def signature_from_json(doc: Mapping[str, Any]) -> Optional[SignedResult]:
    """The signature of a record's JSON document, None when it has none; ValueError when
    it is malformed (not base64, a key missing)."""
    if not any(doc.get(k) for k in SIGNATURE_KEYS):
        return None
    missing = [k for k in SIGNATURE_KEYS if not isinstance(doc.get(k), str) or not doc.get(k)]
    if missing:
        raise ValueError(f"the signature is incomplete: {', '.join(missing)} missing")
    try:
        signature = base64.b64decode(doc["signature"], validate=True)
    except ValueError:
        raise ValueError("the signature is not base64") from None
    return SignedResult(payload=doc["signed_payload"].encode("utf-8", "surrogateescape"),
                        signature=signature, algorithm=doc["signature_algorithm"],
                        agent_cert_pem=doc["agent_cert_pem"])
