"""``edgetune quantize``: a float ONNX model + calibration data -> a QDQ INT8 model and its record.

Flags become one frozen ``QuantizeSettings`` (defaults < ``--config`` file < explicit flags:
every flag defaults to None so "given" can be told from "default"), then the pipeline runs
(``host.quant.pipeline.quantize``), or the accuracy-driven fallback when ``--max-drop`` is
given (``host.quant.fallback.run_fallback``). Nothing heavy is imported at module top.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

from host.cli.quantize_flags import build_settings, model_inputs
from host.errors import EdgetuneError, UsageError
from host.quant.settings import (ACT_TYPES, COLORS, FILE_TYPES, INTERPOLATIONS, LAYOUTS, METHODS,
                                 WEIGHT_TYPES, FallbackSettings, QuantizeSettings)

log = logging.getLogger(__name__)

EXAMPLES = """examples:
  edgetune quantize model.onnx -o model.q.onnx --calib images/
  edgetune quantize model.onnx -o q.onnx --calib list.txt --mean 123.675,116.28,103.53 \\
      --std 58.395,57.12,57.375 --method entropy --exclude '/head/*' --truncate boxes
  edgetune quantize det.onnx -o q.onnx --calib images=imgs/ --calib scale=scales.npy
  edgetune quantize model.onnx -o q2.onnx --ranges q.ranges.json --per-tensor
  edgetune quantize --config xquant.json
  edgetune quantize model.onnx -o q.onnx --calib calib.npz --max-drop 0.01 --eval test.npz
