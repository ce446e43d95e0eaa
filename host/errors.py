"""The host's exception hierarchy; the exit codes are ``edgetune.exitcodes`` (both CLIs').

Every error a user can cause is an ``EdgetuneError`` whose message names the cause and the
fix; ``edgetune.host.cli.main`` prints it (or a JSON document with ``--json``) and exits with its code.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Iterator

from edgetune.exitcodes import ExitStatus  # the one table of both CLIs

if TYPE_CHECKING:  # pragma: no cover
    from edgetune.certs import CertError


class EdgetuneError(Exception):
    """Base of every error the CLI reports as a message instead of a traceback."""

    exit_status: ExitStatus = ExitStatus.ERROR

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


class UsageError(EdgetuneError):
    exit_status = ExitStatus.USAGE


class BadInputError(EdgetuneError):
    exit_status = ExitStatus.BAD_INPUT


class NotFoundError(EdgetuneError):
    exit_status = ExitStatus.NOT_FOUND


class UnreachableError(EdgetuneError):
    exit_status = ExitStatus.UNREACHABLE


class AuthError(EdgetuneError):
    exit_status = ExitStatus.AUTH


class TimeoutError_(EdgetuneError):
    exit_status = ExitStatus.TIMEOUT


class TargetNotMetError(EdgetuneError):
    exit_status = ExitStatus.TARGET_NOT_MET


class AgentError(EdgetuneError):
    exit_status = ExitStatus.AGENT


class IncompatibleError(EdgetuneError):
    """The agent sent a message this edgetune cannot read (a newer or older agent)."""

    exit_status = ExitStatus.INCOMPATIBLE


class BusyError(AgentError):
    """The agent refused for now, with a hint to retry (its documented back-pressure:
    RESOURCE_EXHAUSTED for a full job queue or too many open calls): the same request may
    succeed later. ``queue_full``: it was the job queue."""

    @property
    def queue_full(self) -> bool:
        return "queue is full" in self.message


class LeaseHeldError(AgentError):
    """The board is leased to another host certificate (``holder``) until ``expires_unix``
    (the agent's clock): the agent refused a job, a renewal or a lease."""

    def __init__(self, message: str, *, holder: str, expires_unix: float,
                 hint: str = "") -> None:
        super().__init__(message, hint=hint)
        self.holder = holder
        self.expires_unix = expires_unix


class LeasesUnsupportedError(IncompatibleError):
    """The agent is older than leases (its lease RPCs are UNIMPLEMENTED)."""

    def __init__(self, message: str, *, agent_version: str = "", hint: str = "") -> None:
        super().__init__(message, hint=hint)
        self.agent_version = agent_version


def host_error(exc: "CertError") -> EdgetuneError:
    """The host error for a ``certs`` error: its class says the exit code (``exit_status``,
    the table both CLIs share), this picks the host error with that code."""
    classes = {ExitStatus.USAGE: UsageError, ExitStatus.NOT_FOUND: NotFoundError,
               ExitStatus.BAD_INPUT: BadInputError, ExitStatus.AUTH: AuthError}
    status = getattr(exc, "exit_status", ExitStatus.AUTH)
    return classes.get(status, AuthError)(str(exc), hint=getattr(exc, "hint", "") or "")


@contextlib.contextmanager
def cert_errors() -> Iterator[None]:
    """Re-raise any ``certs`` error inside the block as the matching host error."""
    from edgetune.certs.errors import CertError

    try:
        yield
    except CertError as exc:
        raise host_error(exc) from exc
