"""The agent signs what it measured: a succeeded job's ``SignedResult``.

The payload (``edgetune.certs.signing.encode_payload``: ``edgetune-result-v1\\n`` + canonical
JSON) of a job is the document ``result_document`` builds::

    {"agent": {"agent_version", "cert_sha256", "name", "onnxruntime_version", "python_version"},
     "dataset_sha256": "...", "model_sha256": "...",    # a comparison: model_a/b_sha256
     "job": {"id", "kind", "state", "label", "client", "created_unix", "started_unix",
             "finished_unix", "spec": {...every option...}, "result": {...every number...}}}

``spec`` and ``result`` are the ``edgetune.protos.messages`` dicts of the job (what
``GetJob`` returns, as JSON). Raw latency samples are covered by their digest: wherever the
result holds a ``samples_ms`` list (a benchmark; each session of a comparison) the document
holds ``samples_ms_count`` and ``samples_ms_sha256`` (``certs.signing.samples_digest``) in
its place, so a signature stays small while any change to a sample breaks it.

The key is the agent's own TLS key (RSA or ECDSA P-256), loaded once with its identity.
Board-side code (Python 3.9).
"""

from __future__ import annotations

import logging
import platform
from typing import Any, Dict, Mapping

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from edgetune.certs.identity import Identity, common_name_of
from edgetune.certs.signing import (algorithm_for, cert_sha256, encode_payload, samples_digest,
                                    sign)
from edgetune.protos.messages import Job, SignedResult

log = logging.getLogger("edgetune.agent.signing")

VERSION_KEYS = ("agent_version", "onnxruntime_version", "python_version")


def result_document(job: Job, agent: Mapping[str, Any]) -> Dict[str, Any]:
    """What the agent signs about ``job`` (see the module's docstring); ``agent`` holds the
    agent's name, certificate sha256 and versions."""
    result = None if job.result is None else _digested(job.result.as_dict())
    spec = job.spec.as_dict()
    hashes = {k: v for k, v in spec.items() if k.endswith("sha256") and isinstance(v, str)}
    hashes.setdefault("dataset_sha256", "")
    return {
        "agent": dict(agent),
        **hashes,
        "job": {"id": job.id, "kind": job.kind, "state": job.state.value, "label": job.label,
                "client": job.client, "created_unix": job.created_unix,
                "started_unix": job.started_unix, "finished_unix": job.finished_unix,
                "spec": spec, "result": result},
    }


def _digested(value: Any) -> Any:
    """``value`` with every ``samples_ms`` list replaced by its count and digest."""
    if isinstance(value, dict):
        out = {k: _digested(v) for k, v in value.items() if k != "samples_ms"}
        samples = value.get("samples_ms")
        if isinstance(samples, list):
            out["samples_ms_count"] = len(samples)
            out["samples_ms_sha256"] = samples_digest(samples)
        elif "samples_ms" in value:
            out["samples_ms"] = samples
        return out
    if isinstance(value, list):
        return [_digested(v) for v in value]
    return value


class ResultSigner:
    """Signs finished jobs with the agent's private key; ``cert_pem`` is its certificate."""

    def __init__(self, key: Any, cert_pem: bytes, versions: Mapping[str, str]) -> None:
        cert = x509.load_pem_x509_certificate(cert_pem)
        self.key = key
        self.algorithm = algorithm_for(key)          # refuses a key it cannot sign with
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
        self.agent: Dict[str, Any] = {"name": common_name_of(cert),
                                      "cert_sha256": cert_sha256(cert)}
        self.agent.update({k: str(versions.get(k, "")) for k in VERSION_KEYS})

    @classmethod
    def from_identity(cls, identity: Identity, versions: Mapping[str, str]) -> "ResultSigner":
        """The signer of an agent's loaded identity (its key is in memory, unencrypted)."""
        key = serialization.load_pem_private_key(identity.key_pem, password=None)
        values = dict(versions)
        values.setdefault("python_version", platform.python_version())
        return cls(key, identity.cert_pem, values)

    def sign(self, job: Job) -> SignedResult:
        payload = encode_payload(result_document(job, self.agent))
        signature, algorithm = sign(self.key, payload)
        return SignedResult(payload=payload, signature=signature, algorithm=algorithm,
                            agent_cert_pem=self.cert_pem)


__all__ = ["ResultSigner", "result_document"]
