"""``edgetune analyze FLOAT.onnx QUANT.onnx --calib SOURCE``: where the quantization error is.

Runs both models on a few calibration samples and reports, for every quantized tensor and
weight, SQNR / cosine / noise-to-signal ratio (accumulated against the float model, and
isolated: the tensor's own Q/DQ round trip), ranked worst first, with flags. Writes Markdown
(``--report``), JSON (``--report x.json`` or ``--json`` on stdout) and a bar chart
(``--png``, needs matplotlib). Nothing heavy is imported at module top.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict

from edgetune.host.cli.quantize_flags import add_calibration_flags, calib_sources_from_args
from edgetune.host.errors import UsageError

DEFAULT_COUNT = 32          # samples analyzed
DEFAULT_BATCH = 2           # samples per run of both models

EXAMPLES = """examples:
  edgetune analyze model.onnx model.q.onnx --calib calib.npz
  edgetune analyze model.onnx model.q.onnx --calib images/ --mean 123.675,116.28,103.53 \\
      --std 58.395,57.12,57.375 --report analysis.md --png analysis.png
  edgetune analyze det.onnx det.q.onnx --calib images=imgs/ --calib scale=scales.npy --json
  edgetune analyze model.onnx model.q.onnx --calib calib.npz --device board1
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "analyze", help="per-layer quantization error of a QDQ model against its float model",
        description="Compare a quantized (QDQ) model with its float model on calibration "
                    "samples: SQNR, cosine similarity and noise-to-signal ratio of every "
                    "quantized tensor and weight, accumulated (vs the float model) and isolated "
                    "(its own quantization only), ranked worst first and flagged.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("float_model", type=Path, metavar="FLOAT.onnx")
    p.add_argument("quant_model", type=Path, metavar="QUANT.onnx")
    p.add_argument("--json", action="store_true", help="print one JSON document")

    # The same calibration and image flags as quantize (one definition, host.cli.quantize_flags).
    add_calibration_flags(p, required=True, default_count=DEFAULT_COUNT,
                          default_batch=DEFAULT_BATCH, batch_help="samples per run")

    r = p.add_argument_group("report")
    r.add_argument("--report", type=Path, metavar="FILE",
                   help="write the report: Markdown, or JSON when FILE ends in .json")
    r.add_argument("--png", type=Path, metavar="FILE", help="bar chart (needs matplotlib)")
    r.add_argument("--cosine-threshold", type=float, default=0.99, metavar="C",
                   help="flag a cosine below this (0.99)")
    r.add_argument("--sqnr-threshold", type=float, default=20.0, metavar="DB",
                   help="flag an SQNR below this many dB (20)")
    r.add_argument("--top", type=int, default=20, metavar="N",
                   help="rows of the table shown here and in the Markdown (20; 0: all)")
    r.add_argument("--batch", type=int, metavar="N",
                   help=f"the same as --calib-batch (default {DEFAULT_BATCH})")
    from edgetune.host.cli.analyze_board import add_board_flags
    add_board_flags(p)        # --device: the "board vs host INT8" column
    p.set_defaults(func=run)


def build_data(args: argparse.Namespace) -> Any:
    """The calibration samples the flags describe (host.quant.calibdata)."""
    from edgetune.host.quant.calibdata import load_calibration
    from edgetune.host.quant.settings import QuantizeSettings

    settings = QuantizeSettings(model=args.float_model, output=args.quant_model,
                                calib=calib_sources_from_args(args),
                                calib_count=_count(args), seed=_seed(args),
                                calib_batch=_batch(args), source="analyze")
    return load_calibration(Path(args.float_model), settings)


def _count(args: argparse.Namespace) -> int:
    return DEFAULT_COUNT if args.calib_count is None else args.calib_count


def _seed(args: argparse.Namespace) -> int:
    return 0 if args.seed is None else args.seed


def _batch(args: argparse.Namespace) -> int:
    for value in (args.batch, args.calib_batch):
        if value is not None:
            return value
    return DEFAULT_BATCH


