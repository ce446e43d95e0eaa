"""Precision overrides: which nodes stay float, which become int16, which are int8.

Sources (all resolved against the *prepared* model, after every node has a unique name):
- ``settings.exclude`` / ``settings.int16``: node names, fnmatch globs (``layer4.*``) or op
  types (``Softmax``); a pattern that matches nothing is an error that suggests close names;
- ``settings.subgraphs``: every node strictly between boundary tensors (XQuant's
  ``custom_setting``): walking back from each output tensor, every path must end at one of
  the input tensors or at a constant, otherwise the tensors do not enclose a subgraph;
- ``settings.truncate``: every node downstream of these tensors stays float (a detector's
  decode, for example).

Float wins over int16, int16 over int8. ``int16_overrides`` turns the int16 node set into
onnxruntime ``TensorQuantOverrides`` with explicit type conversions at the island borders
(``MixedPrecisionTensorQuantOverridesFixer``), so an int8 model with int16 islands is valid.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Dict, FrozenSet, List, Optional, Sequence, Set, Tuple

from edgetune.host.errors import BadInputError
from edgetune.host.quant.graphwalk import node_links
from edgetune.host.quant.prepare import close_matches, graph_tensor_names
from edgetune.host.quant.settings import QuantizeSettings, SubgraphOverride

PRECISIONS = ("int8", "int16", "float")


@dataclass
class ResolvedOverrides:
    float_nodes: Set[str] = field(default_factory=set)
    int16_nodes: Set[str] = field(default_factory=set)
    reasons: Dict[str, str] = field(default_factory=dict)           # node -> why
    methods: Dict[str, Tuple[str, Optional[float]]] = field(default_factory=dict)  # node -> method
    notes: List[str] = field(default_factory=list)

    def precision(self, node: str) -> str:
        if node in self.float_nodes:
            return "float"
        if node in self.int16_nodes:
            return "int16"
        return "int8"


class _Graph:
    def __init__(self, model, original_nodes: Optional[Dict[str, Tuple[str, Tuple[str, ...]]]]
                 = None, original_tensors: FrozenSet[str] = frozenset()) -> None:
        self.original_nodes = dict(original_nodes or {})
        self.original_tensors = original_tensors
        self.model = model
        self.nodes = list(model.graph.node)
        self.by_name = {node.name: node for node in self.nodes}
        self.producer, self.consumers = node_links(self.nodes)
        self.initializers = {init.name for init in model.graph.initializer}
        self.graph_inputs = {vi.name for vi in model.graph.input} - self.initializers
        self.tensors = graph_tensor_names(model)
        self.op_types = sorted({node.op_type for node in self.nodes})

    def is_constant(self, tensor: str) -> bool:
        if tensor in self.initializers:
            return True
        node = self.producer.get(tensor)
        return node is not None and node.op_type == "Constant"


def _match(names_types: Dict[str, str], pattern: str) -> Set[str]:
    if pattern in names_types:
        return {pattern}
    if any(ch in pattern for ch in "*?["):
        return {name for name in names_types if fnmatch.fnmatchcase(name, pattern)}
    return {name for name, op in names_types.items() if op == pattern}


def match_nodes(graph: _Graph, pattern: str) -> Set[str]:
    """Nodes whose name equals ``pattern``, matches it as a glob, or whose op type is it.

    Patterns also match the source model's nodes: one that pre-processing fused away maps
    to the node that replaced it (named ``<original>/<Fusion>`` by onnxruntime, or producing
    one of its outputs), so names read off the original model keep working.
    """
    found = _match({node.name: node.op_type for node in graph.nodes}, pattern)
    if graph.original_nodes:
        originals = _match({n: op for n, (op, _) in graph.original_nodes.items()}, pattern)
        for orig in originals - set(graph.by_name):
            outputs = set(graph.original_nodes[orig][1])
            for node in graph.nodes:
                if node.name.startswith(orig + "/") or outputs.intersection(node.output):
                    found.add(node.name)
    return found


def resolve_patterns(graph: _Graph, patterns: Sequence[str], option: str) -> Dict[str, str]:
    """node -> the pattern that chose it; BadInputError for a pattern that matches nothing."""
    chosen: Dict[str, str] = {}
    for pattern in patterns:
        found = match_nodes(graph, pattern)
        if not found:
            hint = close_matches(pattern, list(graph.by_name) + graph.op_types
                                 + list(graph.original_nodes))
            raise BadInputError(
                f"{option} {pattern!r} matches no node name, glob or op type of the model"
                f"{hint}",
                hint="names are those of the prepared model (see the record's node list); "
                     "globs use * and ?")
        for name in found:
            chosen.setdefault(name, pattern)
    return chosen


def _missing_tensor(graph: _Graph, tensor: str, what: str) -> BadInputError:
    if tensor in graph.original_tensors:
        return BadInputError(
            f"{what} tensor {tensor!r} was removed by pre-processing (a fusion)"
            f"{close_matches(tensor, sorted(graph.tensors))}",
            hint="name a neighbouring tensor, or skip pre-processing (--skip-model-prep)")
    return BadInputError(
        f"{what} tensor {tensor!r} is not in the graph"
        f"{close_matches(tensor, sorted(graph.tensors))}",
        hint="use tensor names as Netron shows them (node outputs, graph inputs)")


def _check_tensors(graph: _Graph, tensors: Sequence[str], what: str) -> None:
    for tensor in tensors:
        if tensor not in graph.tensors:
            raise _missing_tensor(graph, tensor, what)


def subgraph_nodes(graph: _Graph, sg: SubgraphOverride) -> Set[str]:
    """Every node strictly between ``sg.inputs`` and ``sg.outputs``."""
    label = f"[{', '.join(sg.inputs)}] -> [{', '.join(sg.outputs)}]"
    if not sg.inputs or not sg.outputs:
        raise BadInputError(f"subgraph {label} needs both input and output tensors")
    _check_tensors(graph, sg.inputs, "subgraph input")
    _check_tensors(graph, sg.outputs, "subgraph output")
    boundary = set(sg.inputs)
    found: Set[str] = set()
    stack = []
    for out in sg.outputs:
        if out in boundary:
            raise BadInputError(f"tensors {label} do not enclose a subgraph: {out!r} is both an "
                                "input and an output")
        node = graph.producer.get(out)
        if node is None:
            raise BadInputError(f"tensors {label} do not enclose a subgraph: output {out!r} "
                                "is a graph input or a constant, no node produces it")
        stack.append(node)
    reached_inputs: Set[str] = set()
    while stack:
        node = stack.pop()
        if node.name in found:
            continue
        found.add(node.name)
        for tensor in node.input:
            if not tensor:
                continue
            if tensor in boundary:
                reached_inputs.add(tensor)
                continue
            if graph.is_constant(tensor):
                continue
            if tensor in graph.graph_inputs or tensor not in graph.producer:
                raise BadInputError(
                    f"tensors {label} do not enclose a subgraph: node {node.name!r} reads graph "
                    f"input {tensor!r} from outside",
                    hint="list every non-constant tensor entering the subgraph as an input")
            stack.append(graph.producer[tensor])
    unreached = [t for t in sg.inputs if t not in reached_inputs]
    if unreached:
        raise BadInputError(
            f"tensors {label} do not enclose a subgraph: input(s) {unreached} are not read by "
            "any node between the boundaries",
            hint="an input tensor must enter the subgraph that ends at the outputs")
    return found


def truncated_nodes(graph: _Graph, tensors: Sequence[str]) -> Set[str]:
    """Every node downstream of ``tensors`` (they stay float)."""
    result: Set[str] = set()
    for tensor in tensors:
        if tensor not in graph.tensors:
            raise _missing_tensor(graph, tensor, "truncate graph failed:")
        if not graph.consumers.get(tensor):
            raise BadInputError(
                f"truncate graph failed: tensor {tensor!r} does not split the graph (no node "
                "reads it; it is a graph output)",
                hint="name the tensor where post-processing starts")
        stack = list(graph.consumers[tensor])
        while stack:
            node = stack.pop()
            if node.name in result:
                continue
            result.add(node.name)
            for out in node.output:
                stack.extend(graph.consumers.get(out, []))
    return result


PASS_THROUGH = frozenset({"Relu", "Clip", "LeakyRelu", "MaxPool", "Reshape", "Flatten",
                          "Transpose", "Squeeze", "Unsqueeze", "Identity"})


def _extend_islands(graph: _Graph, int16: Set[str], floats: Set[str]) -> Set[str]:
    """Pass-through nodes (Relu, MaxPool, Reshape...) sandwiched between int16 nodes join the
    island, in place: their activation inputs all come from the island and they lead back
    into it. Otherwise the value is squeezed to 8 bits between two int16 layers
    (``--int16 Conv`` would lose its point at every Relu). An island's end is not extended:
    a subgraph's boundary stays where it was drawn."""
    forward: Set[str] = set()
    changed = True
    while changed:                      # pass-throughs fed only by the island (or each other)
        changed = False
        for node in graph.nodes:
            if (node.op_type not in PASS_THROUGH or node.name in int16 or node.name in floats
                    or node.name in forward):
                continue
            acts = [t for t in node.input if t and not graph.is_constant(t)]
            producers = [graph.producer.get(t) for t in acts]
            if acts and all(p is not None and (p.name in int16 or p.name in forward)
                            for p in producers):
                forward.add(node.name)
                changed = True
    joined: Set[str] = set()
    changed = True
    while changed:                      # ... that lead back into the island
        changed = False
        for node in graph.nodes:
            if node.name not in forward or node.name in joined:
                continue
            consumers = [c for out in node.output for c in graph.consumers.get(out, [])]
            if any(c.name in int16 or c.name in joined for c in consumers):
                joined.add(node.name)
                changed = True
    int16.update(joined)
    return joined


