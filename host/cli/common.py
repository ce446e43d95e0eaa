"""The flags every command that talks to a board shares (--device, --address with
--ca/--cert/--key or --pki, --passphrase-file, ...), and the checks of flag values. How they
resolve to a board and an identity, and in which order, is ``edgetune.host.target``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional, Tuple

from edgetune.host.errors import UsageError
from edgetune.host.inventory import CONFIG_NAME

INT32_MAX = 2 ** 31 - 1
PASSPHRASE_HELP = ("read the passphrase of this PC's key from the first line of FILE. "
                   "Without it: the inventory's [host] passphrase_file (with its certificate), "
                   "else $EDGETUNE_PASSPHRASE, else a prompt on a terminal. Never given on the "
                   "command line.")


def add_connection_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "board and certificates", "a board from edgetune.toml (--device), or --address with "
        "--ca/--cert/--key or --pki")
    group.add_argument("--device", metavar="NAME", help="a board named in edgetune.toml")
    group.add_argument("--address", metavar="HOST:PORT", help="the agent's address")
    add_identity_flags(group)
    group.add_argument("--server-name", metavar="NAME",
                       help="the name to expect in the agent certificate's SAN instead of the "
                            "address's host")
    group.add_argument("--timeout", metavar="S", type=float, default=30.0,
                       help="deadline of each call in seconds (default 30)")


def add_identity_flags(group: Any) -> None:
    """This PC's identity: --inventory (with its [host]), --pki DIR [--identity N], or
    --ca/--cert/--key; --passphrase-file. ``group``: a parser or an argument group."""
    group.add_argument("--inventory", metavar="FILE", type=Path,
                       help=f"the inventory (default: $EDGETUNE_CONFIG, ./{CONFIG_NAME}, "
                            f"~/.config/edgetune/{CONFIG_NAME})")
    group.add_argument("--pki", metavar="DIR", type=Path,
                       help="a PKI directory: DIR/ca-cert.pem, DIR/NAME-cert.pem, DIR/NAME-key.pem")
    group.add_argument("--identity", metavar="NAME",
                       help="with --pki: whose certificate (default: 'host', else the only host "
                            "certificate in DIR)")
    group.add_argument("--ca", metavar="FILE", type=Path, help="CA certificate(s) to trust")
    group.add_argument("--cert", metavar="FILE", type=Path, help="this PC's certificate")
    group.add_argument("--key", metavar="FILE", type=Path, help="this PC's (encrypted) key")
    group.add_argument("--passphrase-file", type=Path, metavar="FILE", help=PASSPHRASE_HELP)


DB_HELP = ("the results database: a SQLite file, or a URL such as "
           "postgresql+psycopg://user@server/edgetune (default: $EDGETUNE_DB, [results] db in "
           "edgetune.toml, .edgetune/results.db beside it, else the user data directory)")


def add_record_flags(parser: argparse.ArgumentParser) -> None:
    """--db and --no-record: where a command keeps what it measured (or that it does not)."""
    group = parser.add_argument_group("results database")
    group.add_argument("--db", metavar="URL", help=DB_HELP)
    group.add_argument("--no-record", action="store_true",
                       help="keep nothing of this run in the results database")


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true",
                        help="print one JSON document on stdout instead of tables")


# ---------------------------------------------------------------------- flag values

def check_count(flag: str, value: Optional[int], *, minimum: int = 1,
                maximum: int = INT32_MAX) -> None:
    if value is not None and not minimum <= value <= maximum:
        raise UsageError(f"{flag} must be between {minimum} and {maximum} (got {value})")


def parse_shape(text: str) -> Tuple[str, Tuple[int, ...]]:
    """"NAME=1x3x224x224" -> ("NAME", (1, 3, 224, 224)) (``edgetune.protos.shapes``, the
    parser the board's messages match); UsageError showing the form."""
    from edgetune.protos.shapes import ShapeError, parse_shape as parse

    try:
        return parse(text)
    except ShapeError as exc:
        raise UsageError(exc.message, hint=exc.hint) from None


def parse_list(text: Optional[str]) -> Tuple[str, ...]:
    """"a,b , c" -> ("a", "b", "c")."""
    if not text:
        return ()
    return tuple(part.strip() for part in text.split(",") if part.strip())
