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
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from host.errors import BadInputError, NotFoundError

SQNR_CAP_DB = 200.0          # reported instead of +inf (no error at all) and -inf (no signal)
NSR_CAP = 10.0 ** (SQNR_CAP_DB / 10.0)
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
ProgressFn = Callable[[str, int, int], None]

_ELEM_TYPES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32",
               7: "int64", 10: "float16", 11: "float64", 17: "float8e4m3fn",
               21: "uint4", 22: "int4"}


# ---------------------------------------------------------------------- metrics

@dataclass(frozen=True)
class ErrorMetrics:
    """The error of a tensor ``y`` against its reference ``x`` (formulas: ``FORMULAS``)."""

    sqnr_db: float                           # 10*log10(sum x^2 / sum (x-y)^2), capped +/-200
    cosine: float                            # sum xy / (|x| |y|)
    nsr: float                               # sum (x-y)^2 / sum x^2
    channel_sqnr_db: Optional[float] = None  # mean per-channel SQNR (None: no channel axis)
    elements: int = 0                        # how many values were compared

    def as_dict(self) -> Dict[str, Any]:
        return {"sqnr_db": self.sqnr_db, "cosine": self.cosine, "nsr": self.nsr,
                "channel_sqnr_db": self.channel_sqnr_db, "elements": self.elements}


def _sqnr(signal: float, noise: float) -> float:
    if noise <= 0.0:
        return SQNR_CAP_DB
    if signal <= 0.0:
        return -SQNR_CAP_DB
    return max(-SQNR_CAP_DB, min(SQNR_CAP_DB, 10.0 * math.log10(signal / noise)))