def resolve_overrides(model, settings: QuantizeSettings, prepared=None) -> ResolvedOverrides:
    """Resolves every override of ``settings`` against ``model`` (the prepared model);
    with ``prepared`` (a PreparedModel) names of the source model resolve too."""
    graph = _Graph(model, getattr(prepared, "original_nodes", None),
                   getattr(prepared, "original_tensors", frozenset()))
    result = ResolvedOverrides()
    for node, pattern in resolve_patterns(graph, settings.int16, "--int16").items():
        result.int16_nodes.add(node)
        result.reasons[node] = f"--int16 {pattern}"
    for index, sg in enumerate(settings.subgraphs):
        if sg.precision not in PRECISIONS:
            raise BadInputError(f"subgraph precision {sg.precision!r} is not one of "
                                f"{', '.join(PRECISIONS)}")
        nodes = subgraph_nodes(graph, sg)
        why = f"subgraph #{index + 1} [{', '.join(sg.inputs)}] -> [{', '.join(sg.outputs)}]"
        for node in nodes:
            if sg.precision == "float":
                result.float_nodes.add(node)
            elif sg.precision == "int16":
                result.int16_nodes.add(node)
            result.reasons.setdefault(node, f"{why}: {sg.precision}")
            if sg.method or sg.percentile is not None:
                # a percentile alone (XQuant's max_percentile) means percentile calibration
                method = sg.method or ("percentile" if sg.percentile is not None
                                       else settings.method)
                result.methods[node] = (method, sg.percentile)
    for node, pattern in resolve_patterns(graph, settings.exclude, "--exclude").items():
        result.float_nodes.add(node)
        result.reasons[node] = f"--exclude {pattern}"
    if settings.truncate:
        _check_tensors_truncate = truncated_nodes(graph, settings.truncate)
        for node in _check_tensors_truncate:
            result.float_nodes.add(node)
            result.reasons[node] = f"after --truncate {', '.join(settings.truncate)}"
    joined = _extend_islands(graph, result.int16_nodes, result.float_nodes)
    for node in joined:
        result.reasons[node] = "follows int16 nodes (pass-through op joins the island)"
    if joined:
        result.notes.append(f"{len(joined)} pass-through node(s) after int16 nodes joined their "
                            f"island: {', '.join(sorted(joined)[:6])}")
    overlap = result.int16_nodes & result.float_nodes
    if overlap:
        result.notes.append(f"{len(overlap)} node(s) asked for both int16 and float stay float")
        result.int16_nodes -= overlap
    return result


