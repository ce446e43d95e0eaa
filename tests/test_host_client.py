"""AgentClient against a real agent subprocess over real mutual TLS: uploads (dedup, resume),
jobs (watch, re-attach after a dropped connection), and the translation of every failure into
a host error that says which side refused what."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator, List

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgetune.certs import Identity
from edgetune.host.client import AgentClient, ClientSettings, check_own_certificate
from edgetune.host.errors import (AuthError, BadInputError, NotFoundError, TimeoutError_,
                         UnreachableError)
from edgetune.protos.messages import BenchmarkSpec, BlobKind, JobState, SessionOptions
from tests.host_fixtures import (TcpProxy, retry_busy, settled_partial, DIGITS_MODEL, RunningAgent, local_agent,  # noqa: F401
                                      start_agent)

ONE = SessionOptions(input_shapes=(("input", (1, 1, 8, 8)),))


def big_model(path: Path, floats: int, seed: int = 0) -> Path:
    """A valid single-file ONNX model of about ``4 * floats`` bytes (an Identity of a constant)."""
    weights = np.random.default_rng(seed).standard_normal(floats).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["w"], ["y"], name="identity")], "big", [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [floats])],
        [numpy_helper.from_array(weights, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.save(model, path)
    return path


@pytest.fixture()
def client(local_agent: RunningAgent) -> Iterator[AgentClient]:
    with AgentClient(local_agent.address, local_agent.pki.host.identity) as c:
        yield c


def test_info_names_both_sides(client: AgentClient) -> None:
    info = client.info()
    assert info.agent_name == "board1"
    assert info.caller_name == "laptop"
    assert "CPUExecutionProvider" in info.available_providers


def test_upload_twice_sends_nothing_the_second_time(client: AgentClient, tmp_path: Path) -> None:
    model = big_model(tmp_path / "m.onnx", 50_000, seed=1)
    seen: List[int] = []
    first = client.upload(model, BlobKind.MODEL, progress=lambda done, total: seen.append(done))
    assert first.sent_bytes == model.stat().st_size and not first.already_present
    assert seen[-1] == model.stat().st_size
    second = client.upload(model, "model", name="again")
    assert second.already_present and second.sent_bytes == 0
    assert second.blob.sha256 == first.blob.sha256
    assert first.blob.sha256 in [b.sha256 for b in client.list_blobs(BlobKind.MODEL)]
    assert client.delete_blob(BlobKind.MODEL, first.blob.sha256)
    assert first.blob.sha256 not in [b.sha256 for b in client.list_blobs()]


def test_interrupted_upload_resumes_from_committed_bytes(local_agent: RunningAgent,
                                                         tmp_path: Path) -> None:
    # Big enough that some bytes reach the agent before the stop: grpc has a few MB in flight.
    model = big_model(tmp_path / "m.onnx", 4_000_000, seed=2)         # 16 MB
    size = model.stat().st_size
    settings = ClientSettings(upload_chunk_bytes=256 * 1024)

    class Stop(Exception):
        pass

    def stop_after_half(done: int, total: int) -> None:
        if done >= total // 2:
            raise Stop()

    with AgentClient(local_agent.address, local_agent.pki.host.identity, settings=settings) as c:
        with pytest.raises(Stop):
            c.upload(model, BlobKind.MODEL, progress=stop_after_half)
        from edgetune.host.client import file_sha256
        sha, _ = file_sha256(model)
        committed = settled_partial(c, BlobKind.MODEL, size, sha256=sha)
        assert 0 < committed < size, (committed, size)
        outcome = retry_busy(lambda: c.upload(model, BlobKind.MODEL))
    assert outcome.resumed_from == committed, (outcome, committed, size)
    assert outcome.sent_bytes == size - committed, (outcome, committed, size)
    assert outcome.blob.sha256 == sha and outcome.blob.size_bytes == size


def test_run_returns_result_and_events(client: AgentClient) -> None:
    sha = client.upload(DIGITS_MODEL, BlobKind.MODEL).blob.sha256
    events: List[Any] = []
    job = client.run(BenchmarkSpec(model_sha256=sha, session=ONE, iterations=30, warmup=2),
                     events.append, label="client test")
    assert job.state is JobState.SUCCEEDED and job.label == "client test"
    assert job.result.iterations == 30
    assert events[0].job is not None and events[-1].state is JobState.SUCCEEDED
    assert client.get_job(job.id).result == job.result
    assert job.id in [j.id for j in client.list_jobs()]


def test_closed_channel_mid_job_then_another_client_gets_the_result(
        local_agent: RunningAgent) -> None:
    identity = local_agent.pki.host.identity
    with AgentClient(local_agent.address, identity) as first:
        sha = first.upload(DIGITS_MODEL, BlobKind.MODEL).blob.sha256
        job, _ = first.submit(BenchmarkSpec(model_sha256=sha, session=ONE, iterations=0,
                                            min_duration_s=1.5))
        next(iter(first.watch(job.id)))          # attached, then the connection goes away
    with AgentClient(local_agent.address, identity) as second:
        final = second.wait(job.id)
    assert final.state is JobState.SUCCEEDED
    assert final.result.measured_s >= 1.4


def test_dropped_watch_is_reattached(local_agent: RunningAgent,
                                     caplog: pytest.LogCaptureFixture) -> None:
    proxy = TcpProxy(local_agent.address)
    try:
        with AgentClient(proxy.address, local_agent.pki.host.identity) as c:
            sha = c.upload(DIGITS_MODEL, BlobKind.MODEL).blob.sha256
            cut = threading.Event()

            def on_event(event: Any) -> None:
                if event.state is JobState.RUNNING and not cut.is_set():
                    cut.set()
                    proxy.cut()

            job = c.run(BenchmarkSpec(model_sha256=sha, session=ONE, iterations=0,
                                      min_duration_s=1.5), on_event)
        assert cut.is_set()
        assert "re-attaching" in caplog.text
        assert job.state is JobState.SUCCEEDED and job.result.iterations > 0
    finally:
        proxy.close()


def test_a_long_outage_logs_one_warning_then_debug_lines(local_agent: RunningAgent,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="edgetune.host.client")
    proxy = TcpProxy(local_agent.address)
    try:
        with AgentClient(proxy.address, local_agent.pki.host.identity) as c:
            sha = c.upload(DIGITS_MODEL, BlobKind.MODEL).blob.sha256
            cut = threading.Event()

            def on_event(event: Any) -> None:
                if event.state is JobState.RUNNING and not cut.is_set():
                    cut.set()
                    proxy.refusing = True          # the board is unreachable for 1.5 s
                    proxy.cut()
                    threading.Timer(1.5, setattr, (proxy, "refusing", False)).start()

            job = c.run(BenchmarkSpec(model_sha256=sha, session=ONE, iterations=0,
                                      min_duration_s=1.0), on_event)
        assert cut.is_set() and job.state is JobState.SUCCEEDED
        records = [r for r in caplog.records if r.name == "edgetune.host.client"
                   and ("re-attach" in r.getMessage())]
        warnings = [r for r in records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        assert "dropped" in warnings[0].getMessage()
        assert "for up to 60 s" in warnings[0].getMessage()
        retries = [r for r in records if r.levelno == logging.DEBUG]
        assert retries, "the retries during the outage should be logged at DEBUG"
        assert all("trying again" in r.getMessage() for r in retries)
    finally:
        proxy.close()


def test_ctrl_c_inside_a_call_is_deferred_until_grpc_returned() -> None:
    from edgetune.host.client import GATE
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT is not Python's default handler here")
    cancelled, went_on = threading.Event(), []
    with pytest.raises(KeyboardInterrupt):
        with GATE.deferred():
            GATE.on_interrupt(cancelled.set)       # what a call registers: its cancel()
            signal.raise_signal(signal.SIGINT)     # Ctrl-C while "inside grpc"
            assert cancelled.wait(5), "the call was not cancelled"
            went_on.append(True)                   # no KeyboardInterrupt in the middle
    assert went_on == [True]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_while_watching_a_queued_job_stops_at_once(local_agent: RunningAgent) -> None:
    """No event comes for a queued job: the watch must be cancelled, not waited out, and the
    connection stays usable."""
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT is not Python's default handler here")
    with AgentClient(local_agent.address, local_agent.pki.host.identity) as c:
        sha = c.upload(DIGITS_MODEL, BlobKind.MODEL).blob.sha256
        busy, _ = c.submit(BenchmarkSpec(model_sha256=sha, session=ONE, iterations=0,
                                         min_duration_s=10))
        queued, _ = c.submit(BenchmarkSpec(model_sha256=sha, session=ONE, iterations=5))
        try:
            events: List[Any] = []
            timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
            started = time.monotonic()
            timer.start()
            with pytest.raises(KeyboardInterrupt):
                c.wait(queued.id, events.append)
            assert time.monotonic() - started < 2.0
            assert events and events[0].state is JobState.QUEUED
            assert c.get_job(queued.id).state is JobState.QUEUED
        finally:
            for job in (queued, busy):
                c.cancel_job(job.id)


# ---------------------------------------------------------------------- errors

def test_unknown_model_and_job_are_not_found(client: AgentClient) -> None:
    with pytest.raises(NotFoundError, match="upload it first"):
        client.submit(BenchmarkSpec(model_sha256="ab" * 32))
    with pytest.raises(NotFoundError):
        client.cancel_job("no-such-job")


def test_free_image_size_without_shape_is_bad_input(client: AgentClient,
                                                    tmp_path: Path) -> None:
    """A free batch dimension alone is taken as 1 (the digits CNN); free image sizes are not
    guessed: the agent's refusal reaches the caller as BadInputError with the --shape hint."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, "height", "width"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1, "height", "width"])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "g", [x], [y])
    path = tmp_path / "free_hw.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    sha = client.upload(path, BlobKind.MODEL).blob.sha256
    with pytest.raises(BadInputError, match=r"--shape x=1x1x1x1"):
        client.submit(BenchmarkSpec(model_sha256=sha))
    digits = client.upload(DIGITS_MODEL, BlobKind.MODEL).blob.sha256
    job, _ = client.submit(BenchmarkSpec(model_sha256=digits, iterations=2, warmup=0))
    assert dict(job.spec.free_batch_dims) == {"input": "batch"}
    assert client.wait(job.id).state is JobState.SUCCEEDED


