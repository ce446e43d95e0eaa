"""edgetune fleet bench/eval/runs/show against real agents in separate processes, with faults:
an agent SIGKILLed while its job runs, a closed port, a port that takes TCP and never speaks TLS,
a board whose certificate comes from another CA, and a board leased to another host. Each
fault fails only its own row, with its reason; the run's rows and records are in the results
database under its run id; --resume re-runs only what failed (re-attaching jobs still on their
boards) and refuses other models or options; Ctrl-C leaves the jobs on the boards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

from edgetune.certs import Identity
from edgetune.host.client import AgentClient, ClientSettings
from edgetune.host.localagent import AgentFiles, LocalAgent
from edgetune.host.results.store import ResultFilter, ResultsStore
from tests.host_fixtures import (DIGITS_MODEL, DIGITS_TEST, ONE_DIGIT, run_cli, start_agent,
                                 started_agents, write_inventory)
from tests.test_fleet import SilentPort, _closed_port

pytestmark = pytest.mark.slow          # six agents and a few fleet runs: ~a minute

GOOD = ("good0", "good1", "good2")
BENCH = ("--shape", ONE_DIGIT, "--warmup", "2", "--duration", "1.5", "--retries", "1",
         "--reattach-window", "1", "--timeout", "4")


@dataclass
class Fleet:
    inventory: Path
    db: str
    agents: Dict[str, Any]
    pki: Any
    other_pc: Identity                      # another host of our CA (it leases a board)
    base: Path
    first: Dict[str, Any] = field(default_factory=dict)

    def cli(self, capsys: Any, *argv: str) -> Any:
        return run_cli(capsys, "fleet", *argv, "--inventory", str(self.inventory),
                       "--db", self.db)

    def client(self, name: str, identity: Any = None) -> AgentClient:
        return AgentClient(self.agents[name].address, identity or self.pki.host.identity,
                           settings=ClientSettings(timeout_s=10))

    def jobs(self, name: str) -> List[Any]:
        with self.client(name) as client:
            return client.list_jobs()

    def records(self, run_id: str) -> List[Any]:
        with ResultsStore.open(self.db) as store:
            return store.list(ResultFilter(run_id=run_id), limit=None)


def _variant(model: Path, target: Path) -> Path:
    """The digits model with other bytes (a doc string): a model no board has yet."""
    import onnx

    proto = onnx.load(str(model))
    proto.doc_string = f"fleet test {time.time_ns()}"
    onnx.save(proto, str(target))
    return target


@pytest.fixture(scope="module")
def fleet(pki: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    base = tmp_path_factory.mktemp("fleet-run")
    rogue_dir = base / "rogue-pki"
    rogue_dir.mkdir()
    rogue_cert, rogue_key = pki.foreign_ca.issue_device("rogue", ips=["127.0.0.1"]).write(
        rogue_dir, pki.passphrase)
    pc2 = pki.ca.issue_host("pc2", key_type="ecdsa-p256")
    other_pc = Identity(ca_pem=pki.ca.cert_pem, cert_pem=pc2.cert_pem, key_pem=pc2.key_pem,
                        common_name="pc2")
    kinds = {name: {} for name in (*GOOD, "victim", "leased")}
    kinds["rogue"] = {"cert": rogue_cert, "key": rogue_key,
                      "ca": pki.dir / "foreign" / "ca-cert.pem"}
    with started_agents(tuple(kinds), lambda name: start_agent(pki, base / name, **kinds[name])
                        ) as agents:                                   # six at once
        silent = SilentPort()
        try:
            devices = {name: (agents[name].address, ["good" if name in GOOD else "bad", "all"])
                       for name in kinds}
            devices.update(silent=(f"127.0.0.1:{silent.port}", ["bad", "all"]),
                           closed=(f"127.0.0.1:{_closed_port()}", ["bad", "all"]))
            inventory = write_inventory(base / "edgetune.toml", pki.host,
                                        agents["good0"].passphrase_file, devices)
            yield Fleet(inventory=inventory, db=f"sqlite:///{base / 'results.db'}",
                        agents=agents, pki=pki, other_pc=other_pc, base=base)
        finally:
            silent.close()


def _kill_when_running(fleet: Fleet, name: str, killed: Dict[str, str]) -> threading.Thread:
    """SIGKILL agent ``name`` as soon as it reports a running job (the job it runs is noted)."""
    def watch() -> None:
        deadline = time.monotonic() + 60
        with fleet.client(name) as client:
            while time.monotonic() < deadline:
                running = client.info().running_job_id
                if running:
                    killed["job"] = running
                    fleet.agents[name].agent.kill()
                    return
                time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.fixture(scope="module")
def first_run(fleet: Fleet, capsys_module: Any, monkeypatch_module: Any) -> Dict[str, Any]:
    """One fleet bench over all eight boards: the victim is killed mid-run, the board 'leased'
    is leased to another host, three boards never get a connection through."""
    import edgetune.host.client as client_module
    import edgetune.host.hashcache as hashcache

    model = _variant(DIGITS_MODEL, fleet.base / "fresh.onnx")
    hashed: List[Path] = []
    real = hashcache.file_sha256

    def counting(path: Path, *args: Any, **kwargs: Any) -> Any:
        hashed.append(Path(path))
        return real(path, *args, **kwargs)

    monkeypatch_module.setattr(hashcache, "file_sha256", counting)
    monkeypatch_module.setattr(client_module, "file_sha256", counting)
    with fleet.client("leased", fleet.other_pc) as other:
        other.acquire_lease(600)
    killed: Dict[str, str] = {}
    killer = _kill_when_running(fleet, "victim", killed)
    started = time.monotonic()
    result = fleet.cli(capsys_module, "bench", str(model), "--devices", "tag:all",
                       "--label", "fleet-test", *BENCH, "--json")
    elapsed = time.monotonic() - started
    killer.join(5)
    monkeypatch_module.undo()
    return {"result": result, "model": model, "killed": killed, "hashed": hashed,
            "elapsed": elapsed}


@pytest.fixture(scope="module")
def capsys_module(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A capsys for module-scoped fixtures (pytest's own is function-scoped)."""
    from _pytest.capture import CaptureFixture, SysCapture

    capture = CaptureFixture(SysCapture, request, _ispytest=True)
    capture._start()
    yield capture
    capture.close()


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_each_fault_fails_only_its_own_row_with_its_reason(fleet: Fleet,
                                                           first_run: Dict[str, Any]) -> None:
    r = first_run["result"]
    assert r.code == 11, r.err                           # some failed, some succeeded
    doc = r.json
    rows = {row["device"]: row for row in doc["rows"]}
    assert set(rows) == {*GOOD, "victim", "leased", "rogue", "silent", "closed"}
    for name in GOOD:
        row = rows[name]
        assert row["state"] == "done" and row["error"] is None, row
        assert row["latency_ms"] > 0 and row["result_id"] and row["job_id"]
        assert row["metrics"]["latency_ms"]["p50"] == row["latency_ms"]
        assert row["model"] == "fresh.onnx"
    assert first_run["killed"].get("job"), "the victim was never seen running a job"
    victim = rows["victim"]
    assert victim["state"] == "failed" and victim["result_id"] is None
    assert victim["error"].startswith("lost mid-run: "), victim["error"]
    assert first_run["killed"]["job"] == victim["job_id"]
    assert rows["leased"]["state"] == "failed"
    assert rows["leased"]["error"].startswith("leased: ") and "pc2" in rows["leased"]["error"]
    assert rows["rogue"]["error"].startswith("refused: ") and "foreign CA" in rows["rogue"]["error"]
    assert rows["silent"]["error"].startswith("unreachable: ")
    assert rows["closed"]["error"].startswith("unreachable: ")
    for name in ("silent", "closed", "rogue", "leased"):
        assert rows[name]["job_id"] is None and rows[name]["metrics"] is None
    # The one summary entry: the model on this PC's kind of board, over the three good ones.
    (summary,) = doc["summary"]
    p50s = sorted(rows[n]["latency_ms"] for n in GOOD)
    assert summary["boards"] == 3 and sorted(summary["devices"]) == list(GOOD)
    assert (summary["min"], summary["median"], summary["max"]) == tuple(p50s)
    assert summary["metric"] == "latency_p50_ms" and summary["arch"]
    # Quiet output when stdout is not a terminal: a line per finished row on stderr.
    assert "fleet: good0 fresh.onnx: done p50 " in r.err
    assert "fleet: closed fresh.onnx: failed: unreachable" in r.err
    # The agents' certificates all say 'board1': each board named otherwise is warned about.
    assert "fleet: warning: good0: its certificate is for 'board1', not 'good0'" in r.err
    # The two dead addresses cost their deadlines and one retry each, at once, not in turn.
    assert first_run["elapsed"] < 40


