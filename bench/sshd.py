"""A throw-away OpenSSH sshd on loopback, for side-by-side baselines (paramiko SFTP).

``local_sshd(listen=IP, prefix=argv)`` runs it elsewhere: e.g. in a network namespace and a
CPU quota (``bench/netlab.py``: ``prefix=limit.wrap(link.inside([]))``).

Needs the `sshd` binary (Debian: openssh-server; `.ci/run` installs it). Runs as the current
user with its own host key, authorized key and config in a temp folder; nothing system-wide
changes.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence


def find_sshd() -> str | None:
    for candidate in (shutil.which("sshd"), "/usr/sbin/sshd", "/usr/local/sbin/sshd"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class SshServer:
    host: str
    port: int
    user: str
    client_key: Path       # private key (unencrypted) the client logs in with
    host_key_pub: Path     # the server's public host key, for strict checking


@contextlib.contextmanager
def local_sshd(listen: str = "127.0.0.1", prefix: Sequence[str] = (),
               passwords: bool = False) -> Iterator[SshServer]:
    """sshd on ``listen`` (a free port), started as ``prefix + [sshd, ...]``; ``passwords``:
    also accept password logins (checked against the system's shadow file, no PAM)."""
    sshd = find_sshd()
    if sshd is None:
        raise RuntimeError("sshd not found: apt-get install openssh-server")
    with tempfile.TemporaryDirectory(prefix="edgetune-sshd-") as tmp:
        d = Path(tmp)
        os.chmod(d, 0o700)
        for name in ("host_ed25519", "client_ed25519"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)],
                           check=True)
        (d / "authorized_keys").write_text((d / "client_ed25519.pub").read_text())
        os.chmod(d / "authorized_keys", 0o600)
        if os.geteuid() == 0:   # sshd run by root insists on its privilege separation dir
            Path("/run/sshd").mkdir(exist_ok=True)
        port = _free_port()
        user = getpass.getuser()
        config = d / "sshd_config"
        config.write_text(
            f"Port {port}\nListenAddress {listen}\nHostKey {d / 'host_ed25519'}\n"
            f"AuthorizedKeysFile {d / 'authorized_keys'}\n"
            f"PasswordAuthentication {'yes' if passwords else 'no'}\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nPermitRootLogin prohibit-password\n"
            f"PidFile {d / 'sshd.pid'}\nStrictModes no\n"
            "Subsystem sftp internal-sftp\n")
        log_path = d / "sshd.log"      # a file, not a pipe: a full pipe would block sshd
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen([*prefix, sshd, "-D", "-e", "-f", str(config)],
                                    stdout=subprocess.DEVNULL, stderr=log_file)
        try:
            deadline = time.monotonic() + 10
            while True:
                with contextlib.suppress(OSError), socket.create_connection((listen, port), 0.2):
                    break
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = log_path.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"sshd did not start on {listen}:{port}: {err}")
                time.sleep(0.05)
            yield SshServer(listen, port, user, d / "client_ed25519",
                            d / "host_ed25519.pub")
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
