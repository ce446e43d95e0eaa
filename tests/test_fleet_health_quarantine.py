"""The fleet quarantine in the results database (SQLite and a real PostgreSQL): entries, release,
N fleet jobs failed in a row, two hosts at once, selection skipping quarantined boards, and a
database of revision 0002 upgraded in place with its records kept."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path
from typing import List

import pytest
import sqlalchemy as sa

from edgetune.host.errors import BadInputError
from edgetune.host.fleet.quarantine import (FAILURES_TO_QUARANTINE, QuarantineBook,
                                            announce_skipped)
from edgetune.host.fleet.selectors import Selector, select
from edgetune.host.inventory import Device, Inventory
from edgetune.host.results import migrate
from edgetune.host.results.store import ResultsStore

BOARDS = Inventory(path=Path("edgetune.toml"), host=None, devices=(
    Device("board1", "10.0.0.1:1", ("lab",)),
    Device("board2", "10.0.0.2:1", ("lab",)),
    Device("board3", "10.0.0.3:1", ("lab", "odd")),
))


def test_quarantine_release_and_history(db_url: str) -> None:
    with ResultsStore.open(db_url) as store:
        book = QuarantineBook.open(store)
        assert book.active() == {} and book.get("board3") is None
        entry = book.quarantine("board3", "outputs differ: max abs error 0.5", "check", "01CHECK")
        assert entry.active and entry.source == "check" and entry.run_id == "01CHECK"
        assert entry.since.tzinfo is not None
        assert abs((dt.datetime.now(dt.timezone.utc) - entry.since).total_seconds()) < 60
        again = book.quarantine("board3", "another reason", "manual")
        assert again.reason == entry.reason                  # the first entry stands
        active = book.active()
        assert list(active) == ["board3"] and active["board3"] == entry
        assert book.get("board3") == entry and book.list_active() == [entry]
        with pytest.raises(ValueError, match="source"):
            book.quarantine("board1", "x", "whim")

        released = book.release("board3", by="release")
        assert released is not None and released.released_by == "release"
        assert released.released_at is not None and not released.active
        assert book.active() == {} and book.release("board3") is None
        book.quarantine("board3", "too hot: 97 C", "check")
        history = book.history("board3")
        assert [h.reason for h in history] == ["too hot: 97 C",
                                              "outputs differ: max abs error 0.5"]
        assert history[0].active and not history[1].active
        assert history[1].as_json()["released_by"] == "release"


def test_n_fleet_jobs_failed_in_a_row_quarantine_a_board(db_url: str) -> None:
    with ResultsStore.open(db_url) as store:
        book = QuarantineBook.open(store)
        assert book.failures_to_quarantine == FAILURES_TO_QUARANTINE == 3
        assert book.note_job("board1", False, "unreachable") is None
        assert book.note_job("board1", False, "unreachable") is None
        assert book.failures_in_a_row("board1") == 2
        assert book.note_job("board1", True) is None          # a success breaks the row
        assert book.failures_in_a_row("board1") == 0
        for _ in range(2):
            assert book.note_job("board1", False, "job failed") is None
        entry = book.note_job("board1", False, "the agent restarted mid-run", run_id="01RUN")
        assert entry is not None and entry.source == "jobs" and entry.run_id == "01RUN"
        assert entry.reason == ("3 fleet jobs failed in a row; the last: the agent restarted "
                                "mid-run")
        assert set(book.active()) == {"board1"} and book.failures_in_a_row("board1") == 0
        # Released, it starts from zero again: one more failure does not send it back.
        book.release("board1")
        assert book.note_job("board1", False, "x") is None and book.active() == {}
        # Another board, another count; N is configurable.
        strict = QuarantineBook.open(store, failures_to_quarantine=1)
        assert strict.note_job("board2", False, "refused") is not None
        assert set(strict.active()) == {"board2"}
        with pytest.raises(ValueError):
            QuarantineBook.open(store, failures_to_quarantine=0)


def test_two_hosts_at_once_make_one_entry_and_count_every_failure(db_url: str) -> None:
    """Hosts sharing the database: each its own engine, all writing at the same moment."""
    stores = [ResultsStore.open(db_url) for _ in range(4)]
    try:
        books = [QuarantineBook.open(s, failures_to_quarantine=100) for s in stores]
        barrier = threading.Barrier(len(books))
        made: List[object] = []
        errors: List[BaseException] = []

        def host(book: QuarantineBook, n: int) -> None:
            try:
                barrier.wait()
                made.append(book.quarantine("board2", f"host {n}", "check"))
                for _ in range(5):
                    book.note_job("board1", False, f"host {n}")
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=host, args=(b, n)) for n, b in enumerate(books)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert len({e.reason for e in made}) == 1              # everyone got the one entry
        assert len(books[0].history("board2")) == 1
        assert books[0].failures_in_a_row("board1") == 20
    finally:
        for s in stores:
            s.close()


def test_selection_skips_quarantined_boards_and_says_so(db_url: str, capsys: pytest.CaptureFixture) -> None:
    with ResultsStore.open(db_url) as store:
        book = QuarantineBook.open(store)
        book.quarantine("board3", "outputs differ", "check")
        chosen, skipped = select(BOARDS, Selector.parse("tag:lab"), skip=book.skip())
        assert [d.name for d in chosen] == ["board1", "board2"]
        announce_skipped(skipped)
        err = capsys.readouterr().err
        since = book.get("board3").since_text                  # type: ignore[union-attr]
        assert err == (f"edgetune: skipping board3: quarantined since {since}: outputs differ; "
                       "`edgetune fleet release board3` to bring it back\n")
        with pytest.raises(BadInputError, match="leaves no board to use") as caught:
            select(BOARDS, Selector.parse("tag:odd"), skip=book.skip())
        assert "board3: quarantined since" in str(caught.value)
        assert "edgetune fleet release" in str(caught.value)
        book.release("board3")
        chosen, skipped = select(BOARDS, Selector.parse("tag:odd"), skip=book.skip())
        assert [d.name for d in chosen] == ["board3"] and skipped == []


def test_a_database_at_0002_upgrades_to_head_and_keeps_its_records(db_url: str) -> None:
    from alembic import command

    cfg = migrate._alembic_config()
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0002")
        conn.execute(sa.text(
            "INSERT INTO results (id, kind, created, label, model_sha256, model_name, options, "
            "device, board_state, host, metrics, device_name) VALUES "
            "('01J0000000000000000000000A', 'bench', '2026-01-02 03:04:05', 'old', :sha, "
            "'old.onnx', '{}', '{\"name\": \"b\"}', '{}', '{}', '{\"p50_ms\": 2.5}', 'board1')"),
            {"sha": "a" * 64})
    with engine.connect() as conn:
        assert migrate.current_revision(conn) == "0002"
        assert not sa.inspect(conn).has_table("quarantine")
    engine.dispose()
    with ResultsStore.open(db_url) as store:                   # opening upgrades it
        with store.engine.connect() as conn:
            assert migrate.current_revision(conn) == migrate.HEAD >= "0003"
        old = store.get("01J0000000000000000000000A")
        assert old.label == "old" and old.metrics == {"p50_ms": 2.5} and store.count() == 1
        book = QuarantineBook.open(store)
        book.quarantine("board1", "after the upgrade", "manual")
        assert set(book.active()) == {"board1"}
