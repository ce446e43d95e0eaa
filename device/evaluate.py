"""Evaluate a model on a dataset: the batch loop and the metrics streamed over it.

``edgetune.device.runner.Runner.run_evaluate`` loads the model and the dataset and creates the session,
then hands over to ``evaluate_session``, which matches the dataset to the model's inputs and
outputs and runs it batch by batch (the model's fixed batch size wins over ``batch_size``; a
short last batch is padded for a fixed-batch model and the padding's outputs are dropped).
Metrics are chosen from what the dataset holds (``labels``, reference outputs, detection
boxes with a decoder) unless the spec names them, and are streamed over the batches by
``edgetune.device.metrics`` and ``edgetune.device.detection`` (mAP).

This module does not import ``edgetune.device.runner`` (which imports it): the runner passes its
progress reporter and its ``session.run`` wrapper in.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence

import numpy as np

from edgetune.device.datasets import Dataset, MatchedDataset, match_to_model
from edgetune.device.detection import (DEFAULT_CONF, DEFAULT_IOU, DetectionMAP,
                                       check_decoder, check_ground_truth, decode)
from edgetune.device.errors import InvalidArgument
from edgetune.device.metrics import Fidelity, MeanIoU, TopK, as_class_scores
from edgetune.protos.messages import EvaluateResult, EvaluateSpec

log = logging.getLogger("edgetune.agent.evaluate")

Feeds = Dict[str, np.ndarray]
RunFn = Callable[[Any, List[str], Feeds], List[np.ndarray]]
# (first sample, samples, output names, the batch's outputs): a job output file's writer
SinkFn = Callable[[int, int, List[str], List[np.ndarray]], None]


class ProgressReporter(Protocol):
    """What the loop uses of ``edgetune.device.runner``'s throttled progress reporter."""

    def check(self) -> None: ...

    def report(self, phase: str, done: int, total: int, message: str = "",
               now_ns: int = 0, force: bool = False) -> None: ...


def _no_value(names: Sequence[str], results: Sequence[Any]) -> str:
    """Older onnxruntime (1.12 here) returns None for a graph output whose producing node its
    optimizer fused away (a DequantizeLinear folded into a QLinearConv): say so, not crash."""
    import sys
    ort = sys.modules.get("onnxruntime")
    missing = [n for n, r in zip(names, results) if r is None]
    shown = ", ".join(repr(n) for n in missing[:5]) + (" ..." if len(missing) > 5 else "")
    return (f"onnxruntime {getattr(ort, '__version__', '?')} on this board returned no value "
            f"for {len(missing)} of the model's {len(names)} outputs ({shown}): its graph "
            "optimizer fused away the nodes that produce them, a defect of older onnxruntime "
            "versions; upgrade onnxruntime on the board, or lower the graph optimization level "
            "(which changes the kernels that run)")


