"""Which board, with which certificate: the connection target the flags and the inventory
name, this PC's identity for mutual TLS, and the ``AgentClient``/``BoardSession`` opened on
them. Library code the commands call (the flags themselves are in ``edgetune.host.cli.common``).

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
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, List, Mapping, Optional, Tuple

from edgetune.host.errors import NotFoundError, UsageError
from edgetune.host.inventory import (CONFIG_NAME, HostIdentityFiles, Inventory, find_config,
                                     load_inventory, split_address)

if TYPE_CHECKING:  # pragma: no cover
    from edgetune.certs import Identity
    from edgetune.host.board import BoardSession
    from edgetune.host.client import AgentClient

NO_TARGET = "pass --device NAME or --address HOST:PORT with --ca/--cert/--key (or --pki DIR)"


# ---------------------------------------------------------------------- identity

def load_host_identity(ca: Path, cert: Path, key: Path,
                       passphrase_file: Optional[Path] = None) -> "Identity":
    """This PC's identity for mutual TLS, through the loader the agent uses too
    (``edgetune.certs.open_identity``, clientAuth required); the passphrase is asked only when
    the key is encrypted. Raises NotFoundError, BadInputError, AuthError or UsageError."""
    from edgetune.certs.identity import open_identity
    from edgetune.host.errors import cert_errors     # certs errors -> exit codes

    with cert_errors():
        return open_identity(Path(ca), Path(cert), Path(key), passphrase_file,
                             usage="clientAuth",
                             interactive=sys.stdin is not None and sys.stdin.isatty())


# ---------------------------------------------------------------------- resolution

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


class _InventoryOnce:
    """The inventory, read the first time a flag needs it (and only then)."""

    def __init__(self, args: argparse.Namespace, env: Mapping[str, str]) -> None:
        self.args = args
        self.env = env
        self.loaded: Optional[Inventory] = None

    def __call__(self, why: str) -> Inventory:
        if self.loaded is None:
            path = find_config(self.args.inventory, env=self.env)
            if path is None:
                raise NotFoundError(
                    f"{why}, but there is no inventory: no --inventory, no $EDGETUNE_CONFIG, no "
                    f"./{CONFIG_NAME}, no ~/.config/edgetune/{CONFIG_NAME}",
                    hint=f"create {CONFIG_NAME} (see `edgetune demo --quick --keep DIR`), or {NO_TARGET}")
            self.loaded = load_inventory(path)
        return self.loaded


def load_identity_files(files: HostIdentityFiles) -> "Identity":
    return load_host_identity(files.ca, files.cert, files.key, files.passphrase_file)


def resolve_identity_files(args: argparse.Namespace, inventory: _InventoryOnce) -> HostIdentityFiles:
    """--pki DIR [--identity N], --ca/--cert/--key, else the inventory's [host]; the key's
    passphrase file from --passphrase-file, else [host] passphrase_file. Missing files are
    reported by name (nothing else is read)."""
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
        inv = inventory("no --ca/--cert/--key or --pki given")
        if inv.host is None:
            raise UsageError(f"{inv.path} has no [host] section naming this PC's certificates",
                             hint="add [host] ca/cert/key, or pass --pki DIR or --ca/--cert/--key")
        files = {"ca": inv.host.ca, "cert": inv.host.cert, "key": inv.host.key}
        origin = f"from [host] in {inv.path}"
    passphrase_file = args.passphrase_file
    loaded = inventory.loaded
    if passphrase_file is None and loaded is not None and loaded.host is not None \
            and files["cert"] == loaded.host.cert:
        passphrase_file = loaded.host.passphrase_file
    for what, path in (("CA certificate", files["ca"]), ("certificate", files["cert"]),
                       ("key", files["key"]), ("passphrase file", passphrase_file)):
        if path is not None and not Path(path).is_file():
            raise NotFoundError(f"{what} {path} ({origin}) does not exist",
                                hint="make it with `edgetune certs`, or point the flag at it")
    return HostIdentityFiles(ca=Path(files["ca"]), cert=Path(files["cert"]),
                             key=Path(files["key"]), passphrase_file=passphrase_file)


def check_timeout(args: argparse.Namespace) -> None:
    if args.timeout is not None and not args.timeout > 0:
        raise UsageError(f"--timeout must be a positive number of seconds (got {args.timeout})")


def resolve_target(args: argparse.Namespace, env: Optional[Mapping[str, str]] = None) -> ConnectionTarget:
    """The board and identity files the flags (and the inventory) name. No file is read but
    the inventory; missing files are reported by name."""
    check_timeout(args)
    need_inventory = _InventoryOnce(args, os.environ if env is None else env)
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
    files = resolve_identity_files(args, need_inventory)
    return ConnectionTarget(address=address, device=label, ca=files.ca, cert=files.cert,
                            key=files.key, passphrase_file=files.passphrase_file,
                            server_name=server_name, timeout_s=args.timeout)


def resolve_fleet(args: argparse.Namespace, env: Optional[Mapping[str, str]] = None
                  ) -> Tuple[Inventory, HostIdentityFiles]:
    """The inventory (fleet commands select boards from it) and this PC's identity files."""
    check_timeout(args)
    inventory = _InventoryOnce(args, os.environ if env is None else env)
    loaded = inventory("fleet commands select boards from edgetune.toml")
    return loaded, resolve_identity_files(args, inventory)


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


def load_target_identity(target: ConnectionTarget) -> "Identity":
    """Decrypt the key and check the identity (certs errors become host errors)."""
    return load_host_identity(target.ca, target.cert, target.key, target.passphrase_file)


def open_client(args: argparse.Namespace, target: Optional[ConnectionTarget] = None) -> "AgentClient":
    """An ``AgentClient`` for the board the flags name (not yet connected)."""
    from edgetune.host.client import AgentClient, ClientSettings

    target = target or resolve_target(args)
    identity = load_target_identity(target)
    settings = ClientSettings(timeout_s=target.timeout_s,
                              connect_timeout_s=min(10.0, target.timeout_s))
    return AgentClient(target.address, identity, server_name=target.server_name,
                       settings=settings)


def open_session(args: argparse.Namespace, target: Optional[ConnectionTarget] = None,
                 **session_kwargs: Any) -> "BoardSession":
    """A ``BoardSession`` on the board the flags name, named as ``target.device``; use it as
    a context manager (it closes its client)."""
    from edgetune.host.board import BoardSession

    target = target or resolve_target(args)
    return BoardSession(open_client(args, target), target.device, **session_kwargs)
