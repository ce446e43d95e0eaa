"""Models exported from quantization-aware training (QAT) -> a checked, folded QDQ model.

A QAT export (PyTorch's fake-quant, AMCT's ``convert_qat`` input, TensorFlow's QAT through
tf2onnx) already carries QuantizeLinear/DequantizeLinear pairs on its activations and
weights; quantizing it again would add a second set of scales. ``convert_qat``:

1. refuses a model with no Q/DQ node (``--from-qat`` on a float model);
2. checks every scale and zero point, naming the tensor: a scale must be finite and > 0; a
   zero point must fit its type (a zero point stored wider than 8/16 bits, as some
   converters write it, is checked against uint8 for activations and int8 for weights, then
   stored in that type); a per-channel scale's axis must exist in the tensor and its length
   equal the tensor's size along it (the zero point alike);
3. folds each weight's fake-quant (float initializer -> QuantizeLinear -> DequantizeLinear)
   into an integer initializer read by the DequantizeLinear, so the file shrinks as a PTQ
   model's does (rounding half to even, as QuantizeLinear does);
4. writes OUT.onnx, OUT.record.json (the PTQ record's format: ``read_qdq_params`` of the
   output, settings, decisions) and OUT.ranges.json (each activation's clip range from its
   scale and zero point), so ``analyze``, ``bench``, ``compare`` and the tuner see a QAT
   model as they see a PTQ one, and ``quantize FLOAT --ranges OUT.ranges.json`` (or
   ``OUT.record.json``: ``ranges_from_record``) re-quantizes the float model with the
   trained ranges, without calibration data (AMCT's ``convert_model``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from edgetune.host.errors import BadInputError, NotFoundError, UsageError

__all__ = ["QatReport", "convert_qat", "has_qdq", "check_qdq", "ranges_from_record",
           "fill_through_shape_ops"]
SAME_SCALE_OPS = ("MaxPool", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze")

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# numpy dtype name -> (qmin, qmax)
QTYPES: Dict[str, Tuple[int, int]] = {"uint8": (0, 255), "int8": (-128, 127),
                                      "uint16": (0, 65535), "int16": (-32768, 32767)}


@dataclass(frozen=True)
class QatReport:
    output: Path
    record_path: Path
    ranges_path: Path
    n_pairs: int                                  # Q/DQ nodes checked
    n_folded_weights: int
    n_activations: int
    input_bytes: int
    output_bytes: int
    input_sha256: str
    output_sha256: str
    elapsed_s: float
    notes: Tuple[str, ...] = ()
    node_precision: Mapping[str, str] = field(default_factory=dict)

    @property
    def size_ratio(self) -> float:
        return self.output_bytes / self.input_bytes if self.input_bytes else 0.0

    @property
    def n_samples(self) -> int:          # the results store's field: no calibration here
        return 0

    def as_dict(self) -> Dict[str, Any]:
        return {"output": str(self.output), "record": str(self.record_path),
                "ranges": str(self.ranges_path), "qdq_nodes": self.n_pairs,
                "folded_weights": self.n_folded_weights, "activations": self.n_activations,
                "size_bytes": {"input": self.input_bytes, "output": self.output_bytes,
                               "ratio": round(self.size_ratio, 4)},
                "input_sha256": self.input_sha256, "output_sha256": self.output_sha256,
                "elapsed_s": round(self.elapsed_s, 3), "notes": list(self.notes)}


def has_qdq(model: Any) -> bool:
    """Whether ``model`` (a path or ModelProto) holds any QuantizeLinear/DequantizeLinear."""
    if isinstance(model, (str, Path)):
        import onnx
        try:
            model = onnx.load(str(model), load_external_data=False)
        except Exception:  # noqa: BLE001 - not a model: the normal path reports it
            return False
    return any(n.op_type in QDQ_OPS for n in model.graph.node)


# --- checks ---------------------------------------------------------------------------------

class _Graph:
    def __init__(self, model: Any) -> None:
        from onnx import numpy_helper
        self.model = model
        self.inits = {i.name: i for i in model.graph.initializer}
        self.arrays: Dict[str, np.ndarray] = {}
        self.constants: Dict[str, np.ndarray] = {}
        for node in model.graph.node:
            if node.op_type == "Constant" and node.attribute:
                for attr in node.attribute:
                    if attr.name == "value":
                        self.constants[node.output[0]] = numpy_helper.to_array(attr.t)
        self.producers = {o: n for n in model.graph.node for o in n.output}
        self.shapes: Dict[str, Tuple[int, ...]] = {}
        for vi in list(model.graph.value_info) + list(model.graph.input) + \
                list(model.graph.output):
            dims = vi.type.tensor_type.shape.dim
            if dims and all(d.HasField("dim_value") for d in dims):
                self.shapes[vi.name] = tuple(d.dim_value for d in dims)

    def const(self, name: str) -> Optional[np.ndarray]:
        from onnx import numpy_helper
        if name in self.inits:
            if name not in self.arrays:
                self.arrays[name] = numpy_helper.to_array(self.inits[name])
            return self.arrays[name]
        return self.constants.get(name)

    def shape(self, name: str) -> Optional[Tuple[int, ...]]:
        array = self.const(name)
        return tuple(array.shape) if array is not None else self.shapes.get(name)


def _tensor_of(graph: _Graph, node: Any) -> str:
    """The float tensor a Q/DQ pair stands for (for messages)."""
    if node.op_type == "QuantizeLinear":
        return node.input[0]
    q = graph.producers.get(node.input[0])
    if q is not None and q.op_type == "QuantizeLinear":
        return q.input[0]
    return node.input[0]


def check_qdq(model: Any) -> List[str]:
    """Check every Q/DQ node's scale, zero point and axis; BadInputError naming the tensor
    at the first fault. Returns notes (zero points stored wider than their type)."""
    graph = _Graph(model)
    notes: List[str] = []
    nodes = [n for n in model.graph.node if n.op_type in QDQ_OPS]
    if not nodes:
        raise BadInputError("the model holds no QuantizeLinear/DequantizeLinear node: it is not "
                            "a QAT export (no fake-quant pairs)",
                            hint="quantize a float model with --calib (post-training)")
    for node in nodes:
        tensor = _tensor_of(graph, node)
        where = f"{node.op_type} {node.name or '(unnamed)'} of tensor '{tensor}'"
        scale = graph.const(node.input[1]) if len(node.input) > 1 else None
        if scale is None:
            raise BadInputError(f"{where}: its scale {node.input[1]!r} is not a constant",
                                hint="export the model with constant scales (fold the QAT "
                                     "observers)")
        scale = scale.astype(np.float64)
        bad = ~np.isfinite(scale) | (scale <= 0)
        if bad.any():
            value = scale.reshape(-1)[int(np.argmax(bad.reshape(-1)))]
            raise BadInputError(f"{where}: scale {float(value):g} is not a positive finite number",
                                hint="a scale must be > 0 and finite; check the QAT observer "
                                     "of this tensor (a constant or empty tensor gives 0)")
        zp = graph.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        is_weight = _is_weight(graph, node)
        if zp is not None:
            qtype = zp.dtype.name if zp.dtype.name in QTYPES else (
                "int8" if is_weight else "uint8")
            lo, hi = QTYPES[qtype]
            values = zp.astype(np.float64)
            out = (values < lo) | (values > hi) | (values != np.round(values))
            if out.any():
                value = values.reshape(-1)[int(np.argmax(out.reshape(-1)))]
                raise BadInputError(f"{where}: zero point {value:g} is outside {qtype}'s range "
                                    f"[{lo}, {hi}]",
                                    hint="the zero point must be an integer of the quantized "
                                         "type")
            if zp.dtype.name not in QTYPES:
                notes.append(f"zero point of '{tensor}' stored as {zp.dtype.name}: read as "
                             f"{qtype}")
            if zp.shape != scale.shape and zp.size != 1:
                raise BadInputError(f"{where}: zero point shape {list(zp.shape)} differs from "
                                    f"the scale's {list(scale.shape)}")
        if scale.size > 1 or (scale.ndim == 1 and _has_axis(node)):
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            shape = graph.shape(node.input[0])
            if shape is None and node.op_type == "DequantizeLinear":
                q = graph.producers.get(node.input[0])
                shape = graph.shape(q.input[0]) if q is not None else None
            if shape is not None:
                rank = len(shape)
                if not -rank <= axis < rank:
                    raise BadInputError(f"{where}: per-channel axis {axis} does not exist in a "
                                        f"tensor of shape {list(shape)}",
                                        hint="the axis must name the channel dimension "
                                             "(0 for Conv weights)")
                if shape[axis] != scale.size:
                    raise BadInputError(f"{where}: {scale.size} per-channel scales on axis "
                                        f"{axis}, but the tensor has {shape[axis]} there "
                                        f"(shape {list(shape)})",
                                        hint="one scale per channel along the axis")
            elif scale.size > 1:
                raise BadInputError(f"{where}: per-channel scales on a tensor of unknown shape",
                                    hint="per-channel quantization is for weights "
                                         "(initializers)")
    return notes


def _has_axis(node: Any) -> bool:
    return any(a.name == "axis" for a in node.attribute)


def _is_weight(graph: _Graph, node: Any) -> bool:
    source = node.input[0]
    if node.op_type == "DequantizeLinear":
        q = graph.producers.get(source)
        if q is not None and q.op_type == "QuantizeLinear":
            source = q.input[0]
    return source in graph.inits or source in graph.constants


# --- folding --------------------------------------------------------------------------------

def _fold_weights(model: Any, graph: _Graph) -> Tuple[int, List[str]]:
    """float W -> Q -> DQ becomes int W_quantized -> DQ. Returns (folded, notes)."""
    from onnx import numpy_helper
    consumers: Dict[str, List[Any]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    remove: List[Any] = []
    new_inits: List[Any] = []
    folded = 0
    for q in list(model.graph.node):
        if q.op_type != "QuantizeLinear" or q.input[0] not in graph.inits:
            continue
        users = consumers.get(q.output[0], [])
        if not users or any(u.op_type != "DequantizeLinear" for u in users):
            continue
        weight = graph.const(q.input[0]).astype(np.float64)
        scale = graph.const(q.input[1]).astype(np.float64)
        zp_name = q.input[2] if len(q.input) > 2 and q.input[2] else ""
        zp_arr = graph.const(zp_name) if zp_name else np.zeros((), np.uint8)
        qtype = zp_arr.dtype.name if zp_arr.dtype.name in QTYPES else "int8"
        lo, hi = QTYPES[qtype]
        axis = next((a.i for a in q.attribute if a.name == "axis"), 1)
        if scale.size > 1:
            shape = [1] * weight.ndim
            shape[axis] = scale.size
            scale_b = scale.reshape(shape)
            zp_b = zp_arr.astype(np.float64).reshape(shape) if zp_arr.size > 1 \
                else zp_arr.astype(np.float64)
        else:
            scale_b, zp_b = scale.reshape(()), zp_arr.astype(np.float64).reshape(())
        values = np.clip(np.rint(weight / scale_b) + zp_b, lo, hi).astype(qtype)
        name = q.input[0] + "_quantized"
        new_inits.append(numpy_helper.from_array(values, name))
        if zp_name and zp_arr.dtype.name not in QTYPES:
            fixed = numpy_helper.from_array(zp_arr.astype(qtype), zp_name + "_" + qtype)
            new_inits.append(fixed)
            zp_name = fixed.name
        for dq in users:
            dq.input[0] = name
            if zp_name and len(dq.input) > 2:
                dq.input[2] = zp_name
        remove.append(q)
        folded += 1
    for q in remove:
        model.graph.node.remove(q)
    model.graph.initializer.extend(new_inits)
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    return folded, []


def _fix_wide_zero_points(model: Any, graph: _Graph) -> None:
    """Activation zero points stored wider than their type -> that type (checked already)."""
    from onnx import numpy_helper
    made: Dict[str, str] = {}
    stale = set()
    for node in model.graph.node:
        if node.op_type not in QDQ_OPS or len(node.input) < 3 or not node.input[2]:
            continue
        zp = graph.const(node.input[2])
        if zp is None or zp.dtype.name in QTYPES:
            continue
        qtype = "int8" if _is_weight(graph, node) else "uint8"
        key = node.input[2] + "_" + qtype
        if key not in made:
            model.graph.initializer.append(numpy_helper.from_array(zp.astype(qtype), key))
            made[key] = key
        node.input[2] = key
        if node.op_type == "QuantizeLinear":       # its output's inferred type changes
            stale.add(node.output[0])
    kept = [vi for vi in model.graph.value_info if vi.name not in stale]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)


def _activation_ranges(model: Any) -> Dict[str, Tuple[float, float]]:
    """tensor -> (lo, hi) clip range of each activation QuantizeLinear."""
    graph = _Graph(model)
    out: Dict[str, Tuple[float, float]] = {}
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or _is_weight(graph, node):
            continue
        scale = graph.const(node.input[1])
        if scale is None or scale.size != 1:
            continue
        zp = graph.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        qtype = zp.dtype.name if zp is not None and zp.dtype.name in QTYPES else "uint8"
        out[node.input[0]] = _clip_range(float(scale.reshape(())),
                                         int(zp.reshape(-1)[0]) if zp is not None else 0, qtype)
    return out


def _clip_range(scale: float, zp: int, qtype: str) -> Tuple[float, float]:
    lo, hi = QTYPES[qtype]
    if qtype.startswith("int") and zp == 0:       # symmetric: onnxruntime's absmax * 2 / range
        half = scale * (hi - lo) / 2.0
        return (-half, half)
    return ((lo - zp) * scale, (hi - zp) * scale)


# --- entry point ----------------------------------------------------------------------------

def convert_qat(model_path: Path, output: Path, *, force: bool = False) -> QatReport:
    """Check, fold and write a QAT model with its record and ranges (see the module doc)."""
    import onnx

    from edgetune.host.quant.pipeline import _verify_loads
    from edgetune.host.quant.record import (build_record, node_precisions, read_qdq_params,
                                            record_text)
    from edgetune.host.quant.ranges import atomic_write_text
    from edgetune.host.quant.settings import QuantizeSettings, output_paths

    t0 = time.perf_counter()
    model_path, output = Path(model_path), Path(output)
    if not model_path.is_file():
        raise NotFoundError(f"model {model_path} does not exist", hint="check the path")
    if output.exists() and not force:
        raise UsageError(f"{output} exists", hint="pass --force to overwrite it")
    if output.resolve() == model_path.resolve():
        raise UsageError(f"the output {output} is the input model",
                         hint="write the converted model to another path (-o OUT.onnx)")
    if not output.parent.is_dir():
        raise NotFoundError(f"the output folder {output.parent} does not exist",
                            hint="create it first")
    raw = model_path.read_bytes()
    try:
        model = onnx.load_from_string(raw)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and others
        raise BadInputError(f"{model_path} is not an ONNX model ({exc})") from None
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - shapes only sharpen the axis check
        pass
    notes = check_qdq(model)
    graph = _Graph(model)
    n_pairs = sum(1 for n in model.graph.node if n.op_type in QDQ_OPS)
    folded, _ = _fold_weights(model, graph)
    _fix_wide_zero_points(model, _Graph(model))
    ranges = fill_through_shape_ops(_activation_ranges(model), model)
    blob = model.SerializeToString()
    _verify_loads(blob)
    ranges_path, record_path = output_paths(output)
    input_sha = hashlib.sha256(raw).hexdigest()
    output_sha = hashlib.sha256(blob).hexdigest()
    notes.insert(0, f"QAT model {model_path.name}: {n_pairs} Q/DQ nodes checked, "
                    f"{folded} weight fake-quant(s) folded into integer initializers; "
                    "not calibrated")
    settings = QuantizeSettings(model=model_path, output=output, source="qat",
                                force=force, notes=tuple(notes))
    quantizable = [n.name for n in model.graph.node
                   if n.op_type not in QDQ_OPS and n.op_type != "Constant"]
    precision = node_precisions(model, quantizable)
    elapsed = time.perf_counter() - t0
    report = QatReport(output=output, record_path=record_path, ranges_path=ranges_path,
                       n_pairs=n_pairs, n_folded_weights=folded, n_activations=len(ranges),
                       input_bytes=len(raw), output_bytes=len(blob), input_sha256=input_sha,
                       output_sha256=output_sha, elapsed_s=elapsed, notes=tuple(notes),
                       node_precision=precision)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    n16 = sum(1 for p in precision.values() if p == "int16")
    nfloat = sum(1 for p in precision.values() if p == "float")
    fields = {"output": str(output), "record_path": str(record_path),
              "ranges_path": str(ranges_path), "method": "qat",
              "n_quantized_nodes": len(quantizable) - nfloat, "n_int16_nodes": n16,
              "n_float_nodes": nfloat, "quantizable_nodes": quantizable,
              "node_precision": precision, "elapsed_s": round(elapsed, 4),
              "calibrated": False, "n_samples": 0, "input_bytes": len(raw),
              "output_bytes": len(blob), "input_sha256": input_sha,
              "output_sha256": output_sha, "n_int8_nodes": len(quantizable) - nfloat - n16,
              "size_ratio": round(report.size_ratio, 4), "opset": opset,
              "opset_before": opset, "stage_times": {"total": round(elapsed, 4)}}
    record = build_record(settings=settings, report_fields=fields, qdq=read_qdq_params(model),
                          decisions=[{"stage": "qat", "what": note, "why": ""}
                                     for note in notes],
                          ranges_info={"method": "qat", "calibrated": False, "source": None,
                                       "n_samples": 0, "params": {}},
                          overrides={})
    ranges_doc = {"format": "edgetune-ranges", "version": 1, "model_sha256": input_sha,
                  "method": "minmax", "params": {"from": "qat scales"}, "n_samples": 0,
                  "tensors": {k: [float(lo), float(hi)] for k, (lo, hi) in sorted(ranges.items())},
                  "observed": {}, "alt": {}, "stats": {}}
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(blob)
        atomic_write_text(ranges_path, json.dumps(ranges_doc, indent=1) + "\n")
        atomic_write_text(record_path, record_text(record))
        os.replace(tmp, output)
    finally:
        if tmp.exists():
            tmp.unlink()
    return report


def ranges_from_record(raw: Mapping[str, Any], path: Path) -> Dict[str, Any]:
    """An edgetune ranges document from a quantize record (PTQ or QAT): each activation's
    clip range from its scale, zero point and type, so ``--ranges OUT.record.json``
    re-quantizes without calibration data as ``--ranges OUT.ranges.json`` does."""
    tensors: Dict[str, List[float]] = {}
    for entry in raw.get("tensors") or []:
        if not isinstance(entry, dict) or entry.get("kind") != "activation" \
                or entry.get("converted"):
            continue
        scale, zp, qtype = entry.get("scale"), entry.get("zero_point"), entry.get("type")
        if not isinstance(scale, (int, float)) or qtype not in QTYPES:
            continue
        if not math.isfinite(scale) or scale <= 0:
            raise BadInputError(f"record {path}: tensor '{entry.get('tensor')}' has scale "
                                f"{scale!r}")
        lo, hi = _clip_range(float(scale), int(zp or 0), qtype)
        name = str(entry["tensor"])
        if name.endswith("_QuantizeLinear_Input"):      # onnxruntime's name for a graph
            name = name[:-len("_QuantizeLinear_Input")]  # output it quantized
        tensors[name] = [lo, hi]
    if not tensors:
        raise BadInputError(f"record {path} holds no activation scales to re-quantize from",
                            hint="pass the OUT.ranges.json or OUT.record.json of a quantized "
                                 "model")
    method = (raw.get("ranges") or {}).get("method") or "unknown"
    # the ranges are the final clip ranges already: onnxruntime takes them as min/max
    return {"format": "edgetune-ranges", "version": 1,
            "model_sha256": str(raw.get("input_sha256") or ""),
            "method": "minmax", "params": {"from_record": path.name, "record_method": method},
            "n_samples": int((raw.get("ranges") or {}).get("n_samples") or 0),
            "tensors": tensors, "observed": {}, "alt": {}, "stats": {}}


def fill_through_shape_ops(tensors: Mapping[str, Tuple[float, float]], model: Any
                           ) -> Dict[str, Tuple[float, float]]:
    """``tensors`` plus the ranges a record leaves out but onnxruntime derives: the input of
    a Relu/Clip from its output (the quantizer removes them), and either side of a MaxPool /
    Flatten / Reshape / Transpose / (Un)Squeeze from the other (they keep the scale)."""
    out = dict(tensors)
    changed = True
    while changed:
        changed = False
        for node in model.graph.node:
            if not node.input or not node.output:
                continue
            src, dst = node.input[0], node.output[0]
            if node.op_type in ("Relu", "Clip") and dst in out and src not in out:
                out[src] = out[dst]
                changed = True
            elif node.op_type in SAME_SCALE_OPS:
                if dst in out and src not in out:
                    out[src] = out[dst]
                    changed = True
                elif src in out and dst not in out:
                    out[dst] = out[src]
                    changed = True
    return out
