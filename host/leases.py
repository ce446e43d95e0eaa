"""Holding a board's lease while a command measures: acquire, renew in the background,
release at the end (``BoardSession.lease`` is the way in).

    with board.lease(60) as held:          # acquires; renews every ~20 s in a thread
        board.benchmark(...)               # another host's jobs are refused meanwhile
    # released here, also after an exception or Ctrl-C

The renewing thread never raises into the caller. When a renewal fails for good (the claim
expired while the host was unreachable or suspended, or another host took the board), it
logs a warning once, sets ``held.lost`` (``held.lost_reason`` says why, ``held.losses``
counts the losses) and keeps trying to acquire the board again; when that succeeds it says so
and ``held.lost`` is cleared (the measurements in between were not protected: a caller that
cares checks ``held.losses`` at the end). A failing release is a warning too: the lease then ends by itself at its
expiry. See docs/agent.md, "Leases".
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Optional

from edgetune.host.errors import (EdgetuneError, LeaseHeldError, TimeoutError_, UnreachableError,
                                  UsageError)
from edgetune.protos.leases import Lease, format_utc

log = logging.getLogger("edgetune.host.leases")

DEFAULT_TTL_S = 60.0            # what bench (and BoardSession.lease) asks for
RENEW_FRACTION = 1 / 3          # renew after a third of the time to live
NOT_PROTECTED = ("measurements on this board are not protected from other hosts' jobs "
                 "(see docs/agent.md, \"Leases\")")


def check_ttl(ttl_s: Any, flag: str = "--ttl") -> float:
    """``ttl_s`` as a float if it is a finite positive number of seconds, else UsageError (the
    agent's own bounds, [limits] min/max_lease_ttl_s, are checked by the agent)."""
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, (int, float)) or \
            not math.isfinite(ttl_s) or ttl_s <= 0:
        raise UsageError(f"{flag} must be a positive number of seconds (got {ttl_s!r})",
                         hint="e.g. --ttl 300; the board's agent allows 5 to 3600 s unless "
                              "its agent.toml says otherwise")
    return float(ttl_s)


@dataclass
class HeldLease:
    """A lease a command holds (or, ``supported`` False, could not take from an older agent).
    ``lease`` is the agent's latest answer; ``lost``: lost right now; ``losses``: how often it
    was lost while held (0: every job ran under it)."""

    board: str
    ttl_s: float
    lease: Optional[Lease] = None
    supported: bool = True
    lost: bool = False
    lost_reason: str = ""
    losses: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def lease_id(self) -> str:
        return self.lease.lease_id if self.lease is not None else ""

    @property
    def holder(self) -> str:
        return self.lease.holder if self.lease is not None else ""

    @property
    def expires_unix(self) -> float:
        return self.lease.expires_unix if self.lease is not None else 0.0

    def as_dict(self) -> dict:
        return {"board": self.board, "supported": self.supported, "ttl_s": self.ttl_s,
                "lost": self.lost, "losses": self.losses,
                "lost_reason": self.lost_reason or None,
                "lease": self.lease.as_dict() if self.lease is not None else None}


def lease_scope(board: Any, ttl_s: float) -> ContextManager[Optional[HeldLease]]:
    """``board.lease(ttl_s, required=False)`` for a command's measurements, or (``ttl_s`` 0:
    ``--no-lease``) a scope that holds nothing."""
    if not ttl_s:
        return contextlib.nullcontext()
    return board.lease(ttl_s, required=False)


class LeaseKeeper:
    """Acquires a lease through ``client`` (an ``AgentClient``), renews it every
    ``ttl_s / 3`` in a daemon thread, releases it at ``close``. ``warn``: where warnings go
    (default: this module's logger)."""

    def __init__(self, client: Any, board: str, ttl_s: float, *,
                 warn: Optional[Callable[[str], None]] = None) -> None:
        self.client = client
        self.board = board
        self.ttl_s = check_ttl(ttl_s, "the lease's ttl_s")
        self.held = HeldLease(board=board, ttl_s=self.ttl_s)
        self._warn = warn or log.warning
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        timeout = getattr(getattr(client, "settings", None), "timeout_s", 30.0)
        self._call_timeout = max(1.0, min(timeout, self.ttl_s * RENEW_FRACTION))

    def acquire(self) -> HeldLease:
        """Take the lease (LeaseHeldError, LeasesUnsupportedError, ... as the client raises
        them) and start renewing it."""
        self.held.lease = self.client.acquire_lease(self.ttl_s)
        log.info("leased %s until %s (claim %s)", self.board,
                 format_utc(self.held.expires_unix), self.held.lease_id[:8])
        self._thread = threading.Thread(target=self._renew_loop, daemon=True,
                                        name=f"edgetune-lease-{self.board}")
        self._thread.start()
        return self.held

    def close(self) -> None:
        """Stop renewing and release the claim (a failure is a warning: it expires anyway)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self._call_timeout + 5.0)
        lease_id = self.held.lease_id
        if not lease_id or not self.held.supported or self.held.lost:
            return
        try:
            released, _ = self.client.release_lease(lease_id, timeout=self._call_timeout)
        except EdgetuneError as exc:
            self._warn(f"could not release the lease on {self.board} ({exc.message}); it ends "
                       f"by itself at {format_utc(self.held.expires_unix)}")
            return
        log.info("released the lease on %s%s", self.board, "" if released else
                 " (it had ended already)")

    # ------------------------------------------------------------------ the thread
    def _renew_loop(self) -> None:
        interval = self.ttl_s * RENEW_FRACTION
        last_ok = time.monotonic()
        while not self._stop.wait(interval):
            if self.held.lost:
                self._reacquire()
                continue
            try:
                lease = self.client.renew_lease(self.held.lease_id, self.ttl_s,
                                                timeout=self._call_timeout)
            except (UnreachableError, TimeoutError_) as exc:
                if time.monotonic() - last_ok < self.ttl_s:
                    log.debug("renewing the lease on %s failed (%s); trying again", self.board,
                              exc.message)
                    continue
                self._lose(f"it could not be renewed for {self.ttl_s:g} s ({exc.message}), "
                           "so it has probably expired")
                continue
            except LeaseHeldError as exc:
                self._lose(f"the board is now leased to {exc.holder!r} until "
                           f"{format_utc(exc.expires_unix)}")
                continue
            except EdgetuneError as exc:
                self._lose(exc.message)
                continue
            except Exception as exc:  # noqa: BLE001 - the thread must not die silently
                self._lose(f"{type(exc).__name__}: {exc}")
                continue
            with self.held._lock:
                self.held.lease = lease
            last_ok = time.monotonic()

    def _lose(self, reason: str) -> None:
        with self.held._lock:
            self.held.lost, self.held.lost_reason = True, reason
            self.held.losses += 1
        self._warn(f"lost the lease on {self.board}: {reason}; until it is taken again, "
                   f"{NOT_PROTECTED}")
        self._reacquire()

    def _reacquire(self) -> None:
        if self._stop.is_set():
            return
        try:
            lease = self.client.acquire_lease(self.ttl_s, timeout=self._call_timeout)
        except EdgetuneError as exc:
            log.debug("taking the lease on %s again failed: %s", self.board, exc.message)
            return
        with self.held._lock:
            self.held.lease = lease
            self.held.lost = False
        self._warn(f"took the lease on {self.board} again (until {format_utc(lease.expires_unix)}"
                   f"); what ran while it was lost ({self.held.lost_reason}) was not protected")


__all__ = ["DEFAULT_TTL_S", "HeldLease", "LeaseKeeper", "NOT_PROTECTED", "check_ttl",
           "lease_scope"]
