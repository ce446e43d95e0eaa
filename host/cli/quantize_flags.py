"""``edgetune quantize`` flags (and ``--config`` files) -> QuantizeSettings, FallbackSettings.

Precedence: defaults < config file < explicit flags. Every flag defaults to None, so a flag
that was given can be told from one that was not. Nothing heavy is imported at module top.

The calibration-data and image-preprocessing flags are shared with ``edgetune analyze``:
``add_calibration_flags(parser)`` declares them, ``calib_sources_from_args(args)`` turns them
into ``CalibSource``s, so both commands accept exactly the same ones.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from edgetune.host.errors import UsageError
from edgetune.host.quant.settings import (COLORS, DEFAULT_FALLBACK_STRATEGY, FILE_TYPES,
                                 INTERPOLATIONS, LAYOUTS, CalibSource, FallbackSettings,
                                 Preprocess, QuantizeSettings, SubgraphOverride)
from edgetune.protos.shapes import ShapeError, parse_dims

__all__ = ["add_calibration_flags", "build_settings", "calib_sources_from_args",
           "model_inputs", "parse_floats", "parse_size", "unused_percentile_notes"]

log = logging.getLogger(__name__)

# Preprocess fields settable from flags: dest -> Preprocess field.
PREPROCESS_FLAGS = {"input_size": "input_size", "interpolation": "interpolation",
                    "color": "color", "mean": "mean", "std": "std", "layout": "layout",
                    "preprocess": "function"}
# Plain flags: dest -> QuantizeSettings field.
SETTINGS_FLAGS = {"calib_count": "calib_count", "seed": "seed", "method": "method",
                  "percentile": "percentile", "bins": "histogram_bins",
                  "quantized_bins": "quantized_bins",
                  "entropy_compat": "entropy_compat", "per_channel": "per_channel",
                  "act": "act_type", "weight": "weight_type", "symmetric_act": "symmetric_act",
                  "reduce_range": "reduce_range", "op_types": "op_types", "ranges": "ranges",
                  "calib_batch": "calib_batch", "skip_model_prep": "skip_preprocess",
                  "force": "force"}


def parse_floats(text: str) -> Tuple[float, ...]:
    """argparse type: ``"1,2.5,3"`` -> (1.0, 2.5, 3.0)."""
    try:
        values = tuple(float(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers")
    if not values:
        raise argparse.ArgumentTypeError("give at least one number")
    return values


def parse_size(text: str) -> Tuple[int, int]:
    """argparse type: ``"224x224"`` (or ``"224"``) -> (H, W)."""
    from edgetune.host.quant.config import parse_size as parse
    try:
        return parse(text, "--input-size", "flag")
    except UsageError as exc:
        raise argparse.ArgumentTypeError(exc.message)


def add_calibration_flags(parser: argparse.ArgumentParser, *, required: bool = False,
                          default_count: int = 100, default_batch: int = 16,
                          batch_help: str = "samples per calibration chunk") -> None:
    """The "calibration data" and "image preprocessing" flag groups of ``quantize`` and
    ``analyze``. Every flag defaults to None (a config file may fill it; see
    ``calib_sources_from_args``); the help shows each command's own default."""
    d = parser.add_argument_group("calibration data")
    d.add_argument("--calib", action="append", metavar="[NAME=]SOURCE", required=required,
                   help="folder of images/.npy/.raw, list file (.txt), .npy, .npz or raw file; "
                        "one per input as NAME=SOURCE for several inputs")
    d.add_argument("--calib-count", type=int, metavar="N",
                   help=f"samples to use (default {default_count})")
    d.add_argument("--seed", type=int, help="chooses the samples when more exist (default 0)")
    d.add_argument("--calib-batch", type=int, metavar="N",
                   help=f"{batch_help} (bounds memory; default {default_batch})")
    d.add_argument("--file-type", choices=FILE_TYPES,
                   help="how to read the files (default: by extension)")
    d.add_argument("--input-shape", action="append", metavar="[NAME=]1x3xHxW",
                   help="full input shape where the model's is symbolic (raw files need it)")

    i = parser.add_argument_group("image preprocessing")
    i.add_argument("--input-size", type=parse_size, metavar="HxW",
                   help="resize to this (default: the model's input size)")
    i.add_argument("--interpolation", choices=INTERPOLATIONS, help="resize filter (bilinear)")
    i.add_argument("--color", choices=COLORS, help="channel order fed to the model (rgb)")
    i.add_argument("--mean", type=parse_floats, metavar="A,B,C",
                   help="per-channel mean in the 0-255 scale: (x - mean) / std")
    i.add_argument("--std", type=parse_floats, metavar="A,B,C",
                   help="per-channel std, 0-255 scale")
    i.add_argument("--layout", choices=LAYOUTS, help="default: inferred from the input shape")
    i.add_argument("--preprocess", metavar="FILE.py:FUNC|PRESET",
                   help="function(list of paths, input info) -> batch array; or PT_IMAGENET / "
                        "IMAGENET (XQuant's resize + center-crop presets)")


