"""The host's exception hierarchy and the CLI's exit codes.

Every error a user can cause is an ``EdgetuneError`` whose message names the cause and the
fix; ``edgetune.host.cli.main`` prints it (or a JSON document with ``--json``) and exits with its code.
"""

from __future__ import annotations

import enum


class ExitStatus(enum.IntEnum):
    """Exit codes of ``edgetune`` (listed in ``edgetune --help``)."""

    OK = 0
    ERROR = 1                # an unexpected failure (a bug: please report it)
    USAGE = 2                # bad flags or arguments
    BAD_INPUT = 3            # an input file, model, dataset or config is invalid
    NOT_FOUND = 4            # a file, model, dataset, job or device that does not exist
    UNREACHABLE = 5          # the agent did not answer (address, port, network, agent down)
    AUTH = 6                 # a certificate, key or passphrase was refused
    TIMEOUT = 7              # a call did not finish in time
    TARGET_NOT_MET = 8       # the command ran, but the requested target was not met
    AGENT = 9                # the agent refused or failed the request (its message says why)
    INTERRUPTED = 130        # Ctrl-C


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
