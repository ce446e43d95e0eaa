"""A results database (SQLite, WAL) read from another process while this one has it open, after
a second store (or the tuner's Optuna storage) was opened on it here -- what
bench/tune_efficiency.py does, one study after another, while someone looks at the database.

Opening a store used to read the file's header with an ``open()``/``close()`` of its own;
that close dropped every POSIX lock this process held on the file, among them the SHARED
lock its open connections keep in WAL mode. The reader's last close then found the file
unused, checkpointed it and deleted the WAL and its index under our connections: the next
writes went to a deleted WAL (lost to every other process) and the tuner died on
"disk I/O error"."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from edgetune.host.results.records import ModelRef, Record
from edgetune.host.results.store import ResultsStore

READ = ("import sqlite3, sys\n"
        "conn = sqlite3.connect(sys.argv[1], timeout=30)\n"
        "print(conn.execute('SELECT count(*) FROM results').fetchone()[0])\n"
        "conn.close()\n")


def _count_from_another_process(db: Path) -> int:
    out = subprocess.run([sys.executable, "-c", READ, str(db)], capture_output=True,
                         text=True, timeout=60, check=True)
    return int(out.stdout.strip())


def _record(i: int) -> Record:
    return Record(kind="bench", model=ModelRef("d" * 64), metrics={"i": i})


def test_a_reader_elsewhere_does_not_delete_the_wal_under_an_open_store(tmp_path: Path) -> None:
    db = tmp_path / "results.db"
    url = f"sqlite:///{db}"
    store = ResultsStore.open(url)
    try:
        store.add(_record(0))                   # a pooled connection stays open (WAL mode)
        second = ResultsStore.open(url)         # a second open checks the file again
        second.close()
        assert _count_from_another_process(db) == 1
        assert (tmp_path / "results.db-wal").exists(), \
            "the other process's close deleted the WAL of a database open here"
        store.add(_record(1))
        store.add(_record(2))
        assert store.count() == 3
        assert _count_from_another_process(db) == 3, "writes went to a deleted WAL"
    finally:
        store.close()
    assert _count_from_another_process(db) == 3


def test_the_tuners_storage_beside_the_store_survives_a_reader_elsewhere(tmp_path: Path) -> None:
    """The tuner's arrangement: the store, then Optuna's storage on the same file (its table
    check opens the file again), a reader in another process, then Optuna writes."""
    import optuna

    from edgetune.host.tune.study import open_storage

    db = tmp_path / "results.db"
    store = ResultsStore.open(f"sqlite:///{db}")
    try:
        store.add(_record(0))
        storage = open_storage(store.url)
        study = optuna.create_study(study_name="s", storage=storage,
                                    directions=["minimize", "maximize"])
        ResultsStore.open(store.url).close()    # e.g. the next study of a benchmark
        assert _count_from_another_process(db) == 1
        for i in range(5):
            trial = study.ask()
            trial.suggest_int("x", 0, 9)
            trial.set_user_attr("i", i)
            study.tell(trial, [float(i), 1.0])
        store.add(_record(1))
        out = subprocess.run(
            [sys.executable, "-c", "import sqlite3, sys\n"
             "conn = sqlite3.connect(sys.argv[1], timeout=30)\n"
             "print(conn.execute('SELECT count(*) FROM trials').fetchone()[0])\n", str(db)],
            capture_output=True, text=True, timeout=60, check=True)
        assert int(out.stdout) == 5
        assert _count_from_another_process(db) == 2
        storage.engine.dispose()
    finally:
        store.close()


def test_a_file_that_is_not_a_database_is_still_refused(tmp_path: Path) -> None:
    import pytest

    from edgetune.host.errors import BadInputError

    notes = tmp_path / "notes.db"
    notes.write_text("my notes, not a database\n" * 50)
    with pytest.raises(BadInputError, match="not a SQLite database"):
        ResultsStore.open(f"sqlite:///{notes}")
    assert notes.read_text() == "my notes, not a database\n" * 50
