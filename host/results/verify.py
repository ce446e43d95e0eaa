"""Check a record's signature: by the agent, chained to the CA, and in agreement with the record.

``verify_record`` answers one of three verdicts:

- ``valid``: the signature over the signed bytes verifies with the agent certificate, that
  certificate is a board's (serverAuth, digitalSignature, not a CA), was issued by the CA and
  valid when it signed, the payload names that certificate, and every field the agent signed
  agrees with the record: the job id, the model and dataset sha256, the options, every metric
  and board-state value, the raw samples (by digest) and the agent's name and versions;
- ``unsigned``: a record from an agent that does not sign (or made on the PC, as quantize
  records are): nothing to check, not a failure;
- ``invalid``: anything else, each problem naming the record and the field.

The expected record fields are rebuilt from the signed payload by the same code that records a
board result (``recording.record_from_run``; for a comparison ``compare.comparison_records``,
whose two records, A's and B's, share one signature), so what is compared is exactly what is
recorded. A comparison record must name the model the board signed for its side (A or B), its
raw samples are checked session by session, and the fields the host computes from its own
files (``HOST_ONLY``: the size ratio of B's change) are listed as not signed.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from cryptography import x509

from edgetune.certs import signing
from edgetune.certs.signing import SignatureError
from edgetune.host.render import json_safe
from edgetune.host.results.records import Record

VALID, UNSIGNED, INVALID = "valid", "unsigned", "invalid"
_VERSIONS = ("agent_version", "onnxruntime_version", "python_version")
# Record fields of a kind made from what the host has, not the board: listed, not compared.
HOST_ONLY: Dict[str, Tuple[str, ...]] = {
    "compare": ("metrics.compare.change.size_ratio",),      # the local files' sizes
}
_DIGEST_KEYS = ("samples_ms_count", "samples_ms_sha256")


@dataclass(frozen=True)
class Verdict:
    record_id: str
    status: str                              # valid, unsigned, invalid
    problems: Tuple[str, ...] = ()           # for invalid: what failed, naming the field
    agent: str = ""                          # the signing certificate's CN
    algorithm: str = ""
    unsigned_fields: Tuple[str, ...] = ()    # record fields the host added (not signed)

    @property
    def ok(self) -> bool:
        return self.status != INVALID

    def as_json(self) -> Dict[str, Any]:
        return {"id": self.record_id, "status": self.status, "problems": list(self.problems),
                "agent": self.agent or None, "algorithm": self.algorithm or None,
                "unsigned_fields": list(self.unsigned_fields)}

    def describe(self) -> str:
        """One line for a person."""
        if self.status == VALID:
            extra = (f"; not signed: {', '.join(self.unsigned_fields)}"
                     if self.unsigned_fields else "")
            return (f"result {self.record_id}: valid, signed by agent {self.agent!r} "
                    f"({self.algorithm}){extra}")
        if self.status == UNSIGNED:
            return (f"result {self.record_id}: unsigned (made by an agent that does not sign, "
                    "or on this PC): nothing to check")
        return f"result {self.record_id}: FAILED: " + "; ".join(self.problems)


def verify_record(record: Record, cas: Sequence[x509.Certificate]) -> Verdict:
    """The verdict on ``record`` against the trusted CA certificates ``cas``."""
    rid = record.id or "(no id)"
    signed = record.signature
    if signed is None:
        return Verdict(rid, UNSIGNED)
    try:
        cert = signing.load_cert(signed.agent_cert_pem)
        signing.check_signature(cert, signed.payload, signed.signature, signed.algorithm)
        doc = signing.decode_payload(signed.payload)
        if not isinstance(doc, dict) or not isinstance(doc.get("job"), dict):
            raise SignatureError("the signed payload holds no job")
        finished = doc["job"].get("finished_unix")
        at = (dt.datetime.fromtimestamp(finished, dt.timezone.utc)
              if isinstance(finished, (int, float)) and finished > 0 else None)
        signing.check_agent_cert(cert, cas, at=at)
        agent = doc.get("agent") or {}
        if agent.get("cert_sha256") != signing.cert_sha256(cert):
            raise SignatureError("the signed payload names another agent certificate than the "
                                 "one stored with the record (field agent_cert_pem)")
    except SignatureError as exc:
        return Verdict(rid, INVALID, (str(exc),), algorithm=signed.algorithm)
    from edgetune.certs.identity import common_name_of
    name = common_name_of(cert)
    problems = []
    if agent.get("name") != name:
        problems.append(f"field agent name: the payload says {agent.get('name')!r}, the "
                        f"certificate {name!r}")
    mismatches, unsigned = compare(record, doc)
    problems += mismatches
    if problems:
        return Verdict(rid, INVALID, tuple(problems), agent=name, algorithm=signed.algorithm)
    return Verdict(rid, VALID, agent=name, algorithm=signed.algorithm,
                   unsigned_fields=tuple(unsigned))


# ---------------------------------------------------------------------- the signed fields

def expected_record(doc: Mapping[str, Any], record: Record) -> Optional[Record]:
    """The record the signed payload makes (through ``record_from_run``), or None for a kind
    of job whose record this version cannot rebuild."""
    from edgetune.host.board import BoardInfo, run_from_job
    from edgetune.host.results.recording import record_from_run
    from edgetune.protos.messages import Job

    job = dict(doc["job"])
    try:
        typed = Job.from_dict(dict(job, result=_floats(_undigested(job.get("result"))),
                                   signed=None))
        run = run_from_job(typed, record.model.name, BoardInfo(record.device_name or "", ""))
        if run.kind == "compare":
            from edgetune.host.results.compare import comparison_records
            records = comparison_records(run, run_id=record.run_id)
            if records is None:
                return None
            return records[1] if side_of(record, doc) == "b" else records[0]
        return record_from_run(run, kind=record.kind)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None


def side_of(record: Record, doc: Mapping[str, Any]) -> Optional[str]:
    """Which model of a signed comparison ``record`` is: "a" or "b" (its ``compare.role``,
    else the model sha256 it names), None for a job that is not a comparison or a record
    that names neither."""
    if "model_a_sha256" not in doc:
        return None
    info = record.metrics.get("compare")
    role = info.get("role") if isinstance(info, Mapping) else None
    if role in ("a", "b"):
        return role
    for side in ("a", "b"):
        if record.model.sha256 == doc.get(f"model_{side}_sha256"):
            return side
    return None


def compare(record: Record, doc: Mapping[str, Any]) -> Tuple[List[str], List[str]]:
    """(mismatches, unsigned fields) of ``record`` against the signed document ``doc``."""
    job = doc["job"]
    problems: List[str] = []

    def differ(name: str, stored: Any, signed_value: Any) -> None:
        problems.append(f"field {name}: the record says {_show(stored)}, the board signed "
                        f"{_show(signed_value)}")

    if record.job_id != job.get("id"):
        differ("job_id", record.job_id, job.get("id"))
    side = side_of(record, doc)
    if "model_a_sha256" in doc:                     # a comparison: the model of its side
        want_model = (doc.get(f"model_{side}_sha256") if side is not None
                      else [doc.get("model_a_sha256"), doc.get("model_b_sha256")])
        if record.model.sha256 != want_model:
            differ(f"model.sha256{f' (model {side.upper()})' if side else ''}",
                   record.model.sha256, want_model)
    elif record.model.sha256 != doc.get("model_sha256"):
        differ("model.sha256", record.model.sha256, doc.get("model_sha256"))
    if (record.dataset_sha256 or "") != (doc.get("dataset_sha256") or ""):
        differ("dataset_sha256", record.dataset_sha256, doc.get("dataset_sha256"))
    agent = doc.get("agent") or {}
    if record.device.get("agent_name") != agent.get("name"):
        differ("device.agent_name", record.device.get("agent_name"), agent.get("name"))
    for key in _VERSIONS:
        if key in record.device and record.device.get(key) != agent.get(key):
            differ(f"device.{key}", record.device.get(key), agent.get(key))
    result = job.get("result") or {}
    if record.samples_ms is not None:
        sets = _signed_samples(result, side, "model_a_sha256" in doc)
        if not sets or any(digest is None for _, digest in sets):
            problems.append("field samples_ms: the record has raw samples, the board signed none")
        elif not _same_samples(list(record.samples_ms), sets):
            count = sum(c for c, _ in sets if isinstance(c, int))
            problems.append(f"field samples_ms: the {len(record.samples_ms)} samples of the "
                            f"record are not the {count} the board signed")
    host_only = HOST_ONLY.get(record.kind, ())
    unsigned: List[str] = []
    expected = expected_record(doc, record)
    if expected is None:
        unsigned.append(f"metrics and options (a {job.get('kind')} job: this version cannot "
                        "rebuild its record to compare)")
        return problems, unsigned
    for part in ("metrics", "options", "board_state"):
        want = _stored(getattr(expected, part))
        have = _stored(getattr(record, part))
        for key in sorted(set(want) | set(have)):
            if key not in want:
                unsigned.append(f"{part}.{key}")
            elif key not in have:
                problems.append(f"field {part}.{key}: missing from the record (the board "
                                f"signed {_show(want[key])})")
            else:
                _diff(f"{part}.{key}", have[key], want[key], differ, host_only, unsigned)
    return problems, unsigned


def _diff(name: str, have: Any, want: Any, differ: Any,
          host_only: Sequence[str] = (), unsigned: Optional[List[str]] = None) -> None:
    if name in host_only:
        if unsigned is not None and have is not None:
            unsigned.append(name)
    elif isinstance(have, dict) and isinstance(want, dict):
        for key in sorted(set(have) | set(want)):
            _diff(f"{name}.{key}", have.get(key), want.get(key), differ, host_only, unsigned)
    elif have != want or type(have) is not type(want) and not _same_number(have, want):
        differ(name, have, want)


def _signed_samples(result: Mapping[str, Any], side: Optional[str],
                    comparison: bool) -> List[Tuple[Any, Any]]:
    """(count, digest) of each session whose samples a record of ``side`` holds, in the
    order it holds them: the job's one session, or side ``side`` of every comparison round."""
    if not comparison:
        sessions = [result]
    elif side is None:
        return []
    else:
        sessions = [r.get(side) if isinstance(r, Mapping) else None
                    for r in result.get("rounds") or []]
    return [(s.get("samples_ms_count"), s.get("samples_ms_sha256"))
            if isinstance(s, Mapping) else (None, None) for s in sessions]


