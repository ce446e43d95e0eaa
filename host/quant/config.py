"""Config files -> a layer of QuantizeSettings values (the CLI merges defaults < file < flags).

Three formats, chosen by extension and content:

- our TOML (``.toml``): the CLI's option names, see ``TOML_KEYS``;
- SpacemiT XQuant JSON (``.json`` with ``model_parameters``), accepted as is (``xquant.py``);
- a VeriSilicon Pegasus hybrid list (``.quantize`` or any text with
  ``customized_quantize_layers:``): its ``dynamic_fixed_point-i16`` layers become int16
  overrides once resolved against the model (``resolve_pegasus_layers``);
- a Zhouyi AIPU builder config (``.cfg`` INI with ``[Parser]``/``[AutoQuantizationTool]``),
  read by ``aipu.py``.

Paths in a config file are relative to the config file's folder. A key we do not support is
an error that names it, never silently ignored.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from edgetune.host.errors import BadInputError, NotFoundError, UsageError
from edgetune.host.quant.pegasus import (load_pegasus_layers, load_pegasus_layers_with_notes,
                                parse_pegasus, resolve_pegasus_layers)
from edgetune.host.quant.settings import (ACT_TYPES, COLORS, ENTROPY_COMPAT,
                                 FILE_TYPES, INTERPOLATIONS, LAYOUTS, METHODS, WEIGHT_TYPES,
                                 CalibSource, Preprocess, QuantizeSettings, SubgraphOverride)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python < 3.11
    import tomli as tomllib

__all__ = ["ConfigLayer", "load_config", "check_settings", "check_input_count", "parse_size",
           "resolve_path", "resolve_function", "parse_pegasus", "load_pegasus_layers",
           "load_pegasus_layers_with_notes", "resolve_pegasus_layers", "TOML_KEYS"]

PRECISIONS = ("int8", "int16", "float")

# TOML key -> (QuantizeSettings field, kind). Kinds are checked by _convert.
SETTINGS_KEYS: Dict[str, Tuple[str, str]] = {
    "model": ("model", "path"), "output": ("output", "path"),
    "calib_count": ("calib_count", "int"), "seed": ("seed", "int"),
    "method": ("method", "str"), "percentile": ("percentile", "float"),
    "bins": ("histogram_bins", "int"), "quantized_bins": ("quantized_bins", "int"),
    "entropy_compat": ("entropy_compat", "str"),
    "per_channel": ("per_channel", "bool"), "act": ("act_type", "str"),
    "weight": ("weight_type", "str"), "symmetric_act": ("symmetric_act", "bool"),
    "reduce_range": ("reduce_range", "bool"), "op_types": ("op_types", "strs"),
    "exclude": ("exclude", "strs"), "int16": ("int16", "strs"),
    "truncate": ("truncate", "strs"), "ranges": ("ranges", "path"),
    "calib_batch": ("calib_batch", "int"), "skip_model_prep": ("skip_preprocess", "bool"),
    "force": ("force", "bool"),
}
# Image options: top level (defaults for every calib entry) or inside one [[calib]] entry.
PREPROCESS_KEYS = ("input_size", "interpolation", "color", "mean", "std", "layout", "preprocess")
CALIB_KEYS = ("path", "input", "file_type", "shape") + PREPROCESS_KEYS
SUBGRAPH_KEYS = ("inputs", "outputs", "precision", "method", "percentile")
FALLBACK_KEYS = ("max_drop", "eval", "metric", "strategy", "max_steps", "device", "by")
OTHER_KEYS = ("calib", "subgraph", "int16_list", "fallback", "analysis")
TOML_KEYS = tuple(SETTINGS_KEYS) + PREPROCESS_KEYS + OTHER_KEYS


class ConfigLayer(Mapping):
    """QuantizeSettings field name -> value, read from one config file, plus what is not a
    settings field: image defaults for flag-given sources, unresolved Pegasus layer names,
    fallback options, whether to write the analysis report, and ``labels``: how the file
    spelled a value, for messages (``"percentile"`` -> ``"max_percentile 0.9999"``,
    ``"method"``, ``"subgraphs[0].percentile"``, ...)."""

    def __init__(self, values: Dict[str, Any], *, path: Path, format: str,
                 preprocess: Optional[Dict[str, Any]] = None,
                 pegasus_layers: Sequence[str] = (), fallback: Optional[Dict[str, Any]] = None,
                 analysis: Optional[bool] = None, input_count: Optional[int] = None,
                 labels: Optional[Dict[str, str]] = None) -> None:
        self.labels: Dict[str, str] = dict(labels or {})
        self._values = dict(values)
        self.path = path
        self.format = format
        self.preprocess: Dict[str, Any] = dict(preprocess or {})
        self.pegasus_layers: Tuple[str, ...] = tuple(pegasus_layers)
        self.fallback: Dict[str, Any] = dict(fallback or {})
        self.analysis = analysis
        self.input_count = input_count       # XQuant: len(input_parametres)

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"ConfigLayer({self.format}, {self.path}, {self._values!r})"


def load_config(path: Union[str, Path]) -> ConfigLayer:
    """Read a TOML, XQuant JSON or Pegasus config file into a ConfigLayer."""
    path = Path(os.path.expanduser(path))
    if not path.is_file():
        raise NotFoundError(f"config file {path} does not exist", hint="check the path")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise BadInputError(f"config file {path} is not UTF-8 text") from None
    suffix = path.suffix.lower()
    if suffix == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise BadInputError(f"config file {path} is not valid TOML: {exc}") from None
        return _from_toml(data, path)
    if suffix == ".json" or text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BadInputError(f"config file {path} is not valid JSON: {exc}") from None
        from edgetune.host.quant.xquant import from_xquant
        return from_xquant(data, path)
    if suffix == ".cfg" or (suffix not in (".toml", ".quantize") and _looks_like_aipu(text)):
        from edgetune.host.quant.aipu import from_aipu
        return from_aipu(text, path)
    if suffix == ".quantize" or "customized_quantize_layers:" in text:
        layers, notes = parse_pegasus(text, path)
        return ConfigLayer({"notes": tuple(notes)} if notes else {}, path=path,
                           format="pegasus", pegasus_layers=layers)
    raise BadInputError(
        f"config file {path}: unknown format",
        hint="use .toml (edgetune), .json (XQuant style), a Pegasus .quantize hybrid list or "
             "an AIPU builder .cfg")


def _looks_like_aipu(text: str) -> bool:
    from edgetune.host.quant.aipu import looks_like_aipu
    return looks_like_aipu(text)


# --- TOML ----------------------------------------------------------------------------------

def _from_toml(data: Dict[str, Any], path: Path) -> ConfigLayer:
    base = path.parent
    unknown = [k for k in data if k not in TOML_KEYS]
    if unknown:
        raise BadInputError(f"config file {path}: unknown key(s) {', '.join(map(repr, unknown))}",
                            hint=f"valid keys: {', '.join(TOML_KEYS)}")
    values: Dict[str, Any] = {"source": f"toml:{path.name}"}
    for key, (field, kind) in SETTINGS_KEYS.items():
        if key in data:
            values[field] = _convert(data[key], kind, key, path, base)
    preprocess = _preprocess_fields(data, path, base, where="top level")
    if "calib" in data:
        entries = data["calib"]
        if isinstance(entries, (str, dict)):
            entries = [entries]
        if not isinstance(entries, list):
            raise BadInputError(f"config file {path}: 'calib' must be a path, a table or an "
                                f"array of tables ([[calib]])")
        values["calib"] = tuple(_calib_entry(e, path, base, preprocess) for e in entries)
    if "subgraph" in data:
        entries = data["subgraph"]
        if not isinstance(entries, list):
            raise BadInputError(f"config file {path}: 'subgraph' must be an array of tables "
                                f"([[subgraph]])")
        values["subgraphs"] = tuple(_subgraph_entry(e, path) for e in entries)
    pegasus: List[str] = []
    if "int16_list" in data:
        list_path = _convert(data["int16_list"], "path", "int16_list", path, base)
        pegasus, notes = load_pegasus_layers_with_notes(list_path)
        values["notes"] = tuple(notes)
    fallback: Dict[str, Any] = {}
    if "fallback" in data:
        table = _table(data["fallback"], path, "'fallback'", "[fallback]", FALLBACK_KEYS)
        kinds = {"max_drop": "float", "eval": "path", "metric": "str", "strategy": "str",
                 "max_steps": "int", "device": "str", "by": "str"}
        for key, value in table.items():
            fallback[key] = _convert(value, kinds[key], f"fallback.{key}", path, base)
    analysis = _convert(data["analysis"], "bool", "analysis", path, base) \
        if "analysis" in data else None
    return ConfigLayer(values, path=path, format="toml", preprocess=preprocess,
                       pegasus_layers=pegasus, fallback=fallback, analysis=analysis)


def _convert(value: Any, kind: str, key: str, path: Path, base: Path) -> Any:
    def bad(expected: str) -> BadInputError:
        return BadInputError(f"config file {path}: {key} must be {expected}, got {value!r}")
    if kind == "path":
        if not isinstance(value, str) or not value:
            raise bad("a path string")
        return resolve_path(value, base)
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        return float(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if kind == "strs":
        if isinstance(value, str):
            return (value,)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad("a list of strings")
        return tuple(value)
    if kind == "floats":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return (float(value),)
        if not isinstance(value, list) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise bad("a list of numbers")
        return tuple(float(v) for v in value)
    if kind == "ints":
        if not isinstance(value, list) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise bad("a list of integers")
        return tuple(value)
    raise AssertionError(kind)


def resolve_path(value: Union[str, Path], base: Path) -> Path:
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else base / path


def resolve_function(spec: Optional[str], base: Path) -> Optional[str]:
    """``file.py:function`` with the file made relative to ``base``; presets and "" kept."""
    if not spec or ":" not in spec:
        return spec or None
    file_part, func = spec.rsplit(":", 1)
    return f"{resolve_path(file_part, base)}:{func}"


def parse_size(value: Any, key: str, where: str) -> Tuple[int, int]:
    """``"224x224"``, ``"224"``, ``[224, 224]`` or ``224`` -> (H, W)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value, value]
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+)\s*(?:[xX,]\s*(\d+))?\s*", value)
        if not match:
            raise UsageError(f"{where}: {key} {value!r} is not HxW", hint="e.g. 224x224")
        value = [int(match.group(1)), int(match.group(2) or match.group(1))]
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, int) and v > 0 for v in value)):
        raise UsageError(f"{where}: {key} {value!r} is not HxW", hint="e.g. 224x224")
    return (int(value[0]), int(value[1]))