def test_the_file_is_hashed_once_and_uploaded_to_every_board(fleet: Fleet,
                                                            first_run: Dict[str, Any]) -> None:
    model = first_run["model"]
    assert [p for p in first_run["hashed"] if p.resolve() == model.resolve()] == [model]
    sha = first_run["result"].json["summary"][0]["sha256"]
    for name in GOOD:
        with fleet.client(name) as client:
            assert sha in {b.sha256 for b in client.list_blobs()}


def test_every_row_is_in_the_results_database_under_the_run_id(
        fleet: Fleet, first_run: Dict[str, Any], capsys: Any) -> None:
    doc = first_run["result"].json
    run_id = doc["run"]
    records = fleet.records(run_id)
    assert sorted(r.device_name for r in records) == list(GOOD)
    by_id = {r.id: r for r in records}
    for row in doc["rows"]:
        if row["state"] == "done":
            record = by_id[row["result_id"]]
            assert record.run_id == run_id and record.kind == "bench"
            assert record.job_id == row["job_id"] and record.label == "fleet-test"
            assert record.metrics["latency_ms"]["p50"] == row["latency_ms"]
    show = fleet.cli(capsys, "show", run_id[:10], "--json")
    assert show.code == 0, show.err
    assert show.json["rows"] == sorted(doc["rows"], key=lambda r: r["device"])
    assert show.json["summary"] == doc["summary"] and show.json["kind"] == "benchmark"
    runs = fleet.cli(capsys, "runs", "--json")
    assert runs.code == 0
    (listed,) = [r for r in runs.json["runs"] if r["run"] == run_id]
    assert listed["rows"] == {"done": 3, "failed": 5} and listed["label"] == "fleet-test"
    assert listed["models"] == ["fresh.onnx"] and len(listed["devices"]) == 8
    text = fleet.cli(capsys, "show", run_id)
    assert text.code == 0 and "lost mid-run" in text.out and "per board kind" in text.out
    assert fleet.cli(capsys, "show", "01JZZZZZZZ").code == 4


