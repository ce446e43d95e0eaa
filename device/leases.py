"""Board leases: one host certificate's measurements at a time.

A lease is held by the certificate name (CN) of the caller that asked for it, for a time to
live (``ttl_s``, within ``[limits] min_lease_ttl_s``..``max_lease_ttl_s`` of agent.toml) that
the holder renews while it works. One host may hold several *claims* at once (its fleet run
and a ``bench`` in another terminal, each renewing and releasing its own): the board stays
leased to that name until the last claim is released or expires. While it is leased:

- another name's ``SubmitJob`` and ``DeleteBlob`` are refused, and so is cancelling a job that
  is not its own, with FAILED_PRECONDITION naming the holder and the expiry (and the trailing
  metadata ``x-edgetune-lease-holder`` / ``x-edgetune-lease-expires-unix``);
- uploads and every read-only call stay open to all: storing a blob changes nothing that is
  measured, and lets the next host stage its models while it waits;
- jobs queued before the lease was granted still run (one job at a time, as always), so the
  holder's first job may wait behind them.

Nothing runs in the background: a claim past its expiry is dropped whenever the book is
consulted, so a host that died frees the board by itself. The book is kept in
``<store>/leases.json`` (written to a temporary file, fsynced, renamed), so a lease survives an
agent restart until its expiry. Expiries are wall-clock times (they must outlive the process);
a remaining time longer than ``max_lease_ttl_s`` (the clock went back, as on a board without
a real-time clock before NTP) is cut to it, so no lease outlives that bound.

``LeaseBook`` is thread-safe; the servicer changes it from its I/O threads (the file write)
and checks it on the event loop.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from edgetune.device.errors import FailedPrecondition, InvalidArgument
from edgetune.device.safefs import fsync_dir, open_file
from edgetune.protos.leases import LEASE_EXPIRES_METADATA, LEASE_HOLDER_METADATA, Lease

log = logging.getLogger("edgetune.agent.leases")

FILE_NAME = "leases.json"
FILE_VERSION = 1
LEASE_ID_CHARS = 32


class LeaseHeld(FailedPrecondition):
    """The board is leased to another certificate name: FAILED_PRECONDITION naming the holder
    and the expiry, with both in trailing metadata."""

    def __init__(self, message: str, holder: str, expires_unix: float) -> None:
        super().__init__(message)
        self.holder = holder
        self.expires_unix = expires_unix

    @property
    def trailing_metadata(self) -> Tuple[Tuple[str, str], ...]:
        return ((LEASE_HOLDER_METADATA, self.holder),
                (LEASE_EXPIRES_METADATA, repr(float(self.expires_unix))))


@dataclass(frozen=True)
class Claim:
    lease_id: str
    expires_unix: float
    ttl_s: float


def _when(unix: float, now: float) -> str:
    """"2026-12-04 21:40:03 UTC (in 245 s)"."""
    stamp = dt.datetime.fromtimestamp(unix, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{stamp} (in {max(0.0, unix - now):.0f} s)"


class LeaseBook:
    """The board's lease: a holder name and its claims. ``path``: where it is kept (None: in
    memory only). ``clock``: seconds since the epoch (tests move it)."""

    def __init__(self, path: Optional[Path], min_ttl_s: float, max_ttl_s: float, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path) if path is not None else None
        self.min_ttl_s = float(min_ttl_s)
        self.max_ttl_s = float(max_ttl_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._holder = ""
        self._claims: Dict[str, Claim] = {}
        if self.path is not None:
            self._load(self.path)

    # ------------------------------------------------------------------ reading
    def current(self) -> Tuple[str, float]:
        """(holder, when the board is free again); ("", 0.0) when it is free."""
        with self._lock:
            self._expire(self._clock())
            if not self._claims:
                return "", 0.0
            return self._holder, max(c.expires_unix for c in self._claims.values())

    def check(self, caller: str, action: str) -> None:
        """Raise LeaseHeld when the board is leased to another name than ``caller``;
        ``action`` says what is refused ("submit jobs")."""
        holder, until = self.current()
        if holder and holder != caller:
            now = self._clock()
            raise LeaseHeld(
                f"this board is leased to {holder!r} until {_when(until, now)}: "
                f"{caller or 'a caller without a certificate name'} may not {action} until the "
                f"lease ends or {holder} releases it (uploads and read-only calls still work)",
                holder, until)

    # ------------------------------------------------------------------ changing
    def acquire(self, caller: str, ttl_s: float) -> Lease:
        """A new claim for ``caller`` (the board free or held by ``caller`` already)."""
        ttl = self._ttl(ttl_s, "ttl_s")
        if not caller:
            raise FailedPrecondition("leases are held by certificate name, and the caller's "
                                     "certificate has none; issue it with `edgetune certs issue "
                                     "host NAME`")
        with self._lock:
            now = self._clock()
            self._expire(now)
            self._refuse_other(caller, "acquire a lease", now)
            claim = Claim(secrets.token_hex(LEASE_ID_CHARS // 2), now + ttl, ttl)
            self._holder = caller
            self._claims[claim.lease_id] = claim
            self._save()
            lease = self._lease(claim, now)
        log.info("leased to %s for %.0f s (claim %s, %d in all)", caller, ttl,
                 claim.lease_id[:8], lease.claims)
        return lease

    def renew(self, caller: str, lease_id: str, ttl_s: float) -> Lease:
        """Extend ``caller``'s claim ``lease_id`` (every claim of ``caller`` when "") by
        ``ttl_s`` from now (0: the ttl it was granted with); the claim answers (the one with
        the latest expiry when renewing all)."""
        ttl = self._ttl(ttl_s, "ttl_s") if ttl_s else 0.0
        with self._lock:
            now = self._clock()
            self._expire(now)
            self._refuse_other(caller, "renew the lease", now)
            ids = [lease_id] if lease_id else list(self._claims)
            if not ids or any(i not in self._claims for i in ids):
                what = f"lease {lease_id}" if lease_id else "a lease"
                raise FailedPrecondition(
                    f"{caller} holds no {what} on this board (it expired or was released); "
                    "acquire a new one")
            for i in ids:
                old = self._claims[i]
                keep = ttl or old.ttl_s
                self._claims[i] = Claim(i, now + keep, keep)
            self._save()
            claim = max((self._claims[i] for i in ids), key=lambda c: c.expires_unix)
            return self._lease(claim, now)

    def release(self, caller: str, lease_id: str) -> Tuple[bool, Optional[Lease]]:
        """End ``caller``'s claim ``lease_id`` (every claim of ``caller`` when ""): (whether a
        claim ended, the caller's claim left with the latest expiry, if any)."""
        with self._lock:
            now = self._clock()
            self._expire(now)
            self._refuse_other(caller, "release the lease", now)
            if lease_id:
                released = self._claims.pop(lease_id, None) is not None
            else:
                released = bool(self._claims)
                self._claims.clear()
            if released:
                self._save()
            left = max(self._claims.values(), key=lambda c: c.expires_unix, default=None)
            remaining = self._lease(left, now) if left is not None else None
        if released:
            log.info("%s released %s%s", caller, f"claim {lease_id[:8]}" if lease_id
                     else "its lease", "" if remaining else "; the board is free")
        return released, remaining

    # ------------------------------------------------------------------ inside the lock
    def _ttl(self, value: float, name: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                not math.isfinite(value) or not self.min_ttl_s <= value <= self.max_ttl_s:
            raise InvalidArgument(
                f"{name} must be between {self.min_ttl_s:g} and {self.max_ttl_s:g} seconds "
                f"(got {value!r}); the bounds are [limits] min_lease_ttl_s and max_lease_ttl_s "
                "in the agent's agent.toml")
        return float(value)

    def _refuse_other(self, caller: str, action: str, now: float) -> None:
        if self._claims and self._holder != caller:
            until = max(c.expires_unix for c in self._claims.values())
            raise LeaseHeld(
                f"this board is leased to {self._holder!r} until {_when(until, now)}; "
                f"{caller or 'a caller without a certificate name'} cannot {action} until it "
                f"ends or {self._holder} releases it", self._holder, until)

    def _expire(self, now: float) -> None:
        gone = [i for i, c in self._claims.items() if c.expires_unix <= now]
        for i in gone:
            del self._claims[i]
        if gone:
            log.info("%d lease claim(s) of %s expired%s", len(gone), self._holder,
                     "" if self._claims else "; the board is free")
            if not self._claims:
                self._holder = ""
            # Not written down here (this may run on the event loop): the file's expired
            # claims are dropped when it is read, and the next change rewrites it.

    def _lease(self, claim: Claim, now: float) -> Lease:
        return Lease(holder=self._holder, lease_id=claim.lease_id,
                     expires_unix=claim.expires_unix, ttl_s=claim.ttl_s,
                     remaining_s=max(0.0, claim.expires_unix - now),
                     board_expires_unix=max(c.expires_unix for c in self._claims.values()),
                     claims=len(self._claims))

    # ------------------------------------------------------------------ the file
    def _save(self) -> None:
        if self.path is None:
            return
        data = {"version": FILE_VERSION, "holder": self._holder if self._claims else "",
                "claims": [{"lease_id": c.lease_id, "expires_unix": c.expires_unix,
                            "ttl_s": c.ttl_s} for c in self._claims.values()]}
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open_file(tmp, "w") as f:      # 0600, never through a symbolic link
                json.dump(data, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            fsync_dir(self.path.parent)
        except OSError as exc:   # the lease still holds in memory; a restart would lose it
            log.error("cannot keep the lease in %s (%s): it will not survive a restart",
                      self.path, exc.strerror or exc)

    def _load(self, path: Path) -> None:
        # A save cut off by a crash leaves its temporary file (the book itself is whole:
        # the rename had not happened). Nothing else writes it now: remove it.
        try:
            path.with_name(path.name + ".tmp").unlink()
            log.info("removed %s.tmp left by an interrupted save", path.name)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove %s.tmp: %s", path.name, exc.strerror or exc)
        try:
            with open_file(path, "r") as f:
                data = json.load(f)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("cannot read the lease file %s (%s); starting with the board free",
                        path, exc)
            return
        now = self._clock()
        claims: List[Claim] = []
        try:
            holder = data["holder"]
            for item in data["claims"]:
                lease_id, expires, ttl = item["lease_id"], float(item["expires_unix"]), \
                    float(item["ttl_s"])
                if not isinstance(lease_id, str) or len(lease_id) != LEASE_ID_CHARS:
                    raise ValueError(f"lease id {lease_id!r}")
                # A clock that went back must not stretch a lease beyond the longest allowed.
                claims.append(Claim(lease_id, min(expires, now + self.max_ttl_s), ttl))
            if not isinstance(holder, str) or (claims and not holder):
                raise ValueError(f"holder {holder!r}")
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("the lease file %s holds something unexpected (%s); starting with the "
                        "board free", path, exc)
            return
        self._holder = holder
        self._claims = {c.lease_id: c for c in claims if c.expires_unix > now}
        if self._claims:
            until = max(c.expires_unix for c in self._claims.values())
            log.info("the board is leased to %s until %s (kept across the restart)", holder,
                     _when(until, now))
        else:
            self._holder = ""


__all__ = ["FILE_NAME", "LeaseBook", "LeaseHeld"]
