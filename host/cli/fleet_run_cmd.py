"""``edgetune fleet bench|eval|runs|show``: fleet runs, and reading them back.

    edgetune fleet bench MODEL... --devices SEL [bench flags] [--label T] [--json]
    edgetune fleet eval MODEL... --dataset NPZ --devices SEL [eval flags] [--json]
    edgetune fleet bench MODEL... --resume RUN      # only the rows missing or failed
    edgetune fleet runs [--json]
    edgetune fleet show RUN [--json]

The job flags are ``bench``'s and ``eval``'s (the same flags make the same job); the fleet's
own: --retries, --parallel, --upload-parallel, --reattach-window, --queue-wait. Exit 0 when
every row succeeded, 11 when some failed, 12 when none succeeded, 130 on Ctrl-C (the jobs stay
on the boards; --resume re-attaches them).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any, List, Optional, Sequence, Tuple

from edgetune.host.cli.common import add_identity_flags, add_json_flag, add_record_flags, check_count
from edgetune.host.errors import ExitStatus, UsageError

LEASE_TTL_S = 60.0          # each board's lease during a fleet bench, renewed every 20 s
SELECTOR_HELP = "which boards (a selector: all, names, globs, tag:T, KEY=VALUE; see `edgetune fleet --help`)"


# ---------------------------------------------------------------------- settings

def fleet_settings(args: argparse.Namespace) -> Any:
    from edgetune.host.fleet.policy import FleetSettings

    check_count("--retries", args.retries, minimum=0, maximum=20)
    check_count("--parallel", args.parallel, maximum=1024)
    check_count("--upload-parallel", args.upload_parallel, maximum=256)
    for flag, value in (("--timeout", args.timeout), ("--reattach-window", args.reattach_window),
                        ("--queue-wait", args.queue_wait)):
        if not 0 < value < 1e7:
            raise UsageError(f"{flag} must be a positive number of seconds (got {value:g})")
    lease = 0.0 if getattr(args, "no_lease", True) else LEASE_TTL_S
    return FleetSettings(retries=args.retries, parallel=args.parallel, lease_ttl_s=lease,
                         strict=args.strict,
                         upload_parallel=args.upload_parallel, timeout_s=args.timeout,
                         connect_timeout_s=min(10.0, args.timeout / 2),
                         reattach_window_s=args.reattach_window,
                         queue_wait_s=args.queue_wait)


def choose_devices(args: argparse.Namespace, inventory: Any, identity: Any,
                   skip: Any) -> Tuple[List[Any], List[Tuple[Any, str]]]:
    """The boards ``--devices`` selects (asking the boards when it names what they report),
    and those left out with the reason (quarantined)."""
    from edgetune.host.fleet.selectors import Selector, select

    selector = Selector.parse(args.devices)
    if not selector.reported_keys(inventory):
        return select(inventory, selector, skip=skip)
    from edgetune.host.fleet.status import fleet_status

    statuses = fleet_status(list(inventory.devices), identity, min(3.0, args.timeout))
    return select(inventory, selector, {s.name: s.reported() for s in statuses}, skip=skip)


# ---------------------------------------------------------------------- running

def cmd_bench(args: argparse.Namespace) -> int:
    from edgetune.host.cli.agent_cmds import bench_settings
    return run_fleet(args, bench_settings(args))


def cmd_eval(args: argparse.Namespace) -> int:
    from edgetune.host.cli.agent_cmds import eval_settings
    return run_fleet(args, eval_settings(args))


def run_fleet(args: argparse.Namespace, job_settings: Any) -> int:
    from edgetune.host.client import check_own_certificate
    from edgetune.host.fleet.runspec import KINDS, spec_from_settings
    from edgetune.host.results.location import recording
    from edgetune.host.target import load_identity_files, resolve_fleet

    settings = fleet_settings(args)
    if args.resume is None and args.devices is None:
        raise UsageError("which boards? pass --devices SEL (e.g. --devices all, "
                         "--devices tag:lab2)", hint="or --resume RUN to complete a past run")
    if args.resume is not None and args.no_record:
        raise UsageError("--resume reads the run from the results database: drop --no-record")
    inventory, files = resolve_fleet(args)
    # The results database opens on its own thread (recording) while the key is decrypted
    # and the files are hashed.
    with recording(args, label=job_settings.label, kind=KINDS[job_settings.kind]) as recorder:
        identity = load_identity_files(files)       # the key is decrypted once, for every board
        check_own_certificate(identity.cert_pem, identity.common_name, 30)
        spec = spec_from_settings(job_settings)     # every local file hashed once, here
        store = recorder.store if recorder is not None else None
        book, quarantine = _books(store)
        skip = quarantine.skip() if quarantine is not None else (lambda d: None)
        if args.resume is not None:
            run_id, devices, before, skipped = _resumed(args, spec, book, inventory, identity,
                                                        skip)
            label = book.get(run_id).label          # the run's label, given again or not
            spec = dataclasses.replace(spec, label=label)
            if recorder is not None:
                recorder.label = label
        else:
            from ulid import ULID

            from edgetune.host.results.recording import host_doc

            devices, skipped = choose_devices(args, inventory, identity, skip)
            run_id, before = str(ULID()), []
            if book is not None:
                book.create(run_id, spec, args.devices, [d.name for d in devices], host_doc())
        if recorder is not None:
            recorder.run_id = run_id
        _announce(skipped)
        rows = _execute(args, run_id, spec, devices, identity, settings, book, recorder,
                        quarantine, before)
        if rows is None:
            return int(ExitStatus.INTERRUPTED)
        if book is not None:
            rows = stored_rows(book, store, run_id)
    return _report(args, run_id, rows, skipped)


def _books(store: Any) -> Tuple[Any, Any]:
    if store is None:
        return None, None
    from edgetune.host.fleet.quarantine import QuarantineBook
    from edgetune.host.fleet.runbook import RunBook

    return RunBook(store), QuarantineBook.open(store)


def _resumed(args: argparse.Namespace, spec: Any, book: Any, inventory: Any, identity: Any,
             skip: Any) -> Tuple[str, List[Any], List[Any], List[Tuple[Any, str]]]:
    """The run ``--resume`` names, checked against this command: (its id, the boards to work
    on, its rows so far, the boards left out)."""
    from edgetune.host.errors import NotFoundError

    info = book.get(args.resume)
    difference = spec.difference(info.spec, info.id)
    if difference:
        raise UsageError(f"cannot resume: {difference}",
                         hint=f"run the same models with the same options as run {info.id} "
                              "(see `edgetune fleet show " + info.id + "`), or start a new run")
    devices = []
    for name in info.devices:
        try:
            devices.append(inventory.device(name))
        except NotFoundError:
            raise NotFoundError(f"board {name} of run {info.id} is no longer in {inventory.path}",
                                hint="add it back (edgetune fleet add), or start a new run") \
                from None
    skipped: List[Tuple[Any, str]] = []
    if args.devices is not None:
        chosen, skipped = choose_devices(args, inventory, identity, skip)
        outside = [d.name for d in chosen if d.name not in info.devices]
        if outside:
            raise UsageError(f"cannot resume: {', '.join(outside)} "
                             f"{'was' if len(outside) == 1 else 'were'} not part of run "
                             f"{info.id} (its boards: {', '.join(info.devices)})")
        names = {d.name for d in chosen}
        devices = [d for d in devices if d.name in names]
    else:
        kept = []
        for device in devices:
            why = skip(device)
            if why:
                skipped.append((device, why))
            else:
                kept.append(device)
        devices = kept
    return info.id, devices, book.rows(info.id), skipped


def _announce(skipped: Sequence[Tuple[Any, str]]) -> None:
    for _device, why in skipped:
        print(f"edgetune: {why}", file=sys.stderr)


def _execute(args: argparse.Namespace, run_id: str, spec: Any, devices: List[Any],
             identity: Any, settings: Any, book: Any, recorder: Any, quarantine: Any,
             before: List[Any]) -> Optional[List[Any]]:
    from edgetune.host.fleet import progress as progress_views
    from edgetune.host.fleet.run import FleetRun

    run = FleetRun(run_id, spec, devices, identity, settings, book=book, recorder=recorder,
                   quarantine=quarantine, rows=before,
                   progress=progress_views.auto([d.name for d in devices], as_json=args.json))
    try:
        with run.progress:
            return run.execute()
    except KeyboardInterrupt:
        on_board = [r for r in run.results() if r.state == "interrupted"]
        where = (f"; {len(on_board)} job(s) stay on their boards" if on_board else "")
        resume = (f"; complete it with `edgetune fleet {spec.record_kind} ... --resume {run_id}`"
                  if book is not None else "")
        print(f"\nedgetune: fleet run {run_id} interrupted{where}{resume}", file=sys.stderr)
        return None


def stored_rows(book: Any, store: Any, run_id: str) -> List[Any]:
    """The run's rows as kept in the results database, with their records' numbers."""
    from edgetune.host.fleet.summary import RowResult, record_values
    from edgetune.host.results.store import ResultFilter

    records = {r.id: r for r in store.list(ResultFilter(run_id=run_id), limit=None)}
    out = []
    for row in book.rows(run_id):
        record = records.get(row.result_id) if row.result_id else None
        latency, metrics, kind = record_values(record) if record is not None else (None, None,
                                                                                   None)
        out.append(RowResult(device=row.device, model=row.model_name, sha256=row.model_sha256,
                             state=row.state, job_id=row.job_id, result_id=row.result_id,
                             latency_ms=latency, metrics=metrics, error=row.error, kind=kind))
    return out


def _report(args: argparse.Namespace, run_id: str, rows: List[Any],
            skipped: Sequence[Tuple[Any, str]] = ()) -> int:
    from edgetune.host import render
    from edgetune.host.fleet.summary import (document, exit_status, rows_table, summarize,
                                             summary_table)

    if args.json:
        doc = document(run_id, rows)
        doc["skipped"] = [{"device": d.name, "reason": why} for d, why in skipped]
        render.print_json(doc)
    else:
        console = render.stdout_console()
        console.print(rows_table(f"fleet run {run_id}", rows))
        summary = summarize(rows)
        if summary:
            console.print(summary_table(summary))
        failed = [r for r in rows if not r.ok]
        if failed:
            print(f"edgetune: {len(failed)} of {len(rows)} rows did not succeed; re-run them "
                  f"with the same command and --resume {run_id}", file=sys.stderr)
    return exit_status(rows)


# ---------------------------------------------------------------------- reading back

def cmd_runs(args: argparse.Namespace) -> int:
    from edgetune.host import render
    from edgetune.host.fleet.runbook import RunBook
    from edgetune.host.results.location import open_results_store

    check_count("--limit", args.limit)
    with open_results_store(args.db, args.inventory) as store:
        book = RunBook(store)
        runs = book.runs(args.limit)
        counts = book.counts([r.id for r in runs])
    if args.json:
        render.print_json({"runs": [{**r.as_json(), "rows": counts[r.id]} for r in runs]})
        return 0
    rows = []
    for r in runs:
        c = counts[r.id]
        other = sum(n for state, n in c.items() if state not in ("done", "failed"))
        rows.append((r.id, f"{r.created:%Y-%m-%d %H:%M}", r.kind, r.label or "-",
                     str(len(r.devices)), ", ".join(str(m) for m in r.as_json()["models"]),
                     str(c.get("done", 0)), str(c.get("failed", 0)), str(other)))
    render.stdout_console().print(render.plain_table(
        "fleet runs", ("run", "created", "kind", "label", "boards", "models", "done", "failed",
                       "other"), rows, right=("boards", "done", "failed", "other")))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from edgetune.host import render
    from edgetune.host.fleet.runbook import RunBook
    from edgetune.host.results.location import open_results_store

    with open_results_store(args.db, args.inventory) as store:
        book = RunBook(store)
        info = book.get(args.run)
        rows = stored_rows(book, store, info.id)
    if args.json:
        from edgetune.host.fleet.summary import document
        render.print_json({**document(info.id, rows), **{k: v for k, v in info.as_json().items()
                                                         if k != "run"}})
        return 0
    print(f"fleet run {info.id}: {info.kind} on {len(info.devices)} board(s), "
          f"{info.created:%Y-%m-%d %H:%M:%S} UTC" + (f", label {info.label}" if info.label else ""))
    _report(argparse.Namespace(json=False), info.id, rows)
    return 0


# ---------------------------------------------------------------------- parsers

def _run_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("the fleet")
    g.add_argument("--devices", metavar="SEL", help=SELECTOR_HELP)
    g.add_argument("--resume", metavar="RUN", help="complete a past run: re-run only its rows "
                   "that are missing or failed, re-attaching jobs still on their boards (the "
                   "same models and options, or it is refused)")
    g.add_argument("--retries", type=int, default=2, metavar="N",
                   help="retries of a board after a transient failure (unreachable, lost, "
                        "timed out, its agent restarted), waiting 1, 2, 4... s (default 2)")
    g.add_argument("--parallel", type=int, default=128, metavar="N",
                   help="boards worked on at once (default 128)")
    g.add_argument("--upload-parallel", type=int, default=8, metavar="N",
                   help="uploads in flight at once across the fleet (default 8)")
    g.add_argument("--timeout", type=float, default=30.0, metavar="S",
                   help="deadline of each call to a board (default 30)")
    g.add_argument("--reattach-window", type=float, default=60.0, metavar="S",
                   help="how long a board that drops a running job's watch is waited for "
                        "before its row fails as lost mid-run (default 60)")
    g.add_argument("--queue-wait", type=float, default=600.0, metavar="S",
                   help="a board whose job queue is full: while jobs of this run wait there, "
                        "the next is submitted when one ends; when other hosts' jobs fill it, "
                        "it is tried again for S seconds before its rows fail (default 600)")
    g.add_argument("--strict", action="store_true",
                   help="refuse a board whose certificate names another board than its "
                        "inventory name (default: a warning)")
    add_identity_flags(p.add_argument_group("this PC's certificate"))
    add_record_flags(p)
    add_json_flag(p)


def register(actions: argparse._SubParsersAction) -> None:
    from edgetune.host.cli.agent_cmds import _session_flags as session_flags
    from edgetune.host.cli.agent_cmds import add_thermal_flags

    b = actions.add_parser("bench", help="time models on many boards at once: one row per "
                                         "board x model, a summary per board kind",
                           description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("models", nargs="+", metavar="MODEL",
                   help="a local .onnx file (hashed once, uploaded where missing) or the full "
                        "sha256 of a model on the boards")
    count = b.add_mutually_exclusive_group()
    count.add_argument("--iterations", type=int, metavar="N", help="timed runs (default 100)")
    count.add_argument("--duration", type=float, metavar="S", help="time runs for S seconds")
    b.add_argument("--warmup", type=int, metavar="N", help="untimed runs first (default 10)")
    b.add_argument("--seed", type=int, metavar="N", help="seed of the random inputs (default 0)")
    b.add_argument("--dataset", metavar="D.npz", help="take inputs from a dataset")
    b.add_argument("--samples", action="store_true", help="also keep every timing")
    b.add_argument("--no-lease", action="store_true",
                   help="do not lease the boards while measuring (by default each board is "
                        "leased to this PC for the run, so other hosts' jobs wait; without, "
                        "they may run between ours and the numbers are less trustworthy)")
    add_thermal_flags(b)
    session_flags(b)
    _run_flags(b)
    b.set_defaults(func=cmd_bench)

    e = actions.add_parser("eval", help="measure accuracy and fidelity of models on many "
                                        "boards at once", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("models", nargs="+", metavar="MODEL", help="a local .onnx file or a sha256")
    e.add_argument("--dataset", required=True, metavar="D.npz",
                   help="inputs keyed by input name, optional labels and reference outputs")
    e.add_argument("--metric", metavar="M,...", help="of top1, top5, fidelity, miou (default: "
                                                     "all the dataset allows)")
    e.add_argument("--batch", type=int, metavar="N", help="samples per run (default 1)")
    e.set_defaults(no_lease=True)       # accuracy does not suffer from a shared board
    session_flags(e)
    _run_flags(e)
    e.set_defaults(func=cmd_eval)

    p = actions.add_parser("runs", help="past fleet runs, from the results database")
    p.add_argument("--limit", type=int, default=50, metavar="N", help="at most N runs (default 50)")
    _db_flags(p)
    add_json_flag(p)
    p.set_defaults(func=cmd_runs)

    p = actions.add_parser("show", help="one past fleet run: its rows and summary")
    p.add_argument("run", metavar="RUN", help="a fleet run id or any unique prefix of it")
    _db_flags(p)
    add_json_flag(p)
    p.set_defaults(func=cmd_show)


def _db_flags(p: argparse.ArgumentParser) -> None:
    from pathlib import Path

    from edgetune.host.cli.common import DB_HELP

    g = p.add_argument_group("results database")
    g.add_argument("--db", metavar="URL", help=DB_HELP)
    g.add_argument("--inventory", metavar="FILE", type=Path,
                   help="the edgetune.toml whose results database to use")