def evaluate_session(session: Any, load_ms: float, dataset: Dataset, spec: EvaluateSpec,
                     rep: ProgressReporter, run: RunFn,
                     sink: Optional[SinkFn] = None) -> EvaluateResult:
    """Evaluate ``dataset`` on a loaded onnxruntime ``session``.

    ``run(session, output_names, feeds)`` runs one batch (the runner's wrapper, which turns
    onnxruntime errors into StatusError); ``rep`` reports progress and raises Cancelled.
    InvalidArgument when the dataset does not fit the model or a metric cannot be computed.
    ``sink`` receives every batch's outputs (``spec.dump_outputs``: the job output file);
    with it, no metric needs to apply.
    """
    outputs = session.get_outputs()
    matched = match_to_model(dataset, session.get_inputs(), outputs)
    wanted = _plan_metrics(spec.metrics, matched, spec.decoder, optional=sink is not None)
    batch = matched.fixed_batch or spec.batch_size
    if matched.fixed_batch and spec.batch_size not in (1, matched.fixed_batch):
        log.info("the model's batch size is fixed at %d; batch_size %d is ignored",
                 matched.fixed_batch, spec.batch_size)
    names = [o.name for o in outputs]
    n = matched.samples
    acc = _Accumulators(wanted, spec.metrics, matched, names, spec)
    start = time.perf_counter()
    rep.report("evaluate", 0, n, force=True)
    for begin in range(0, n, batch):
        rep.check()
        real = min(batch, n - begin)
        feed = {}
        for name, arr in matched.inputs.items():
            part = arr[begin:begin + batch]
            if matched.fixed_batch and real < batch:  # pad with the last sample
                part = np.concatenate([part, np.repeat(part[-1:], batch - real, axis=0)])
            feed[name] = np.ascontiguousarray(part)
        results = run(session, names, feed)
        if any(r is None for r in results):
            raise InvalidArgument(_no_value(names, results))
        acc.update(begin, real, [r[:real] for r in results])
        if sink is not None:
            sink(begin, real, names, results)
        rep.report("evaluate", begin + real, n)
    elapsed = time.perf_counter() - start
    rep.report("evaluate", n, n, "done", force=True)
    return EvaluateResult(samples=n, metrics=tuple(sorted(acc.result().items())),
                          load_ms=load_ms, elapsed_s=elapsed)


def _plan_metrics(requested: Sequence[str], matched: MatchedDataset,
                  decoder: str = "", optional: bool = False) -> List[str]:
    """The metric families to compute; InvalidArgument when a requested one cannot be.
    ``map`` is computed when asked for, or when a decoder is given and the dataset holds
    detection ground truth."""
    labels = matched.labels
    if "map" in requested:
        check_ground_truth(matched.detection, matched.samples)
    can = {
        "top1": labels is not None and labels.ndim == 1,
        "top5": labels is not None and labels.ndim == 1,
        "miou": labels is not None and labels.ndim >= 2,
        "fidelity": bool(matched.references),
        "map": bool(decoder) and "boxes" in matched.detection and "classes" in matched.detection,
    }
    why = {
        "top1": "it needs a 'labels' array of shape [N] (class indices) in the dataset",
        "top5": "it needs a 'labels' array of shape [N] (class indices) in the dataset",
        "miou": "it needs a 'labels' array of shape [N, H, W] (class per pixel) in the dataset",
        "fidelity": "it needs reference outputs in the dataset, stored under the model's "
                    "output names",
        "map": "it needs a decoder for the model's output (yolov5 or boxes)",
    }
    if requested:
        for metric in requested:
            if not can.get(metric, False):
                raise InvalidArgument(f"metric {metric!r} cannot be computed: {why.get(metric, '')}")
        return list(dict.fromkeys(requested))
    chosen = [m for m in ("top1", "top5", "miou", "fidelity", "map") if can[m]]
    if "map" in chosen:
        check_ground_truth(matched.detection, matched.samples)
    if not chosen and not optional:
        raise InvalidArgument("no metric applies: the dataset has neither 'labels' nor reference "
                              "outputs named after the model's outputs; add one of them")
    return chosen