class ErrorAccumulator:
    """Running sums of one (reference, test) pair; ``update`` per chunk, ``result`` at the end.

    ``channel_axis``: the axis whose slices get their own SQNR (None: no per-channel figure).
    """

    def __init__(self, channel_axis: Optional[int] = None) -> None:
        self.channel_axis = channel_axis
        self.ref_sq = 0.0
        self.test_sq = 0.0
        self.dot = 0.0
        self.err_sq = 0.0
        self.elements = 0
        self.ch_ref: Optional[np.ndarray] = None
        self.ch_err: Optional[np.ndarray] = None

    def update(self, reference: np.ndarray, test: np.ndarray) -> None:
        """Add one chunk. Products are formed in the inputs' precision (float32 for model
        tensors) per sample and channel, and summed in float64 (relative error ~1e-6)."""
        dtype = np.result_type(np.asarray(reference).dtype, np.asarray(test).dtype, np.float32)
        x = np.ascontiguousarray(reference, dtype=dtype)
        y = np.ascontiguousarray(test, dtype=dtype)
        if x.shape != y.shape:
            raise ValueError(f"shape {x.shape} differs from {y.shape}")
        axis = self.channel_axis
        if axis is not None and x.ndim >= 2 and -x.ndim <= axis < x.ndim:
            axis %= x.ndim
            if axis == 1:
                x3 = x.reshape(x.shape[0], x.shape[1], -1)
                y3 = y.reshape(x3.shape)
            else:
                x3 = np.ascontiguousarray(np.moveaxis(x, axis, 0)).reshape(1, x.shape[axis], -1)
                y3 = np.ascontiguousarray(np.moveaxis(y, axis, 0)).reshape(x3.shape)
        else:
            axis = None
            x3 = x.reshape(1, 1, -1)
            y3 = y.reshape(1, 1, -1)
        e3 = x3 - y3

        def sums(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            return np.einsum("ncr,ncr->nc", a, b).sum(axis=0, dtype=np.float64)

        ch_ref, ch_err = sums(x3, x3), sums(e3, e3)
        self.ref_sq += float(ch_ref.sum())
        self.err_sq += float(ch_err.sum())
        self.dot += float(sums(x3, y3).sum())
        self.test_sq += float(sums(y3, y3).sum())
        self.elements += int(x.size)
        if axis is None:
            return
        if self.ch_ref is None or self.ch_ref.shape != ch_ref.shape:
            if self.ch_ref is not None:         # the channel count changed between chunks
                self.channel_axis = None
                self.ch_ref = self.ch_err = None
                return
            self.ch_ref, self.ch_err = ch_ref, ch_err
        else:
            self.ch_ref += ch_ref
            self.ch_err += ch_err

    def result(self) -> ErrorMetrics:
        sqnr = _sqnr(self.ref_sq, self.err_sq)
        if self.ref_sq > 0.0:
            nsr = min(NSR_CAP, self.err_sq / self.ref_sq)
        else:
            nsr = 0.0 if self.err_sq == 0.0 else NSR_CAP
        denom = math.sqrt(self.ref_sq) * math.sqrt(self.test_sq)
        if self.err_sq == 0.0:
            cosine = 1.0                        # identical (also when both are all zero)
        elif denom > 0.0:
            cosine = max(-1.0, min(1.0, self.dot / denom))
        else:
            cosine = 1.0 if self.ref_sq == self.test_sq == 0.0 else 0.0
        channel: Optional[float] = None
        if self.ch_ref is not None and self.ch_err is not None:
            live = self.ch_ref > 0.0
            if live.any():
                channel = float(np.mean([_sqnr(float(s), float(n)) for s, n in
                                         zip(self.ch_ref[live], self.ch_err[live])]))
        return ErrorMetrics(sqnr_db=sqnr, cosine=cosine, nsr=nsr, channel_sqnr_db=channel,
                            elements=self.elements)


def error_metrics(reference: np.ndarray, test: np.ndarray,
                  channel_axis: Optional[int] = None) -> ErrorMetrics:
    """One-shot ``ErrorMetrics`` of ``test`` against ``reference``."""
    acc = ErrorAccumulator(channel_axis)
    acc.update(reference, test)
    return acc.result()


# ---------------------------------------------------------------------- report types

@dataclass(frozen=True)
class TensorError:
    """The error of one quantized tensor (activation, weight) or one model output."""

    name: str                          # the tensor's name in the float model
    kind: str                          # "activation", "weight", "bias" or "output"
    node: Optional[str]                # the node that produces it (a weight: that reads it)
    op_type: Optional[str]
    nodes: Tuple[str, ...]             # every layer that touches it (raise these to fix it)
    quant_type: Optional[str]          # "uint8", "int8", "int16", ... (None for outputs)
    isolated: Optional[ErrorMetrics]   # its own Q/DQ round trip (None for outputs)
    accumulated: Optional[ErrorMetrics]  # vs the float model (None: no float counterpart)
    reasons: Tuple[str, ...] = ()      # why it is flagged (empty: not flagged)
    scale: Optional[float] = None      # per-tensor scale / zero point (None: per-channel)
    zero_point: Optional[int] = None
    qdq_output: str = ""               # the DequantizeLinear output in the quantized model

    @property
    def flagged(self) -> bool:
        return bool(self.reasons)

    @property
    def score(self) -> float:
        """The ranking key, lower is worse: the error this tensor's own quantization adds
        (isolated SQNR, or its mean per-channel SQNR when lower); outputs rank by accumulated."""
        metrics = self.isolated if self.isolated is not None else self.accumulated
        if metrics is None:
            return SQNR_CAP_DB
        values = [metrics.sqnr_db]
        if metrics.channel_sqnr_db is not None:
            values.append(metrics.channel_sqnr_db)
        return min(values)

    def as_dict(self) -> Dict[str, Any]:
        return {
            "name": self.name, "kind": self.kind, "node": self.node, "op_type": self.op_type,
            "nodes": list(self.nodes), "quant_type": self.quant_type, "scale": self.scale,
            "zero_point": self.zero_point, "score_db": self.score, "flagged": self.flagged,
            "reasons": list(self.reasons),
            "isolated": self.isolated.as_dict() if self.isolated else None,
            "accumulated": self.accumulated.as_dict() if self.accumulated else None,
        }


@dataclass(frozen=True)
class LayerScore:
    """A layer (node) and the worst score of the tensors that touch it."""

    node: str
    op_type: Optional[str]
    score: float
    tensor: str                        # the worst tensor

    def as_dict(self) -> Dict[str, Any]:
        return {"node": self.node, "op_type": self.op_type, "score_db": self.score,
                "tensor": self.tensor}


@dataclass(frozen=True)
class AnalysisReport:
    float_model: str
    quant_model: str
    samples: int
    cosine_threshold: float
    sqnr_threshold_db: float
    tensors: Tuple[TensorError, ...]           # activations and weights, in graph order
    outputs: Tuple[TensorError, ...]           # the model outputs, quantized vs float
    unmatched: Tuple[str, ...] = ()            # quantized tensors the float model lacks
    notes: Tuple[str, ...] = ()
    elapsed_s: float = 0.0
    versions: Tuple[Tuple[str, str], ...] = ()
    layers: Tuple[Tuple[str, str], ...] = field(default=(), repr=False)  # (node, op type),
                                                                          # in graph order

    def ranked(self) -> List[TensorError]:
        """Every quantized activation and weight, worst first (lowest ``score``).

        Biases are not ranked: an int32 bias's step is its layer's input scale times the
        weight scale, so its error follows from that input activation's range, which is
        ranked itself (see ``biases``)."""
        def key(t: TensorError) -> Tuple[float, float, str]:
            acc = t.accumulated.sqnr_db if t.accumulated is not None else SQNR_CAP_DB
            return (t.score, acc, t.name)
        return sorted((t for t in self.tensors if t.kind != "bias"), key=key)

    def biases(self) -> List[TensorError]:
        """The quantized biases, worst first."""
        return sorted((t for t in self.tensors if t.kind == "bias"), key=lambda t: t.score)

    def flagged(self) -> List[TensorError]:
        return [t for t in self.ranked() + self.biases() if t.flagged]

    def layer_scores(self, candidates: Optional[Iterable[str]] = None) -> List[LayerScore]:
        """Layers worst first: each node scores the worst of the tensors that touch it.
        ``candidates``: only these nodes (e.g. the quantizable ones)."""
        allowed = set(candidates) if candidates is not None else None
        best: Dict[str, LayerScore] = {}
        op_types = dict(self.layers)
        for tensor in self.ranked():
            for node in tensor.nodes:
                if allowed is not None and node not in allowed:
                    continue
                if node not in best or tensor.score < best[node].score:
                    best[node] = LayerScore(node, op_types.get(node), tensor.score, tensor.name)
        order = {name: i for i, (name, _) in enumerate(self.layers)}
        return sorted(best.values(), key=lambda s: (s.score, order.get(s.node, len(order)), s.node))

    def as_dict(self) -> Dict[str, Any]:
        from host.quant.report import analysis_dict

        return analysis_dict(self)

    def to_json(self, indent: int = 2) -> str:
        from host.quant.report import analysis_json

        return analysis_json(self, indent=indent)

    def to_markdown(self, top: Optional[int] = None) -> str:
        from host.quant.report import analysis_markdown

        return analysis_markdown(self, top=top)

    def to_png(self, path: Path, top: int = 30) -> Optional[Path]:
        """The bar chart; None (and a logged "plot skipped" line) without matplotlib."""
        from host.quant.report import analysis_png

        return analysis_png(self, Path(path), top=top)


# ---------------------------------------------------------------------- graph structure

@dataclass(frozen=True)
class QdqPair:
    """One QuantizeLinear -> DequantizeLinear pair on an activation in the quantized model."""

    pre: str                 # the tensor entering QuantizeLinear
    post: str                # the tensor leaving DequantizeLinear
    quant_type: str
    scale: Optional[float]
    zero_point: Optional[int]


@dataclass(frozen=True)
class QdqWeight:
    """A constant DequantizeLinear (a quantized weight or bias)."""

    quantized: str           # the integer initializer
    post: str                # the dequantized tensor
    quant_type: str
    axis: Optional[int]      # per-channel axis (None: per-tensor)


class Graph:
    """Producers and consumers of every tensor of one ONNX graph (main graph only)."""

    def __init__(self, model: Any) -> None:
        graph = model.graph
        self.producer: Dict[str, Any] = {}
        self.consumers: Dict[str, List[Any]] = {}
        self.nodes = list(graph.node)
        for node in self.nodes:
            for name in node.output:
                if name:
                    self.producer[name] = node
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)
        self.initializers = {init.name: init for init in graph.initializer}
        self.inputs = [vi.name for vi in graph.input if vi.name not in self.initializers]
        self.outputs = [vi.name for vi in graph.output]
        self.tensors = set(self.producer) | set(self.inputs) | set(self.initializers)
        self.op_types = {node.name: node.op_type for node in self.nodes}

    def constant(self, name: str) -> Optional[np.ndarray]:
        from onnx import numpy_helper

        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
        return None

    def compute_producer(self, name: str) -> Optional[Any]:
        """The node producing ``name``, looking back through Q/DQ nodes."""
        seen = 0
        node = self.producer.get(name)
        while node is not None and node.op_type in QDQ_OPS and seen < 16:
            node = self.producer.get(node.input[0])
            seen += 1
        return node if node is not None and node.op_type not in QDQ_OPS else None

    def compute_consumers(self, name: str) -> List[Any]:
        """The nodes reading ``name``, looking forward through Q/DQ nodes."""
        found: List[Any] = []
        stack = [name]
        seen = set()
        while stack:
            tensor = stack.pop()
            if tensor in seen:
                continue
            seen.add(tensor)
            for node in self.consumers.get(tensor, []):
                if node.op_type in QDQ_OPS:
                    if node.input[0] == tensor:
                        stack.extend(o for o in node.output if o)
                elif node not in found:
                    found.append(node)
        return found


