"""Resource limits of the agent under a starving client (issue 16, section 4).

One agent process, [limits] from an agent.toml. A second host certificate of the same CA
("mallory": a compromised or buggy host) opens 100 upload streams and leaves them idle:

- the calls beyond its share (max_streams_per_client, default 64) are refused at once with
  RESOURCE_EXHAUSTED and a retry hint;
- meanwhile the good host's GetInfo answers within 1 s and its benchmark runs to its end;
- the idle streams are closed by upload_idle_timeout_s (ABORTED, saying so), after which
  mallory may call again.

Also: the total limit, an idle upload keeping its bytes for a resume, the job-spec size
limit, and a compressed .npz that unpacks to 100x its size refused at upload.
"""

from __future__ import annotations

import io
import os
import threading
import time
from pathlib import Path
from typing import Any, Iterator, List, Tuple

import grpc
import numpy as np
import pytest

from edgetune.certs import Identity
from edgetune.protos import agent_pb2 as pb
from edgetune.protos import agent_pb2_grpc
from tests.agent_fixtures import (channel, mlp_model, sha256_hex, submit_benchmark, upload,
                                  wait_job)
from tests.host_fixtures import DIGITS_MODEL, RunningAgent, start_agent

IDLE_TIMEOUT_S = 10.0
STREAMS = 100


def _identity(pki: Any, name: str) -> Identity:
    leaf = pki.ca.issue_host(name, key_type=pki.key_type)
    return Identity(ca_pem=pki.ca.cert_pem, cert_pem=leaf.cert_pem, key_pem=leaf.key_pem,
                    common_name=name)


def _agent(pki: Any, workdir: Path, limits: str) -> RunningAgent:
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "agent.toml"
    config.write_text("[limits]\n" + limits)
    return start_agent(pki, workdir, extra_args=["--config", str(config)])


@pytest.fixture(scope="module")
def agent(pki: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    running = _agent(pki, tmp_path_factory.mktemp("limits"),
                     f"upload_idle_timeout_s = {IDLE_TIMEOUT_S}\nmax_job_spec_bytes = 4096\n"
                     "max_dataset_mb = 16\n")
    try:
        yield running
    finally:
        running.agent.stop()


class IdleUploads:
    """``count`` upload streams that send their header, then nothing, until ``release``."""

    def __init__(self, address: str, identity: Identity, count: int) -> None:
        self.channel = channel(address, identity)
        self.release_event = threading.Event()
        stub = agent_pb2_grpc.AgentStub(self.channel)
        self.calls = []
        self.ended: List[Tuple[float, Any, str]] = []       # (when, code, details)
        self._lock = threading.Lock()
        for _ in range(count):
            call = stub.UploadBlob.future(self._requests(), timeout=120)
            call.add_done_callback(self._done)
            self.calls.append(call)

    def _requests(self) -> Iterator[pb.UploadBlobRequest]:
        yield pb.UploadBlobRequest(header=pb.UploadHeader(
            kind=pb.BLOB_KIND_MODEL, upload_id=os.urandom(16).hex(), size_bytes=1 << 20))
        self.release_event.wait(120)

    def _done(self, call: Any) -> None:
        try:
            code, details = call.code(), call.details()
        except Exception:  # noqa: BLE001 - cancelled
            code, details = grpc.StatusCode.CANCELLED, ""
        with self._lock:
            self.ended.append((time.monotonic(), code, details or ""))

    def codes(self) -> List[Any]:
        with self._lock:
            return [code for _, code, _ in self.ended]

    def wait_ended(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.codes()) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.codes())} of {count} streams ended: "
                                     f"{self.codes()}")
            time.sleep(0.05)

    def close(self) -> None:
        self.release_event.set()
        for call in self.calls:
            call.cancel()
        self.channel.close()


def test_idle_upload_streams_do_not_starve_the_agent(agent: RunningAgent, pki: Any) -> None:
    good = agent_pb2_grpc.AgentStub(channel(agent.address, pki.host.identity))
    model_sha = upload(good, pb.BLOB_KIND_MODEL, DIGITS_MODEL.read_bytes()).blob.sha256
    opened = time.monotonic()
    idle = IdleUploads(agent.address, _identity(pki, "mallory"), STREAMS)
    try:
        # Beyond mallory's share: refused at once, with the limit named and a retry hint.
        idle.wait_ended(STREAMS - 64, timeout=IDLE_TIMEOUT_S / 2)
        refused = [(c, d) for _, c, d in idle.ended]
        assert all(c is grpc.StatusCode.RESOURCE_EXHAUSTED for c, _ in refused), refused
        assert all("max_streams_per_client" in d and "retry" in d for _, d in refused)
        assert len(idle.codes()) == STREAMS - 64            # the other 64 stay open

        # The good host is answered quickly and its benchmark runs to its end.
        latencies = []
        for _ in range(10):
            start = time.monotonic()
            info = good.GetInfo(pb.GetInfoRequest(), timeout=5)
            latencies.append(time.monotonic() - start)
            assert info.agent_name == "board1"
        assert max(latencies) < 1.0, latencies
        job = submit_benchmark(good, model_sha, iterations=200, warmup=5).job
        done = wait_job(good, job.id, timeout=60)
        assert done.state == pb.JOB_STATE_SUCCEEDED, done.error
        finished = time.monotonic()
        assert len(idle.codes()) == STREAMS - 64, "idle streams closed before the benchmark ended"
        assert finished - opened < IDLE_TIMEOUT_S

        # The idle streams are closed by the timeout, saying so.
        idle.wait_ended(STREAMS, timeout=IDLE_TIMEOUT_S + 30)
        timed_out = [(t, c, d) for t, c, d in idle.ended if c is not grpc.StatusCode.RESOURCE_EXHAUSTED]
        assert len(timed_out) == 64
        assert all(c is grpc.StatusCode.ABORTED and "upload_idle_timeout_s" in d
                   for _, c, d in timed_out), timed_out[:3]
        assert min(t for t, _, _ in timed_out) - opened >= IDLE_TIMEOUT_S - 1
    finally:
        idle.close()
    # Mallory's share is free again.
    again = agent_pb2_grpc.AgentStub(channel(agent.address, _identity(pki, "mallory")))
    assert again.GetInfo(pb.GetInfoRequest(), timeout=5).agent_name == "board1"


