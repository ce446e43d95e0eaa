"""Boards taken out of fleet rotation, kept in the results database (tables ``quarantine`` and
``fleet_job_streaks``, revision 0003).

A board is quarantined by a failed ``edgetune fleet check`` (source ``check``), by failing
``failures_to_quarantine`` fleet jobs in a row (source ``jobs``, default 3), or by hand
(``manual``). Fleet runs skip it (``quarantine_skip`` for ``selectors.select``) and say so,
until ``edgetune fleet release NAME`` or a passing ``fleet check`` releases it. Released
entries stay, as the board's history. Several hosts sharing a PostgreSQL results database
share the quarantine: a partial unique index keeps one active entry per board, and the
failure count is one atomic upsert.

    book = QuarantineBook.open(store)             # a ResultsStore (its engine)
    book.note_job("board3", ok=False, reason="agent restarted mid-run", run_id=run)
    book.active()                                 # {name: QuarantineEntry}
    book.release("board3")
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, TextIO, Tuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from edgetune.host.results.engine import WRITE
from edgetune.host.results.schema import fleet_job_streaks, quarantine

FAILURES_TO_QUARANTINE = 3       # fleet jobs failed in a row that quarantine a board
SOURCES = ("check", "jobs", "manual")
MAX_REASON = 2000                # characters kept of a reason (a job's error can be long)


def _utc(value: Optional[_dt.datetime]) -> Optional[_dt.datetime]:
    """SQLite keeps no zone: what it returns was written as UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=_dt.timezone.utc)
    return value


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)


@dataclass(frozen=True)
class QuarantineEntry:
    """One quarantine of one board: active while ``released_at`` is None."""

    device: str
    reason: str
    since: _dt.datetime
    source: str                          # check, jobs, manual
    run_id: Optional[str] = None         # the fleet check or fleet run that quarantined it
    released_at: Optional[_dt.datetime] = None
    released_by: Optional[str] = None    # "release", "check <id>"

    @property
    def active(self) -> bool:
        return self.released_at is None

    @property
    def since_text(self) -> str:
        return self.since.strftime("%Y-%m-%d %H:%M:%SZ")

    def describe(self) -> str:
        """``quarantined since 2026-12-04 21:30:00Z: <reason>``"""
        return f"quarantined since {self.since_text}: {self.reason}"

    def skip_message(self) -> str:
        """What a fleet command prints when it leaves the board out."""
        return (f"skipping {self.device}: {self.describe()}; "
                f"`edgetune fleet release {self.device}` to bring it back")

    def as_json(self) -> Dict[str, Any]:
        return {"device": self.device, "reason": self.reason, "since": self.since.isoformat(),
                "source": self.source, "run_id": self.run_id,
                "released_at": self.released_at.isoformat() if self.released_at else None,
                "released_by": self.released_by}

    @classmethod
    def from_row(cls, row: Any) -> "QuarantineEntry":
        return cls(device=row.device_name, reason=row.reason, since=_utc(row.since),  # type: ignore[arg-type]
                   source=row.source, run_id=row.run_id, released_at=_utc(row.released_at),
                   released_by=row.released_by)


