"""``edgetune lease``: hold a board for one's own measurements, by hand.

    edgetune lease acquire --device NAME [--ttl S] [--json]
    edgetune lease renew   --device NAME [--lease-id ID] [--ttl S] [--json]
    edgetune lease release --device NAME [--lease-id ID] [--json]
    edgetune lease show    --device NAME [--json]

A lease is held by this PC's certificate name: while it lasts, the board refuses jobs (and
deleting blobs) from every other host certificate; uploads and read-only calls stay open.
It ends at its expiry unless renewed, so a PC that goes away frees the board by itself.
``bench`` takes and renews one for its own run (``--no-lease`` skips it). Without
``--lease-id``, renew and release act on every claim this PC holds on the board.
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Dict, Optional

from edgetune.host.cli.common import add_connection_flags, add_json_flag
from edgetune.host.errors import UsageError
from edgetune.host.leases import check_ttl

ACQUIRE_TTL_S = 600.0


def _print(args: argparse.Namespace, doc: Dict[str, Any], text: str) -> None:
    from edgetune.host import render

    if args.json:
        render.print_json(doc)
    else:
        print(text)


def _lease_id(args: argparse.Namespace) -> str:
    value = (args.lease_id or "").strip().lower()
    if value and (len(value) != 32 or any(c not in "0123456789abcdef" for c in value)):
        raise UsageError(f"--lease-id must be the 32 hexadecimal characters `edgetune lease "
                         f"acquire` printed (got {args.lease_id!r})")
    return value


def _until(lease: Any) -> str:
    from edgetune.protos.leases import format_utc

    return f"{format_utc(lease.expires_unix)} (in {lease.remaining_s:.0f} s)"


def cmd_acquire(args: argparse.Namespace) -> int:
    from edgetune.host.target import open_session, resolve_target

    ttl = check_ttl(args.ttl)
    target = resolve_target(args)
    with open_session(args, target) as board:
        lease = board.client.acquire_lease(ttl)
    doc = {"device": target.device, "address": target.address, "lease": lease.as_dict()}
    more = f"; {lease.claims} claims of {lease.holder} in all" if lease.claims > 1 else ""
    _print(args, doc, f"{board.name}: leased to {lease.holder} until {_until(lease)}, claim "
                      f"{lease.lease_id}{more}\nrenew it with `edgetune lease renew`, end it with "
                      "`edgetune lease release` (same --device)")
    return 0


def cmd_renew(args: argparse.Namespace) -> int:
    from edgetune.host.target import open_session, resolve_target

    ttl = 0.0 if args.ttl is None else check_ttl(args.ttl)
    lease_id = _lease_id(args)
    target = resolve_target(args)
    with open_session(args, target) as board:
        lease = board.client.renew_lease(lease_id, ttl)
    doc = {"device": target.device, "address": target.address, "lease": lease.as_dict()}
    _print(args, doc, f"{board.name}: the lease of {lease.holder} now lasts until "
                      f"{_until(lease)}")
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    from edgetune.host.target import open_session, resolve_target

    lease_id = _lease_id(args)
    target = resolve_target(args)
    with open_session(args, target) as board:
        released, remaining = board.client.release_lease(lease_id)
    doc = {"device": target.device, "address": target.address, "released": released,
           "remaining": remaining.as_dict() if remaining is not None else None}
    if remaining is not None:
        text = (f"{board.name}: released; {remaining.claims} other claim(s) of "
                f"{remaining.holder} keep it leased until {_until(remaining)}")
    elif released:
        text = f"{board.name}: released; the board is free"
    else:
        text = f"{board.name}: there was no such lease of ours (it had ended); the board is free"
    _print(args, doc, text)
    return 0


def lease_state(info: Any, now: Optional[float] = None) -> Dict[str, Any]:
    """What ``lease show --json`` says of an ``AgentInfo``: holder (None: free), expiry, and
    whether the holder is the caller."""
    from edgetune.protos.leases import format_utc

    now = time.time() if now is None else now
    holder = info.lease_holder or None
    return {"holder": holder,
            "expires_unix": info.lease_expires_unix if holder else None,
            "expires": format_utc(info.lease_expires_unix) if holder else None,
            "remaining_s": round(max(0.0, info.lease_expires_unix - now), 1) if holder else None,
            "ours": bool(holder) and holder == info.caller_name,
            "agent_version": info.agent_version}


def cmd_show(args: argparse.Namespace) -> int:
    from edgetune.host.target import open_session, resolve_target

    target = resolve_target(args)
    with open_session(args, target) as board:
        info = board.client.info()
    state = lease_state(info)
    doc = {"device": target.device, "address": target.address, **state}
    if state["holder"] is None:
        text = f"{board.name}: free (no lease)"
    else:
        ours = " (this PC)" if state["ours"] else ""
        text = (f"{board.name}: leased by {state['holder']}{ours} until {state['expires']} "
                f"(in about {state['remaining_s']:.0f} s by this PC's clock)")
    _print(args, doc, text)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("lease", help="hold a board for your own measurements (acquire, "
                                          "renew, release, show)",
                            description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="lease_action", metavar="ACTION", required=True)

    p = actions.add_parser("acquire", help="lease the board to this PC's certificate")
    p.add_argument("--ttl", type=float, metavar="S", default=ACQUIRE_TTL_S,
                   help=f"seconds until it ends unless renewed (default {ACQUIRE_TTL_S:g}; the "
                        "agent allows 5 to 3600 unless its agent.toml says otherwise)")
    add_connection_flags(p)
    add_json_flag(p)
    p.set_defaults(func=cmd_acquire)

    p = actions.add_parser("renew", help="extend this PC's lease")
    p.add_argument("--lease-id", metavar="ID", help="the claim to renew (default: all of ours)")
    p.add_argument("--ttl", type=float, metavar="S",
                   help="seconds from now (default: the time it was granted for)")
    add_connection_flags(p)
    add_json_flag(p)
    p.set_defaults(func=cmd_renew)

    p = actions.add_parser("release", help="end this PC's lease (the board is free again)")
    p.add_argument("--lease-id", metavar="ID", help="the claim to end (default: all of ours)")
    add_connection_flags(p)
    add_json_flag(p)
    p.set_defaults(func=cmd_release)

    p = actions.add_parser("show", help="who holds the board, and until when")
    add_connection_flags(p)
    add_json_flag(p)
    p.set_defaults(func=cmd_show)