def _quant_type(graph: Graph, node: Any) -> str:
    """The integer type of a Q or DQ node: its zero point's type (or output_dtype)."""
    if len(node.input) > 2 and node.input[2]:
        init = graph.initializers.get(node.input[2])
        if init is not None:
            return _ELEM_TYPES.get(init.data_type, str(init.data_type))
        zp = graph.constant(node.input[2])
        if zp is not None:
            return str(zp.dtype)
    for attr in node.attribute:
        if attr.name == "output_dtype" and attr.i:
            return _ELEM_TYPES.get(attr.i, str(attr.i))
    return "uint8"


def _scalar(graph: Graph, name: str) -> Optional[float]:
    value = graph.constant(name) if name else None
    if value is None or value.size != 1:
        return None
    return float(value.reshape(()))


def find_qdq(graph: Graph) -> Tuple[List[QdqPair], List[QdqWeight]]:
    """Every activation Q->DQ pair and every constant DQ (weights, biases) of a QDQ graph."""
    pairs: List[QdqPair] = []
    weights: List[QdqWeight] = []
    for node in graph.nodes:
        if node.op_type != "DequantizeLinear" or not node.output or not node.output[0]:
            continue
        source = node.input[0]
        if source in graph.initializers or (source in graph.producer
                                            and graph.producer[source].op_type == "Constant"):
            axis = None
            scale = graph.constant(node.input[1])
            if scale is not None and scale.size > 1:
                axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            weights.append(QdqWeight(source, node.output[0], _quant_type(graph, node), axis))
            continue
        q = graph.producer.get(source)
        if q is None or q.op_type != "QuantizeLinear":
            continue
        zp = _scalar(graph, q.input[2]) if len(q.input) > 2 else 0.0
        pairs.append(QdqPair(pre=q.input[0], post=node.output[0],
                             quant_type=_quant_type(graph, q),
                             scale=_scalar(graph, q.input[1]),
                             zero_point=None if zp is None else int(zp)))
    return pairs, weights