def test_nobody_listening_is_unreachable(pki: Any) -> None:
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]                # bound, then closed: nobody listens there
    with AgentClient(f"127.0.0.1:{port}", pki.host.identity) as c:
        with pytest.raises(UnreachableError, match="is edgetune-agent running there"):
            c.info()


def test_agent_refuses_a_foreign_ca_certificate(local_agent: RunningAgent) -> None:
    with AgentClient(local_agent.address, local_agent.pki.foreign_host.identity) as c:
        with pytest.raises(AuthError) as err:
            c.info()
    assert "refused our certificate 'intruder'" in err.value.message
    assert "edgetune certs issue host" in err.value.hint


def test_device_certificate_as_client_is_refused_before_connecting(pki: Any) -> None:
    with pytest.raises(AuthError, match="'board1' lacks the clientAuth usage"):
        AgentClient("127.0.0.1:9", pki.device.identity)


def test_expired_own_certificate_is_refused_before_connecting(pki: Any) -> None:
    with pytest.raises(AuthError, match="expired"):
        AgentClient("127.0.0.1:9", pki.expired_host.identity)


def test_own_certificate_near_expiry_warns(pki: Any, caplog: pytest.LogCaptureFixture) -> None:
    import datetime as dt

    soon = pki.ca.issue_host("short", key_type="ecdsa-p256",
                             not_after=dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=5))
    with caplog.at_level("WARNING", logger="edgetune.host.client"):
        check_own_certificate(soon.cert_pem, "short", 30)
    assert "expires in 4 days" in caplog.text or "expires in 5 days" in caplog.text
    caplog.clear()
    check_own_certificate(pki.host.identity.cert_pem, "laptop", 30)
    assert caplog.text == ""


