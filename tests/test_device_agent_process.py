"""The agent as users run it: ``python -m edgetune.device serve`` in its own process, found through
its ready file, stopped with SIGTERM, or killed with SIGKILL and started again."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator, List, Tuple

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgetune.protos import agent_pb2 as pb
from edgetune.protos import agent_pb2_grpc
from tests.agent_fixtures import (TIMEOUT, agent_argv, agent_env, channel, mlp_model,
                                  spawn_agent, submit_benchmark, upload_model, wait_job)

SLOW_MODEL = dict(inputs=256, hidden=1024, layers=4)


@pytest.fixture
def processes() -> Iterator[List[subprocess.Popen]]:
    started: List[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def spawn(processes: List[subprocess.Popen], pki: Any, tmp_path: Path,
          *extra: str) -> Tuple[subprocess.Popen, str, Path]:
    proc, address, log = spawn_agent(pki, tmp_path / "store", tmp_path / "ready", *extra)
    processes.append(proc)
    return proc, address, log


def wait_running(stub: agent_pb2_grpc.AgentStub, job_id: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=TIMEOUT).job.state \
            != pb.JOB_STATE_RUNNING:
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.02)


def test_serve_from_config_then_sigterm_stops_gracefully(pki: Any, tmp_path: Path,
                                                          processes: List[Any]) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('log_level = "info"\nallowed_clients = ["laptop"]\n'
                      "[limits]\nqueue_capacity = 3\n")
    proc, address, log = spawn(processes, pki, tmp_path, "--config", str(config))
    host, port = address.rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0
    ch = channel(address, pki.host.identity)
    try:
        health = health_pb2_grpc.HealthStub(ch)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT).status == \
            health_pb2.HealthCheckResponse.SERVING
        stub = agent_pb2_grpc.AgentStub(ch)
        info = stub.GetInfo(pb.GetInfoRequest(), timeout=TIMEOUT)
        assert info.queue_capacity == 3 and info.caller_name == "laptop"
        sha = upload_model(stub, mlp_model(**SLOW_MODEL))
        job = submit_benchmark(stub, sha, min_duration_s=60.0, warmup=1).job
        wait_running(stub, job.id)

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert not (tmp_path / "ready").exists()
        text = log.read_text()
        assert "laptop GetInfo" in text and " ms OK" in text and "stopped" in text
        assert "Traceback" not in text
    finally:
        ch.close()

    proc, address, _ = spawn(processes, pki, tmp_path)
    ch = channel(address, pki.host.identity)
    try:
        kept = agent_pb2_grpc.AgentStub(ch).GetJob(pb.GetJobRequest(job_id=job.id),
                                                   timeout=TIMEOUT).job
        assert kept.state == pb.JOB_STATE_INTERRUPTED and "shut down" in kept.error
    finally:
        ch.close()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(15) == 0


def test_kill_9_then_restart_marks_the_job_interrupted_and_keeps_the_rest(
        pki: Any, tmp_path: Path, processes: List[Any]) -> None:
    proc, address, _ = spawn(processes, pki, tmp_path)
    ch = channel(address, pki.host.identity)
    try:
        stub = agent_pb2_grpc.AgentStub(ch)
        sha = upload_model(stub, mlp_model(**SLOW_MODEL))
        done = submit_benchmark(stub, sha, iterations=5, warmup=1).job
        finished = wait_job(stub, done.id)
        running = submit_benchmark(stub, sha, min_duration_s=60.0, warmup=1).job
        wait_running(stub, running.id)
        queued = submit_benchmark(stub, sha, iterations=5, warmup=1, label="after").job
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        ch.close()

    proc, address, _ = spawn(processes, pki, tmp_path)
    ch = channel(address, pki.host.identity)
    try:
        stub = agent_pb2_grpc.AgentStub(ch)
        crashed = stub.GetJob(pb.GetJobRequest(job_id=running.id), timeout=TIMEOUT).job
        assert crashed.state == pb.JOB_STATE_INTERRUPTED
        assert crashed.error == "the agent stopped while this job ran; submit it again"
        again = wait_job(stub, queued.id)                 # re-queued, then run
        assert again.state == pb.JOB_STATE_SUCCEEDED and again.spec.label == "after"
        kept = stub.GetJob(pb.GetJobRequest(job_id=done.id), timeout=TIMEOUT).job
        assert kept.benchmark.latency.mean_ms == finished.benchmark.latency.mean_ms
        listed = [j.id for j in stub.ListJobs(pb.ListJobsRequest(), timeout=TIMEOUT).jobs]
        assert listed == [queued.id, running.id, done.id]
    finally:
        ch.close()
    proc.terminate()
    assert proc.wait(15) == 0


def test_bad_start_exits_with_a_message(pki: Any, tmp_path: Path) -> None:
    env = agent_env(pki)
    env["EDGETUNE_PASSPHRASE"] = "wrong passphrase"
    result = subprocess.run(agent_argv(pki, tmp_path / "store", tmp_path / "ready"), env=env,
                            stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    assert result.returncode == 6
    assert b"wrong passphrase" in result.stderr and not (tmp_path / "ready").exists()


def test_a_stale_ready_file_is_removed_at_start_and_rewritten_once_serving(
        pki: Any, tmp_path: Path, processes: List[Any]) -> None:
    """A crashed agent leaves its ready file behind; the next start must not let a waiting
    script read that old address: the file goes away first, and comes back only once the
    new agent serves."""
    ready, log = tmp_path / "ready", tmp_path / "agent.log"
    stale = "127.0.0.1:1"                              # what a killed agent left
    ready.write_text(stale + "\n")
    with open(log, "wb") as err:
        proc = subprocess.Popen(agent_argv(pki, tmp_path / "store", ready), env=agent_env(pki),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    processes.append(proc)
    seen: List[str] = []                               # "" while the file is absent
    deadline = time.monotonic() + 60
    while True:
        try:
            text = ready.read_text().strip()
        except FileNotFoundError:
            text = ""
        if not seen or seen[-1] != text:
            seen.append(text)
        if text and text != stale:
            break
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"never ready; saw {seen}\n{log.read_text()}"
        time.sleep(0.002)
    address = seen[-1]
    # The old address may show only before the agent got going, then the file is absent
    # until the new address appears: never stale after it was removed.
    assert "" in seen, f"the stale file was replaced without being removed first: {seen}"
    assert seen[seen.index(""):] == ["", address], seen
    ch = channel(address, pki.host.identity)
    try:
        reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(),
                                                     timeout=TIMEOUT)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        ch.close()
    assert "removed the ready file" in log.read_text()
    proc.terminate()
    assert proc.wait(15) == 0
    assert not ready.exists()
