"""The tuner's pipelining: what may overlap on one board (``BoardGate``), and a study that
stops at ``--timeout`` with a trial queued ahead (it finishes: only Ctrl-C withdraws one)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, List

import pytest

from edgetune.host.tune.trials import BoardGate
from tests.host_fixtures import (DIGITS_MODEL, DIGITS_TEST, SAMPLES, local_agent,  # noqa: F401
                                 run_cli)


def _run(target: Any) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_an_upload_waits_for_the_measurement_and_holds_the_next_one_back() -> None:
    gate = BoardGate()
    events: List[str] = []
    measuring, finish = threading.Event(), threading.Event()

    def measurement() -> None:
        with gate.job(timed=True):
            events.append("measure")
            measuring.set()
            finish.wait(10)
            events.append("measured")

    def upload() -> None:
        with gate.upload():
            events.append("upload")
            time.sleep(0.1)
            events.append("uploaded")

    def next_measurement() -> None:
        with gate.job(timed=True):
            events.append("next measure")

    def evaluation() -> None:
        with gate.job(timed=False):
            events.append("eval")

    threads = [_run(measurement)]
    assert measuring.wait(10)
    threads.append(_run(upload))
    time.sleep(0.2)
    assert "upload" not in events                 # waits for the running measurement
    threads.append(_run(next_measurement))
    time.sleep(0.2)
    assert "next measure" not in events           # held back by the waiting upload
    threads.append(_run(evaluation))
    threads[-1].join(10)
    assert "eval" in events                       # not timed: overlaps freely
    finish.set()
    for thread in threads:
        thread.join(10)
    order = [e for e in events if e != "eval"]
    assert order == ["measure", "measured", "upload", "uploaded", "next measure"]


def test_uploads_may_overlap_measurements_when_asked() -> None:
    gate = BoardGate(quiet_uploads=False)
    measuring, finish, uploaded = threading.Event(), threading.Event(), threading.Event()

    def measurement() -> None:
        with gate.job(timed=True):
            measuring.set()
            finish.wait(10)

    thread = _run(measurement)
    assert measuring.wait(10)
    with gate.upload():
        uploaded.set()
    assert uploaded.is_set()
    finish.set()
    thread.join(10)


@pytest.mark.timeout(600)
def test_the_timeout_lets_queued_trials_finish(local_agent: Any, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    """--timeout stops asking; the trials asked before it, the one queued ahead included,
    finish and are recorded (nothing is withdrawn, left RUNNING or enqueued)."""
    from edgetune.host.tune.study import open_storage
    from optuna.trial import TrialState

    import optuna

    r = run_cli(capsys, "tune", str(DIGITS_MODEL), "--calib", str(SAMPLES / "digits_calib.npz"),
                "--dataset", str(DIGITS_TEST), *local_agent.conn(),
                "--db", str(tmp_path / "results.db"), "--cache-dir", str(tmp_path / "cache"),
                "--set", "method=minmax", "--set", "calib_count=32", "--set", "keep_k=0",
                "--set", "intra_op_threads=1", "--iterations", "20000",
                "--short-iterations", "10000", "--warmup", "0", "--trials", "40",
                "--timeout", "1", "--final-rounds", "0", "--study", "timed")
    assert r.code == 0, r.err
    assert "--timeout is reached" in r.err
    trials = optuna.load_study(study_name="timed",
                               storage=open_storage(f"sqlite:///{tmp_path / 'results.db'}")
                               ).get_trials()
    assert 2 <= len(trials) < 40
    # a seeded trial the timeout came before stays WAITING for the resume (never asked)
    assert all(t.state.is_finished() or (t.state == TrialState.WAITING
                                         and t.user_attrs.get("seed"))
               for t in trials), [t.state for t in trials]
    assert sum(t.state.is_finished() for t in trials) >= 2
    assert not [t for t in trials if t.user_attrs.get("withdrawn")]
    assert not [t for t in trials if t.state == TrialState.FAIL]
