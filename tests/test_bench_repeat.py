"""bench --repeat N: the state-change flags and the spread from synthetic numbers (unit), and
N independent jobs against a real agent, recorded under one run_id per model."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from edgetune.host.results import repeat
from edgetune.host.results.repeat import RepeatSet, spread, state_flags
from tests.host_fixtures import DIGITS_MODEL, RunningAgent, local_agent, run_cli  # noqa: F401


# ---------------------------------------------------------------------- unit: flags, spread

def test_the_thresholds_are_stated_once() -> None:
    assert repeat.FREQ_DROP_PCT == 5.0 and repeat.TEMP_RISE_C == 5.0
    assert repeat.thresholds() == {"cpu_freq_drop_pct": 5.0, "temperature_rise_c": 5.0}


def test_a_frequency_drop_beyond_the_threshold_is_flagged() -> None:
    first = {"cpu_freq_mhz": 2000.0, "temperature_c": 50.0}
    assert state_flags(first, {"cpu_freq_mhz": 1920.0, "temperature_c": 50.0})["flags"] == []
    dropped = state_flags(first, {"cpu_freq_mhz": 1800.0, "temperature_c": 50.0})
    assert dropped["flags"] == ["cpu_freq_drop"] and dropped["cpu_freq_change_pct"] == -10.0
    # exactly at the threshold is not "more than"
    assert state_flags(first, {"cpu_freq_mhz": 1900.0, "temperature_c": 50.0})["flags"] == []
    # a rise of frequency is no problem
    assert state_flags(first, {"cpu_freq_mhz": 2400.0, "temperature_c": 50.0})["flags"] == []


def test_a_temperature_rise_beyond_the_threshold_is_flagged() -> None:
    first = {"cpu_freq_mhz": 2000.0, "temperature_c": 50.0}
    assert state_flags(first, {"cpu_freq_mhz": 2000.0, "temperature_c": 55.0})["flags"] == []
    hot = state_flags(first, {"cpu_freq_mhz": 1500.0, "temperature_c": 62.5})
    assert hot["flags"] == ["cpu_freq_drop", "temperature_rise"]
    assert hot["temperature_change_c"] == 12.5
    assert "CPU frequency -25.0 %" in repeat.describe_flags(hot)
    assert "temperature +12.5 degC" in repeat.describe_flags(hot)


def test_unknown_board_state_never_flags() -> None:
    # the agent reports 0 (or the store null) where /sys says nothing, as on a VM
    for unknown in ({"cpu_freq_mhz": 0.0, "temperature_c": 0.0},
                    {"cpu_freq_mhz": None, "temperature_c": None}, {}):
        change = state_flags(unknown, {"cpu_freq_mhz": 100.0, "temperature_c": 99.0})
        assert change == {"flags": [], "cpu_freq_change_pct": None, "temperature_change_c": None}


def test_each_repetition_is_judged_against_the_first() -> None:
    rset = RepeatSet(model="m.onnx", sha256="a" * 64, device="board1", run_id="R")
    states = [(1.00, 2000, 45), (1.02, 1990, 47), (1.30, 1500, 60), (1.01, 2000, 48),
              (None, 0, 0), (0.99, 2000, 51)]
    for p50, freq, temp in states:
        rset.add(p50, {"cpu_freq_mhz": freq, "temperature_c": temp})
    assert rset.flagged == [3, 6]               # 6: +6 degC against the first (not the 5th)
    summary = rset.summary()
    assert summary["repeats"] == 6 and summary["succeeded"] == 5
    assert summary["p50_ms"]["median"] == pytest.approx(1.01)
    assert summary["p50_ms"]["min"] == 0.99 and summary["p50_ms"]["max"] == 1.30
    assert summary["thresholds"] == repeat.thresholds()


def test_spread_quantiles_match_numpy() -> None:
    import numpy as np

    values = [3.0, 1.0, 4.0, 1.5, 9.0, 2.6]
    s = spread(values)
    assert s is not None
    assert s.median == pytest.approx(np.median(values))
    assert s.q1 == pytest.approx(np.percentile(values, 25))
    assert s.q3 == pytest.approx(np.percentile(values, 75))
    assert s.iqr == pytest.approx(s.q3 - s.q1) and (s.min, s.max) == (1.0, 9.0)
    assert spread([]) is None


# ---------------------------------------------------------------------- a real agent

def test_repeat_runs_n_jobs_recorded_under_one_run_id(capsys: Any, local_agent: RunningAgent,
                                                      tmp_path: Path) -> None:
    db = str(tmp_path / "repeat.db")
    r = run_cli(capsys, "bench", str(DIGITS_MODEL), "--shape", "input=1x1x8x8",
                "--iterations", "20", "--warmup", "2", "--repeat", "3",
                *local_agent.conn(), "--db", db, "--json")
    assert r.code == 0, r.err
    doc = r.json
    entries = doc["results"]
    assert [e["repeat"] for e in entries] == [1, 2, 3]
    assert len({e["job_id"] for e in entries}) == 3          # three jobs, three sessions
    assert all(e["flags"] == [] for e in entries)            # this VM reports no state
    (summary,) = doc["repeats"]
    run_id = summary["run_id"]
    assert run_id and all(e["run_id"] == run_id for e in entries)
    assert summary["repeats"] == summary["succeeded"] == 3 and summary["flagged"] == []
    p50s = sorted(e["latency_ms"]["p50"] for e in entries)
    assert summary["p50_ms"]["median"] == pytest.approx(p50s[1])
    assert summary["p50_ms"]["min"] == p50s[0] and summary["p50_ms"]["max"] == p50s[2]
    assert summary["result_ids"] == [e["result_id"] for e in entries]

    from edgetune.host.results.store import ResultFilter, ResultsStore
    with ResultsStore.open(db) as store:
        records = store.list(ResultFilter(run_id=run_id), newest_first=False)
    assert [rec.id for rec in records] == summary["result_ids"]
    assert [rec.options["repeat"] for rec in records] == [{"index": i, "of": 3}
                                                         for i in (1, 2, 3)]
    assert all(rec.board_state["flags"] == [] for rec in records)

    table = run_cli(capsys, "bench", str(DIGITS_MODEL), "--shape", "input=1x1x8x8",
                    "--iterations", "5", "--repeat", "2", *local_agent.conn(), "--db", db)
    assert table.code == 0, table.err
    assert "median p50 ms" in table.out and "2/2" in table.out and "none" in table.out


def test_repeat_interleaves_models_one_run_id_each(capsys: Any, local_agent: RunningAgent,
                                                   tmp_path: Path) -> None:
    db = str(tmp_path / "two.db")
    r = run_cli(capsys, "bench", str(DIGITS_MODEL), str(DIGITS_MODEL), "--shape",
                "input=1x1x8x8", "--iterations", "5", "--repeat", "2",
                *local_agent.conn(), "--db", db, "--json")
    assert r.code == 0, r.err
    assert [e["repeat"] for e in r.json["results"]] == [1, 1, 2, 2]
    first, second = r.json["repeats"]
    assert first["run_id"] != second["run_id"]


def test_repeat_without_recording_and_bad_counts(capsys: Any, local_agent: RunningAgent,
                                                 tmp_path: Path) -> None:
    r = run_cli(capsys, "bench", str(DIGITS_MODEL), "--shape", "input=1x1x8x8",
                "--iterations", "3", "--repeat", "2", *local_agent.conn(), "--no-record",
                "--json")
    assert r.code == 0, r.err
    assert all(e["result_id"] is None and e["run_id"] is None for e in r.json["results"])
    assert r.json["repeats"][0]["run_id"] is None
    bad = run_cli(capsys, "bench", str(DIGITS_MODEL), "--repeat", "0", *local_agent.conn())
    assert bad.code == 2 and "--repeat must be between 1 and 1000" in bad.err


def test_flags_are_recorded_when_the_board_state_changes(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    """The recorder puts what the command annotated (run_id, repetition, flags) into the
    record it stores, beside what the board said."""
    import edgetune.host.results.recording as recording
    from edgetune.host.results.records import ModelRef, Record
    from edgetune.host.results.store import ResultsStore

    record = Record(kind="bench", model=ModelRef("a" * 64), metrics={},
                    board_state={"temperature_c": 70.0}, options={"iterations": 5})
    monkeypatch.setattr(recording, "record_from_run", lambda run, **kw: record)
    run = SimpleNamespace(board=SimpleNamespace(name="board1"), job_id="job1", kind="benchmark")
    with ResultsStore.open(str(tmp_path / "flags.db")) as store:
        recorder = recording.StoreRecorder(store, label="x")
        recorder.annotate("board1", "job1", run_id="RUN",
                          options={"repeat": {"index": 2, "of": 3}},
                          board_state={"flags": ["temperature_rise"]})
        recorder(run)
        added = store.get(recorder.result_id(run))
    assert added.run_id == "RUN" and added.options["repeat"] == {"index": 2, "of": 3}
    assert added.options["iterations"] == 5
    assert added.board_state == {"temperature_c": 70.0, "flags": ["temperature_rise"]}
