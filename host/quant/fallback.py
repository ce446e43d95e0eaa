"""Accuracy-driven fallback: raise the precision of the most sensitive layers until the metric
drop is within ``--max-drop``.

1. Evaluate the float model (the baseline; for fidelity it also fixes the reference outputs).
2. Calibrate ONCE and quantize everything to int8; evaluate. Within the target: done.
3. Rank the quantizable layers by a cheap sensitivity proxy: ``edgetune.host.quant.analysis`` on a few
   calibration samples (each layer scores the worst isolated error of the tensors it touches;
   the layers around one bad tensor tie, and are raised together, because a tensor stays
   quantized as long as any layer beside it is).
4. Search, re-quantizing variants from the saved ranges (cheap: no calibration), each layer
   tried at int16 first and at float when int16 is not enough, with one of the strategies in
   ``edgetune.host.quant.strategies``: ``greedy`` (NNCF-style, the default: raise the worst group,
   re-rank, repeat) or ``bisect`` (AMCT-style: the smallest top-k of the ranking that meets
   the target, at int16, else at float).
   ``bench/fallback_strategies.py`` compares the two on the planted-layer model (the metric
   met, layers kept int8, evaluations spent, time): greedy meets the target with as many int8
   layers and fewer evaluations, hence the default.
5. Write the best model found (the one meeting the target with the most int8 layers; if none
   does, the one with the best metric) to ``settings.output`` with its record and ranges, and
   ``OUT.fallback.json`` with every step; if the target was not met, raise
   ``TargetNotMetError`` after writing, with the ``FallbackReport`` as its ``report``
   attribute (the CLI prints the steps and the error together).

This module holds the search state (``_Search``) and ``run_fallback``; the step and report
types are in ``edgetune.host.quant.fallback_report`` and re-exported here.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Dict, FrozenSet, List, Mapping, Optional, Tuple

from edgetune.host.errors import BadInputError, TargetNotMetError, UsageError
from edgetune.host.quant import fallback_latency, strategies
from edgetune.host.quant.fallback_report import FallbackReport, FallbackStep, fallback_record_path
from edgetune.host.quant.settings import (DEFAULT_FALLBACK_STRATEGY, FALLBACK_BY, FALLBACK_METRICS,
                                 FALLBACK_STRATEGIES, FallbackSettings, QuantizeSettings)

log = logging.getLogger(__name__)

# Defined once, in host.quant.settings (FallbackSettings and the CLI use the same default).
STRATEGIES = FALLBACK_STRATEGIES
DEFAULT_STRATEGY = DEFAULT_FALLBACK_STRATEGY
ANALYSIS_SAMPLES = 16            # calibration samples for the sensitivity proxy
Progress = Callable[[str, int, int], None]
Precision = Mapping[str, str]    # node -> "int16" | "float" (absent: int8)


def check_fallback_settings(fb: FallbackSettings) -> None:
    """The one check of a FallbackSettings (UsageError): ``run_fallback`` calls it, and
    ``edgetune quantize`` as soon as it has built them from flags and config."""
    if not (isinstance(fb.max_drop, (int, float)) and math.isfinite(fb.max_drop)
            and fb.max_drop >= 0):
        raise UsageError(f"--max-drop must be a number >= 0, got {fb.max_drop}",
                         hint="in the metric's own unit: 0.01 is one point of top-1")
    if fb.metric not in FALLBACK_METRICS:
        raise UsageError(f"unknown metric {fb.metric!r}",
                         hint=f"choose one of: {', '.join(FALLBACK_METRICS)}")
    if fb.strategy not in STRATEGIES:
        raise UsageError(f"unknown fallback strategy {fb.strategy!r}",
                         hint=f"choose one of: {', '.join(STRATEGIES)}")
    if fb.max_steps < 1:
        raise UsageError(f"--max-steps must be at least 1, got {fb.max_steps}")
    if fb.by not in FALLBACK_BY:
        raise UsageError(f"unknown --fallback-by {fb.by!r}",
                         hint=f"choose one of: {', '.join(FALLBACK_BY)}")


# ---------------------------------------------------------------------- the search state

class _Search:
    """Quantizes and evaluates candidates (node -> precision), caching each one."""

    def __init__(self, settings: QuantizeSettings, fb: FallbackSettings, evaluator: Any,
                 data: Any, work: Path, progress: Optional[Progress],
                 on_step: Optional[Callable[[FallbackStep], None]],
                 latency: Optional[Callable[[Path], float]] = None) -> None:
        self.settings = settings
        self.latency = latency          # model -> board p50 ms (--fallback-by latency)
        self.fb = fb
        self.evaluator = evaluator
        self.data = data
        self.work = work
        self.progress = progress
        self.on_step = on_step
        self.steps: List[FallbackStep] = []
        self.models: Dict[int, Path] = {}
        self.candidates: Dict[int, Dict[str, str]] = {}
        self.cache: Dict[FrozenSet[Tuple[str, str]], int] = {}
        self.prepared: Dict[bool, Any] = {}
        self.ranges: Dict[bool, Any] = {}
        self.baseline = 0.0
        self.quantizable: Tuple[str, ...] = ()
        self.search_steps = 0

    # -- stages --------------------------------------------------------------------------
    def _needs16(self, s: QuantizeSettings) -> bool:
        return bool(s.int16) or s.act_type == "int16" or any(
            sg.precision == "int16" for sg in s.subgraphs)

    def _prepared(self, s: QuantizeSettings) -> Any:
        from edgetune.host.quant.pipeline import prepare_model

        key = self._needs16(s)
        if key not in self.prepared:
            self.prepared[key] = prepare_model(s)
        return self.prepared[key]

    def _ranges_for(self, key: bool) -> Any:
        if key in self.ranges:
            return self.ranges[key]
        return next(iter(self.ranges.values()))

    def variant_settings(self, precision: Precision, output: Path) -> QuantizeSettings:
        s = self.settings
        int16 = tuple(sorted(n for n, p in precision.items() if p == "int16"))
        floats = tuple(sorted(n for n, p in precision.items() if p == "float"))
        return replace(s, output=output, int16=tuple(s.int16) + int16,
                       exclude=tuple(s.exclude) + floats, ranges=None)

    def quantize(self, precision: Precision, output: Path, *, force: bool = True) -> Any:
        from edgetune.host.quant.pipeline import quantize

        s = replace(self.variant_settings(precision, output), force=force)
        key = self._needs16(s)
        prepared = self._prepared(s)
        try:
            return quantize(s, prepared=prepared, ranges=self._ranges_for(key))
        except BadInputError as exc:
            # The opset-21 model (int16) may hold a tensor the int8 one did not: calibrate it.
            if "ranges have no entry" not in exc.message or key in self.ranges \
                    or self.data is None:
                raise
            from edgetune.host.quant.pipeline import calibrate

            log.info("calibrating the opset-%d model for int16 variants", prepared.opset)
            self.ranges[key] = calibrate(prepared, self.data, self.settings, self.progress)
            return quantize(s, prepared=prepared, ranges=self.ranges[key])

    def calibrate_all_int8(self) -> Any:
        """Step 1: prepare, calibrate once (or load ``settings.ranges``), quantize all int8."""
        from edgetune.host.quant.pipeline import quantize
        from edgetune.host.quant.ranges import load_ranges

        t0 = time.perf_counter()
        output = self.work / "c1.onnx"
        s = replace(self.settings, output=output, force=True)
        prepared = self._prepared(s)
        report = quantize(s, data=self.data, progress=self.progress, prepared=prepared)
        self.ranges[self._needs16(s)] = load_ranges(report.ranges_path)
        self.quantizable = tuple(report.quantizable_nodes)
        return self._evaluate({}, report, "all int8 (calibrated once)", t0)

    # -- candidates ----------------------------------------------------------------------
    def _evaluate(self, precision: Precision, report: Any, action: str, t0: float) -> int:
        value = self.evaluator.evaluate(report.output, self.fb.eval_dataset, self.fb.metric)
        node_precision = dict(getattr(report, "node_precision", {}) or {})
        q = self.quantizable
        if node_precision:
            int8 = sum(1 for n in q if node_precision.get(n, "int8") == "int8")
        else:
            int8 = sum(1 for n in q if n not in precision)
        index = len(self.steps)
        drop = self.baseline - value
        step = FallbackStep(
            index=index, action=action,
            int16_layers=tuple(sorted(n for n, p in precision.items() if p == "int16")),
            float_layers=tuple(sorted(n for n, p in precision.items() if p == "float")),
            metric=value, drop=drop, met=drop <= self.fb.max_drop + 1e-12, int8_layers=int8,
            int8_fraction=int8 / len(q) if q else 0.0,
            latency_ms=self.latency_of(report.output),
            seconds=time.perf_counter() - t0)
        self._record(step, report.output, precision)
        return index

    def latency_of(self, model: Path) -> Optional[float]:
        """The board's p50 (perf-based fallback), else the evaluator's time per sample."""
        if self.latency is not None:
            return self.latency(Path(model))
        return getattr(self.evaluator, "last_latency_ms", None)

    def _record(self, step: FallbackStep, model: Optional[Path], precision: Precision) -> None:
        self.steps.append(step)
        if model is not None:
            self.models[step.index] = Path(model)
        self.candidates[step.index] = dict(precision)
        self.cache[frozenset(precision.items())] = step.index
        log.info("fallback step %d: %s: %s %.4f (drop %.4f%s), %d/%d layers int8",
                 step.index, step.action, self.evaluator.metric_name or self.fb.metric,
                 step.metric, step.drop, ", met" if step.met else "", step.int8_layers,
                 len(self.quantizable))
        if self.progress:
            self.progress("fallback", min(self.search_steps, self.fb.max_steps),
                          self.fb.max_steps)
        if self.on_step:
            self.on_step(step)

    def budget_left(self) -> bool:
        return self.search_steps < self.fb.max_steps

    def try_candidate(self, precision: Precision, action: str) -> Optional[FallbackStep]:
        """Quantize and evaluate ``precision`` (a cached result costs nothing); None when the
        candidate leaves nothing quantized (that is the float model, not a candidate)."""
        clean = {n: p for n, p in precision.items() if p in ("int16", "float")}
        key = frozenset(clean.items())
        if key in self.cache:
            return self.steps[self.cache[key]]
        if self.quantizable and all(clean.get(n) == "float" for n in self.quantizable):
            return None
        t0 = time.perf_counter()
        self.search_steps += 1
        output = self.work / f"c{len(self.steps)}.onnx"
        try:
            report = self.quantize(clean, output)
        except BadInputError as exc:
            if "nothing was quantized" not in exc.message:
                raise
            log.info("skipped a candidate that leaves nothing quantized: %s", action)
            return None
        return self.steps[self._evaluate(clean, report, action, t0)]

    def analyze(self, index: int) -> Any:
        from edgetune.host.quant.analysis import analyze

        prepared = self.prepared.get(False) or next(iter(self.prepared.values()))
        return analyze(Path(prepared.path), self.models[index], self.data,
                       max_samples=ANALYSIS_SAMPLES)

    def best_index(self) -> int:
        if self.fb.by == "latency":
            fastest = fallback_latency.fastest_met(self.steps)
            if fastest is not None:
                return fastest
        candidates = [s for s in self.steps[1:]]
        met = [s for s in candidates if s.met]
        if met:
            return max(met, key=lambda s: (s.int8_layers, s.metric, -s.index)).index
        return max(candidates, key=lambda s: (s.metric, s.int8_layers, -s.index)).index

    def close(self) -> None:
        for prepared in self.prepared.values():
            try:
                prepared.close()
            except Exception:  # noqa: BLE001 - cleanup only
                pass


# ---------------------------------------------------------------------- entry point

def _eval_inputs(model: Path, dataset: Path) -> Any:
    """The evaluation set's inputs as calibration-style data (ranges-only runs rank with it)."""
    from edgetune.host.quant.calibdata import CalibrationData, read_model_inputs
    from edgetune.host.quant.evaluate import load_eval_dataset

    inputs = read_model_inputs(model)
    loaded = load_eval_dataset(dataset, [i.name for i in inputs])
    return CalibrationData.from_arrays(loaded.inputs, inputs)