def test_resume_refuses_other_models_or_options(fleet: Fleet, first_run: Dict[str, Any],
                                                capsys: Any) -> None:
    run_id = first_run["result"].json["run"]
    before = fleet.records(run_id)
    model = str(first_run["model"])
    other = fleet.cli(capsys, "bench", model, *BENCH[:-6], "--duration", "2", "--retries",
                      "1", "--resume", run_id)
    assert other.code == 2 and "min_duration_s was 1.5, now 2.0" in other.err, other.err
    other = fleet.cli(capsys, "bench", str(DIGITS_MODEL), *BENCH, "--resume", run_id)
    assert other.code == 2 and "other models" in other.err and "fresh.onnx" in other.err
    other = fleet.cli(capsys, "eval", model, "--dataset", str(DIGITS_TEST), "--resume", run_id)
    assert other.code == 2 and "this is a fleet eval" in other.err
    bigger = fleet.base / "bigger.toml"                  # the inventory and one more board
    bigger.write_text(fleet.inventory.read_text() + '\n[devices.extra]\naddress = "127.0.0.1:9"\n')
    outside = run_cli(capsys, "fleet", "bench", model, *BENCH, "--resume", run_id, "--devices",
                      "extra,good0", "--inventory", str(bigger), "--db", fleet.db)
    assert outside.code == 2 and f"extra was not part of run {run_id}" in outside.err
    assert len(fleet.records(run_id)) == len(before)            # nothing ran


