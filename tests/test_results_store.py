"""host.results: the results database on a real SQLite file and a real PostgreSQL server."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import sqlalchemy as sa

from edgetune.host.errors import BadInputError, NotFoundError, UnreachableError, UsageError
from edgetune.host.results import migrate
from edgetune.host.results.records import ModelRef, Record
from edgetune.host.results.schema import VERSION_TABLE, metadata
from edgetune.host.results.store import ResultFilter, ResultsStore

SHA_A = "a" * 64
SHA_B = "b" * 64


def bench(sha: str = SHA_A, device: str = "board1", label: str = "", p50: float = 1.5,
          samples=None) -> Record:
    return Record(kind="bench", model=ModelRef(sha, "m.onnx", 1234, parent_sha256=SHA_B),
                  metrics={"latency_ms": {"p50": p50}, "throughput_ips": 1000 / p50},
                  options={"threads": 1, "iterations": 10},
                  device={"name": device, "arch": "aarch64", "onnxruntime_version": "1.19.2"},
                  board_state={"cpu_freq_mhz": 1800.0, "temperature_c": float("nan")},
                  host={"edgetune_version": "0.1.0", "hostname": "pc"},
                  label=label, job_id="j1", samples_ms=samples)


def test_add_then_get_by_unique_prefix_keeps_every_field(db_url: str) -> None:
    with ResultsStore.open(db_url) as store:
        added = store.add(bench(samples=(1.0, 2.0, 1.5)))
        assert len(added.id) == 26 and added.created is not None
        got = store.get(added.id[:10].lower())
    assert got.id == added.id
    assert got.model == ModelRef(SHA_A, "m.onnx", 1234, parent_sha256=SHA_B)
    assert got.metrics == {"latency_ms": {"p50": 1.5}, "throughput_ips": 1000 / 1.5}
    assert got.device["arch"] == "aarch64" and got.device_name == "board1"
    assert got.board_state == {"cpu_freq_mhz": 1800.0, "temperature_c": None}  # NaN -> null
    assert got.samples_ms == (1.0, 2.0, 1.5)
    assert abs((got.created - added.created).total_seconds()) < 0.01
    assert got.created.tzinfo is not None


def test_ids_not_found_ambiguous_or_malformed_get_clear_errors(db_url: str) -> None:
    with ResultsStore.open(db_url) as store:
        ids = [store.add(bench()).id for _ in range(40)]
        with pytest.raises(NotFoundError, match="no result"):
            store.get("ZZZZZZZZZZ")
        with pytest.raises(UsageError, match="ambiguous"):
            store.get(ids[0][:1])        # forty ids made in the same second share a prefix
        with pytest.raises(UsageError, match="not a result id"):
            store.get("01%")
        with pytest.raises(UsageError, match="not a result id"):
            store.get("")


def test_list_filters_orders_newest_first_and_leaves_samples_out(db_url: str) -> None:
    with ResultsStore.open(db_url) as store:
        first = store.add(bench(label="baseline", samples=(1.0,)))
        store.add(bench(device="board2", label="int8 run 1"))
        store.add(bench(sha=SHA_B, label="int8 run 2"))
        listed = store.list()
        assert [r.label for r in listed] == ["int8 run 2", "int8 run 1", "baseline"]
        assert all(r.samples_ms is None for r in listed)
        assert [r.label for r in store.list(ResultFilter(device="board2"))] == ["int8 run 1"]
        assert [r.label for r in store.list(ResultFilter(model_sha256="bbbb"))] == ["int8 run 2"]
        assert len(store.list(ResultFilter(label="int8*"))) == 2
        assert store.list(ResultFilter(label="int8")) == []
        assert store.list(ResultFilter(label="%")) == []        # LIKE wildcards are literal
        assert len(store.list(limit=2)) == 2
        assert store.list(ResultFilter(kind="eval")) == []
        later = first.created + dt.timedelta(hours=1)
        assert store.list(ResultFilter(since=later)) == []
        zone = dt.timezone(dt.timedelta(hours=5))
        assert len(store.list(ResultFilter(since=first.created.astimezone(zone)))) == 3


def test_delete_removes_records_and_their_samples(db_url: str) -> None:
    with ResultsStore.open(db_url) as store:
        keep = store.add(bench())
        gone = store.add(bench(samples=(1.0, 2.0)))
        assert store.delete([gone.id[:20]]) == [gone.id]
        assert [r.id for r in store.list()] == [keep.id]
        with store.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM result_samples")).scalar() == 0
        with pytest.raises(NotFoundError):
            store.delete([keep.id, gone.id])          # nothing removed when one id is unknown
        assert store.count() == 1


def test_a_failed_write_leaves_no_half_record(db_url: str) -> None:
    with ResultsStore.open(db_url) as store:
        broken = bench(samples=(1.0, object()))       # the samples row cannot be written
        with pytest.raises((TypeError, sa.exc.StatementError), match="not JSON serializable"):
            store.add_many([bench(), broken])
        assert store.count() == 0


def test_migrations_make_exactly_the_schema_in_code(db_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    ResultsStore.open(db_url).close()
    engine = sa.create_engine(db_url)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        assert compare_metadata(context, metadata) == []
        assert migrate.current_revision(conn) == migrate.HEAD
    engine.dispose()
    assert migrate.known_revisions() >= {migrate.HEAD}


def test_every_revision_upgrades_in_place_without_losing_records(db_url: str) -> None:
    """A database made by the first schema, with a record in it, is upgraded on first use."""
    from alembic import command
    from alembic.script import ScriptDirectory

    cfg = migrate._alembic_config()
    first = ScriptDirectory.from_config(cfg).get_base()
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, first)
        conn.execute(sa.text(
            "INSERT INTO results (id, kind, created, label, model_sha256, model_name, options, "
            "device, board_state, host, metrics) VALUES ('01J0000000000000000000000A', 'bench', "
            "'2026-01-02 03:04:05', 'old', :sha, 'old.onnx', '{}', '{\"name\": \"b\"}', '{}', "
            "'{}', '{\"p50_ms\": 2.5}')"), {"sha": SHA_A})
    engine.dispose()
    with ResultsStore.open(db_url) as store:
        old = store.get("01J0000000000000000000000A")
        assert old.label == "old" and old.metrics == {"p50_ms": 2.5}
        assert old.created == dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
        with store.engine.connect() as conn:
            assert migrate.current_revision(conn) == migrate.HEAD


def test_a_database_from_a_newer_edgetune_is_refused(db_url: str) -> None:
    ResultsStore.open(db_url).close()
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE {VERSION_TABLE} SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(BadInputError, match="newer edgetune") as err:
        ResultsStore.open(db_url)
    assert "9999" in str(err.value) and "pip install -U edgetune" in str(err.value)


def test_a_file_that_is_not_sqlite_is_refused_and_left_alone(tmp_path: Path) -> None:
    target = tmp_path / "notes.db"
    target.write_bytes(b"my notes, not a database\n" * 10)
    before = target.read_bytes()
    with pytest.raises(BadInputError, match="not a SQLite database"):
        ResultsStore.open(f"sqlite:///{target}")
    assert target.read_bytes() == before


def test_a_truncated_sqlite_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    good = tmp_path / "good.db"
    with ResultsStore.open(f"sqlite:///{good}") as store:
        for _ in range(200):
            store.add(bench(samples=tuple(range(100))))
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(good.read_bytes()[:6000])
    before = damaged.read_bytes()
    with pytest.raises(BadInputError, match="cannot be used") as err:
        ResultsStore.open(f"sqlite:///{damaged}")
    assert "move it away" in str(err.value)
    assert damaged.read_bytes() == before


def test_an_unreachable_server_names_the_url_without_its_password() -> None:
    url = "postgresql+psycopg://alice:s3cret@127.0.0.1:1/results"
    with pytest.raises(UnreachableError) as err:
        ResultsStore.open(url)
    text = str(err.value)
    assert "127.0.0.1:1/results" in text and "s3cret" not in text and "alice" in text


def test_a_missing_driver_names_what_to_install() -> None:
    with pytest.raises(BadInputError, match="no driver") as err:
        ResultsStore.open("postgresql+pg8000://u:pw@127.0.0.1:1/x")
    assert "edgetune[postgres]" in str(err.value) and "pw" not in str(err.value)
    with pytest.raises(BadInputError, match="unsupported database"):
        ResultsStore.open("mysql://u@localhost/x")


WRITER = textwrap.dedent("""
    import sys
    from edgetune.host.results.records import ModelRef, Record
    from edgetune.host.results.store import ResultsStore
    store = ResultsStore.open(sys.argv[1])
    for i in range(int(sys.argv[2])):
        store.add(Record(kind="bench", model=ModelRef("c" * 64), metrics={"i": i},
                         device={"name": sys.argv[3]}, samples_ms=(1.0, 2.0)))
    store.close()
""")


@pytest.mark.slow
def test_six_writers_at_once_lose_nothing(db_url: str) -> None:
    """Six processes open a new database at the same moment (so they also race to create
    it) and each adds 40 records: all 240 land, none fails with "database is locked"."""
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, db_url, "40", f"w{n}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for n in range(6)]
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
    with ResultsStore.open(db_url) as store:
        assert store.count() == 240
        for n in range(6):
            assert len(store.list(ResultFilter(device=f"w{n}"), limit=None)) == 40
