"""Zhouyi AIPU builder (R329) ``.cfg`` files -> a ConfigLayer (read by ``host.quant.config``).

An INI file with ``[Common]``, ``[Parser]``, ``[AutoQuantizationTool]`` and ``[GBuilder]``
sections. How each key is honoured (every decision is a note in the output's record):

- ``[Parser]``: ``input_model`` -> the model (relative to the .cfg's folder, as every path
  here); ``input`` and ``input_shape`` (one or several, comma-separated names and
  ``[1, 3, 224, 224]`` lists in the same order) -> which input each calibration array feeds
  and its full shape; ``output`` -> ``truncate`` (everything after these tensors stays
  float); ``input_data_format`` (NCHW/NHWC) -> the input layout; ``model_type`` must be
  ``onnx``; ``output_dir`` -> the output's folder (``<model>.q.onnx`` there);
  ``model_name``, ``model_domain``, ``detection_postprocess`` are descriptive (noted).
- ``[AutoQuantizationTool]``: ``quantize_method`` SYMMETRIC -> int8 symmetric activations,
  ASYMMETRIC -> uint8 asymmetric; ``ops_per_channel`` -> per-channel weight scales only for
  the named op kinds (``DepthwiseConv`` = Conv with group == its channels, ``Conv``,
  ``FullyConnected``/``Gemm``/``MatMul``), per-tensor for the rest; ``calibration_data`` ->
  one ``.npy`` per input (first axis = samples); ``calibration_label`` -> kept in the record,
  and the labels of an accuracy check when ``--max-drop`` is given without ``--eval``;
  ``preprocess_mode`` -> noted (the ``.npy`` is fed as stored: it holds preprocessed
  tensors); ``reverse_rgb`` -> the channel order (BGR) of image sources, noted for ``.npy``;
  ``quant_precision`` int8 or int16 (activations; weights stay int8).
- ``[GBuilder]`` (``simulator``, ``target``, ``profile``, ``inputs``, ``outputs``) and
  ``[Common] mode`` drive the vendor's code generator and simulator: they do not apply to an
  ONNX QDQ output, are named in one warning, and skipped.

A key this reader does not know is an error naming it and the nearest known key.
"""

from __future__ import annotations

import configparser
import difflib
import logging
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edgetune.host.errors import BadInputError, NotFoundError
from edgetune.host.quant.config import ConfigLayer, resolve_path
from edgetune.host.quant.settings import CalibSource, Preprocess

log = logging.getLogger(__name__)

__all__ = ["from_aipu", "looks_like_aipu", "KNOWN_KEYS", "NOT_APPLICABLE", "PER_CHANNEL_OPS"]

MAPPED = {
    "Parser": ("input_model", "input", "input_shape", "output", "input_data_format",
               "model_type", "output_dir"),
    "AutoQuantizationTool": ("quantize_method", "ops_per_channel", "calibration_data",
                             "calibration_label", "preprocess_mode", "reverse_rgb",
                             "quant_precision"),
}
DESCRIPTIVE = {
    "Parser": ("model_name", "model_domain", "detection_postprocess"),
    "AutoQuantizationTool": ("model_name", "label_id_offset"),
}
NOT_APPLICABLE = {
    "Common": ("mode",),
    "GBuilder": ("simulator", "target", "profile", "inputs", "outputs"),
}
KNOWN_KEYS: Dict[str, Tuple[str, ...]] = {
    section: tuple(MAPPED.get(section, ())) + tuple(DESCRIPTIVE.get(section, ()))
    + tuple(NOT_APPLICABLE.get(section, ()))
    for section in ("Common", "Parser", "AutoQuantizationTool", "GBuilder")}
# AIPU op kind -> edgetune op-type patterns (host.quant.overrides: "op:<type>[/depthwise]").
PER_CHANNEL_OPS = {"depthwiseconv": "Conv/depthwise", "conv": "Conv",
                   "convolution": "Conv", "fullyconnected": "Gemm", "gemm": "Gemm",
                   "matmul": "MatMul", "convtranspose": "ConvTranspose",
                   "deconvolution": "ConvTranspose"}
PREPROCESS_MODES = ("normalize", "minus_mean", "none", "")
FORMATS = {"nchw": "nchw", "nhwc": "nhwc"}


