"""A fleet run with more models than a board's job queue holds (agents in separate processes
with ``queue_capacity = 1`` in their agent.toml): the board's "queue is full; retry when the
running job has finished" (RESOURCE_EXHAUSTED) is waited out, not failed: the run's oldest
job on the board is watched to its end and the next model submitted then, so every row
succeeds. A board whose queue other jobs fill is tried again for --queue-wait seconds, and
only then are its rows failed, saying so. A board refusing every call for now (its open calls
at the agent's limit: "retry in a few seconds") is retried like an unreachable one."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

from edgetune.host.client import AgentClient, ClientSettings
from edgetune.protos.messages import BenchmarkSpec, BlobKind, JobState, SessionOptions
from tests.host_fixtures import (DIGITS_MODEL, ONE_DIGIT, run_cli, start_agent, started_agents,
                                 write_inventory)

pytestmark = pytest.mark.slow           # three agents, a few seconds of jobs

BOARDS = ("q0", "q1", "full", "crowded")
LIMITS = {"crowded": "max_streams_total = 4\nupload_idle_timeout_s = 60\n"}
ONE = SessionOptions(input_shapes=(("input", (1, 1, 8, 8)),))


def _variants(base: Path, n: int) -> List[Path]:
    """``n`` copies of the digits model with other bytes (a doc string): n distinct models."""
    import onnx

    out = []
    for i in range(n):
        proto = onnx.load(str(DIGITS_MODEL))
        proto.doc_string = f"queue test {i} {time.time_ns()}"
        path = base / f"m{i}.onnx"
        onnx.save(proto, str(path))
        out.append(path)
    return out


@pytest.fixture(scope="module")
def fleet(pki: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dict[str, Any]]:
    base = tmp_path_factory.mktemp("fleet-queue")
    def start(name: str) -> Any:
        config = base / f"{name}.toml"
        config.write_text("[limits]\nqueue_capacity = 1\n" + LIMITS.get(name, ""))
        return start_agent(pki, base / name, extra_args=["--config", str(config)])

    with started_agents(BOARDS, start) as agents:
        inventory = write_inventory(base / "edgetune.toml", pki.host,
                                    agents["q0"].passphrase_file,
                                    {name: (agents[name].address, []) for name in BOARDS})
        yield {"agents": agents, "inventory": inventory, "base": base, "pki": pki,
               "db": f"sqlite:///{base / 'results.db'}"}


def _client(fleet: Dict[str, Any], name: str) -> AgentClient:
    return AgentClient(fleet["agents"][name].address, fleet["pki"].host.identity,
                       settings=ClientSettings(timeout_s=10))


def _cli(fleet: Dict[str, Any], capsys: Any, *argv: str) -> Any:
    return run_cli(capsys, "fleet", "bench", *argv, "--shape", ONE_DIGIT, "--warmup", "1",
                   "--inventory", str(fleet["inventory"]), "--db", fleet["db"], "--json")


def test_more_models_than_the_queue_holds_all_run(fleet: Dict[str, Any], capsys: Any,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from edgetune.host.errors import BusyError
    from edgetune.host.fleet import board_jobs

    models = _variants(fleet["base"], 4)
    refused: List[str] = []
    real = board_jobs.BoardJobs._submit

    def counting(self: Any, row: Any) -> bool:
        try:
            return real(self, row)
        except BusyError as exc:
            refused.append(f"{self.device}: {exc.message}")
            raise

    monkeypatch.setattr(board_jobs.BoardJobs, "_submit", counting)
    before = {}
    for name in ("q0", "q1"):
        with _client(fleet, name) as client:
            before[name] = {j.id for j in client.list_jobs()}
    r = _cli(fleet, capsys, *map(str, models), "--devices", "q0,q1", "--duration", "0.4")
    assert r.code == 0, r.err
    rows = r.json["rows"]
    assert len(rows) == 8 and {row["state"] for row in rows} == {"done"}, rows
    # Each board refused at least once (one job runs, one waits, the third is refused)...
    assert {x.split(":")[0] for x in refused} == {"q0", "q1"}, refused
    assert all("queue is full (1 jobs)" in x for x in refused)
    for name in ("q0", "q1"):                   # ... and ran each model once, in order
        with _client(fleet, name) as client:
            jobs = client.list_jobs()
        new = [j for j in jobs if j.id not in before[name]]
        assert len(new) == 4 and {j.state for j in new} == {JobState.SUCCEEDED}
        assert sorted(j.label for j in new) == sorted(m.name for m in models)


def test_a_board_full_of_other_jobs_fails_after_the_queue_wait(fleet: Dict[str, Any],
                                                               capsys: Any) -> None:
    with _client(fleet, "full") as client:
        sha = client.upload(DIGITS_MODEL, BlobKind.MODEL).blob.sha256
        running, _ = client.submit(BenchmarkSpec(model_sha256=sha, session=ONE, warmup=0,
                                                 iterations=0, min_duration_s=60.0), "long")
        deadline = time.monotonic() + 30
        while client.get_job(running.id).state is not JobState.RUNNING:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        waiting, position = client.submit(BenchmarkSpec(model_sha256=sha, session=ONE,
                                                        iterations=5), "waiting")
        assert position == 1                    # the queue (capacity 1) is full now
        try:
            started = time.monotonic()
            r = _cli(fleet, capsys, str(DIGITS_MODEL), "--devices", "full", "--iterations",
                     "5", "--queue-wait", "2", "--no-lease")
            elapsed = time.monotonic() - started
        finally:
            for job in (waiting, running):
                try:
                    client.cancel_job(job.id)
                except Exception:  # noqa: BLE001 - the agent is stopped with the module
                    pass
    assert r.code == 12, r.err                  # none succeeded
    (row,) = r.json["rows"]
    assert row["state"] == "failed" and row["job_id"] is None
    assert row["error"].startswith("busy: the job queue of full stayed full for 2 s"), row
    assert "queue is full (1 jobs)" in row["error"]
    assert 2 <= elapsed < 30


def test_queue_wait_must_be_positive(fleet: Dict[str, Any], capsys: Any) -> None:
    r = _cli(fleet, capsys, str(DIGITS_MODEL), "--devices", "q0", "--queue-wait", "0")
    assert r.code == 2 and "--queue-wait must be a positive number" in r.out    # --json


def test_a_board_refusing_calls_for_now_is_retried(fleet: Dict[str, Any], capsys: Any) -> None:
    from tests.test_agent_limits import IdleUploads

    address = fleet["agents"]["crowded"].address
    idle = IdleUploads(address, fleet["pki"].host.identity, 4)     # the agent's whole limit
    release = threading.Timer(1.5, idle.close)
    try:
        time.sleep(0.5)
        assert idle.codes() == []
        release.start()
        r = _cli(fleet, capsys, str(DIGITS_MODEL), "--devices", "crowded", "--iterations",
                 "5", "--retries", "3", "--no-lease")
    finally:
        release.cancel()
        idle.close()
    assert r.code == 0, r.out
    (row,) = r.json["rows"]
    assert row["state"] == "done", row
