"""``edgetune fleet``: many boards from one host.

    edgetune fleet add NAME HOST:PORT [--tag T]... [--attr KEY=VALUE]... [--server-name N]
    edgetune fleet rm NAME
    edgetune fleet status [--devices SEL] [--strict] [--json]
    edgetune fleet check [--devices SEL] [--strict] [--json]
    edgetune fleet release NAME [--json]
    edgetune fleet bench|eval MODEL... --devices SEL [...] [--resume RUN] [--json]
    edgetune fleet runs [--json] | fleet show RUN [--json]

SEL: ``all``, names or globs (``board1,atlas-*``), ``tag:T``, ``KEY=VALUE`` (an attribute from
edgetune.toml, else what the board reports: arch, os, onnxruntime_version, ...); ``,`` means
any of, ``+`` all of (``tag:lab2+arch=aarch64``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from edgetune.host.cli.common import add_identity_flags, add_json_flag
from edgetune.host.errors import ExitStatus, UsageError
from edgetune.host.inventory import CONFIG_NAME, find_config

STATUS_TIMEOUT_S = 3.0


def _inventory_path(args: argparse.Namespace) -> Path:
    """The edgetune.toml to edit: --inventory, $EDGETUNE_CONFIG, ./edgetune.toml, or the user
    one; a new ./edgetune.toml when there is none."""
    found = find_config(args.inventory) if args.inventory is None else args.inventory
    return Path(found) if found is not None else Path(CONFIG_NAME)


def _attributes(items: Optional[List[str]]) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise UsageError(f"--attr {item!r} is not KEY=VALUE (e.g. --attr kind=atlas)")
        out[key.strip()] = value.strip()
    return out


def cmd_add(args: argparse.Namespace) -> int:
    from edgetune.host.fleet.inventory_edit import add_device

    path = _inventory_path(args)
    add_device(path, args.name, args.address, tags=args.tag or (),
               attributes=_attributes(args.attr), server_name=args.server_name)
    print(f"added {args.name} ({args.address}) to {path}")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    from edgetune.host.fleet.inventory_edit import remove_device

    path = _inventory_path(args)
    address = remove_device(path, args.name)
    print(f"removed {args.name} ({address}) from {path}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from edgetune.host import render
    from edgetune.host.fleet.selectors import Selector, select
    from edgetune.host.fleet.status import fleet_status
    from edgetune.host.target import load_identity_files, resolve_fleet

    selector = Selector.parse(args.devices)
    inventory, files = resolve_fleet(args)
    needs_boards = selector.reported_keys(inventory)
    if needs_boards:        # select on what the boards report: ask every listed board first
        candidates = list(inventory.devices)
    else:
        candidates, _ = select(inventory, selector)
    statuses = fleet_status(candidates, load_identity_files(files), args.timeout)
    if needs_boards:
        reported = {s.name: s.reported() for s in statuses}
        chosen, _ = select(inventory, selector, reported)
        names = {d.name for d in chosen}
        statuses = [s for s in statuses if s.name in names]
    from edgetune.host.cli.fleet_health_cmd import status_health
    statuses = status_health(args, statuses)      # quarantined; certificate names (--strict)
    if args.json:
        render.print_json({"devices": [s.as_json() for s in statuses]})
    else:
        render.stdout_console().print(status_table(statuses))
    down = [s for s in statuses if not s.ok]
    if not args.json:
        if down:
            print(f"edgetune: {len(down)} of {len(statuses)} boards are not serving",
                  file=sys.stderr)
        for s in statuses:
            if s.cert_warning:
                print(f"edgetune: warning: {s.name}: {s.cert_warning}", file=sys.stderr)
    return int(ExitStatus.UNREACHABLE) if down else 0


def status_table(statuses: List[Any]) -> Any:
    from rich.text import Text

    from edgetune.host.render import plain_table

    styles = {"serving": "green", "busy": "yellow", "starting": "yellow", "leased": "cyan"}
    rows = []
    for s in statuses:
        doc = s.as_json()
        state = Text(s.state, style=styles.get(s.state, "red"))
        uptime = "-" if doc["uptime_s"] is None else f"{doc['uptime_s'] / 3600:.1f} h"
        days = doc["cert_days_left"]
        cert = Text("-" if days is None else f"{days:.0f} d",
                    style="red" if s.cert_warning else "")
        rows.append((s.name, s.address, state, doc["arch"] or "-", doc["cpu"] or "-",
                     doc["onnxruntime"] or "-",
                     "-" if doc["queue_length"] is None else str(doc["queue_length"]),
                     doc["running_job"] or "-", uptime, cert,
                     "; ".join(x for x in (s.reason, s.cert_warning) if x)))
    return plain_table("fleet", ("board", "address", "state", "arch", "cpu", "onnxruntime",
                                 "queue", "running job", "uptime", "cert", "reason"), rows,
                       right=("queue", "uptime", "cert"))


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("fleet", help="many boards at once: add/rm, status, bench/eval "
                                          "runs (runs, show, --resume), check, release",
                            description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="fleet_action", metavar="ACTION", required=True)

    p = actions.add_parser("add", help="add a board to edgetune.toml (comments kept)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("address", metavar="HOST:PORT")
    p.add_argument("--tag", action="append", metavar="T", help="a tag (repeatable)")
    p.add_argument("--attr", action="append", metavar="KEY=VALUE",
                   help="a free attribute for selectors (repeatable)")
    p.add_argument("--server-name", metavar="NAME",
                   help="the name to expect in the board's certificate instead of HOST")
    p.add_argument("--inventory", metavar="FILE", type=Path,
                   help=f"the edgetune.toml to edit (default: the one in use, else ./{CONFIG_NAME})")
    p.set_defaults(func=cmd_add)

    p = actions.add_parser("rm", help="remove a board from edgetune.toml")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--inventory", metavar="FILE", type=Path,
                   help="the edgetune.toml to edit (default: the one in use)")
    p.set_defaults(func=cmd_rm)

    p = actions.add_parser("status", help="every selected board at once: serving, busy, "
                                          "unreachable or refused, and what it runs")
    p.add_argument("--devices", default="all", metavar="SEL",
                   help="which boards (default all; see `edgetune fleet --help`)")
    p.add_argument("--timeout", metavar="S", type=float, default=STATUS_TIMEOUT_S,
                   help=f"how long to wait for each board (default {STATUS_TIMEOUT_S:g} s)")
    p.add_argument("--strict", action="store_true",
                   help="a board whose certificate names another board is refused, not warned")
    p.add_argument("--db", metavar="URL", help="the results database (its quarantine)")
    add_identity_flags(p.add_argument_group("this PC's certificate"))
    add_json_flag(p)
    p.set_defaults(func=cmd_status)

    from edgetune.host.cli import fleet_health_cmd
    fleet_health_cmd.register(actions)              # fleet check, fleet release

    from edgetune.host.cli import fleet_run_cmd
    fleet_run_cmd.register(actions)                 # fleet bench, eval, runs, show
