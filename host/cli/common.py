"""Flags and helpers shared by every command that talks to a board.

Which board, with which certificate:

    --device NAME                 a board named in edgetune.toml (with its [host] identity)
    --address HOST:PORT           any board, with
        --ca F --cert F --key F   this PC's CA bundle, certificate and encrypted key, or
        --pki DIR [--identity N]  DIR/ca-cert.pem, DIR/N-cert.pem, DIR/N-key.pem; N defaults to
                                  "host", else the only host (clientAuth) certificate in DIR

Explicit --ca/--cert/--key/--pki win over the inventory's [host]; the key's passphrase comes from
--passphrase-file, the inventory's passphrase_file, $EDGETUNE_PASSPHRASE, or a prompt.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Mapping, Optional, Tuple

from edgetune.host.errors import NotFoundError, UsageError
from edgetune.host.inventory import (CONFIG_NAME, Inventory, find_config, load_inventory, split_address)

INT32_MAX = 2 ** 31 - 1
NO_TARGET = "pass --device NAME or --address HOST:PORT with --ca/--cert/--key (or --pki DIR)"
PASSPHRASE_HELP = ("read the passphrase of this PC's key from the first line of FILE. "
                   "Without it: the inventory's [host] passphrase_file (with its certificate), "
                   "else $EDGETUNE_PASSPHRASE, else a prompt on a terminal. Never given on the "
                   "command line.")


@dataclass(frozen=True)
class ConnectionTarget:
    """Everything needed to open an ``AgentClient``, resolved from flags and the inventory."""

    address: str
    device: str                         # how results name the board: inventory name or address
    ca: Path
    cert: Path
    key: Path
    passphrase_file: Optional[Path] = None
    server_name: Optional[str] = None
    timeout_s: float = 30.0


def add_connection_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "board and certificates", "a board from edgetune.toml (--device), or --address with "
        "--ca/--cert/--key or --pki")
    group.add_argument("--device", metavar="NAME", help="a board named in edgetune.toml")
    group.add_argument("--address", metavar="HOST:PORT", help="the agent's address")
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
    group.add_argument("--server-name", metavar="NAME",
                       help="the name to expect in the agent certificate's SAN instead of the "
                            "address's host")
    group.add_argument("--timeout", metavar="S", type=float, default=30.0,
                       help="deadline of each call in seconds (default 30)")


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true",
                        help="print one JSON document on stdout instead of tables")


# ---------------------------------------------------------------------- resolution

def resolve_target(args: argparse.Namespace, env: Optional[Mapping[str, str]] = None) -> ConnectionTarget:
    """The board and identity files the flags (and the inventory) name. No file is read but
    the inventory; missing files are reported by name."""
    env = os.environ if env is None else env
    if args.timeout is not None and not args.timeout > 0:
        raise UsageError(f"--timeout must be a positive number of seconds (got {args.timeout})")
    inventory: Optional[Inventory] = None

    def need_inventory(why: str) -> Inventory:
        nonlocal inventory
        if inventory is None:
            path = find_config(args.inventory, env=env)
            if path is None:
                raise NotFoundError(
                    f"{why}, but there is no inventory: no --inventory, no $EDGETUNE_CONFIG, no "
                    f"./{CONFIG_NAME}, no ~/.config/edgetune/{CONFIG_NAME}",
                    hint=f"create {CONFIG_NAME} (see `edgetune demo --keep DIR`), or {NO_TARGET}")
            inventory = load_inventory(path)
        return inventory

    if args.device and args.address:
        raise UsageError("pass either --device NAME or --address HOST:PORT, not both")
    server_name = args.server_name
    if args.device:
        device = need_inventory(f"--device {args.device} needs edgetune.toml").device(args.device)
        address, label = device.address, device.name
        server_name = server_name or device.server_name
    elif args.address:
        split_address(args.address)
        address, label = args.address, args.address
    else:
        raise UsageError(f"which board? {NO_TARGET}")

    explicit = {"ca": args.ca, "cert": args.cert, "key": args.key}
    origin = "from the flags"
    if args.pki is not None:
        name = args.identity or _default_identity(args.pki)
        base = {"ca": args.pki / "ca-cert.pem", "cert": args.pki / f"{name}-cert.pem",
                "key": args.pki / f"{name}-key.pem"}
        files = {k: explicit[k] or base[k] for k in base}
        origin = f"from --pki {args.pki}"
    elif all(explicit.values()):
        files = dict(explicit)
    elif any(explicit.values()):
        missing = ", ".join(f"--{k}" for k, v in explicit.items() if v is None)
        raise UsageError(f"{missing} missing: pass all of --ca, --cert and --key (or --pki DIR)")
    else:
        inv = need_inventory("no --ca/--cert/--key or --pki given")
        if inv.host is None:
            raise UsageError(f"{inv.path} has no [host] section naming this PC's certificates",
                             hint="add [host] ca/cert/key, or pass --pki DIR or --ca/--cert/--key")
        files = {"ca": inv.host.ca, "cert": inv.host.cert, "key": inv.host.key}
        origin = f"from [host] in {inv.path}"
    passphrase_file = args.passphrase_file
    if passphrase_file is None and inventory is not None and inventory.host is not None \
            and files["cert"] == inventory.host.cert:
        passphrase_file = inventory.host.passphrase_file
    for what, path in (("CA certificate", files["ca"]), ("certificate", files["cert"]),
                       ("key", files["key"]), ("passphrase file", passphrase_file)):
        if path is not None and not Path(path).is_file():
            raise NotFoundError(f"{what} {path} ({origin}) does not exist",
                                hint="make it with `edgetune certs`, or point the flag at it")
    return ConnectionTarget(address=address, device=label, ca=Path(files["ca"]),
                            cert=Path(files["cert"]), key=Path(files["key"]),
                            passphrase_file=passphrase_file, server_name=server_name,
                            timeout_s=args.timeout)


def _default_identity(pki: Path) -> str:
    """"host" when DIR/host-cert.pem exists, else the only client certificate in DIR."""
    if (pki / "host-cert.pem").is_file():
        return "host"
    if not pki.is_dir():
        raise NotFoundError(f"PKI directory {pki} does not exist")
    from edgetune.certs import CertError, describe_certificate

    clients: List[str] = []
    for cert in sorted(pki.glob("*-cert.pem")):
        try:
            info = describe_certificate(cert.read_bytes())
        except (CertError, OSError, ValueError):
            continue
        if not info.is_ca and info.eku is not None and "clientAuth" in info.eku:
            clients.append(cert.name[:-len("-cert.pem")])
    if len(clients) == 1:
        return clients[0]
    found = ", ".join(clients) or "none"
    raise UsageError(f"which identity in {pki}? there is no host-cert.pem, and the host "
                     f"certificates there are: {found}",
                     hint="pass --identity NAME (for DIR/NAME-cert.pem and DIR/NAME-key.pem)")


def load_target_identity(target: ConnectionTarget) -> Any:
    """Decrypt the key and check the identity (certs errors become host errors)."""
    from edgetune.host.cli.certs_cmd import identity_from_args

    return identity_from_args(target.ca, target.cert, target.key, target.passphrase_file)


def open_client(args: argparse.Namespace, target: Optional[ConnectionTarget] = None) -> Any:
    """An ``AgentClient`` for the board the flags name (not yet connected)."""
    from edgetune.host.client import AgentClient, ClientSettings

    target = target or resolve_target(args)
    identity = load_target_identity(target)
    settings = ClientSettings(timeout_s=target.timeout_s,
                              connect_timeout_s=min(10.0, target.timeout_s))
    return AgentClient(target.address, identity, server_name=target.server_name,
                       settings=settings)


# ---------------------------------------------------------------------- flag values

def check_count(flag: str, value: Optional[int], *, minimum: int = 1,
                maximum: int = INT32_MAX) -> None:
    if value is not None and not minimum <= value <= maximum:
        raise UsageError(f"{flag} must be between {minimum} and {maximum} (got {value})")


def parse_shape(text: str) -> Tuple[str, Tuple[int, ...]]:
    """"NAME=1x3x224x224" -> ("NAME", (1, 3, 224, 224)); UsageError showing the form."""
    name, sep, dims_text = text.partition("=")
    example = "pass --shape NAME=1x3x224x224 (input name, '=', positive sizes joined by 'x')"
    if not sep or not name.strip() or not dims_text:
        raise UsageError(f"--shape {text!r} is not NAME=DIMS", hint=example)
    try:
        dims = tuple(int(d) for d in dims_text.lower().split("x"))
    except ValueError:
        raise UsageError(f"--shape {text!r}: the sizes must be whole numbers", hint=example) from None
    if not dims or any(d < 1 or d > INT32_MAX for d in dims):
        raise UsageError(f"--shape {text!r}: every size must be at least 1", hint=example)
    return name.strip(), dims


def parse_list(text: Optional[str]) -> Tuple[str, ...]:
    """"a,b , c" -> ("a", "b", "c")."""
    if not text:
        return ()
    return tuple(part.strip() for part in text.split(",") if part.strip())
