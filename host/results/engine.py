"""Opening a results database by URL: SQLite files made safe for many writers, servers
reached with a clear error, and nothing ever overwritten that is not a results database.

SQLite: WAL journal (readers never wait for a writer), a 30 s busy timeout, and every write
transaction opened with ``BEGIN IMMEDIATE``, so concurrent writers queue for the write lock
instead of failing with "database is locked" when a deferred reader tries to upgrade.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Optional

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from edgetune.host.errors import BadInputError, UnreachableError
from edgetune.host.results.location import as_url  # noqa: F401 - where callers import it from

SQLITE_HEADER = b"SQLite format 3\x00"
BUSY_TIMEOUT_MS = 30_000
WRITE = {"edgetune_write": True}     # execution option: open the transaction for writing

# The extra (or package) that brings each dialect's driver.
_DRIVER_HINTS = {
    "postgresql": "pip install 'edgetune[postgres]' (psycopg 3), and use postgresql+psycopg://",
    "mysql": "edgetune supports SQLite and PostgreSQL",
}


def safe_url(url: str) -> str:
    """The URL as it may be shown to a person: never with its password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url.split("@")[-1] if "@" in url else url


def sqlite_path(url: str) -> Optional[Path]:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return None
    return Path(database)


def check_sqlite_file(path: Path) -> None:
    """Refuse a file that is not a SQLite database (never overwrite someone's file).

    The header is read through SQLite, never with an ``open()``/``close()`` of our own: closing
    any descriptor of a database file drops every POSIX lock this process holds on it, among
    them the SHARED lock its open SQLite connections keep in WAL mode (a second store or
    Optuna storage opened while one is open). Another process that then closes its last
    connection finds the file unused, checkpoints it and deletes the WAL and its index under
    our connections: the next write goes to a deleted file or fails with "disk I/O error".
    SQLite itself keeps a descriptor open while a lock of the process needs it."""
    if path.is_dir():
        raise BadInputError(f"{path} is a directory, not a results database",
                            hint="pass --db sqlite:///FILE with a file name")
    if not path.exists() or path.stat().st_size == 0:
        return
    import sqlite3

    try:
        conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            conn.execute("PRAGMA schema_version").fetchone()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        if "not a database" not in str(exc):
            return                  # damaged, locked, ...: opening it says so (connection_error)
        raise BadInputError(
            f"{path} is not a SQLite database (it does not start with the SQLite header); "
            "refusing to use or overwrite it",
            hint="point --db (or EDGETUNE_DB) at another file, or move this one away") from None


def create_engine(url: str) -> Engine:
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise BadInputError(f"cannot read the database URL {safe_url(url)!r}: {exc}",
                            hint="use sqlite:///FILE or postgresql+psycopg://USER@HOST/DB") from exc
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise BadInputError(f"unsupported database {safe_url(url)!r}",
                            hint="edgetune keeps results in SQLite or PostgreSQL")
    path = sqlite_path(url)
    if path is not None:
        check_sqlite_file(path)
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if backend == "sqlite":
            engine = sa.create_engine(url, json_serializer=_dumps, json_deserializer=_loads,
                                      connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})
            make_sqlite_safe(engine)
        else:
            engine = sa.create_engine(url, pool_pre_ping=True, json_serializer=_dumps,
                                      json_deserializer=_loads,
                                      connect_args={"connect_timeout": 10})
    except (NoSuchModuleError, ModuleNotFoundError, ImportError) as exc:
        hint = _DRIVER_HINTS.get(backend, "install the database driver")
        raise BadInputError(f"no driver for {safe_url(url)!r} is installed ({exc})",
                            hint=hint) from exc
    return engine


@functools.lru_cache(maxsize=512)
def _loads(text: str) -> Any:
    """json.loads, remembering recent documents: a listing or an export reads the same board,
    host and options documents over and over (an export of 25,000 records spent most of its
    time decoding JSON, bench/results_scale.py). Equal documents come back as one object:
    records are read-only (``Record`` is frozen; nothing changes its mappings in place)."""
    return json.loads(text)


def _dumps(value: Any) -> str:
    return json.dumps(value, allow_nan=False, separators=(",", ":"))


def make_sqlite_safe(engine: Engine, *, immediate: bool = False) -> None:
    """The settings every engine on a results database uses (WAL, the busy timeout, NORMAL
    sync, foreign keys, transactions begun here). ``immediate``: every transaction takes the
    write lock when it begins (for a library that reads and then writes in one transaction,
    as Optuna's storage does: a deferred reader whose snapshot another connection changed
    cannot upgrade, and SQLite fails it at once with "database is locked" instead of waiting).
    Call it before the engine's first connection, or ``dispose()`` the engine after."""
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None           # transactions are begun below
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        write = immediate or conn.get_execution_options().get("edgetune_write")
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def connection_error(url: str, exc: Exception) -> Exception:
    """What a failed connection means to a person, as an EdgetuneError."""
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    if sqlite_path(url) is not None:
        return BadInputError(
            f"the results database {safe_url(url)} cannot be used: {text}",
            hint="if the file is damaged, move it away (a new one is made); nothing was written")
    return UnreachableError(f"cannot reach the results database {safe_url(url)}: {text}",
                            hint="check the server, the URL and credentials, or pass "
                                 "--no-record / --db sqlite:///FILE")