def looks_like_aipu(text: str) -> bool:
    return bool(re.search(r"^\s*\[(Parser|AutoQuantizationTool|GBuilder)\]\s*$", text, re.M))


def from_aipu(text: str, path: Path) -> ConfigLayer:
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=("#", ";"),
                                       strict=False)
    parser.optionxform = str                      # keep the key's spelling for messages
    try:
        parser.read_string(text, source=str(path))
    except configparser.Error as exc:
        raise BadInputError(f"config file {path} is not a valid AIPU .cfg (INI): {exc}") from None
    _check_keys(parser, path)
    base = path.parent
    parse = dict(parser["Parser"]) if parser.has_section("Parser") else {}
    aqt = dict(parser["AutoQuantizationTool"]) if parser.has_section(
        "AutoQuantizationTool") else {}
    notes: List[str] = [f"settings read from AIPU builder config {path.name}"]
    values: Dict[str, Any] = {"source": f"aipu:{path.name}"}

    model_type = parse.get("model_type", "onnx").strip().lower()
    if model_type != "onnx":
        raise BadInputError(f"config file {path}: [Parser] model_type = {model_type}: edgetune "
                            "quantizes ONNX models only", hint="export the model to ONNX first")
    model_text = parse.get("input_model", "").strip()
    if not model_text:
        raise BadInputError(f"config file {path}: [Parser] input_model is missing",
                            hint="set it to the float ONNX model's path")
    model = resolve_path(model_text, base)
    if not model.is_file():
        raise NotFoundError(f"config file {path}: [Parser] input_model {model_text} does not "
                            f"exist (looked for {model})",
                            hint="paths in the .cfg are relative to its folder")
    values["model"] = model
    out_dir = resolve_path(parse["output_dir"].strip(), base) \
        if parse.get("output_dir", "").strip() else model.parent
    values["output"] = out_dir / (model.name.rsplit(".onnx", 1)[0] + ".q.onnx")

    names = _names(parse.get("input", ""))
    shapes = _shapes(parse.get("input_shape", ""), path)
    if shapes and names and len(shapes) != len(names):
        raise BadInputError(f"config file {path}: [Parser] input names {len(names)} "
                            f"({', '.join(names)}) but input_shape gives {len(shapes)} shapes",
                            hint="give one shape per input, in the same order")
    truncate = _names(parse.get("output", ""))
    ends = _final_outputs(model, truncate)
    if ends:
        notes.append(f"[Parser] output = {', '.join(ends)}: already the model's output(s), "
                     "nothing to cut there")
        truncate = [t for t in truncate if t not in ends]
    if truncate:
        values["truncate"] = tuple(truncate)
        notes.append(f"[Parser] output = {', '.join(truncate)}: the model is cut there as "
                     "--truncate does (everything after stays float)")
    layout: Optional[str] = None
    if parse.get("input_data_format", "").strip():
        fmt = parse["input_data_format"].strip().lower()
        if fmt not in FORMATS:
            raise BadInputError(f"config file {path}: [Parser] input_data_format {fmt!r}",
                                hint="use NCHW or NHWC")
        layout = FORMATS[fmt]

    method = aqt.get("quantize_method", "").strip().upper()
    precision = aqt.get("quant_precision", "int8").strip().lower() or "int8"
    if precision not in ("int8", "int16"):
        raise BadInputError(f"config file {path}: [AutoQuantizationTool] quant_precision "
                            f"{precision!r}", hint="use int8 or int16")
    if method not in ("", "SYMMETRIC", "ASYMMETRIC"):
        raise BadInputError(f"config file {path}: [AutoQuantizationTool] quantize_method "
                            f"{method!r}", hint="use SYMMETRIC or ASYMMETRIC")
    if precision == "int16":
        values["act_type"] = "int16"
        values["symmetric_act"] = method != "ASYMMETRIC"
        notes.append("quant_precision int16 -> int16 activations everywhere (weights int8)")
    elif method == "SYMMETRIC":
        values["act_type"] = "int8"
        values["symmetric_act"] = True
        notes.append("quantize_method SYMMETRIC -> int8 symmetric activations")
    elif method == "ASYMMETRIC":
        values["act_type"] = "uint8"
        values["symmetric_act"] = False
        notes.append("quantize_method ASYMMETRIC -> uint8 asymmetric activations")

    if "ops_per_channel" in aqt:
        kinds = _names(aqt["ops_per_channel"])
        patterns = []
        for kind in kinds:
            if kind.lower() not in PER_CHANNEL_OPS:
                raise BadInputError(f"config file {path}: ops_per_channel {kind!r} is not an op "
                                    "kind edgetune knows",
                                    hint=f"use {', '.join(sorted(set(PER_CHANNEL_OPS)))}")
            patterns.append(PER_CHANNEL_OPS[kind.lower()])
        values["per_channel"] = False
        values["per_channel_ops"] = tuple(dict.fromkeys(patterns))
        notes.append(f"ops_per_channel = {', '.join(kinds)} -> per-channel weight scales for "
                     f"{', '.join(dict.fromkeys(patterns))} only, per-tensor elsewhere")

    reverse = _bool(aqt.get("reverse_rgb", "false"), "reverse_rgb", path)
    mode = aqt.get("preprocess_mode", "").strip().lower()
    if mode not in PREPROCESS_MODES:
        raise BadInputError(f"config file {path}: preprocess_mode {mode!r}",
                            hint=f"use one of {', '.join(m for m in PREPROCESS_MODES if m)}")
    pre_fields: Dict[str, Any] = {"color": "bgr" if reverse else "rgb", "layout": layout}
    preprocess = {k: v for k, v in pre_fields.items() if v is not None}
    data_paths = [resolve_path(p, base) for p in _names(aqt.get("calibration_data", ""))]
    sources: List[CalibSource] = []
    for index, data in enumerate(data_paths):
        if not data.is_file():
            raise NotFoundError(f"config file {path}: calibration_data {data.name} does not "
                                f"exist (looked for {data})",
                                hint="an .npy whose first axis holds the samples")
        if data.suffix.lower() != ".npy":
            raise BadInputError(f"config file {path}: calibration_data {data.name} is not an "
                                ".npy file", hint="save the samples with numpy.save")
        name = names[index] if index < len(names) else None
        shape = shapes[index] if index < len(shapes) else None
        sources.append(CalibSource(path=data, input_name=name if len(data_paths) > 1 or names
                                   else None, file_type="npy",
                                   preprocess=Preprocess(**preprocess), shape=shape))
    if len(data_paths) > 1 and len(names) != len(data_paths):
        raise BadInputError(f"config file {path}: {len(data_paths)} calibration_data files for "
                            f"{len(names)} [Parser] input names",
                            hint="list the inputs and their .npy files in the same order")
    values["calib"] = tuple(sources)
    if mode or reverse:
        notes.append(f"preprocess_mode {mode or 'unset'}, reverse_rgb {reverse}: the "
                     "calibration_data .npy is fed as stored (it holds preprocessed tensors)")
    labels: Optional[Path] = None
    if aqt.get("calibration_label", "").strip():
        labels = resolve_path(aqt["calibration_label"].strip(), base)
        if not labels.is_file():
            raise NotFoundError(f"config file {path}: calibration_label {labels.name} does "
                                f"not exist (looked for {labels})",
                                hint="an .npy of class indices, one per calibration sample")
        notes.append(f"calibration_label {labels.name}: kept; the labels of the accuracy check "
                     "when --max-drop is given without --eval")
    skipped = [f"[{s}] {k}" for s, keys in NOT_APPLICABLE.items() if parser.has_section(s)
               for k in parser[s] if k in keys]
    described = [f"[{s}] {k} = {parser[s][k]}" for s, keys in DESCRIPTIVE.items()
                 if parser.has_section(s) for k in parser[s] if k in keys and parser[s][k]]
    if described:
        notes.append(f"descriptive, recorded only: {'; '.join(described)}")
    if skipped:
        message = (f"AIPU config {path.name}: not applicable to an ONNX QDQ output, ignored: "
                   f"{', '.join(skipped)}")
        log.warning(message)
        notes.append(message)
    values["notes"] = tuple(notes)
    layer = ConfigLayer(values, path=path, format="aipu", preprocess=preprocess,
                        input_count=None)
    layer.calibration_label = labels                      # type: ignore[attr-defined]
    return layer


