"""Board results recorded in the results store through the board session's one hook: a real
agent subprocess over mutual TLS, a real SQLite file."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from edgetune.host.board import BoardSession
from edgetune.host.client import AgentClient
from edgetune.host.hashcache import file_sha256
from edgetune.host.results.recording import StoreRecorder, parent_sha256, record_from_run
from edgetune.host.results.store import ResultsStore
from edgetune.protos.messages import BenchmarkSpec, EvaluateSpec, SessionOptions
from tests.host_fixtures import DIGITS_MODEL, DIGITS_TEST, RunningAgent, local_agent  # noqa: F401

ONE = SessionOptions(input_shapes=(("input", (1, 1, 8, 8)),))


@pytest.fixture()
def recorded(local_agent: RunningAgent, tmp_path: Path) -> Any:
    store = ResultsStore.open(f"sqlite:///{tmp_path / 'results.db'}")
    recorder = StoreRecorder(store, label="nightly")
    client = AgentClient(local_agent.address, local_agent.pki.host.identity)
    with BoardSession(client, "board1", recorder=recorder) as session:
        yield session, recorder, store
    store.close()


def test_a_benchmark_lands_with_its_provenance(recorded: Any) -> None:
    session, recorder, store = recorded
    spec = BenchmarkSpec(model_sha256="", session=ONE, iterations=15, warmup=2,
                         return_samples=True)
    run = session.benchmark(DIGITS_MODEL, spec)
    record = store.get(recorder.result_id(run))
    assert record.kind == "bench" and record.label == "nightly" and record.job_id == run.job_id
    assert record.model.sha256 == run.model_sha256 == file_sha256(DIGITS_MODEL)[0]
    assert record.model.name == DIGITS_MODEL.name
    assert record.model.size_bytes == DIGITS_MODEL.stat().st_size
    assert record.metrics["latency_ms"]["p50"] == run.result.latency.p50_ms
    assert record.metrics["iterations"] == 15
    assert record.options["iterations"] == 15 and record.options["input_shapes"]
    assert record.device["name"] == "board1" and record.device["agent_name"] == "board1"
    assert record.device["onnxruntime_version"] and record.device["arch"]
    assert record.host["edgetune_version"]
    assert record.samples_ms is not None and len(record.samples_ms) == 15
    # the board's load at the end (Linux always says it; 0.0 is a real load, not "unknown")
    assert run.result.load_avg and len(run.result.load_avg) == 3
    assert record.board_state["load_avg_1m"] == run.result.load_avg[0] >= 0.0


def test_an_evaluation_lands_with_its_dataset(recorded: Any) -> None:
    session, recorder, store = recorded
    run = session.evaluate(DIGITS_MODEL, DIGITS_TEST,
                           EvaluateSpec(model_sha256="", dataset_sha256="", metrics=("top1",)))
    record = store.get(recorder.result_id(run))
    assert record.kind == "eval" and record.dataset_sha256 == file_sha256(DIGITS_TEST)[0]
    assert record.metrics["top1"] == run.result.metric_dict()["top1"]
    assert record.metrics["samples"] == 450


def test_a_job_seen_again_is_not_recorded_twice(recorded: Any) -> None:
    session, recorder, store = recorded
    run = session.benchmark(DIGITS_MODEL, BenchmarkSpec(model_sha256="", session=ONE,
                                                        iterations=5))
    again = session.result(session.get_job(run.job_id))
    other = StoreRecorder(store)            # another command run later, same board and job
    other(again)
    assert other.result_id(again) == recorder.result_id(run)
    assert store.count() == 1


def test_a_quantized_model_names_its_parent(tmp_path: Path) -> None:
    from edgetune.host.quant.settings import output_paths
    model = tmp_path / "m.int8.onnx"
    shutil.copyfile(DIGITS_MODEL, model)
    sha = file_sha256(model)[0]
    record_path = output_paths(model)[1]
    assert record_path.name == "m.int8.record.json"
    record_path.write_text('{"input_sha256": "%s", "output_sha256": "%s"}' % ("f" * 64, sha))
    assert parent_sha256(model, sha) == "f" * 64
    record_path.write_text('{"input_sha256": "%s", "output_sha256": "%s"}' % ("f" * 64, "0" * 64))
    assert parent_sha256(model, sha) is None          # the record describes another file
    record_path.write_text("{broken")
    assert parent_sha256(model, sha) is None


def test_a_failed_job_is_not_a_measurement(recorded: Any) -> None:
    session, recorder, store = recorded
    bad = BenchmarkSpec(model_sha256="", session=SessionOptions(
        input_shapes=(("input", (1, 1, 9, 9)),)), iterations=3)
    run = session.benchmark(DIGITS_MODEL, bad)
    assert not run.ok and record_from_run(run) is None
    assert recorder.result_id(run) is None and store.count() == 0


# ---------------------------------------------------------------------- the commands record

def _results(capsys: Any, db: str) -> list:
    from tests.host_fixtures import run_cli
    return run_cli(capsys, "results", "list", "--db", db, "--json").json["results"]


def test_bench_and_eval_record_and_print_result_ids(capsys: Any, local_agent: RunningAgent,
                                                    tmp_path: Path) -> None:
    from tests.host_fixtures import run_cli
    db = str(tmp_path / "cli.db")
    bench = run_cli(capsys, "bench", str(DIGITS_MODEL), "--shape", "input=1x1x8x8",
                    "--iterations", "5", "--label", "cli run", *local_agent.conn(),
                    "--db", db, "--json")
    assert bench.code == 0, bench.err
    result_id = bench.json["results"][0]["result_id"]
    shown = run_cli(capsys, "results", "show", result_id, "--db", db, "--json").json["result"]
    assert shown["label"] == "cli run" and shown["kind"] == "bench"
    assert shown["job_id"] == bench.json["results"][0]["job_id"]
    assert shown["metrics"]["latency_ms"] == bench.json["results"][0]["latency_ms"]
    watched = run_cli(capsys, "jobs", "watch", shown["job_id"], *local_agent.conn(),
                      "--db", db, "--json")
    assert watched.json["results"][0]["result_id"] == result_id      # not recorded twice
    ev = run_cli(capsys, "eval", str(DIGITS_MODEL), "--dataset", str(DIGITS_TEST),
                 "--metric", "top1", *local_agent.conn(), "--db", db, "--json")
    assert ev.code == 0, ev.err
    assert [r["id"] for r in _results(capsys, db)] == [ev.json["results"][0]["result_id"],
                                                      result_id]


def test_no_record_keeps_nothing(capsys: Any, local_agent: RunningAgent, tmp_path: Path) -> None:
    from tests.host_fixtures import run_cli
    db = str(tmp_path / "none.db")
    bench = run_cli(capsys, "bench", str(DIGITS_MODEL), "--shape", "input=1x1x8x8",
                    "--iterations", "3", *local_agent.conn(), "--db", db, "--no-record", "--json")
    assert bench.code == 0 and bench.json["results"][0]["result_id"] is None
    assert not Path(db).exists()


def test_a_database_that_cannot_be_used_stops_bench_before_it_measures(
        capsys: Any, local_agent: RunningAgent, tmp_path: Path) -> None:
    from tests.host_fixtures import run_cli
    bad = tmp_path / "notes.txt"
    bad.write_text("not a database")

    def jobs_on_the_board() -> int:
        listed = run_cli(capsys, "jobs", "list", *local_agent.conn(), "--json")
        assert listed.code == 0, listed.err
        return len(listed.json["jobs"])

    before = jobs_on_the_board()
    # The store opens on a thread while the session connects; the session waits for it
    # before it uploads or submits, so a bad database still costs the board nothing.
    r = run_cli(capsys, "bench", str(DIGITS_MODEL), "--shape", "input=1x1x8x8",
                "--iterations", "3", *local_agent.conn(), "--db", str(bad))
    assert r.code == 3 and "not a SQLite database" in r.err and "--db" in r.err
    assert r.out == "" and "sent" not in r.err and bad.read_text() == "not a database"
    assert jobs_on_the_board() == before


def test_quantize_records_its_model_and_bench_of_it_names_the_parent(
        capsys: Any, local_agent: RunningAgent, tmp_path: Path) -> None:
    from tests.host_fixtures import run_cli
    db = str(tmp_path / "q.db")
    out = tmp_path / "digits.int8.onnx"
    calib = DIGITS_MODEL.with_name("digits_calib.npz")
    q = run_cli(capsys, "quantize", str(DIGITS_MODEL), "-o", str(out), "--calib", str(calib),
                "--db", db, "--json")
    assert q.code == 0, q.err
    shown = run_cli(capsys, "results", "show", q.json["result_id"], "--db", db, "--json")
    record = shown.json["result"]
    float_sha = file_sha256(DIGITS_MODEL)[0]
    assert record["kind"] == "quantize" and record["model"]["name"] == out.name
    assert record["model"]["sha256"] == file_sha256(out)[0]
    assert record["model"]["parent_sha256"] == float_sha
    assert record["metrics"]["size_ratio"] < 0.5 and record["options"]["method"] == "minmax"
    bench = run_cli(capsys, "bench", str(out), "--shape", "input=1x1x8x8", "--iterations", "3",
                    *local_agent.conn(), "--db", db, "--json")
    assert bench.code == 0, bench.err
    benched = run_cli(capsys, "results", "show", bench.json["results"][0]["result_id"],
                      "--db", db, "--json").json["result"]
    assert benched["model"]["parent_sha256"] == float_sha
    children = run_cli(capsys, "results", "list", "--db", db, "--model", benched["model"]["sha256"],
                       "--json").json["results"]
    assert {r["kind"] for r in children} == {"quantize", "bench"}


def test_a_job_this_command_submitted_is_recorded_without_looking_it_up(recorded: Any) -> None:
    """Recording a result must stay cheap: a job the session itself submitted cannot have a
    record yet, so no lookup query runs for it (one for a job seen again, as above)."""
    from sqlalchemy import event

    session, recorder, store = recorded
    statements: list = []
    event.listen(store.engine, "before_cursor_execute",
                 lambda conn, cursor, sql, *rest: statements.append(sql))
    run = session.benchmark(DIGITS_MODEL, BenchmarkSpec(model_sha256="", session=ONE,
                                                        iterations=3))
    assert recorder.result_id(run) is not None
    lookups = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert lookups == [], lookups
    statements.clear()
    StoreRecorder(store)(session.result(session.get_job(run.job_id)))
    assert any("job_id" in s for s in statements if s.lstrip().upper().startswith("SELECT"))
