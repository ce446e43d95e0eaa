"""From a typed board result to a result record, and the recorder the board session calls.

The board-session layer (``edgetune.host.board.BoardSession``) hands every typed result to its
``recorder``; ``StoreRecorder`` turns it into a ``Record`` with its provenance (the board and
what it said about itself, the options, the board's state, this host) and adds it to the
results store. A job recorded once is not recorded again (``jobs show`` of a recorded job).
"""

from __future__ import annotations

import json
import math
import socket
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from edgetune import __version__
from edgetune.host.results.records import ModelRef, Record
from edgetune.protos.messages import BenchmarkResult, EvaluateResult

_AGENT_FIELDS = ("agent_name", "hostname", "os", "arch", "cpu_model", "cpu_cores",
                 "memory_total_bytes", "python_version", "onnxruntime_version", "agent_version")


def host_doc() -> Dict[str, Any]:
    return {"edgetune_version": __version__, "hostname": socket.gethostname()}


def device_doc(board: Any) -> Dict[str, Any]:
    """The board as a record keeps it: its name and address, and what its agent reported
    (``agent_name`` is the CN of the agent's certificate)."""
    doc: Dict[str, Any] = {"name": board.name, "address": board.address}
    agent = board.agent
    if agent is not None:
        doc.update({k: getattr(agent, k) for k in _AGENT_FIELDS})
        doc["providers"] = list(agent.available_providers)
    return doc


def model_ref(model: str, sha256: str, path: Optional[Path] = None) -> ModelRef:
    """The model as named on the command line; its local file (``path``, else ``model`` when
    that is a file) adds its size and, when it was made by ``edgetune quantize``, the sha256
    of the model it was made from."""
    path = path if path is not None else Path(model)
    if not path.is_file():
        return ModelRef(sha256=sha256, name=model if len(model) != 64 else "")
    return ModelRef(sha256=sha256, name=path.name, size_bytes=path.stat().st_size,
                    parent_sha256=parent_sha256(path, sha256))


def parent_sha256(path: Path, sha256: str) -> Optional[str]:
    """The input model's sha256 from OUT.record.json beside a quantized model, if that record
    describes this very file (its output_sha256 matches)."""
    from edgetune.host.quant.settings import output_paths

    record_path = output_paths(path)[1]
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("output_sha256") != sha256:
        return None
    parent = record.get("input_sha256")
    return parent if isinstance(parent, str) and len(parent) == 64 else None


def signed_device(doc: Dict[str, Any], signed: Any) -> Dict[str, Any]:
    """``doc`` with the agent's name and versions as the agent signed them for this job (they
    describe the measurement even when the board was upgraded before the host asked)."""
    if signed is None:
        return doc
    from edgetune.certs.signing import SignatureError, decode_payload
    try:
        agent = decode_payload(signed.payload).get("agent") or {}
    except (SignatureError, AttributeError):
        return doc                      # ``results verify`` says what is wrong with it
    doc = dict(doc)
    if agent.get("name"):
        doc["agent_name"] = agent["name"]
    for key in ("agent_version", "onnxruntime_version", "python_version"):
        if agent.get(key):
            doc[key] = agent[key]
    return doc


def _known(value: float) -> Optional[float]:
    """The board reports 0 for what it cannot read (no cpufreq, no thermal zone)."""
    return value if value and math.isfinite(value) else None


def record_from_run(run: Any, *, label: str = "", run_id: Optional[str] = None,
                    kind: Optional[str] = None) -> Optional[Record]:
    """The record of a successful board run (None for a job that did not succeed: it
    measured nothing)."""
    from edgetune.host.render import LATENCY_KEYS, options_record

    result = run.result
    if result is None:
        return None
    signed = getattr(run, "signed", None)
    common: Dict[str, Any] = dict(
        model=model_ref(run.model, run.model_sha256, run.model_path),
        options=options_record(run.options),
        device=signed_device(device_doc(run.board), signed), host=host_doc(), job_id=run.job_id,
        label=label or run.label, run_id=run_id, signature=signed)
    if isinstance(result, BenchmarkResult):
        lat = result.latency
        metrics = {"latency_ms": {k: getattr(lat, f"{k}_ms") for k in LATENCY_KEYS},
                   "throughput_ips": result.throughput_ips, "load_ms": result.load_ms,
                   "first_run_ms": result.first_run_ms, "peak_rss_mb": result.peak_rss_mb,
                   "iterations": result.iterations, "warmup": result.warmup,
                   "measured_s": result.measured_s, "providers": list(result.providers)}
        if result.provider_nodes:            # where the nodes ran (agents that say)
            metrics["provider_nodes"] = dict(result.provider_nodes)
        return Record(kind=kind or "bench", metrics=metrics,
                      board_state={"cpu_freq_mhz": _known(result.cpu_freq_mhz),
                                   "temperature_c": _known(result.temperature_c),
                                   "load_avg_1m": (result.load_avg[0] if result.load_avg
                                                   else None)},
                      samples_ms=tuple(result.samples_ms) or None, **common)
    if isinstance(result, EvaluateResult):
        metrics = {**result.metric_dict(), "samples": result.samples,
                   "load_ms": result.load_ms, "elapsed_s": result.elapsed_s}
        return Record(kind=kind or "eval", metrics=metrics,
                      dataset_sha256=run.options.dataset_sha256 or None, **common)
    return None


