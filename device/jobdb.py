"""The job queue's SQLite persistence: the ``jobs`` table in ``jobs.db``.

- Every job is a row (WAL journal with ``synchronous=FULL``: a transaction that returned is
  on disk, through a power cut too; NORMAL would keep it through a crash of the agent but
  could lose the last ones on power loss, and a host must never be told of a job the board
  then forgets). The file (and its -wal/-shm, which SQLite creates with the database's mode)
  is 0600 and opened without following a symbolic link. Columns: id, kind, state, spec and
  result as JSON (the ``edgetune.protos.messages`` dicts), label, the submitter's certificate name, times, error,
  and the agent's signature of a succeeded job (``signed``, JSON, bytes as base64). Results
  therefore survive a restart of the agent.
- Columns added after the first release (``signed``) are added to an existing database with
  ``ALTER TABLE ... ADD COLUMN`` when it is opened (NULL in old rows: unsigned); an older
  agent names its columns in every query, so it still reads and writes such a database.
- ``JobDatabase.recover`` runs at start: rows left ``running`` by an agent that died are marked
  ``interrupted``; rows left ``queued`` are returned to be queued again (a row this version
  cannot read is marked ``failed`` instead).

``edgetune.device.jobs.JobQueue`` is the only user; it calls this from the event loop thread only.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from edgetune.device.safefs import make_private, open_fd
from edgetune.protos.messages import Job, JobState

log = logging.getLogger("edgetune.agent.jobdb")

INTERRUPTED_CRASH = "the agent stopped while this job ran; submit it again"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    label TEXT NOT NULL DEFAULT '',
    client TEXT NOT NULL DEFAULT '',
    spec TEXT NOT NULL,
    created_unix REAL NOT NULL,
    started_unix REAL NOT NULL DEFAULT 0,
    finished_unix REAL NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '',
    result TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state);
"""
# Columns added since the first schema, with their type: added to an older database on open.
_ADDED_COLUMNS = (("signed", "TEXT"),)
_COLUMNS = ("id", "kind", "state", "label", "client", "spec", "created_unix", "started_unix",
            "finished_unix", "error", "result", "signed")


class JobDatabase:
    """The ``jobs`` table. Used from the event loop thread only; each write is one transaction."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Created 0600 before SQLite opens it (a link planted there is refused): SQLite gives
        # the -wal and -shm files the database file's mode.
        os.close(open_fd(self.path, os.O_RDWR | os.O_CREAT))
        for suffix in ("", "-wal", "-shm"):
            make_private(str(self.path) + suffix)
        self._conn = sqlite3.connect(str(self.path), isolation_level=None,
                                     check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(_SCHEMA)
        self._add_columns()

    def _add_columns(self) -> None:
        present = {row[1] for row in self._conn.execute("PRAGMA table_info(jobs)")}
        for name, kind in _ADDED_COLUMNS:
            if name not in present:
                self._conn.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")
                log.info("added the %s column to the job database %s", name, self.path)

    def close(self) -> None:
        self._conn.close()

    def insert(self, job: Job) -> None:
        row = _row(job)
        self._conn.execute(f"INSERT INTO jobs ({', '.join(_COLUMNS)}) VALUES "
                           f"({', '.join('?' for _ in _COLUMNS)})", [row[c] for c in _COLUMNS])

    def update(self, job: Job) -> None:
        row = _row(job)
        names = [c for c in _COLUMNS if c not in ("id", "kind", "spec", "created_unix")]
        self._conn.execute(f"UPDATE jobs SET {', '.join(c + ' = ?' for c in names)} WHERE id = ?",
                           [row[c] for c in names] + [job.id])

    def get(self, job_id: str) -> Optional[Job]:
        cur = self._conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE id = ?", (job_id,))
        found = cur.fetchone()
        return _job(found) if found else None

    def list(self, limit: int) -> List[Job]:
        cur = self._conn.execute(
            f"SELECT {', '.join(_COLUMNS)} FROM jobs ORDER BY seq DESC LIMIT ?", (limit,))
        return [_job(r) for r in cur.fetchall()]

    def recover(self) -> Tuple[int, List[Job]]:
        """Mark rows a dead agent left running as interrupted; return (count, queued jobs)."""
        cur = self._conn.execute(
            "UPDATE jobs SET state = ?, error = ?, finished_unix = ? WHERE state = ?",
            (JobState.INTERRUPTED.value, INTERRUPTED_CRASH, time.time(), JobState.RUNNING.value))
        interrupted = cur.rowcount
        cur = self._conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE state = ? "
                                 "ORDER BY seq", (JobState.QUEUED.value,))
        queued: List[Job] = []
        for r in cur.fetchall():
            try:
                queued.append(_job(r))
            except Exception as exc:  # a row this version cannot read: fail it, keep going
                log.warning("job %s cannot be re-queued (%s); marking it failed", r[0], exc)
                self._conn.execute("UPDATE jobs SET state = ?, error = ? WHERE id = ?",
                                   (JobState.FAILED.value, f"unreadable after restart: {exc}", r[0]))
        return interrupted, queued


def _row(job: Job) -> Dict[str, Any]:
    d = job.as_dict()
    d["spec"] = json.dumps(d["spec"], sort_keys=True)
    d["result"] = None if d["result"] is None else json.dumps(d["result"], sort_keys=True)
    d["signed"] = None if d["signed"] is None else json.dumps(d["signed"], sort_keys=True)
    return d


def _job(row: Tuple[Any, ...]) -> Job:
    d = dict(zip(_COLUMNS, row))
    d["spec"] = json.loads(d["spec"])
    d["result"] = None if d["result"] is None else json.loads(d["result"])
    d["signed"] = None if d["signed"] is None else json.loads(d["signed"])
    return Job.from_dict(d)


__all__ = ["INTERRUPTED_CRASH", "JobDatabase"]
