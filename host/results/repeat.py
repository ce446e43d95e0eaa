"""Repeated measurements (``bench --repeat N``): the run-to-run spread of p50 and the
repetitions whose board state changed.

Each repetition is its own job on the board (a fresh onnxruntime session). Board state is what
the agent read from /sys at the end of each job (``cpu_freq_mhz``, ``temperature_c``; unknown
where the board does not expose it). A repetition is flagged when, against the *first*
repetition of its set (the reference the others are compared with):

- ``cpu_freq_drop``: the CPU frequency fell by more than ``FREQ_DROP_PCT`` percent, or
- ``temperature_rise``: the temperature rose by more than ``TEMP_RISE_C`` degrees Celsius.

Those two thresholds are the only ones; docs/results.md states them. A value the board does
not report never flags anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

FREQ_DROP_PCT = 5.0        # flag: CPU frequency more than 5 % below the first repetition's
TEMP_RISE_C = 5.0          # flag: temperature more than 5 degC above the first repetition's

FREQ_FLAG = "cpu_freq_drop"
TEMP_FLAG = "temperature_rise"


def _known(value: Any) -> Optional[float]:
    """A board-state value, None when unknown (the board reports 0 for what it cannot read)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None


def state_flags(reference: Mapping[str, Any], state: Mapping[str, Any], *,
                freq_drop_pct: float = FREQ_DROP_PCT,
                temp_rise_c: float = TEMP_RISE_C) -> Dict[str, Any]:
    """How ``state`` moved from ``reference`` (both ``{"cpu_freq_mhz", "temperature_c"}``):
    ``{"flags": [...], "cpu_freq_change_pct": x|None, "temperature_change_c": y|None}``."""
    flags: List[str] = []
    f0, f1 = _known(reference.get("cpu_freq_mhz")), _known(state.get("cpu_freq_mhz"))
    t0, t1 = _known(reference.get("temperature_c")), _known(state.get("temperature_c"))
    freq_pct = None if f0 is None or f1 is None else 100.0 * (f1 - f0) / f0
    temp_delta = None if t0 is None or t1 is None else t1 - t0
    if freq_pct is not None and -freq_pct > freq_drop_pct:
        flags.append(FREQ_FLAG)
    if temp_delta is not None and temp_delta > temp_rise_c:
        flags.append(TEMP_FLAG)
    return {"flags": flags,
            "cpu_freq_change_pct": None if freq_pct is None else round(freq_pct, 2),
            "temperature_change_c": None if temp_delta is None else round(temp_delta, 2)}


def describe_flags(change: Mapping[str, Any]) -> str:
    """One phrase for a person: "CPU frequency -12.5 %, temperature +7.0 degC"."""
    parts = []
    if FREQ_FLAG in change.get("flags", ()):
        parts.append(f"CPU frequency {change['cpu_freq_change_pct']:+.1f} %")
    if TEMP_FLAG in change.get("flags", ()):
        parts.append(f"temperature {change['temperature_change_c']:+.1f} degC")
    return ", ".join(parts)


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), q in 0..1."""
    pos = (len(sorted_values) - 1) * q
    low = int(pos)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low)


@dataclass(frozen=True)
class Spread:
    """The median of per-repetition values and how far apart the repetitions were."""

    n: int
    median: float
    min: float
    max: float
    q1: float
    q3: float

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    @property
    def range_pct(self) -> float:
        """(max - min) as a percentage of the median."""
        return 100.0 * (self.max - self.min) / self.median if self.median else 0.0

    def as_json(self) -> Dict[str, float]:
        return {"median": self.median, "min": self.min, "max": self.max, "q1": self.q1,
                "q3": self.q3, "iqr": self.iqr, "range_pct": round(self.range_pct, 2)}


def spread(values: Sequence[float]) -> Optional[Spread]:
    data = sorted(float(v) for v in values)
    if not data:
        return None
    return Spread(n=len(data), median=_quantile(data, 0.5), min=data[0], max=data[-1],
                  q1=_quantile(data, 0.25), q3=_quantile(data, 0.75))


@dataclass
class RepeatSet:
    """The repetitions of one model on one board, in the order they ran: each one's p50 (None
    when the job failed), board state and state change against the first."""

    model: str
    sha256: str
    device: str
    run_id: Optional[str] = None
    p50_ms: List[Optional[float]] = field(default_factory=list)
    states: List[Dict[str, Any]] = field(default_factory=list)
    changes: List[Dict[str, Any]] = field(default_factory=list)
    result_ids: List[Optional[str]] = field(default_factory=list)

    def add(self, p50_ms: Optional[float], state: Mapping[str, Any]) -> Dict[str, Any]:
        """Record the next repetition; its change against the first successful one."""
        reference = next((s for p, s in zip(self.p50_ms, self.states) if p is not None), None)
        change = (state_flags(reference, state) if reference is not None and p50_ms is not None
                  else {"flags": [], "cpu_freq_change_pct": None, "temperature_change_c": None})
        self.p50_ms.append(p50_ms)
        self.states.append(dict(state))
        self.changes.append(change)
        return change

    @property
    def flagged(self) -> List[int]:
        """1-based indices of the repetitions whose board state changed."""
        return [i + 1 for i, c in enumerate(self.changes) if c["flags"]]

    def summary(self) -> Dict[str, Any]:
        p50 = spread([p for p in self.p50_ms if p is not None])
        return {"model": self.model, "sha256": self.sha256, "device": self.device,
                "run_id": self.run_id, "repeats": len(self.p50_ms),
                "succeeded": sum(p is not None for p in self.p50_ms),
                "p50_ms": p50.as_json() if p50 else None,
                "p50_ms_each": list(self.p50_ms),
                "flagged": self.flagged,
                "thresholds": thresholds(),
                "result_ids": list(self.result_ids)}


def thresholds() -> Dict[str, float]:
    return {"cpu_freq_drop_pct": FREQ_DROP_PCT, "temperature_rise_c": TEMP_RISE_C}