def test_an_idle_upload_keeps_its_bytes_for_a_resume(agent: RunningAgent, pki: Any) -> None:
    good = agent_pb2_grpc.AgentStub(channel(agent.address, pki.host.identity))
    data = mlp_model(hidden=33)            # stored by no other test
    sha = sha256_hex(data)
    release = threading.Event()

    def stalls() -> Iterator[pb.UploadBlobRequest]:
        yield pb.UploadBlobRequest(header=pb.UploadHeader(
            kind=pb.BLOB_KIND_MODEL, sha256=sha, size_bytes=len(data)))
        yield pb.UploadBlobRequest(data=data[:1000])
        release.wait(60)

    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        good.UploadBlob(stalls(), timeout=60)
    release.set()
    assert err.value.code() is grpc.StatusCode.ABORTED
    assert "resume" in err.value.details()
    assert IDLE_TIMEOUT_S - 1 <= time.monotonic() - start < IDLE_TIMEOUT_S + 20
    status = good.GetUploadStatus(pb.GetUploadStatusRequest(
        kind=pb.BLOB_KIND_MODEL, sha256=sha, size_bytes=len(data)), timeout=10)
    assert (status.state, status.committed_bytes) == (pb.UPLOAD_STATE_PARTIAL, 1000)
    reply = upload(good, pb.BLOB_KIND_MODEL, data, offset=1000)
    assert reply.blob.sha256 == sha and reply.received_bytes == len(data) - 1000


def test_a_job_spec_above_the_limit_is_refused(agent: RunningAgent, pki: Any) -> None:
    good = agent_pb2_grpc.AgentStub(channel(agent.address, pki.host.identity))
    model_sha = upload(good, pb.BLOB_KIND_MODEL, DIGITS_MODEL.read_bytes()).blob.sha256
    with pytest.raises(grpc.RpcError) as err:
        submit_benchmark(good, model_sha, iterations=1, label="x" * 5000)
    assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_job_spec_bytes" in err.value.details()
    ok = submit_benchmark(good, model_sha, iterations=1, label="x" * 100).job   # control
    assert wait_job(good, ok.id).state == pb.JOB_STATE_SUCCEEDED


def _bomb(unpacked_mb: int) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, input=np.zeros((unpacked_mb * 256, 1024), np.float32),
                        labels=np.zeros(unpacked_mb * 256, np.int64))
    return buf.getvalue()


def test_a_dataset_that_unpacks_to_100x_is_refused_at_upload(agent: RunningAgent,
                                                            pki: Any) -> None:
    good = agent_pb2_grpc.AgentStub(channel(agent.address, pki.host.identity))
    bomb = _bomb(64)                        # 64 MiB of arrays (+ labels) in well under 1 MiB
    assert len(bomb) * 100 < 64 << 20
    with pytest.raises(grpc.RpcError) as err:
        upload(good, pb.BLOB_KIND_DATASET, bomb)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "unpacked" in err.value.details() and "max_dataset_bytes" in err.value.details()
    assert not list((agent.store / "datasets").glob("*.npz"))
    small = _bomb(4)                        # control: within the 16 MiB limit
    assert upload(good, pb.BLOB_KIND_DATASET, small).blob.sha256 == sha256_hex(small)


def test_the_total_limit_refuses_every_client(pki: Any, tmp_path: Path) -> None:
    running = _agent(pki, tmp_path, "max_streams_total = 8\nupload_idle_timeout_s = 60\n")
    idle = IdleUploads(running.address, _identity(pki, "mallory"), 8)
    try:
        time.sleep(1.0)
        assert idle.codes() == []           # 8 fit
        good = agent_pb2_grpc.AgentStub(channel(running.address, pki.host.identity))
        with pytest.raises(grpc.RpcError) as err:
            good.GetInfo(pb.GetInfoRequest(), timeout=5)
        assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_streams_total" in err.value.details()
        idle.close()
        idle.wait_ended(8, timeout=10)
        deadline = time.monotonic() + 10
        while True:                          # freed as the cancelled calls end on the agent
            try:
                assert good.GetInfo(pb.GetInfoRequest(), timeout=5).agent_name == "board1"
                break
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    finally:
        idle.close()
        running.agent.stop()


@pytest.mark.slow
def test_a_peer_that_never_speaks_tls_is_dropped(agent: RunningAgent) -> None:
    """grpc.server_handshake_timeout_ms = 20 s (grpc's default is 120 s): a TCP connection
    that sends nothing is closed by the agent."""
    import socket
    host, port = agent.address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.settimeout(60)
        start = time.monotonic()
        try:
            data = sock.recv(1)             # b"" once the agent closes it
        except ConnectionResetError:
            data = b""
        elapsed = time.monotonic() - start
    assert data == b""
    assert 15 <= elapsed <= 40, elapsed