def _check(args: argparse.Namespace) -> None:
    if _count(args) < 1:
        raise UsageError(f"--calib-count must be at least 1, got {args.calib_count}")
    if args.batch is not None and args.calib_batch is not None \
            and args.batch != args.calib_batch:
        raise UsageError(f"--batch {args.batch} and --calib-batch {args.calib_batch} disagree",
                         hint="they are the same option: give one")
    if _batch(args) < 1:
        raise UsageError(f"--calib-batch must be at least 1, got {_batch(args)}")
    if args.top < 0:
        raise UsageError(f"--top must be 0 (all) or more, got {args.top}")
    if not 0.0 <= args.cosine_threshold <= 1.0:
        raise UsageError(f"--cosine-threshold must be within 0..1, got {args.cosine_threshold}")
    for flag, path in (("--report", args.report), ("--png", args.png)):
        if path is not None and not Path(path).parent.exists():
            raise UsageError(f"{flag} {path}: the folder {Path(path).parent} does not exist")
        if path is not None and Path(path).resolve() in (Path(args.float_model).resolve(),
                                                         Path(args.quant_model).resolve()):
            raise UsageError(f"{flag} {path} would overwrite a model")


def run(args: argparse.Namespace) -> int:
    from edgetune.host.quant.analysis import analyze
    from edgetune.host.quant.report import (PLOT_SKIPPED, analysis_dict, analysis_json, analysis_markdown,
                                   write_text_atomic)
    from edgetune.host.render import StageProgress

    from edgetune.host.cli import analyze_board
    _check(args)
    analyze_board.check(args)
    data = build_data(args)
    top = args.top or None
    with StageProgress(enabled=not args.json, transient=True, elapsed=False) as progress:
        report = analyze(args.float_model, args.quant_model, data,
                         max_samples=_count(args), cosine_threshold=args.cosine_threshold,
                         sqnr_threshold_db=args.sqnr_threshold, batch_size=_batch(args),
                         progress=progress)
    board = analyze_board.run_board(args, data, _count(args)) \
        if analyze_board.wanted(args) else None
    written: Dict[str, str] = {}
    if args.report is not None:
        if Path(args.report).suffix.lower() == ".json":
            write_text_atomic(args.report, analysis_json(report) + "\n")
        else:
            write_text_atomic(args.report, analysis_markdown(report, top=top))
        written["report"] = str(args.report)
    plot_note = ""
    if args.png is not None:
        if report.to_png(args.png) is not None:
            written["png"] = str(args.png)
        else:
            plot_note = PLOT_SKIPPED
    if args.json:
        import json

        doc = analysis_dict(report)
        doc["written"] = written
        if plot_note:
            doc["plot"] = plot_note
        if board is not None:
            doc["board"] = board.as_dict()
        print(json.dumps(doc, indent=2, allow_nan=False))
        return 0
    _print_human(report, top or len(report.ranked()), written, plot_note)
    if board is not None:
        analyze_board.print_board(board)
    return 0


def _print_human(report: Any, top: int, written: Dict[str, str], plot_note: str) -> None:
    from rich.console import Console
    from rich.table import Table

    from edgetune.host.quant.report import TABLE_COLUMNS, table_rows

    console = Console()
    ranked = report.ranked()
    for out in report.outputs:
        acc = out.accumulated
        if acc is not None:
            console.print(f"output {out.name}: SQNR {acc.sqnr_db:.1f} dB, cosine "
                          f"{acc.cosine:.5f}, NSR {acc.nsr:.3g}"
                          + ("  [bold red]flagged[/]" if out.flagged else ""))
    table = Table(title=f"worst {min(top, len(ranked))} of {len(ranked)} quantized tensors "
                        f"({report.samples} samples)")
    for column in TABLE_COLUMNS:
        table.add_column(column, justify="left" if column in ("tensor", "node", "op", "type")
                         else "right",
                         # names wrap instead of being cut to "layer2…" on narrow terminals
                         overflow="fold" if column in ("tensor", "node") else "ellipsis")
    for row, tensor in zip(table_rows(ranked[:top]), ranked[:top]):
        table.add_row(*row, style="red" if tensor.flagged else None)
    console.print(table)
    flagged = report.flagged()
    console.print(f"{len(flagged)} flagged (cosine < {report.cosine_threshold:g} or SQNR < "
                  f"{report.sqnr_threshold_db:g} dB); score = min(isolated SQNR, isolated "
                  "channel SQNR)")
    for note in report.notes:
        console.print(f"note: {note}")
    for what, path in written.items():
        console.print(f"wrote {what}: {path}")
    if plot_note:
        console.print(plot_note)
