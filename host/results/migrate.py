"""Bring a results database to this edgetune's schema, in place, on first use.

The fast path (the database is current) reads one row and imports nothing from Alembic, so
recording a result stays cheap; an upgrade runs Alembic in one write transaction, under
PostgreSQL's advisory lock or SQLite's write lock, so two processes opening a new database at
once create it once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from edgetune.host.errors import BadInputError
from edgetune.host.results.engine import WRITE, safe_url
from edgetune.host.results.schema import VERSION_TABLE

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
HEAD = "0004"          # the newest revision in migrations/versions (a test keeps them equal)
_PG_LOCK_KEY = 0x6564676574756E65   # "edgetune" as a 64-bit advisory lock key


def current_revision(conn: Connection) -> Optional[str]:
    if not sa.inspect(conn).has_table(VERSION_TABLE):
        return None
    return conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()


def ensure_current(engine: Engine, url: str) -> None:
    """Upgrade unless the database is at HEAD. The check is one plain query (no reflection:
    every command that records pays it); a missing version table means "not current"."""
    with engine.connect() as conn:
        try:
            revision = conn.exec_driver_sql(f"SELECT version_num FROM {VERSION_TABLE}").scalar()
        except sa.exc.DBAPIError:           # no such table: a new or a foreign database
            conn.rollback()
            revision = None
    if revision != HEAD:
        upgrade(engine, url)


def _alembic_config():  # type: ignore[no-untyped-def]
    from alembic.config import Config
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def known_revisions() -> set:
    from alembic.script import ScriptDirectory
    script = ScriptDirectory.from_config(_alembic_config())
    return {rev.revision for rev in script.walk_revisions()}


def upgrade(engine: Engine, url: str) -> None:
    from alembic import command
    cfg = _alembic_config()
    with engine.connect().execution_options(**WRITE) as conn:
        with conn.begin():
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
            revision = current_revision(conn)
            if revision == HEAD:
                return                          # another process upgraded it meanwhile
            if revision is not None and revision not in known_revisions():
                raise BadInputError(
                    f"the results database {safe_url(url)} has schema {revision}, written by a "
                    f"newer edgetune (this one knows up to {HEAD})",
                    hint="upgrade edgetune on this PC (pip install -U edgetune), or use "
                         "another database with --db")
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
