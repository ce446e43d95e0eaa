"""Perf-based fallback (``quantize --max-drop X --fallback-by latency --device NAME``).

The accuracy-driven fallback raises the most sensitive layers, and keeps the candidate with
the most int8 layers. What a layer costs in higher precision is the board's business: int16
Q/DQ islands can be slower than float on one CPU and free on an NPU, a float island in the
middle of an int8 chain costs two conversions, a layer at the end costs almost nothing. Here
every candidate is also *benchmarked on the board* (``BoardLatency``, through
``BoardSession.benchmark``, the one path to a board), and:

- each round measures the few most sensitive raisable groups of the current ranking
  (``CANDIDATES``), each at int16 and at float;
- when some of them meet ``--max-drop``, the search stops: the written model is the met
  candidate with the lowest measured p50 (fewer int8 layers are fine if the board runs it
  faster);
- otherwise the round keeps the candidate that buys the most metric per millisecond it adds
  (a candidate that is not slower counts as costing ``NOISE_FLOOR`` of the current p50), the
  ranking is redone on it, and the next round starts from there.

AMCT lists this (perf-based fallback) and no longer supports it; the tuner uses the same
``run_fallback(..., latency=...)`` entry point.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from edgetune.host.errors import AgentError
from edgetune.host.quant.fallback_report import FallbackStep

if TYPE_CHECKING:  # annotations only: host.quant.fallback imports this module
    from edgetune.host.quant.fallback import _Search

log = logging.getLogger(__name__)

CANDIDATES = 3            # sensitive groups measured per round (each at int16 and float)
NOISE_FLOOR = 0.02        # a cost below 2% of the current p50 is noise
WARMUP = 5
ITERATIONS = 50


@dataclass
class BoardLatency:
    """p50 latency (ms) of a model on a board: one benchmark job per distinct model file
    (cached by content: the same bytes are measured once). ``session``: the onnxruntime
    session options the board runs it with (a ``protos.messages.SessionOptions``)."""

    board: Any                               # a host.board.BoardSession
    session: Any = None
    warmup: int = WARMUP
    iterations: int = ITERATIONS
    label: str = "edgetune fallback latency"
    measured: int = 0

    def __post_init__(self) -> None:
        self._cache: Dict[str, float] = {}

    @property
    def where(self) -> str:
        return f"agent at {self.board.address}"

    def __call__(self, model: Path) -> float:
        import hashlib

        from edgetune.protos.messages import BenchmarkSpec, SessionOptions

        model = Path(model)
        digest = hashlib.sha256(model.read_bytes()).hexdigest()
        if digest in self._cache:
            return self._cache[digest]
        spec = BenchmarkSpec(model_sha256="", session=self.session or SessionOptions(),
                             warmup=self.warmup, iterations=self.iterations)
        run = self.board.benchmark(model, spec, label=f"{self.label}: {model.name}")
        if not run.ok or run.result is None:
            raise AgentError(f"the latency benchmark of {model.name} on {self.where} ended "
                             f"{run.state.value}: {run.error or 'no result'}",
                             hint=f"see the agent's log; job {run.job_id}")
        self.measured += 1
        p50 = float(run.result.latency.p50_ms)
        self._cache[digest] = p50
        return p50


def _raisable_groups(analysis: Any, quantizable: Any, precision: Dict[str, str],
                     limit: int) -> List[Tuple[Tuple[str, ...], str]]:
    from edgetune.host.quant.strategies import _groups

    out: List[Tuple[Tuple[str, ...], str]] = []
    for nodes, tensor, _ in _groups(analysis, quantizable):
        raisable = tuple(n for n in nodes if precision.get(n) != "float")
        if raisable and raisable not in [g for g, _ in out]:
            out.append((raisable, tensor))
        if len(out) == limit:
            break
    return out


def _value(step: FallbackStep, current: FallbackStep) -> Tuple[bool, float, float]:
    """Sort key of a candidate that does not meet the target: does it help at all, metric
    gained per ms added (a not-slower candidate costs the noise floor), its metric."""
    gain = step.metric - current.metric
    base = current.latency_ms or 0.0
    cost = max((step.latency_ms or base) - base, NOISE_FLOOR * base, 1e-6)
    return gain > 0, gain / cost, step.metric


def by_latency(search: "_Search", analysis: Any, candidates: int = CANDIDATES) -> None:
    """The perf-based search (module docstring); ``search`` benchmarks every candidate."""
    precision: Dict[str, str] = {}
    current = search.steps[-1]                  # the all-int8 model
    ranking = analysis
    while search.budget_left():
        groups = _raisable_groups(ranking, search.quantizable, precision, candidates)
        if not groups:
            log.info("latency: every ranked layer is float already")
            return
        tried: List[Tuple[Dict[str, str], FallbackStep]] = []
        for group, tensor in groups:
            for level in ("int16", "float"):
                if not search.budget_left():
                    break
                if level == "int16" and all(precision.get(n) == "int16" for n in group):
                    continue
                cand = dict(precision)
                cand.update({n: level for n in group if precision.get(n) != "float"})
                step = search.try_candidate(cand, f"latency: {', '.join(group)} -> {level} "
                                                  f"(sensitive: {tensor})")
                if step is not None and step.index != current.index:
                    tried.append((cand, step))
        if not tried:
            log.info("latency: nothing left to raise that keeps the model quantized")
            return
        if any(step.met for _, step in tried):
            return                              # best_index: the fastest met candidate
        precision, current = max(tried, key=lambda t: _value(t[1], current))
        if not search.budget_left():
            return
        ranking = search.analyze(current.index)


def fastest_met(steps: List[FallbackStep]) -> Optional[int]:
    """Index of the met candidate with the lowest measured latency (ties: more int8
    layers, better metric); None when no candidate met the target."""
    met = [s for s in steps[1:] if s.met and s.latency_ms is not None]
    if not met:
        return None
    return min(met, key=lambda s: (s.latency_ms, -s.int8_layers, -s.metric, s.index)).index


__all__ = ["BoardLatency", "CANDIDATES", "by_latency", "fastest_met"]