def dequantize_weight(graph: Graph, weight: QdqWeight, dq_node: Any) -> Optional[np.ndarray]:
    """(q - zero_point) * scale, with per-channel broadcasting along the DQ axis."""
    q = graph.constant(weight.quantized)
    scale = graph.constant(dq_node.input[1])
    if q is None or scale is None:
        return None
    zp = graph.constant(dq_node.input[2]) if len(dq_node.input) > 2 and dq_node.input[2] else None
    values = q.astype(np.float64)
    scale = scale.astype(np.float64)
    zp64 = np.zeros_like(scale) if zp is None else zp.astype(np.float64)
    if scale.size > 1 and values.ndim >= 1:
        axis = weight.axis if weight.axis is not None else 1
        axis = axis % values.ndim
        shape = [1] * values.ndim
        shape[axis] = scale.size
        scale = scale.reshape(shape)
        zp64 = zp64.reshape(shape)
    else:
        scale = scale.reshape(())
        zp64 = zp64.reshape(())
    return (values - zp64) * scale


def fused_activation(node: Any, graph: Graph) -> Optional[Callable[[np.ndarray], np.ndarray]]:
    """What a Relu or Clip the quantizer removed did (it folds them into the Q/DQ range), so
    the isolated figure compares against the activation's output, not its input."""
    if node is None:
        return None
    if node.op_type == "Relu":
        return lambda x: np.maximum(x, 0)
    if node.op_type == "Clip":
        low: Optional[float] = None
        high: Optional[float] = None
        for attr in node.attribute:             # opset < 11
            if attr.name == "min":
                low = attr.f
            elif attr.name == "max":
                high = attr.f
        if len(node.input) > 1 and node.input[1]:
            value = graph.constant(node.input[1])
            low = float(value.reshape(())) if value is not None else low
        if len(node.input) > 2 and node.input[2]:
            value = graph.constant(node.input[2])
            high = float(value.reshape(())) if value is not None else high
        return lambda x: np.clip(x, low, high)
    return None


