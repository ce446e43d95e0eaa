"""The accuracy-driven fallback's results: one ``FallbackStep`` per evaluated candidate and the
``FallbackReport`` of the whole search (printed by the CLI, written as ``OUT.fallback.json``).

``edgetune.host.quant.fallback`` produces them and re-exports every public name defined here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from edgetune.host.render import json_safe


@dataclass(frozen=True)
class FallbackStep:
    index: int
    action: str                          # what this step tried, for people
    int16_layers: Tuple[str, ...]        # layers raised to int16 in this candidate
    float_layers: Tuple[str, ...]        # layers kept float in this candidate
    metric: float
    drop: float                          # baseline - metric
    met: bool
    int8_layers: int                     # quantizable layers still int8
    int8_fraction: float
    latency_ms: Optional[float] = None   # per sample, as the evaluator measured it; with
                                         # --fallback-by latency: the board's p50 (batch 1)
    seconds: float = 0.0                 # quantize + evaluate (+ analysis) of this step

    def as_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["int16_layers"] = list(self.int16_layers)
        d["float_layers"] = list(self.float_layers)
        return json_safe(d)


@dataclass(frozen=True)
class FallbackReport:
    strategy: str
    metric: str                          # top1, top5 or fidelity
    evaluator: str                       # where the metric was measured
    baseline: float                      # the float model's metric
    max_drop: float
    met: bool
    steps: Tuple[FallbackStep, ...]      # step 0: float model; step 1: all int8
    best_step: int
    output: Path
    record_path: Path
    ranges_path: Path
    fallback_record: Path                # OUT.fallback.json
    int16_layers: Tuple[str, ...]
    float_layers: Tuple[str, ...]
    quantizable_layers: int
    int8_layers: int
    evaluations: int                     # evaluator runs, the float baseline included
    elapsed_s: float
    ranking: Tuple[Tuple[str, float], ...] = ()   # (layer, score dB) of the all-int8 model
    report: Any = None                   # the pipeline's QuantizeReport of the written model
    by: str = "accuracy"                 # "latency": the fastest met candidate was written

    @property
    def best(self) -> FallbackStep:
        return self.steps[self.best_step]

    @property
    def int8_fraction(self) -> float:
        return self.int8_layers / self.quantizable_layers if self.quantizable_layers else 0.0

    @property
    def drop(self) -> float:
        return self.best.drop

    def lines(self) -> List[str]:
        """The search for people, one line per step (the CLI prints them)."""
        out = [f"fallback ({self.strategy}, {self.metric} on {self.evaluator}): float "
               f"{self.baseline:.4f}, allowed drop {self.max_drop:g}"]
        for step in self.steps:
            unit = "ms p50 on the board" if self.by == "latency" else "ms/sample"
            latency = f", {step.latency_ms:.3f} {unit}" if step.latency_ms else ""
            layers = (f", int8 {step.int8_layers}/{self.quantizable_layers}"
                      if step.index else "")
            mark = " <- written" if step.index == self.best_step else ""
            out.append(f"  {step.index:2d}. {step.action}: {step.metric:.4f} (drop "
                       f"{step.drop:+.4f}){layers}{latency}{mark}")
        verdict = "met" if self.met else "NOT met"
        out.append(f"target {verdict}: drop {self.drop:+.4f} with {self.int8_layers}/"
                   f"{self.quantizable_layers} layers int8 ({self.int8_fraction:.0%}), "
                   f"{self.evaluations} evaluations, {self.elapsed_s:.1f} s")
        return out

    def as_dict(self) -> Dict[str, Any]:
        return json_safe({
            "strategy": self.strategy, "by": self.by, "metric": self.metric,
            "evaluator": self.evaluator,
            "baseline": self.baseline, "max_drop": self.max_drop, "met": self.met,
            "best_step": self.best_step, "best_metric": self.best.metric, "drop": self.drop,
            "output": str(self.output), "record": str(self.record_path),
            "ranges": str(self.ranges_path), "fallback_record": str(self.fallback_record),
            "int16_layers": list(self.int16_layers), "float_layers": list(self.float_layers),
            "quantizable_layers": self.quantizable_layers, "int8_layers": self.int8_layers,
            "int8_fraction": round(self.int8_fraction, 4), "evaluations": self.evaluations,
            "elapsed_s": round(self.elapsed_s, 3),
            "ranking": [{"layer": n, "score_db": s} for n, s in self.ranking[:20]],
            "steps": [s.as_dict() for s in self.steps],
        })


def fallback_record_path(output: Path) -> Path:
    output = Path(output)
    stem = output.name[:-5] if output.name.endswith(".onnx") else output.name
    return output.with_name(stem + ".fallback.json")


__all__ = ["FallbackReport", "FallbackStep", "fallback_record_path"]
