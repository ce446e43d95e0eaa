"""``edgetune quantize``: a float ONNX model + calibration data -> a QDQ INT8 model and its record.

Flags become one frozen ``QuantizeSettings`` (defaults < ``--config`` file < explicit flags:
every flag defaults to None so "given" can be told from "default"), then the pipeline runs
(``edgetune.host.quant.pipeline.quantize``), or the accuracy-driven fallback when ``--max-drop`` is
given (``edgetune.host.quant.fallback.run_fallback``). Nothing heavy is imported at module top.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from edgetune.host.cli.quantize_flags import add_calibration_flags, build_settings, model_inputs
from edgetune.host.errors import EdgetuneError, TargetNotMetError, UsageError
from edgetune.host.quant.settings import (ACT_TYPES, DEFAULT_FALLBACK_STRATEGY, ENTROPY_COMPAT,
                                 FALLBACK_BY, FALLBACK_METRICS, FALLBACK_STRATEGIES, METHODS, WEIGHT_TYPES,
                                 FallbackSettings, QuantizeSettings)

log = logging.getLogger(__name__)

EXAMPLES = """examples:
  edgetune quantize model.onnx -o model.q.onnx --calib images/
  edgetune quantize model.onnx -o q.onnx --calib list.txt --mean 123.675,116.28,103.53 \\
      --std 58.395,57.12,57.375 --method entropy --exclude '/head/*' --truncate boxes
  edgetune quantize det.onnx -o q.onnx --calib images=imgs/ --calib scale=scales.npy
  edgetune quantize model.onnx -o q2.onnx --ranges q.ranges.json --per-tensor
  edgetune quantize --config xquant.json
  edgetune quantize --config resnet_onnx_run.cfg
  edgetune quantize --from-qat qat_export.onnx -o model.q.onnx
  edgetune quantize model.onnx -o q2.onnx --ranges qat_export.q.record.json
  edgetune quantize model.onnx -o q.onnx --calib calib.npz --max-drop 0.01 --eval test.npz
  edgetune quantize model.onnx -o q.onnx --calib calib.npz --max-drop 0.01 --eval test.npz \
      --fallback-by latency --device board1
