"""The fallback's two search strategies over a ranking of the quantizable layers, each layer
tried at int16 first and at float when int16 is not enough:

- ``greedy`` (NNCF-style, the default): raise the worst group to int16; not enough -> try it at
  float; keep float only if it closes at least a tenth of the gap int16 left; re-rank on the new
  model (a repaired tensor drops out of the ranking, one still bad is raised further) and go on
  until the target is met;
- ``bisect`` (AMCT-style): find the smallest k such that the top-k layers of the ranking at
  int16 meet the target (bisection on k); if even all layers at int16 do not, the same with
  float.

Both drive a ``edgetune.host.quant.fallback._Search`` (which quantizes, evaluates and records each
candidate and keeps the step budget) and return when the target is met or the budget is spent.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

from edgetune.host.quant.fallback_report import FallbackStep

if TYPE_CHECKING:  # annotations only: host.quant.fallback imports this module
    from edgetune.host.quant.fallback import _Search

log = logging.getLogger(__name__)


def _groups(analysis: Any, quantizable: Sequence[str]) -> List[Tuple[Tuple[str, ...], str, float]]:
    """(layers, tensor, score) worst first: each quantized tensor with the quantizable layers
    that touch it (raise them together to change how that tensor is stored)."""
    allowed = set(quantizable)
    out = []
    for tensor in analysis.ranked():
        nodes = tuple(n for n in tensor.nodes if n in allowed)
        if nodes:
            out.append((nodes, tensor.name, tensor.score))
    return out


def _clearly_better(candidate: FallbackStep, than: FallbackStep, max_drop: float) -> bool:
    """Float beats int16 for a group only when it closes at least a tenth of the gap int16
    left to the target (a metric wobble must not cost a layer its quantization)."""
    gap = max(than.drop - max_drop, 0.0)
    return candidate.metric > than.metric + 0.1 * gap


def greedy(search: _Search, analysis: Any) -> None:
    precision: Dict[str, str] = {}
    current = analysis
    while search.budget_left():
        group: Tuple[str, ...] = ()
        tensor = ""
        for nodes, name, _ in _groups(current, search.quantizable):
            raisable = tuple(n for n in nodes if precision.get(n) != "float")
            if raisable:
                group, tensor = raisable, name
                break
        if not group:
            log.info("greedy: every ranked layer is float already")
            return
        at16 = all(precision.get(n) == "int16" for n in group)
        label = ", ".join(group)
        candf = dict(precision)
        candf.update({n: "float" for n in group})
        chosen: Optional[Dict[str, str]] = None
        chosen_step: Optional[FallbackStep] = None
        if not at16:
            cand16 = dict(precision)
            cand16.update({n: "int16" for n in group if precision.get(n) != "float"})
            step = search.try_candidate(cand16, f"greedy: {label} -> int16 (worst: {tensor})")
            if step is not None:
                if step.met:
                    return
                chosen, chosen_step = cand16, step
            if search.budget_left():
                stepf = search.try_candidate(candf, f"greedy: {label} -> float "
                                                    f"(int16 was not enough)")
                if stepf is not None:
                    if stepf.met:
                        return
                    if chosen_step is None or _clearly_better(stepf, chosen_step,
                                                              search.fb.max_drop):
                        chosen, chosen_step = candf, stepf
        else:
            chosen_step = search.try_candidate(candf, f"greedy: {label} int16 -> float "
                                                      f"(still worst: {tensor})")
            if chosen_step is not None:
                if chosen_step.met:
                    return
                chosen = candf
        if chosen is None or chosen_step is None:
            log.info("greedy: nothing left to raise that keeps the model quantized")
            return
        precision = chosen
        if not search.budget_left():
            return
        current = search.analyze(chosen_step.index)


def bisect(search: _Search, analysis: Any) -> None:
    order = [s.node for s in analysis.layer_scores(search.quantizable)]
    # Layers the proxy did not score (no quantized tensor of theirs) go last.
    order += [n for n in search.quantizable if n not in set(order)]
    n = len(order)
    if n == 0:
        return
    for level in ("int16", "float"):
        if not search.budget_left():
            return
        def top(k: int) -> Dict[str, str]:
            return {node: level for node in order[:k]}
        # Every layer at float is the float model itself: it meets the target by definition
        # and is no candidate, so the float search starts from that known upper bound.
        if level == "int16":
            hi_step = search.try_candidate(top(n), f"bisect: all {n} ranked layers -> int16")
            if hi_step is None or not hi_step.met:
                continue
        lo, hi = 0, n
        while hi - lo > 1 and search.budget_left():
            mid = (lo + hi) // 2
            step = search.try_candidate(top(mid), f"bisect: top {mid} layers -> {level}")
            if step is not None and step.met:
                hi = mid
            else:
                lo = mid
        return


__all__ = ["bisect", "greedy"]