def _preprocess_fields(data: Dict[str, Any], path: Path, base: Path,
                       where: str) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    if "input_size" in data:
        out["input_size"] = parse_size(data["input_size"], "input_size", f"{path} {where}")
    for key in ("interpolation", "color", "layout"):
        if key in data:
            out[key] = _convert(data[key], "str", key, path, base).lower()
    for key in ("mean", "std"):
        if key in data:
            out[key] = _convert(data[key], "floats", key, path, base)
    if "preprocess" in data:
        out["function"] = resolve_function(
            _convert(data["preprocess"], "str", "preprocess", path, base), base)
    return out


def _calib_entry(entry: Any, path: Path, base: Path, defaults: Dict[str, Any]) -> CalibSource:
    if isinstance(entry, str):
        entry = {"path": entry}
    if not isinstance(entry, dict) or "path" not in entry:
        raise BadInputError(f"config file {path}: each calib entry needs a path",
                            hint='e.g. [[calib]] path = "calib/" input = "data"')
    _known_keys(entry, path, "a calib entry", CALIB_KEYS)
    fields = dict(defaults)
    fields.update(_preprocess_fields(entry, path, base, where="calib entry"))
    shape = _convert(entry["shape"], "ints", "shape", path, base) if "shape" in entry else None
    return CalibSource(
        path=_convert(entry["path"], "path", "calib.path", path, base),
        input_name=_convert(entry["input"], "str", "input", path, base)
        if "input" in entry else None,
        file_type=_convert(entry.get("file_type", "auto"), "str", "file_type", path, base),
        preprocess=Preprocess(**fields), shape=shape)


