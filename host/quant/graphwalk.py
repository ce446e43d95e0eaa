"""The structure of QDQ graphs: producers and consumers, Q/DQ pairs, quantized weights.

``find_qdq`` finds every activation QuantizeLinear -> DequantizeLinear pair and every
constant DequantizeLinear (weights, biases) from the graph's structure, not by tensor-name
suffix, so renamed pairs and int16 <-> 8-bit conversion chains are found too.
``touching_nodes`` maps a tensor back to the layers that touch it in the float and the
quantized graph (looking through Q/DQ nodes and activations the quantizer fused away), so
the fallback knows which layers to raise to fix it. Part of ``edgetune.host.quant.analysis`` (which
re-exports the public names).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")

_ELEM_TYPES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32",
               7: "int64", 10: "float16", 11: "float64", 17: "float8e4m3fn",
               21: "uint4", 22: "int4"}


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


def node_links(nodes: Sequence[Any]) -> Tuple[Dict[str, Any], Dict[str, List[Any]]]:
    """``(producer, consumers)``: the node writing each tensor, the nodes reading it (in
    node order); empty names (omitted optional inputs and outputs) are skipped."""
    producer: Dict[str, Any] = {}
    consumers: Dict[str, List[Any]] = {}
    for node in nodes:
        for name in node.output:
            if name:
                producer[name] = node
        for name in node.input:
            if name:
                consumers.setdefault(name, []).append(node)
    return producer, consumers


class Graph:
    """Producers and consumers of every tensor of one ONNX graph (main graph only)."""

    def __init__(self, model: Any) -> None:
        graph = model.graph
        self.nodes = list(graph.node)
        self.producer, self.consumers = node_links(self.nodes)
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


def scalar_constant(graph: Graph, name: str) -> Optional[float]:
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
        zp = scalar_constant(graph, q.input[2]) if len(q.input) > 2 else 0.0
        pairs.append(QdqPair(pre=q.input[0], post=node.output[0],
                             quant_type=_quant_type(graph, q),
                             scale=scalar_constant(graph, q.input[1]),
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


def channel_axis_activation(shape: Sequence[int]) -> Optional[int]:
    return 1 if len(shape) >= 2 else None


def touching_nodes(name: str, pair_pre: str, pair_post: str, fgraph: Graph, qgraph: Graph
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


def consumer_activation(pair: QdqPair, qgraph: Graph) -> Optional[Callable]:
    """When every layer reading the pair's output is the same Relu/Clip, the error that
    matters is after it: a range that clips what the activation removes anyway (the
    quantizer gives a Relu's input its output's range) costs nothing."""
    readers = qgraph.compute_consumers(pair.post)
    if not readers or any(n.op_type not in ("Relu", "Clip") for n in readers):
        return None
    kinds = {(n.op_type, tuple(n.input[1:])) for n in readers}
    return fused_activation(readers[0], qgraph) if len(kinds) == 1 else None


__all__ = ["Graph", "QDQ_OPS", "QdqPair", "QdqWeight", "channel_axis_activation",
           "consumer_activation", "dequantize_weight", "find_qdq", "fused_activation", "node_links",
           "scalar_constant", "touching_nodes"]