def test_we_refuse_an_agent_certificate_without_our_address(pki: Any, tmp_path: Path) -> None:
    """Also: an agent that allows only another client name answers PERMISSION_DENIED."""
    other = pki.ca.issue_device("board9", ips=["10.9.9.9"], key_type="ecdsa-p256")
    cert, key = other.write(tmp_path, pki.passphrase)
    running = start_agent(pki, tmp_path / "agent", cert=cert, key=key,
                          extra_args=["--allowed-client", "someone-else"])
    try:
        with AgentClient(running.address, pki.host.identity) as c:
            with pytest.raises(AuthError) as err:
                c.info()
        message = err.value.message
        assert message.startswith("we refused the certificate 'board9'")
        assert "SAN does not include 127.0.0.1 (it has IP:10.9.9.9)" in message
        assert "--ip 127.0.0.1" in err.value.hint
        # The documented way out: expect the name the certificate does carry. The TLS
        # handshake then succeeds, and the agent's allow-list refuses "laptop".
        with AgentClient(running.address, pki.host.identity, server_name="10.9.9.9") as c:
            with pytest.raises(AuthError) as denied:
                c.info()
        assert denied.value.message.startswith(
            f"the agent at {running.address} refused our certificate 'laptop': ")
        assert "laptop" in denied.value.message.split(": ", 1)[1]
    finally:
        running.agent.stop()