def _named(value: str) -> Tuple[Optional[str], str]:
    """``NAME=VALUE`` -> (NAME, VALUE); a value with no name -> (None, value)."""
    if "=" in value and not Path(value).exists():
        name, rest = value.split("=", 1)
        if name and "/" not in name and "\\" not in name:
            if not rest:
                raise UsageError(f"{value!r}: nothing after '='", hint="NAME=SOURCE")
            return name, rest
    return None, value


def _shapes(values: Optional[List[str]]) -> Dict[Optional[str], Tuple[int, ...]]:
    shapes: Dict[Optional[str], Tuple[int, ...]] = {}
    for value in values or []:
        name, text = _named(value)
        try:
            dims = parse_dims(text, separators="x,")        # the parser --shape uses too
        except ShapeError as exc:
            if exc.reason == "whole":
                raise UsageError(f"--input-shape {value!r} is not [NAME=]D1xD2x...",
                                 hint="e.g. --input-shape data=1x3x224x224") from None
            raise UsageError(f"--input-shape {value!r} has a dimension <= 0") from None
        shapes[name] = dims
    return shapes


def _subgraphs(values: Optional[List[List[str]]]) -> Tuple[SubgraphOverride, ...]:
    out = []
    for items in values or []:
        if len(items) not in (2, 3):
            raise UsageError(f"--subgraph {' '.join(items)}: give IN[,IN..] OUT[,OUT..] "
                             f"[int8|int16|float]", hint="e.g. --subgraph data relu1_out int16")
        inputs = tuple(t for t in items[0].split(",") if t)
        outputs = tuple(t for t in items[1].split(",") if t)
        precision = items[2] if len(items) == 3 else "int16"
        out.append(SubgraphOverride(inputs=inputs, outputs=outputs, precision=precision))
    return tuple(out)