def _table(value: Any, path: Path, what: str, where: str, keys: Sequence[str]
           ) -> Dict[str, Any]:
    """``value`` when it is a table holding only ``keys``; else BadInputError saying that
    ``what`` must be a table, or naming the unknown keys ``where`` they are."""
    if not isinstance(value, dict):
        raise BadInputError(f"config file {path}: {what} must be a table")
    return _known_keys(value, path, where, keys)


def _known_keys(table: Dict[str, Any], path: Path, where: str, keys: Sequence[str]
                ) -> Dict[str, Any]:
    bad = [k for k in table if k not in keys]
    if bad:
        raise BadInputError(f"config file {path}: unknown key(s) {bad} in {where}",
                            hint=f"valid keys: {', '.join(keys)}")
    return table


def _subgraph_entry(entry: Any, path: Path) -> SubgraphOverride:
    _table(entry, path, "each [[subgraph]]", "a [[subgraph]]", SUBGRAPH_KEYS)
    for key in ("inputs", "outputs"):
        if key not in entry:
            raise BadInputError(f"config file {path}: a [[subgraph]] needs '{key}' "
                                f"(its boundary tensor names)")
    base = path.parent
    return SubgraphOverride(
        inputs=_convert(entry["inputs"], "strs", "subgraph.inputs", path, base),
        outputs=_convert(entry["outputs"], "strs", "subgraph.outputs", path, base),
        precision=_convert(entry.get("precision", "int16"), "str", "precision", path, base),
        method=_convert(entry["method"], "str", "method", path, base)
        if "method" in entry else None,
        percentile=_convert(entry["percentile"], "float", "percentile", path, base)
        if "percentile" in entry else None)