def test_resume_reruns_only_the_failed_rows(fleet: Fleet, first_run: Dict[str, Any],
                                            capsys: Any) -> None:
    run_id = first_run["result"].json["run"]
    first = {row["device"]: row for row in first_run["result"].json["rows"]}
    # The victim comes back at its address with its store (its job is now 'interrupted'),
    # and the other host lets the leased board go.
    victim = fleet.agents["victim"]
    port = victim.address.rsplit(":", 1)[1]
    victim.agent = LocalAgent(ready_timeout_s=60, listen=f"127.0.0.1:{port}")
    files = AgentFiles(ca=fleet.pki.ca_cert, cert=fleet.pki.device.cert,
                       key=fleet.pki.device.key, passphrase_file=victim.passphrase_file)
    assert victim.agent.start(files, victim.store) == victim.address
    with fleet.client("leased", fleet.other_pc) as other:
        assert other.release_lease()[0]
    jobs_before = {name: len(fleet.jobs(name)) for name in GOOD}
    r = fleet.cli(capsys, "bench", str(first_run["model"]), *BENCH, "--resume", run_id,
                  "--json")                              # the run's label need not be given
    assert r.code == 11, r.err                           # rogue, silent, closed still fail
    assert r.json["run"] == run_id
    rows = {row["device"]: row for row in r.json["rows"]}
    for name in GOOD:                                    # kept as they were, not run again
        assert rows[name] == {**first[name], "metrics": rows[name]["metrics"]}
        assert rows[name]["result_id"] == first[name]["result_id"]
        assert len(fleet.jobs(name)) == jobs_before[name]
    for name in ("victim", "leased"):
        assert rows[name]["state"] == "done" and rows[name]["result_id"], rows[name]
    assert rows["victim"]["job_id"] != first["victim"]["job_id"]      # a new job
    with fleet.client("victim") as client:
        assert client.get_job(first["victim"]["job_id"]).state.value == "interrupted"
    for name in ("rogue", "silent", "closed"):
        assert rows[name]["state"] == "failed"
    records = fleet.records(run_id)
    assert sorted(r.device_name for r in records) == sorted([*GOOD, "victim", "leased"])
    assert {r.label for r in records} == {"fleet-test"}
    (summary,) = r.json["summary"]
    assert summary["boards"] == 5