def run_fallback(settings: QuantizeSettings, fb: FallbackSettings, *, data: Any,
                 evaluator: Any = None, progress: Optional[Progress] = None,
                 on_step: Optional[Callable[[FallbackStep], None]] = None,
                 latency: Optional[Callable[[Path], float]] = None) -> FallbackReport:
    """Quantize ``settings.model`` so that the metric drops at most ``fb.max_drop``.

    ``data``: the calibration data (a CalibrationData; also feeds the sensitivity proxy).
    ``evaluator``: a LocalEvaluator (default) or AgentEvaluator. Writes the best model found
    to ``settings.output`` (+ record, ranges, OUT.fallback.json) in every case; raises
    ``TargetNotMetError`` afterwards when no candidate met the target (its ``report``
    attribute holds this function's ``FallbackReport``). ``latency``: model path -> p50 ms on
    the board (a ``fallback_latency.BoardLatency``); required by ``fb.by == "latency"``."""
    from edgetune.host.quant.evaluate import LocalEvaluator
    from edgetune.host.quant.pipeline import validate_settings
    from edgetune.host.quant.ranges import atomic_write_text

    check_fallback_settings(fb)
    validate_settings(settings)
    if fb.by == "latency" and latency is None:
        raise UsageError("--fallback-by latency measures every candidate on a board",
                         hint="give --device NAME (or --address HOST:PORT)")
    if data is None:
        if settings.ranges is None:
            raise UsageError("the fallback needs calibration data (--calib), or saved ranges "
                             "(--ranges)", hint="give --calib SOURCE")
        data = _eval_inputs(Path(settings.model), Path(fb.eval_dataset))
    if evaluator is None:
        evaluator = LocalEvaluator()
    t0 = time.perf_counter()
    output = Path(settings.output)
    work = Path(tempfile.mkdtemp(prefix="edgetune-fallback-"))
    search = _Search(settings, fb, evaluator, data, work, progress, on_step, latency)
    try:
        tb = time.perf_counter()
        search.baseline = evaluator.baseline(Path(settings.model), fb.eval_dataset, fb.metric)
        metric_name = getattr(evaluator, "metric_name", None) or fb.metric
        search._record(FallbackStep(
            index=0, action="float model (baseline)", int16_layers=(), float_layers=(),
            metric=search.baseline, drop=0.0, met=True, int8_layers=0, int8_fraction=0.0,
            latency_ms=search.latency_of(Path(settings.model)),
            seconds=time.perf_counter() - tb), None, {"*": "float"})
        first = search.steps[search.calibrate_all_int8()]
        ranking: Tuple[Tuple[str, float], ...] = ()
        if not first.met:
            analysis = search.analyze(first.index)
            ranking = tuple((s.node, s.score) for s in analysis.layer_scores(search.quantizable))
            if fb.by == "latency":
                fallback_latency.by_latency(search, analysis)
            elif fb.strategy == "greedy":
                strategies.greedy(search, analysis)
            else:
                strategies.bisect(search, analysis)
        best = search.steps[search.best_index()]
        precision = search.candidates[best.index]
        final = search.quantize(precision, output, force=settings.force)
        report = FallbackReport(
            strategy="latency" if fb.by == "latency" else fb.strategy, metric=metric_name,
            by=fb.by,
            evaluator=getattr(evaluator, "where", type(evaluator).__name__),
            baseline=search.baseline, max_drop=fb.max_drop, met=best.met,
            steps=tuple(search.steps), best_step=best.index, output=output,
            record_path=final.record_path, ranges_path=final.ranges_path,
            fallback_record=fallback_record_path(output),
            int16_layers=best.int16_layers, float_layers=best.float_layers,
            quantizable_layers=len(search.quantizable), int8_layers=best.int8_layers,
            evaluations=getattr(evaluator, "evaluations", len(search.steps)),
            elapsed_s=time.perf_counter() - t0, ranking=ranking, report=final)
        atomic_write_text(report.fallback_record, json.dumps(report.as_dict(), indent=2) + "\n")
    finally:
        search.close()
        shutil.rmtree(work, ignore_errors=True)
    if not report.met:
        error = TargetNotMetError(
            f"no setting met --max-drop {fb.max_drop:g}: the best {report.metric} is "
            f"{best.metric:.4f} (drop {best.drop:.4f} against the float model's "
            f"{report.baseline:.4f}) after {len(report.steps) - 1} candidates; that model was "
            f"written to {output} ({report.fallback_record.name} has every step)",
            hint="allow a larger --max-drop, raise --max-steps, try --strategy "
                 + ("bisect" if fb.strategy == "greedy" else "greedy")
                 + ", or another calibration --method")
        error.report = report   # type: ignore[attr-defined]  # the CLI still shows the steps
        raise error
    return report


__all__ = ["DEFAULT_STRATEGY", "FallbackReport", "FallbackStep", "STRATEGIES",
           "check_fallback_settings", "fallback_record_path", "run_fallback"]