# --- checks shared by every way of building settings ----------------------------------------

def check_settings(settings: QuantizeSettings) -> None:
    """Reject values no part of the pipeline accepts (UsageError, naming the fix). The one
    check of a QuantizeSettings' values: the CLI calls it as soon as it has built them, and
    ``pipeline.validate_settings`` (which adds the output file checks) for API callers."""
    def choice(value: str, options: Sequence[str], what: str) -> None:
        if value not in options:
            raise UsageError(f"unknown {what} {value!r}",
                             hint=f"choose one of {', '.join(options)}")
    choice(settings.method, METHODS, "method")
    choice(settings.act_type, ACT_TYPES, "activation type")
    choice(settings.weight_type, WEIGHT_TYPES, "weight type")
    if settings.act_type == "int8" and settings.weight_type == "uint8":
        raise UsageError("int8 activations with uint8 weights is not a combination "
                         "onnxruntime supports", hint="use --weight int8")
    if not 0.0 < settings.percentile <= 100.0:
        raise UsageError(f"percentile {settings.percentile} is out of (0, 100]",
                         hint="e.g. --percentile 99.99")
    if settings.calib_count < 1 or settings.calib_batch < 1:
        raise UsageError("--calib-count and --calib-batch must be at least 1")
    choice(settings.entropy_compat, ENTROPY_COMPAT, "entropy mode")
    if settings.histogram_bins < 16 or (settings.quantized_bins is not None and (
            settings.quantized_bins < 2 or settings.quantized_bins > settings.histogram_bins)):
        raise UsageError(f"bins {settings.histogram_bins} / quantized bins "
                         f"{settings.quantized_bins} are not usable",
                         hint="need bins >= 16 and 2 <= quantized bins <= bins (e.g. 2048 / 255)")
    model, output = Path(settings.model), Path(settings.output)
    try:
        same = output.resolve() == model.resolve() or (
            output.exists() and model.exists() and os.path.samefile(model, output))
    except OSError:
        same = False
    if same:
        raise UsageError(f"the output {output} is the input model",
                         hint="write the quantized model to another path (-o OUT.onnx)")
    for source in settings.calib:
        choice(source.file_type, FILE_TYPES, "file type")
        pre = source.preprocess
        choice(pre.interpolation, INTERPOLATIONS, "interpolation")
        choice(pre.color, COLORS, "color order")
        if pre.layout is not None:
            choice(pre.layout, LAYOUTS, "layout")
        if len(pre.mean) != len(pre.std) and 1 not in (len(pre.mean), len(pre.std)):
            raise UsageError(f"--mean has {len(pre.mean)} values but --std has {len(pre.std)}",
                             hint="give one value per channel (or one for all) to both")
    for sub in settings.subgraphs:
        choice(sub.precision, PRECISIONS, "subgraph precision")
        if sub.method is not None:
            choice(sub.method, METHODS, "subgraph method")
        if not sub.inputs or not sub.outputs:
            raise UsageError("a subgraph override needs input and output boundary tensors")


def check_input_count(layer: ConfigLayer, input_names: Sequence[str]) -> None:
    """XQuant: input_parametres must list every model input (its own error wording)."""
    if layer.input_count is None or layer.input_count == len(input_names):
        return
    raise BadInputError(
        f"Calibration input_parametres size should equal to model inputs size: the config "
        f"{layer.path.name} has {layer.input_count}, the model has {len(input_names)} "
        f"({', '.join(input_names)})",
        hint="give one input_parametres entry per model input, in the model's input order")