def build_settings(args: argparse.Namespace) -> Tuple[QuantizeSettings, Optional[FallbackSettings],
                                                      Any]:
    """Defaults < config file < explicit flags. Returns (settings, fallback, config layer)."""
    from edgetune.host.quant import config as cfg

    layer = cfg.load_config(args.config) if args.config else None
    values: Dict[str, Any] = dict(layer) if layer is not None else {}
    notes: List[str] = list(values.pop("notes", ()))
    for dest, field in SETTINGS_FLAGS.items():
        value = getattr(args, dest, None)
        if value is not None:
            values[field] = tuple(value) if isinstance(value, list) else value
    for dest, field in (("exclude", "exclude"), ("int16", "int16"), ("truncate", "truncate")):
        if getattr(args, dest):
            values[field] = tuple(getattr(args, dest))
    if args.subgraph:
        values["subgraphs"] = _subgraphs(args.subgraph)
    if args.model is not None:
        values["model"] = args.model
    if "model" not in values:
        raise UsageError("no model given", hint="edgetune quantize MODEL -o OUT.onnx --calib SRC, "
                                                "or --config FILE naming the model")
    model = Path(values["model"])
    if args.output is not None:
        values["output"] = args.output
    values.setdefault("output", model.with_name(model.name.rsplit(".onnx", 1)[0] + ".q.onnx"))
    if args.config and "source" in values:
        values["source"] = f"{values['source']}+flags" if _any_flag(args) else values["source"]

    values["calib"] = calib_sources_from_args(args, layer=layer,
                                              from_config=values.get("calib", ()))
    pegasus = list(layer.pegasus_layers) if layer is not None else []
    if args.int16_list:
        names, more = cfg.load_pegasus_layers_with_notes(args.int16_list)
        pegasus.extend(names)
        notes.extend(more)
    if pegasus or (layer is not None and layer.format == "xquant"):
        inputs = model_inputs(model)
        if layer is not None and layer.format == "xquant":
            cfg.check_input_count(layer, [i.name for i in inputs])
        if pegasus:
            resolved = cfg.resolve_pegasus_layers(pegasus, model)
            values["int16"] = tuple(values.get("int16", ())) + tuple(
                n for n in resolved if n not in values.get("int16", ()))
            notes.append(f"Pegasus hybrid list: {len(pegasus)} layer(s) -> int16 nodes "
                         f"{', '.join(resolved)}")
    values["notes"] = tuple(notes)
    settings = QuantizeSettings(**values)
    cfg.check_settings(settings)
    unused = unused_percentile_notes(settings, args, layer)
    for message in unused:
        log.warning(message)
    if unused:
        settings = dataclasses.replace(settings, notes=settings.notes + tuple(unused))
    if not settings.calib and settings.ranges is None:
        raise UsageError("no calibration data", hint="give --calib SOURCE (or --ranges FILE "
                                                     "to reuse the ranges of an earlier run)")
    return settings, _fallback(args, layer), layer


def _any_flag(args: argparse.Namespace) -> bool:
    skip = {"config", "json", "func", "command", "verbose", "timeout"}
    return any(v not in (None, False, []) for k, v in vars(args).items() if k not in skip)


def model_inputs(model: Path) -> Any:
    from edgetune.host.quant.calibdata import read_model_inputs
    return read_model_inputs(model)


def calib_sources_from_args(args: argparse.Namespace, *, layer: Any = None,
                            from_config: Sequence[CalibSource] = ()
                            ) -> Tuple[CalibSource, ...]:
    """The calibration sources the flags of ``add_calibration_flags`` describe.

    With ``--calib``: one source per flag, image options from the flags over the config
    ``layer``'s defaults. Without: the config's sources (``from_config``) with the flags'
    image options and ``--file-type`` applied. ``--input-shape`` fixes shapes either way."""
    flag_pre = {field: getattr(args, dest) for dest, field in PREPROCESS_FLAGS.items()
                if getattr(args, dest, None) is not None}
    shapes = _shapes(args.input_shape)
    if args.calib:
        defaults = dict(layer.preprocess) if layer is not None else {}
        defaults.update(flag_pre)
        sources = []
        for value in args.calib:
            name, path = _named(value)
            sources.append(CalibSource(path=Path(path), input_name=name,
                                       file_type=args.file_type or "auto",
                                       preprocess=Preprocess(**defaults)))
    else:
        sources = [dataclasses.replace(
            s, preprocess=dataclasses.replace(s.preprocess, **flag_pre),
            file_type=args.file_type or s.file_type) for s in from_config]
    if shapes:
        unnamed = shapes.pop(None, None)
        if unnamed is not None and len(sources) > 1:
            raise UsageError("--input-shape without a NAME= and several inputs",
                             hint="use --input-shape NAME=1x3x224x224")
        sources = [dataclasses.replace(s, shape=shapes.get(s.input_name, unnamed or s.shape))
                   for s in sources]
        known = {s.input_name for s in sources}
        stray = [n for n in shapes if n not in known]
        if stray:
            raise UsageError(f"--input-shape for {', '.join(stray)}, which has no --calib",
                             hint="name the inputs as in --calib NAME=SOURCE")
    return tuple(sources)