class StoreRecorder:
    """A ``BoardSession`` recorder writing to a ``ResultsStore``: ``ids`` maps each recorded
    (board, job id) to its result id, so a command can print ``result_id``."""

    def __init__(self, store: Any, *, label: str = "", run_id: Optional[str] = None,
                 kind: Optional[str] = None) -> None:
        self._store = store           # a ResultsStore, or a Future of one still opening
        self.label = label
        self.run_id = run_id
        self.kind = kind
        self.ids: Dict[Tuple[str, str], str] = {}
        self.comparisons: Dict[Tuple[str, str], Tuple[Any, Any]] = {}
        self._notes: Dict[Tuple[str, str], Dict[str, Any]] = {}
        self._new: set = set()        # (board, job id) submitted by this command: not recorded yet

    @property
    def store(self) -> Any:
        """The store (waiting for it if it is still opening; its open's error is raised here)."""
        if isinstance(self._store, Future):
            self._store = self._store.result()
        return self._store

    def ready(self) -> None:
        """Wait until the store is open: a board session calls this before it submits a job,
        so that a database that cannot be used stops the command before a measurement."""
        self.store  # noqa: B018 - for its wait and its error

    def submitted(self, board: str, job_id: str) -> None:
        """The board session submitted this job just now (its record cannot exist yet)."""
        self._new.add((board, job_id))

    def annotate(self, board: str, job_id: str, *, run_id: Optional[str] = None,
                 options: Optional[Dict[str, Any]] = None,
                 board_state: Optional[Dict[str, Any]] = None) -> None:
        """What the command knows of a job beyond the board's result, added to its record
        when it is recorded (``bench --repeat``: the set's run_id, the repetition in
        ``options``, the board-state flags in ``board_state``)."""
        self._notes[(board, job_id)] = {"run_id": run_id, "options": options or {},
                                        "board_state": board_state or {}}

    def __call__(self, run: Any) -> None:
        key = (run.board.name, run.job_id)
        if key in self.ids:
            return
        if run.kind == "compare":
            self._record_comparison(key, run)
            return
        existing = None if key in self._new else self.store.find_job(run.board.name, run.job_id)
        if existing is not None:
            self.ids[key] = existing
            return
        record = record_from_run(run, label=self.label, run_id=self.run_id, kind=self.kind)
        note = self._notes.pop(key, None)
        if record is not None and note is not None:
            record = replace(record, run_id=note["run_id"] or record.run_id,
                             options={**record.options, **note["options"]},
                             board_state={**record.board_state, **note["board_state"]})
        if record is not None:
            self.ids[key] = self.store.add(record).id

    def _record_comparison(self, key: Tuple[str, str], run: Any) -> None:
        """A comparison job: its two records (one per measured model, kind ``compare``, one
        run_id) added together; ``ids[key]`` is B's (it holds the change), ``comparisons[key]``
        both stored records."""
        from edgetune.host.results.compare import comparison_records

        stored = [] if key in self._new else self.store.job_records(*key)
        if stored:                      # seen again (jobs watch): the records it has
            self.ids[key] = stored[-1].id
            self.comparisons[key] = (stored[0], stored[-1])
            return
        from ulid import ULID

        records = comparison_records(run, label=self.label, run_id=self.run_id or str(ULID()))
        if records is not None:
            a, b = self.store.add_many(list(records))
            self.ids[key] = b.id
            self.comparisons[key] = (a, b)

    def result_id(self, run: Any) -> Optional[str]:
        return self.ids.get((run.board.name, run.job_id))
