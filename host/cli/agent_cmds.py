"""The board commands ``info``, ``bench`` and ``eval``; ``register`` also adds ``models``,
``datasets`` (``edgetune.host.cli.store_cmds``) and ``jobs`` (``edgetune.host.cli.jobs_cmds``) in between, in
the order of ``edgetune --help``.

Each takes the connection flags of ``edgetune.host.cli.common`` and ``--json``. Flags are checked (and
turned into one frozen settings object) before any connection is made.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

from edgetune.host.cli import jobs_cmds, store_cmds
from edgetune.host.cli.common import (add_connection_flags, add_json_flag, add_record_flags,
                                      check_count, parse_list, parse_shape)
from edgetune.host.errors import ExitStatus, UsageError
from edgetune.host.results.location import recording
from edgetune.host.target import open_session, resolve_target
from edgetune.protos.messages import (EXECUTION_MODES, GRAPH_OPT_LEVELS, BenchmarkSpec, BlobKind,
                             EvaluateSpec, SessionOptions, ThermalGate)

if TYPE_CHECKING:  # pragma: no cover
    from edgetune.host.board import BlobRef

METRICS = ("top1", "top5", "fidelity", "miou", "map")
BENCH_LEASE_TTL_S = 60.0       # bench's lease, renewed every 20 s while it runs


# ---------------------------------------------------------------------- settings

@dataclass(frozen=True)
class JobSettings:
    """What ``bench`` or ``eval`` will run, checked before connecting."""

    kind: str                                  # "benchmark" or "evaluate"
    models: Tuple[BlobRef, ...]
    template: Any                              # BenchmarkSpec/EvaluateSpec with model "" (and dataset "")
    dataset: Optional[BlobRef] = None
    samples: bool = False
    label: str = ""
    json: bool = False
    lease_ttl_s: float = 0.0                   # hold the board's lease while measuring; 0: no


def session_from_args(args: argparse.Namespace) -> SessionOptions:
    """The session flags over ``--session FILE`` (a session.json from ``edgetune tune -o``):
    each flag given replaces the file's value."""
    check_count("--threads", args.threads, minimum=0)
    check_count("--inter-threads", args.inter_threads, minimum=0)
    base = read_session_file(args.session) if getattr(args, "session", None) else SessionOptions()
    shapes = dict(base.input_shapes)
    shapes.update(parse_shape(s) for s in args.shape or ())
    providers = parse_list(args.providers) or base.providers
    options = parse_provider_options(getattr(args, "provider_option", None) or (), providers)
    if not options and not args.providers:
        options = base.provider_options
    return SessionOptions(
        providers=providers,
        intra_op_threads=base.intra_op_threads if args.threads is None else args.threads,
        inter_op_threads=base.inter_op_threads if args.inter_threads is None else args.inter_threads,
        graph_optimization=args.graph_opt or base.graph_optimization,
        execution_mode=args.execution_mode or base.execution_mode,
        input_shapes=tuple(sorted(shapes.items())), provider_options=options)


