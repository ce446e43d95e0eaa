"""Deploy's settings: one frozen ``SshSettings`` (how to reach a board) and ``DeploySettings``
(what to put there), built once from the flags and the inventory's ``[devices.NAME.deploy]``.

``--ssh USER@HOST[:PORT]`` is resolved through ``~/.ssh/config`` (HostName, Port, User,
IdentityFile, ProxyJump) with paramiko's ``SSHConfig``, as OpenSSH would: what the flag spells
out wins over the config file.
"""

from __future__ import annotations

import getpass
import ipaddress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping, Optional, Tuple

from edgetune.host.errors import BadInputError, UsageError

DEFAULT_PORT = 22
DEFAULT_LISTEN = "0.0.0.0:50051"
ROOT_PREFIX = "/opt/edgetune"
USER_PREFIX = "~/.local/share/edgetune"
SERVICE = "edgetune-agent.service"
ONNXRUNTIME_CHOICES = ("auto", "pypi", "board")
# What [devices.NAME.deploy] may hold: how the board was reached, never a secret.
RECORD_KEYS = ("ssh", "identity", "known_hosts", "prefix", "listen", "service_user", "python",
               "wheelhouse", "onnxruntime")


@dataclass(frozen=True)
class SshSpec:
    """``USER@HOST[:PORT]`` as given (user and port may be absent)."""

    host: str
    user: Optional[str] = None
    port: Optional[int] = None

    @classmethod
    def parse(cls, text: str) -> "SshSpec":
        user, at, rest = text.rpartition("@")
        if not at:
            user, rest = "", text
        host, port = rest, None
        if rest.startswith("["):                    # [v6]:port or [v6]
            end = rest.find("]")
            if end < 0:
                raise UsageError(f"--ssh {text!r}: unclosed '[' in the address")
            host, tail = rest[1:end], rest[end + 1:]
            if tail:
                if not tail.startswith(":") or not tail[1:].isdigit():
                    raise UsageError(f"--ssh {text!r} is not USER@HOST[:PORT]")
                port = int(tail[1:])
        elif rest.count(":") == 1:
            host, _, port_text = rest.partition(":")
            if not port_text.isdigit():
                raise UsageError(f"--ssh {text!r}: the port {port_text!r} is not a number",
                                 hint="USER@HOST[:PORT], e.g. root@192.168.1.20:22")
            port = int(port_text)
        if not host or any(c.isspace() for c in host) or (port is not None and not 0 < port < 65536):
            raise UsageError(f"--ssh {text!r} is not USER@HOST[:PORT]",
                             hint="e.g. root@192.168.1.20 or pi@board1.lab:2222")
        if at and not user:
            raise UsageError(f"--ssh {text!r}: empty user name before '@'")
        return cls(host=host, user=user or None, port=port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return (f"{self.user}@" if self.user else "") + host + (
            f":{self.port}" if self.port else "")


@dataclass(frozen=True)
class SshSettings:
    """How to reach one board, resolved (config file applied)."""

    spec: SshSpec                          # as given, for the inventory
    hostname: str                          # what is dialled (HostName)
    port: int
    user: str
    identity_files: Tuple[Path, ...] = ()
    known_hosts: Optional[Path] = None     # --known-hosts FILE (beside ~/.ssh/known_hosts)
    accept_new: bool = False
    proxy_jump: Optional[str] = None
    connect_timeout_s: float = 15.0
    explicit_identity: Optional[Path] = None   # --identity, as given (for the inventory)
    config_file: Optional[Path] = None     # --ssh-config (None: ~/.ssh/config)

    @property
    def label(self) -> str:
        return f"{self.user}@{self.hostname}:{self.port}"


def _config_lookup(host: str, config_file: Optional[Path]) -> Mapping[str, object]:
    import paramiko

    path = config_file if config_file is not None else Path.home() / ".ssh" / "config"
    if not path.is_file():
        return {"hostname": host}
    try:
        return paramiko.SSHConfig.from_path(str(path)).lookup(host)
    except Exception as exc:  # paramiko raises several kinds for a bad file
        raise BadInputError(f"cannot read the SSH config {path}: {exc}") from None


def resolve_ssh(spec: SshSpec, *, identity: Optional[Path] = None,
                known_hosts: Optional[Path] = None, accept_new: bool = False,
                config_file: Optional[Path] = None,
                connect_timeout_s: float = 15.0) -> SshSettings:
    """Apply ``~/.ssh/config`` to what ``--ssh`` (and ``--identity``) said."""
    found = _config_lookup(spec.host, config_file)
    hostname = str(found.get("hostname") or spec.host)
    port = spec.port or int(str(found.get("port") or DEFAULT_PORT))
    user = spec.user or str(found.get("user") or "") or getpass.getuser()
    files: Tuple[Path, ...] = ()
    if identity is not None:
        files = (Path(identity).expanduser(),)
    else:
        files = tuple(Path(str(f)).expanduser() for f in found.get("identityfile") or ())  # type: ignore[union-attr]
    jump = found.get("proxyjump")
    jump_text = None if not jump or str(jump).lower() == "none" else str(jump)
    return SshSettings(spec=spec, hostname=hostname, port=port, user=user,
                       identity_files=files,
                       known_hosts=Path(known_hosts).expanduser() if known_hosts else None,
                       accept_new=accept_new, proxy_jump=jump_text,
                       connect_timeout_s=connect_timeout_s,
                       explicit_identity=identity, config_file=config_file)


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class DeploySettings:
    """What ``edgetune deploy NAME`` puts on a board (built once from flags + inventory)."""

    name: str
    ssh: SshSettings
    inventory: Path
    prefix: Optional[str] = None           # None: /opt/edgetune as root, else ~/.local/share/edgetune
    listen: str = DEFAULT_LISTEN
    address: Optional[str] = None          # what this PC dials, HOST[:PORT]; default the SSH host
    tags: Tuple[str, ...] = ()
    wheelhouse: Optional[Path] = None
    pki: Optional[Path] = None             # the CA folder (`edgetune certs init`)
    device_cert: Optional[Path] = None     # --cert/--key: a certificate issued elsewhere
    device_key: Optional[Path] = None
    passphrase_file: Optional[Path] = None  # of the host's keys (CA, host, --key)
    onnxruntime: str = "auto"
    service_user: Optional[str] = None     # None: "edgetune" as root, else the SSH user
    timeout_s: float = 120.0               # deadline for the agent to answer health
    python: str = "python3"                # the board's Python (a name on its PATH or a path)
    allowed_clients: Tuple[str, ...] = field(default=())

    def with_ssh(self, ssh: SshSettings) -> "DeploySettings":
        return replace(self, ssh=ssh)


def listen_port(listen: str) -> int:
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--listen {listen!r} is not ADDR:PORT with a fixed port",
                         hint="e.g. --listen 0.0.0.0:50051 (this PC must know the port)")
    return int(port)
