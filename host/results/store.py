"""``ResultsStore``: add, find, list and remove result records in one database.

    store = ResultsStore.open("sqlite:///.edgetune/results.db")
    record = store.add(Record(kind="bench", model=ModelRef(sha), metrics={...}))
    store.get(record.id[:8])                  # any unique prefix, as git allows
    store.list(ResultFilter(kind="bench", device="board1"), limit=50)

Every write is one transaction: an interrupted command leaves no half record.
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from edgetune.host.errors import NotFoundError, UsageError
from edgetune.host.render import json_safe
from edgetune.host.results import migrate
from edgetune.host.results.engine import (WRITE, as_url, connection_error, create_engine,
                                          safe_url)
from edgetune.host.results.records import ModelRef, Record
from edgetune.host.results.schema import result_samples, results
from edgetune.protos.messages import SignedResult

_ID_PREFIX = re.compile(r"^[0-9A-HJKMNP-TV-Z]{1,26}$")   # Crockford base32, as ULIDs are written
_SIGNATURE_COLUMNS = ("signature", "signed_payload", "signature_algorithm", "agent_cert_pem")
# What listing reads: everything but the signatures (a few KB each; ``get`` reads them).
_LISTED = [c for c in results.c if c.name not in _SIGNATURE_COLUMNS]


@dataclass(frozen=True)
class ResultFilter:
    """Which records ``list`` and ``export`` return (every field optional, all must match)."""

    kind: Optional[str] = None
    model_sha256: Optional[str] = None       # a full hash or a prefix
    device: Optional[str] = None             # inventory name (or address)
    label: Optional[str] = None              # exact, or a glob with *
    since: Optional[_dt.datetime] = None
    run_id: Optional[str] = None


class ResultsStore:
    def __init__(self, engine: Engine, url: str) -> None:
        self.engine = engine
        self.url = url

    @classmethod
    def open(cls, url: str) -> "ResultsStore":
        """The store at ``url`` (a plain path is a SQLite file), upgraded to this schema."""
        url = as_url(url)
        engine = create_engine(url)
        try:
            migrate.ensure_current(engine, url)
        except (OperationalError, DBAPIError) as exc:
            engine.dispose()
            raise connection_error(url, exc) from exc
        except BaseException:
            engine.dispose()
            raise
        return cls(engine, url)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> "ResultsStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def where(self) -> str:
        return safe_url(self.url)

    # ------------------------------------------------------------------ writing

    def add(self, record: Record) -> Record:
        return self.add_many([record])[0]

    def add_many(self, records: Sequence[Record]) -> List[Record]:
        """Store records in one transaction; return them with their ids and times."""
        from ulid import ULID   # 40 ms to import: only writers pay it
        stored = []
        rows, samples = [], []
        for record in records:
            ulid = ULID()
            created = ulid.datetime
            done = record.stored(str(ulid), created)
            stored.append(done)
            rows.append(_row(done))
            if done.samples_ms is not None:
                samples.append({"result_id": done.id, "samples_ms": json_safe(list(done.samples_ms))})
        try:
            with self.engine.connect().execution_options(**WRITE) as conn, conn.begin():
                conn.execute(results.insert(), rows)
                if samples:
                    conn.execute(result_samples.insert(), samples)
        except (OperationalError, DBAPIError) as exc:
            raise connection_error(self.url, exc) from exc
        return stored

    def delete(self, ids: Iterable[str]) -> List[str]:
        """Remove records by id or unique prefix (all resolved before anything is removed)."""
        full = [self.resolve_id(i) for i in ids]
        with self.engine.connect().execution_options(**WRITE) as conn, conn.begin():
            conn.execute(result_samples.delete().where(result_samples.c.result_id.in_(full)))
            conn.execute(results.delete().where(results.c.id.in_(full)))
        return full

    # ------------------------------------------------------------------ reading

    def resolve_id(self, text: str) -> str:
        prefix = text.strip().upper()
        if not _ID_PREFIX.match(prefix):
            raise UsageError(f"{text!r} is not a result id",
                             hint="ids look like 01JF3W0ZP5...; see `edgetune results list`")
        query = (sa.select(results.c.id).where(results.c.id.startswith(prefix, autoescape=True))
                 .order_by(results.c.id).limit(2))
        with self.engine.connect() as conn:
            found = list(conn.execute(query).scalars())
        if not found:
            raise NotFoundError(f"no result {text!r} in {self.where}",
                                hint="see `edgetune results list`")
        if len(found) > 1:
            raise UsageError(f"result id {text!r} is ambiguous ({found[0]}, {found[1]}, ...)",
                             hint="give more characters of the id")
        return found[0]

    def get(self, text: str, *, samples: bool = True) -> Record:
        record_id = self.resolve_id(text)
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(results).where(results.c.id == record_id)).one()
            values = None
            if samples:
                values = conn.execute(sa.select(result_samples.c.samples_ms)
                                      .where(result_samples.c.result_id == record_id)).scalar()
        return _record(row, values)

    def list(self, where: ResultFilter = ResultFilter(), limit: Optional[int] = 50,
             *, newest_first: bool = True) -> List[Record]:
        query = sa.select(*_LISTED)
        for condition in _conditions(where):
            query = query.where(condition)
        query = query.order_by(results.c.id.desc() if newest_first else results.c.id.asc())
        if limit:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            return [_record(row, None) for row in conn.execute(query)]

    def samples_for(self, ids: Sequence[str]) -> Dict[str, Tuple[float, ...]]:
        """The raw samples of the records ``ids`` (full ids) that kept them, in few queries."""
        found: Dict[str, Tuple[float, ...]] = {}
        ids = list(ids)
        with self.engine.connect() as conn:
            for start in range(0, len(ids), 500):
                query = (sa.select(result_samples.c.result_id, result_samples.c.samples_ms)
                         .where(result_samples.c.result_id.in_(ids[start:start + 500])))
                for result_id, values in conn.execute(query):
                    found[result_id] = tuple(values)
        return found

    def find_job(self, device: str, job_id: str) -> Optional[str]:
        """The id of the record of a board's job, if it was recorded."""
        query = (sa.select(results.c.id).where(results.c.device_name == device)
                 .where(results.c.job_id == job_id).limit(1))
        with self.engine.connect() as conn:
            return conn.execute(query).scalar()

    def job_records(self, device: str, job_id: str) -> List[Record]:
        """Every record of a board's job, in the order they were added (a comparison job has
        two: A's, then B's)."""
        query = (sa.select(results).where(results.c.device_name == device)
                 .where(results.c.job_id == job_id).order_by(results.c.id))
        with self.engine.connect() as conn:
            return [_record(row, None) for row in conn.execute(query)]

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(results)).scalar())


