"""Where the quantization error comes from: per-tensor error of a QDQ model against its float model.

``analyze(float_model, quant_model, data)`` runs both models side by side on a few samples and,
for every quantized activation (each QuantizeLinear -> DequantizeLinear pair), every quantized
weight and every model output, measures SQNR (dB), cosine similarity and the noise-to-signal
ratio in two views:

- accumulated: the float model's tensor against the quantized model's tensor after its Q/DQ
  (everything upstream included: what the next layer really receives);
- isolated: the quantized model's tensor before its QuantizeLinear against after its
  DequantizeLinear (only the rounding and clipping this tensor's own quantization adds);
  for a weight: the float weight against its dequantized copy.

Statistics are streamed (running sums per tensor, chunk by chunk), so memory holds one chunk
of activations, never every sample's. The building blocks follow onnxruntime's
``qdq_loss_debug`` (same pairing of ``pre_qdq``/``post_qdq``/``float``, same SQNR definition as
``compute_signal_to_quantization_noice_ratio``), but the Q/DQ pairs are found from the graph's
structure rather than by tensor-name suffix (so renamed pairs and int16<->int8 conversion chains
are found too), the intermediate outputs keep their shapes (needed for per-channel figures;
``modify_model_output_intermediate_tensors`` flattens them) and nothing is kept per sample
(``collect_activations`` keeps every run's outputs in memory). The tests check the figures
against the onnxruntime functions.

Two refinements keep the figures honest: a Relu/Clip the quantizer folded into a range is
applied before comparing (its input is not what the next layer was meant to see), and so is a
Relu that is the only reader of a tensor quantized with that Relu's range. Besides the
tensor-wide figures, the mean per-channel SQNR shows a tensor where one huge channel hides
that every other channel was rounded away; the ranking uses the lower of the two.

Each tensor is mapped back to the nodes (layers) that touch it in both graphs -- its producer
and its consumers, looking through Q/DQ nodes and activations the quantizer fused away -- so the
fallback knows which layers to raise to fix it.

This module is the driver (loading and running both models, pairing tensors, measuring);
the pieces live beside it and every public name is re-exported here:
``edgetune.host.quant.errmetrics`` (the error math: ``ErrorMetrics``, ``ErrorAccumulator``,
``error_metrics``), ``edgetune.host.quant.graphwalk`` (graph structure: ``Graph``, ``find_qdq``,
``dequantize_weight``, ``fused_activation``, ...) and ``edgetune.host.quant.analysis_types`` (the
results: ``TensorError``, ``LayerScore``, ``AnalysisReport``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np

from edgetune.host.errors import BadInputError, NotFoundError
# Re-exported: host.quant.analysis stays the one import for every public name.
from edgetune.host.quant.analysis_types import AnalysisReport, LayerScore, TensorError
from edgetune.host.quant.errmetrics import (NSR_CAP, SQNR_CAP_DB, ErrorAccumulator, ErrorMetrics,
                                   error_metrics, flag_reasons)
from edgetune.host.quant.graphwalk import (QDQ_OPS, Graph, QdqPair, QdqWeight, channel_axis_activation,
                                  consumer_activation, dequantize_weight, find_qdq,
                                  fused_activation, scalar_constant, touching_nodes)

ProgressFn = Callable[[str, int, int], None]


# ---------------------------------------------------------------------- running the models

def _load(path: Path, what: str) -> Any:
    import onnx

    path = Path(path)
    if not path.exists():
        raise NotFoundError(f"{what} {path} does not exist", hint="check the path")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types
        raise BadInputError(f"{what} {path} is not an ONNX model ({type(exc).__name__}: {exc})",
                            hint="give the .onnx file itself") from None
    if not model.HasField("graph") or not len(model.graph.node):
        raise BadInputError(f"{what} {path} is not an ONNX model (it has no graph nodes)",
                            hint="give the .onnx file itself")
    return model


def _with_outputs(model: Any, names: Sequence[str]) -> bytes:
    """The model with ``names`` added as graph outputs (shape left open), serialized."""
    import onnx
    from onnx import helper

    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    known = {vi.name: vi for vi in list(model.graph.value_info) + list(model.graph.output)}
    present = {vi.name for vi in augmented.graph.output}
    for name in names:
        if name in present:
            continue
        elem = 1
        vi = known.get(name)
        if vi is not None and vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            elem = vi.type.tensor_type.elem_type
        augmented.graph.output.append(helper.make_tensor_value_info(name, elem, None))
        present.add(name)
    return augmented.SerializeToString()


def _session(model_bytes: bytes, providers: Optional[Sequence[str]], threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    # Plain Q/DQ arithmetic (no fusion into integer kernels): what the Q/DQ nodes say.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes, sess_options=options,
                                providers=list(providers or ["CPUExecutionProvider"]))


def _run(session: Any, names: Sequence[str], feeds: Dict[str, np.ndarray], model: Path
         ) -> List[np.ndarray]:
    try:
        return session.run(list(names), feeds)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several types
        shapes = ", ".join(f"{k} {list(v.shape)} {v.dtype}" for k, v in feeds.items())
        raise BadInputError(f"onnxruntime could not run {model} on the data ({shapes}): {exc}",
                            hint="check that the data fits the model's inputs (shape, layout, "
                                 "--input-shape) and that both models take the same inputs"
                            ) from None


def _fixed_batch(session: Any) -> Optional[int]:
    sizes = set()
    for arg in session.get_inputs():
        if arg.shape and isinstance(arg.shape[0], int) and arg.shape[0] > 0:
            sizes.add(arg.shape[0])
    return min(sizes) if sizes else None


def _batches(data: Any, max_samples: int, chunk: int, fixed: Optional[int]
             ) -> Iterator[Dict[str, np.ndarray]]:
    """Feeds of at most ``max_samples`` samples in all, ``chunk`` (or the model's fixed batch)
    at a time."""
    done = 0
    for feeds in data.chunks(max(chunk, fixed or 1)):
        count = len(next(iter(feeds.values())))
        take = min(count, max_samples - done)
        if take <= 0:
            return
        step = fixed or take
        for start in range(0, take, step):
            if fixed and start + fixed > take:
                break
            yield {k: np.ascontiguousarray(v[start:start + step]) for k, v in feeds.items()}
        done += take
        if done >= max_samples:
            return


@dataclass
class _Entry:
    """How one activation pair is measured."""

    pair: QdqPair
    name: str                                    # the tensor's name in the float model
    label: str                                   # unique name in the report
    has_float: bool                              # the float model has it (accumulated)
    pre_act: Optional[Callable[[np.ndarray], np.ndarray]] = None   # a Relu folded upstream
    act: Optional[Callable[[np.ndarray], np.ndarray]] = None       # the only consumer's Relu
    iso: Optional[ErrorAccumulator] = None
    acc: Optional[ErrorAccumulator] = None
    no_acc: str = ""                             # why there is no accumulated figure


def _plan(pairs: Sequence[QdqPair], fgraph: Graph, qgraph: Graph) -> List[_Entry]:
    """Name, label and activation handling of every pair."""
    float_names = fgraph.tensors
    post_to_name: Dict[str, str] = {}
    entries: List[_Entry] = []
    for pair in pairs:
        # The pre tensor (usual), or the post one (graph outputs: the quantizer renames the
        # tensor entering QuantizeLinear); a pair whose pre is another pair's post (an int16
        # <-> 8-bit conversion) takes that pair's name.
        if pair.pre in float_names:
            name = pair.pre
        elif pair.post in float_names:
            name = pair.post
        else:
            name = post_to_name.get(pair.pre, pair.pre)
        post_to_name[pair.post] = name
        entry = _Entry(pair, name, name, name in float_names, act=consumer_activation(
            pair, qgraph))
        fprod, qprod = fgraph.producer.get(name), qgraph.producer.get(pair.pre)
        if fprod is not None and qprod is not None and qprod.op_type != fprod.op_type:
            entry.pre_act = fused_activation(fprod, fgraph)   # Relu folded into the range
        entries.append(entry)
    counts: Dict[str, int] = {}
    for entry in entries:
        counts[entry.name] = counts.get(entry.name, 0) + 1
    for entry in entries:
        if counts[entry.name] > 1:
            converted = entry.pair.pre in post_to_name and entry.pair.pre != entry.name
            entry.label = (f"{entry.name} ({entry.pair.quant_type}"
                           f"{', converted' if converted else ''})")
    labels: Dict[str, int] = {}
    for entry in entries:
        labels[entry.label] = labels.get(entry.label, 0) + 1
    for entry in entries:
        if labels[entry.label] > 1:
            entry.label = f"{entry.label} -> {entry.pair.post}"
    return entries


def _measure(entry: _Entry, qvals: Dict[str, np.ndarray], fvals: Dict[str, np.ndarray]) -> None:
    pre, post = qvals[entry.pair.pre], qvals[entry.pair.post]
    if entry.pre_act is not None:
        pre = entry.pre_act(pre)
    if entry.act is not None:
        pre, post = entry.act(pre), entry.act(post)
    axis = channel_axis_activation(post.shape)
    if entry.iso is None:
        entry.iso = ErrorAccumulator(axis)
    entry.iso.update(pre, post)
    if not entry.has_float or entry.no_acc:
        return
    ref = fvals[entry.name]
    if entry.act is not None:
        ref = entry.act(ref)
    if ref.shape != post.shape:
        entry.no_acc = f"{entry.name}: float shape {ref.shape} != quantized {post.shape}"
        entry.acc = None
        return
    if entry.acc is None:
        entry.acc = ErrorAccumulator(axis)
    entry.acc.update(ref, post)


def _weight_errors(weights: Sequence[QdqWeight], fgraph: Graph, qgraph: Graph,
                   cos_thr: float, sqnr_thr: float, unmatched: List[str]) -> List[TensorError]:
    dq_nodes = {node.output[0]: node for node in qgraph.nodes
                if node.op_type == "DequantizeLinear" and node.output}
    out: List[TensorError] = []
    for weight in weights:
        dq = dq_nodes[weight.post]
        name = weight.quantized[:-len("_quantized")] if weight.quantized.endswith("_quantized") \
            else weight.post
        float_value = fgraph.constant(name)
        if float_value is None and weight.post in fgraph.initializers:
            name = weight.post
            float_value = fgraph.constant(name)
        readers = qgraph.compute_consumers(weight.post)
        deq = dequantize_weight(qgraph, weight, dq) if float_value is not None else None
        if float_value is None or deq is None or deq.shape != float_value.shape:
            unmatched.append(name)
            continue
        axis = weight.axis if weight.axis is not None else (0 if deq.ndim >= 2 else None)
        metrics = error_metrics(float_value, deq, axis)
        bias = weight.quant_type == "int32" or any(
            n.op_type in ("Conv", "Gemm", "ConvTranspose") and len(n.input) > 2
            and n.input[2] == weight.post for n in readers)
        kind = "bias" if bias else "weight"
        scale = scalar_constant(qgraph, dq.input[1])
        zp = scalar_constant(qgraph, dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
        reader = readers[0] if readers else None
        out.append(TensorError(
            name=name, kind=kind, node=reader.name if reader is not None else None,
            op_type=reader.op_type if reader is not None else None,
            nodes=tuple(n.name for n in readers), quant_type=weight.quant_type,
            isolated=metrics, accumulated=metrics,
            reasons=tuple(flag_reasons(metrics, kind, cos_thr, sqnr_thr)), scale=scale,
            zero_point=None if zp is None else int(zp), qdq_output=weight.post))
    return out


def analyze(float_model: Path, quant_model: Path, data: Any, *, max_samples: int = 32,
            cosine_threshold: float = 0.99, sqnr_threshold_db: float = 20.0,
            batch_size: int = 2, progress: Optional[ProgressFn] = None,
            providers: Optional[Sequence[str]] = None, threads: int = 0) -> AnalysisReport:
    """Per-tensor error of ``quant_model`` (QDQ) against ``float_model`` on ``data``.

    ``data``: a ``CalibrationData`` (or anything with ``input_names``, ``__len__`` and
    ``chunks(size)``); at most ``max_samples`` samples are used, ``batch_size`` per run.
    """
    t0 = time.perf_counter()
    if max_samples < 1:
        raise BadInputError(f"max_samples must be at least 1, got {max_samples}")
    fmodel = _load(Path(float_model), "float model")
    qmodel = _load(Path(quant_model), "quantized model")
    fgraph, qgraph = Graph(fmodel), Graph(qmodel)
    pairs, weights = find_qdq(qgraph)
    if not pairs and not weights:
        raise BadInputError(
            f"{quant_model} has no QuantizeLinear/DequantizeLinear pairs: it is not a QDQ model",
            hint="analyze a model made by `edgetune quantize` (QDQ format); QOperator models "
                 "(QLinearConv ...) are not supported")
    if set(fgraph.inputs) != set(qgraph.inputs):
        raise BadInputError(
            f"the models have different inputs (float: {', '.join(fgraph.inputs)}; quantized: "
            f"{', '.join(qgraph.inputs)})",
            hint="give the float model the quantized one was made from")
    missing = [n for n in qgraph.inputs if n not in tuple(data.input_names)]
    if missing:
        raise BadInputError(f"the data has no samples for input(s) {', '.join(missing)}",
                            hint="give one --calib source per model input")

    entries = _plan(pairs, fgraph, qgraph)
    q_outputs = sorted({p.pre for p in pairs} | {p.post for p in pairs} | set(qgraph.outputs))
    f_outputs = sorted({e.name for e in entries if e.has_float} | set(fgraph.outputs))
    model_outputs = [n for n in qgraph.outputs if n in set(fgraph.outputs)]
    fsess = _session(_with_outputs(fmodel, f_outputs), providers, threads)
    qsess = _session(_with_outputs(qmodel, q_outputs), providers, threads)
    outs: Dict[str, ErrorAccumulator] = {}
    input_set = set(qgraph.inputs)
    total = min(max_samples, len(data))
    done = 0
    if progress:
        progress("analyze", 0, total)
    for feeds in _batches(data, max_samples, batch_size, _fixed_batch(qsess)):
        feeds = {k: v for k, v in feeds.items() if k in input_set}
        fvals = dict(zip(f_outputs, _run(fsess, f_outputs, feeds, float_model)))
        qvals = dict(zip(q_outputs, _run(qsess, q_outputs, feeds, quant_model)))
        for entry in entries:
            _measure(entry, qvals, fvals)
        for name in model_outputs:
            ref, out = fvals[name], qvals[name]
            if ref.shape == out.shape:
                outs.setdefault(name, ErrorAccumulator(channel_axis_activation(out.shape))
                                ).update(ref, out)
        done += len(next(iter(feeds.values())))
        if progress:
            progress("analyze", done, total)
    if done == 0:
        raise BadInputError("no samples to analyze (the data is empty, or smaller than the "
                            "model's fixed batch size)", hint="give more calibration samples")

    notes: List[str] = [f"no accumulated figures for {e.no_acc}" for e in entries if e.no_acc]
    if not model_outputs:
        notes.append("the two models share no output name: no output metrics")
    tensors: List[TensorError] = []
    unmatched: List[str] = [e.name for e in entries if not e.has_float]
    for entry in entries:
        producer, nodes = touching_nodes(entry.name, entry.pair.pre, entry.pair.post, fgraph, qgraph)
        isolated = entry.iso.result() if entry.iso is not None else None
        accumulated = entry.acc.result() if entry.acc is not None else None
        reasons = (flag_reasons(isolated, "isolated", cosine_threshold, sqnr_threshold_db)
                   + flag_reasons(accumulated, "accumulated", cosine_threshold, sqnr_threshold_db))
        tensors.append(TensorError(
            name=entry.label, kind="activation",
            node=producer.name if producer is not None else None,
            op_type=producer.op_type if producer is not None else None, nodes=nodes,
            quant_type=entry.pair.quant_type, isolated=isolated, accumulated=accumulated,
            reasons=tuple(reasons), scale=entry.pair.scale, zero_point=entry.pair.zero_point,
            qdq_output=entry.pair.post))
    tensors += _weight_errors(weights, fgraph, qgraph, cosine_threshold, sqnr_threshold_db,
                              unmatched)
    outputs = []
    for name in model_outputs:
        metrics = outs[name].result() if name in outs else None
        node = fgraph.producer.get(name)
        outputs.append(TensorError(
            name=name, kind="output", node=node.name if node is not None else None,
            op_type=node.op_type if node is not None else None, nodes=(), quant_type=None,
            isolated=None, accumulated=metrics,
            reasons=tuple(flag_reasons(metrics, "output", cosine_threshold, sqnr_threshold_db))))
    if unmatched:
        notes.append(f"{len(unmatched)} quantized tensor(s) have no counterpart in the float "
                     "model (renamed or fused while preparing): isolated figures only")
    import onnx
    import onnxruntime

    op_types = dict(fgraph.op_types)             # graph order: float model, then the rest
    for node_name, op in qgraph.op_types.items():
        op_types.setdefault(node_name, op)
    return AnalysisReport(
        float_model=str(float_model), quant_model=str(quant_model), samples=done,
        cosine_threshold=cosine_threshold, sqnr_threshold_db=sqnr_threshold_db,
        tensors=tuple(tensors), outputs=tuple(outputs), unmatched=tuple(unmatched),
        notes=tuple(notes), elapsed_s=time.perf_counter() - t0,
        versions=(("onnxruntime", onnxruntime.__version__), ("onnx", onnx.__version__)),
        layers=tuple((k, v) for k, v in op_types.items() if k))


__all__ = ["AnalysisReport", "ErrorAccumulator", "ErrorMetrics", "Graph", "LayerScore",
           "NSR_CAP", "ProgressFn", "QDQ_OPS", "QdqPair", "QdqWeight", "SQNR_CAP_DB",
           "TensorError", "analyze", "dequantize_weight", "error_metrics", "find_qdq",
           "fused_activation"]
