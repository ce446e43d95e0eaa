"""The fleet runs kept in the results database: each run's spec (``fleet_runs``) and one row
per board x model (``fleet_run_rows``: its state, the board's job id once submitted, the result
record's id once measured, the reason when it failed). Revision 0004.

A row is written when its job is submitted (so that ``--resume`` re-attaches a job still
running on the board) and again when it ends. The measurements themselves are result records
(``results``) carrying the run's id in ``run_id``, as any record.
"""

from __future__ import annotations

import datetime as _dt
import threading
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence

import sqlalchemy as sa

from edgetune.host.errors import NotFoundError, UsageError
from edgetune.host.results.engine import WRITE, connection_error
from edgetune.host.results.schema import fleet_run_rows, fleet_runs

# Row states. "pending": not submitted yet; "submitted": queued or running on the board;
# "interrupted": the host stopped (Ctrl-C) while it was on the board; "skipped": the board
# was left out (quarantined).
PENDING, SUBMITTED, DONE, FAILED, INTERRUPTED, SKIPPED = (
    "pending", "submitted", "done", "failed", "interrupted", "skipped")
FINAL = (DONE, FAILED, SKIPPED)


@dataclass(frozen=True)
class RunInfo:
    id: str
    kind: str                       # "benchmark" or "evaluate"
    created: _dt.datetime
    label: str
    selector: str
    spec: Mapping[str, Any]         # FleetRunSpec.as_json()
    devices: tuple                  # board names, in run order
    host: Mapping[str, Any]

    def as_json(self) -> Dict[str, Any]:
        return {"run": self.id, "kind": self.kind, "created": self.created.isoformat(),
                "label": self.label, "devices": list(self.devices), "selector": self.selector,
                "models": [m.get("name") for m in self.spec.get("models") or ()],
                "host": dict(self.host)}


@dataclass(frozen=True)
class RowState:
    device: str
    model_sha256: str
    model_name: str
    position: int
    state: str
    job_id: Optional[str] = None
    result_id: Optional[str] = None
    error: str = ""
    attempts: int = 0


