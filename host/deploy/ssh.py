"""One SSH connection to a board (paramiko), with a small surface: ``run``, ``boardctl``,
``sftp``. Host keys are checked strictly (``hostkeys``); keys come from ``--identity`` or the
config's IdentityFile, the ssh-agent and the default key files; a password or key passphrase
only from ``$EDGETUNE_SSH_PASSWORD`` or a prompt on a terminal. ProxyJump hops are dialled
first, each checked the same way.
"""

from __future__ import annotations

import functools
import getpass
import json
import logging
import os
import shlex
import socket
import sys
from dataclasses import dataclass, replace
from importlib import resources
from typing import Any, Callable, List, Optional

from edgetune.host.deploy.hostkeys import HostKeyCheck, default_known_hosts
from edgetune.host.deploy.settings import SshSettings, SshSpec, resolve_ssh
from edgetune.host.errors import AgentError, AuthError, EdgetuneError, TimeoutError_, UnreachableError

log = logging.getLogger(__name__)

PASSWORD_ENV = "EDGETUNE_SSH_PASSWORD"


class RemoteError(EdgetuneError):
    """A command on the board failed; the message holds its output's tail."""

    exit_status = AgentError.exit_status


class MissingProgram(Exception):
    """The program asked for is not on the board."""


_MISSING = 97       # the exit status boardctl(require=True) uses for "no such program"


@dataclass(frozen=True)
class Result:
    status: int
    out: str
    err: str


@functools.lru_cache(maxsize=1)
def _boardctl_source() -> bytes:
    return resources.files("edgetune.host.deploy").joinpath("boardctl.py").read_bytes()


def _secret(prompt: str) -> Optional[str]:
    """The password/passphrase from $EDGETUNE_SSH_PASSWORD, else a prompt on a terminal."""
    value = os.environ.get(PASSWORD_ENV)
    if value:
        return value
    if sys.stdin is not None and sys.stdin.isatty():
        return getpass.getpass(prompt)
    return None


