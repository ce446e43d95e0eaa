"""Put a board profile's node names back on the model the user has (``bench --profile``).

onnxruntime profiles the *optimized* graph, whose nodes it renames as it rewrites them:

- a QDQ group fused into ``QLinearConv`` keeps the target node's name, and the NHWC layout
  pass adds ``_token_<n>`` (``conv1_token_1``);
- the NCHWc layout pass names a node after the tensor it produces plus ``_nchwc``
  (``relu1_out_nchwc``: the Conv+Relu that computes ``relu1_out``);
- other fusions append ``/<TransformerName>`` (``detect.conf/GatherSliceToSplitFusion``);
- layout conversions it inserts (``Transpose``, ``ReorderOutput``) exist in no model.

``edgetune analyze`` names the model's own nodes and tensors, so each profiled node is mapped
to the model node it stands for and that node's first output tensor: the key on which a
layer's quantization error and its time on the board meet. A name that none of the rules
leads to a model node maps to nothing (``None``), never to a guess.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Optional, Tuple

_TOKEN = re.compile(r"(_token_\d+)+$")
_SUFFIXES = ("_nchwc",)


@dataclass(frozen=True)
class ModelNode:
    node: str           # the model's node name (as `edgetune analyze` reports layers)
    tensor: str         # its first output: analyze's tensor name


def _candidates(name: str) -> Tuple[str, ...]:
    """``name`` and what it becomes with onnxruntime's renaming undone, most literal first."""
    out = [name]
    base = name.split("/", 1)[0] if "/" in name else name
    for step in range(3):                   # suffixes may stack: x_nchwc_token_3
        stripped = _TOKEN.sub("", base)
        for suffix in _SUFFIXES:
            if stripped.endswith(suffix):
                stripped = stripped[:-len(suffix)]
        if stripped not in out:
            out.append(stripped)
        if stripped == base:
            break
        base = stripped
    if base not in out:
        out.append(base)
    return tuple(c for c in out if c)


def map_to_model(names: Iterable[str], model_path: Optional[Path]) -> Dict[str, ModelNode]:
    """For each profiled node name, the model node it stands for (names with no model node
    are left out). Empty when the model file is not at hand or cannot be read as ONNX (an
    opaque format run by a runner plug-in, say): the profile then shows the names as the board
    gave them."""
    if model_path is None:
        return {}
    try:
        import onnx
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception:  # noqa: BLE001 - not ONNX (or unreadable): nothing to map onto
        return {}
    nodes: Dict[str, ModelNode] = {}
    producers: Dict[str, ModelNode] = {}
    for node in model.graph.node:
        entry = ModelNode(node.name, node.output[0] if node.output else "")
        if node.name:
            nodes.setdefault(node.name, entry)
        for out in node.output:
            if out:
                producers.setdefault(out, entry)
    found: Dict[str, ModelNode] = {}
    for name in names:
        for candidate in _candidates(name):
            hit = nodes.get(candidate) or producers.get(candidate)
            if hit is not None:
                found[name] = hit
                break
    return found
