"""The durable job queue: jobs recorded in SQLite, run one at a time, watched by anyone.

- Every job is a row in ``jobs.db`` (``edgetune.device.jobdb``: the schema, the row <-> ``Job``
  conversion, the queries and the start-up recovery), so results survive a restart.
- One asyncio worker task takes queued jobs in order and calls the runner in a dedicated
  thread (``loop.run_in_executor``), so the event loop keeps serving while a model runs.
- Any number of watchers per job, each with its own mailbox: state changes and queue positions
  are delivered in order, progress is coalesced (a slow watcher gets the latest progress, never
  a backlog), and nothing a watcher does can block or stop the job. The runner's progress
  callback runs in its thread and hands over with ``loop.call_soon_threadsafe``.
- Cancelling sets a ``threading.Event`` the runner checks between iterations.
- At start, rows left ``running`` by an agent that died are marked ``interrupted`` and rows left
  ``queued`` are queued again. A graceful stop marks the running job ``interrupted`` too.

Everything except the runner thread runs on the event loop thread, so no lock guards the
queue's own state. The queue never sees a protobuf type.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import functools
import logging
import threading
import time
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Deque, Dict, List, Optional, Set, Tuple

from edgetune.device.errors import (Cancelled, FailedPrecondition, NotFound, ResourceExhausted,
                                    StatusError)
from edgetune.device.jobdb import INTERRUPTED_CRASH, JobDatabase
from edgetune.protos.messages import (BenchmarkSpec, CompareSpec, EvaluateSpec, Job, JobEvent,
                                      JobState, Progress)

log = logging.getLogger("edgetune.agent.jobs")

INTERRUPTED_STOP = "the agent was shut down while this job ran; submit it again"
MAX_LIST = 1000

# Re-exported: INTERRUPTED_CRASH and JobDatabase live in device.jobdb since the split.
__all__ = ["INTERRUPTED_CRASH", "INTERRUPTED_STOP", "MAX_LIST", "JobDatabase", "JobQueue",
           "ShuttingDown"]


class ShuttingDown(StatusError):
    """The agent is stopping; the caller should come back when it is up again."""

    status = "UNAVAILABLE"


class _Mailbox:
    """One watcher's events: ordered, with consecutive progress events coalesced."""

    def __init__(self) -> None:
        self._items: Deque[JobEvent] = collections.deque()
        self._wake = asyncio.Event()
        self.closed = False

    def put(self, event: JobEvent) -> None:
        if (event.progress is not None and event.job is None and self._items
                and self._items[-1].progress is not None and self._items[-1].job is None):
            self._items[-1] = event          # the latest progress replaces an unsent one
        else:
            self._items.append(event)
        self._wake.set()

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    async def get(self) -> Optional[JobEvent]:
        while not self._items:
            if self.closed:
                return None
            self._wake.clear()
            await self._wake.wait()
        return self._items.popleft()


