"""Strict host key checking, as OpenSSH does it with StrictHostKeyChecking=yes or accept-new.

Keys are looked up in ``~/.ssh/known_hosts`` and in ``--known-hosts FILE``. A host that none
of them lists is refused unless ``--accept-new``: then its key is appended to the file
(``--known-hosts`` if given, else ``~/.ssh/known_hosts``) and its SHA256 fingerprint is told.
A key that differs from a listed one is always refused, with both fingerprints and the line to
remove.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Sequence, Tuple

from edgetune.host.errors import AuthError

log = logging.getLogger(__name__)


def default_known_hosts() -> Path:
    return Path.home() / ".ssh" / "known_hosts"


def fingerprint(key: object) -> str:
    """OpenSSH's ``SHA256:...`` fingerprint of a paramiko key."""
    digest = hashlib.sha256(key.asbytes()).digest()  # type: ignore[attr-defined]
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def host_entry_name(host: str, port: int) -> str:
    """How known_hosts names a host: ``host`` on port 22, ``[host]:port`` otherwise."""
    return host if port == 22 else f"[{host}]:{port}"


def _matches(pattern_field: str, name: str) -> bool:
    if pattern_field.startswith("|1|"):
        try:
            _, _, salt, digest = pattern_field.split("|", 3)
            mac = hmac.new(base64.b64decode(salt), name.encode(), hashlib.sha1).digest()
        except ValueError:
            return False
        return hmac.compare_digest(base64.b64encode(mac).decode(), digest)
    return name in pattern_field.split(",")


@dataclass(frozen=True)
class KnownLine:
    file: Path
    line: int
    key_type: str


def find_lines(files: Sequence[Path], name: str) -> List[KnownLine]:
    """The known_hosts lines (file, 1-based number) that list ``name``."""
    found = []
    for file in files:
        try:
            text = file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            fields = line.split()
            if len(fields) < 3 or line.lstrip().startswith("#"):
                continue
            if fields[0].startswith("@"):   # @cert-authority / @revoked markers
                continue
            if _matches(fields[0], name):
                found.append(KnownLine(file, number, fields[1]))
    return found


class HostKeyCheck:
    """A paramiko MissingHostKeyPolicy (unknown hosts) plus the changed-key message.

    ``files``: every known_hosts file to trust; ``record_to``: where --accept-new writes.
    ``tell``: how an accepted key is reported to the person (a line of output).
    """

    def __init__(self, files: Sequence[Path], record_to: Path, accept_new: bool,
                 tell: Callable[[str], None]) -> None:
        self.files = [Path(f) for f in files]
        self.record_to = Path(record_to)
        self.accept_new = accept_new
        self.tell = tell
        self.accepted: List[Tuple[str, str]] = []

    def load_into(self, client: object) -> None:
        for file in self.files:
            if file.is_file():
                client.load_system_host_keys(str(file))  # type: ignore[attr-defined]

    def missing_host_key(self, client: object, hostname: str, key: object) -> None:
        fp = fingerprint(key)
        kind = key.get_name()  # type: ignore[attr-defined]
        if not self.accept_new:
            raise AuthError(
                f"the host key of {hostname} is not known ({kind} {fp}); refusing to connect",
                hint="check the fingerprint on the board (ssh-keygen -lf "
                     "/etc/ssh/ssh_host_*_key.pub), then run again with --accept-new to record "
                     f"it in {self.record_to}")
        self.record_to.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        line = f"{hostname} {kind} {key.get_base64()}\n"  # type: ignore[attr-defined]
        fd = os.open(self.record_to, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as fh:
            fh.write(line)
        client.get_host_keys().add(hostname, kind, key)  # type: ignore[attr-defined]
        self.accepted.append((hostname, fp))
        self.tell(f"accepted the new host key of {hostname}: {kind} {fp} "
                  f"(recorded in {self.record_to})")

    def changed(self, hostname: str, port: int, offered: object,
                expected: object) -> AuthError:
        name = host_entry_name(hostname, port)
        lines = find_lines(self.files, name)
        where = "; ".join(f"{ln.file}:{ln.line}" for ln in lines) or "known_hosts"
        file = lines[0].file if lines else self.record_to
        return AuthError(
            f"the host key of {name} has CHANGED: the board offered "
            f"{offered.get_name()} {fingerprint(offered)}, "  # type: ignore[attr-defined]
            f"known_hosts has {expected.get_name()} {fingerprint(expected)} "  # type: ignore[attr-defined]
            f"({where}). Someone may be intercepting the connection, or the board was "
            "reinstalled; refusing to connect",
            hint=f"if the board was reinstalled, remove the old key (line {where}) with "
                 f"`ssh-keygen -R '{name}' -f {file}` and run again with --accept-new")
