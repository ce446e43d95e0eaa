"""SpacemiT XQuant-style JSON -> a ConfigLayer (accepted as is; part of ``edgetune.host.quant.config``).

How each field is honoured (and recorded in the output's record as a note):

- ``model_parameters``: ``onnx_model``; output ``<working_dir>/<output_prefix>.q.onnx``
  (defaults: the model's folder and name); ``skip_onnxsim`` is accepted, but edgetune never
  runs onnxsim: it runs onnxruntime's ``quant_pre_process`` (shape inference + fusion).
- ``calibration_parameters``: ``calibration_step`` -> sample count; ``calibration_batch_size``
  -> chunk size; ``calibration_device`` ``cpu`` (``cuda``/``gpu`` are accepted with a note:
  calibration runs on onnxruntime's CPU provider, results are the same, only slower);
  ``calibration_type`` ``default`` -> ``minmax`` (edgetune's default method: with int8
  per-channel weights it keeps the digits CNN within one sample of FP32), ``kl`` -> ``entropy``,
  ``minmax``, ``percentile``, ``mse``.
- ``input_parametres[]``: one per model input (``check_input_count``); images use OpenCV's
  area interpolation as XQuant does (Pillow BOX), ``PT_IMAGENET``/``IMAGENET`` presets.
- ``quantization_parameters``: ``precision_level`` 0 = int8 (uint8 activations, int8
  per-channel weights), 2 = int16 activations (weights int8); 1 has no faithful equivalent
  here and is refused. ``finetune_level`` 0 or 1: edgetune does no weight fine-tuning, so 1
  is accepted with a note that none was done; higher levels are refused. ``max_percentile``
  0.9999 -> percentile 99.99, used only when the method is percentile: otherwise the CLI
  warns and notes ``max_percentile 0.9999 is unused: ...`` (``ConfigLayer.labels`` keeps the
  file's spelling for that message). ``custom_setting[]`` -> subgraph overrides (a
  ``max_percentile`` there means percentile calibration of the subgraph unless its
  ``calibration_type`` names another method, which is warned about the same way).
  ``truncate_var_names`` -> truncate. ``analysis_enable`` -> the analysis report.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from edgetune.host.errors import BadInputError
from edgetune.host.quant.config import ConfigLayer, resolve_function, resolve_path
from edgetune.host.quant.settings import CalibSource, Preprocess, SubgraphOverride

log = logging.getLogger(__name__)

SECTIONS = {
    "model_parameters": ("onnx_model", "output_prefix", "working_dir", "skip_onnxsim"),
    "calibration_parameters": ("calibration_step", "calibration_device", "calibration_type",
                               "input_parametres", "calibration_batch_size"),
    "quantization_parameters": ("analysis_enable", "precision_level", "finetune_level",
                                "max_percentile", "custom_setting", "truncate_var_names"),
}
INPUT_KEYS = ("input_name", "input_shape", "dtype", "file_type", "color_format", "mean_value",
              "std_value", "preprocess_file", "data_list_path")
CUSTOM_KEYS = ("input_names", "output_names", "precision_level", "max_percentile",
               "calibration_type")
CALIBRATION_TYPES = {"default": "minmax", "kl": "entropy", "minmax": "minmax",
                     "percentile": "percentile", "mse": "mse"}
PRECISION_LEVELS = {0: "int8", 2: "int16"}


def from_xquant(data: Any, path: Path) -> ConfigLayer:
    if not isinstance(data, dict):
        raise BadInputError(f"config file {path}: an XQuant config is a JSON object")
    base = path.parent
    for key in data:
        if key not in SECTIONS:
            raise BadInputError(f"unsupported XQuant field {key!r} in {path.name}",
                                hint=f"sections: {', '.join(SECTIONS)}")
    sections = {name: _object(data.get(name, {}), path, name, keys,
                              supported=f"supported in {name}")
                for name, keys in SECTIONS.items()}
    model_p = sections["model_parameters"]
    calib_p = sections["calibration_parameters"]
    quant_p = sections["quantization_parameters"]
    notes: List[str] = [f"settings read from XQuant-style JSON {path.name}"]
    values: Dict[str, Any] = {"source": f"xquant:{path.name}"}
    labels: Dict[str, str] = {}

    if not isinstance(model_p.get("onnx_model"), str) or not model_p["onnx_model"]:
        raise BadInputError(f"config file {path}: model_parameters.onnx_model is missing",
                            hint="set it to the float ONNX model's path")
    model = resolve_path(model_p["onnx_model"], base)
    prefix = _str(model_p.get("output_prefix") or model.name.rsplit(".onnx", 1)[0],
                  "output_prefix", path)
    working = resolve_path(_str(model_p["working_dir"], "working_dir", path), base) \
        if model_p.get("working_dir") else model.parent
    values["model"] = model
    values["output"] = working / f"{prefix}.q.onnx"
    if "skip_onnxsim" in model_p:
        notes.append(f"skip_onnxsim={model_p['skip_onnxsim']!r}: edgetune never runs onnxsim; "
                     "it runs onnxruntime's quant_pre_process (shape inference + fusion)")

    if "calibration_step" in calib_p:
        values["calib_count"] = _int(calib_p["calibration_step"], "calibration_step", path)
    if "calibration_batch_size" in calib_p:
        values["calib_batch"] = max(1, _int(calib_p["calibration_batch_size"],
                                            "calibration_batch_size", path))
    device = str(calib_p.get("calibration_device", "cpu")).lower()
    if device in ("cuda", "gpu"):
        message = (f"calibration_device={device!r}: edgetune calibrates with onnxruntime's CPU "
                   "provider (same ranges, only slower)")
        log.warning(message)
        notes.append(message)
    elif device != "cpu":
        raise BadInputError(f"unsupported calibration_device {device!r}",
                            hint="use cpu (cuda is accepted but runs on the CPU)")
    if "calibration_type" in calib_p:
        values["method"] = _calibration_type(calib_p["calibration_type"], "calibration_type")
        labels["method"] = _type_label("calibration_type", calib_p["calibration_type"])
        if calib_p["calibration_type"] == "default":
            notes.append("calibration_type 'default' -> minmax (edgetune's default method)")

    entries = calib_p.get("input_parametres", [])
    if not isinstance(entries, list):
        raise BadInputError(f"config file {path}: input_parametres must be a list")
    values["calib"] = tuple(_input_entry(e, i, path, base) for i, e in enumerate(entries))

    analysis = bool(quant_p["analysis_enable"]) if "analysis_enable" in quant_p else None
    level = quant_p.get("precision_level", 0)
    precision = _precision_level(level, "precision_level")
    if precision == "int16":
        values["act_type"] = "int16"
        notes.append("precision_level 2 -> int16 activations everywhere (weights int8)")
    finetune = quant_p.get("finetune_level", 0)
    if finetune not in (0, 1) or isinstance(finetune, bool):
        raise BadInputError(f"unsupported finetune_level {finetune!r}",
                            hint="edgetune does no weight fine-tuning: use 0 (or 1, noted)")
    if finetune == 1:
        message = "finetune_level=1: edgetune does no weight fine-tuning; none was done"
        log.warning(message)
        notes.append(message)
    if "max_percentile" in quant_p:
        values["percentile"] = _percentile(quant_p["max_percentile"], "max_percentile", path)
        labels["percentile"] = f"max_percentile {quant_p['max_percentile']:g}"
    customs = quant_p.get("custom_setting", [])
    if not isinstance(customs, list):
        raise BadInputError(f"config file {path}: custom_setting must be a list")
    values["subgraphs"] = tuple(_custom(c, path) for c in customs)
    for index, custom in enumerate(customs):
        if "max_percentile" in custom:
            labels[f"subgraphs[{index}].percentile"] = (
                f"custom_setting[{index}].max_percentile {custom['max_percentile']:g}")
        if custom.get("calibration_type") is not None:
            labels[f"subgraphs[{index}].method"] = "its " + _type_label(
                "calibration_type", custom["calibration_type"])
    truncate = quant_p.get("truncate_var_names", [])
    if not isinstance(truncate, list) or not all(isinstance(t, str) for t in truncate):
        raise BadInputError(f"config file {path}: truncate_var_names must be a list of names")
    values["truncate"] = tuple(truncate)
    values["notes"] = tuple(notes)
    return ConfigLayer(values, path=path, format="xquant", analysis=analysis,
                       input_count=len(entries), labels=labels)


def _type_label(key: str, value: str) -> str:
    """``calibration_type 'default' maps to minmax`` (for messages; value already checked)."""
    mapped = CALIBRATION_TYPES[value]
    return f"{key} {value!r} maps to {mapped}" if mapped != value else f"{key} is {value!r}"


def _str(value: Any, key: str, path: Path) -> str:
    if not isinstance(value, str):
        raise BadInputError(f"config file {path}: {key} must be a string, got {value!r}")
    return value


def _int(value: Any, key: str, path: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadInputError(f"config file {path}: {key} must be an integer, got {value!r}")
    return value


def _calibration_type(value: Any, key: str) -> str:
    if not isinstance(value, str) or value not in CALIBRATION_TYPES:
        raise BadInputError(f"unsupported XQuant {key} {value!r}",
                            hint=f"use one of {', '.join(CALIBRATION_TYPES)}")
    return CALIBRATION_TYPES[value]


def _precision_level(value: Any, key: str) -> str:
    # Only a number can be a level (a list or an object would not even hash).
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or value not in PRECISION_LEVELS:
        raise BadInputError(
            f"unsupported XQuant {key} {value!r}",
            hint="edgetune honours 0 (int8) and 2 (int16 activations); for a finer choice "
                 "use custom_setting on the sensitive subgraph")
    return PRECISION_LEVELS[value]


def _percentile(value: Any, key: str, path: Path) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise BadInputError(f"config file {path}: {key} must be in (0, 1] (0.9999 = 99.99%), "
                            f"got {value!r}")
    return round(float(value) * 100.0, 10)


def _object(value: Any, path: Path, where: str, keys: Sequence[str], *,
            what: Optional[str] = None, supported: str = "supported") -> Dict[str, Any]:
    """``value`` when it is a JSON object holding only ``keys``; else BadInputError naming
    ``what`` (default ``where``) or the first unsupported field."""
    if not isinstance(value, dict):
        raise BadInputError(f"config file {path}: {what or where} must be an object")
    for key in value:
        if key not in keys:
            raise BadInputError(f"unsupported XQuant field {key!r} in {where}",
                                hint=f"{supported}: {', '.join(keys)}")
    return value


def _input_entry(entry: Any, index: int, path: Path, base: Path) -> CalibSource:
    where = f"input_parametres[{index}]"
    _object(entry, path, where, INPUT_KEYS)
    dtype = entry.get("dtype", "float32")
    if dtype != "float32":
        raise BadInputError(f"{where}: unsupported dtype {dtype!r}",
                            hint="edgetune calibrates float32 inputs")
    if not entry.get("data_list_path"):
        raise BadInputError(f"{where}: data_list_path is missing",
                            hint="a text file with one calibration file per line")
    shape: Optional[Tuple[int, ...]] = None
    if entry.get("input_shape") is not None:
        raw = entry["input_shape"]
        if not isinstance(raw, list) or not raw:
            raise BadInputError(f"{where}: input_shape must be a list of integers")
        dims = []
        for i, d in enumerate(raw):
            if isinstance(d, int) and not isinstance(d, bool) and d > 0:
                dims.append(d)
            elif i == 0:
                dims.append(1)               # a symbolic batch becomes 1, as in XQuant
            else:
                raise BadInputError(f"{where}: input_shape {raw} has a non-integer dimension",
                                    hint="give every dimension but the batch as an integer")
        shape = tuple(dims)
    file_type = entry.get("file_type", "img")
    if file_type not in ("img", "npy", "raw"):
        raise BadInputError(f"{where}: unsupported file_type {file_type!r}",
                            hint="use img, npy or raw")
    color = str(entry.get("color_format") or "rgb").lower()
    mean = _numbers(entry.get("mean_value"), f"{where}.mean_value", (0.0,))
    std = _numbers(entry.get("std_value"), f"{where}.std_value", (1.0,))
    if any(v <= 0 for v in std):
        raise BadInputError(f"{where}: std_value must be positive (got {list(std)})")
    function = entry.get("preprocess_file") or None
    name = entry.get("input_name") or None
    for key, value in (("preprocess_file", function), ("input_name", name),
                       ("data_list_path", entry["data_list_path"])):
        if value is not None and not isinstance(value, str):
            raise BadInputError(f"{where}: {key} must be a string (got {value!r})")
    pre = Preprocess(interpolation="area", color=color, mean=mean, std=std,
                     function=resolve_function(function, base))
    return CalibSource(path=resolve_path(entry["data_list_path"], base),
                       input_name=name, file_type=file_type, preprocess=pre, shape=shape)


def _numbers(value: Any, where: str, default: Tuple[float, ...]) -> Tuple[float, ...]:
    """A number, or a non-empty list of numbers (finite), as floats; ``default`` when absent."""
    if value is None:
        return default
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                            and math.isfinite(v) for v in items):
        raise BadInputError(f"{where} must be a number or a list of numbers (got {value!r})")
    return tuple(float(v) for v in items)


def _custom(entry: Any, path: Path) -> SubgraphOverride:
    _object(entry, path, "custom_setting", CUSTOM_KEYS, what="each custom_setting")
    names = {}
    for key in ("input_names", "output_names"):
        value = entry.get(key)
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise BadInputError(f"config file {path}: custom_setting.{key} must be a non-empty "
                                f"list of tensor names")
        names[key] = tuple(value)
    method = entry.get("calibration_type")
    return SubgraphOverride(
        inputs=names["input_names"], outputs=names["output_names"],
        precision=_precision_level(entry.get("precision_level", 0),
                                   "custom_setting.precision_level"),
        method=None if method in (None, "default") else _calibration_type(
            method, "custom_setting.calibration_type"),
        percentile=_percentile(entry["max_percentile"], "custom_setting.max_percentile", path)
        if "max_percentile" in entry else None)
