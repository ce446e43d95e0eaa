"""Crash consistency: the agent SIGKILLed at random moments, 50 times in a row, while hosts
upload (by hash and by id), run jobs and change leases (issue 16, section 2).

The driver is ``bench/crash_consistency.py`` (its docstring lists every check); the bench runs
it for 500 kills, this test for 50. The fast tests below prove the checker catches what it
looks for, and pin the durability settings it relies on.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest

from bench import crash_consistency as crash
from bench.common import make_pki
from edgetune.device.jobdb import JobDatabase
from edgetune.device.leases import LeaseBook

KILLS = 50


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_nothing(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    lines = []
    report = crash.run(pki, tmp_path / "work", KILLS, seed=16, progress=lines.append)
    summary = report.as_dict()
    print(json.dumps(summary, indent=2))            # the kill points reached (pytest -s)
    assert report.kills == KILLS
    assert report.violations == [], "\n".join(report.violations + lines[-5:])
    points = set(report.kill_points)
    # The broad windows are reached in 50 kills; the narrow ones (a lease change, a commit)
    # are reported, not demanded.
    assert any(p.startswith("upload-hash:") for p in points), points
    assert any(p.startswith("upload-id:") for p in points), points
    assert "jobs:running" in points, points
    assert report.uploads_resumed > 0 and report.jobs_checked > 0 and report.lease_checks > 0
    assert report.job_states.get("interrupted", 0) > 0      # running jobs were hit


def _store(tmp_path: Path) -> Path:
    store = tmp_path / "store"
    for folder in ("models", "datasets", "partial"):
        (store / folder).mkdir(parents=True)
    return store


def test_the_checker_sees_a_blob_that_does_not_hash_to_its_name(tmp_path: Path) -> None:
    store = _store(tmp_path)
    good = b"good bytes"
    (store / "datasets" / (hashlib.sha256(good).hexdigest() + ".npz")).write_bytes(good)
    report = crash.Report()
    crash.check_blobs_on_disk(store, report, "t")
    assert report.violations == [] and report.blobs_checked == 1
    (store / "models" / (hashlib.sha256(b"other").hexdigest() + ".onnx")).write_bytes(b"partial")
    crash.check_blobs_on_disk(store, report, "t")
    assert len(report.violations) == 1 and "does not hash" in report.violations[0]


def test_the_checker_sees_leftovers_and_unresumable_partials(tmp_path: Path) -> None:
    store = _store(tmp_path)
    (store / "partial" / ("dataset-" + "a" * 64 + ".part")).write_bytes(b"x" * 10)
    (store / "partial" / ("model-" + "b" * 64 + ".json")).write_text("{}")
    (store / "models" / "c.json.tmp").write_text("{}")

    class NoClient:
        def upload_status(self, *args: object) -> None:
            raise AssertionError("not asked: the partial has no side file")

    report = crash.Report()
    crash.check_after_restart(store, NoClient(), report, 1)
    text = "\n".join(report.violations)
    assert "temporary files left" in text
    assert "has no side file" in text
    assert "orphan side file" in text


def test_a_lease_save_cut_off_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "leases.json"
    book = LeaseBook(path, 5, 60)
    lease = book.acquire("laptop", 30)
    (tmp_path / "leases.json.tmp").write_text('{"version": 1, "holder": "x", "claims": [')
    again = LeaseBook(path, 5, 60)          # what a restart after the kill does
    assert not (tmp_path / "leases.json.tmp").exists()
    assert again.current()[0] == "laptop"
    assert again.renew("laptop", lease.lease_id, 30).lease_id == lease.lease_id


def test_the_job_queue_survives_power_loss_settings(tmp_path: Path) -> None:
    """WAL with synchronous=FULL: a committed transaction is fsynced before the call returns
    (NORMAL keeps it through a crash of the process only)."""
    db = JobDatabase(tmp_path / "jobs.db")
    try:
        assert db._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db._conn.execute("PRAGMA synchronous").fetchone()[0] == 2     # FULL
    finally:
        db.close()
    # Settings are per connection: a second opening says the same.
    db = JobDatabase(tmp_path / "jobs.db")
    try:
        assert db._conn.execute("PRAGMA synchronous").fetchone()[0] == 2
    finally:
        db.close()
    plain = sqlite3.connect(str(tmp_path / "other.db"))
    try:                                     # the control: SQLite's default is not what we set
        plain.execute("PRAGMA journal_mode=WAL")
        plain.execute("PRAGMA synchronous=NORMAL")
        assert plain.execute("PRAGMA synchronous").fetchone()[0] == 1
    finally:
        plain.close()
