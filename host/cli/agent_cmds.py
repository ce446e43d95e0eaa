"""The board commands: ``info``, ``models``, ``datasets``, ``jobs``, ``bench``, ``eval``.

Each takes the connection flags of ``host.cli.common`` and ``--json``. Flags are checked (and
turned into one frozen settings object) before any connection is made.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from host.cli.common import (add_connection_flags, add_json_flag, check_count, open_client,
                             parse_list, parse_shape, resolve_target)
from host.errors import ExitStatus, NotFoundError, UsageError
from protos.messages import (EXECUTION_MODES, GRAPH_OPT_LEVELS, BenchmarkSpec, BlobKind,
                             EvaluateSpec, SessionOptions)

HEX = re.compile(r"^[0-9a-f]{6,64}$")
METRICS = ("top1", "top5", "fidelity", "miou")


# ---------------------------------------------------------------------- settings

@dataclass(frozen=True)
class BlobRef:
    """A model or dataset named on the command line: a local file, or a hash on the board."""

    text: str
    kind: BlobKind
    path: Optional[Path] = None
    sha256: str = ""                   # full or a prefix of at least 6 hex digits

    @classmethod
    def parse(cls, text: str, kind: BlobKind) -> "BlobRef":
        path = Path(text).expanduser()
        if path.is_file():
            return cls(text=text, kind=kind, path=path)
        if HEX.match(text.lower()):
            return cls(text=text, kind=kind, sha256=text.lower())
        raise NotFoundError(f"{text} is neither a file nor the sha256 of a {kind.value} on the "
                            "board", hint=f"check the path, or list the board's {kind.value}s "
                                          f"with `edgetune {kind.value}s list`")


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


def session_from_args(args: argparse.Namespace) -> SessionOptions:
    check_count("--threads", args.threads, minimum=0)
    check_count("--inter-threads", args.inter_threads, minimum=0)
    shapes = dict(parse_shape(s) for s in args.shape or ())
    return SessionOptions(
        providers=parse_list(args.providers), intra_op_threads=args.threads or 0,
        inter_op_threads=args.inter_threads or 0, graph_optimization=args.graph_opt,
        execution_mode=args.execution_mode, input_shapes=tuple(sorted(shapes.items())))


def bench_settings(args: argparse.Namespace) -> JobSettings:
    check_count("--iterations", args.iterations)
    check_count("--warmup", args.warmup, minimum=0)
    check_count("--seed", args.seed, minimum=0, maximum=2 ** 64 - 1)
    if args.duration is not None and not 0 < args.duration <= 24 * 3600:
        raise UsageError(f"--duration must be between 0 and 86400 seconds (got {args.duration})")
    iterations = 0 if args.duration is not None else (args.iterations or 100)
    template = BenchmarkSpec(
        model_sha256="", session=session_from_args(args),
        warmup=10 if args.warmup is None else args.warmup, iterations=iterations,
        min_duration_s=args.duration or 0.0, seed=args.seed or 0, return_samples=args.samples)
    dataset = BlobRef.parse(args.dataset, BlobKind.DATASET) if args.dataset else None
    return JobSettings(kind="benchmark", template=template, dataset=dataset,
                       models=tuple(BlobRef.parse(m, BlobKind.MODEL) for m in args.models),
                       samples=args.samples, label=args.label or "", json=args.json)


def eval_settings(args: argparse.Namespace) -> JobSettings:
    check_count("--batch", args.batch)
    metrics = parse_list(args.metric)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise UsageError(f"--metric {','.join(unknown)}: unknown (choose from {', '.join(METRICS)})")
    template = EvaluateSpec(model_sha256="", dataset_sha256="", session=session_from_args(args),
                            metrics=metrics, batch_size=args.batch or 1)
    return JobSettings(kind="evaluate", template=template,
                       dataset=BlobRef.parse(args.dataset, BlobKind.DATASET),
                       models=tuple(BlobRef.parse(m, BlobKind.MODEL) for m in args.models),
                       label=args.label or "", json=args.json)


# ---------------------------------------------------------------------- shared steps

def resolve_blob(client: Any, ref: BlobRef, view: Any) -> str:
    """The full sha256 of ``ref`` on the board: uploads a local file (dedup and resume are the
    client's), expands a hash prefix."""
    if ref.path is not None:
        return upload_file(client, ref.path, ref.kind, view).blob.sha256
    if len(ref.sha256) == 64:
        return ref.sha256
    matches = [b.sha256 for b in client.list_blobs(ref.kind) if b.sha256.startswith(ref.sha256)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise NotFoundError(f"no {ref.kind.value} on the board starts with {ref.sha256}",
                            hint=f"list them with `edgetune {ref.kind.value}s list`")
    raise UsageError(f"{ref.sha256} matches {len(matches)} {ref.kind.value}s on the board; "
                     "give more digits")


RESUME_HINT = "run the same command again to resume from the bytes the board kept"


def upload_file(client: Any, path: Path, kind: BlobKind, view: Any,
                name: Optional[str] = None) -> Any:
    """``client.upload`` with progress; after Ctrl-C, says how to resume (and re-raises)."""
    try:
        outcome = client.upload(path, kind, name=name,
                                progress=view.upload_callback(path.name, path.stat().st_size))
    except KeyboardInterrupt:
        view.__exit__(None, None, None)
        print(f"\nedgetune: upload of {path} interrupted; {RESUME_HINT}", file=sys.stderr)
        raise
    view.upload_done(path.name, outcome)
    return outcome


def _label(ref: BlobRef, sha256: str) -> str:
    """How progress lines and job listings name a model: its file name, else its short hash."""
    return ref.path.name if ref.path is not None else sha256[:12]


def wait_jobs(client: Any, jobs: Sequence[Tuple[str, str]], view: Any,
              states: Optional[Dict[str, str]] = None) -> Optional[List[Any]]:
    """Wait for each (job id, label) in turn; None after Ctrl-C, once the user was told where
    the jobs stand on the board (running or queued) and how to re-attach. ``states``: the
    jobs' states when submitted (job id -> "queued"/"running"), updated from their events."""
    done: List[Any] = []
    states = dict(states or {})
    try:
        for job_id, label in jobs:
            show = view.job_callback(label)

            def on_event(event: Any, show: Any = show) -> None:
                states[event.job_id] = event.state.value
                show(event)

            done.append(client.wait(job_id, on_event))
    except KeyboardInterrupt:
        view.__exit__(None, None, None)
        pending = [job_id for job_id, _ in jobs[len(done):]]
        print(f"\nedgetune: interrupted; {_where_jobs_stand(pending, states)}. Re-attach with "
              f"`edgetune jobs watch {pending[0]}` (or cancel it with "
              f"`edgetune jobs cancel {pending[0]}`)", file=sys.stderr)
        return None
    return done


def _where_jobs_stand(pending: Sequence[str], states: Dict[str, str]) -> str:
    """"job X keeps running on the board; job Y stays queued on the board (...)" from the last
    known states (a job not seen yet behind the one being watched waits in the queue)."""
    known = {j: states.get(j, "" if i == 0 else "queued") for i, j in enumerate(pending)}
    groups = (([j for j in pending if known[j] == "running"], "keep{s} running on the board"),
              ([j for j in pending if known[j] not in ("running", "queued")],
               "{are} still on the board"),
              ([j for j in pending if known[j] == "queued"],
               "stay{s} queued on the board ({they} when {their} turn comes)"))
    parts = []
    for ids, text in groups:
        if ids:
            many = len(ids) > 1
            parts.append(f"job{'s' if many else ''} {', '.join(ids)} " + text.format(
                s="" if many else "s", are="are" if many else "is",
                they="they run" if many else "it runs", their="their" if many else "its"))
    return "; ".join(parts)


def print_results(kind: str, records: List[Dict[str, Any]], as_json: bool) -> int:
    from host import render

    failed = [r for r in records if "error" in r]
    if as_json:
        render.print_json({"results": records})
    else:
        console = render.stdout_console()
        console.print(render.bench_table(records, console.width) if kind == "benchmark"
                      else render.eval_table(records))
        for r in failed:
            print(f"edgetune: job {r['job_id']} ({r['model']}) {r['state']}: {r['error']}",
                  file=sys.stderr)
        for r in records:
            if r.get("note"):
                print(f"edgetune: warning: {r['model']}: {r['note']}", file=sys.stderr)
    return int(ExitStatus.AGENT) if failed else 0


def run_jobs(args: argparse.Namespace, settings: JobSettings) -> int:
    """Upload what is local, submit one job per model, wait for them, print the results."""
    from host import render

    target = resolve_target(args)
    with open_client(args, target) as client, render.ProgressView.auto(quiet=settings.json) as view:
        dataset_sha = resolve_blob(client, settings.dataset, view) if settings.dataset else ""
        shas = [resolve_blob(client, ref, view) for ref in settings.models]
        submitted: List[Tuple[str, str]] = []
        states: Dict[str, str] = {}
        try:
            for ref, sha in zip(settings.models, shas):
                spec = _spec(settings.template, sha, dataset_sha)
                job, _ = client.submit(spec, label=settings.label or _label(ref, sha))
                submitted.append((job.id, _label(ref, sha)))
                states[job.id] = job.state.value
        except BaseException:
            for job_id, _ in submitted:   # the command failed as a whole: do not leave them
                try:
                    client.cancel_job(job_id)
                except Exception:  # noqa: BLE001 - best effort
                    pass
            raise
        jobs = wait_jobs(client, submitted, view, states)
        if jobs is None:
            return int(ExitStatus.INTERRUPTED)
    records = [render.job_record(job, ref.text, target.device, samples=settings.samples)
               for job, ref in zip(jobs, settings.models)]
    for record in records:
        note = duration_note(settings.template, record)
        if note:
            record["note"] = note
    return print_results(settings.kind, records, settings.json)


def duration_note(spec: Any, record: Dict[str, Any]) -> str:
    """What to tell the user when a ``--duration`` run ended early: the board also stops it
    at its max_iterations limit (the only reason a successful run measures less time)."""
    wanted = getattr(spec, "min_duration_s", 0.0)
    measured = record.get("measured_s")
    if not wanted or measured is None or measured >= wanted:
        return ""
    return (f"stopped after {record.get('iterations')} iterations at {measured:.1f} s of the "
            f"{wanted:g} s asked: the agent's max_iterations limit ([limits] max_iterations "
            "in its agent.toml); raise it to measure longer")


def _spec(template: Any, model_sha: str, dataset_sha: str) -> Any:
    return dataclasses.replace(template, model_sha256=model_sha, dataset_sha256=dataset_sha)


# ---------------------------------------------------------------------- commands

def cmd_bench(args: argparse.Namespace) -> int:
    return run_jobs(args, bench_settings(args))


def cmd_eval(args: argparse.Namespace) -> int:
    return run_jobs(args, eval_settings(args))


def cmd_info(args: argparse.Namespace) -> int:
    from host import render

    target = resolve_target(args)
    with open_client(args, target) as client:
        info = client.info()
    doc = {"device": target.device, "address": target.address, **info.as_dict()}
    if args.json:
        render.print_json(doc)
    else:
        render.stdout_console().print(render.info_table(doc))
    return 0


def cmd_blobs(args: argparse.Namespace) -> int:
    from host import render

    kind = BlobKind(args.blob_kind)
    action = args.blob_action
    if action == "upload":
        files = [BlobRef.parse(f, kind) for f in args.files]
        if any(ref.path is None for ref in files):
            bad = next(ref.text for ref in files if ref.path is None)
            raise NotFoundError(f"{bad} is not a file")
    elif action == "rm":
        refs = [BlobRef(text=s, kind=kind, sha256=s.lower()) for s in args.shas]
        for ref in refs:
            if not HEX.match(ref.sha256):
                raise UsageError(f"{ref.text} is not a sha256 (or a prefix of 6+ hex digits)")
    target = resolve_target(args)
    with open_client(args, target) as client:
        if action == "list":
            blobs = client.list_blobs(kind)
            if args.json:
                render.print_json({f"{kind.value}s": [b.as_dict() for b in blobs]})
            else:
                render.stdout_console().print(render.blobs_table(kind.value, blobs))
            return 0
        if action == "upload":
            uploads = []
            with render.ProgressView.auto(quiet=args.json) as view:
                for ref in files:
                    name = args.name if args.name and len(files) == 1 else None
                    assert ref.path is not None
                    outcome = upload_file(client, ref.path, kind, view, name=name)
                    entry = {"file": ref.text, **outcome.blob.as_dict(),
                             "sent_bytes": outcome.sent_bytes,
                             "already_present": outcome.already_present,
                             "resumed_from": outcome.resumed_from}
                    if name is not None and outcome.already_present \
                            and outcome.blob.name != name:
                        entry["note"] = (f"already stored on the board as "
                                         f"{outcome.blob.name or '(no name)'!r}; the name "
                                         f"{name!r} was not applied (the stored name stays)")
                    uploads.append(entry)
            if args.json:
                render.print_json({"uploads": uploads})
            else:
                for u in uploads:
                    print(f"{u['sha256']}  {u['file']}")
                    if u.get("note"):
                        print(f"edgetune: note: {u['file']}: {u['note']}", file=sys.stderr)
            return 0
        deleted = []
        with render.ProgressView("off") as view:
            for ref in refs:
                sha = resolve_blob(client, ref, view)
                client.delete_blob(kind, sha)
                deleted.append(sha)
    if args.json:
        render.print_json({"deleted": deleted})
    else:
        for sha in deleted:
            print(f"deleted {kind.value} {sha}")
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    from host import render

    action = args.jobs_action
    if action == "list":
        check_count("--limit", args.limit, minimum=0)
    target = resolve_target(args)
    with open_client(args, target) as client:
        if action == "list":
            jobs = client.list_jobs(args.limit or 0)
            if args.json:
                render.print_json({"jobs": [j.as_dict() for j in jobs]})
            else:
                render.stdout_console().print(render.jobs_table(jobs))
            return 0
        if action == "cancel":
            job = client.cancel_job(args.job_id)
            if args.json:
                render.print_json({"job": job.as_dict()})
            else:
                print(f"job {job.id}: {job.state.value}")
            return 0
        if action == "show":
            job = client.get_job(args.job_id)
        else:
            with render.ProgressView.auto(quiet=args.json) as view:
                waited = wait_jobs(client, [(args.job_id, args.job_id)], view)
            if waited is None:
                return int(ExitStatus.INTERRUPTED)
            job = waited[0]
    if action == "show" and args.json:
        render.print_json({"job": job.as_dict()})
        return 0
    if not job.state.finished:
        print(f"job {job.id}: {job.state.value}")
        return 0
    record = render.job_record(job, job.label or job.spec.model_sha256[:12], target.device,
                               samples=bool(getattr(job.spec, "return_samples", False)))
    note = duration_note(job.spec, record)
    if note:
        record["note"] = note
    return print_results(job.kind, [record], args.json)


# ---------------------------------------------------------------------- parsers

def _session_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("onnxruntime session")
    g.add_argument("--threads", type=int, metavar="N", help="intra-op threads (0: default)")
    g.add_argument("--inter-threads", type=int, metavar="N", help="inter-op threads (0: default)")
    g.add_argument("--providers", metavar="P,...",
                   help="execution providers in order of preference (default: CPU)")
    g.add_argument("--graph-opt", choices=GRAPH_OPT_LEVELS, default="all",
                   help="graph optimisation level (default: all)")
    g.add_argument("--execution-mode", choices=EXECUTION_MODES, default="sequential")
    g.add_argument("--shape", action="append", metavar="NAME=1x3x224x224",
                   help="fix an input's dynamic dimensions (repeatable)")
    g.add_argument("--label", help="a note shown in `edgetune jobs list` (default: the file name)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="what a board is: OS, CPU, memory, runtimes, store, queue")
    add_connection_flags(p)
    add_json_flag(p)
    p.set_defaults(func=cmd_info)

    for kind in BlobKind:
        group = sub.add_parser(f"{kind.value}s", help=f"list, upload or remove {kind.value}s "
                                                      "stored on a board")
        actions = group.add_subparsers(dest="blob_action", metavar="ACTION", required=True)
        p = actions.add_parser("list", help=f"the {kind.value}s on the board")
        p.set_defaults(blob_kind=kind.value)
        a = actions.add_parser("upload", help="send files (skipped when stored, resumed when partial)")
        a.add_argument("files", nargs="+", metavar="FILE")
        a.add_argument("--name", help="a label for the board's listing (default: the file name)")
        r = actions.add_parser("rm", help=f"delete {kind.value}s by sha256 (or a unique prefix)")
        r.add_argument("shas", nargs="+", metavar="SHA")
        for each in (p, a, r):
            each.set_defaults(func=cmd_blobs, blob_kind=kind.value)
            add_connection_flags(each)
            add_json_flag(each)

    jobs = sub.add_parser("jobs", help="list, show, watch or cancel jobs on a board")
    actions = jobs.add_subparsers(dest="jobs_action", metavar="ACTION", required=True)
    p = actions.add_parser("list", help="recent jobs, newest first")
    p.add_argument("--limit", type=int, metavar="N", help="at most N jobs (default 50)")
    parsers = [p]
    for name, text in (("show", "a job's state and result"),
                       ("watch", "follow a job (again) until it ends and print its result"),
                       ("cancel", "cancel a queued or running job")):
        q = actions.add_parser(name, help=text)
        q.add_argument("job_id", metavar="ID")
        parsers.append(q)
    for q in parsers:
        q.set_defaults(func=cmd_jobs)
        add_connection_flags(q)
        add_json_flag(q)

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
    _session_flags(b)
    add_connection_flags(b)
    add_json_flag(b)
    b.set_defaults(func=cmd_bench)

    e = sub.add_parser("eval", help="measure accuracy and fidelity of models on a board")
    e.add_argument("models", nargs="+", metavar="MODEL", help="a local .onnx file or a sha256")
    e.add_argument("--dataset", required=True, metavar="D.npz",
                   help="inputs keyed by input name, optional labels and reference outputs")
    e.add_argument("--metric", metavar="M,...", help=f"of {', '.join(METRICS)} (default: all "
                                                     "the dataset allows)")
    e.add_argument("--batch", type=int, metavar="N", help="samples per run (default 1)")
    _session_flags(e)
    add_connection_flags(e)
    add_json_flag(e)
    e.set_defaults(func=cmd_eval)