def read_session_file(path: Any) -> SessionOptions:
    """A session.json (``SessionOptions.as_dict``, as ``edgetune tune -o`` writes it)."""
    import json

    from edgetune.host.errors import BadInputError, NotFoundError

    try:
        doc = json.loads(open(path, encoding="utf-8").read())
    except FileNotFoundError:
        raise NotFoundError(f"session file {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise BadInputError(f"session file {path} is not JSON: {exc}") from None
    known = set(SessionOptions.__dataclass_fields__)
    if not isinstance(doc, dict) or set(doc) - known:
        extra = sorted(set(doc) - known) if isinstance(doc, dict) else []
        raise BadInputError(f"session file {path} is not a session: unknown keys "
                            f"{', '.join(extra) or '(not an object)'}",
                            hint=f"the keys are: {', '.join(sorted(known))}")
    try:
        session = SessionOptions.from_dict(doc)
    except (TypeError, ValueError, AttributeError) as exc:
        raise BadInputError(f"session file {path}: {exc}") from None
    if session.graph_optimization not in GRAPH_OPT_LEVELS \
            or session.execution_mode not in EXECUTION_MODES:
        raise BadInputError(f"session file {path}: graph_optimization must be one of "
                            f"{', '.join(GRAPH_OPT_LEVELS)} and execution_mode one of "
                            f"{', '.join(EXECUTION_MODES)}")
    return session


PROVIDER_OPTION_EXAMPLE = "CANNExecutionProvider:precision_mode=force_fp16"


def parse_provider_options(values: Sequence[str], providers: Sequence[str]
                           ) -> Tuple[Tuple[str, Tuple[Tuple[str, str], ...]], ...]:
    """``--provider-option EP:KEY=VALUE`` (repeatable) as SessionOptions.provider_options.
    Each EP must be one the session uses (``--providers``; CPUExecutionProvider by default)."""
    used = list(providers) or ["CPUExecutionProvider"]
    given: Dict[str, Dict[str, str]] = {}
    for text in values:
        provider, colon, rest = text.partition(":")
        key, equals, value = rest.partition("=")
        if not colon or not equals or not provider.strip() or not key.strip():
            raise UsageError(f"--provider-option takes EP:KEY=VALUE, for example "
                             f"{PROVIDER_OPTION_EXAMPLE} (got {text!r})")
        provider, key = provider.strip(), key.strip()
        if provider not in used:
            raise UsageError(f"--provider-option {text!r} is for {provider}, which the session "
                             f"does not use (providers: {', '.join(used)})",
                             hint=f"add it to --providers, e.g. --providers {provider}")
        if key in given.setdefault(provider, {}):
            raise UsageError(f"--provider-option gives {provider}:{key} twice")
        given[provider][key] = value
    return tuple(sorted((p, tuple(sorted(o.items()))) for p, o in given.items()))


def thermal_from_args(args: argparse.Namespace) -> Optional[ThermalGate]:
    """``--max-temp C [--max-temp-wait S]`` as a ThermalGate (None without --max-temp)."""
    if args.max_temp_wait is not None and args.max_temp is None:
        raise UsageError("--max-temp-wait needs --max-temp C (the temperature to wait for)")
    if args.max_temp is None:
        return None
    if not 0 < args.max_temp <= 150:
        raise UsageError(f"--max-temp must be between 0 and 150 °C (got {args.max_temp:g})")
    wait = args.max_temp_wait
    if wait is not None and not 0 < wait <= 3600:
        raise UsageError(f"--max-temp-wait must be between 0 and 3600 seconds (got {wait:g})")
    return ThermalGate(max_temp_c=float(args.max_temp), max_wait_s=float(wait or 0.0))


def add_thermal_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("thermal gating")
    g.add_argument("--max-temp", type=float, metavar="C",
                   help="before each measured session, wait until the board's hottest thermal "
                        "zone is below C degrees (said when the board has no sensor)")
    g.add_argument("--max-temp-wait", type=float, metavar="S",
                   help="wait at most S seconds for it each time, then fail (default 300)")


def bench_settings(args: argparse.Namespace) -> JobSettings:
    from edgetune.host.board import BlobRef
    check_count("--iterations", args.iterations)
    check_count("--warmup", args.warmup, minimum=0)
    check_count("--seed", args.seed, minimum=0, maximum=2 ** 64 - 1)
    if args.duration is not None and not 0 < args.duration <= 24 * 3600:
        raise UsageError(f"--duration must be between 0 and 86400 seconds (got {args.duration})")
    iterations = 0 if args.duration is not None else (args.iterations or 100)
    template = BenchmarkSpec(
        model_sha256="", session=session_from_args(args),
        warmup=10 if args.warmup is None else args.warmup, iterations=iterations,
        min_duration_s=args.duration or 0.0, seed=args.seed or 0, return_samples=args.samples,
        thermal=thermal_from_args(args), profile=bool(getattr(args, "profile", False)),
        runner=runner_from_args(args))
    check_count("--profile-top", getattr(args, "profile_top", 10))
    dataset = BlobRef.parse(args.dataset, BlobKind.DATASET) if args.dataset else None
    return JobSettings(kind="benchmark", template=template, dataset=dataset,
                       models=model_refs(args),
                       samples=args.samples, label=args.label or "", json=args.json,
                       lease_ttl_s=0.0 if args.no_lease else BENCH_LEASE_TTL_S)


def eval_settings(args: argparse.Namespace) -> JobSettings:
    from edgetune.host.board import BlobRef
    check_count("--batch", args.batch)
    metrics = parse_list(args.metric)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise UsageError(f"--metric {','.join(unknown)}: unknown (choose from {', '.join(METRICS)})")
    from edgetune.host.cli.eval_detection import detection_options
    decoder, conf, iou = detection_options(args, metrics)
    template = EvaluateSpec(model_sha256="", dataset_sha256="", session=session_from_args(args),
                            metrics=metrics, batch_size=args.batch or 1, decoder=decoder,
                            conf=conf, iou=iou, runner=runner_from_args(args))
    return JobSettings(kind="evaluate", template=template,
                       dataset=BlobRef.parse(args.dataset, BlobKind.DATASET),
                       models=model_refs(args),
                       label=args.label or "", json=args.json)


def runner_from_args(args: argparse.Namespace) -> str:
    """``--runner NAME``: a runner plug-in of the board ("": onnxruntime)."""
    name = getattr(args, "runner", None) or ""
    if name == "onnxruntime":           # the agent's own runner, named explicitly
        return ""
    if name and not re.match(r"^[a-z0-9][a-z0-9_-]{0,31}$", name):
        raise UsageError(f"--runner {name!r} is not a runner name (lowercase letters, digits, "
                         "'-', '_'); `edgetune info` lists the board's runners")
    return name


def model_refs(args: argparse.Namespace) -> Tuple[BlobRef, ...]:
    """The MODEL arguments, each with the format ``--format`` declares ("": its suffix's)."""
    from edgetune.host.board import BlobRef, model_format
    given = getattr(args, "format", None) or ""
    refs = []
    for text in args.models:
        ref = BlobRef.parse(text, BlobKind.MODEL)
        if ref.path is not None:
            ref = dataclasses.replace(ref, format=model_format(ref.path, given))
        refs.append(ref)
    return tuple(refs)


# ---------------------------------------------------------------------- running jobs

def _label(ref: BlobRef, sha256: str) -> str:
    """How progress lines and job listings name a model: its file name, else its short hash."""
    return ref.path.name if ref.path is not None else sha256[:12]


def run_jobs(args: argparse.Namespace, settings: JobSettings) -> int:
    """Upload what is local, submit one job per model, wait for them, print the results."""
    from edgetune.host import render
    from edgetune.host.leases import lease_scope

    target = resolve_target(args)
    with recording(args, label=settings.label) as recorder, \
            open_session(args, target, recorder=recorder) as board, \
            render.ProgressView.auto(quiet=settings.json) as view, \
            contextlib.ExitStack() as measuring:
        dataset_sha = board.resolve(settings.dataset, view) if settings.dataset else ""
        shas = [board.resolve(ref, view) for ref in settings.models]
        measuring.enter_context(lease_scope(board, settings.lease_ttl_s))   # after uploading
        submitted: List[Tuple[str, str]] = []
        states: Dict[str, str] = {}
        try:
            for ref, sha in zip(settings.models, shas):
                spec = _spec(settings.template, sha, dataset_sha)
                job, _ = board.submit(spec, label=settings.label or _label(ref, sha))
                submitted.append((job.id, _label(ref, sha)))
                states[job.id] = job.state.value
        except BaseException:
            for job_id, _ in submitted:   # the command failed as a whole: do not leave them
                try:
                    board.cancel(job_id)
                except Exception:  # noqa: BLE001 - best effort
                    pass
            raise
        jobs = board.wait_all(submitted, view, states)
        if jobs is None:
            return int(ExitStatus.INTERRUPTED)
        runs = [board.result(job, ref.text, ref.path) for job, ref in zip(jobs, settings.models)]
    failed = render.print_results(settings.kind, runs, settings.json, samples=settings.samples,
                                  profile_top=getattr(args, "profile_top", 10),
                                  result_id=recorder.result_id if recorder else None)
    return int(ExitStatus.AGENT) if failed else 0


def _spec(template: Any, model_sha: str, dataset_sha: str) -> Any:
    return dataclasses.replace(template, model_sha256=model_sha, dataset_sha256=dataset_sha)


# ---------------------------------------------------------------------- commands

def cmd_bench(args: argparse.Namespace) -> int:
    settings = bench_settings(args)
    repeat = getattr(args, "repeat", None)
    check_count("--repeat", repeat, maximum=1000)
    if repeat is not None and repeat > 1:
        from edgetune.host.cli.bench_repeat import run_repeated
        return run_repeated(args, settings, repeat)
    return run_jobs(args, settings)


def cmd_eval(args: argparse.Namespace) -> int:
    return run_jobs(args, eval_settings(args))


def cmd_info(args: argparse.Namespace) -> int:
    from edgetune.host import render

    target = resolve_target(args)
    with open_session(args, target) as board:
        info = board.board.agent
    assert info is not None
    doc = {"device": target.device, "address": target.address, **info.as_dict()}
    if args.json:
        render.print_json(doc)
    else:
        render.stdout_console().print(render.info_table(doc))
    return 0


# ---------------------------------------------------------------------- parsers

def _runner_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("runner")
    g.add_argument("--runner", metavar="NAME",
                   help="run on one of the board's runner plug-ins (its agent.toml "
                        "[runners.NAME]; `edgetune info` lists them) instead of onnxruntime")
    g.add_argument("--format", metavar="FMT",
                   help="the model file's format for the board (default: from its suffix: "
                        ".om -> om, .nb -> nb, .aipu -> aipu, else onnx)")


def _session_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("onnxruntime session")
    g.add_argument("--threads", type=int, metavar="N", help="intra-op threads (0: default)")
    g.add_argument("--inter-threads", type=int, metavar="N", help="inter-op threads (0: default)")
    g.add_argument("--providers", metavar="P,...",
                   help="execution providers in order of preference (default: CPU)")
    g.add_argument("--provider-option", action="append", metavar="EP:KEY=VALUE",
                   help="an option for an execution provider, passed to onnxruntime on the "
                        f"board (repeatable), e.g. {PROVIDER_OPTION_EXAMPLE}")
    g.add_argument("--graph-opt", choices=GRAPH_OPT_LEVELS,
                   help="graph optimisation level (default: all)")
    g.add_argument("--execution-mode", choices=EXECUTION_MODES,
                   help="(default: sequential)")
    g.add_argument("--session", metavar="session.json",
                   help="session options from a file (`edgetune tune -o DIR` writes "
                        "DIR/session.json); the flags above replace its values")
    g.add_argument("--shape", action="append", metavar="NAME=1x3x224x224",
                   help="fix an input's dynamic dimensions (repeatable)")
    g.add_argument("--label", help="a note shown in `edgetune jobs list` (default: the file name)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="what a board is: OS, CPU, memory, runtimes, store, queue")
    add_connection_flags(p)
    add_json_flag(p)
    p.set_defaults(func=cmd_info)

    store_cmds.register(sub)
    jobs_cmds.register(sub)

    b = sub.add_parser("bench", help="time models on a board (upload, queue, measure)")
    b.add_argument("models", nargs="+", metavar="MODEL", help="a local .onnx file or the sha256 "
                                                              "of a model on the board")
    count = b.add_mutually_exclusive_group()
    count.add_argument("--iterations", type=int, metavar="N", help="timed runs (default 100)")
    count.add_argument("--duration", type=float, metavar="S", help="time runs for S seconds")
    b.add_argument("--warmup", type=int, metavar="N", help="untimed runs first (default 10)")
    b.add_argument("--seed", type=int, metavar="N", help="seed of the random inputs (default 0)")
    b.add_argument("--dataset", metavar="D.npz", help="take inputs from a dataset (file or sha256)")
    b.add_argument("--samples", action="store_true", help="also return every timing (samples_ms)")
    b.add_argument("--profile", action="store_true",
                   help="after the measurement, profile the operators on the board (a second "
                        "session with onnxruntime's profiler; its overhead is shown)")
    b.add_argument("--profile-top", type=int, default=10, metavar="N",
                   help="with --profile: how many of the slowest nodes to list (default 10)")
    b.add_argument("--no-lease", action="store_true",
                   help="do not lease the board while measuring (by default bench holds it, "
                        "so other hosts' jobs wait; without, they may run between ours and "
                        "the numbers are less trustworthy on a shared board)")
    b.add_argument("--repeat", type=int, metavar="N", help="measure each model N times, each a "
                   "fresh session (a job of its own), models interleaved; prints the median p50 "
                   "with its run-to-run spread and flags board-state changes")
    add_thermal_flags(b)
    _runner_flags(b)
    _session_flags(b)
    add_connection_flags(b)
    add_record_flags(b)
    add_json_flag(b)
    b.set_defaults(func=cmd_bench)

    e = sub.add_parser("eval", help="measure accuracy and fidelity of models on a board")
    e.add_argument("models", nargs="+", metavar="MODEL", help="a local .onnx file or a sha256")
    e.add_argument("--dataset", required=True, metavar="D.npz",
                   help="inputs keyed by input name, optional labels and reference outputs")
    e.add_argument("--metric", metavar="M,...", help=f"of {', '.join(METRICS)} (default: all "
                                                     "the dataset allows)")
    e.add_argument("--batch", type=int, metavar="N", help="samples per run (default 1)")
    from edgetune.host.cli.eval_detection import add_detection_flags
    add_detection_flags(e)
    _runner_flags(e)
    _session_flags(e)
    add_connection_flags(e)
    add_record_flags(e)
    add_json_flag(e)
    e.set_defaults(func=cmd_eval)
