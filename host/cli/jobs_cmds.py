"""``edgetune jobs``: list, show, watch or cancel the jobs on a board (waiting and results
are ``edgetune.host.board``'s, printing ``edgetune.host.render``'s).
"""

from __future__ import annotations

import argparse
import contextlib

from edgetune.host.cli.common import (add_connection_flags, add_json_flag, add_record_flags,
                                      check_count)
from edgetune.host.errors import ExitStatus
from edgetune.host.results.location import recording
from edgetune.host.target import open_session, resolve_target


def cmd_jobs(args: argparse.Namespace) -> int:
    from edgetune.host import render
    from edgetune.host.board import job_name

    action = args.jobs_action
    if action == "list":
        check_count("--limit", args.limit, minimum=0)
    target = resolve_target(args)
    # A job watched to its end is a measurement like bench's own (recorded once per job).
    keep = recording(args) if action == "watch" else contextlib.nullcontext(None)
    with keep as recorder, open_session(args, target, recorder=recorder) as board:
        if action == "list":
            jobs = board.list_jobs(args.limit or 0)
            if args.json:
                render.print_json({"jobs": [j.as_dict() for j in jobs]})
            else:
                render.stdout_console().print(render.jobs_table(jobs))
            return 0
        if action == "cancel":
            job = board.cancel(args.job_id)
            if args.json:
                render.print_json({"job": job.as_dict()})
            else:
                print(f"job {job.id}: {job.state.value}")
            return 0
        if action == "show":
            job = board.get_job(args.job_id)
        else:
            with render.ProgressView.auto(quiet=args.json) as view:
                waited = board.wait_all([(args.job_id, "")], view)
            if waited is None:
                return int(ExitStatus.INTERRUPTED)
            job = waited[0]
        if action == "show" and args.json:
            render.print_json({"job": job.as_dict()})
            return 0
        if not job.state.finished:
            print(f"job {job.id}: {job.state.value}")
            return 0
        run = board.result(job, job_name(job))
    if run.kind == "compare":
        from edgetune.host.cli.compare_output import print_comparison
        return print_comparison(run, recorder, args.json)
    failed = render.print_results(job.kind, [run], args.json,
                                  samples=bool(getattr(job.spec, "return_samples", False)),
                                  result_id=recorder.result_id if recorder else None)
    return int(ExitStatus.AGENT) if failed else 0


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
        if name == "watch":
            add_record_flags(q)
        parsers.append(q)
    for q in parsers:
        q.set_defaults(func=cmd_jobs)
        add_connection_flags(q)
        add_json_flag(q)
