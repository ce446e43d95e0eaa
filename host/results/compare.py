"""A/B comparisons: the change of B against A, the confidence interval of the latency ratio
over a comparison's rounds, the sentence that says whether the difference is real, the
comparison table (``edgetune compare`` and ``edgetune demo`` print it), and the two records
a comparison job leaves in the results store.

The statistics (docs/results.md, "How a comparison is judged"): each round ``i`` gives the
ratio ``r_i = p50(B) / p50(A)`` of two fresh sessions run back to back. On ``x_i = ln r_i``
the interval is Student's t: ``mean(x) +- t(0.975, n-1) * sd(x) / sqrt(n)`` (``sd`` with
n-1), mapped back with ``exp``; the ratio shown is the geometric mean ``exp(mean(x))``. The
difference is ``significant`` when the interval excludes 1.0. With one round there is no
interval (None). Pure functions: no I/O, no onnxruntime.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from edgetune.host.results.records import Record

LEVEL = 0.95
# Student's t, two-sided 95 % (the 0.975 quantile), for 1..30 degrees of freedom.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (a table to 30, then
    the Cornish-Fisher expansion, within 0.001 of the exact value)."""
    if df < 1:
        raise ValueError("a t quantile needs at least one degree of freedom")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


@dataclass(frozen=True)
class RatioInterval:
    """The latency ratio B/A over a comparison's rounds: the geometric mean and its 95 %
    interval (``low``/``high`` None with fewer than two rounds)."""

    ratio: float
    low: Optional[float]
    high: Optional[float]
    rounds: int

    @property
    def significant(self) -> bool:
        """The interval excludes 1.0: B's latency differs from A's beyond the noise."""
        return self.low is not None and self.high is not None and (self.low > 1 or self.high < 1)

    def as_list(self) -> Optional[List[float]]:
        return None if self.low is None or self.high is None else [self.low, self.high]


