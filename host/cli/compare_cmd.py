"""``edgetune compare MODEL_A MODEL_B``: an interleaved A/B comparison on a board, run as one
job (A B, B A, A B, ... in ``--rounds`` rounds of fresh sessions of the same length), with the
latency ratio's 95 % confidence interval over the rounds and, with ``--dataset``, the accuracy
and fidelity of both. The statistics and the table are ``edgetune.host.results.compare``'s.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from edgetune.host.cli.agent_cmds import (METRICS, _session_flags, add_thermal_flags,
                                          session_from_args, thermal_from_args)
from edgetune.host.cli.common import (add_connection_flags, add_json_flag, add_record_flags,
                                      check_count, parse_list)
from edgetune.host.errors import BadInputError, UsageError
from edgetune.host.results.location import recording
from edgetune.host.target import open_session, resolve_target
from edgetune.protos.messages import BlobKind, CompareSpec

DEFAULT_ROUNDS = 5
DEFAULT_ITERATIONS = 100

if TYPE_CHECKING:  # pragma: no cover
    from edgetune.host.board import BlobRef


@dataclass(frozen=True)
class CompareSettings:
    """What ``compare`` will run, checked before connecting."""

    a: BlobRef
    b: BlobRef
    template: CompareSpec                     # the hashes filled in on the board
    dataset: Optional[BlobRef] = None
    label: str = ""
    json: bool = False


def compare_settings(args: argparse.Namespace) -> CompareSettings:
    from edgetune.host.board import BlobRef
    check_count("--rounds", args.rounds, maximum=100)
    check_count("--iterations", args.iterations)
    check_count("--warmup", args.warmup, minimum=0)
    check_count("--seed", args.seed, minimum=0, maximum=2 ** 64 - 1)
    if args.duration is not None and not 0 < args.duration <= 3600:
        raise UsageError(f"--duration must be between 0 and 3600 seconds per session "
                         f"(got {args.duration:g})")
    metrics = parse_list(args.metric)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise UsageError(f"--metric {','.join(unknown)}: unknown (choose from {', '.join(METRICS)})")
    if metrics and not args.dataset:
        raise UsageError("--metric needs --dataset (the metrics are evaluated on it)")
    a, b = (BlobRef.parse(m, BlobKind.MODEL) for m in (args.model_a, args.model_b))
    if a.path is not None and b.path is not None:
        check_same_inputs(a.path, b.path)
    template = CompareSpec(
        model_a_sha256="", model_b_sha256="", session=session_from_args(args),
        rounds=args.rounds or DEFAULT_ROUNDS,
        warmup=10 if args.warmup is None else args.warmup,
        iterations=0 if args.duration is not None else (args.iterations or DEFAULT_ITERATIONS),
        min_duration_s=args.duration or 0.0, seed=args.seed or 0, return_samples=args.samples,
        metrics=metrics, thermal=thermal_from_args(args))
    dataset = BlobRef.parse(args.dataset, BlobKind.DATASET) if args.dataset else None
    return CompareSettings(a=a, b=b, template=template, dataset=dataset,
                           label=args.label or "", json=args.json)


def check_same_inputs(a: Path, b: Path) -> None:
    """Refuse, before anything runs, two models that cannot take the same inputs."""
    from edgetune.host.quant.calibdata import read_model_inputs

    ins_a, ins_b = read_model_inputs(a), read_model_inputs(b)
    if ins_a != ins_b:
        def show(inputs: Any) -> str:
            from onnx import TensorProto, helper
            return ", ".join(
                f"{i.name} "
                f"{TensorProto.DataType.Name(helper.np_dtype_to_tensor_dtype(i.dtype)).lower()} "
                f"[{', '.join('?' if d is None else str(d) for d in i.shape)}]"
                for i in inputs) or "none"
        raise BadInputError(
            f"{a.name} and {b.name} take different inputs ({a.name}: {show(ins_a)}; "
            f"{b.name}: {show(ins_b)})",
            hint="a comparison measures both models on the same inputs: compare two variants "
                 "of one model (e.g. FP32 and its INT8 from `edgetune quantize`)")


def cmd_compare(args: argparse.Namespace) -> int:
    from edgetune.host import render
    from edgetune.host.cli.compare_output import print_comparison

    settings = compare_settings(args)
    target = resolve_target(args)
    with recording(args, label=settings.label) as recorder, \
            open_session(args, target, recorder=recorder) as board, \
            render.ProgressView.auto(quiet=settings.json) as view:
        run = board.compare(settings.a, settings.b, settings.template, dataset=settings.dataset,
                            label=settings.label, view=view,
                            on_event=view.job_callback(f"compare {settings.a.display} vs "
                                                       f"{settings.b.display}"))
    return print_comparison(run, recorder, settings.json)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare", help="A vs B on a board, interleaved in rounds, with a confidence interval",
        description=__doc__)
    p.add_argument("model_a", metavar="MODEL_A", help="the baseline: a local .onnx or a sha256")
    p.add_argument("model_b", metavar="MODEL_B", help="the candidate: a local .onnx or a sha256")
    p.add_argument("--dataset", metavar="D.npz",
                   help="also evaluate both on this dataset (top-1, fidelity, ...)")
    p.add_argument("--metric", metavar="M,...", help=f"with --dataset: of {', '.join(METRICS)} "
                                                     "(default: all the dataset allows)")
    p.add_argument("--rounds", type=int, metavar="N",
                   help=f"rounds of one session per model (default {DEFAULT_ROUNDS}; a "
                        "confidence interval needs 2 or more)")
    count = p.add_mutually_exclusive_group()
    count.add_argument("--iterations", type=int, metavar="N",
                       help=f"timed runs per session (default {DEFAULT_ITERATIONS})")
    count.add_argument("--duration", type=float, metavar="S", help="time each session S seconds")
    p.add_argument("--warmup", type=int, metavar="N", help="untimed runs per session (default 10)")
    p.add_argument("--seed", type=int, metavar="N", help="seed of the random inputs (default 0)")
    p.add_argument("--samples", action="store_true",
                   help="keep every timing in the records (samples_ms)")
    add_thermal_flags(p)
    _session_flags(p)
    add_connection_flags(p)
    add_record_flags(p)
    add_json_flag(p)
    p.set_defaults(func=cmd_compare)