class QuarantineBook:
    """The quarantine in one results database (``engine``: a ``ResultsStore``'s, already at
    revision 0003 or later). Every method is one transaction; safe to share between threads."""

    def __init__(self, engine: Engine,
                 failures_to_quarantine: int = FAILURES_TO_QUARANTINE) -> None:
        if failures_to_quarantine < 1:
            raise ValueError("failures_to_quarantine must be at least 1")
        self.engine = engine
        self.failures_to_quarantine = failures_to_quarantine

    @classmethod
    def open(cls, store: Any,
             failures_to_quarantine: int = FAILURES_TO_QUARANTINE) -> "QuarantineBook":
        """The book of a ``ResultsStore`` (opening the store upgraded its schema)."""
        return cls(store.engine, failures_to_quarantine)

    # ------------------------------------------------------------------ reading
    def active(self) -> Dict[str, QuarantineEntry]:
        """Every board under quarantine now, by name."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(quarantine).where(quarantine.c.released_at.is_(None))
                                .order_by(quarantine.c.since, quarantine.c.id)).all()
        return {row.device_name: QuarantineEntry.from_row(row) for row in rows}

    def list_active(self) -> List[QuarantineEntry]:
        return list(self.active().values())

    def get(self, name: str) -> Optional[QuarantineEntry]:
        """The board's active quarantine, or None."""
        with self.engine.connect() as conn:
            return self._active_entry(conn, name)

    def history(self, name: Optional[str] = None, limit: int = 100) -> List[QuarantineEntry]:
        """Quarantines, active and released, newest first (one board's with ``name``)."""
        query = sa.select(quarantine).order_by(quarantine.c.since.desc(),
                                               quarantine.c.id.desc()).limit(limit)
        if name is not None:
            query = query.where(quarantine.c.device_name == name)
        with self.engine.connect() as conn:
            return [QuarantineEntry.from_row(row) for row in conn.execute(query)]

    def failures_in_a_row(self, name: str) -> int:
        with self.engine.connect() as conn:
            value = conn.execute(sa.select(fleet_job_streaks.c.failures).where(
                fleet_job_streaks.c.device_name == name)).scalar()
        return int(value or 0)

    # ------------------------------------------------------------------ writing
    def quarantine(self, name: str, reason: str, source: str = "manual",
                   run_id: Optional[str] = None) -> QuarantineEntry:
        """Quarantine ``name`` (a board already under quarantine keeps its first entry, which
        is returned unchanged)."""
        if source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(SOURCES)}, not {source!r}")
        with self._write() as conn:
            return self._quarantine(conn, name, reason, source, run_id)

    def release(self, name: str, by: str = "release") -> Optional[QuarantineEntry]:
        """End the board's quarantine (and its count of failed jobs): the released entry, or
        None when the board was not quarantined."""
        with self._write() as conn:
            entry = self._active_entry(conn, name)
            self._reset_streak(conn, name)
            if entry is None:
                return None
            when = _now()
            conn.execute(quarantine.update().where(quarantine.c.device_name == name,
                                                   quarantine.c.released_at.is_(None))
                         .values(released_at=when, released_by=by[:200]))
        return QuarantineEntry(entry.device, entry.reason, entry.since, entry.source,
                               entry.run_id, when, by[:200])

    def note_job(self, name: str, ok: bool, reason: str = "",
                 run_id: Optional[str] = None) -> Optional[QuarantineEntry]:
        """Count one fleet job of board ``name``: a success resets its count of failures in a
        row; the ``failures_to_quarantine``-th failure in a row quarantines it (source
        ``jobs``, the last failure's reason) and resets the count. Returns the new quarantine
        entry when this call made one, else None."""
        with self._write() as conn:
            if ok:
                self._reset_streak(conn, name)
                return None
            failures = self._count_failure(conn, name, reason)
            if failures < self.failures_to_quarantine:
                return None
            self._reset_streak(conn, name)
            if self._active_entry(conn, name) is not None:
                return None
            why = (f"{failures} fleet jobs failed in a row; the last: "
                   f"{reason or 'no reason given'}")
            return self._quarantine(conn, name, why, "jobs", run_id)

    # ------------------------------------------------------------------ selection
    def skip(self) -> Callable[[Any], Optional[str]]:
        """For ``selectors.select(..., skip=book.skip())``: a board's quarantine, as the
        reason it is left out (read once, now)."""
        active = self.active()

        def reason(device: Any) -> Optional[str]:
            entry = active.get(device.name)
            return entry.skip_message() if entry is not None else None
        return reason

    # ------------------------------------------------------------------ internals
    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        """A write transaction (SQLite: BEGIN IMMEDIATE, so read-then-write is not raced)."""
        with self.engine.connect().execution_options(**WRITE) as conn, conn.begin():
            yield conn

    @staticmethod
    def _active_entry(conn: Connection, name: str) -> Optional[QuarantineEntry]:
        row = conn.execute(sa.select(quarantine).where(
            quarantine.c.device_name == name, quarantine.c.released_at.is_(None))).first()
        return QuarantineEntry.from_row(row) if row is not None else None

    def _quarantine(self, conn: Connection, name: str, reason: str, source: str,
                    run_id: Optional[str]) -> QuarantineEntry:
        existing = self._active_entry(conn, name)
        if existing is not None:
            return existing
        entry = QuarantineEntry(name, (reason or "no reason given")[:MAX_REASON], _now(),
                                source, run_id)
        # Another host may insert between the read and this insert: the partial unique index
        # refuses the second active entry, inside a savepoint so the transaction goes on.
        try:
            with conn.begin_nested():
                conn.execute(quarantine.insert().values(
                    device_name=name, reason=entry.reason, since=entry.since, source=source,
                    run_id=run_id))
        except sa.exc.IntegrityError:
            found = self._active_entry(conn, name)
            if found is None:
                raise
            return found
        return entry

    @staticmethod
    def _reset_streak(conn: Connection, name: str) -> None:
        conn.execute(fleet_job_streaks.delete().where(fleet_job_streaks.c.device_name == name))

    @staticmethod
    def _count_failure(conn: Connection, name: str, reason: str) -> int:
        """One more failure in a row (an atomic upsert on either database): the new count."""
        if conn.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
        values = {"device_name": name, "failures": 1, "last_reason": reason[:MAX_REASON],
                  "updated": _now()}
        statement = insert(fleet_job_streaks).values(**values)
        statement = statement.on_conflict_do_update(
            index_elements=[fleet_job_streaks.c.device_name],
            set_={"failures": fleet_job_streaks.c.failures + 1,
                  "last_reason": statement.excluded.last_reason,
                  "updated": statement.excluded.updated},
        ).returning(fleet_job_streaks.c.failures)
        return int(conn.execute(statement).scalar_one())


def announce_skipped(skipped: Iterable[Tuple[Any, str]], stream: Optional[TextIO] = None) -> None:
    """Print why each left-out board was left out (``select``'s second list; stderr)."""
    for _device, reason in skipped:
        print(f"edgetune: {reason}", file=stream or sys.stderr)
