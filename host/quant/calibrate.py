"""Calibration in bounded memory: activation ranges from ``CalibrationData`` chunks.

``calibrate(prepared, data, settings, progress)`` returns a ``Ranges`` (tensor -> (rmin, rmax)
plus what produced it), convertible to onnxruntime's ``TensorsData``.

- ``minmax``: the graph onnxruntime's ``MinMaxCalibrater`` builds (ReduceMin/ReduceMax of every
  tensor as extra outputs), run chunk by chunk and folded at once: only scalars accumulate.
- ``percentile``, ``entropy``, ``mse``, ``distribution``: every tensor to calibrate becomes a
  graph output; pass 1 folds each run's outputs into per-tensor min/max, pass 2 into
  fixed-edge histograms (``histograms.py``). Only one run's activations are alive at a time,
  where onnxruntime's histogram calibrators keep every activation of every sample in RAM.
  Because pass 2 knows the final edges, the summed histograms equal onnxruntime's one-shot
  histograms and the ranges match its calibrators (entropy with our bin counts, which are
  passed to it when we compare: its 128/128 default makes entropy equal minmax).

The tensors calibrated are those onnxruntime's calibrators select: float inputs and outputs
(not initializers) of nodes whose op type can be quantized. All of them are calibrated even
when some nodes are excluded, so one calibration serves every variant.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from edgetune.host.errors import BadInputError, UsageError
from edgetune.host.quant.histograms import (
    HistogramState,
    RangeState,
    abs_histogram,
    distribution_range,
    distribution_stats,
    entropy_range,
    mse_range,
    one_sided_histogram,
    percentile_range,
    signed_histogram,
)
from edgetune.host.quant.entropy import entropy_fixed, is_one_sided, quantized_bins
from edgetune.host.quant.prepare import FLOAT_TYPES, PreparedModel, effective_op_types
from edgetune.host.quant.settings import ENTROPY_COMPAT, METHODS, QuantizeSettings

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
Range = Tuple[float, float]
_IN_MEMORY_LIMIT = 1 << 30      # bigger models go through a file (protobuf's 2 GB limit)


def method_label(method: str, percentile: Optional[float] = None) -> str:
    """'percentile(99.99)' for percentile, the method name otherwise (keys of ``Ranges.alt``)."""
    if method not in METHODS:
        raise UsageError(f"unknown calibration method {method!r}",
                         hint=f"choose one of: {', '.join(METHODS)}")
    if method == "percentile":
        return f"percentile({float(percentile if percentile is not None else 99.999):g})"
    return method


def parse_label(label: str) -> Tuple[str, Optional[float]]:
    if label.startswith("percentile(") and label.endswith(")"):
        return "percentile", float(label[len("percentile("):-1])
    return label, None


@dataclass
class Ranges:
    """Calibration result: per-tensor ranges of the main method, and of any extra methods."""

    method: str                                         # label of the main method
    tensors: Dict[str, Range]                           # main method's (rmin, rmax)
    observed: Dict[str, Range]                          # plain min/max seen in the data
    alt: Dict[str, Dict[str, Range]] = field(default_factory=dict)   # label -> ranges
    stats: Dict[str, Dict[str, float]] = field(default_factory=dict)  # distribution avg/std
    params: Dict[str, Any] = field(default_factory=dict)
    n_samples: int = 0
    model_sha256: str = ""
    elapsed_s: float = 0.0

    def labels(self) -> Tuple[str, ...]:
        return (self.method, "minmax", *sorted(self.alt))

    def for_label(self, label: str) -> Dict[str, Range]:
        if label == self.method:
            return self.tensors
        if label == "minmax":
            return self.observed
        if label in self.alt:
            return self.alt[label]
        raise BadInputError(
            f"the ranges hold no {label} ranges (they have: {', '.join(self.labels())})",
            hint="calibrate again with that method (drop --ranges)")

    def to_tensors_data(self, replace: Optional[Mapping[str, Range]] = None):
        """onnxruntime ``TensorsData`` of the main ranges, with ``replace`` taking precedence.

        A fresh object every call: onnxruntime's quantizer edits the ranges it is given
        (Relu/Clip inputs take their outputs' range, Softmax outputs become [0, 1]).
        """
        from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData

        ort_method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                      "percentile": CalibrationMethod.Percentile,
                      "distribution": CalibrationMethod.Distribution,
                      "mse": CalibrationMethod.MinMax}[parse_label(self.method)[0]]
        merged = dict(self.tensors)
        if replace:
            merged.update(replace)
        data = {name: TensorData(lowest=np.float32(lo), highest=np.float32(hi))
                for name, (lo, hi) in merged.items()}
        return TensorsData(ort_method, data)


# ---------------------------------------------------------------------------------------
# Which tensors, and how the data reaches the session
# ---------------------------------------------------------------------------------------
def tensors_to_calibrate(model, op_types: Sequence[str]) -> List[str]:
    """Same selection as onnxruntime's ``CalibraterBase.select_tensors_to_calibrate``
    (in graph order, so runs are reproducible)."""
    value_infos = {vi.name: vi for vi in model.graph.value_info}
    value_infos.update({vi.name: vi for vi in model.graph.output})
    value_infos.update({vi.name: vi for vi in model.graph.input})
    initializers = {init.name for init in model.graph.initializer}
    chosen: Dict[str, None] = {}
    for node in model.graph.node:
        if op_types and node.op_type not in op_types:
            continue
        for name in itertools.chain(node.input, node.output):
            vi = value_infos.get(name)
            if (vi is not None and vi.type.HasField("tensor_type")
                    and vi.type.tensor_type.elem_type in FLOAT_TYPES and name not in initializers):
                chosen[name] = None
    return list(chosen)


@dataclass(frozen=True)
class _InputMeta:
    name: str
    rank: int
    fixed_batch: Optional[int]      # None: symbolic first dimension
    dtype: np.dtype


def _input_meta(session) -> List[_InputMeta]:
    metas = []
    for arg in session.get_inputs():
        shape = arg.shape or []
        first = shape[0] if shape else None
        fixed = first if isinstance(first, int) and first > 0 else None
        dtype = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
                 "tensor(double)": np.float64}.get(arg.type)
        metas.append(_InputMeta(arg.name, len(shape), fixed, np.dtype(dtype or np.float32)))
    return metas


def check_inputs(data, metas: Sequence[_InputMeta]) -> None:
    names = tuple(data.input_names)
    expected = tuple(m.name for m in metas)
    if set(names) != set(expected):
        raise BadInputError(
            f"the calibration data feeds inputs {list(names)} but the model has inputs "
            f"{list(expected)}",
            hint="give one --calib NAME=SOURCE per model input")
    if len(data) == 0:
        raise BadInputError("there are no calibration samples (found 0 items)",
                            hint="check the --calib source")


def _runs(chunk: Mapping[str, np.ndarray], metas: Sequence[_InputMeta]
          ) -> Iterator[Dict[str, np.ndarray]]:
    """Splits one chunk into session runs: the whole chunk when the batch is symbolic,
    groups of the fixed batch size otherwise (a ragged tail is run on its own)."""
    arrays = {}
    n = None
    for meta in metas:
        arr = np.asarray(chunk[meta.name])
        if arr.dtype != meta.dtype:
            arr = arr.astype(meta.dtype)
        if meta.rank and arr.ndim == meta.rank + 1:   # samples stacked on a batched input
            arr = arr.reshape((-1,) + arr.shape[2:])
        arrays[meta.name] = arr
        n = arr.shape[0] if n is None else min(n, arr.shape[0])
    if not n:
        return
    fixed = [m.fixed_batch for m in metas if m.fixed_batch is not None]
    step = min(fixed) if fixed else n
    for begin in range(0, n, step):
        yield {name: arr[begin:begin + step] for name, arr in arrays.items()}


def _session(model_or_path):
    """A CPU session without graph optimisations (as onnxruntime's calibrators use), from a
    path or from a ModelProto (serialized in memory: no temp file to write and read back)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = (str(model_or_path) if isinstance(model_or_path, (str, Path))
              else model_or_path.SerializeToString())
    return ort.InferenceSession(source, sess_options=options,
                                providers=["CPUExecutionProvider"])


def _run(session, names: Sequence[str], feeds: Mapping[str, np.ndarray]):
    try:
        return session.run(list(names), dict(feeds))
    except Exception as exc:          # onnxruntime's Fail / InvalidArgument
        shapes = ", ".join(f"{k} {tuple(v.shape)} {v.dtype}" for k, v in feeds.items())
        raise BadInputError(f"running the model on the calibration data failed ({shapes}): "
                            f"{exc}", hint="check that the calibration data fits the model's "
                                          "inputs (shape, layout, preprocessing)") from None


def _chunk_count(data, batch: int) -> int:
    return max(1, math.ceil(len(data) / max(1, batch)))


# ---------------------------------------------------------------------------------------
# The two calibration paths
# ---------------------------------------------------------------------------------------
def _minmax_session(model, tensors: Sequence[str], path: Path):
    """The model plus ReduceMin/ReduceMax of every tensor as outputs: what onnxruntime's
    ``MinMaxCalibrater.augment_graph`` builds (keepdims=1, all axes), from the model already
    in memory instead of reloading and re-inferring it."""
    import onnx
    from onnx import helper

    value_infos = {vi.name: vi for vi in model.graph.value_info}
    value_infos.update({vi.name: vi for vi in model.graph.output})
    value_infos.update({vi.name: vi for vi in model.graph.input})
    names = []
    for tensor in tensors:
        elem = value_infos[tensor].type.tensor_type.elem_type
        for op in ("ReduceMin", "ReduceMax"):
            out = f"{tensor}__edgetune_{op}"
            model.graph.node.append(helper.make_node(op, [tensor], [out], keepdims=1,
                                                     name=out))
            model.graph.output.append(helper.make_tensor_value_info(out, elem, None))
            names.append(out)
    if model.ByteSize() > _IN_MEMORY_LIMIT:
        onnx.save(model, str(path), save_as_external_data=True)
        return _session(path), names
    return _session(model), names


def _calibrate_minmax(model, workdir: Path, data, settings: QuantizeSettings,
                      tensors: Sequence[str], progress: Optional[Progress]) -> Dict[str, Range]:
    session, names = _minmax_session(model, tensors, workdir / "augmented_minmax.onnx")
    metas = _input_meta(session)
    check_inputs(data, metas)
    total = _chunk_count(data, settings.calib_batch)
    lows: Dict[str, np.ndarray] = {}
    highs: Dict[str, np.ndarray] = {}
    done = 0
    for chunk in data.chunks(settings.calib_batch):
        for feeds in _runs(chunk, metas):
            outputs = _run(session, names, feeds)
            for i, tensor in enumerate(tensors):
                lo = np.nanmin(outputs[2 * i])
                hi = np.nanmax(outputs[2 * i + 1])
                lows[tensor] = lo if tensor not in lows else np.fmin(lows[tensor], lo)
                highs[tensor] = hi if tensor not in highs else np.fmax(highs[tensor], hi)
            outputs = None
        feeds = chunk = None
        done += 1
        if progress:
            progress("calibrate", done, total)
    return {t: (float(np.float32(lows[t])), float(np.float32(highs[t]))) for t in tensors}


def _augmented_session(model, tensors: Sequence[str], path: Path):
    """The model (changed in place) with every tensor to calibrate as a graph output."""
    import onnx

    augmented = model
    value_infos = {vi.name: vi for vi in augmented.graph.value_info}
    value_infos.update({vi.name: vi for vi in augmented.graph.input})
    existing = {vi.name for vi in augmented.graph.output}
    for name in tensors:
        if name not in existing:
            augmented.graph.output.append(value_infos[name])
    if augmented.ByteSize() > _IN_MEMORY_LIMIT:
        onnx.save(augmented, str(path), save_as_external_data=True)
        return _session(path)
    return _session(augmented)


def _fold_pass(session, names: Sequence[str], metas, data, settings, fold,
               progress: Optional[Progress], done: int, total: int) -> int:
    for chunk in data.chunks(settings.calib_batch):
        for feeds in _runs(chunk, metas):
            outputs = _run(session, names, feeds)
            for name, arr in zip(names, outputs):
                fold(name, arr)
            outputs = arr = None
        feeds = chunk = None        # drop the last views too: one chunk alive at a time
        done += 1
        if progress:
            progress("calibrate", done, total)
    return done


def _act_levels(settings: QuantizeSettings) -> int:
    from onnx import TensorProto
    from onnxruntime.quantization.quant_utils import get_qmin_qmax_for_qType

    qtype = {"uint8": TensorProto.UINT8, "int8": TensorProto.INT8,
             "int16": TensorProto.INT16}[settings.act_type]
    qmin, qmax = get_qmin_qmax_for_qType(qtype, symmetric=settings.symmetric_act)
    return int(qmax) - int(qmin)


def _calibrate_histograms(model, model_path: Path, workdir: Path, data,
                          settings: QuantizeSettings, tensors: Sequence[str],
                          labels: Sequence[str], progress: Optional[Progress]):
    methods = {parse_label(label)[0] for label in labels}
    need_abs = "percentile" in methods
    need_signed = bool(methods & {"entropy", "mse", "distribution"})
    fixed_entropy = "entropy" in methods and settings.entropy_compat != "ort"
    session = _augmented_session(model, tensors, workdir / "augmented_all.onnx")
    metas = _input_meta(session)
    check_inputs(data, metas)
    per_pass = _chunk_count(data, settings.calib_batch)
    total = 2 * per_pass

    states: Dict[str, RangeState] = {name: RangeState(track_abs=need_abs) for name in tensors}
    done = _fold_pass(session, tensors, metas, data, settings,
                      lambda name, arr: states[name].fold(arr), progress, 0, total)

    bins = settings.histogram_bins
    abs_h: Dict[str, HistogramState] = {}
    signed_h: Dict[str, HistogramState] = {}
    one_sided_h: Dict[str, HistogramState] = {}     # entropy (edgetune): |x| over [0, max|x|]
    for name, state in states.items():
        if need_abs:
            abs_h[name] = abs_histogram(bins, state)
        if need_signed:
            signed_h[name] = signed_histogram(bins, state, count_zeros=fixed_entropy)
        if fixed_entropy and is_one_sided(state.min, state.max):
            one_sided_h[name] = one_sided_histogram(bins, state)

    def fold_hist(name: str, arr: np.ndarray) -> None:
        if need_abs:
            abs_h[name].fold(arr)
        if need_signed:
            signed_h[name].fold(arr)
        if name in one_sided_h:
            one_sided_h[name].fold(arr)

    _fold_pass(session, tensors, metas, data, settings, fold_hist, progress, done, total)
    del session

    observed = {name: (float(s.min), float(s.max)) for name, s in states.items()}
    results: Dict[str, Dict[str, Range]] = {}
    stats: Dict[str, Dict[str, float]] = {}
    levels = _act_levels(settings) if "mse" in methods else 0
    for label in labels:
        method, pct = parse_label(label)
        out: Dict[str, Range] = {}
        for name in tensors:
            state = states[name]
            if method == "minmax":
                lo, hi = state.min, state.max
            elif method == "percentile":
                hist, edges = abs_h[name].finish()
                lo, hi = percentile_range(hist, edges, state, pct)
            elif method == "entropy" and not fixed_entropy:
                hist, edges = signed_h[name].finish()
                lo, hi = entropy_range(hist, edges, state, quantized_bins(settings))
            elif method == "entropy":
                lo, hi = entropy_fixed(state, one_sided_h.get(name), signed_h[name], settings)
            elif method == "distribution":
                hist, edges = signed_h[name].finish()
                lo, hi = distribution_range(hist, edges)
                avg, std = distribution_stats(hist, edges)
                stats[name] = {"avg": avg, "std": std}
            else:  # mse
                hist, edges = signed_h[name].finish()
                lo, hi = mse_range(hist, edges, state, levels, settings.symmetric_act)
            out[name] = (float(np.float32(lo)), float(np.float32(hi)))
        results[label] = out
    return observed, results, stats


def calibrate(prepared: PreparedModel, data, settings: QuantizeSettings,
              progress: Optional[Progress] = None, *,
              extra_methods: Sequence[Tuple[str, Optional[float]]] = ()) -> Ranges:
    """Runs calibration over ``data`` (a CalibrationData) and returns the ranges.

    ``extra_methods`` (method, percentile) pairs are computed from the same passes (for
    subgraphs with their own method). Memory stays bounded by one chunk of inputs plus one
    run's activations plus the per-tensor histograms.
    """
    import onnx

    t0 = time.perf_counter()
    main = method_label(settings.method, settings.percentile)
    labels = [main] + [method_label(m, p if p is not None else settings.percentile)
                       for m, p in extra_methods]
    labels = list(dict.fromkeys(labels))
    if settings.entropy_compat not in ENTROPY_COMPAT:
        raise UsageError(f"unknown entropy mode {settings.entropy_compat!r}",
                         hint=f"choose one of: {', '.join(ENTROPY_COMPAT)}")
    if settings.histogram_bins < 2 or (settings.quantized_bins is not None
                                       and settings.quantized_bins < 2):
        raise UsageError("histogram bins and quantized bins must be at least 2")
    if "entropy" in {parse_label(x)[0] for x in labels} and settings.entropy_compat == "ort" \
            and settings.histogram_bins < quantized_bins(settings):
        raise UsageError(f"entropy needs at least as many histogram bins "
                         f"({settings.histogram_bins}) as quantized bins "
                         f"({quantized_bins(settings)})", hint="raise --bins")
    if settings.method == "distribution" and settings.histogram_bins < 512:
        raise UsageError("distribution calibration needs at least 512 histogram bins",
                         hint="raise --bins")
    if not 0 < settings.percentile <= 100:
        raise UsageError(f"percentile {settings.percentile} is not in (0, 100]")
    workdir = prepared.workdir or Path(prepared.path).parent
    model = onnx.load(str(prepared.path))          # shape-inferred by prepare_model
    op_types = sorted(effective_op_types(settings))
    tensors = tensors_to_calibrate(model, op_types)
    if not tensors:
        raise BadInputError("the model has no float activation to calibrate",
                            hint="check --op-types")

    params: Dict[str, Any] = {"calib_batch": settings.calib_batch}
    if all(parse_label(x)[0] == "minmax" for x in labels):
        observed = _calibrate_minmax(model, workdir, data, settings, tensors, progress)
        del model
        results = {main: observed}
        stats: Dict[str, Dict[str, float]] = {}
        params["passes"] = 1
    else:
        observed, results, stats = _calibrate_histograms(
            model, Path(prepared.path), workdir, data, settings, tensors, labels, progress)
        params.update({"passes": 2, "histogram_bins": settings.histogram_bins})
        if any(parse_label(x)[0] == "entropy" for x in labels):
            params.update({"quantized_bins": quantized_bins(settings),
                           "entropy_compat": settings.entropy_compat})
    if any(parse_label(x)[0] == "percentile" for x in labels):
        params["percentile"] = settings.percentile
    if any(parse_label(x)[0] == "mse" for x in labels):
        params["mse_levels"] = _act_levels(settings)
        params["mse_symmetric"] = settings.symmetric_act
    alt = {label: ranges for label, ranges in results.items() if label != main}
    return Ranges(method=main, tensors=results[main], observed=observed, alt=alt, stats=stats,
                  params=params, n_samples=len(data), model_sha256=prepared.source_sha256,
                  elapsed_s=time.perf_counter() - t0)