def test_ctrl_c_leaves_the_jobs_on_the_boards_and_resume_reattaches(
        fleet: Fleet, capsys: Any) -> None:
    from edgetune.host.fleet.runbook import RunBook

    argv = [sys.executable, "-m", "edgetune.host", "fleet", "bench", str(DIGITS_MODEL),
            "--devices", "good0,good1", "--shape", ONE_DIGIT, "--duration", "4",
            "--inventory", str(fleet.inventory), "--db", fleet.db, "--json"]
    jobs_before = {name: len(fleet.jobs(name)) for name in ("good0", "good1")}
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        run_id, submitted = "", {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(submitted) < 2:
            time.sleep(0.2)
            with ResultsStore.open(fleet.db) as store:
                book = RunBook(store)
                runs = [r for r in book.runs(5) if r.devices == ("good0", "good1")]
                if runs:
                    run_id = runs[0].id
                    submitted = {r.device: r.job_id for r in book.rows(run_id)
                                 if r.state == "submitted"}
        assert len(submitted) == 2, "the jobs were never submitted"
        for name in ("good0", "good1"):             # fleet bench leases its boards
            with fleet.client(name) as client:
                assert client.info().lease_holder == fleet.pki.host.name
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, err.decode()
    for name in ("good0", "good1"):                 # the boards' leases were let go
        with fleet.client(name) as client:
            assert client.info().lease_holder == ""
    assert f"--resume {run_id}" in err.decode() and "stay on their boards" in err.decode()
    with ResultsStore.open(fleet.db) as store:
        rows = {r.device: r for r in RunBook(store).rows(run_id)}
    assert {r.state for r in rows.values()} == {"interrupted"}
    assert {d: r.job_id for d, r in rows.items()} == submitted
    r = fleet.cli(capsys, "bench", str(DIGITS_MODEL), "--shape", ONE_DIGIT, "--duration", "4",
                  "--resume", run_id, "--json")
    assert r.code == 0, r.err
    for row in r.json["rows"]:                           # the very jobs, re-attached
        assert row["state"] == "done" and row["job_id"] == submitted[row["device"]]
    for name in ("good0", "good1"):
        assert len(fleet.jobs(name)) == jobs_before[name] + 1
    assert len(fleet.records(run_id)) == 2


def test_fleet_eval_skips_quarantined_boards_and_prints_tables(fleet: Fleet,
                                                               capsys: Any) -> None:
    from edgetune.host.fleet.quarantine import QuarantineBook

    with ResultsStore.open(fleet.db) as store:
        QuarantineBook.open(store).quarantine("silent", "hangs at TLS", "manual")
    try:
        r = fleet.cli(capsys, "eval", str(DIGITS_MODEL), "--dataset", str(DIGITS_TEST),
                      "--devices", "good0,good1,silent,closed", "--timeout", "4",
                      "--retries", "0")
    finally:
        with ResultsStore.open(fleet.db) as store:
            QuarantineBook.open(store).release("silent")
    assert r.code == 11, r.err                            # closed failed; silent left out
    assert "skipping silent: quarantined" in r.err and "silent" not in r.out
    assert "good0" in r.out and "top1=" in r.out and "per board kind" in r.out
    line = next(x for x in r.err.splitlines() if x.startswith("fleet: good1 digits_cnn.onnx"))
    assert line.startswith("fleet: good1 digits_cnn.onnx: done ") and " top1=0.99" in line
    with ResultsStore.open(fleet.db) as store:
        book = QuarantineBook.open(store)
        # Told of each run's failure: counted, or (its third in this module) quarantined.
        entry = book.get("closed")
        assert book.failures_in_a_row("closed") >= 1 or (entry is not None
                                                         and entry.source == "jobs")
        assert book.failures_in_a_row("good0") == 0 and book.get("good0") is None
        book.release("closed")
    no_boards = fleet.cli(capsys, "bench", str(DIGITS_MODEL))
    assert no_boards.code == 2 and "--devices" in no_boards.err


def _restart_when_running(fleet: Fleet, name: str, seen: Dict[str, str]) -> threading.Thread:
    """SIGKILL agent ``name`` while it runs a job and start it again at once, at the same
    address with the same store (a board whose agent crashed and was restarted by systemd)."""
    running = fleet.agents[name]
    port = running.address.rsplit(":", 1)[1]
    files = AgentFiles(ca=fleet.pki.ca_cert, cert=fleet.pki.device.cert,
                       key=fleet.pki.device.key, passphrase_file=running.passphrase_file)

    def restart() -> None:
        deadline = time.monotonic() + 60
        with fleet.client(name) as client:
            while time.monotonic() < deadline and not seen:
                job = client.info().running_job_id
                if job:
                    seen["job"] = job
                time.sleep(0.05)
        running.agent.kill()
        running.agent = LocalAgent(ready_timeout_s=60, listen=f"127.0.0.1:{port}")
        running.agent.start(files, running.store)

    thread = threading.Thread(target=restart, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("retries", [1, 0])
def test_an_agent_restarted_mid_run_is_retried_or_named(fleet: Fleet, capsys: Any,
                                                        retries: int) -> None:
    seen: Dict[str, str] = {}
    restarter = _restart_when_running(fleet, "victim", seen)
    r = fleet.cli(capsys, "bench", str(DIGITS_MODEL), "--devices", "victim", "--shape",
                  ONE_DIGIT, "--duration", "1.5", "--reattach-window", "30", "--retries",
                  str(retries), "--no-lease", "--json")
    restarter.join(60)
    (row,) = r.json["rows"]
    with fleet.client("victim") as client:
        assert client.get_job(seen["job"]).state.value == "interrupted"
    if retries:
        assert r.code == 0, r.err                   # re-submitted after the restart
        assert row["state"] == "done" and row["job_id"] != seen["job"]
    else:
        assert r.code == 12, r.err                  # none succeeded
        assert row["state"] == "failed" and row["job_id"] == seen["job"]
        assert row["error"].startswith("agent restarted mid-run: job " + seen["job"])


def test_a_selection_on_reported_attributes_and_no_record(fleet: Fleet, capsys: Any) -> None:
    import platform

    from edgetune.host.fleet.runbook import RunBook

    with ResultsStore.open(fleet.db) as store:
        runs_before = len(RunBook(store).runs(None))
        records_before = store.count()
    r = fleet.cli(capsys, "bench", str(DIGITS_MODEL), "--devices",
                  f"arch={platform.machine()}+tag:good", "--shape", ONE_DIGIT,
                  "--iterations", "20", "--timeout", "4", "--no-record", "--json")
    assert r.code == 0, r.err
    rows = r.json["rows"]
    assert [row["device"] for row in rows] == list(GOOD)          # asked the boards' arch
    assert all(row["state"] == "done" and row["result_id"] is None for row in rows)
    assert all(row["latency_ms"] > 0 for row in rows) and r.json["summary"][0]["boards"] == 3
    with ResultsStore.open(fleet.db) as store:                    # nothing kept
        assert len(RunBook(store).runs(None)) == runs_before
        assert store.count() == records_before
    resume = fleet.cli(capsys, "bench", str(DIGITS_MODEL), "--resume", r.json["run"],
                       "--no-record")
    assert resume.code == 2 and "drop --no-record" in resume.err


def test_a_job_that_fails_on_its_board_fails_its_row_without_retries(fleet: Fleet,
                                                                    capsys: Any) -> None:
    jobs_before = len(fleet.jobs("good0"))
    r = fleet.cli(capsys, "bench", str(DIGITS_MODEL), "--devices", "good0", "--shape",
                  "input=1x1x9x9", "--iterations", "5", "--no-lease", "--json")
    assert r.code == 12, r.err                       # none succeeded
    (row,) = r.json["rows"]
    assert row["state"] == "failed" and row["error"].startswith("job failed: ")
    assert "input=1x1x9x9" in row["error"] and row["job_id"]
    assert len(fleet.jobs("good0")) == jobs_before + 1       # a failed job is not retried


def test_a_model_missing_on_a_board_fails_only_its_row(fleet: Fleet, capsys: Any) -> None:
    missing = "e" * 64                               # a model no board holds
    r = fleet.cli(capsys, "bench", str(DIGITS_MODEL), missing, "--devices", "good1",
                  "--shape", ONE_DIGIT, "--iterations", "5", "--no-lease", "--json")
    assert r.code == 11, r.err
    rows = {row["model"]: row for row in r.json["rows"]}
    assert rows["digits_cnn.onnx"]["state"] == "done"
    assert rows[missing[:12]]["state"] == "failed"
    assert rows[missing[:12]]["error"].startswith("job refused: ")


def test_strict_refuses_a_board_whose_certificate_names_another(fleet: Fleet,
                                                                capsys: Any) -> None:
    r = fleet.cli(capsys, "bench", str(DIGITS_MODEL), "--devices", "good2", "--shape",
                  ONE_DIGIT, "--iterations", "5", "--no-lease", "--strict", "--json")
    assert r.code == 12, r.err
    (row,) = r.json["rows"]
    assert row["state"] == "failed" and row["job_id"] is None
    assert row["error"] == ("refused: its certificate is for 'board1', not 'good2' as "
                            "edgetune.toml names it: is good2's address right? (--strict)")