"""

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
                   help="edgetune TOML, XQuant-style JSON, a Pegasus .quantize hybrid list or an "
                        "AIPU builder .cfg; "
                        "flags given beside it win")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--from-qat", type=Path, metavar="MODEL",
                   help="a model exported from quantization-aware training (Q/DQ pairs "
                        "already in it): check its scales, fold weight Q/DQ into int8, write "
                        "OUT and its record; no calibration (a MODEL holding Q/DQ pairs is "
                        "treated so without this flag)")

    add_calibration_flags(p)

    m = p.add_argument_group("calibration method")
    m.add_argument("--method", help=f"one of {', '.join(METHODS)} (default minmax)")
    m.add_argument("--percentile", type=float, help="for --method percentile (99.999)")
    m.add_argument("--bins", type=int, help="histogram bins (2048)")
    m.add_argument("--quantized-bins", type=int,
                   help="entropy's cells per window (default: the activation type's levels, "
                        "256 for uint8; 255 with --entropy-compat ort)")
    m.add_argument("--entropy-compat", choices=ENTROPY_COMPAT,
                   help="edgetune (default): KL search without the zero bin, one-sided "
                        "histograms for one-sided tensors (Relu outputs), levels of the "
                        "activation type; ort: onnxruntime's exact search (clips Relu outputs)")

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
    f.add_argument("--metric", choices=FALLBACK_METRICS,
                   help="auto: top1 with labels, else fidelity to the float model")
    f.add_argument("--strategy", choices=FALLBACK_STRATEGIES,
                   help="greedy: raise the worst layers, re-rank, repeat (NNCF-style); bisect: "
                        "the fewest top-ranked layers that meet X (AMCT-style); default "
                        f"{DEFAULT_FALLBACK_STRATEGY}")
    f.add_argument("--max-steps", type=int, help="evaluation budget (32)")
    f.add_argument("--fallback-by", dest="by", choices=FALLBACK_BY,
                   help="accuracy (default): keep the most int8 layers; latency: benchmark "
                        "every candidate on the board (--device) and keep the fastest that "
                        "meets --max-drop (replaces --strategy's search)")
    _add_device_flags(p)
    from edgetune.host.cli.common import add_record_flags
    add_record_flags(p)
    p.set_defaults(func=run)


def _add_device_flags(parser: argparse.ArgumentParser) -> None:
    """``--device`` plus the shared connection flags (host.cli.common)."""
    from edgetune.host.cli.common import add_connection_flags
    add_connection_flags(parser)


# --- running ---------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> int:
    qat = _qat_model(args)
    if qat is not None:
        from edgetune.host.cli.quantize_qat import run_qat
        return run_qat(args, qat)
    settings, fallback, layer = build_settings(args)
    from edgetune.host.results.location import open_results_store
    # Opened first: a results database that cannot be used stops before any work is done.
    store = None if args.no_record else open_results_store(args.db, getattr(args, "inventory", None))
    try:
        return _run(args, settings, fallback, layer, store)
    finally:
        if store is not None:
            store.close()


def _qat_model(args: argparse.Namespace) -> Optional[Path]:
    """``--from-qat MODEL``, or MODEL when it already holds Q/DQ pairs (auto-detected)."""
    if args.from_qat is not None:
        if args.model is not None and args.model != args.from_qat:
            raise UsageError("give the model once: MODEL or --from-qat MODEL")
        return args.from_qat
    if args.model is not None and args.config is None and args.model.is_file():
        from edgetune.host.quant.qat import has_qdq
        if has_qdq(args.model):
            return args.model
    return None


def _run(args: argparse.Namespace, settings: QuantizeSettings,
         fallback: Optional[FallbackSettings], layer: Any, store: Any) -> int:
    output = Path(settings.output)
    if layer is not None and layer.format in ("xquant", "aipu"):
        output.parent.mkdir(parents=True, exist_ok=True)     # as XQuant's working_dir and
                                                             # the AIPU builder's output_dir
    from edgetune.host.quant.pipeline import validate_settings
    validate_settings(settings)          # the output checks too, before any data is read
    from edgetune.host.quant.calibdata import CalibrationData, load_calibration, load_npz_feeds
    from edgetune.host.render import StageProgress

    if fallback is not None and fallback.by == "latency" and fallback.device is None \
            and getattr(args, "address", None) is None:
        raise UsageError("--fallback-by latency measures every candidate on a board",
                         hint="give --device NAME (or --address HOST:PORT)")
    started = time.perf_counter()
    data: Optional[CalibrationData] = None
    if settings.calib:
        data = load_calibration(settings.model, settings)
        if data.notes:   # e.g. "calibrating on all 8 samples": into the record with the rest
            settings = dataclasses.replace(settings, notes=settings.notes + data.notes)
    not_met: Optional[TargetNotMetError] = None
    with StageProgress(enabled=True, plain="edgetune quantize") as progress:
        if fallback is not None:
            if data is None:  # ranges only: the evaluation set feeds the sensitivity proxy
                inputs = model_inputs(Path(settings.model))
                feeds, _ = load_npz_feeds(fallback.eval_dataset, [i.name for i in inputs])
                data = CalibrationData.from_arrays(feeds, inputs)
            try:
                result = _run_fallback(args, settings, fallback, data, progress)
            except TargetNotMetError as exc:
                # The best model, its record and OUT.fallback.json are written: show the
                # search with the error, then exit 8.
                if getattr(exc, "report", None) is None:
                    raise
                result, not_met = exc.report, exc   # type: ignore[attr-defined]
            report = getattr(result, "report", None) or result
        else:
            from edgetune.host.quant.pipeline import quantize
            result = quantize(settings, data=data, progress=progress)
            report = result
        analysis_paths = _maybe_analysis(args, layer, settings, data, report, progress)
    summary = _summary(settings, report, result if fallback is not None else None,
                       analysis_paths, time.perf_counter() - started)
    summary["result_id"] = _record(store, summary, report)
    if not_met is not None:
        summary["error"] = {"type": type(not_met).__name__, "message": not_met.message,
                            "hint": not_met.hint, "exit_status": int(not_met.exit_status)}
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        _print_table(summary, result if fallback is not None else None)
        if not_met is not None:
            print(f"edgetune: error: {not_met}", file=sys.stderr)
    return int(not_met.exit_status) if not_met is not None else 0


def _record(store: Any, summary: Dict[str, Any], report: Any) -> Optional[str]:
    """Keep the quantization in the results store (None: --no-record): the quantized model,
    named by its sha256 with the float model's as its parent, the options and the outcome."""
    if store is None or not getattr(report, "output_sha256", ""):
        return None
    from edgetune.host.results.recording import host_doc
    from edgetune.host.results.records import ModelRef, Record

    plain = json.loads(json.dumps(summary, default=str))
    options = {k: plain[k] for k in ("method", "activations", "weights", "per_channel", "notes")}
    metrics = {"size_ratio": plain["size_bytes"]["ratio"], "input_bytes": report.input_bytes,
               "output_bytes": report.output_bytes, "nodes": plain["nodes"],
               "elapsed_s": plain["elapsed_s"], "n_samples": report.n_samples}
    if "fallback" in plain:
        metrics["fallback"] = plain["fallback"]
    record = Record(kind="quantize", model=ModelRef(
        sha256=report.output_sha256, name=Path(plain["output"]).name,
        size_bytes=report.output_bytes, parent_sha256=report.input_sha256 or None),
        options=options, metrics=metrics, host=host_doc())
    return store.add(record).id


