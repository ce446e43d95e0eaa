"""How a fleet run treats its boards: its settings (retries and their back-off, parallelism,
deadlines, the lease, --strict), which failures are worth a retry, and how a failed row's
reason names what happened (``unreachable:``, ``refused:``, ``leased:``, ``busy:``,
``lost mid-run:``, ``agent restarted mid-run:``, ``timeout:``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List

from edgetune.host.errors import (AuthError, BusyError, EdgetuneError, LeaseHeldError,
                                  TimeoutError_, UnreachableError)


@dataclass(frozen=True)
class FleetSettings:
    retries: int = 2                    # extra attempts after a transient failure
    backoff_s: float = 1.0              # first wait before a retry; doubles, up to backoff_max_s
    backoff_max_s: float = 10.0
    parallel: int = 128                 # boards worked on at once
    upload_parallel: int = 8            # uploads in flight across the fleet
    timeout_s: float = 30.0             # deadline of each call
    connect_timeout_s: float = 10.0
    reattach_window_s: float = 60.0     # how long a dropped watch is re-attached
    lease_ttl_s: float = 0.0            # 0: take no lease
    strict: bool = False                # a board whose certificate names another board: refused
    queue_wait_s: float = 600.0         # a board whose queue others' jobs fill: waited this long
    window_chunks: int = 8              # upload chunks a shared reading keeps for slower boards

    def __post_init__(self) -> None:
        if self.retries < 0 or self.parallel < 1 or self.upload_parallel < 1 or \
                self.window_chunks < 1 or not self.queue_wait_s >= 0:
            raise ValueError("retries >= 0, parallel >= 1, upload_parallel >= 1, "
                             "window_chunks >= 1 and queue_wait_s >= 0")

    def client_settings(self) -> Any:
        from edgetune.host.client import ClientSettings

        # cert_warning_days=-1: the caller checked our own certificate once for the fleet
        return ClientSettings(timeout_s=self.timeout_s, connect_timeout_s=self.connect_timeout_s,
                              reattach_window_s=self.reattach_window_s, cert_warning_days=-1)


class Cancelled(Exception):
    """Ctrl-C: the main thread asked every board to stop."""


class Restarted(UnreachableError):
    """The job came back interrupted: the agent restarted while it ran (retried)."""


# and so Restarted; BusyError: the agent's back-pressure (too many calls open; a full job
# queue is waited out in board_jobs before it gets here)
TRANSIENT = (UnreachableError, TimeoutError_, BusyError)


def reason(error: BaseException, *, mid_run: bool) -> str:
    """A row's error: what kind of failure, then the message."""
    if isinstance(error, Restarted):
        return f"agent restarted mid-run: {error.message}"
    if isinstance(error, BusyError):
        return f"busy: {error.message}"
    if isinstance(error, LeaseHeldError):
        return f"leased: {error.message}"
    if isinstance(error, AuthError):
        return f"refused: {error.message}"
    if isinstance(error, UnreachableError):
        return f"{'lost mid-run' if mid_run else 'unreachable'}: {error.message}"
    if isinstance(error, TimeoutError_):
        return f"timeout: {error.message}"
    if isinstance(error, EdgetuneError):
        return error.message
    return f"internal error: {error!r}"


def backoff_delays(settings: FleetSettings) -> List[float]:
    """The waits before each retry (for the docs and tests)."""
    return [min(settings.backoff_max_s, settings.backoff_s * 2 ** n)
            for n in range(settings.retries)]