def test_watch_past_its_deadline_is_a_timeout(local_agent: RunningAgent) -> None:
    settings = ClientSettings(watch_timeout_s=0.5)
    with AgentClient(local_agent.address, local_agent.pki.host.identity, settings=settings) as c:
        sha = c.upload(DIGITS_MODEL, BlobKind.MODEL).blob.sha256
        job, _ = c.submit(BenchmarkSpec(model_sha256=sha, session=ONE, iterations=0,
                                        min_duration_s=30))
        try:
            with pytest.raises(TimeoutError_, match="watch deadline") as err:
                c.wait(job.id)
            assert f"edgetune jobs watch {job.id}" in err.value.hint
            assert c.get_job(job.id).state in (JobState.QUEUED, JobState.RUNNING)
        finally:
            c.cancel_job(job.id)


def test_call_past_its_deadline_is_a_timeout(local_agent: RunningAgent, tmp_path: Path) -> None:
    model = big_model(tmp_path / "slow.onnx", 1000, seed=int(time.time()))
    settings = ClientSettings(timeout_s=0.3, upload_min_rate_bytes_s=1e12)

    def stall(done: int, total: int) -> None:
        if done:                          # in grpc's sending thread: the stream stays open
            time.sleep(1.0)

    with AgentClient(local_agent.address, local_agent.pki.host.identity, settings=settings) as c:
        with pytest.raises(TimeoutError_, match="did not answer in time"):
            c.upload(model, BlobKind.MODEL, progress=stall)


def test_local_agent_that_cannot_start_shows_its_output(pki: Any, tmp_path: Path) -> None:
    from edgetune.host.errors import AgentError as HostAgentError
    from edgetune.host.localagent import AgentFiles, LocalAgent

    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-passphrase\n")
    wrong.chmod(0o600)
    files = AgentFiles(ca=pki.ca_cert, cert=pki.device.cert, key=pki.device.key,
                       passphrase_file=wrong)
    with LocalAgent() as agent:
        with pytest.raises(HostAgentError) as err:
            agent.start(files, tmp_path / "store")
    assert "exited with status" in err.value.message
    assert "passphrase" in err.value.message          # the agent's own words, shown
    assert agent.process is None


def test_we_refuse_an_agent_of_another_ca(local_agent: RunningAgent) -> None:
    pki = local_agent.pki
    foreign = pki.foreign_host.identity
    trusting_only_foreign = Identity(ca_pem=pki.foreign_ca.cert_pem, cert_pem=foreign.cert_pem,
                                     key_pem=foreign.key_pem, common_name="intruder")
    with AgentClient(local_agent.address, trusting_only_foreign) as c:
        with pytest.raises(AuthError, match="we refused the certificate 'board1'.*not signed by our CA"):
            c.info()


def test_connect_timeout_when_nothing_answers_tls(pki: Any) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:   # accepts TCP, never speaks
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        settings = ClientSettings(connect_timeout_s=0.5)
        with AgentClient(address, pki.host.identity, settings=settings) as c:
            started = time.monotonic()
            with pytest.raises(UnreachableError, match="no answer from .* within 0.5 s"):
                c.info()
            assert time.monotonic() - started < 5