class RunBook:
    """The fleet-run tables of one ``ResultsStore`` (thread-safe: boards report from their
    own threads, one write at a time)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.engine = store.engine
        self._lock = threading.Lock()
        self._turn = threading.Condition()  # row updates: one writer, the others queue
        self._queued: List[Any] = []        # (ticket, statement), oldest first
        self._writing = False
        self._issued = self._written = 0    # tickets given out, tickets written
        self._failed: Dict[int, BaseException] = {}

    # ------------------------------------------------------------------ writing
    def create(self, run_id: str, spec: Any, selector: str, devices: Sequence[str],
               host: Mapping[str, Any]) -> None:
        rows = [{"run_id": run_id, "device_name": device, "model_sha256": model.sha256,
                 "model_name": model.display, "position": n, "state": PENDING, "job_id": None,
                 "result_id": None, "error": "", "attempts": 0, "updated": _now()}
                for device in devices for n, model in enumerate(spec.models)]
        self._write([fleet_runs.insert().values(
            id=run_id, kind=spec.kind, created=_now(), label=spec.label, selector=selector,
            spec=spec.as_json(), devices=list(devices), host=dict(host))],
            rows)

    def update(self, run_id: str, device: str, model_sha256: str, **values: Any) -> None:
        """Set a row's ``state``, ``job_id``, ``result_id``, ``error`` or ``attempts``; returns
        once it is written. Boards' threads updating at once share transactions (group
        commit): the thread that finds no write under way writes every update queued by
        then in one transaction, while the next ones queue for the following one (32 boards
        ending together: a few transactions, not 32 in a row). A failed write is raised in
        every thread whose update it held."""
        values["updated"] = _now()
        statement = (fleet_run_rows.update()
                     .where(fleet_run_rows.c.run_id == run_id)
                     .where(fleet_run_rows.c.device_name == device)
                     .where(fleet_run_rows.c.model_sha256 == model_sha256).values(**values))
        with self._turn:
            self._issued += 1
            ticket = self._issued
            self._queued.append((ticket, statement))
            while self._written < ticket:
                if self._writing:
                    self._turn.wait()
                    continue
                batch, self._queued = self._queued, []
                self._writing = True
                self._turn.release()
                error: Optional[BaseException] = None
                try:
                    self._write([s for _, s in batch])
                except BaseException as exc:  # noqa: BLE001 - raised in each of its threads
                    error = exc
                finally:
                    self._turn.acquire()
                    self._writing = False
                    if error is not None:
                        self._failed.update((t, error) for t, _ in batch)
                    self._written = batch[-1][0]
                    self._turn.notify_all()
            error = self._failed.pop(ticket, None)
        if error is not None:
            raise error

    def _write(self, statements: Sequence[Any], rows: Sequence[Dict[str, Any]] = ()) -> None:
        try:
            with self._lock, self.engine.connect().execution_options(**WRITE) as conn, \
                    conn.begin():
                for statement in statements:
                    conn.execute(statement)
                if rows:
                    conn.execute(fleet_run_rows.insert(), list(rows))
        except sa.exc.DBAPIError as exc:
            raise connection_error(self.store.url, exc) from exc

    # ------------------------------------------------------------------ reading
    def resolve(self, text: str) -> str:
        """A run id from its id or a unique prefix (as ``results show`` takes ids)."""
        prefix = text.strip().upper()
        if not prefix or not prefix.isalnum():
            raise UsageError(f"{text!r} is not a fleet run id", hint="see `edgetune fleet runs`")
        query = (sa.select(fleet_runs.c.id).where(fleet_runs.c.id.startswith(prefix,
                                                                              autoescape=True))
                 .order_by(fleet_runs.c.id).limit(2))
        with self.engine.connect() as conn:
            found = list(conn.execute(query).scalars())
        if not found:
            raise NotFoundError(f"no fleet run {text!r} in {self.store.where}",
                                hint="see `edgetune fleet runs` (or pass the --db it was "
                                     "recorded in)")
        if len(found) > 1:
            raise UsageError(f"fleet run id {text!r} is ambiguous ({found[0]}, {found[1]}, ...)",
                             hint="give more characters of the id")
        return found[0]

    def get(self, text: str) -> RunInfo:
        run_id = self.resolve(text)
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(fleet_runs).where(fleet_runs.c.id == run_id)).one()
        return _info(row)

    def runs(self, limit: Optional[int] = 50) -> List[RunInfo]:
        query = sa.select(fleet_runs).order_by(fleet_runs.c.id.desc())
        if limit:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            return [_info(row) for row in conn.execute(query)]

    def rows(self, run_id: str) -> List[RowState]:
        query = (sa.select(fleet_run_rows).where(fleet_run_rows.c.run_id == run_id)
                 .order_by(fleet_run_rows.c.device_name, fleet_run_rows.c.position))
        with self.engine.connect() as conn:
            found = [RowState(device=r.device_name, model_sha256=r.model_sha256,
                              model_name=r.model_name, position=r.position, state=r.state,
                              job_id=r.job_id, result_id=r.result_id, error=r.error,
                              attempts=r.attempts) for r in conn.execute(query)]
        return found

    def counts(self, run_ids: Sequence[str]) -> Dict[str, Dict[str, int]]:
        """run id -> {state: rows in that state}."""
        out: Dict[str, Dict[str, int]] = {r: {} for r in run_ids}
        if not run_ids:
            return out
        query = (sa.select(fleet_run_rows.c.run_id, fleet_run_rows.c.state, sa.func.count())
                 .where(fleet_run_rows.c.run_id.in_(list(run_ids)))
                 .group_by(fleet_run_rows.c.run_id, fleet_run_rows.c.state))
        with self.engine.connect() as conn:
            for run_id, state, n in conn.execute(query):
                out[run_id][state] = int(n)
        return out


class LockedRecorder:
    """A ``StoreRecorder`` shared by the boards' threads: one record written at a time."""

    def __init__(self, recorder: Any) -> None:
        self.inner = recorder
        self._lock = threading.Lock()

    def __call__(self, run: Any) -> None:
        with self._lock:
            self.inner(run)

    def submitted(self, board: str, job_id: str) -> None:
        with self._lock:
            self.inner.submitted(board, job_id)

    def ready(self) -> None:
        ready = getattr(self.inner, "ready", None)
        if ready is not None:
            ready()

    def result_id(self, run: Any) -> Optional[str]:
        with self._lock:
            return self.inner.result_id(run)


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _info(row: Any) -> RunInfo:
    created = row.created
    if created.tzinfo is None:          # SQLite keeps no zone: it was UTC
        created = created.replace(tzinfo=_dt.timezone.utc)
    return RunInfo(id=row.id, kind=row.kind, created=created, label=row.label,
                   selector=row.selector, spec=row.spec, devices=tuple(row.devices),
                   host=row.host)