def _fallback(args: argparse.Namespace, layer: Any) -> Optional[FallbackSettings]:
    given = dict(layer.fallback) if layer is not None else {}
    for dest in ("max_drop", "eval", "metric", "strategy", "max_steps", "device", "by"):
        value = getattr(args, dest, None)
        if value is not None:
            given[dest] = value
    if given.get("max_drop") is None:
        if given.get("eval") is not None:
            raise UsageError("--eval without --max-drop", hint="add --max-drop X (e.g. 0.01)")
        return None
    if given.get("eval") is None and layer is not None and layer.format == "aipu":
        from edgetune.host.quant.aipu import labelled_eval    # calibration_data + _label
        given["eval"] = labelled_eval(layer, Path(args.output or layer["output"]))
    if given.get("eval") is None:
        raise UsageError("--max-drop needs an evaluation set",
                         hint="give --eval D.npz (inputs named like the model's, optional labels)")
    from edgetune.host.quant.fallback import check_fallback_settings

    fallback = FallbackSettings(max_drop=float(given["max_drop"]), eval_dataset=Path(given["eval"]),
                                metric=given.get("metric", "auto"),
                                strategy=given.get("strategy", DEFAULT_FALLBACK_STRATEGY),
                                max_steps=int(given.get("max_steps", 32)),
                                device=given.get("device"), by=given.get("by", "accuracy"))
    check_fallback_settings(fallback)    # the library's check: a config file's values too
    return fallback


# --- a percentile that no calibration uses -------------------------------------------------

def unused_percentile_notes(settings: QuantizeSettings, args: argparse.Namespace,
                            layer: Any = None) -> List[str]:
    """One message per percentile that was given (``--percentile``, TOML ``percentile``,
    XQuant ``max_percentile`` at the top level or in a ``custom_setting``) but that no
    calibration will use, because the effective method is not ``percentile``. Never silent:
    the caller logs each one as a warning and adds it to the record's notes."""
    if settings.ranges is not None:      # no calibration at all: the file's ranges are used
        return []
    labels: Dict[str, str] = dict(getattr(layer, "labels", {}) or {})
    xquant = layer is not None and getattr(layer, "format", "") == "xquant"
    config = f"{Path(layer.path).name}" if layer is not None else ""
    out: List[str] = []
    method_flag = getattr(args, "method", None)
    pct_flag = getattr(args, "percentile", None)
    if settings.method != "percentile" and (pct_flag is not None or (
            layer is not None and "percentile" in layer)):
        if pct_flag is not None:
            what = f"--percentile {pct_flag:g}"
        else:
            what = labels.get("percentile", f"percentile {settings.percentile:g} in {config}")
        if method_flag is not None:
            why, fix = f"--method is {settings.method}", "use --method percentile"
        elif layer is not None and "method" in layer:
            why = labels.get("method", f"{config} sets method {settings.method!r}")
            fix = ("set calibration_type percentile" if xquant
                   else 'set method = "percentile"')
        else:
            why = f"the method is {settings.method} (the default)"
            fix = "set calibration_type percentile" if xquant and pct_flag is None \
                else "add --method percentile"
        out.append(f"{what} is unused: {why}; {fix} to use it")
    from_config = layer is not None and not getattr(args, "subgraph", None)
    for index, sub in enumerate(settings.subgraphs):
        # As host.quant.overrides resolves it: a percentile alone means percentile
        # calibration; a subgraph naming another method ignores its percentile.
        if sub.percentile is None or sub.method in (None, "percentile"):
            continue
        key = f"subgraphs[{index}]"
        what = labels.get(f"{key}.percentile") if from_config else None
        why = labels.get(f"{key}.method") if from_config else None
        what = what or f"subgraph #{index + 1} percentile {sub.percentile:g}"
        why = why or f"its method is {sub.method}"
        fix = ("set its calibration_type percentile (or default)" if xquant
               else 'set its method = "percentile" (or remove its method)')
        out.append(f"{what} is unused: {why}; {fix} to use it")
    return out