def _run_fallback(args: argparse.Namespace, settings: QuantizeSettings,
                  fallback: FallbackSettings, data: Any, progress: Callable[..., None]) -> Any:
    """Locally, or on the board named by --device/--address (the target's own kernels)."""
    from edgetune.host.quant.fallback import run_fallback
    if fallback.device is None and getattr(args, "address", None) is None:
        return run_fallback(settings, fallback, data=data, progress=progress)
    from edgetune.host.quant.evaluate import AgentEvaluator
    from edgetune.host.target import open_session
    conn = argparse.Namespace(**vars(args))
    conn.device = fallback.device
    with open_session(conn) as board:
        evaluator = AgentEvaluator(board, fallback.eval_dataset, fallback.metric)
        latency = None
        if fallback.by == "latency":
            from edgetune.host.quant.fallback_latency import BoardLatency
            latency = BoardLatency(board)
        try:
            return run_fallback(settings, fallback, data=data, evaluator=evaluator,
                                progress=progress, latency=latency)
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
    from edgetune.host.quant import analysis
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


def _node_counts(report: Any) -> Dict[str, Optional[int]]:
    """int8 / int16 / float node counts as the record states them (``node_precision``;
    ``n_quantized_nodes`` counts int8 and int16 together)."""
    precision = getattr(report, "node_precision", None)
    if precision:
        values = list(precision.values())
        return {kind: values.count(kind) for kind in ("int8", "int16", "float")}
    quantized = getattr(report, "n_quantized_nodes", None)
    int16 = getattr(report, "n_int16_nodes", None)
    int8 = getattr(report, "n_int8_nodes", None)
    if int8 is None and quantized is not None:
        int8 = quantized - (int16 or 0)
    return {"int8": int8, "int16": int16, "float": getattr(report, "n_float_nodes", None)}


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
        "nodes": _node_counts(report),
        "size_bytes": {"fp32": size_in, "quantized": size_out,
                       "ratio": round(size_out / size_in, 4) if size_out else None},
        "elapsed_s": round(elapsed, 3), "notes": list(settings.notes),
    }
    if fallback_result is not None:
        summary["fallback"] = _plain(fallback_result)
    if analysis:
        summary["analysis"] = analysis
    return summary


def _print_table(summary: Dict[str, Any], fallback_result: Any = None) -> None:
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
    fb = summary.get("fallback")
    if isinstance(fb, dict):
        table.add_row("fallback", f"target {'met' if fb.get('met') else 'NOT met'}: "
                                  f"{fb.get('metric')} {_num(fb.get('best_metric'))} (drop "
                                  f"{_num(fb.get('drop'))}, allowed {fb.get('max_drop'):g}), "
                                  f"{fb.get('int8_layers')}/{fb.get('quantizable_layers')} "
                                  f"layers int8, {fb.get('strategy')}")
        table.add_row("fallback steps", str(fb.get("fallback_record")))
    for kind, path in summary.get("analysis", {}).items():
        table.add_row(f"analysis {kind}", path)
    table.add_row("time", f"{summary['elapsed_s']:.1f} s")
    for note in summary["notes"]:
        table.add_row("note", note)
    console = Console()
    console.print(table)
    if fallback_result is not None and hasattr(fallback_result, "lines"):
        for line in fallback_result.lines():     # every step of the search, one line each
            console.print(line, markup=False, highlight=False, soft_wrap=True)


def _num(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else str(value)