class _Accumulators:
    """Streams the chosen metrics over batches of outputs."""

    def __init__(self, wanted: List[str], requested: Sequence[str], matched: MatchedDataset,
                 names: List[str], spec: Optional[EvaluateSpec] = None) -> None:
        self.wanted = set(wanted)
        self.requested = set(requested)
        self.matched = matched
        self.names = names
        self.topk: Dict[int, TopK] = {}
        self.class_output = 0
        self.miou: Optional[MeanIoU] = None
        self.miou_output = 0
        self.fidelity = {name: Fidelity() for name in matched.references}
        self.decoder = spec.decoder if spec is not None else ""
        self.conf = (spec.conf or DEFAULT_CONF) if spec is not None else DEFAULT_CONF
        self.iou = (spec.iou or DEFAULT_IOU) if spec is not None else DEFAULT_IOU
        self.map: Optional[DetectionMAP] = None
        self.map_output = 0
        self.started = False

    def _first_batch(self, outputs: List[np.ndarray]) -> None:
        self.started = True
        labels = self.matched.labels
        if "top1" in self.wanted or "top5" in self.wanted:
            found = [i for i, out in enumerate(outputs)
                     if (as_class_scores(out) is not None and out.shape[0] > 0
                         and as_class_scores(out).shape[1] > 1)]  # type: ignore[union-attr]
            if not found:
                shapes = ", ".join(f"{n} {list(o.shape)}" for n, o in zip(self.names, outputs))
                raise InvalidArgument(f"top-k accuracy needs an output shaped [N, classes]; the "
                                      f"model's outputs are {shapes}")
            self.class_output = found[0]
            classes = as_class_scores(outputs[found[0]]).shape[1]  # type: ignore[union-attr]
            for k in (1, 5):
                if f"top{k}" not in self.wanted:
                    continue
                if classes <= k:
                    if f"top{k}" in self.requested:
                        raise InvalidArgument(f"metric 'top{k}' cannot be computed: the output has "
                                              f"only {classes} classes")
                    continue
                self.topk[k] = TopK(k)
        if "map" in self.wanted:
            fits, why = [], []
            for i, out in enumerate(outputs):
                try:
                    check_decoder(self.decoder, out.shape, self.names[i])
                    fits.append(i)
                except InvalidArgument as exc:
                    why.append(str(exc))
            if not fits:
                raise InvalidArgument(f"metric 'map' cannot be computed: {'; '.join(why)}")
            self.map_output = fits[0]
            self.map = DetectionMAP()
        if "miou" in self.wanted:
            assert labels is not None
            for i, out in enumerate(outputs):
                if out.ndim == labels.ndim + 1 and out.shape[2:] == labels.shape[1:]:
                    self.miou = MeanIoU(int(out.shape[1]))
                    self.miou_output = i
                    break
            if self.miou is None:
                raise InvalidArgument(f"metric 'miou' cannot be computed: no output is shaped "
                                      f"[N, classes, {', '.join(map(str, labels.shape[1:]))}] "
                                      "to match the labels")

    def update(self, begin: int, real: int, outputs: List[np.ndarray]) -> None:
        if not self.started:
            self._first_batch(outputs)
        labels = self.matched.labels
        if self.topk:
            scores = as_class_scores(outputs[self.class_output])
            for acc in self.topk.values():
                acc.update(scores, labels[begin:begin + real])  # type: ignore[index]
        if self.miou is not None:
            self.miou.update(outputs[self.miou_output],
                             labels[begin:begin + real])  # type: ignore[index]
        if self.map is not None:
            det = self.matched.detection
            ids = det.get("image_ids")
            self.map.update(decode(self.decoder, outputs[self.map_output], self.conf, self.iou),
                            det["boxes"][begin:begin + real], det["classes"][begin:begin + real],
                            ids[begin:begin + real] if ids is not None
                            else range(begin, begin + real))
        if "fidelity" in self.wanted:
            for name, acc in self.fidelity.items():
                out = outputs[self.names.index(name)]
                ref = self.matched.references[name][begin:begin + real]
                if ref.shape != out.shape:
                    raise InvalidArgument(
                        f"reference output '{name}' has per-sample shape {list(ref.shape[1:])} but "
                        f"the model produced {list(out.shape[1:])}")
                acc.update(ref, out)

    def result(self) -> Dict[str, float]:
        metrics: Dict[str, float] = {}
        for k, acc in self.topk.items():
            metrics[f"top{k}"] = acc.result()
        if self.miou is not None:
            metrics["miou"] = self.miou.result()
        if self.map is not None:
            metrics.update(self.map.result())               # map50, map, map_classes
        prefix = len(self.fidelity) > 1
        for name, acc in self.fidelity.items():
            for key, value in acc.result().items():
                metrics[f"{name}/{key}" if prefix else key] = value
        return metrics