def ratio_interval(ratios: Sequence[float]) -> RatioInterval:
    """The geometric mean of ``ratios`` and its 95 % t interval on the log scale."""
    if not ratios or any(not (r > 0 and math.isfinite(r)) for r in ratios):
        raise ValueError(f"ratios must be positive finite numbers (got {list(ratios)})")
    logs = [math.log(r) for r in ratios]
    mean = statistics.fmean(logs)
    if len(logs) < 2:
        return RatioInterval(math.exp(mean), None, None, len(logs))
    half = t975(len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
    return RatioInterval(math.exp(mean), math.exp(mean - half), math.exp(mean + half),
                         len(logs))


def round_ratios(result: Any) -> List[float]:
    """p50(B) / p50(A) of each round of a ``CompareResult``."""
    return [r.b.latency.p50_ms / r.a.latency.p50_ms for r in result.rounds]


def verdict(interval: RatioInterval) -> str:
    """"B is 0.31x A, 95% CI 0.29-0.33x", or "within noise (95% CI 0.97-1.04x)"."""
    if interval.low is None or interval.high is None:
        return (f"B is {interval.ratio:.2f}x A (one round: no confidence interval; run two "
                "or more)")
    ci = f"95% CI {interval.low:.2f}-{interval.high:.2f}x"
    if interval.significant:
        return f"B is {interval.ratio:.2f}x A, {ci}"
    return f"within noise ({ci})"


# ---------------------------------------------------------------------- the change

def _number(value: Any) -> Optional[float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = float(value)
        return value if math.isfinite(value) else None
    return None


def metric(record: Record, name: str) -> Optional[float]:
    return _number(record.metrics.get(name))


def latency(record: Record, key: str) -> Optional[float]:
    lat = record.metrics.get("latency_ms")
    return _number(lat.get(key)) if isinstance(lat, Mapping) else None


def size(record: Record) -> Optional[float]:
    return _number(record.model.size_bytes)


def _ratio(before: Optional[float], after: Optional[float]) -> Optional[float]:
    if before is None or after is None or before == 0:
        return None
    return after / before


def change(a: Record, b: Record,
           interval: Optional[RatioInterval] = None) -> Dict[str, Any]:
    """B against A: ratios for size, latency and throughput; percentage points for accuracy;
    with a comparison's ``interval``, the p50 ratio is its geometric mean over the rounds,
    with ``latency_p50_ratio_ci`` and ``significant`` (None without one)."""
    def pts(name: str) -> Optional[float]:
        x, y = metric(a, name), metric(b, name)
        return None if x is None or y is None else 100.0 * (y - x)

    cos_a, cos_b = metric(a, "cosine"), metric(b, "cosine")
    return {
        "size_ratio": _ratio(size(a), size(b)),
        "latency_p50_ratio": (interval.ratio if interval is not None
                              else _ratio(latency(a, "p50"), latency(b, "p50"))),
        "latency_p50_ratio_ci": interval.as_list() if interval is not None else None,
        "significant": interval.significant if interval is not None else None,
        "latency_p90_ratio": _ratio(latency(a, "p90"), latency(b, "p90")),
        "throughput_ratio": _ratio(metric(a, "throughput_ips"), metric(b, "throughput_ips")),
        "top1_delta_pts": pts("top1"),
        "top5_delta_pts": pts("top5"),
        "cosine_delta": None if cos_a is None or cos_b is None else cos_b - cos_a,
    }


# ---------------------------------------------------------------------- formatting

def fixed(value: Optional[float], digits: int, suffix: str = "", sign: bool = False) -> str:
    """``value`` with ``digits`` decimals; "-" when unknown; never "-0.00" (a change that
    rounds to 0 shows as +0)."""
    if value is None or not math.isfinite(value):
        return "-"
    value = round(value, digits) + 0.0
    return f"{value:{'+' if sign else ''}.{digits}f}{suffix}"


def ratio_text(ratio: Optional[float]) -> str:
    """"0.25x (-75%)"."""
    if ratio is None or not math.isfinite(ratio):
        return "-"
    return f"{ratio:.2f}x ({fixed(100 * (ratio - 1), 0, '%', sign=True)})"


def ms_text(value: Optional[float]) -> str:
    return "-" if value is None else fixed(value, 4 if abs(value) < 1 else 2)


def thousands(value: Optional[float]) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:,.0f}"


def percent(value: Optional[float]) -> str:
    return "-" if value is None else fixed(100 * value, 2, "%")


def _p50_change(c: Mapping[str, Any]) -> str:
    text = ratio_text(c["latency_p50_ratio"])
    ci = c.get("latency_p50_ratio_ci")
    return f"{text}, 95% CI {ci[0]:.2f}-{ci[1]:.2f}x" if ci else text


Cell = Callable[[Record], str]
# key: (title, the cell of one record, the change cell)
ROWS: Dict[str, Tuple[str, Cell, Callable[[Mapping[str, Any]], str]]] = {
    "size": ("size (KiB)", lambda r: fixed(None if size(r) is None else size(r) / 1024, 1),
             lambda c: ratio_text(c["size_ratio"])),
    "top1": ("top-1 accuracy", lambda r: percent(metric(r, "top1")),
             lambda c: fixed(c["top1_delta_pts"], 2, " pts", sign=True)),
    "cosine": ("fidelity: cosine vs reference", lambda r: fixed(metric(r, "cosine"), 4),
               lambda c: fixed(c["cosine_delta"], 4, sign=True)),
    "p50": ("p50 latency (ms)", lambda r: ms_text(latency(r, "p50")), _p50_change),
    "p90": ("p90 latency (ms)", lambda r: ms_text(latency(r, "p90")),
            lambda c: ratio_text(c["latency_p90_ratio"])),
    "throughput": ("throughput (inf/s)", lambda r: thousands(metric(r, "throughput_ips")),
                   lambda c: ratio_text(c["throughput_ratio"])),
}
COMPARE_ROWS = ("size", "top1", "cosine", "p50", "p90", "throughput")


def table_rows(a: Record, b: Record, c: Mapping[str, Any],
               rows: Sequence[str] = COMPARE_ROWS,
               titles: Optional[Mapping[str, str]] = None) -> List[Tuple[str, str, str, str]]:
    """The comparison as table rows: title, A, B, change (``titles`` renames rows)."""
    titles = titles or {}
    out = []
    for key in rows:
        title, cell, delta = ROWS[key]
        out.append((titles.get(key, title), cell(a), cell(b), delta(c)))
    return out


# ---------------------------------------------------------------------- records

def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def side_metrics(results: Sequence[Any], evaluation: Any) -> Dict[str, Any]:
    """One model's metrics over a comparison's rounds: each latency statistic, throughput,
    load and first-run time as the median over its sessions, iterations and measured time
    summed, each round's own numbers under ``rounds``, and the evaluation's metrics."""
    from edgetune.host.render import LATENCY_KEYS

    metrics: Dict[str, Any] = {
        "latency_ms": {k: _median([getattr(r.latency, f"{k}_ms") for r in results])
                       for k in LATENCY_KEYS},
        "throughput_ips": _median([r.throughput_ips for r in results]),
        "load_ms": _median([r.load_ms for r in results]),
        "first_run_ms": _median([r.first_run_ms for r in results]),
        "peak_rss_mb": max((r.peak_rss_mb for r in results), default=0.0),
        "iterations": sum(r.iterations for r in results),
        "warmup": results[0].warmup if results else 0,
        "measured_s": sum(r.measured_s for r in results),
        "providers": list(results[0].providers) if results else [],
        "rounds": [{"p50_ms": r.latency.p50_ms, "p90_ms": r.latency.p90_ms,
                    "mean_ms": r.latency.mean_ms, "throughput_ips": r.throughput_ips,
                    "iterations": r.iterations, "measured_s": r.measured_s,
                    "thermal_wait_s": r.thermal.waited_s if r.thermal else None}
                   for r in results],
    }
    if evaluation is not None:
        metrics.update(evaluation.metric_dict())
        metrics["samples"] = evaluation.samples
    return metrics


def board_state(results: Sequence[Any]) -> Dict[str, Any]:
    """The board's state over the sessions: the median CPU frequency, the highest
    temperature, and what thermal gating did (total wait, no sensor)."""
    freqs = [r.cpu_freq_mhz for r in results if r.cpu_freq_mhz]
    temps = [r.temperature_c for r in results if r.temperature_c]
    state: Dict[str, Any] = {"cpu_freq_mhz": _median(freqs) if freqs else None,
                             "temperature_c": max(temps) if temps else None}
    gates = [r.thermal for r in results if r.thermal is not None]
    if gates:
        state["thermal"] = {"max_temp_c": gates[0].max_temp_c,
                            "no_sensor": any(g.no_sensor for g in gates),
                            "waited_s": sum(g.waited_s for g in gates)}
    return state


def comparison_records(run: Any, *, label: str = "",
                       run_id: Optional[str] = None) -> Optional[Tuple[Record, Record]]:
    """The records of a successful comparison (``edgetune.host.board.ComparisonRun``): one
    per measured model, kind ``compare``, sharing ``run_id``; B's holds the change. Both keep
    the job's signature (``run.signed``): ``results verify`` rebuilds them from its payload
    with this same function."""
    from edgetune.host.render import options_record
    from edgetune.host.results.recording import device_doc, host_doc, model_ref, signed_device

    result = run.result
    if result is None:
        return None
    interval = ratio_interval(round_ratios(result))
    signed = getattr(run, "signed", None)        # the agent's signature covers both records
    common: Dict[str, Any] = dict(
        options=options_record(run.options), device=signed_device(device_doc(run.board), signed),
        host=host_doc(), job_id=run.job_id, label=label or run.label, run_id=run_id,
        dataset_sha256=run.options.dataset_sha256 or None, signature=signed)
    sides = {}
    for which, evaluation in (("a", result.evaluate_a), ("b", result.evaluate_b)):
        sessions = [getattr(r, which) for r in result.rounds]
        samples = tuple(s for r in sessions for s in r.samples_ms)
        sides[which] = Record(
            kind="compare", metrics=side_metrics(sessions, evaluation),
            model=model_ref(getattr(run, f"model_{which}"), getattr(run, f"model_{which}_sha256"),
                            getattr(run, f"model_{which}_path")),
            board_state=board_state(sessions), samples_ms=samples or None, **common)
    a, b = sides["a"], sides["b"]
    c = change(a, b, interval)
    a = _with(a, {"compare": {"role": "a", "other_sha256": b.model.sha256}})
    b = _with(b, {"compare": {"role": "b", "other_sha256": a.model.sha256,
                              "round_ratios": round_ratios(result), "change": c,
                              "verdict": verdict(interval)}})
    return a, b


def _with(record: Record, extra: Mapping[str, Any]) -> Record:
    from dataclasses import replace
    return replace(record, metrics={**record.metrics, **extra})


def comparison_json(a: Record, b: Record, c: Mapping[str, Any],
                    result_id: Optional[str]) -> Dict[str, Any]:
    """``edgetune compare --json``: both records, the change, the id of B's record."""
    return {"a": a.as_json(samples=False), "b": b.as_json(samples=False), "change": dict(c),
            "result_id": result_id}