def labelled_eval(layer: ConfigLayer, output: Path) -> Optional[Path]:
    """An evaluation set made of the config's calibration arrays and ``calibration_label``
    (OUT.aipu_eval.npz), for ``--max-drop`` without ``--eval``; None without labels."""
    labels_path = getattr(layer, "calibration_label", None)
    if labels_path is None:
        return None
    labels = np.load(str(labels_path), allow_pickle=False)
    arrays: Dict[str, np.ndarray] = {}
    for source in layer["calib"]:
        data = np.load(str(source.path), allow_pickle=False)
        if len(data) != len(labels):
            raise BadInputError(f"calibration_label {labels_path.name} holds {len(labels)} "
                                f"labels for {len(data)} samples in {source.path.name}")
        arrays[source.input_name or "__only__"] = data
    if "__only__" in arrays:
        from edgetune.host.quant.calibdata import read_model_inputs
        inputs = read_model_inputs(Path(layer["model"]))
        arrays[inputs[0].name] = arrays.pop("__only__")
    arrays["labels"] = labels.astype(np.int64).reshape(-1)
    stem = output.name[:-5] if output.name.endswith(".onnx") else output.name
    target = output.with_name(stem + ".aipu_eval.npz")
    target.parent.mkdir(parents=True, exist_ok=True)
    np.savez(str(target), **arrays)
    return target


