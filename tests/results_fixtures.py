"""Results databases for the tests: a SQLite file per test, and a database per test on a real
PostgreSQL server (EDGETUNE_TEST_PG_URL names one, else a throw-away cluster is started for the
session, see tests/pgcluster.py). With EDGETUNE_TEST_PG set (CI sets it), PostgreSQL tests fail
instead of skipping when no server can be had."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Optional

import pytest

from tests import pgcluster


def _pg_unavailable(reason: str) -> None:
    if os.environ.get("EDGETUNE_TEST_PG"):
        pytest.fail(f"EDGETUNE_TEST_PG is set but PostgreSQL is not usable: {reason}")
    pytest.skip(f"no PostgreSQL here ({reason}); set EDGETUNE_TEST_PG_URL or install postgresql")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Optional[str]]:
    """A server URL (its maintenance database), or None when none could be had."""
    given = os.environ.get("EDGETUNE_TEST_PG_URL")
    if given:
        yield given
        return
    directory = pgcluster.new_directory()
    try:
        url = pgcluster.start(directory)
    except Exception as exc:  # noqa: BLE001 - reported by the tests that need it
        yield f"unavailable: {exc}"
        return
    try:
        yield url
    finally:
        pgcluster.stop(directory)


@pytest.fixture
def pg_url(pg_server: Optional[str], request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, empty database on the PostgreSQL server, dropped after the test."""
    if pg_server is None or pg_server.startswith("unavailable: "):
        _pg_unavailable(str(pg_server))
    import sqlalchemy as sa
    from ulid import ULID

    name = f"t_{str(ULID()).lower()}"
    admin = sa.create_engine(pg_server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001
        admin.dispose()
        _pg_unavailable(str(exc))
    url = sa.engine.make_url(pg_server).set(database=name).render_as_string(hide_password=False)
    yield url
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each results test runs on a SQLite file and on a real PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'results.db'}"
    return request.getfixturevalue("pg_url")