"""

def _floats(text: str) -> Tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers")
    if not values:
        raise argparse.ArgumentTypeError("give at least one number")
    return values


def _size(text: str) -> Tuple[int, int]:
    from host.quant.config import parse_size
    try:
        return parse_size(text, "--input-size", "flag")
    except UsageError as exc:
        raise argparse.ArgumentTypeError(exc.message)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "quantize", help="quantize an ONNX model to INT8 (QDQ) with calibration data",
        description="Quantize a float ONNX model into a standard QDQ model. Writes OUT.onnx, "
                    "OUT.record.json (every option, scale and decision) and "
                    "OUT.ranges.json (the calibration cache, reusable with --ranges).",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", type=Path, metavar="MODEL",
                   help="the float ONNX model (may come from --config instead)")
    p.add_argument("-o", "--output", type=Path, metavar="OUT.onnx",
                   help="quantized model path (default: MODEL's folder, <name>.q.onnx)")
    p.add_argument("--config", type=Path, metavar="FILE",
                   help="edgetune TOML, XQuant-style JSON or a Pegasus .quantize hybrid list; "
                        "flags given beside it win")
    p.add_argument("--json", action="store_true", help="print one JSON document")

    d = p.add_argument_group("calibration data")
    d.add_argument("--calib", action="append", metavar="[NAME=]SOURCE",
                   help="folder of images/.npy/.raw, list file (.txt), .npy, .npz or raw file; "
                        "one per input as NAME=SOURCE for several inputs")
    d.add_argument("--calib-count", type=int, metavar="N", help="samples to use (default 100)")
    d.add_argument("--seed", type=int, help="chooses the samples when more exist (default 0)")
    d.add_argument("--calib-batch", type=int, metavar="N",
                   help="samples per calibration chunk (bounds memory; default 16)")
    d.add_argument("--file-type", choices=FILE_TYPES,
                   help="how to read the files (default: by extension)")
    d.add_argument("--input-shape", action="append", metavar="[NAME=]1x3xHxW",
                   help="full input shape where the model's is symbolic (raw files need it)")

    i = p.add_argument_group("image preprocessing")
    i.add_argument("--input-size", type=_size, metavar="HxW",
                   help="resize to this (default: the model's input size)")
    i.add_argument("--interpolation", choices=INTERPOLATIONS, help="resize filter (bilinear)")
    i.add_argument("--color", choices=COLORS, help="channel order fed to the model (rgb)")
    i.add_argument("--mean", type=_floats, metavar="A,B,C",
                   help="per-channel mean in the 0-255 scale: (x - mean) / std")
    i.add_argument("--std", type=_floats, metavar="A,B,C", help="per-channel std, 0-255 scale")
    i.add_argument("--layout", choices=LAYOUTS, help="default: inferred from the input shape")
    i.add_argument("--preprocess", metavar="FILE.py:FUNC|PRESET",
                   help="function(list of paths, input info) -> batch array; or PT_IMAGENET / "
                        "IMAGENET (XQuant's resize + center-crop presets)")

    m = p.add_argument_group("calibration method")
    m.add_argument("--method", help=f"one of {', '.join(METHODS)} (default minmax)")
    m.add_argument("--percentile", type=float, help="for --method percentile (99.999)")
    m.add_argument("--bins", type=int, help="histogram bins (2048)")
    m.add_argument("--quantized-bins", type=int, help="entropy's KL target bins (255)")

    q = p.add_argument_group("precision")
    q.add_argument("--per-channel", dest="per_channel", action="store_const", const=True,
                   help="per-channel weight scales (default)")
    q.add_argument("--per-tensor", dest="per_channel", action="store_const", const=False)
    q.add_argument("--act", choices=ACT_TYPES, help="activation type (uint8)")
    q.add_argument("--weight", choices=WEIGHT_TYPES, help="weight type (int8)")
    q.add_argument("--symmetric-act", action="store_const", const=True)
    q.add_argument("--reduce-range", action="store_const", const=True)
    q.add_argument("--op-types", nargs="+", metavar="OP", help="quantize only these op types")

    o = p.add_argument_group("overrides")
    o.add_argument("--exclude", action="extend", nargs="+", metavar="NODE",
                   help="keep float: node names, globs or op types")
    o.add_argument("--int16", action="extend", nargs="+", metavar="NODE",
                   help="int16 islands: node names, globs or op types")
    o.add_argument("--int16-list", type=Path, metavar="FILE",
                   help="Pegasus hybrid list (customized_quantize_layers, dynamic_fixed_point-i16)")
    o.add_argument("--subgraph", action="append", nargs="+", metavar="TENSORS",
                   help="IN[,IN..] OUT[,OUT..] [int8|int16|float]: every node between these "
                        "boundary tensors gets the precision (default int16)")
    o.add_argument("--truncate", action="extend", nargs="+", metavar="TENSOR",
                   help="everything after these tensors stays float")

    c = p.add_argument_group("cache and output")
    c.add_argument("--ranges", type=Path, metavar="FILE",
                   help="reuse saved ranges (OUT.ranges.json): no calibration data needed")
    c.add_argument("--force", action="store_const", const=True, help="overwrite OUT")
    c.add_argument("--skip-model-prep", action="store_const", const=True,
                   help="skip shape inference / fusion before quantizing")
    c.add_argument("--analysis", action="store_const", const=True,
                   help="also write OUT.analysis.md/.json (per-layer error report)")

    f = p.add_argument_group("accuracy-driven fallback")
    f.add_argument("--max-drop", type=float, metavar="X",
                   help="raise the precision of sensitive layers until the metric drops <= X")
    f.add_argument("--eval", type=Path, metavar="D.npz",
                   help="evaluation set: arrays named like the inputs, optional labels")
    f.add_argument("--metric", choices=("auto", "top1", "top5", "fidelity"),
                   help="auto: top1 with labels, else fidelity to the float model")
    f.add_argument("--strategy", choices=("bisect", "greedy"), help="(bisect)")
    f.add_argument("--max-steps", type=int, help="evaluation budget (32)")
    _add_device_flags(p)
    p.set_defaults(func=run)


def _add_device_flags(parser: argparse.ArgumentParser) -> None:
    """``--device`` plus the shared connection flags (host.cli.common)."""
    from host.cli.common import add_connection_flags
    add_connection_flags(parser)


def _optional_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            return None
        raise


# --- running ---------------------------------------------------------------------------------

class _Progress:
    """The pipeline's progress callback: a rich bar on a terminal, plain lines otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.rich = enabled and sys.stderr.isatty()
        self._bar: Any = None
        self._tasks: Dict[str, Any] = {}
        self._last: Dict[str, int] = {}

    def __enter__(self) -> "_Progress":
        if self.rich:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn)
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(),
                                 console=Console(stderr=True), transient=False)
            self._bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.stop()

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self._bar is not None:
            if stage not in self._tasks:
                self._tasks[stage] = self._bar.add_task(stage, total=total or None)
            self._bar.update(self._tasks[stage], completed=done, total=total or None)
            return
        quarter = (4 * done // total) if total else 0
        if self._last.get(stage) != quarter:   # a line per stage at 0, 25, 50, 75, 100 %
            self._last[stage] = quarter
            print(f"edgetune quantize: {stage} {done}/{total}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    settings, fallback, layer = build_settings(args)
    output = Path(settings.output)
    if output.exists() and not settings.force:
        raise UsageError(f"{output} already exists", hint="add --force to overwrite it")
    if layer is not None and layer.format == "xquant":
        output.parent.mkdir(parents=True, exist_ok=True)     # XQuant creates its working_dir
    from host.quant.calibdata import CalibrationData, load_calibration, load_npz_feeds

    started = time.perf_counter()
    data: Optional[CalibrationData] = None
    if settings.calib:
        data = load_calibration(settings.model, settings)
        if data.notes:   # e.g. "calibrating on all 8 samples": into the record with the rest
            settings = dataclasses.replace(settings, notes=settings.notes + data.notes)
    with _Progress(enabled=True) as progress:
        if fallback is not None:
            if data is None:  # ranges only: the evaluation set feeds the sensitivity proxy
                inputs = model_inputs(Path(settings.model))
                feeds, _ = load_npz_feeds(fallback.eval_dataset, [i.name for i in inputs])
                data = CalibrationData.from_arrays(feeds, inputs)
            result = _run_fallback(args, settings, fallback, data, progress)
            report = getattr(result, "report", None) or result
        else:
            from host.quant.pipeline import quantize
            result = quantize(settings, data=data, progress=progress)
            report = result
        analysis_paths = _maybe_analysis(args, layer, settings, data, report, progress)
    summary = _summary(settings, report, result if fallback is not None else None,
                       analysis_paths, time.perf_counter() - started)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        _print_table(summary)
    return 0


def _run_fallback(args: argparse.Namespace, settings: QuantizeSettings,
                  fallback: FallbackSettings, data: Any, progress: Callable[..., None]) -> Any:
    """Locally, or on the board named by --device/--address (the target's own kernels)."""
    from host.quant.fallback import run_fallback
    if fallback.device is None and getattr(args, "address", None) is None:
        return run_fallback(settings, fallback, data=data, progress=progress)
    from host.quant.evaluate import AgentEvaluator
    common = _optional_module("host.cli.common")
    if common is None or not hasattr(common, "open_client"):
        raise UsageError("evaluating on a board needs host.cli.common, which this "
                         "installation lacks", hint="evaluate locally (drop --device)")
    conn = argparse.Namespace(**vars(args))
    conn.device = fallback.device
    with common.open_client(conn) as client:
        evaluator = AgentEvaluator(client, fallback.eval_dataset, fallback.metric)
        try:
            return run_fallback(settings, fallback, data=data, evaluator=evaluator,
                                progress=progress)
        finally:
            evaluator.close()


def _maybe_analysis(args: argparse.Namespace, layer: Any, settings: QuantizeSettings,
                    data: Any, report: Any, progress: Callable[..., None]) -> Dict[str, str]:
    """``--analysis`` (or XQuant's analysis_enable): OUT.analysis.md/.json/.png."""
    wanted = args.analysis if args.analysis is not None else (
        layer.analysis if layer is not None else None)
    if not wanted:
        return {}
    if data is None:
        return {"skipped": "no calibration data to analyze with (--ranges only)"}
    analysis = _optional_module("host.quant.analysis")
    if analysis is None:
        return {"skipped": "host.quant.analysis is not available in this installation"}
    output = Path(getattr(report, "output", settings.output))
    try:
        result = analysis.analyze(Path(settings.model), output, data, progress=progress)
    except EdgetuneError as exc:   # the model is written: report, do not fail the command
        log.warning("analysis failed: %s", exc)
        return {"failed": str(exc)}
    stem = output.with_suffix("")
    paths = {"markdown": str(stem) + ".analysis.md", "json": str(stem) + ".analysis.json"}
    Path(paths["markdown"]).write_text(result.to_markdown(), encoding="utf-8")
    to_json = result.to_json()
    Path(paths["json"]).write_text(to_json if isinstance(to_json, str)
                                   else json.dumps(to_json, indent=2), encoding="utf-8")
    try:
        png = str(stem) + ".analysis.png"
        if result.to_png(Path(png)) is not False and Path(png).exists():
            paths["png"] = png
    except ImportError:
        pass
    return paths


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if hasattr(value, "as_dict"):
            return _plain(value.as_dict())
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _summary(settings: QuantizeSettings, report: Any, fallback_result: Any,
             analysis: Dict[str, str], elapsed: float) -> Dict[str, Any]:
    output = Path(getattr(report, "output", settings.output))
    size_in = Path(settings.model).stat().st_size
    size_out = output.stat().st_size if output.exists() else None
    summary: Dict[str, Any] = {
        "model": str(settings.model), "output": str(output),
        "record": str(getattr(report, "record_path", "")) or None,
        "ranges": str(getattr(report, "ranges_path", "")) or None,
        "method": settings.method if settings.ranges is None else f"ranges:{settings.ranges}",
        "activations": settings.act_type, "weights": settings.weight_type,
        "per_channel": settings.per_channel,
        "nodes": {"int8": getattr(report, "n_quantized_nodes", None),
                  "int16": getattr(report, "n_int16_nodes", None),
                  "float": getattr(report, "n_float_nodes", None)},
        "size_bytes": {"fp32": size_in, "quantized": size_out,
                       "ratio": round(size_out / size_in, 4) if size_out else None},
        "elapsed_s": round(elapsed, 3), "notes": list(settings.notes),
    }
    if fallback_result is not None:
        summary["fallback"] = _plain(fallback_result)
    if analysis:
        summary["analysis"] = analysis
    return summary


def _print_table(summary: Dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    def mib(n: Optional[int]) -> str:
        return "-" if n is None else f"{n / 1048576:.2f} MiB"
    sizes, nodes = summary["size_bytes"], summary["nodes"]
    table = Table(title="edgetune quantize", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("model (FP32)", f"{summary['model']}  {mib(sizes['fp32'])}")
    ratio = f"  ({sizes['ratio']:.2f}x)" if sizes["ratio"] else ""
    table.add_row("output", f"{summary['output']}  {mib(sizes['quantized'])}{ratio}")
    table.add_row("nodes", f"int8 {nodes['int8']}  int16 {nodes['int16']}  float {nodes['float']}")
    table.add_row("method", f"{summary['method']}  act {summary['activations']}  weight "
                            f"{summary['weights']}  "
                            f"{'per-channel' if summary['per_channel'] else 'per-tensor'}")
    table.add_row("record", str(summary["record"]))
    table.add_row("ranges", str(summary["ranges"]))
    if "fallback" in summary:
        fb = summary["fallback"]
        met = fb.get("met") if isinstance(fb, dict) else None
        table.add_row("fallback", f"target met: {met}")
    for kind, path in summary.get("analysis", {}).items():
        table.add_row(f"analysis {kind}", path)
    table.add_row("time", f"{summary['elapsed_s']:.1f} s")
    for note in summary["notes"]:
        table.add_row("note", note)
    Console().print(table)

