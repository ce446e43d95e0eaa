"""The durable job queue: SQLite recovery, watcher mailboxes, progress hand-over from the
runner's thread, graceful stop. Real SQLite files, a real store and the real runner."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from edgetune.device.jobs import (INTERRUPTED_CRASH, INTERRUPTED_STOP, JobDatabase, JobQueue, _Active,
                         _Mailbox)
from edgetune.device.limits import Limits
from edgetune.device.runner import Runner
from edgetune.device.store import BlobStore
from edgetune.protos import agent_pb2 as pb
from edgetune.protos.messages import BenchmarkSpec, Job, JobEvent, JobState, Progress
from tests.agent_fixtures import TIMEOUT, channel, mlp_model, sha256_hex, start_agent, \
    submit_benchmark, upload_model, wait_job
from edgetune.protos import agent_pb2_grpc


def _store_with_model(root: Path) -> "tuple[BlobStore, str]":
    store = BlobStore(root, Limits())
    model = mlp_model()
    sha = sha256_hex(model)
    writer = store.begin_upload("model", sha, len(model), "mlp")
    writer.write(model)
    writer.commit()
    return store, sha


def test_restart_marks_running_jobs_interrupted_and_requeues_queued_ones(tmp_path: Path) -> None:
    store, sha = _store_with_model(tmp_path)
    db = JobDatabase(tmp_path / "jobs.db")
    spec = BenchmarkSpec(model_sha256=sha, warmup=1, iterations=10)
    running = Job(id="a" * 32, state=JobState.RUNNING, spec=spec, created_unix=1.0,
                  started_unix=2.0, client="laptop")
    queued = Job(id="b" * 32, state=JobState.QUEUED, spec=spec, created_unix=3.0, label="later")
    db.insert(running)
    db.insert(queued)
    db.close()                                 # what a killed agent leaves behind

    async def scenario() -> Any:
        queue = JobQueue(tmp_path / "jobs.db", Runner(store, Limits()), capacity=4)
        await queue.start()
        try:
            interrupted = queue.get(running.id)
            events = [e async for e in queue.watch(queued.id)]
            return interrupted, events, queue.list()
        finally:
            await queue.stop()

    interrupted, events, listed = asyncio.run(scenario())
    assert interrupted.state is JobState.INTERRUPTED and interrupted.error == INTERRUPTED_CRASH
    assert interrupted.finished_unix > 0 and interrupted.client == "laptop"
    final = events[-1]
    assert final.state is JobState.SUCCEEDED and final.job.result.iterations == 10
    assert final.job.label == "later"
    assert [j.id for j in listed] == [queued.id, running.id]        # newest first


def test_mailbox_keeps_state_events_and_coalesces_progress() -> None:
    async def scenario() -> Any:
        box = _Mailbox()
        box.put(JobEvent(job_id="j", state=JobState.QUEUED, queue_position=2))
        for i in range(1000):
            box.put(JobEvent(job_id="j", state=JobState.RUNNING, progress=Progress(done=i)))
        box.put(JobEvent(job_id="j", state=JobState.SUCCEEDED))
        box.close()
        out = []
        while True:
            event = await box.get()
            if event is None:
                return out
            out.append(event)

    out = asyncio.run(scenario())
    assert [e.state for e in out] == [JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED]
    assert out[0].queue_position == 2 and out[1].progress.done == 999


def test_progress_from_another_thread_never_queues_up(tmp_path: Path) -> None:
    """A runner thread reporting as fast as it can costs the loop at most one pending
    callback, and watchers see the latest value."""

    async def scenario() -> Any:
        queue = JobQueue(tmp_path / "jobs.db", runner=None)
        queue._loop = asyncio.get_running_loop()
        job = Job(id="j", state=JobState.RUNNING, spec=BenchmarkSpec(model_sha256="0" * 64))
        active = _Active(job)
        box = _Mailbox()
        active.watchers.add(box)
        report = queue._progress_callback(active)
        calls = 20000

        def runner_thread() -> None:
            for i in range(1, calls + 1):
                report(Progress(done=i, total=calls, phase="measure"))

        thread = threading.Thread(target=runner_thread)
        started = time.perf_counter()
        thread.start()
        await asyncio.get_running_loop().run_in_executor(None, thread.join)
        elapsed = time.perf_counter() - started
        await asyncio.sleep(0.05)            # let the last hand-over run
        events = []
        while box._items:
            events.append(box._items.popleft())
        return events, active.progress, elapsed

    events, latest, elapsed = asyncio.run(scenario())
    assert latest.done == 20000
    assert len(events) == 1 and events[0].progress.done == 20000
    assert elapsed < 5.0


def test_graceful_stop_interrupts_the_running_job(pki: Any, tmp_path: Path) -> None:
    store = tmp_path / "store"
    agent = start_agent(pki, store)
    ch = channel(agent.address, pki.host.identity)
    try:
        stub = agent_pb2_grpc.AgentStub(ch)
        sha = upload_model(stub, mlp_model(inputs=256, hidden=1024, layers=4))
        job = submit_benchmark(stub, sha, min_duration_s=60.0, warmup=1).job
        watch = stub.WatchJob(pb.WatchJobRequest(job_id=job.id), timeout=60)
        deadline = time.monotonic() + TIMEOUT
        for event in watch:
            if event.state == pb.JOB_STATE_RUNNING:
                break
            assert time.monotonic() < deadline
        started = time.monotonic()
        agent.stop(grace=10)
        assert time.monotonic() - started < 8, "the running job did not stop at once"
        rest = list(watch)
        assert rest and rest[-1].state == pb.JOB_STATE_INTERRUPTED
    finally:
        ch.close()
        agent.stop()

    again = start_agent(pki, store)
    ch = channel(again.address, pki.host.identity)
    try:
        stub = agent_pb2_grpc.AgentStub(ch)
        kept = stub.GetJob(pb.GetJobRequest(job_id=job.id), timeout=TIMEOUT).job
        assert kept.state == pb.JOB_STATE_INTERRUPTED and kept.error == INTERRUPTED_STOP
        fresh = submit_benchmark(stub, sha, iterations=3, warmup=1).job
        assert wait_job(stub, fresh.id).state == pb.JOB_STATE_SUCCEEDED
    finally:
        ch.close()
        again.stop()


def test_submit_is_refused_while_stopping(tmp_path: Path) -> None:
    from edgetune.device.jobs import ShuttingDown

    async def scenario() -> None:
        queue = JobQueue(tmp_path / "jobs.db", runner=None)
        await queue.start()
        await queue.stop()
        with pytest.raises(ShuttingDown):
            queue.submit(BenchmarkSpec(model_sha256="0" * 64))

    asyncio.run(scenario())


def test_a_corrupt_job_database_is_a_clear_start_error(pki: Any, tmp_path: Path) -> None:
    from edgetune.device.server import ServerError
    store = tmp_path / "store"
    store.mkdir()
    (store / "jobs.db").write_bytes(b"this is not an SQLite file at all" * 100)
    with pytest.raises(ServerError, match="cannot open the job database .*jobs.db"):
        start_agent(pki, store)