class SshSession:
    """Open with ``SshSession.connect(settings)``; a context manager (closes every hop)."""

    def __init__(self, settings: SshSettings, clients: List[Any], check: HostKeyCheck) -> None:
        self.settings = settings
        self._clients = clients           # the jump hops first, the board last
        self.client = clients[-1]
        self.check = check
        self._sftp: Any = None

    # ---------------------------------------------------------------- connecting

    @classmethod
    def connect(cls, settings: SshSettings,
                tell: Callable[[str], None] = lambda line: None) -> "SshSession":
        files = [default_known_hosts()]
        if settings.known_hosts is not None:
            files.append(settings.known_hosts)
        check = HostKeyCheck(files, settings.known_hosts or default_known_hosts(),
                             settings.accept_new, tell)
        clients: List[Any] = []
        try:
            sock = None
            hops = [_hop(text, settings) for text in
                    (settings.proxy_jump.split(",") if settings.proxy_jump else [])]
            for hop, after in zip(hops, [*hops[1:], settings]):
                clients.append(_open(hop, check, sock))   # each hop checked like the board
                sock = clients[-1].get_transport().open_channel(
                    "direct-tcpip", (after.hostname, after.port), ("127.0.0.1", 0),
                    timeout=settings.connect_timeout_s)
            clients.append(_open(settings, check, sock))
        except BaseException:
            for client in reversed(clients):
                client.close()
            raise
        return cls(settings, clients, check)

    def close(self) -> None:
        if self._sftp is not None:
            self._sftp.close()
        for client in reversed(self._clients):
            client.close()

    def __enter__(self) -> "SshSession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- using

    @property
    def sftp(self) -> Any:
        if self._sftp is None:
            self._sftp = self.client.open_sftp()
        return self._sftp

    def run(self, command: str, *, stdin: Optional[bytes] = None, check: bool = True,
            timeout_s: float = 600.0) -> Result:
        """Run ``command`` in the board's shell; RemoteError when it fails and ``check``."""
        log.debug("%s: %s", self.settings.label, command)
        try:
            chan_in, chan_out, chan_err = self.client.exec_command(command, timeout=timeout_s)
            if stdin is not None:
                chan_in.write(stdin)
            chan_in.channel.shutdown_write()
            out = chan_out.read()
            err = chan_err.read()
            status = chan_out.channel.recv_exit_status()
        except socket.timeout:
            raise TimeoutError_(f"{self.settings.label}: `{command[:80]}` did not finish in "
                                f"{timeout_s:.0f} s") from None
        result = Result(status, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))
        if check and status != 0:
            tail = "\n".join((result.err or result.out).strip().splitlines()[-15:])
            raise RemoteError(f"on {self.settings.label}, `{_short(command)}` failed "
                              f"(exit {status}):\n{tail}")
        return result

    def boardctl(self, *args: str, sudo: bool = False, python: str = "python3",
                 timeout_s: float = 300.0, require: bool = False) -> Any:
        """Run the board helper (sent on stdin) and return its JSON answer. ``require``:
        MissingProgram when ``python`` is not there (checked in the same round trip)."""
        command = " ".join(shlex.quote(a) for a in (python, "-", *args))
        if sudo:
            command = "sudo -n " + command
        if require:
            command = (f"command -v {shlex.quote(python)} >/dev/null 2>&1 || exit {_MISSING}; "
                       + command)
        result = self.run(command, stdin=_boardctl_source(), timeout_s=timeout_s, check=False)
        if require and result.status == _MISSING:
            raise MissingProgram(python)
        if result.status != 0:
            tail = "\n".join((result.err or result.out).strip().splitlines()[-15:])
            raise RemoteError(f"on {self.settings.label}, the board helper ({args[0]}) failed "
                              f"(exit {result.status}):\n{tail}")
        try:
            return json.loads(result.out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise RemoteError(f"{self.settings.label}: the board helper printed no JSON: "
                              f"{(result.out + result.err)[-500:]}") from None


def _hop(text: str, board: SshSettings) -> SshSettings:
    """A ProxyJump hop, resolved through the same config; the board's keys when the config
    names none for it."""
    hop = resolve_ssh(SshSpec.parse(text.strip()), known_hosts=board.known_hosts,
                      accept_new=board.accept_new, config_file=board.config_file,
                      connect_timeout_s=board.connect_timeout_s)
    if not hop.identity_files:
        hop = replace(hop, identity_files=board.identity_files)
    return hop


def _short(command: str) -> str:
    return command if len(command) < 160 else command[:157] + "..."


def _login_failure(exc: BaseException) -> Optional[str]:
    """What a failed connect lacked, when it is the login: "key passphrase", "password", or
    "nothing" (paramiko's "No authentication methods available": no key file, no ssh-agent
    key and no password to offer; the board was reached). None: not a login failure."""
    import paramiko

    if isinstance(exc, paramiko.PasswordRequiredException):
        return "key passphrase"
    if isinstance(exc, paramiko.AuthenticationException):
        return "password"
    if isinstance(exc, paramiko.SSHException) and "No authentication methods" in str(exc):
        return "nothing"
    return None


def _open(settings: SshSettings, check: HostKeyCheck, sock: Any) -> Any:
    import paramiko

    client = paramiko.SSHClient()
    check.load_into(client)
    client.set_missing_host_key_policy(check)
    key_files = [str(f) for f in settings.identity_files if f.is_file()]
    missing = [str(f) for f in settings.identity_files if not f.is_file()]
    if missing and settings.explicit_identity is not None:
        from edgetune.host.errors import NotFoundError
        raise NotFoundError(f"the SSH key {missing[0]} (--identity) does not exist")
    kwargs = dict(hostname=settings.hostname, port=settings.port, username=settings.user,
                  key_filename=key_files or None, timeout=settings.connect_timeout_s,
                  banner_timeout=settings.connect_timeout_s,
                  auth_timeout=settings.connect_timeout_s, sock=sock, allow_agent=True,
                  look_for_keys=True)
    secret: Optional[str] = None
    for attempt in range(2):
        try:
            client.connect(**kwargs, password=secret, passphrase=secret)
            return client
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise check.changed(settings.hostname, settings.port, exc.key,
                                exc.expected_key) from None
        except AuthError:
            client.close()
            raise
        except (OSError, paramiko.SSHException, EOFError) as exc:
            login = _login_failure(exc)
            if login is None:
                client.close()
                raise UnreachableError(f"cannot reach {settings.label} over SSH: {exc}",
                                       hint="check the address and port (--ssh USER@HOST[:PORT]) "
                                            "and that sshd runs on the board") from None
            if attempt == 0:
                secret = _secret(f"{settings.label} "
                                 f"{'password' if login == 'nothing' else login}: ")
                if secret:
                    continue
            client.close()
            offered = ("refused every key (and password) offered" if login != "nothing" else
                       "was reached, but there was no key (file or ssh-agent) or password to "
                       "offer it")
            raise AuthError(f"{settings.label} {offered}: {exc}",
                            hint="pass --identity KEY, load the key into ssh-agent, or give "
                                 f"the password/passphrase at the prompt or in ${PASSWORD_ENV}"
                            ) from None
    raise AssertionError("unreachable")  # pragma: no cover


__all__ = ["PASSWORD_ENV", "RemoteError", "Result", "SshSession"]
