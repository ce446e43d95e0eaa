"""``edgetune jobs``: list, show, watch or cancel the jobs on a board; and the waiting, Ctrl-C
messages and result printing that ``bench`` and ``eval`` share with it.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from edgetune.host.cli.common import (add_connection_flags, add_json_flag, check_count, open_client,
                             resolve_target)
from edgetune.host.errors import ExitStatus


def job_name(job: Any) -> str:
    """How progress lines and results name a job: its label, else its model's short hash."""
    return job.label or job.spec.model_sha256[:12]


def wait_jobs(client: Any, jobs: Sequence[Tuple[str, str]], view: Any,
              states: Optional[Dict[str, str]] = None) -> Optional[List[Any]]:
    """Wait for each (job id, label) in turn; None after Ctrl-C, once the user was told where
    the jobs stand on the board (running or queued) and how to re-attach. A label "" names
    the job as the board knows it (``job_name``, from the job its first event carries).
    ``states``: the jobs' states when submitted (job id -> "queued"/"running"), updated
    from their events."""
    done: List[Any] = []
    states = dict(states or {})
    try:
        for job_id, label in jobs:
            shows: List[Any] = []               # the progress callback, made at the 1st event

            def on_event(event: Any, label: str = label, shows: List[Any] = shows) -> None:
                states[event.job_id] = event.state.value
                if not shows:
                    name = label or (job_name(event.job) if event.job is not None
                                     else event.job_id)
                    shows.append(view.job_callback(name))
                shows[0](event)

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
    from edgetune.host import render

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


def cmd_jobs(args: argparse.Namespace) -> int:
    from edgetune.host import render

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
                waited = wait_jobs(client, [(args.job_id, "")], view)
            if waited is None:
                return int(ExitStatus.INTERRUPTED)
            job = waited[0]
    if action == "show" and args.json:
        render.print_json({"job": job.as_dict()})
        return 0
    if not job.state.finished:
        print(f"job {job.id}: {job.state.value}")
        return 0
    record = render.job_record(job, job_name(job), target.device,
                               samples=bool(getattr(job.spec, "return_samples", False)))
    note = duration_note(job.spec, record)
    if note:
        record["note"] = note
    return print_results(job.kind, [record], args.json)


def register(sub: argparse._SubParsersAction) -> None:
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
