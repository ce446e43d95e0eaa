"""A fleet run's outcome as people and scripts read it: one row per board x model, and a
summary per model and board kind (same arch, CPU model and onnxruntime version): the median,
min and max across those boards of the p50 latency (a benchmark) or of each metric (an
evaluation), and their spread (max - min, and as a percentage of the median).

    {"run": ID, "rows": [{"device", "model", "state", "result_id", "latency_ms", "metrics",
                          "error", "job_id"}], "summary": [...]}
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

KIND_KEYS = ("arch", "cpu_model", "onnxruntime_version")
EVAL_SKIP = ("samples", "load_ms", "elapsed_s")


@dataclass(frozen=True)
class RowResult:
    device: str
    model: str                      # the file name, else the short hash
    sha256: str
    state: str                      # done, failed, interrupted, pending, skipped
    job_id: Optional[str] = None
    result_id: Optional[str] = None
    latency_ms: Optional[float] = None          # p50 of a benchmark
    metrics: Optional[Mapping[str, Any]] = None
    error: str = ""
    kind: Optional[Mapping[str, str]] = None    # the board's arch, cpu_model, onnxruntime

    @property
    def ok(self) -> bool:
        return self.state == "done"

    def as_json(self) -> Dict[str, Any]:
        return {"device": self.device, "model": self.model, "state": self.state,
                "result_id": self.result_id, "latency_ms": self.latency_ms,
                "metrics": dict(self.metrics) if self.metrics is not None else None,
                "error": self.error or None, "job_id": self.job_id}


def board_kind(agent: Any) -> Optional[Dict[str, str]]:
    """What makes boards comparable: arch, CPU model, onnxruntime version."""
    if agent is None:
        return None
    return {k: str(getattr(agent, k, "") or "") for k in KIND_KEYS}


def row_values(result: Any) -> Tuple[Optional[float], Optional[Dict[str, Any]]]:
    """(p50 latency, metrics) of a typed board result (None, None when there is none)."""
    from edgetune.protos.messages import BenchmarkResult, EvaluateResult

    if isinstance(result, BenchmarkResult):
        lat = result.latency
        latency = {k: getattr(lat, f"{k}_ms") for k in
                   ("min", "mean", "std", "p50", "p90", "p95", "p99", "max")}
        return lat.p50_ms, {"latency_ms": latency, "throughput_ips": result.throughput_ips}
    if isinstance(result, EvaluateResult):
        return None, {**result.metric_dict(), "samples": result.samples}
    return None, None


def record_values(record: Any) -> Tuple[Optional[float], Optional[Dict[str, Any]],
                                        Optional[Dict[str, str]]]:
    """(p50 latency, metrics, board kind) of a stored result record (``fleet show``)."""
    metrics = dict(record.metrics)
    kind = {k: str(record.device.get(k) or "") for k in KIND_KEYS}
    if record.kind == "bench":
        latency = dict(metrics.get("latency_ms") or {})
        return (latency.get("p50"), {"latency_ms": latency,
                                     "throughput_ips": metrics.get("throughput_ips")}, kind)
    return None, {k: v for k, v in metrics.items() if k not in ("load_ms", "elapsed_s")}, kind


def _values(row: RowResult) -> Dict[str, float]:
    """What the summary aggregates of a row: latency_p50_ms, or each numeric metric."""
    if row.latency_ms is not None:
        return {"latency_p50_ms": float(row.latency_ms)}
    out = {}
    for key, value in (row.metrics or {}).items():
        if key not in EVAL_SKIP and isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(value)
    return out


def summarize(rows: Sequence[RowResult]) -> List[Dict[str, Any]]:
    """One entry per model x board kind x measured value, over the rows that succeeded."""
    groups: Dict[Tuple[str, Tuple[str, ...], str], List[Tuple[str, float]]] = {}
    names: Dict[str, str] = {}
    for row in rows:
        if not row.ok or row.kind is None:
            continue
        names.setdefault(row.sha256, row.model)
        kind = tuple(row.kind.get(k, "") for k in KIND_KEYS)
        for metric, value in _values(row).items():
            groups.setdefault((row.sha256, kind, metric), []).append((row.device, value))
    out = []
    for (sha, kind, metric), found in groups.items():
        values = [v for _, v in found]
        median = statistics.median(values)
        spread = max(values) - min(values)
        out.append({"model": names[sha], "sha256": sha, **dict(zip(KIND_KEYS, kind)),
                    "metric": metric, "boards": len(values),
                    "devices": [d for d, _ in found], "median": median, "min": min(values),
                    "max": max(values), "spread": spread,
                    "spread_pct": 100.0 * spread / median if median else None})
    return out


def document(run_id: str, rows: Sequence[RowResult]) -> Dict[str, Any]:
    return {"run": run_id, "rows": [r.as_json() for r in rows], "summary": summarize(rows)}


def exit_status(rows: Sequence[RowResult]) -> int:
    from edgetune.exitcodes import ExitStatus

    if rows and all(r.ok for r in rows):
        return int(ExitStatus.OK)
    if any(r.ok for r in rows):
        return int(ExitStatus.SOME_FAILED)
    return int(ExitStatus.NONE_SUCCEEDED)


# ---------------------------------------------------------------------- tables

def _num(value: Optional[float], digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _metrics_text(metrics: Optional[Mapping[str, Any]]) -> str:
    if not metrics:
        return "-"
    return " ".join(f"{k}={v:.4g}" for k, v in metrics.items()
                    if isinstance(v, (int, float)) and k not in EVAL_SKIP)


def rows_table(title: str, rows: Sequence[RowResult]) -> Any:
    from rich.text import Text

    from edgetune.host.render import plain_table

    bench = any(r.latency_ms is not None for r in rows) or \
        not any(r.metrics for r in rows)
    styles = {"done": "green", "failed": "red"}
    table_rows = []
    for r in rows:
        value = _num(r.latency_ms) if bench else _metrics_text(r.metrics)
        table_rows.append((r.device, r.model, Text(r.state, style=styles.get(r.state, "yellow")),
                           value, r.result_id or "-", r.error or ""))
    return plain_table(title, ("board", "model", "state", "p50 ms" if bench else "metrics",
                               "result", "reason"), table_rows,
                       right=("p50 ms",) if bench else ())


def summary_table(summary: Sequence[Mapping[str, Any]]) -> Any:
    from edgetune.host.render import plain_table

    table_rows = []
    for s in summary:
        digits = 3 if s["metric"] == "latency_p50_ms" else 4
        table_rows.append((s["model"], s["metric"], s["arch"] or "-", s["cpu_model"] or "-",
                           s["onnxruntime_version"] or "-", str(s["boards"]),
                           _num(s["median"], digits), _num(s["min"], digits),
                           _num(s["max"], digits),
                           "-" if s["spread_pct"] is None else f"{s['spread_pct']:.1f}%"))
    return plain_table("per board kind", ("model", "value", "arch", "cpu", "onnxruntime",
                                          "boards", "median", "min", "max", "spread"),
                       table_rows, right=("boards", "median", "min", "max", "spread"))