def _same_samples(samples: List[float], sets: Sequence[Tuple[Any, Any]]) -> bool:
    counts = [c for c, _ in sets]
    if not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) != len(samples):
        return False
    start = 0
    for count, digest in sets:
        if signing.samples_digest(samples[start:start + count]) != digest:
            return False
        start += count
    return True


def _undigested(value: Any) -> Any:
    """A signed result without the samples' count and digest keys (its messages' fields)."""
    if isinstance(value, dict):
        return {k: _undigested(v) for k, v in value.items() if k not in _DIGEST_KEYS}
    if isinstance(value, list):
        return [_undigested(v) for v in value]
    return value


def _same_number(a: Any, b: Any) -> bool:
    numbers = (int, float)
    return (isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool)
            and not isinstance(b, bool) and a == b)


def _stored(value: Mapping[str, Any]) -> Dict[str, Any]:
    """``value`` as the database gives it back: JSON (NaN as null, tuples as lists)."""
    return json.loads(json.dumps(json_safe(dict(value))))


def _floats(value: Any) -> Any:
    """Canonical JSON's "NaN"/"Infinity" strings back to floats."""
    specials = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}
    if isinstance(value, str) and value in specials:
        return specials[value]
    if isinstance(value, dict):
        return {k: _floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_floats(v) for v in value]
    return value


def _show(value: Any) -> str:
    text = json.dumps(json_safe(value)) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


__all__ = ["HOST_ONLY", "INVALID", "UNSIGNED", "VALID", "Verdict", "compare", "expected_record",
           "side_of", "verify_record"]