def _channel_axis_activation(shape: Sequence[int]) -> Optional[int]:
    return 1 if len(shape) >= 2 else None


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


def _flags(metrics: Optional[ErrorMetrics], view: str, cos_thr: float, sqnr_thr: float
           ) -> List[str]:
    if metrics is None:
        return []
    reasons = []
    if metrics.cosine < cos_thr:
        reasons.append(f"{view} cosine {metrics.cosine:.4f} < {cos_thr:g}")
    if metrics.sqnr_db < sqnr_thr:
        reasons.append(f"{view} SQNR {metrics.sqnr_db:.1f} dB < {sqnr_thr:g} dB")
    channel = metrics.channel_sqnr_db
    if channel is not None and channel < sqnr_thr and view != "accumulated":
        reasons.append(f"{view} channel SQNR {channel:.1f} dB < {sqnr_thr:g} dB")
    return reasons


def _touching(name: str, pair_pre: str, pair_post: str, fgraph: Graph, qgraph: Graph
              ) -> Tuple[Optional[Any], Tuple[str, ...]]:
    """(the producing node, every compute node touching the tensor in either graph)."""
    ordered: List[str] = []

    def add(node: Optional[Any]) -> None:
        if node is not None and node.op_type not in QDQ_OPS and node.name not in ordered:
            ordered.append(node.name)

    fprod = fgraph.producer.get(name)
    qprod = qgraph.compute_producer(pair_pre)
    add(qprod)
    add(fprod)
    # An activation the quantizer fused away (Relu after Conv) sits between the two.
    if fprod is not None and fprod.input and qprod is not None and fprod.name != qprod.name:
        add(fgraph.producer.get(fprod.input[0]))
    for node in qgraph.compute_consumers(pair_post):
        add(node)
    for node in fgraph.consumers.get(name, []):
        add(node)
    # The layer that really produces it in the quantized model (the Conv a Relu was fused
    # into) names it; the float graph's producer otherwise.
    producer = qprod if qprod is not None else fprod
    return producer, tuple(ordered)


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


def _consumer_activation(pair: QdqPair, qgraph: Graph) -> Optional[Callable]:
    """When every layer reading the pair's output is the same Relu/Clip, the error that
    matters is after it: a range that clips what the activation removes anyway (the
    quantizer gives a Relu's input its output's range) costs nothing."""
    readers = qgraph.compute_consumers(pair.post)
    if not readers or any(n.op_type not in ("Relu", "Clip") for n in readers):
        return None
    kinds = {(n.op_type, tuple(n.input[1:])) for n in readers}
    return fused_activation(readers[0], qgraph) if len(kinds) == 1 else None


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
        entry = _Entry(pair, name, name, name in float_names, act=_consumer_activation(
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
    axis = _channel_axis_activation(post.shape)
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
        scale = _scalar(qgraph, dq.input[1])
        zp = _scalar(qgraph, dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
        reader = readers[0] if readers else None
        out.append(TensorError(
            name=name, kind=kind, node=reader.name if reader is not None else None,
            op_type=reader.op_type if reader is not None else None,
            nodes=tuple(n.name for n in readers), quant_type=weight.quant_type,
            isolated=metrics, accumulated=metrics,
            reasons=tuple(_flags(metrics, kind, cos_thr, sqnr_thr)), scale=scale,
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
                outs.setdefault(name, ErrorAccumulator(_channel_axis_activation(out.shape))
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
        producer, nodes = _touching(entry.name, entry.pair.pre, entry.pair.post, fgraph, qgraph)
        isolated = entry.iso.result() if entry.iso is not None else None
        accumulated = entry.acc.result() if entry.acc is not None else None
        reasons = (_flags(isolated, "isolated", cosine_threshold, sqnr_threshold_db)
                   + _flags(accumulated, "accumulated", cosine_threshold, sqnr_threshold_db))
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
            reasons=tuple(_flags(metrics, "output", cosine_threshold, sqnr_threshold_db))))
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


__all__ = ["AnalysisReport", "ErrorAccumulator", "ErrorMetrics", "LayerScore",
           "SQNR_CAP_DB", "TensorError", "analyze", "error_metrics", "find_qdq"]