def node_tensors(model, nodes: Set[str]) -> Set[str]:
    """Activation tensors read or written by ``nodes`` (no initializers)."""
    initializers = {init.name for init in model.graph.initializer}
    out: Set[str] = set()
    for node in model.graph.node:
        if node.name in nodes:
            out.update(t for t in list(node.input) + list(node.output)
                       if t and t not in initializers)
    return out


def int16_overrides(model, int16_nodes: Set[str], default_act: str, symmetric_act: bool,
                    per_channel: bool, weights_int16: bool = True) -> Dict[str, list]:
    """TensorQuantOverrides for an int8 model with int16 islands at exactly ``int16_nodes``.

    Every input and output of an island node is requested as int16 (as onnxruntime's
    ``MixedPrecisionTensorQuantOverridesFixer`` does per node); the fixer then adds the
    conversions where an int8 producer feeds an island or an island feeds int8 consumers.
    Island weights become int16 as well (Acuity's ``dynamic_fixed_point-i16`` does both).
    """
    if not int16_nodes:
        return {}
    from onnxruntime.quantization.execution_providers.qnn.mixed_precision_overrides_utils import (
        MixedPrecisionTensorQuantOverridesFixer,
    )
    from onnxruntime.quantization.quant_utils import QuantType
    from onnxruntime.quantization.tensor_quant_overrides import (
        QuantTypeInfo,
        TensorQuantOverridesHelper,
    )

    default_qtype = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8,
                     "int16": QuantType.QInt16}[default_act]
    island_type = QuantTypeInfo(QuantType.QInt16, symmetric_act)

    class _IslandFixer(MixedPrecisionTensorQuantOverridesFixer):
        def get_desired_tensor_types(self, default_activation_qtype, default_activation_symmetric):
            requests: dict = {}
            for node in model.graph.node:
                if node.name in int16_nodes:
                    self._add_type_requests_for_node(requests, island_type, node)
            return requests

    helper = TensorQuantOverridesHelper({})
    base = MixedPrecisionTensorQuantOverridesFixer.create_from_model(helper, model, default_qtype)
    # create_from_model is a staticmethod that builds the base class: rebuild as ours.
    fixer = _IslandFixer(base.overrides, base.producers, base.consumers, base.value_infos,
                         base.initializers)
    fixer.apply(default_qtype, symmetric_act)
    overrides = helper.get_dict()
    if weights_int16:
        initializers = {init.name for init in model.graph.initializer}
        weight_inputs = {"Conv": (1,), "ConvTranspose": (1,), "Gemm": (1,), "MatMul": (1,),
                         "InstanceNormalization": (1,), "LayerNormalization": (1,)}
        for node in model.graph.node:
            if node.name not in int16_nodes:
                continue
            for idx in weight_inputs.get(node.op_type, ()):
                if idx < len(node.input) and node.input[idx] in initializers:
                    overrides[node.input[idx]] = [{"quant_type": QuantType.QInt16,
                                                   "symmetric": True}]
    return overrides


def describe(result: ResolvedOverrides, model) -> Dict[str, List[str]]:
    """Sorted node lists per precision override (for the record)."""
    return {"float": sorted(result.float_nodes), "int16": sorted(result.int16_nodes)}