class _Active:
    """A queued or running job's live state."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.cancel = threading.Event()
        self.done = asyncio.Event()
        self.watchers: Set[_Mailbox] = set()
        self.progress: Optional[Progress] = None
        self.position = -1
        self._lock = threading.Lock()
        self._latest: Optional[Progress] = None
        self._flush_pending = False

    def uses(self, sha256: str) -> bool:
        spec = self.job.spec
        models = getattr(spec, "models", (spec.model_sha256,))
        return sha256 in (*models, getattr(spec, "dataset_sha256", ""))

    def broadcast(self, event: JobEvent) -> None:
        for box in list(self.watchers):
            box.put(event)


class JobQueue:
    """Durable FIFO of benchmark and evaluation jobs, run one at a time by ``runner``.

    ``runner`` has ``run_benchmark(spec, progress, cancelled)`` and
    ``run_evaluate(spec, progress, cancelled)`` (and ``run_compare`` for comparisons):
    blocking calls that report ``Progress`` through ``progress`` (from their thread), return
    a result dataclass, and raise
    ``edgetune.device.errors.Cancelled`` when ``cancelled`` (a ``threading.Event``) is set.

    ``signer`` (``edgetune.device.signing.ResultSigner``, holding the agent's key), when given,
    signs every succeeded job before it is recorded, so the signature is kept with the job.
    """

    def __init__(self, db_path: Path, runner: Any, capacity: int = 16, *,
                 signer: Any = None) -> None:
        self.db_path = Path(db_path)
        self.runner = runner
        self.capacity = capacity
        self.signer = signer
        self._db: Optional[JobDatabase] = None
        self._pending: Deque[str] = collections.deque()
        self._active: Dict[str, _Active] = {}
        self._running: Optional[str] = None
        self._stopping = False
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._wakeup: Optional[asyncio.Event] = None
        self._worker: Optional[asyncio.Task] = None
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="edgetune-job")

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Open the database, recover what a previous agent left, start the worker."""
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._db = JobDatabase(self.db_path)
        interrupted, queued = self._db.recover()
        if interrupted:
            log.warning("%d job(s) were running when the agent last stopped; marked interrupted",
                        interrupted)
        for job in queued:
            self._active[job.id] = _Active(job)
            self._pending.append(job.id)
        if queued:
            log.info("re-queued %d job(s) from before the restart", len(queued))
        self._worker = asyncio.ensure_future(self._work())

    async def stop(self, grace: float = 5.0) -> None:
        """Stop taking jobs, interrupt the running one, end every watch, close the database."""
        if self._worker is None or self._stopping:
            return
        self._stopping = True
        if self._running is not None:
            self._active[self._running].cancel.set()
        assert self._wakeup is not None
        self._wakeup.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._worker), grace)
        except asyncio.TimeoutError:
            log.warning("the running job did not stop within %.0f s; leaving it interrupted",
                        grace)
            self._worker.cancel()
            if self._running is not None:
                active = self._active[self._running]
                self._finish(active, dataclasses.replace(
                    active.job, state=JobState.INTERRUPTED, error=INTERRUPTED_STOP,
                    finished_unix=time.time()))
        for active in self._active.values():
            for box in list(active.watchers):
                box.close()
        self._executor.shutdown(wait=False)
        if self._db is not None:
            self._db.close()

    # ------------------------------------------------------------------ queries

    @property
    def queue_length(self) -> int:
        """Queued jobs, not counting the running one."""
        return len(self._pending)

    @property
    def running_job_id(self) -> str:
        return self._running or ""

    def position(self, job_id: str) -> int:
        """0 while running, 1.. while queued (1 is next), -1 when finished."""
        if job_id == self._running:
            return 0
        try:
            return self._pending.index(job_id) + 1
        except ValueError:
            return -1

    def get(self, job_id: str) -> Job:
        active = self._active.get(job_id)
        if active is not None:
            return active.job
        job = self._database().get(job_id) if job_id else None
        if job is None:
            raise NotFound(f"job {job_id!r} does not exist on this board; list the jobs it "
                           "knows with `edgetune jobs list`")
        return job

    def list(self, limit: int = 50) -> List[Job]:
        """The newest ``limit`` jobs, newest first (at most MAX_LIST)."""
        limit = 50 if limit <= 0 else min(limit, MAX_LIST)
        return [self._active[j.id].job if j.id in self._active else j
                for j in self._database().list(limit)]

    def job_using(self, sha256: str) -> Optional[Job]:
        """A queued or running job whose model or dataset is ``sha256``, if any."""
        for active in self._active.values():
            if active.uses(sha256):
                return active.job
        return None

    # ------------------------------------------------------------------ changes

    def submit(self, spec: Any, label: str = "", client: str = "") -> Tuple[Job, int]:
        """Queue a validated BenchmarkSpec, EvaluateSpec or CompareSpec; return the job and
        its position."""
        if not isinstance(spec, (BenchmarkSpec, EvaluateSpec, CompareSpec)):
            raise TypeError(f"not a job spec: {type(spec).__name__}")
        if self._stopping or self._worker is None:
            raise ShuttingDown("the agent is shutting down; submit the job again when it is back")
        if len(self._pending) >= self.capacity:
            raise ResourceExhausted(f"queue is full ({self.capacity} jobs); retry when the "
                                    "running job has finished (jobs run one at a time), or "
                                    "raise queue_capacity")
        job = Job(id=uuid.uuid4().hex, state=JobState.QUEUED, spec=spec, label=label,
                  created_unix=time.time(), client=client)
        self._database().insert(job)
        active = _Active(job)
        self._active[job.id] = active
        self._pending.append(job.id)
        active.position = len(self._pending)
        assert self._wakeup is not None
        self._wakeup.set()
        log.info("queued %s job %s for %s (position %d)", job.kind, job.id, client or "?",
                 active.position)
        return job, active.position

    async def cancel(self, job_id: str, wait_s: float = 10.0) -> Job:
        """Cancel a queued job (removed at once) or a running one (stops at its next iteration).

        Waits up to ``wait_s`` for a running job to stop and returns its final state; if it
        has not stopped by then, returns it still running (the cancellation stays requested).
        """
        active = self._active.get(job_id)
        if active is None:
            job = self.get(job_id)
            raise FailedPrecondition(f"job {job_id} has already {_past(job.state)}; only queued "
                                     "or running jobs can be cancelled")
        if job_id in self._pending:
            self._pending.remove(job_id)
            self._finish(active, dataclasses.replace(
                active.job, state=JobState.CANCELLED, finished_unix=time.time(),
                error="cancelled before it started"))
            self._broadcast_positions()
            return self.get(job_id)
        active.cancel.set()
        try:
            await asyncio.wait_for(asyncio.shield(active.done.wait()), wait_s)
        except asyncio.TimeoutError:
            pass
        return self.get(job_id)

    async def watch(self, job_id: str) -> AsyncIterator[JobEvent]:
        """The job's events: first its current state (with the Job), then changes, then the final
        event (with the Job and its result). A finished job yields just the final event."""
        active = self._active.get(job_id)
        if active is None:
            job = self.get(job_id)
            yield JobEvent(job_id=job.id, state=job.state, job=job)
            return
        box = _Mailbox()
        active.watchers.add(box)
        try:
            yield JobEvent(job_id=job_id, state=active.job.state,
                           queue_position=max(self.position(job_id), 0),
                           progress=active.progress, job=active.job)
            while True:
                event = await box.get()
                if event is None:
                    if self._stopping:
                        raise ShuttingDown("the agent is shutting down; watch the job again "
                                           "when it is back (it is kept)")
                    raise StatusError("the agent's job queue failed while handling this job; "
                                     "its log has the details")
                yield event
                if event.state.finished:
                    return
        finally:
            active.watchers.discard(box)

    # ------------------------------------------------------------------ internals

    def _database(self) -> JobDatabase:
        if self._db is None:
            raise ShuttingDown("the job queue is not open yet; try again in a moment")
        return self._db

    async def _work(self) -> None:
        assert self._wakeup is not None and self._loop is not None
        while not self._stopping:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            active = self._active[self._pending.popleft()]
            try:
                await self._run_one(active)
            except asyncio.CancelledError:
                raise
            except Exception:  # e.g. the disk is full: keep the queue going for the next job
                log.exception("the job queue failed while handling job %s", active.job.id)
                self._running = None
                self._active.pop(active.job.id, None)
                active.done.set()
                for box in list(active.watchers):
                    box.close()

    async def _run_one(self, active: _Active) -> None:
        job_id = active.job.id
        self._running = job_id
        job = dataclasses.replace(active.job, state=JobState.RUNNING, started_unix=time.time())
        active.job = job
        active.position = 0
        self._database().update(job)
        active.broadcast(JobEvent(job_id=job_id, state=JobState.RUNNING))
        self._broadcast_positions()
        log.info("running %s job %s", job.kind, job_id)
        final = await self._run(active)
        self._finish(active, final)
        log.info("job %s %s%s", job_id, final.state.value,
                 f": {final.error}" if final.error else "")

    async def _run(self, active: _Active) -> Job:
        job = active.job
        assert self._loop is not None
        method = getattr(self.runner, {"benchmark": "run_benchmark", "evaluate": "run_evaluate",
                                       "compare": "run_compare"}[job.kind])
        progress = self._progress_callback(active)
        if getattr(job.spec, "dump_outputs", ()):   # the output file is named by the job
            method = functools.partial(method, job_id=job.id)
        try:
            result = await self._loop.run_in_executor(
                self._executor, method, job.spec, progress, active.cancel)
        except Cancelled as exc:
            if self._stopping:
                return _ended(job, JobState.INTERRUPTED, INTERRUPTED_STOP)
            return _ended(job, JobState.CANCELLED, str(exc) or "cancelled while running")
        except StatusError as exc:
            return _ended(job, JobState.FAILED, str(exc))
        except Exception as exc:
            log.exception("job %s failed unexpectedly", job.id)
            return _ended(job, JobState.FAILED, f"internal error in the agent: "
                                                f"{type(exc).__name__}: {exc}")
        done = dataclasses.replace(_ended(job, JobState.SUCCEEDED, ""), result=result)
        return await self._sign(done)

    async def _sign(self, job: Job) -> Job:
        """``job`` with the agent's signature (made in the job thread: an RSA signature takes
        milliseconds on a slow board); unsigned, and logged, if signing fails."""
        if self.signer is None:
            return job
        assert self._loop is not None
        try:
            signed = await self._loop.run_in_executor(self._executor, self.signer.sign, job)
        except Exception:
            log.exception("could not sign the result of job %s; it is kept unsigned", job.id)
            return job
        return dataclasses.replace(job, signed=signed)

    def _progress_callback(self, active: _Active) -> Any:
        loop = self._loop
        assert loop is not None

        def flush() -> None:
            with active._lock:
                latest, active._flush_pending = active._latest, False
            if latest is None or active.done.is_set():
                return
            active.progress = latest
            active.broadcast(JobEvent(job_id=active.job.id, state=JobState.RUNNING,
                                      progress=latest))

        def progress(p: Progress) -> None:        # called in the runner's thread
            with active._lock:
                active._latest = p
                if active._flush_pending:
                    return
                active._flush_pending = True
            try:
                loop.call_soon_threadsafe(flush)
            except RuntimeError:  # the loop is closed: nobody is watching any more
                pass

        return progress

    def _finish(self, active: _Active, final: Job) -> None:
        job_id = final.id
        active.job = final
        self._database().update(final)
        if self._running == job_id:
            self._running = None
        self._active.pop(job_id, None)
        active.done.set()
        active.broadcast(JobEvent(job_id=job_id, state=final.state, job=final))

    def _broadcast_positions(self) -> None:
        for index, job_id in enumerate(self._pending, start=1):
            active = self._active[job_id]
            if active.position != index:
                active.position = index
                active.broadcast(JobEvent(job_id=job_id, state=JobState.QUEUED,
                                          queue_position=index))


def _ended(job: Job, state: JobState, error: str) -> Job:
    return dataclasses.replace(job, state=state, error=error, finished_unix=time.time())


def _past(state: JobState) -> str:
    return {JobState.SUCCEEDED: "succeeded", JobState.FAILED: "failed",
            JobState.CANCELLED: "been cancelled",
            JobState.INTERRUPTED: "been interrupted"}.get(state, state.value)