# --- helpers --------------------------------------------------------------------------------

def _check_keys(parser: configparser.ConfigParser, path: Path) -> None:
    problems: List[str] = []
    for section in parser.sections():
        if section not in KNOWN_KEYS:
            near = difflib.get_close_matches(section, list(KNOWN_KEYS), n=1, cutoff=0.5)
            problems.append(f"section [{section}]" + (f" (did you mean [{near[0]}]?)"
                                                       if near else ""))
            continue
        for key in parser[section]:
            if key in KNOWN_KEYS[section]:
                continue
            every = [k for keys in KNOWN_KEYS.values() for k in keys]
            near = difflib.get_close_matches(key, list(KNOWN_KEYS[section]), n=1, cutoff=0.5) \
                or difflib.get_close_matches(key, every, n=1, cutoff=0.6)
            problems.append(f"[{section}] {key}" + (f" (did you mean {near[0]}?)" if near else ""))
    if problems:
        raise BadInputError(f"config file {path}: unknown key(s): {'; '.join(problems)}",
                            hint="known keys: " + "; ".join(
                                f"[{s}] {', '.join(k)}" for s, k in KNOWN_KEYS.items()))


def _final_outputs(model: Path, tensors: Sequence[str]) -> List[str]:
    """The ``tensors`` that are graph outputs no node reads (cutting there changes nothing)."""
    if not tensors:
        return []
    import onnx
    graph = onnx.load(str(model), load_external_data=False).graph
    outputs = {o.name for o in graph.output}
    read = {i for node in graph.node for i in node.input}
    return [t for t in tensors if t in outputs and t not in read]


def _names(text: str) -> List[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _shapes(text: str, path: Path) -> List[Tuple[int, ...]]:
    text = text.strip()
    if not text:
        return []
    groups = re.findall(r"\[([^\[\]]*)\]", text)
    if not groups or re.sub(r"\[[^\[\]]*\]|[\s,\[\]]", "", text):
        raise BadInputError(f"config file {path}: [Parser] input_shape {text!r} is not a list "
                            "of shapes", hint="e.g. input_shape = [1, 3, 224, 224]")
    out = []
    for group in groups:
        try:
            dims = tuple(int(d) for d in group.split(",") if d.strip())
        except ValueError:
            raise BadInputError(f"config file {path}: input_shape [{group}] is not integers") \
                from None
        if not dims or any(d <= 0 for d in dims):
            raise BadInputError(f"config file {path}: input_shape [{group}] has a dimension "
                                "<= 0")
        out.append(dims)
    return out


def _bool(text: str, key: str, path: Path) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off", ""):
        return False
    raise BadInputError(f"config file {path}: {key} = {text!r} is not True or False")
