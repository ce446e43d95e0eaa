"""``edgetune analyze FLOAT QUANT --device B``: the "board vs host INT8" column
(``edgetune.host.quant.board_analysis``): flags, sample selection and the printed table."""

from __future__ import annotations

import argparse
from typing import Any, Dict, List

import numpy as np

from edgetune.host.errors import UsageError
from edgetune.host.quant.board_analysis import BOARD_COSINE, BOARD_SQNR_DB

DEFAULT_BOARD_SAMPLES = 8


def add_board_flags(parser: argparse.ArgumentParser) -> None:
    from edgetune.host.cli.common import add_connection_flags
    add_connection_flags(parser)
    b = parser.add_argument_group(
        "on the board (--device)",
        "The board runs a copy of QUANT that outputs every analysed tensor and sends the "
        "tensors back in chunks; each is compared here with this PC's FP32 and INT8 runs. "
        f"Flagged BOARD: board vs host INT8 SQNR below {BOARD_SQNR_DB:g} dB or cosine below "
        f"{BOARD_COSINE:g}. The tensors of all samples must fit the board's [limits] "
        "max_job_output_bytes (the error says how many fit); an agent without the feature "
        "job_output (the previous release) is refused.")
    b.add_argument("--board-samples", type=int, metavar="N",
                   help=f"samples run on the board (default {DEFAULT_BOARD_SAMPLES}, at most "
                        "--calib-count)")
    b.add_argument("--board-tensors", type=int, metavar="N",
                   help="compare only the first N analysed tensors on the board (default all)")
    b.add_argument("--runner", metavar="NAME", default="",
                   help="run the copy with the board's runner plug-in NAME (one that takes "
                        "ONNX) instead of the agent's onnxruntime")


def wanted(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "device", None) or getattr(args, "address", None))


def check(args: argparse.Namespace) -> None:
    for flag, value in (("--board-samples", args.board_samples),
                        ("--board-tensors", args.board_tensors)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be at least 1, got {value}")
    if not wanted(args) and (args.board_samples or args.board_tensors or args.runner):
        raise UsageError("--board-samples/--board-tensors/--runner need a board",
                         hint="give --device NAME (or --address HOST:PORT)")


def feeds_of(data: Any, count: int) -> Dict[str, np.ndarray]:
    parts: Dict[str, List[np.ndarray]] = {}
    got = 0
    for chunk in data.chunks(count):
        for name, value in chunk.items():
            parts.setdefault(name, []).append(value)
        got += len(next(iter(chunk.values())))
        if got >= count:
            break
    return {k: np.ascontiguousarray(np.concatenate(v)[:count]) for k, v in parts.items()}


def run_board(args: argparse.Namespace, data: Any, count: int) -> Any:
    from edgetune.host.quant.board_analysis import board_analysis
    from edgetune.host.target import open_session
    samples = min(args.board_samples or DEFAULT_BOARD_SAMPLES, count)
    feeds = feeds_of(data, samples)
    with open_session(args) as board:
        return board_analysis(args.float_model, args.quant_model, feeds, board,
                              max_tensors=args.board_tensors or 0, runner=args.runner)


def print_board(result: Any) -> None:
    from rich.console import Console
    from rich.table import Table
    table = Table(title=f"on the board {result.device} ({result.samples} samples)")
    for column in ("tensor", "board vs FP32 cos", "SQNR dB", "board vs host INT8 cos",
                   "SQNR dB", "flag"):
        table.add_column(column, justify="left" if column in ("tensor", "flag") else "right")
    for t in result.tensors:
        fp, host = t.vs_fp32, t.vs_host_int8
        table.add_row(t.tensor, _f(fp.get("cosine"), 6), _f(fp.get("sqnr_db"), 1),
                      _f(host.get("cosine"), 6), _f(host.get("sqnr_db"), 1),
                      "BOARD" if t.flagged else "")
    console = Console()
    console.print(table)
    th = result.thresholds
    console.print(f"flagged (BOARD): board vs host INT8 SQNR below {th['board_sqnr_db']:g} dB "
                  f"or cosine below {th['board_cosine']:g}: the board's kernels depart from "
                  f"the host's simulation there ({len(result.flagged())} tensor(s))")
    stream = result.stream
    if stream is not None:
        console.print(f"read back: job {stream.job_id}, {stream.output_bytes} bytes in "
                      f"{stream.chunks} chunk(s)"
                      + (f", resumed {stream.resumes} time(s)" if stream.resumes else "")
                      + f"; this PC held at most {stream.host_buffer_bytes} bytes of tensors")


def _f(value: Any, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