def _conditions(where: ResultFilter) -> List[Any]:
    out: List[Any] = []
    if where.kind:
        out.append(results.c.kind == where.kind)
    if where.model_sha256:
        out.append(results.c.model_sha256.startswith(where.model_sha256.lower(), autoescape=True))
    if where.device:
        out.append(results.c.device_name == where.device)
    if where.label:
        if "*" in where.label:
            escaped = where.label.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            out.append(results.c.label.like(escaped.replace("*", "%"), escape="\\"))
        else:
            out.append(results.c.label == where.label)
    if where.since:
        since = where.since
        if since.tzinfo is not None:          # SQLite keeps UTC without a zone
            since = since.astimezone(_dt.timezone.utc).replace(tzinfo=None)
        out.append(results.c.created >= since)
    if where.run_id:
        out.append(results.c.run_id == where.run_id)
    return out


def _row(record: Record) -> dict:
    return json_safe({
        "id": record.id, "kind": record.kind, "created": record.created, "label": record.label,
        "run_id": record.run_id, "model_sha256": record.model.sha256,
        "model_name": record.model.name, "model_size": record.model.size_bytes,
        "parent_sha256": record.model.parent_sha256, "dataset_sha256": record.dataset_sha256,
        "device_name": record.device_name, "job_id": record.job_id,
        "options": dict(record.options), "device": dict(record.device),
        "board_state": dict(record.board_state), "host": dict(record.host),
        "metrics": dict(record.metrics),
    }) | _signature_row(record.signature)


def _signature_row(signed: Optional[SignedResult]) -> dict:
    if signed is None:
        return dict.fromkeys(_SIGNATURE_COLUMNS)
    return {"signature": signed.signature, "signed_payload": signed.payload,
            "signature_algorithm": signed.algorithm, "agent_cert_pem": signed.agent_cert_pem}


def _signature(row: Any) -> Optional[SignedResult]:
    """The row's signature; None when unsigned or not read (listing)."""
    mapping = row._mapping
    if "signature" not in mapping or mapping["signature"] is None:
        return None
    return SignedResult(payload=bytes(mapping["signed_payload"] or b""),
                        signature=bytes(mapping["signature"]),
                        algorithm=mapping["signature_algorithm"] or "",
                        agent_cert_pem=mapping["agent_cert_pem"] or "")


def _record(row: Any, samples: Optional[list]) -> Record:
    created = row.created
    if created is not None and created.tzinfo is None:      # SQLite keeps no zone: it was UTC
        created = created.replace(tzinfo=_dt.timezone.utc)
    return Record(
        id=row.id, kind=row.kind, created=created, label=row.label, run_id=row.run_id,
        model=ModelRef(sha256=row.model_sha256, name=row.model_name, size_bytes=row.model_size,
                       parent_sha256=row.parent_sha256),
        dataset_sha256=row.dataset_sha256, job_id=row.job_id, options=row.options,
        device=row.device, board_state=row.board_state, host=row.host, metrics=row.metrics,
        samples_ms=tuple(samples) if samples is not None else None, signature=_signature(row))
