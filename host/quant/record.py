"""``OUT.record.json``: everything needed to know how a quantized model was made.

Tool versions, every option, per-tensor scale / zero point / type read back from the output
model's Q/DQ nodes, node counts by precision, the decisions taken and why, opset changes,
time per stage, and the sha256 of input and output.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import platform
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence

import numpy as np

RECORD_FORMAT = "edgetune-quantize-record"
RECORD_VERSION = 1

_ELEM_NAMES = {2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 1: "float32",
               10: "float16", 21: "uint4", 22: "int4"}


def jsonable(value: Any) -> Any:
    """Settings and overrides as JSON: paths as strings, tuples/sets as lists, enums by name."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return sorted(jsonable(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def tool_versions() -> Dict[str, str]:
    import onnx
    import onnxruntime

    from edgetune import __version__

    return {"edgetune": __version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def _array(init) -> np.ndarray:
    from onnx import numpy_helper

    return numpy_helper.to_array(init)


def read_qdq_params(model) -> List[Dict[str, Any]]:
    """One entry per DequantizeLinear: which tensor, kind, type, scale, zero point, axis."""
    inits = {init.name: init for init in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    entries: List[Dict[str, Any]] = []
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        source = node.input[0]
        q_node = producers.get(source)
        if source in inits:
            quantized = inits[source]
            elem = quantized.data_type
            tensor = source[:-len("_quantized")] if source.endswith("_quantized") else source
            kind = "weight" if elem != 6 else "bias"
        elif q_node is not None and q_node.op_type == "QuantizeLinear":
            tensor = q_node.input[0]
            kind = "activation"
            # a type conversion (island border) re-quantizes an earlier DQ's output:
            # Q -> DQ -> Q(new type) -> DQ; name the original tensor
            converted = False
            while True:
                dq = producers.get(tensor)
                if dq is None or dq.op_type != "DequantizeLinear":
                    break
                q = producers.get(dq.input[0])
                if q is None or q.op_type != "QuantizeLinear":
                    break
                tensor, converted = q.input[0], True
            zp_name = node.input[2] if len(node.input) > 2 else ""
            elem = inits[zp_name].data_type if zp_name in inits else 2
        else:
            continue
        scale = _array(inits[node.input[1]]) if node.input[1] in inits else None
        zero = (_array(inits[node.input[2]]) if len(node.input) > 2 and node.input[2] in inits
                else None)
        axis = next((a.i for a in node.attribute if a.name == "axis"), None)
        entry: Dict[str, Any] = {
            "tensor": tensor, "kind": kind, "type": _ELEM_NAMES.get(elem, str(elem)),
            "dq_node": node.name, "domain": node.domain or "ai.onnx",
            "scale": jsonable(scale.reshape(-1) if scale is not None and scale.ndim else scale),
            "zero_point": jsonable(zero.reshape(-1) if zero is not None and zero.ndim else zero),
        }
        if scale is not None and scale.ndim:
            entry["axis"] = 1 if axis is None else int(axis)
        if kind == "activation" and converted:
            entry["converted"] = True
        entries.append(entry)
    return entries


def node_precisions(model, names: Sequence[str], int16_nodes=frozenset(),
                    removed_default: str = "int8", float_nodes=frozenset()) -> Dict[str, str]:
    """For each of ``names`` in the quantized model: int8 / int16 / float, judged by the
    DequantizeLinear outputs it reads (nodes in ``float_nodes`` were excluded: float): none
    makes it float; a 16-bit activation (or, with no
    quantized activation, a 16-bit weight) makes it int16. A name the quantizer removed (a
    Relu folded into its producer's quantization) counts as int8 (int16 in ``int16_nodes``)."""
    inits = {init.name: init for init in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    by_name = {node.name: node for node in model.graph.node}

    def dq_info(tensor: str):
        node = producers.get(tensor)
        if node is None or node.op_type != "DequantizeLinear":
            return None
        source = node.input[0]
        zp = node.input[2] if len(node.input) > 2 else ""
        elem = inits[zp].data_type if zp in inits else (
            inits[source].data_type if source in inits else 2)
        return (16 if elem in (4, 5) else 8), source in inits

    out: Dict[str, str] = {}
    for name in names:
        node = by_name.get(name)
        if name in float_nodes:           # excluded: may still read a DQ its producer made
            out[name] = "float"
            continue
        if node is None:
            out[name] = "int16" if name in int16_nodes else removed_default
            continue
        infos = [i for i in (dq_info(t) for t in node.input if t) if i is not None]
        if not infos:
            out[name] = "float"
            continue
        acts = [bits for bits, is_weight in infos if not is_weight]
        bits = acts or [bits for bits, _ in infos]
        out[name] = "int16" if max(bits) == 16 else "int8"
    return out


def build_record(*, settings, report_fields: Mapping[str, Any], qdq: List[Dict[str, Any]],
                 decisions: Sequence[Any], ranges_info: Mapping[str, Any],
                 overrides: Mapping[str, Any]) -> Dict[str, Any]:
    return {
        "format": RECORD_FORMAT,
        "version": RECORD_VERSION,
        "tools": tool_versions(),
        "platform": {"system": platform.system(), "machine": platform.machine(),
                     "python_executable": Path(sys.executable).name},
        "settings": jsonable(settings),
        **jsonable(dict(report_fields)),
        "ranges": jsonable(dict(ranges_info)),
        "overrides": jsonable(dict(overrides)),
        "decisions": [d.as_dict() if hasattr(d, "as_dict") else jsonable(d) for d in decisions],
        "tensors": qdq,
    }


def record_text(record: Mapping[str, Any]) -> str:
    """Indented JSON, except the per-tensor entries: one compact line each (readable, and
    fast for models with thousands of per-channel scales)."""
    rest = {k: v for k, v in record.items() if k != "tensors"}
    text = json.dumps(rest, indent=1)
    tensors = ",\n  ".join(json.dumps(t, separators=(", ", ": "))
                           for t in record.get("tensors", []))
    return text[:-2] + ',\n "tensors": [\n  ' + tensors + '\n ]\n}\n'
