"""The agent over the wire: a real grpc.aio server on 127.0.0.1 port 0 with real mutual TLS,
a real store on disk, real onnxruntime jobs, and raw ``AgentStub`` calls with timeouts."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Iterator, List

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from edgetune.protos import agent_pb2 as pb
from edgetune.protos import agent_pb2_grpc
from tests.agent_fixtures import (TIMEOUT, channel, identity_model, mlp_model,
                                  model_with_external_data, npz_bytes, relu_model, sha256_hex,
                                  start_agent, submit_benchmark, top1_dataset, upload,
                                  upload_dataset, upload_model, upload_requests, wait_job)

SERVICE = "edgetune.agent.v1.Agent"


class Client:
    """A test client: the raw stub plus the channel, closed at teardown."""

    def __init__(self, address: str, identity: Any) -> None:
        self.channel = channel(address, identity)
        self.stub = agent_pb2_grpc.AgentStub(self.channel)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stub, name)

    def info(self) -> pb.GetInfoResponse:
        return self.stub.GetInfo(pb.GetInfoRequest(), timeout=TIMEOUT)

    def close(self) -> None:
        self.channel.close()


@pytest.fixture
def make_agent(pki: Any, tmp_path: Path) -> Iterator[Any]:
    agents: List[Any] = []

    def make(store: Any = None, **overrides: Any) -> Any:
        agent = start_agent(pki, store or tmp_path / f"store{len(agents)}", **overrides)
        agents.append(agent)
        return agent

    yield make
    for agent in agents:
        agent.stop()


@pytest.fixture
def agent(make_agent: Any) -> Any:
    return make_agent()


@pytest.fixture
def client(agent: Any, pki: Any) -> Iterator[Client]:
    c = Client(agent.address, pki.host.identity)
    yield c
    c.close()


def rpc_error(call: Any, *args: Any, **kwargs: Any) -> grpc.RpcError:
    kwargs.setdefault("timeout", TIMEOUT)
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    return info.value


def assert_alive(client: Client) -> None:
    """After a refused request the agent still answers."""
    assert client.info().agent_name == "board1"


def bench_job(client: Client, sha: str, **fields: Any) -> pb.SubmitJobResponse:
    return submit_benchmark(client.stub, sha, **fields)


@pytest.fixture
def model_sha(client: Client) -> str:
    return upload_model(client.stub, mlp_model(), name="mlp")


@pytest.fixture
def slow_sha(client: Client) -> str:
    """A model slow enough per run (a few ms) for duration-bound jobs to stay cheap."""
    return upload_model(client.stub, mlp_model(inputs=256, hidden=1024, layers=4), name="slow")


# ------------------------------------------------------------------ standard services

def test_health_is_serving_and_reflection_lists_the_services(agent: Any, pki: Any) -> None:
    ch = channel(agent.address, pki.host.identity)
    try:
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", SERVICE):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        replies = list(refl.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=TIMEOUT))
        names = {s.name for s in replies[0].list_services_response.service}
        assert names == {SERVICE, "grpc.health.v1.Health",
                         "grpc.reflection.v1alpha.ServerReflection"}
    finally:
        ch.close()


def test_ready_file_holds_the_bound_address(make_agent: Any, tmp_path: Path) -> None:
    ready = tmp_path / "run" / "ready"
    agent = make_agent(ready_file=ready)
    assert ready.read_text().strip() == f"127.0.0.1:{agent.port}"
    agent.stop()
    assert not ready.exists()


def test_stale_ready_file_is_gone_before_serving_and_rewritten_after(pki: Any,
                                                                    tmp_path: Path) -> None:
    from edgetune.device.server import board_info
    from tests.agent_fixtures import InProcessAgent, agent_config

    ready = tmp_path / "ready"
    ready.write_text("127.0.0.1:1\n")                  # left by an agent that crashed
    reached, go = threading.Event(), threading.Event()
    seen: List[Any] = []

    def slow_board_info() -> Any:                       # the agent is bound, not yet SERVING
        reached.set()
        assert go.wait(TIMEOUT)
        return board_info()

    def start() -> None:
        seen.append(InProcessAgent(agent_config(pki, tmp_path / "store", ready_file=ready),
                                   pki.device.identity, info=slow_board_info))

    starter = threading.Thread(target=start)
    starter.start()
    try:
        assert reached.wait(TIMEOUT), "the agent never got to loading its backends"
        assert not ready.exists(), "the stale ready file is still there while the agent starts"
    finally:
        go.set()
        starter.join(TIMEOUT)
    (agent,) = seen
    try:
        assert ready.read_text().strip() == agent.address
    finally:
        agent.stop()
    assert not ready.exists()


def test_get_info_describes_board_store_queue_and_both_names(client: Client) -> None:
    upload_model(client.stub, mlp_model())
    info = client.info()
    assert info.agent_name == "board1" and info.caller_name == "laptop"
    assert info.cpu_cores >= 1 and info.memory_total_bytes > info.memory_available_bytes > 0
    assert "CPUExecutionProvider" in info.available_providers
    assert info.onnxruntime_version and info.python_version and info.agent_version
    assert info.store_models == 1 and info.store_datasets == 0 and info.store_used_bytes > 0
    assert info.queue_capacity == 16 and info.queue_length == 0 and info.running_job_id == ""
    assert info.uptime_s > 0


# ------------------------------------------------------------------ store

def test_upload_list_delete(client: Client) -> None:
    model = mlp_model()
    reply = upload(client.stub, pb.BLOB_KIND_MODEL, model, name="../../etc/passwd")
    sha = sha256_hex(model)
    assert reply.blob.sha256 == sha and reply.blob.size_bytes == len(model)
    assert reply.received_bytes == len(model) and not reply.already_present
    assert reply.blob.name == "../../etc/passwd"          # a label, never a path
    data = top1_dataset()
    upload_dataset(client.stub, data)

    listed = client.ListBlobs(pb.ListBlobsRequest(), timeout=TIMEOUT).blobs
    assert {(b.kind, b.sha256) for b in listed} == {(pb.BLOB_KIND_MODEL, sha),
                                                    (pb.BLOB_KIND_DATASET, sha256_hex(data))}
    only_models = client.ListBlobs(pb.ListBlobsRequest(kind=pb.BLOB_KIND_MODEL), timeout=TIMEOUT)
    assert [b.sha256 for b in only_models.blobs] == [sha]

    assert client.DeleteBlob(pb.DeleteBlobRequest(kind=pb.BLOB_KIND_MODEL, sha256=sha),
                             timeout=TIMEOUT).deleted
    status = client.GetUploadStatus(pb.GetUploadStatusRequest(kind=pb.BLOB_KIND_MODEL, sha256=sha),
                                    timeout=TIMEOUT)
    assert status.state == pb.UPLOAD_STATE_ABSENT
    err = rpc_error(client.DeleteBlob, pb.DeleteBlobRequest(kind=pb.BLOB_KIND_MODEL, sha256=sha))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    err = rpc_error(client.ListBlobs, pb.ListBlobsRequest(kind=7))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert_alive(client)


def test_reupload_of_a_stored_hash_sends_nothing(client: Client) -> None:
    model = mlp_model()
    upload(client.stub, pb.BLOB_KIND_MODEL, model)
    header_only = iter([pb.UploadBlobRequest(header=pb.UploadHeader(
        kind=pb.BLOB_KIND_MODEL, sha256=sha256_hex(model), size_bytes=len(model)))])
    reply = client.UploadBlob(header_only, timeout=TIMEOUT)
    assert reply.already_present and reply.received_bytes == 0
    assert reply.blob.size_bytes == len(model)
    status = client.GetUploadStatus(pb.GetUploadStatusRequest(
        kind=pb.BLOB_KIND_MODEL, sha256=sha256_hex(model), size_bytes=len(model)), timeout=TIMEOUT)
    assert status.state == pb.UPLOAD_STATE_COMPLETE


def test_cancelled_upload_keeps_committed_bytes_and_resumes(client: Client, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    data = npz_bytes(x=rng.random((4096, 64)).astype(np.float32))      # ~1 MiB dataset
    sha, chunk = sha256_hex(data), 64 << 10
    release = threading.Event()

    def first_part() -> Iterator[pb.UploadBlobRequest]:
        for i, message in enumerate(upload_requests(pb.BLOB_KIND_DATASET, data, chunk=chunk)):
            if i == 5:                      # header + 4 chunks sent, then the client stalls
                release.wait(TIMEOUT)
                return
            yield message

    future = client.UploadBlob.future(first_part(), timeout=TIMEOUT)
    request = pb.GetUploadStatusRequest(kind=pb.BLOB_KIND_DATASET, sha256=sha, size_bytes=len(data))
    deadline = time.monotonic() + TIMEOUT
    while client.GetUploadStatus(request, timeout=TIMEOUT).committed_bytes < 4 * chunk:
        assert time.monotonic() < deadline, "the agent never wrote the first chunks"
        time.sleep(0.02)
    future.cancel()                        # the client goes away mid-upload
    release.set()
    assert future.cancelled()

    status = client.GetUploadStatus(request, timeout=TIMEOUT)
    assert status.state == pb.UPLOAD_STATE_PARTIAL and status.committed_bytes == 4 * chunk
    offset = status.committed_bytes
    while True:  # the agent releases the partial upload once it has seen the cancellation
        try:
            reply = upload(client.stub, pb.BLOB_KIND_DATASET, data, offset=offset, chunk=chunk)
            break
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION and "in progress" in exc.details()
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert reply.blob.sha256 == sha and reply.received_bytes == len(data) - offset
    assert client.GetUploadStatus(request, timeout=TIMEOUT).state == pb.UPLOAD_STATE_COMPLETE


def test_resume_from_a_wrong_offset_is_refused(client: Client) -> None:
    data = top1_dataset()
    err = rpc_error(upload, client.stub, pb.BLOB_KIND_DATASET, data, offset=100)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "offset 0" in err.details()
    assert_alive(client)


def test_hash_mismatch_is_data_loss_and_leaves_the_store_clean(client: Client, agent: Any) -> None:
    model = mlp_model()
    wrong = sha256_hex(b"something else")
    err = rpc_error(upload, client.stub, pb.BLOB_KIND_MODEL, model, sha256=wrong)
    assert err.code() == grpc.StatusCode.DATA_LOSS and "hash mismatch" in err.details()
    assert client.ListBlobs(pb.ListBlobsRequest(), timeout=TIMEOUT).blobs == []
    status = client.GetUploadStatus(pb.GetUploadStatusRequest(kind=pb.BLOB_KIND_MODEL, sha256=wrong),
                                    timeout=TIMEOUT)
    assert status.state == pb.UPLOAD_STATE_ABSENT
    store = Path(agent.config.store)
    assert [p.name for p in (store / "partial").iterdir()] == []
    assert [p.name for p in (store / "models").iterdir()] == []
    assert_alive(client)


def test_size_limit_not_onnx_escaping_external_data_and_pickle_are_refused(
        make_agent: Any, pki: Any) -> None:
    from edgetune.device.limits import Limits
    agent = make_agent(limits=Limits(max_model_bytes=20_000))
    client = Client(agent.address, pki.host.identity)
    try:
        big = mlp_model(inputs=64, hidden=128)                 # > 20 kB
        err = rpc_error(upload, client.stub, pb.BLOB_KIND_MODEL, big)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_model_bytes" in err.details()
        assert_alive(client)

        err = rpc_error(upload, client.stub, pb.BLOB_KIND_MODEL, b"this is not a model" * 10)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "not an ONNX model" in err.details()
        assert_alive(client)

        for location in ("../../etc/passwd", "/etc/passwd"):
            err = rpc_error(upload, client.stub, pb.BLOB_KIND_MODEL,
                            model_with_external_data(location))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "outside the model's bundle" in err.details()
            assert_alive(client)

        pickled = npz_bytes(x=np.array([{"evil": 1}, None], dtype=object))
        err = rpc_error(upload, client.stub, pb.BLOB_KIND_DATASET, pickled)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "pickle" in err.details()
        assert client.ListBlobs(pb.ListBlobsRequest(), timeout=TIMEOUT).blobs == []
        assert_alive(client)
    finally:
        client.close()


def test_upload_must_start_with_a_header(client: Client) -> None:
    err = rpc_error(client.UploadBlob, iter([pb.UploadBlobRequest(data=b"abc")]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "header" in err.details()
    err = rpc_error(client.UploadBlob, iter([pb.UploadBlobRequest(header=pb.UploadHeader(
        kind=pb.BLOB_KIND_MODEL, sha256="not-a-hash", size_bytes=10))]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "64 lowercase" in err.details()
    assert_alive(client)


# ------------------------------------------------------------------ jobs

def test_benchmark_job_streams_progress_and_the_result(client: Client, model_sha: str) -> None:
    submitted = bench_job(client, model_sha, iterations=300, warmup=5, return_samples=True,
                          label="first run")
    assert submitted.job.state == pb.JOB_STATE_QUEUED and submitted.queue_position == 1
    assert submitted.job.client == "laptop" and submitted.job.spec.label == "first run"
    events = list(client.WatchJob(pb.WatchJobRequest(job_id=submitted.job.id), timeout=60))
    assert events[0].HasField("job") and events[0].job.id == submitted.job.id
    phases = {e.progress.phase for e in events if e.HasField("progress")}
    assert "measure" in phases
    final = events[-1]
    assert final.state == pb.JOB_STATE_SUCCEEDED and final.HasField("job")
    result = final.job.benchmark
    assert result.iterations == 300 and result.warmup == 5 and len(result.samples_ms) == 300
    lat = result.latency
    assert 0 < lat.min_ms <= lat.p50_ms <= lat.p99_ms <= lat.max_ms
    assert result.throughput_ips > 0 and "CPUExecutionProvider" in result.providers
    assert [e for e in events[:-1] if e.state in (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED)] == []

    again = client.GetJob(pb.GetJobRequest(job_id=submitted.job.id), timeout=TIMEOUT).job
    assert again.state == pb.JOB_STATE_SUCCEEDED and again.benchmark.iterations == 300
    listed = client.ListJobs(pb.ListJobsRequest(), timeout=TIMEOUT).jobs
    assert [j.id for j in listed] == [submitted.job.id]


def test_wire_zeros_become_defaults(client: Client, model_sha: str) -> None:
    job = bench_job(client, model_sha).job            # warmup 0, iterations 0, duration 0
    assert job.spec.benchmark.warmup == 10 and job.spec.benchmark.iterations == 100
    done = wait_job(client.stub, job.id)
    assert done.state == pb.JOB_STATE_SUCCEEDED and done.benchmark.iterations == 100


def test_unknown_model_and_dataset_are_not_found(client: Client, model_sha: str) -> None:
    missing = sha256_hex(b"never uploaded")
    err = rpc_error(bench_job, client, missing)
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert err.details().startswith(f"model {missing} is not stored on this board; upload it first")
    err = rpc_error(bench_job, client, model_sha, dataset_sha256=missing)
    assert err.code() == grpc.StatusCode.NOT_FOUND and "dataset" in err.details()
    err = rpc_error(client.SubmitJob, pb.SubmitJobRequest())
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert client.ListJobs(pb.ListJobsRequest(), timeout=TIMEOUT).jobs == []
    assert_alive(client)


@pytest.mark.parametrize("fields, words", [
    ({"iterations": -5}, "iterations must be between 1 and 1000000 (got -5)"),
    ({"iterations": 2_000_000_000}, "iterations must be between"),
    ({"warmup": -1}, "warmup must be between"),
    ({"iterations": 10, "min_duration_s": 1.0}, "exactly one of iterations"),
    ({"min_duration_s": -1.0}, "min_duration_s"),
    ({"min_duration_s": 1e9}, "min_duration_s"),
])
def test_bad_counts_are_invalid_argument(client: Client, model_sha: str, fields: Any,
                                         words: str) -> None:
    err = rpc_error(bench_job, client, model_sha, **fields)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and words in err.details()
    assert client.ListJobs(pb.ListJobsRequest(), timeout=TIMEOUT).jobs == []
    assert_alive(client)


def test_a_free_batch_dimension_is_set_to_1_and_recorded(client: Client) -> None:
    sha = upload_model(client.stub, mlp_model(batch="batch"), name="dynamic")
    # no shape given: the agent runs batch 1, and the job's spec says so (what was run and why)
    job = bench_job(client, sha, iterations=5).job
    assert dict(job.spec.benchmark.free_batch_dims) == {"x": "batch"}
    assert list(job.spec.benchmark.session.input_shapes["x"].dims) == [1, 16]
    done = wait_job(client.stub, job.id)
    assert done.state == pb.JOB_STATE_SUCCEEDED
    assert dict(done.spec.benchmark.free_batch_dims) == {"x": "batch"}
    # an unnamed (unknown) first dimension is a free batch dimension too
    unnamed = upload_model(client.stub, relu_model([None, 3, 4]), name="unnamed")
    job = bench_job(client, unnamed, iterations=5).job
    assert dict(job.spec.benchmark.free_batch_dims) == {"x": ""}
    assert list(job.spec.benchmark.session.input_shapes["x"].dims) == [1, 3, 4]
    assert wait_job(client.stub, job.id).state == pb.JOB_STATE_SUCCEEDED
    # a shape given is used as it is, and a client cannot claim the agent chose it
    job = bench_job(client, sha, iterations=5, shapes={"x": [3, 16]},
                    free_batch_dims={"x": "made up"}).job
    assert dict(job.spec.benchmark.free_batch_dims) == {}
    assert list(job.spec.benchmark.session.input_shapes["x"].dims) == [3, 16]
    assert wait_job(client.stub, job.id).state == pb.JOB_STATE_SUCCEEDED
    assert_alive(client)


@pytest.mark.parametrize("shape,shown,hint", [
    (["batch", 3, "height", "width"], "['batch', 3, 'height', 'width']", "--shape x=1x3x1x1"),
    ([1, "seq"], "[1, 'seq']", "--shape x=1x1"),
    (["n"], "['n']", "--shape x=1"),                  # a 1-D input's only dimension: no batch
    ([None, None], "[?, ?]", "--shape x=1x1"),
])
def test_other_free_dimensions_need_a_shape_at_submit(client: Client, shape: List[Any],
                                                      shown: str, hint: str) -> None:
    sha = upload_model(client.stub, relu_model(shape), name="dynamic")
    err = rpc_error(bench_job, client, sha, iterations=5)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"input 'x' has dynamic dimensions {shown}" in err.details()
    assert hint in err.details()
    err = rpc_error(bench_job, client, sha, iterations=5, shapes={"nope": [1, 16]})
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "'nope'" in err.details()
    assert_alive(client)


def test_full_queue_is_resource_exhausted_and_cancel_rules(make_agent: Any, pki: Any) -> None:
    from edgetune.device.limits import Limits
    agent = make_agent(limits=Limits(queue_capacity=2))
    client = Client(agent.address, pki.host.identity)
    try:
        sha = upload_model(client.stub, mlp_model(inputs=256, hidden=1024, layers=4))
        running = bench_job(client, sha, min_duration_s=60.0, warmup=1).job
        deadline = time.monotonic() + TIMEOUT
        while client.GetJob(pb.GetJobRequest(job_id=running.id),
                            timeout=TIMEOUT).job.state != pb.JOB_STATE_RUNNING:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        queued = [bench_job(client, sha, iterations=5) for _ in range(2)]
        assert [q.queue_position for q in queued] == [1, 2]
        err = rpc_error(bench_job, client, sha, iterations=5)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert err.details() == ("queue is full (2 jobs); retry when the running job has "
                                 "finished (jobs run one at a time), or raise queue_capacity")
        info = client.info()
        assert info.queue_length == 2 and info.running_job_id == running.id

        # a blob a queued or running job needs cannot be deleted
        err = rpc_error(client.DeleteBlob, pb.DeleteBlobRequest(kind=pb.BLOB_KIND_MODEL, sha256=sha))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and running.id in err.details()

        # watching the second queued job: it moves up when the first queued one is cancelled
        watch = client.WatchJob(pb.WatchJobRequest(job_id=queued[1].job.id), timeout=60)
        first = next(watch)
        assert first.state == pb.JOB_STATE_QUEUED and first.queue_position == 2
        cancelled = client.CancelJob(pb.CancelJobRequest(job_id=queued[0].job.id), timeout=TIMEOUT)
        assert cancelled.job.state == pb.JOB_STATE_CANCELLED
        moved = next(watch)
        assert moved.state == pb.JOB_STATE_QUEUED and moved.queue_position == 1

        # a running job stops at its next iteration
        stopped = client.CancelJob(pb.CancelJobRequest(job_id=running.id), timeout=TIMEOUT).job
        assert stopped.state == pb.JOB_STATE_CANCELLED and "cancelled" in stopped.error
        rest = list(watch)                    # the queued job now runs to the end
        assert rest[-1].state == pb.JOB_STATE_SUCCEEDED
        assert pb.JOB_STATE_RUNNING in [e.state for e in rest]

        err = rpc_error(client.CancelJob, pb.CancelJobRequest(job_id=running.id))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "already been cancelled" in err.details()
        err = rpc_error(client.CancelJob, pb.CancelJobRequest(job_id="f" * 32))
        assert err.code() == grpc.StatusCode.NOT_FOUND
        err = rpc_error(client.GetJob, pb.GetJobRequest(job_id="nope"))
        assert err.code() == grpc.StatusCode.NOT_FOUND
        err = rpc_error(lambda **kw: list(client.WatchJob(pb.WatchJobRequest(job_id="nope"), **kw)))
        assert err.code() == grpc.StatusCode.NOT_FOUND
        assert_alive(client)
    finally:
        client.close()


def test_watcher_disconnect_does_not_stop_the_job_and_reattach_works(
        client: Client, slow_sha: str) -> None:
    job = bench_job(client, slow_sha, min_duration_s=0.8, warmup=1).job
    watch = client.WatchJob(pb.WatchJobRequest(job_id=job.id), timeout=60)
    next(watch)
    watch.cancel()                           # the host's connection drops mid-job
    with pytest.raises(grpc.RpcError) as info:
        next(watch)
    assert info.value.code() == grpc.StatusCode.CANCELLED

    second = client.WatchJob(pb.WatchJobRequest(job_id=job.id), timeout=60)
    events = list(second)                    # re-attach while it runs (or just finished)
    assert events[0].job.id == job.id and events[-1].state == pb.JOB_STATE_SUCCEEDED
    result = client.GetJob(pb.GetJobRequest(job_id=job.id), timeout=TIMEOUT).job
    assert result.state == pb.JOB_STATE_SUCCEEDED and result.benchmark.measured_s >= 0.8

    finished = list(client.WatchJob(pb.WatchJobRequest(job_id=job.id), timeout=TIMEOUT))
    assert len(finished) == 1 and finished[0].state == pb.JOB_STATE_SUCCEEDED
    assert finished[0].job.benchmark.iterations == result.benchmark.iterations


def test_evaluate_job_reports_metrics(client: Client) -> None:
    model = upload_model(client.stub, identity_model(classes=4))
    data = upload_dataset(client.stub, top1_dataset(classes=4, samples=8, correct=6))
    reply = client.SubmitJob(pb.SubmitJobRequest(spec=pb.JobSpec(evaluate=pb.EvaluateSpec(
        model_sha256=model, dataset_sha256=data))), timeout=TIMEOUT)
    events = list(client.WatchJob(pb.WatchJobRequest(job_id=reply.job.id), timeout=60))
    final = events[-1].job
    assert final.state == pb.JOB_STATE_SUCCEEDED, final.error
    metrics = dict(final.evaluate.metrics)
    assert final.evaluate.samples == 8
    assert metrics["top1"] == pytest.approx(0.75)
    assert metrics["cosine"] == pytest.approx(1.0) and metrics["max_abs_error"] == 0.0


def test_job_failing_in_the_runner_is_failed_with_its_reason(client: Client) -> None:
    sha = upload_model(client.stub, mlp_model())
    reply = bench_job(client, sha, iterations=5,
                      session=pb.SessionOptions(providers=["NoSuchExecutionProvider"]))
    job = wait_job(client.stub, reply.job.id)
    assert job.state == pb.JOB_STATE_FAILED
    assert "NoSuchExecutionProvider" in job.error and "available" in job.error
    assert_alive(client)


def test_results_survive_a_restart(make_agent: Any, pki: Any, tmp_path: Path) -> None:
    store = tmp_path / "kept"
    agent = make_agent(store)
    client = Client(agent.address, pki.host.identity)
    sha = upload_model(client.stub, mlp_model())
    job_id = bench_job(client, sha, iterations=20).job.id
    first = wait_job(client.stub, job_id)
    client.close()
    agent.stop()

    again = make_agent(store)
    client = Client(again.address, pki.host.identity)
    try:
        job = client.GetJob(pb.GetJobRequest(job_id=job_id), timeout=TIMEOUT).job
        assert job.state == pb.JOB_STATE_SUCCEEDED
        assert job.benchmark.latency.p50_ms == first.benchmark.latency.p50_ms
        assert client.info().store_models == 1
    finally:
        client.close()


# ------------------------------------------------------------------ who may call

@pytest.mark.parametrize("who", ["none", "foreign", "expired", "device"])
def test_bad_client_certificates_are_refused(agent: Any, pki: Any, who: str) -> None:
    if who == "none":
        ch = channel(agent.address, None, ca_pem=pki.host.identity.ca_pem)
    else:
        ident = {"foreign": pki.foreign_host, "expired": pki.expired_host,
                 "device": pki.device_as_client}[who].identity
        ch = channel(agent.address, ident, ca_pem=pki.host.identity.ca_pem)
    try:
        err = rpc_error(agent_pb2_grpc.AgentStub(ch).GetInfo, pb.GetInfoRequest(), timeout=10)
        # BoringSSL ends the handshake (a device certificate: "unsupported certificate
        # purpose"); the agent's own clientAuth check is the second line (see test below).
        assert err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.PERMISSION_DENIED)
        if err.code() == grpc.StatusCode.PERMISSION_DENIED:
            assert who == "device" and "clientAuth" in err.details()
    finally:
        ch.close()
    good = Client(agent.address, pki.host.identity)
    try:
        assert_alive(good)
    finally:
        good.close()


def test_interceptor_refuses_a_certificate_without_client_auth(pki: Any) -> None:
    from edgetune.device.auth import LACKS_CLIENT_AUTH, refusal

    class Context:                        # what grpc hands the interceptor, as data
        def __init__(self, identity: Any) -> None:
            self._auth = {"x509_pem_cert": [identity.cert_pem],
                          "x509_common_name": [identity.common_name.encode()]}

        def auth_context(self) -> Any:
            return self._auth

    assert refusal(Context(pki.device.identity), ()) == LACKS_CLIENT_AUTH
    assert refusal(Context(pki.host.identity), ()) is None
    assert "'laptop'" in refusal(Context(pki.host.identity), ("ci-runner",))


def test_allowed_clients_refuses_other_names(make_agent: Any, pki: Any) -> None:
    agent = make_agent(allowed_clients=("ci-runner",))
    client = Client(agent.address, pki.host.identity)
    try:
        err = rpc_error(client.GetInfo, pb.GetInfoRequest())
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "'laptop'" in err.details() and "allowed_clients" in err.details()
        err = rpc_error(lambda **kw: list(client.WatchJob(pb.WatchJobRequest(job_id="x"), **kw)))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        health = health_pb2_grpc.HealthStub(client.channel)
        err = rpc_error(health.Check, health_pb2.HealthCheckRequest())
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        client.close()
    allowed = make_agent(allowed_clients=("ci-runner", "laptop"))
    client = Client(allowed.address, pki.host.identity)
    try:
        assert client.info().caller_name == "laptop"
    finally:
        client.close()


def test_not_serving_until_the_store_and_runtime_are_ready(pki: Any, tmp_path: Path) -> None:
    """Health says NOT_SERVING (and our RPCs UNAVAILABLE) while onnxruntime is still loading;
    the ready file appears only once it says SERVING."""
    import asyncio
    import socket

    from edgetune.device.server import AgentServer, board_info
    from tests.agent_fixtures import agent_config

    loading = threading.Event()
    release = threading.Event()

    def slow_runtime() -> Any:
        loading.set()
        release.wait(TIMEOUT)
        return board_info()

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ready = tmp_path / "ready"
    config = agent_config(pki, tmp_path / "store", listen=f"127.0.0.1:{port}", ready_file=ready)
    server = AgentServer(config, pki.device.identity, info=slow_runtime)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    started = asyncio.run_coroutine_threadsafe(server.start(), loop)
    client = Client(f"127.0.0.1:{port}", pki.host.identity)
    try:
        assert loading.wait(TIMEOUT)
        health = health_pb2_grpc.HealthStub(client.channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=TIMEOUT)
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        err = rpc_error(client.GetInfo, pb.GetInfoRequest())
        assert err.code() == grpc.StatusCode.UNAVAILABLE and "starting" in err.details()
        assert not ready.exists()
        release.set()
        assert started.result(TIMEOUT) == port
        reply = health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=TIMEOUT)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert ready.read_text().strip() == f"127.0.0.1:{port}"
        assert_alive(client)
    finally:
        release.set()
        client.close()
        asyncio.run_coroutine_threadsafe(server.stop(1), loop).result(TIMEOUT)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


@pytest.mark.parametrize("size", [0, 1, 127, 128, 16383, 16384, 3 << 20])
def test_upload_deserializer_returns_data_without_copying(size: int) -> None:
    from edgetune.device.servicer import parse_upload_request
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    raw = pb.UploadBlobRequest(data=payload).SerializeToString()
    parsed = parse_upload_request(raw)
    assert isinstance(parsed, memoryview) and parsed.obj is raw
    assert bytes(parsed) == payload
    header = pb.UploadBlobRequest(header=pb.UploadHeader(kind=pb.BLOB_KIND_MODEL, size_bytes=size))
    back = parse_upload_request(header.SerializeToString())
    assert isinstance(back, pb.UploadBlobRequest) and back.header.size_bytes == size
    # two data fields in one message (legal protobuf: the last wins) take the slow path
    twice = raw + pb.UploadBlobRequest(data=b"last").SerializeToString()
    slow = parse_upload_request(twice)
    assert isinstance(slow, pb.UploadBlobRequest) and slow.data == b"last"
