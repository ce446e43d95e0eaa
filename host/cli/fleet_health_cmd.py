"""``edgetune fleet check`` and ``edgetune fleet release``: boards that are up but wrong, taken
out of rotation and brought back (registered by ``fleet_cmd``).

    edgetune fleet check [--devices SEL] [--tolerance X] [--max-spread R] [--max-temp C]
                         [--iterations N] [--strict] [--db URL] [--json]
    edgetune fleet release NAME [--db URL] [--json]

``fleet check`` runs a canary on every selected board at once (host/fleet/check.py says what
it is and what it demands): a board that fails is quarantined with the reason (fleet runs
skip it and say so); a quarantined board that passes is released. A board that could not be
checked (unreachable, refused) is left as it was. Exit 0 when every board passed.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from edgetune.host.cli.common import DB_HELP, add_identity_flags, add_json_flag
from edgetune.host.errors import EdgetuneError, ExitStatus, NotFoundError, UsageError
from edgetune.host.fleet.check import (CANARY_SAMPLES, ITERATIONS, MAX_SPREAD,
                                       MAX_TEMPERATURE_C, TOLERANCE)


def _exit_status(passed: int, total: int) -> int:
    """0 when every board passed; the fleet codes otherwise (11: some boards failed or could
    not be checked, 12: none passed)."""
    if passed == total:
        return 0
    return int(ExitStatus.NONE_SUCCEEDED if passed == 0 else ExitStatus.SOME_FAILED)


def _open_book(args: argparse.Namespace) -> Any:
    from edgetune.host.fleet.quarantine import QuarantineBook
    from edgetune.host.results.location import open_results_store

    store = open_results_store(getattr(args, "db", None), getattr(args, "inventory", None))
    return store, QuarantineBook.open(store)


def _settings(args: argparse.Namespace) -> Any:
    from edgetune.host.fleet.check import CheckSettings

    try:
        return CheckSettings(tolerance=args.tolerance, max_spread=args.max_spread,
                             max_temperature_c=args.max_temp, iterations=args.iterations,
                             strict=args.strict, timeout_s=args.timeout,
                             parallel=args.parallel)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _chosen(args: argparse.Namespace, inventory: Any, identity: Any) -> List[Any]:
    """The selected boards, quarantined ones included (the check is how they come back)."""
    from edgetune.host.fleet.selectors import Selector, select
    from edgetune.host.fleet.status import fleet_status

    selector = Selector.parse(args.devices)
    if not selector.reported_keys(inventory):
        return select(inventory, selector)[0]
    statuses = fleet_status(list(inventory.devices), identity, min(args.timeout, 5.0))
    return select(inventory, selector, {s.name: s.reported() for s in statuses})[0]


def cmd_check(args: argparse.Namespace) -> int:
    import tempfile

    from ulid import ULID

    from edgetune.host import render
    from edgetune.host.fleet.check import build_canary, check_fleet
    from edgetune.host.target import load_identity_files, resolve_fleet

    settings = _settings(args)
    inventory, files = resolve_fleet(args)
    identity = load_identity_files(files)
    devices = _chosen(args, inventory, identity)
    store, book = _open_book(args)           # before any board is asked: a bad --db stops here
    check_id = str(ULID())
    try:
        with tempfile.TemporaryDirectory(prefix="edgetune-check-") as tmp:
            canary = build_canary(Path(tmp))
            if not args.json and sys.stderr.isatty():
                print(f"edgetune: checking {len(devices)} boards (canary: {canary.samples} "
                      f"inputs, {settings.iterations} timed runs each)", file=sys.stderr)
            try:
                outcomes = check_fleet(devices, identity, canary, settings)
            except KeyboardInterrupt:
                print("edgetune: check interrupted: nothing was quarantined or released; canary "
                      "jobs already on a board finish there (see `edgetune jobs list "
                      "--device NAME`)", file=sys.stderr)
                raise
        rows = _apply(book, outcomes, check_id)
    finally:
        store.close()
    passed = sum(1 for o in outcomes if o.passed)
    if args.json:
        render.print_json({"check": check_id,
                           "canary": {"model": canary.model.name, "samples": canary.samples,
                                      "host_onnxruntime": canary.onnxruntime_version,
                                      "tolerance": settings.tolerance,
                                      "max_spread": settings.max_spread,
                                      "max_temperature_c": settings.max_temperature_c,
                                      "iterations": settings.iterations},
                           "devices": rows, "passed": passed, "total": len(outcomes)})
    else:
        render.stdout_console().print(check_table(rows))
        for row in rows:
            if row["cn_warning"] and row["state"] != "refused":
                print(f"edgetune: warning: {row['name']}: {row['cn_warning']}", file=sys.stderr)
            if row["quarantined"] is not None and row["state"] == "failed":
                print(f"edgetune: {row['name']} is quarantined: fleet runs skip it until "
                      f"`edgetune fleet release {row['name']}` or a passing check",
                      file=sys.stderr)
            if row["released"]:
                print(f"edgetune: {row['name']} passed and is released from quarantine",
                      file=sys.stderr)
        print(f"edgetune: {passed} of {len(outcomes)} boards passed the check ({check_id})",
              file=sys.stderr)
    return _exit_status(passed, len(outcomes))


def _apply(book: Any, outcomes: Sequence[Any], check_id: str) -> List[Dict[str, Any]]:
    """Quarantine the boards that failed, release those that passed; the rows to report."""
    rows = []
    for outcome in outcomes:
        row = outcome.as_json()
        entry, released = book.get(outcome.name), False
        if outcome.state == "failed":
            entry = book.quarantine(outcome.name, outcome.reason, "check", check_id)
        elif outcome.passed and entry is not None:
            released = book.release(outcome.name, by=f"check {check_id}") is not None
            entry = None
        row["quarantined"] = entry.as_json() if entry is not None else None
        row["released"] = released
        rows.append(row)
    return rows


def check_table(rows: Sequence[Dict[str, Any]]) -> Any:
    from rich.text import Text

    from edgetune.host.render import plain_table

    def number(value: Optional[float], fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    table_rows = []
    for row in rows:
        state = Text(row["state"], style="green" if row["state"] == "passed" else "red")
        since = row["quarantined"]["since"][:19].replace("T", " ") + "Z" \
            if row["quarantined"] else ""
        quarantine = "released" if row["released"] else f"since {since}" if since else "-"
        top1 = row["top1_agreement"]
        table_rows.append((row["name"], state, "-" if top1 is None else f"{top1:.0%}",
                           number(row["max_abs_error"], ".2g"), number(row["p50_ms"], ".3f"),
                           number(row["spread"], ".2f"), number(row["temperature_c"], ".0f"),
                           quarantine, row["reason"] or "-"))
    return plain_table("fleet check", ("board", "state", "top-1", "max err", "p50 ms",
                                       "p90/p50", "temp C", "quarantine", "reason"),
                       table_rows, right=("top-1", "max err", "p50 ms", "p90/p50", "temp C"))


def cmd_release(args: argparse.Namespace) -> int:
    from edgetune.host import render

    store, book = _open_book(args)
    try:
        entry = book.release(args.name, by="release")
        active = sorted(book.active())
    finally:
        store.close()
    if entry is None and not _in_inventory(args, args.name):
        raise NotFoundError(f"no board {args.name!r} is quarantined or in edgetune.toml",
                            hint="quarantined now: " + (", ".join(active) or "none"))
    if args.json:
        render.print_json({"device": args.name, "released": entry is not None,
                           "entry": entry.as_json() if entry is not None else None})
    elif entry is None:
        print(f"{args.name} is not quarantined")
    else:
        print(f"released {args.name} (quarantined since {entry.since_text}: {entry.reason})")
    return 0


def _in_inventory(args: argparse.Namespace, name: str) -> bool:
    from edgetune.host.inventory import find_config, load_inventory

    path = find_config(getattr(args, "inventory", None))
    return path is not None and any(d.name == name for d in load_inventory(path).devices)


# ---------------------------------------------------------------------- fleet status

def status_health(args: argparse.Namespace, statuses: List[Any]) -> List[Any]:
    """``fleet status``'s view of health: quarantined boards shown as ``quarantined`` with
    the reason (from the results database, when there is one), a board whose certificate
    names another board warned about, or ``refused`` under ``--strict``."""
    active = _quarantined_now(args)
    out = []
    for status in statuses:
        warning = status.cn_warning
        if warning and getattr(args, "strict", False):
            status = dataclasses.replace(status, state="refused",
                                         reason=f"{warning} (refused under --strict)")
        elif warning and not getattr(args, "json", False):
            print(f"edgetune: warning: {status.name}: {warning}", file=sys.stderr)
        entry = active.get(status.name)
        if entry is not None:
            now = "" if status.ok else f" (now {status.state}: {status.reason})"
            status = dataclasses.replace(status, state="quarantined",
                                         reason=entry.describe() + now)
        out.append(status)
    return out


def _quarantined_now(args: argparse.Namespace) -> Dict[str, Any]:
    """The active quarantine; {} when the results database is a SQLite file that does not
    exist yet (status does not create one), or cannot be opened (a warning says why)."""
    import os

    from edgetune.host.inventory import find_config, load_inventory
    from edgetune.host.results.location import DB_ENV, resolve_location, sqlite_file

    flag = getattr(args, "db", None)
    inventory_path = None if flag or os.environ.get(DB_ENV) else \
        find_config(getattr(args, "inventory", None))
    inventory_db = load_inventory(inventory_path).results_db if inventory_path else None
    url = resolve_location(flag, os.environ, inventory_path, inventory_db).url
    path = sqlite_file(url)             # no SQLAlchemy import when there is no database
    if path is not None and not path.exists():
        return {}
    try:
        store, book = _open_book(argparse.Namespace(db=url, inventory=None))
    except EdgetuneError as error:      # status still reports the boards
        print(f"edgetune: warning: quarantine not shown: {error.message}", file=sys.stderr)
        return {}
    try:
        return book.active()
    finally:
        store.close()


# ---------------------------------------------------------------------- parsers

def register(actions: argparse._SubParsersAction) -> None:
    """Add ``check`` and ``release`` to ``edgetune fleet``'s actions."""
    p = actions.add_parser(
        "check", help="a canary on every selected board: quarantine the boards that are up "
                      "but wrong, release the ones that pass",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", default="all", metavar="SEL",
                   help="which boards (default all; see `edgetune fleet --help`)")
    p.add_argument("--tolerance", type=float, default=TOLERANCE, metavar="X",
                   help=f"the largest absolute difference of any output value from this "
                        f"PC's onnxruntime (default {TOLERANCE:g}); the top-1 class must "
                        f"agree on all {CANARY_SAMPLES} canary inputs")
    p.add_argument("--max-spread", type=float, default=MAX_SPREAD, metavar="R",
                   help=f"the largest p90/p50 of the canary's latencies (default {MAX_SPREAD:g})")
    p.add_argument("--max-temp", type=float, default=MAX_TEMPERATURE_C, metavar="C",
                   help=f"the highest board temperature, when the board reports one "
                        f"(default {MAX_TEMPERATURE_C:g} C)")
    p.add_argument("--iterations", type=int, default=ITERATIONS, metavar="N",
                   help=f"timed runs of the canary for its spread (default {ITERATIONS})")
    p.add_argument("--strict", action="store_true",
                   help="refuse (do not check) a board whose certificate names another board "
                        "than its name in edgetune.toml (default: a warning)")
    p.add_argument("--timeout", type=float, default=30.0, metavar="S",
                   help="the deadline of each call to a board (default 30 s)")
    p.add_argument("--parallel", type=int, default=16, metavar="N",
                   help="boards checked at once (default 16)")
    p.add_argument("--db", metavar="URL", help=DB_HELP)
    add_identity_flags(p.add_argument_group("this PC's certificate"))
    add_json_flag(p)
    p.set_defaults(func=cmd_check)

    p = actions.add_parser("release", help="bring a quarantined board back into fleet runs")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--db", metavar="URL", help=DB_HELP)
    p.add_argument("--inventory", metavar="FILE", type=Path,
                   help="the inventory (for its results database)")
    add_json_flag(p)
    p.set_defaults(func=cmd_release)
