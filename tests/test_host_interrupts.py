"""Ctrl-C on the real command line: ``python -m edgetune.host ...`` subprocesses sent SIGINT while they
upload or wait, against one real agent subprocess (mutual TLS) shared by this module.

A KeyboardInterrupt raised inside a grpc call could leave grpc's channel close waiting
forever (grpc/grpc#19973): the command hung after Ctrl-C. These tests interrupt at several
moments and require a prompt exit 130 with the right message every time."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from edgetune.host.client import AgentClient
from edgetune.host.errors import ExitStatus
from edgetune.host.render import fmt_bytes
from edgetune.protos.messages import BenchmarkSpec, BlobKind, SessionOptions
from tests.host_fixtures import (TcpProxy, DIGITS_MODEL, ONE_DIGIT, RunningAgent,  # noqa: F401
                                 big_model, local_agent)  # noqa: F401

RESUME_HINT = "run the same command again to resume from the bytes the board kept"
EXIT_WITHIN_S = 5.0


def cli(*argv: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edgetune.host", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def interrupt(proc: subprocess.Popen) -> str:
    """SIGINT; the command must exit 130 within EXIT_WITHIN_S. Returns its stderr."""
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    try:
        _, err = proc.communicate(timeout=EXIT_WITHIN_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"the command hung after Ctrl-C; its stderr:\n{err}")
    assert proc.returncode == ExitStatus.INTERRUPTED, err
    assert time.monotonic() - sent < EXIT_WITHIN_S
    return err


def settled_size(part: Path) -> int:
    """The size of a partial upload once it stopped growing (the slow proxy still hands the
    agent what it had buffered when the PC went away)."""
    last, deadline = -1, time.monotonic() + 30
    while True:
        size = part.stat().st_size if part.exists() else 0
        if size == last:
            return size
        assert time.monotonic() < deadline, "the partial upload never settled"
        last = size
        time.sleep(0.25)


@pytest.fixture()
def proxy(local_agent: RunningAgent) -> Iterator[TcpProxy]:
    p = TcpProxy(local_agent.address, rate=16e6)
    yield p
    p.close()


@pytest.mark.slow
def test_ctrl_c_during_models_upload_exits_130_and_the_upload_resumes(
        local_agent: RunningAgent, proxy: TcpProxy, tmp_path: Path) -> None:
    model = big_model(tmp_path / "big.onnx", 32)      # ~2 s through the 16 MB/s proxy
    size = model.stat().st_size
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    part = local_agent.store / "partial" / f"model-{sha}.part"
    conn = local_agent.conn()
    conn[conn.index("--address") + 1] = proxy.address
    # Ctrl-C while hashing / asking the upload status, then at moments of the streaming.
    for delay in (None, 0.0, 0.05, 0.15, 0.3):
        before = settled_size(part)                   # the last try's bytes have all landed
        proc = cli("models", "upload", str(model), *conn)
        assert proc.stderr is not None
        line = proc.stderr.readline()                 # "checking big.onnx (...) on the board"
        assert line.startswith("checking big.onnx"), line + proc.communicate()[1]
        if delay is not None:
            deadline = time.monotonic() + 30
            while not (part.exists() and part.stat().st_size > before):
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "the upload never started"
                time.sleep(0.002)
            time.sleep(delay)
        err = interrupt(proc)
        assert RESUME_HINT in err and "edgetune: interrupted" in err, (delay, err)
        assert "Traceback" not in err, err

    # The board kept a partial upload: the same command, straight to the agent, resumes it.
    # Ctrl-C right after it says so lands while the command closes its connection (grpc
    # waits there a moment): it must exit 130 promptly too, and the blob be complete.
    committed = settled_size(part)
    assert 0 < committed < size
    for attempt in range(4):
        proc = cli("models", "upload", str(model), *local_agent.conn())
        assert proc.stderr is not None
        lines = [proc.stderr.readline(), proc.stderr.readline()]
        if attempt == 0:
            assert lines[1].startswith(f"big.onnx: resumed at {fmt_bytes(committed)}, sent "
                                       f"{fmt_bytes(size - committed)}"), lines
        else:
            assert lines[1].startswith("big.onnx: on the board already"), lines
        interrupt(proc)
    with AgentClient(local_agent.address, local_agent.pki.host.identity) as client:
        status = client.upload_status(BlobKind.MODEL, sha, size)
        assert status.state == "complete"
        client.delete_blob(BlobKind.MODEL, sha)


def test_ctrl_c_on_a_queued_job_says_it_stays_queued(local_agent: RunningAgent) -> None:
    with AgentClient(local_agent.address, local_agent.pki.host.identity) as client:
        sha = client.upload(DIGITS_MODEL, BlobKind.MODEL).blob.sha256
        busy, _ = client.submit(BenchmarkSpec(
            model_sha256=sha, iterations=0, min_duration_s=20,
            session=SessionOptions(input_shapes=(("input", (1, 1, 8, 8)),))))
        proc = cli("bench", sha, "--shape", ONE_DIGIT, "--iterations", "5",
                   *local_agent.conn())
        try:
            job_id = ""
            assert proc.stderr is not None
            for line in proc.stderr:                  # plain progress lines (not a terminal)
                if line.startswith("job ") and "queued" in line:
                    job_id = line.split()[1]
                    break
            assert job_id, "the CLI never reported its job queued"
            err = interrupt(proc)
            assert f"job {job_id} stays queued on the board" in err, err
            assert "keeps running" not in err, err
            assert f"edgetune jobs watch {job_id}" in err
            assert client.get_job(job_id).state.value == "queued"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for job in (job_id, busy.id):
                if job:
                    try:
                        client.cancel_job(job)
                    except Exception:  # noqa: BLE001 - finished meanwhile
                        pass
