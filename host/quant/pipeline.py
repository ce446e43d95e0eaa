"""``quantize(settings)``: float ONNX + calibration data -> QDQ ONNX + record + ranges.

prepare (names, pre-process, opset) -> ranges (load ``settings.ranges`` or calibrate, in
bounded memory) -> resolve overrides (exclude / int16 / subgraphs / truncate) -> onnxruntime's
``QDQQuantizer`` with typed options -> the result must load in onnxruntime CPU -> the model,
``OUT.ranges.json`` and ``OUT.record.json`` are renamed into place together. On any error
nothing is left at the output paths.

Default configuration (fastest on CPU onnxruntime while accurate, see the notes): QDQ,
uint8 asymmetric activations, int8 symmetric per-channel weights.

The stages are reusable: ``prepare_model`` and ``calibrate`` once, then
``quantize(settings_variant, prepared=..., ranges=...)`` many times (the fallback does).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np

from edgetune.host.errors import BadInputError, UsageError
from edgetune.host.quant.calibrate import (
    Range,
    Ranges,
    calibrate,
    method_label,
    parse_label,
    tensors_to_calibrate,
)
from edgetune.host.quant.config import check_settings
from edgetune.host.quant.overrides import ResolvedOverrides, int16_overrides, node_tensors, resolve_overrides
from edgetune.host.quant.prepare import (
    Decision,
    PreparedModel,
    convert_opset,
    default_opset,
    drop_unused_opsets,
    needed_opset,
    effective_op_types,
    graph_tensor_names,
    prepare_model,
    quantizable_nodes,
)
from edgetune.host.quant.ranges import atomic_write_text, load_ranges, ranges_to_dict
from edgetune.host.quant.record import build_record, node_precisions, read_qdq_params, record_text
from edgetune.host.quant.settings import QuantizeSettings, output_paths

Progress = Callable[[str, int, int], None]

__all__ = ["QuantizeReport", "quantize", "prepare_model", "calibrate", "output_paths"]


@dataclass(frozen=True)
class QuantizeReport:
    output: Path
    record_path: Path
    ranges_path: Path
    method: str
    n_quantized_nodes: int                      # int8 + int16
    n_int16_nodes: int
    n_float_nodes: int                          # quantizable nodes left float
    quantizable_nodes: Tuple[str, ...]          # nodes that could be quantized
    node_precision: Mapping[str, str] = field(default_factory=dict)   # node -> int8/int16/float
    decisions: Tuple[Decision, ...] = ()
    elapsed_s: float = 0.0
    stage_times: Mapping[str, float] = field(default_factory=dict)
    calibrated: bool = True                     # False: ranges came from a file / the caller
    n_samples: int = 0
    opset_before: int = 0
    opset: int = 0
    input_bytes: int = 0
    output_bytes: int = 0
    input_sha256: str = ""
    output_sha256: str = ""

    @property
    def n_int8_nodes(self) -> int:
        return self.n_quantized_nodes - self.n_int16_nodes

    @property
    def size_ratio(self) -> float:
        return self.output_bytes / self.input_bytes if self.input_bytes else 0.0

    def as_dict(self) -> Dict[str, Any]:
        from edgetune.host.quant.record import jsonable

        data = {name: jsonable(getattr(self, name)) for name in self.__dataclass_fields__}
        data["decisions"] = [d.as_dict() for d in self.decisions]
        data["n_int8_nodes"] = self.n_int8_nodes
        data["size_ratio"] = round(self.size_ratio, 4)
        return data


def _qtype(name: str):
    from onnxruntime.quantization.quant_utils import QuantType

    return {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8, "int16": QuantType.QInt16,
            "uint16": QuantType.QUInt16}[name]


def validate_settings(settings: QuantizeSettings) -> None:
    """Checks that cost nothing, before any work (UsageError): the values
    (``config.check_settings``), then the output file. ``quantize`` and ``run_fallback`` call
    it; so does ``edgetune quantize`` before it loads any calibration data."""
    check_settings(settings)
    output = Path(settings.output)
    if output.exists() and not settings.force:
        raise UsageError(f"{output} already exists", hint="pass --force to overwrite it")
    if output.suffix != ".onnx":
        raise UsageError(f"the output {output} must end in .onnx")
    if not output.parent.exists():
        raise UsageError(f"the output folder {output.parent} does not exist",
                         hint="create it first")
    ranges_path, record_path = output_paths(output)
    if settings.ranges is not None and Path(settings.ranges).resolve() == record_path.resolve():
        raise UsageError("--ranges points at a record file", hint="pass OUT.ranges.json")


def _resolve_ranges(settings: QuantizeSettings, prepared: PreparedModel, model, data,
                    progress: Optional[Progress], extra_methods, decisions: List[Decision]
                    ) -> Tuple[Ranges, bool]:
    if settings.ranges is not None:
        ranges = load_ranges(Path(settings.ranges), model_sha256=prepared.source_sha256,
                             model_tensors=graph_tensor_names(model))
        if ranges.model_sha256 and ranges.model_sha256 != prepared.source_sha256:
            decisions.append(Decision("ranges", f"used ranges from {settings.ranges} made for "
                                      "another model file",
                                      "every tensor they name exists in this model"))
        if ranges.params.get("from_record"):            # --ranges OUT.record.json
            from edgetune.host.quant.qat import fill_through_shape_ops
            filled = fill_through_shape_ops(ranges.tensors, model)
            if len(filled) > len(ranges.tensors):
                decisions.append(Decision(
                    "ranges", f"{len(filled) - len(ranges.tensors)} range(s) taken across "
                    "Relu/Clip/MaxPool/Flatten/Reshape from the record's neighbouring tensor",
                    "a record holds the tensors its model quantized; onnxruntime gives "
                    "these the same scale"))
                ranges = dataclasses.replace(ranges, tensors=filled, observed=dict(filled))
        wanted = method_label(settings.method, settings.percentile)
        if wanted != ranges.method and wanted != "minmax":   # minmax: the flag's default
            if wanted in ranges.alt:
                decisions.append(Decision(
                    "ranges", f"used the file's {wanted} ranges (its main method is "
                    f"{ranges.method})", "the file holds them: no calibration needed"))
                ranges = dataclasses.replace(ranges, method=wanted,
                                             tensors=ranges.for_label(wanted))
            else:
                decisions.append(Decision(
                    "ranges", f"used the file's {ranges.method} ranges, not {wanted}",
                    "ranges are reused as saved; calibrate again to change the method"))
        return ranges, False
    if data is None:
        if not settings.calib:
            raise UsageError("no calibration data: give --calib SOURCE (or --ranges FILE "
                             "to reuse saved ranges)")
        from edgetune.host.quant.calibdata import load_calibration

        data = load_calibration(Path(settings.model), settings)
    return calibrate(prepared, data, settings, progress, extra_methods=extra_methods), True


def _island_ranges(model, resolved: ResolvedOverrides, ranges: Ranges, percentile: float,
                   decisions: List[Decision]) -> Dict[str, Range]:
    """Per-tensor range replacements: subgraph methods, and observed min/max for tensors
    produced inside int16 islands (16 bits resolve outliers; clipping only adds error)."""
    replace: Dict[str, Range] = {}
    if resolved.int16_nodes:
        produced = set()
        for node in model.graph.node:
            if node.name in resolved.int16_nodes:
                produced.update(t for t in node.output if t)
        for tensor in produced:
            if tensor in ranges.observed:
                replace[tensor] = ranges.observed[tensor]
        if parse_label(ranges.method)[0] != "minmax" and produced:
            decisions.append(Decision(
                "overrides", f"int16 island outputs ({len(produced)} tensors) use the observed "
                "min/max", "16 bits resolve the outliers a clipping method would cut"))
    by_label: Dict[str, set] = {}
    for node, (method, pct) in resolved.methods.items():
        label = method_label(method, pct if pct is not None else percentile)
        by_label.setdefault(label, set()).add(node)
    for label, nodes in by_label.items():
        table = ranges.for_label(label)
        for tensor in node_tensors(model, nodes):
            if tensor in table:
                replace[tensor] = table[tensor]
        decisions.append(Decision("overrides", f"{len(nodes)} node(s) use {label} ranges",
                                  "their subgraph asks for that calibration method"))
    return replace


def _build_overrides(model, resolved: ResolvedOverrides, settings: QuantizeSettings,
                     ranges: Ranges) -> Dict[str, list]:
    overrides = int16_overrides(model, resolved.int16_nodes, settings.act_type,
                                settings.symmetric_act, settings.per_channel)
    for weight, axis in per_channel_weights(model, settings.per_channel_ops).items():
        overrides.setdefault(weight, [{"axis": axis}])
    for tensor, entries in overrides.items():
        if not entries:
            continue
        convert = entries[0].get("convert")
        if convert is None:
            continue
        recv = convert.get("recv_nodes")
        if recv is not None:
            recv -= resolved.float_nodes         # float consumers read the original values
            if not recv:
                del entries[0]["convert"]
                continue
        if convert["quant_type"].name != "QInt16" and tensor in ranges.tensors:
            lo, hi = ranges.tensors[tensor]      # back to 8 bits: the calibrated clip range
            convert["rmin"] = np.float32(lo)
            convert["rmax"] = np.float32(hi)
    return overrides


def per_channel_weights(model, kinds: Tuple[str, ...]) -> Dict[str, int]:
    """weight initializer -> channel axis, for the nodes of ``kinds`` ("Conv",
    "Conv/depthwise": a Conv with group == its output channels, "ConvTranspose", "Gemm",
    "MatMul"): per-channel scales for those only (``QuantizeSettings.per_channel_ops``)."""
    if not kinds:
        return {}
    inits = {i.name: i for i in model.graph.initializer}
    out: Dict[str, int] = {}
    for node in model.graph.node:
        if len(node.input) < 2 or node.input[1] not in inits:
            continue
        weight = inits[node.input[1]]
        attrs = {a.name: a for a in node.attribute}
        group = attrs["group"].i if "group" in attrs else 1
        depthwise = node.op_type == "Conv" and group > 1 and group == weight.dims[0]
        kind = "Conv/depthwise" if depthwise else node.op_type
        if kind not in kinds and not (node.op_type == "Conv" and "Conv" in kinds):
            continue
        if node.op_type == "Conv":
            out[weight.name] = 0
        elif node.op_type == "ConvTranspose":
            out[weight.name] = 1
        elif node.op_type == "Gemm":
            out[weight.name] = 0 if "transB" in attrs and attrs["transB"].i else 1
        elif node.op_type == "MatMul":
            out[weight.name] = len(weight.dims) - 1
    return out


def _run_quantizer(model, settings: QuantizeSettings, tensors_data, exclude, overrides,
                   symmetric_ranges: bool, decisions: List[Decision]):
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

    extra: Dict[str, Any] = {"ActivationSymmetric": settings.symmetric_act,
                             "TensorQuantOverrides": overrides}
    if symmetric_ranges:
        extra["QDQKeepRemovableActivations"] = True
        decisions.append(Decision(
            "quantize", "kept Relu/Clip nodes (QDQKeepRemovableActivations)",
            "distribution ranges are symmetric; removing Relu would let negative values "
            "through (digits accuracy 98.9% -> 33% without this)"))
    quantizer = QDQQuantizer(model, settings.per_channel, settings.reduce_range,
                             _qtype(settings.weight_type), _qtype(settings.act_type),
                             tensors_data, [], sorted(exclude),
                             sorted(effective_op_types(settings)), extra)
    if quantizer.qdq_op_domain:
        decisions.append(Decision("quantize", f"Q/DQ in the {quantizer.qdq_op_domain} domain",
                                  "16-bit types below opset 21 (runs only in onnxruntime)"))
    return quantizer.quantize_model()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _verify_loads(model: bytes) -> None:
    import onnxruntime as ort

    try:
        ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise BadInputError(f"the quantized model does not load in onnxruntime CPU: {exc}",
                            hint="try --per-tensor, other --op-types, or --exclude the node "
                                 "named in the message") from None


def quantize(settings: QuantizeSettings, *, data=None, progress: Optional[Progress] = None,
             prepared: Optional[PreparedModel] = None,
             ranges: Optional[Ranges] = None) -> QuantizeReport:
    """Quantizes ``settings.model`` into ``settings.output`` (QDQ), atomically.

    ``data``: a CalibrationData (default: ``load_calibration(settings.model, settings)``).
    ``prepared`` / ``ranges``: reuse the stages of an earlier run (nothing recalibrated).
    """
    import onnx

    t0 = time.perf_counter()
    validate_settings(settings)
    output = Path(settings.output)
    ranges_path, record_path = output_paths(output)
    own_prepared = prepared is None
    if prepared is None:
        prepared = prepare_model(settings)
    times: Dict[str, float] = dict(prepared.stage_times) if own_prepared else {}
    decisions: List[Decision] = list(prepared.decisions)
    temps: List[Path] = []
    try:
        model = onnx.load(str(prepared.path))       # shape-inferred by prepare_model
        target, why = needed_opset(settings)
        if target > default_opset(model):
            # a reused prepared model made for other options (the fallback adding int16)
            model = convert_opset(model, target, why, decisions)
            model = onnx.shape_inference.infer_shapes(model)
        resolved = resolve_overrides(model, settings, prepared)
        decisions += [Decision("overrides", note, "precedence: float > int16 > int8")
                      for note in resolved.notes]
        extra_methods = sorted({m for m in resolved.methods.values()}, key=str)
        t1 = time.perf_counter()
        if ranges is not None:
            calibrated = False
        else:
            ranges, calibrated = _resolve_ranges(settings, prepared, model, data, progress,
                                                 extra_methods, decisions)
        times["calibrate" if calibrated else "load_ranges"] = time.perf_counter() - t1
        op_types = sorted(effective_op_types(settings))
        missing = [t for t in tensors_to_calibrate(model, op_types) if t not in ranges.tensors]
        if missing:
            shown = ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else "")
            raise BadInputError(f"the ranges have no entry for {len(missing)} tensor(s) of "
                                f"this model: {shown}",
                                hint="calibrate again (drop --ranges), or use the same "
                                     "--op-types as the calibration")

        t2 = time.perf_counter()
        replace = _island_ranges(model, resolved, ranges, settings.percentile, decisions)
        overrides = _build_overrides(model, resolved, settings, ranges)
        candidates = quantizable_nodes(model, frozenset(op_types))
        symmetric_ranges = parse_label(ranges.method)[0] == "distribution" or any(
            m == "distribution" for m, _ in resolved.methods.values())
        qmodel = _run_quantizer(model, settings, ranges.to_tensors_data(replace),
                                resolved.float_nodes, overrides, symmetric_ranges, decisions)
        times["quantize"] = time.perf_counter() - t2

        t3 = time.perf_counter()
        fd, tmp_name = tempfile.mkstemp(dir=str(output.parent), prefix=f".{output.name}.",
                                        suffix=".tmp")
        os.close(fd)
        tmp = Path(tmp_name)
        os.chmod(tmp, 0o666 & ~_umask())
        temps.append(tmp)
        drop_unused_opsets(qmodel, decisions)
        blob = qmodel.SerializeToString()      # one serialization: file, check and hash
        with open(tmp, "wb") as handle:
            handle.write(blob)
        if progress:
            progress("write", 0, 1)
        _verify_loads(blob)
        output_sha256 = hashlib.sha256(blob).hexdigest()
        output_bytes = len(blob)
        del blob
        times["verify"] = time.perf_counter() - t3

        precision = node_precisions(qmodel, candidates, resolved.int16_nodes,
                                    "int16" if settings.act_type == "int16" else "int8",
                                    resolved.float_nodes)
        n16 = sum(1 for p in precision.values() if p == "int16")
        nfloat = sum(1 for p in precision.values() if p == "float")
        if nfloat == len(candidates):
            raise BadInputError("nothing was quantized: every quantizable node stayed float",
                                hint="check --exclude / --truncate / --op-types")
        qdq_domains = {n.domain or "ai.onnx" for n in qmodel.graph.node
                       if n.op_type in ("QuantizeLinear", "DequantizeLinear")}
        if n16 or settings.act_type == "int16":
            opset = default_opset(qmodel)
            decisions.append(Decision(
                "quantize", f"16-bit Q/DQ in the {', '.join(sorted(qdq_domains))} domain, "
                f"opset {opset}",
                "standard ONNX from opset 21 runs in any runtime; the com.microsoft domain "
                "(older opsets) only in onnxruntime"))
        for node in sorted(resolved.int16_nodes):
            if precision.get(node) == "float":
                decisions.append(Decision("overrides", f"int16 node {node} stayed float",
                                          "onnxruntime does not quantize this node here"))
        elapsed = time.perf_counter() - t0
        times["total"] = elapsed
        input_bytes = Path(settings.model).stat().st_size
        report = QuantizeReport(
            output=output, record_path=record_path, ranges_path=ranges_path,
            method=ranges.method, n_quantized_nodes=len(candidates) - nfloat,
            n_int16_nodes=n16, n_float_nodes=nfloat, quantizable_nodes=tuple(candidates),
            node_precision=precision, decisions=tuple(decisions), elapsed_s=elapsed,
            stage_times={k: round(v, 4) for k, v in times.items()}, calibrated=calibrated,
            n_samples=ranges.n_samples, opset_before=prepared.opset_before,
            opset=default_opset(qmodel), input_bytes=input_bytes, output_bytes=output_bytes,
            input_sha256=prepared.source_sha256, output_sha256=output_sha256)
        record = build_record(
            settings=settings,
            report_fields={k: v for k, v in report.as_dict().items() if k != "decisions"},
            qdq=read_qdq_params(qmodel), decisions=decisions,
            ranges_info={"method": ranges.method, "calibrated": calibrated,
                         "source": str(settings.ranges) if settings.ranges else None,
                         "n_samples": ranges.n_samples, "params": ranges.params,
                         "elapsed_s": round(ranges.elapsed_s, 4)},
            overrides={"float": {n: resolved.reasons.get(n, "") for n in
                                 sorted(resolved.float_nodes)},
                       "int16": {n: resolved.reasons.get(n, "") for n in
                                 sorted(resolved.int16_nodes)},
                       "tensor_quant_overrides": overrides})
        ranges_tmp = ranges_path.with_name(f".{ranges_path.name}.{os.getpid()}.tmp")
        record_tmp = record_path.with_name(f".{record_path.name}.{os.getpid()}.tmp")
        temps += [ranges_tmp, record_tmp]
        import json

        ranges_tmp.write_text(json.dumps(ranges_to_dict(ranges), indent=1) + "\n",
                              encoding="utf-8")
        record_tmp.write_text(record_text(record), encoding="utf-8")
        os.replace(ranges_tmp, ranges_path)
        os.replace(record_tmp, record_path)
        os.replace(tmp, output)
        if progress:
            progress("write", 1, 1)
        return report
    finally:
        for path in temps:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
        if own_prepared:
            prepared.close()


__all__ += ["validate_settings", "atomic_write_text"]
