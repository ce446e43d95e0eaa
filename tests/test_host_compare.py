"""`edgetune compare` against a real agent subprocess (mutual TLS, real onnxruntime): the
digits model against its INT8 and against itself, a copy made 20 % slower, models whose inputs
differ, thermal gating with a thermal zone the test controls, and an older agent."""

from __future__ import annotations

import hashlib
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from edgetune.exitcodes import ExitStatus
from tests.host_fixtures import (DIGITS_MODEL, DIGITS_TEST, RunningAgent, local_agent,  # noqa: F401
                                 run_cli, start_agent, write_passphrase_file)

CHANGE_KEYS = {"latency_p50_ratio", "latency_p50_ratio_ci", "top1_delta_pts", "size_ratio",
               "significant"}


@pytest.fixture(scope="module")
def int8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bench.compare_targets import quantize_digits
    return quantize_digits(tmp_path_factory.mktemp("int8") / "digits_cnn.int8.onnx")


@pytest.fixture(scope="module")
def chains(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from bench.compare_targets import chain_model
    folder = tmp_path_factory.mktemp("chains")
    paths = folder / "chain5.onnx", folder / "chain6.onnx"
    paths[0].write_bytes(chain_model(5))
    paths[1].write_bytes(chain_model(6))
    return paths


def test_digits_against_its_int8(local_agent: RunningAgent, int8: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture) -> None:
    db = ["--db", str(tmp_path / "results.db")]
    r = run_cli(capsys, "compare", str(DIGITS_MODEL), str(int8), "--dataset", str(DIGITS_TEST),
                "--rounds", "3", "--iterations", "200", "--threads", "1",
                *local_agent.conn(), *db, "--json")
    assert r.code == 0, r.err
    doc = r.json
    assert set(doc) == {"a", "b", "change", "result_id"}
    change = doc["change"]
    assert set(change) >= CHANGE_KEYS
    low, high = change["latency_p50_ratio_ci"]
    assert low <= change["latency_p50_ratio"] <= high
    assert isinstance(change["significant"], bool)
    assert change["significant"] == (low > 1 or high < 1)
    assert change["size_ratio"] < 0.5                       # int8 weights
    assert abs(change["top1_delta_pts"]) < 5
    a, b = doc["a"], doc["b"]
    assert (a["kind"], b["kind"]) == ("compare", "compare")
    assert (a["model"]["name"], b["model"]["name"]) == ("digits_cnn.onnx", "digits_cnn.int8.onnx")
    assert b["model"]["parent_sha256"] == a["model"]["sha256"]   # made by edgetune quantize
    assert a["run_id"] and a["run_id"] == b["run_id"] and a["job_id"] == b["job_id"]
    assert len(a["metrics"]["rounds"]) == len(b["metrics"]["rounds"]) == 3
    assert a["metrics"]["top1"] > 0.99 and b["metrics"]["cosine"] > 0.99
    assert doc["result_id"] == b["id"]
    shown = run_cli(capsys, "results", "show", b["id"], *db, "--json")
    assert shown.code == 0, shown.err
    stored = shown.json["result"]["metrics"]["compare"]
    assert stored["change"]["significant"] == change["significant"]
    assert stored["verdict"].startswith(("B is", "within noise"))
    listed = run_cli(capsys, "results", "list", "--kind", "compare", *db, "--json")
    assert {x["id"] for x in listed.json["results"]} == {a["id"], b["id"]}

    text = run_cli(capsys, "compare", str(DIGITS_MODEL), str(int8), "--dataset",
                   str(DIGITS_TEST), "--rounds", "2", "--iterations", "50", *local_agent.conn(),
                   "--no-record")
    assert text.code == 0, text.err
    for row in ("| size (KiB)", "| top-1 accuracy", "| fidelity: cosine vs reference",
                "| p50 latency (ms)", "| p90 latency (ms)", "| throughput (inf/s)", "95% CI"):
        assert row in text.out
    assert "\nB is " in text.out or "\nwithin noise (95% CI" in text.out
    assert "recorded as" not in text.out


def test_digits_against_itself(local_agent: RunningAgent, capsys: pytest.CaptureFixture) -> None:
    r = run_cli(capsys, "compare", str(DIGITS_MODEL), str(DIGITS_MODEL), "--rounds", "5",
                "--iterations", "300", "--threads", "1", *local_agent.conn(), "--no-record",
                "--json")
    assert r.code == 0, r.err
    change = r.json["change"]
    assert 0.7 < change["latency_p50_ratio"] < 1.4
    assert change["size_ratio"] == 1.0 and change["top1_delta_pts"] is None
    assert r.json["result_id"] is None and r.json["a"]["id"] == ""


def test_a_copy_made_20_percent_slower_is_found_slower(local_agent: RunningAgent, chains: Any,
                                                       capsys: pytest.CaptureFixture) -> None:
    r = run_cli(capsys, "compare", str(chains[0]), str(chains[1]), "--rounds", "5",
                "--iterations", "40", "--threads", "1", *local_agent.conn(), "--no-record")
    assert r.code == 0, r.err
    verdict = r.out.strip().splitlines()[-1]
    assert verdict.startswith("B is 1.") and "95% CI 1." in verdict, r.out


def test_models_with_different_inputs_are_refused(local_agent: RunningAgent, chains: Any,
                                                  capsys: pytest.CaptureFixture) -> None:
    # Before anything runs: not even the (here unreachable) board is contacted.
    conn = local_agent.conn()
    conn[conn.index("--address") + 1] = "127.0.0.1:9"
    r = run_cli(capsys, "compare", str(DIGITS_MODEL), str(chains[0]), *conn, "--no-record")
    assert r.code == ExitStatus.BAD_INPUT, r.err
    assert "take different inputs" in r.err and "x float [16, 256]" in r.err
    # Named by hash, the agent refuses them at submit.
    shas = []
    for model in (DIGITS_MODEL, chains[0]):
        up = run_cli(capsys, "models", "upload", str(model), *local_agent.conn(), "--json")
        assert up.code == 0, up.err
        shas.append(hashlib.sha256(Path(model).read_bytes()).hexdigest())
    r = run_cli(capsys, "compare", *shas, *local_agent.conn(), "--no-record")
    assert r.code != 0 and "different inputs" in r.err


# ---------------------------------------------------------------------- thermal gating

@pytest.fixture(scope="module")
def hot_board(pki: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """An agent whose sysfs root is a folder the test writes: one thermal zone."""
    work = tmp_path_factory.mktemp("hot")
    sysfs = work / "sys"
    agent = start_agent(pki, work / "agent", extra_args=["--sysfs-root", str(sysfs)])
    try:
        yield agent, sysfs
    finally:
        agent.agent.stop()


def _zone(sysfs: Path, millideg: int) -> Path:
    zone = sysfs / "class" / "thermal" / "thermal_zone0"
    zone.mkdir(parents=True, exist_ok=True)
    (zone / "temp").write_text(f"{millideg}\n")
    return zone


def test_bench_waits_until_the_zone_cools(hot_board: Any, capsys: pytest.CaptureFixture) -> None:
    agent, sysfs = hot_board
    zone = _zone(sysfs, 85000)
    cooler = threading.Timer(1.5, lambda: (zone / "temp").write_text("45000\n"))
    cooler.start()
    try:
        r = run_cli(capsys, "bench", str(DIGITS_MODEL), "--iterations", "20", "--max-temp", "60",
                    "--max-temp-wait", "60", *agent.conn(), "--no-record", "--json")
    finally:
        cooler.cancel()
    assert r.code == 0, r.err
    entry = r.json["results"][0]
    assert entry["thermal"]["waited_s"] >= 1.0 and not entry["thermal"]["no_sensor"]
    assert entry["thermal"]["start_temp_c"] == 45.0 and entry["thermal"]["max_temp_c"] == 60.0
    assert "for the board to cool below 60 °C" in entry["note"]


def test_bench_gives_up_with_a_clear_message(hot_board: Any,
                                             capsys: pytest.CaptureFixture) -> None:
    agent, sysfs = hot_board
    _zone(sysfs, 90000)
    started = time.monotonic()
    r = run_cli(capsys, "bench", str(DIGITS_MODEL), "--iterations", "20", "--max-temp", "60",
                "--max-temp-wait", "1", *agent.conn(), "--no-record")
    assert r.code == ExitStatus.AGENT
    assert "the board stayed at or above 60 °C" in r.err and "90.0 °C" in r.err
    assert "--max-temp-wait" in r.err and time.monotonic() - started < 30


def test_compare_records_the_waits(hot_board: Any, tmp_path: Path,
                                   capsys: pytest.CaptureFixture) -> None:
    agent, sysfs = hot_board
    _zone(sysfs, 40000)
    r = run_cli(capsys, "compare", str(DIGITS_MODEL), str(DIGITS_MODEL), "--rounds", "2",
                "--iterations", "20", "--max-temp", "70", *agent.conn(),
                "--db", str(tmp_path / "r.db"), "--json")
    assert r.code == 0, r.err
    for side in ("a", "b"):
        thermal = r.json[side]["board_state"]["thermal"]
        assert thermal == {"max_temp_c": 70.0, "no_sensor": False, "waited_s": 0.0}
        assert [x["thermal_wait_s"] for x in r.json[side]["metrics"]["rounds"]] == [0.0, 0.0]


def test_a_board_without_a_sensor_says_so(hot_board: Any,
                                          capsys: pytest.CaptureFixture) -> None:
    agent, sysfs = hot_board
    shutil.rmtree(sysfs / "class", ignore_errors=True)
    r = run_cli(capsys, "bench", str(DIGITS_MODEL), "--iterations", "20", "--max-temp", "60",
                *agent.conn(), "--no-record")
    assert r.code == 0, r.err
    assert "exposes no thermal zone" in r.err and "nothing was waited for" in r.err
    r = run_cli(capsys, "compare", str(DIGITS_MODEL), str(DIGITS_MODEL), "--rounds", "2",
                "--iterations", "20", "--max-temp", "60", *agent.conn(), "--no-record", "--json")
    assert r.code == 0, r.err
    assert r.json["a"]["board_state"]["thermal"]["no_sensor"] is True


# ---------------------------------------------------------------------- an older agent

def test_an_agent_without_comparisons_asks_for_an_upgrade(
        pki: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    """An agent of a version before comparisons reads JobSpec.compare as an unknown field:
    it refuses "a new kind of job" (as 0.1.0 does, tests/test_compat_py39.py), and the host
    says to upgrade the agent."""
    from edgetune.device import servicer
    from edgetune.protos.messages import UnknownToThisVersion
    from tests.agent_fixtures import start_agent as start_in_process

    real = servicer.job_spec_from_pb2

    def before_comparisons(msg: Any) -> Any:
        if msg.WhichOneof("kind") == "compare":
            raise UnknownToThisVersion("a new kind of job")
        return real(msg)

    monkeypatch.setattr(servicer, "job_spec_from_pb2", before_comparisons)
    agent = start_in_process(pki, tmp_path / "store")
    try:
        conn = ["--address", agent.address, "--ca", str(pki.ca_cert), "--cert",
                str(pki.host.cert), "--key", str(pki.host.key), "--passphrase-file",
                str(write_passphrase_file(tmp_path / "passphrase", pki.passphrase))]
        r = run_cli(capsys, "compare", str(DIGITS_MODEL), str(DIGITS_MODEL), *conn,
                    "--no-record")
    finally:
        agent.stop()
    assert r.code == ExitStatus.INCOMPATIBLE, r.err
    assert "a new kind of job" in r.err and "upgrade edgetune-agent on the board" in r.err


def test_jobs_watch_and_show_of_a_comparison_print_the_comparison(
        local_agent: RunningAgent, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A comparison re-attached with `jobs watch` (after Ctrl-C) or shown with `jobs show`
    prints what `compare` prints, not a benchmark or evaluation table."""
    db = ["--db", str(tmp_path / "results.db")]
    r = run_cli(capsys, "compare", str(DIGITS_MODEL), str(DIGITS_MODEL), "--rounds", "2",
                "--iterations", "20", *local_agent.conn(), *db, "--json")
    assert r.code == 0, r.err
    job = r.json["a"]["job_id"]
    watched = run_cli(capsys, "jobs", "watch", job, *local_agent.conn(), *db, "--json")
    assert watched.code == 0, watched.err
    assert set(watched.json) == {"a", "b", "change", "result_id"}
    assert watched.json["result_id"] == r.json["result_id"]          # recorded once
    assert watched.json["change"]["latency_p50_ratio"] == r.json["change"]["latency_p50_ratio"]
    shown = run_cli(capsys, "jobs", "show", job, *local_agent.conn())
    assert shown.code == 0, shown.err
    assert "| p50 latency" in shown.out or "p50" in shown.out
    assert "p50 ratio B/A per round:" in shown.out and "evaluation" not in shown.out
