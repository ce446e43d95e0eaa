"""The ``edgetune.agent.v1.Agent`` service: protobuf in, dataclasses to the store and the
queue, protobuf out.

Wire types stop here: requests become ``edgetune.protos.messages`` dataclasses, the store, queue and
runner never see a ``_pb2`` type. Errors from ``edgetune.device.errors`` become status codes with
``context.abort``; anything unexpected becomes INTERNAL with a short message (the traceback
goes to the agent's log).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import functools
import logging
import time
from pathlib import Path
from typing import (Any, AsyncIterator, Awaitable, Callable, Collection, Deque, Dict, Optional,
                    Sequence, Tuple, TypeVar, Union)

import grpc
import grpc.aio

from edgetune.device.auth import peer_name
from edgetune.device.errors import (Aborted, FailedPrecondition, InvalidArgument,
                                    PermissionDenied, ResourceExhausted, StatusError)
from edgetune.device.joboutput import JobOutputs, read_at
from edgetune.device.jobs import JobQueue
from edgetune.device.leases import LeaseBook
from edgetune.device.limits import (MIN_OUTPUT_CHUNK_BYTES, Limits, validate_benchmark,
                                    validate_compare, validate_evaluate)
from edgetune.device.plugins import check_runner, runner_infos
from edgetune.device.store import BlobStore, UploadState, safe_label
from edgetune.protos import agent_pb2 as pb
from edgetune.protos import agent_pb2_grpc
from edgetune.protos.messages import (INCOMPATIBLE_METADATA, VERSION_METADATA, AgentInfo,
                                      BenchmarkResult, BenchmarkSpec, BlobKind, CompareResult,
                                      CompareSpec, EvaluateSpec, Job, JOB_KINDS, JobState,
                                      UnknownToThisVersion, has_unknown_fields, job_spec_from_pb2)

log = logging.getLogger("edgetune.agent.servicer")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Agent"].full_name
DEFAULT_WARMUP = 10
DEFAULT_ITERATIONS = 100
DEFAULT_ROUNDS = 5
SUMMARY_CACHE = 32
WRITES_IN_FLIGHT = 4                  # upload chunks queued for the writer thread

_UPLOAD_STATES = {UploadState.ABSENT: pb.UPLOAD_STATE_ABSENT,
                  UploadState.PARTIAL: pb.UPLOAD_STATE_PARTIAL,
                  UploadState.COMPLETE: pb.UPLOAD_STATE_COMPLETE}

T = TypeVar("T")


class NotReady(StatusError):
    status = "UNAVAILABLE"


def _blob_kind(value: int, *, optional: bool = False) -> Optional[BlobKind]:
    kind = BlobKind.from_pb2(value)
    if kind is None and value != pb.BLOB_KIND_UNSPECIFIED:
        raise UnknownToThisVersion(f"blob kind {value}")
    if kind is None and not optional:
        raise InvalidArgument("kind must be BLOB_KIND_MODEL or BLOB_KIND_DATASET")
    return kind


def with_defaults(spec: Any) -> Any:
    """Wire zeros mean "unset": fill in the agent's defaults before validation."""
    if isinstance(spec, BenchmarkSpec):
        changes: Dict[str, Any] = {}
        if spec.warmup == 0:
            changes["warmup"] = DEFAULT_WARMUP
        if spec.iterations == 0 and spec.min_duration_s == 0:
            changes["iterations"] = DEFAULT_ITERATIONS
        return dataclasses.replace(spec, **changes) if changes else spec
    if isinstance(spec, EvaluateSpec) and spec.batch_size == 0:
        return dataclasses.replace(spec, batch_size=1)
    if isinstance(spec, CompareSpec):
        changes = {}
        if spec.rounds == 0:
            changes["rounds"] = DEFAULT_ROUNDS
        if spec.warmup == 0:
            changes["warmup"] = DEFAULT_WARMUP
        if spec.iterations == 0 and spec.min_duration_s == 0:
            changes["iterations"] = DEFAULT_ITERATIONS
        return dataclasses.replace(spec, **changes) if changes else spec
    return spec


def input_signature(summary: Any) -> str:
    """A model's inputs as one comparable text: "input float32 [N, 1, 8, 8], ..."."""
    def dims(shape: Any) -> str:
        return "?" if shape is None else "[" + ", ".join(str(d) if d else "?" for d in shape) + "]"
    return ", ".join(f"{v.name} {v.dtype} {dims(v.shape)}" for v in summary.inputs)


def free_batch_dim(shape: Optional[Sequence[Any]]) -> Optional[str]:
    """The model's name for ``shape``'s free batch dimension ("" when unnamed), or None when
    it has none. A free batch dimension is the first one, symbolic or unknown, of an input of
    rank 2 or more whose other dimensions are all fixed: benchmark tools take 1 for it. Any
    other free dimension (an image size, a sequence length, a 1-D input's only one) needs a
    shape from the user: guessing it would mislead."""
    if not shape or len(shape) < 2:
        return None
    first, rest = shape[0], shape[1:]
    if isinstance(first, int) and first > 0:
        return None
    if not all(isinstance(d, int) and d > 0 for d in rest):
        return None
    return first if isinstance(first, str) else ""


def _rpc(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Map agent errors to status codes and anything unexpected to INTERNAL."""

    @functools.wraps(method)
    async def wrapper(self: "AgentServicer", request: Any, context: grpc.aio.ServicerContext) -> T:
        try:
            return await method(self, request, context)
        except UnknownToThisVersion as exc:
            await abort_incompatible(context, exc)
        except StatusError as exc:
            await context.abort(exc.grpc_code, str(exc),
                                trailing_metadata=getattr(exc, "trailing_metadata", ()))
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as exc:
            log.exception("%s failed", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, _internal(exc))
        raise AssertionError("unreachable")  # pragma: no cover - abort always raises

    return wrapper


class AgentServicer(agent_pb2_grpc.AgentServicer):
    """Serves every RPC of agent.proto. ``attach`` it to a store and queue once they are ready;
    until then calls get UNAVAILABLE."""

    def __init__(self, limits: Limits, agent_name: str, *,
                 io_executor: Optional[concurrent.futures.Executor] = None,
                 cert_not_after_unix: float = 0.0, runners: Sequence[Any] = ()) -> None:
        self.limits = limits
        self.runners = {r.name: r for r in runners}     # config.RunnerConfig, by name
        self.agent_name = agent_name
        self.cert_not_after_unix = cert_not_after_unix   # GetInfo says it (fleet status warns)
        self.started = time.monotonic()
        self.store: Optional[BlobStore] = None
        self.queue: Optional[JobQueue] = None
        self.leases = LeaseBook(None, limits.min_lease_ttl_s, limits.max_lease_ttl_s)
        self._system: Callable[[], Dict[str, Any]] = dict
        self._io = io_executor or concurrent.futures.ThreadPoolExecutor(
            max_workers=4, thread_name_prefix="edgetune-io")
        self._summaries: "collections.OrderedDict[str, Any]" = collections.OrderedDict()

    def attach(self, store: BlobStore, queue: JobQueue,
               system_info: Callable[[], Dict[str, Any]],
               leases: Optional[LeaseBook] = None) -> None:
        """Start serving with ``store`` and ``queue``; ``system_info()`` returns the GetInfo
        fields that describe the board (hostname, os, ..., available_providers); ``leases``:
        the lease book (default: one in memory, lost at a restart)."""
        self.store, self.queue, self._system = store, queue, system_info
        if leases is not None:
            self.leases = leases

    def _ready(self) -> Tuple[BlobStore, JobQueue]:
        if self.store is None or self.queue is None:
            raise NotReady("the agent is still starting; try again in a moment")
        return self.store, self.queue

    async def _thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    # ---------------------------------------------------------------- info

    @_rpc
    async def GetInfo(self, request: pb.GetInfoRequest, context: Any) -> pb.GetInfoResponse:
        store, queue = self._ready()
        used, models, datasets = await self._thread(store.usage)
        system = await self._thread(self._system)
        holder, until = self.leases.current()
        info = AgentInfo(
            store_used_bytes=used, store_models=models, store_datasets=datasets,
            queue_length=queue.queue_length, queue_capacity=queue.capacity,
            running_job_id=queue.running_job_id, uptime_s=time.monotonic() - self.started,
            agent_name=self.agent_name, caller_name=peer_name(context),
            agent_cert_not_after_unix=self.cert_not_after_unix, lease_holder=holder,
            lease_expires_unix=until, runners=runner_infos(list(self.runners.values())),
            max_job_output_bytes=self.limits.max_job_output_bytes, **system)
        return info.as_pb2()

    # ---------------------------------------------------------------- store

    @_rpc
    async def GetUploadStatus(self, request: pb.GetUploadStatusRequest,
                              context: Any) -> pb.GetUploadStatusResponse:
        store, _ = self._ready()
        kind = _blob_kind(request.kind)
        assert kind is not None
        state, committed = await self._thread(store.status, kind, request.sha256,
                                              request.size_bytes, request.upload_id)
        return pb.GetUploadStatusResponse(state=_UPLOAD_STATES[state], committed_bytes=committed,
                                          max_size_bytes=self.limits.max_bytes(kind))

    @_rpc
    async def UploadBlob(self, request_iterator: AsyncIterator[pb.UploadBlobRequest],
                         context: Any) -> pb.UploadBlobResponse:
        store, _ = self._ready()
        messages = request_iterator.__aiter__()
        idle_s = self.limits.upload_idle_timeout_s
        try:
            first: Any = await _next_or_idle(messages, idle_s)
        except StopAsyncIteration:
            first = None
        if not isinstance(first, pb.UploadBlobRequest) or first.WhichOneof("part") != "header":
            raise InvalidArgument("an upload starts with its header (kind, sha256 or upload_id, "
                                  "size_bytes, offset), then the data chunks")
        header = first.header
        kind = _blob_kind(header.kind)
        writer = await self._begin_upload(store, kind, header)
        if writer.already_present:
            assert writer.info is not None
            return pb.UploadBlobResponse(blob=writer.info.as_pb2(), received_bytes=0,
                                         already_present=True)
        # Chunks are written (and hashed) in order by one thread of this upload's own, with up
        # to WRITES_IN_FLIGHT of them queued, while the event loop keeps receiving the next.
        loop = asyncio.get_running_loop()
        thread = concurrent.futures.ThreadPoolExecutor(max_workers=1,
                                                       thread_name_prefix="edgetune-upload")
        in_flight: Deque[Tuple[asyncio.Future, int]] = collections.deque()
        in_flight_bytes, max_in_flight = 0, self.limits.max_upload_in_flight_bytes
        peak, paused = 0, 0                 # reported when the upload ends (debug log)
        # Each chunk carries its offset: the writer refuses one that does not follow what it
        # wrote, since cancelling queued writes below can skip a chunk while a later one runs.
        position = writer.committed
        try:
            while True:
                # A sender that stops sending (slowloris) is cut after upload_idle_timeout_s;
                # what it sent is kept for a resume (the except clause below).
                try:
                    message = await _next_or_idle(messages, idle_s)
                except StopAsyncIteration:
                    break
                if not isinstance(message, memoryview):     # see parse_upload_request
                    if message.WhichOneof("part") != "data":
                        raise InvalidArgument("only data chunks may follow the upload's header")
                    message = message.data
                # Bounded memory per upload: at most WRITES_IN_FLIGHT chunks and
                # max_upload_in_flight_bytes wait for the writer (a chunk larger than that goes
                # alone); beyond, receiving waits and HTTP/2 flow control holds the sender.
                if in_flight and (len(in_flight) >= WRITES_IN_FLIGHT or
                                  in_flight_bytes + len(message) > max_in_flight):
                    paused += 1
                while in_flight and (len(in_flight) >= WRITES_IN_FLIGHT or
                                     in_flight_bytes + len(message) > max_in_flight):
                    done, size = in_flight.popleft()
                    in_flight_bytes -= size
                    await done
                in_flight.append((loop.run_in_executor(thread, writer.write, message, position),
                                  len(message)))
                in_flight_bytes += len(message)
                peak = max(peak, in_flight_bytes)
                position += len(message)
            while in_flight:
                await in_flight.popleft()[0]
            info = await loop.run_in_executor(thread, writer.commit)
        except BaseException as exc:
            # The caller went away or sent something wrong: drop the queued writes and keep
            # what is written for a resume (the same thread closes it after a running write).
            for future, _ in in_flight:
                future.cancel()
            closing = thread.submit(_close_quietly, writer)
            if isinstance(exc, Aborted):    # idle: closed before saying so, a resume may follow
                await asyncio.wrap_future(closing)
            raise
        finally:
            thread.shutdown(wait=False)
            log.debug("upload of %s %s ended: %d bytes received, at most %d bytes waited for the "
                      "writer (limit %d); receiving paused %d times", writer.kind.value,
                      writer.what, position - writer.start_offset, peak, max_in_flight, paused)
        # An upload by id of content stored already: its bytes were discarded at commit.
        return pb.UploadBlobResponse(blob=info.as_pb2(), received_bytes=writer.received,
                                     already_present=writer.duplicate)

    async def _begin_upload(self, store: BlobStore, kind: Any, header: Any) -> Any:
        """``store.begin_upload`` in a thread. If this call is cancelled meanwhile (the caller
        went away while a resume re-hashes its partial file), the thread still finishes and
        reserves the upload: the writer it returns is then closed (its bytes kept for a resume,
        its reservation released) as soon as it exists, so no upload stays "in progress"."""
        started = self._io.submit(store.begin_upload, kind, header.sha256, header.size_bytes,
                                  header.name, header.offset, header.upload_id, header.format)
        try:
            return await asyncio.wrap_future(started)
        except asyncio.CancelledError:
            started.add_done_callback(_release_orphan)
            raise

    @_rpc
    async def ListBlobs(self, request: pb.ListBlobsRequest, context: Any) -> pb.ListBlobsResponse:
        store, _ = self._ready()
        kind = _blob_kind(request.kind, optional=True)
        blobs = await self._thread(store.list, kind)
        return pb.ListBlobsResponse(blobs=[b.as_pb2() for b in blobs])

    @_rpc
    async def DeleteBlob(self, request: pb.DeleteBlobRequest,
                         context: Any) -> pb.DeleteBlobResponse:
        store, queue = self._ready()
        kind = _blob_kind(request.kind)
        assert kind is not None
        self.leases.check(peer_name(context), "delete blobs")
        job = queue.job_using(request.sha256)
        if job is not None:
            raise FailedPrecondition(
                f"{kind.value} {request.sha256} is used by {job.state.value} job {job.id}; "
                "cancel the job or wait for it to finish, then delete")
        deleted = await self._thread(store.delete, kind, request.sha256)
        self._summaries.pop(request.sha256, None)
        return pb.DeleteBlobResponse(deleted=bool(deleted))

    # ---------------------------------------------------------------- jobs

    @_rpc
    async def SubmitJob(self, request: pb.SubmitJobRequest, context: Any) -> pb.SubmitJobResponse:
        store, queue = self._ready()
        caller = peer_name(context)
        self.leases.check(caller, "submit jobs")
        size = request.ByteSize()
        if size > self.limits.max_job_spec_bytes:
            raise ResourceExhausted(
                f"the job spec takes {size} bytes, more than this agent's limit of "
                f"{self.limits.max_job_spec_bytes} ([limits] max_job_spec_bytes in agent.toml)")
        if request.spec.WhichOneof("kind") in JOB_KINDS and has_unknown_fields(request.spec):
            # A newer host's options (say a field of SessionOptions this version lacks): run
            # without them and the result would claim what was not done.
            raise UnknownToThisVersion(
                f"{request.spec.WhichOneof('kind')} options it does not know (from a newer host)")
        try:
            spec = with_defaults(job_spec_from_pb2(request.spec))
        except UnknownToThisVersion:
            raise
        except ValueError as exc:
            raise InvalidArgument(f"{exc}: set spec.benchmark or spec.evaluate") from None
        if isinstance(spec, BenchmarkSpec):
            validate_benchmark(spec, self.limits)
        elif isinstance(spec, CompareSpec):
            validate_compare(spec, self.limits)
        else:
            validate_evaluate(spec, self.limits)
        model_path = await self._thread(store.path, BlobKind.MODEL, spec.model_sha256)
        model = await self._thread(store.info, BlobKind.MODEL, spec.model_sha256)
        check_runner(spec, self.runners, model.format)      # the runner takes this job
        if spec.dataset_sha256:
            await self._thread(store.path, BlobKind.DATASET, spec.dataset_sha256)
        if isinstance(spec, CompareSpec):
            b_path = await self._thread(store.path, BlobKind.MODEL, spec.model_b_sha256)
            model_b = await self._thread(store.info, BlobKind.MODEL, spec.model_b_sha256)
            check_runner(spec, self.runners, model_b.format)
            spec = await self._check_compare(spec, model_path, b_path)
        elif model.format == "onnx":            # an opaque model's inputs are the runner's
            spec = await self._check_inputs(spec, model_path)
        # Checked again with no await before the submit: a lease granted meanwhile counts.
        self.leases.check(caller, "submit jobs")
        job, position = queue.submit(spec, label=safe_label(request.spec.label), client=caller)
        return pb.SubmitJobResponse(job=job.as_pb2(), queue_position=position)

    async def _check_inputs(self, spec: Any, model_path: Path) -> Any:
        """Refuse at submit time what would fail the job at once: input shapes naming inputs the
        model lacks, and (random inputs only) dynamic dimensions left without a shape, except
        a free batch dimension, which is set to 1 (``free_batch_dim``) as onnxruntime_perf_test
        does. Returns the spec to run: with those shapes and ``free_batch_dims`` filled in."""
        summary = await self._summary(spec.model_sha256, model_path)
        names = [i.name for i in summary.inputs]
        shapes = spec.session.shapes()
        for name in shapes:
            if name not in names:
                raise InvalidArgument(f"a shape is given for input '{name}' but the model's "
                                      f"inputs are {names}; name one of those")
        if not isinstance(spec, BenchmarkSpec):
            return spec
        if spec.dataset_sha256:  # inputs come from a dataset
            return dataclasses.replace(spec, free_batch_dims=())
        free: Dict[str, str] = {}
        for value in summary.inputs:
            if value.name in shapes:
                continue
            batch = free_batch_dim(value.shape)
            if batch is not None and value.shape is not None:
                free[value.name] = batch
                shapes[value.name] = (1, *(int(d) for d in value.shape[1:]))
                continue
            if value.shape is None or any(not isinstance(d, int) or d <= 0 for d in value.shape):
                shown = "unknown" if value.shape is None else \
                    "[" + ", ".join(repr(d) if isinstance(d, str) else str(d if d else "?")
                                    for d in value.shape) + "]"
                example = "x".join(str(d) if isinstance(d, int) and d > 0 else "1"
                                   for d in (value.shape or (1, 3, 224, 224)))
                raise InvalidArgument(
                    f"input '{value.name}' has dynamic dimensions {shown}; pass --shape "
                    f"{value.name}={example} (session input_shapes) to fix them")
        session = dataclasses.replace(spec.session, input_shapes=tuple(sorted(shapes.items())))
        return dataclasses.replace(spec, session=session, free_batch_dims=tuple(sorted(free.items())))

    async def _summary(self, sha256: str, model_path: Path) -> Any:
        """The model's ``inspect_model`` summary (cached by hash)."""
        summary = self._summaries.get(sha256)
        if summary is None:
            summary = await self._thread(self._inspect, sha256, model_path)
            self._summaries[sha256] = summary
            while len(self._summaries) > SUMMARY_CACHE:
                self._summaries.popitem(last=False)
        else:
            self._summaries.move_to_end(sha256)
        return summary

    def _inspect(self, sha256: str, model_path: Path) -> Any:
        """``inspect_model`` of the stored model, read through the file opened and checked
        (``BlobStore.open``), never by its name again."""
        from edgetune.device.onnx_safety import inspect_model
        store, _ = self._ready()
        with store.open(BlobKind.MODEL, sha256) as blob:
            return inspect_model(model_path, self.limits.max_model_bytes, file=blob.file)

    async def _check_compare(self, spec: CompareSpec, a_path: Path, b_path: Path) -> CompareSpec:
        """A comparison runs both models on the same inputs: refuse two models whose inputs
        differ (names, types, shapes), then check the inputs as a benchmark's."""
        a = input_signature(await self._summary(spec.model_a_sha256, a_path))
        b = input_signature(await self._summary(spec.model_b_sha256, b_path))
        if a != b:
            raise InvalidArgument(f"models A and B take different inputs (A: {a}; B: {b}); a "
                                  "comparison runs both on the same inputs")
        checked = await self._check_inputs(spec.benchmark(spec.model_a_sha256), a_path)
        return dataclasses.replace(spec, session=checked.session,
                                   free_batch_dims=checked.free_batch_dims)

    @_rpc
    async def GetJob(self, request: pb.GetJobRequest, context: Any) -> pb.GetJobResponse:
        _, queue = self._ready()
        return pb.GetJobResponse(job=queue.get(request.job_id).as_pb2())

    @_rpc
    async def ListJobs(self, request: pb.ListJobsRequest, context: Any) -> pb.ListJobsResponse:
        _, queue = self._ready()
        if request.limit < 0:
            raise InvalidArgument(f"limit must be 0 (the default, 50) or more (got {request.limit})")
        return pb.ListJobsResponse(jobs=[_without_samples(j).as_pb2()
                                         for j in queue.list(request.limit)])

    @_rpc
    async def CancelJob(self, request: pb.CancelJobRequest, context: Any) -> pb.CancelJobResponse:
        _, queue = self._ready()
        caller = peer_name(context)
        if queue.get(request.job_id).client != caller:   # one's own jobs may always go
            self.leases.check(caller, "cancel jobs other than its own")
        job = await queue.cancel(request.job_id)
        return pb.CancelJobResponse(job=job.as_pb2())

    # ---------------------------------------------------------------- leases

    @_rpc
    async def AcquireLease(self, request: pb.AcquireLeaseRequest,
                           context: Any) -> pb.AcquireLeaseResponse:
        self._ready()
        lease = await self._thread(self.leases.acquire, peer_name(context), request.ttl_s)
        return pb.AcquireLeaseResponse(lease=lease.as_pb2())

    @_rpc
    async def RenewLease(self, request: pb.RenewLeaseRequest,
                         context: Any) -> pb.RenewLeaseResponse:
        self._ready()
        lease = await self._thread(self.leases.renew, peer_name(context), request.lease_id,
                                   request.ttl_s)
        return pb.RenewLeaseResponse(lease=lease.as_pb2())

    @_rpc
    async def ReleaseLease(self, request: pb.ReleaseLeaseRequest,
                           context: Any) -> pb.ReleaseLeaseResponse:
        self._ready()
        released, remaining = await self._thread(self.leases.release, peer_name(context),
                                                 request.lease_id)
        reply = pb.ReleaseLeaseResponse(released=released)
        if remaining is not None:
            reply.remaining.CopyFrom(remaining.as_pb2())
        return reply

    async def WatchJob(self, request: pb.WatchJobRequest,
                       context: Any) -> AsyncIterator[pb.JobEvent]:
        try:
            _, queue = self._ready()
            async for event in queue.watch(request.job_id):
                yield event.as_pb2()
        except StatusError as exc:
            await context.abort(exc.grpc_code, str(exc))
        except (grpc.aio.AbortError, asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as exc:
            log.exception("WatchJob failed")
            await context.abort(grpc.StatusCode.INTERNAL, _internal(exc))

    async def ReadJobOutput(self, request: pb.ReadJobOutputRequest,
                            context: Any) -> AsyncIterator[pb.JobOutputChunk]:
        """The job's output file from ``request.offset`` on, one chunk per message, read
        from disk as the caller takes them (grpc's flow control holds the loop): the agent
        holds one chunk per stream. Only the job's submitter may read it."""
        handle = None
        try:
            store, queue = self._ready()
            outputs = JobOutputs(store.root, self.limits)
            outputs.path(request.job_id)                    # a job id, never a path
            job = queue.get(request.job_id)
            if job.client != peer_name(context):
                raise PermissionDenied(
                    f"job {job.id} was submitted by another certificate; only the "
                    "certificate that submitted a job may read its output")
            if not isinstance(job.spec, EvaluateSpec) or not job.spec.dump_outputs:
                raise FailedPrecondition(f"job {job.id} wrote no output file: only evaluations "
                                         "that name dump_outputs do")
            if job.state is not JobState.SUCCEEDED:
                raise FailedPrecondition(f"job {job.id} is {job.state.value}; its output can be "
                                         "read once it has succeeded")
            most = self.limits.max_output_chunk_bytes
            chunk = request.chunk_bytes or most
            if not MIN_OUTPUT_CHUNK_BYTES <= chunk <= most:
                raise InvalidArgument(
                    f"chunk_bytes must be 0 (the agent's {most}) or between "
                    f"{MIN_OUTPUT_CHUNK_BYTES} and {most} ([limits] max_output_chunk_bytes; "
                    f"got {request.chunk_bytes})")
            handle, size = await self._thread(outputs.open, job.id)
            if not 0 <= request.offset <= size:
                raise InvalidArgument(f"offset {request.offset} is outside job {job.id}'s output "
                                      f"file of {size} bytes")
            position = request.offset
            while True:
                data = await self._thread(read_at, handle, position, chunk)
                if not data and position < size:            # cannot shrink: it is replaced
                    raise FailedPrecondition(f"the output file of job {job.id} changed "
                                             "while it was read")
                yield pb.JobOutputChunk(offset=position, data=data, total_bytes=size)
                position += len(data)
                if position >= size:
                    return
        except StatusError as exc:
            await context.abort(exc.grpc_code, str(exc))
        except (grpc.aio.AbortError, asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as exc:
            log.exception("ReadJobOutput failed")
            await context.abort(grpc.StatusCode.INTERNAL, _internal(exc))
        finally:
            if handle is not None:
                handle.close()


async def _next_or_idle(messages: Any, idle_s: float) -> Any:
    """The next message of an upload stream; Aborted when none came within ``idle_s``."""
    try:
        return await asyncio.wait_for(messages.__anext__(), idle_s)
    except asyncio.TimeoutError:
        raise Aborted(f"the upload sent nothing for {idle_s:g} s ([limits] upload_idle_timeout_s"
                      " of the agent) and was closed; the bytes received are kept: resume "
                      "the upload") from None


def parse_upload_request(raw: bytes) -> Union[pb.UploadBlobRequest, memoryview]:
    """UploadBlob's request deserializer. A data chunk (the bytes of an ``UploadBlobRequest``
    holding only ``data``: tag 0x12, a varint length, the payload) becomes a zero-copy
    ``memoryview`` of the received bytes; anything else (the header) is parsed by protobuf.
    Saves two copies of every uploaded byte (about a third of the agent's CPU per upload)."""
    if raw[:1] == b"\x12":
        # At most 5 bytes of length, as protobuf reads a length (fuzz/targets.py "frames"
        # checks that both read the same bytes the same way).
        length, shift, i = 0, 0, 1
        while i < len(raw) and i <= 5:
            byte = raw[i]
            length |= (byte & 0x7F) << shift
            i += 1
            if not byte & 0x80:
                if i + length == len(raw):
                    return memoryview(raw)[i:]
                break
            shift += 7
    return pb.UploadBlobRequest.FromString(raw)


def add_to_server(servicer: AgentServicer, server: Any,
                  methods: Optional[Collection[str]] = None) -> None:
    """Register ``servicer`` like the generated ``add_AgentServicer_to_server`` does (the
    handlers are built from the service descriptor), with ``parse_upload_request`` for
    UploadBlob. ``methods``: serve only these RPCs (default all; a test serves the set of an
    older agent, whose missing RPCs answer UNIMPLEMENTED)."""
    factories = {(False, False): grpc.unary_unary_rpc_method_handler,
                 (True, False): grpc.stream_unary_rpc_method_handler,
                 (False, True): grpc.unary_stream_rpc_method_handler,
                 (True, True): grpc.stream_stream_rpc_method_handler}
    handlers = {}
    for method in pb.DESCRIPTOR.services_by_name["Agent"].methods:
        if methods is not None and method.name not in methods:
            continue
        request = getattr(pb, method.input_type.name)
        response = getattr(pb, method.output_type.name)
        factory = factories[_streaming(method)]
        handlers[method.name] = factory(
            getattr(servicer, method.name),
            request_deserializer=(parse_upload_request if method.name == "UploadBlob"
                                  else request.FromString),
            response_serializer=response.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME,
                                                                          handlers),))
    if hasattr(server, "add_registered_method_handlers"):   # grpcio >= 1.64; older: generic only
        server.add_registered_method_handlers(SERVICE_NAME, handlers)


def _streaming(method: Any) -> Tuple[bool, bool]:
    """(client_streaming, server_streaming) of a method descriptor. protobuf's compiled
    (upb/cpp) descriptors before 4.25 lack the two attributes; its descriptor proto has them."""
    if hasattr(method, "client_streaming"):
        return bool(method.client_streaming), bool(method.server_streaming)
    from google.protobuf import descriptor_pb2

    proto = descriptor_pb2.MethodDescriptorProto()
    method.CopyToProto(proto)
    return proto.client_streaming, proto.server_streaming


def peer_version(context: Any) -> str:
    """The edgetune version the caller sent (``x-edgetune-version``), "" when it sent none
    (hosts before 0.1.0 did not); anything but a plain version string is ignored."""
    for key, value in context.invocation_metadata() or ():
        if key == VERSION_METADATA:
            text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
            ok = 0 < len(text) <= 40 and all(c.isalnum() or c in ".+-_" for c in text)
            return text if ok else ""
    return ""


async def abort_incompatible(context: Any, exc: UnknownToThisVersion) -> None:
    """INVALID_ARGUMENT naming both versions and what to upgrade (a newer host sent what this
    agent cannot read), flagged with ``x-edgetune-incompatible`` so the host exits 10."""
    from edgetune import __version__

    theirs = peer_version(context)
    host = (f"the host runs edgetune {theirs}" if theirs
            else "the host did not say its version")
    log.warning("refused a request from %s holding %s (host edgetune %s)", peer_name(context),
                exc.what, theirs or "unknown")
    await context.abort(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"this agent (edgetune {__version__}) cannot read the request: it holds {exc.what}; "
        f"{host}: upgrade the agent on the board (pip install -U edgetune there)",
        trailing_metadata=((INCOMPATIBLE_METADATA, __version__),
                           (VERSION_METADATA, __version__)))


def _internal(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    if len(text) > 200:
        text = text[:197] + "..."
    return f"internal error in the agent ({text}); the agent's log has the details"


def _without_samples(job: Job) -> Job:
    """A listing leaves out the raw latency samples (GetJob has them): 50 jobs with 100k
    samples each would not fit a response."""
    result = job.result
    if isinstance(result, BenchmarkResult) and result.samples_ms:
        return dataclasses.replace(job, result=dataclasses.replace(result, samples_ms=()))
    if isinstance(result, CompareResult) and any(r.a.samples_ms or r.b.samples_ms
                                                 for r in result.rounds):
        rounds = tuple(dataclasses.replace(r, a=dataclasses.replace(r.a, samples_ms=()),
                                           b=dataclasses.replace(r.b, samples_ms=()))
                       for r in result.rounds)
        return dataclasses.replace(job, result=dataclasses.replace(result, rounds=rounds))
    return job


def _release_orphan(started: "concurrent.futures.Future[Any]") -> None:
    """Done-callback of a ``begin_upload`` whose caller was cancelled: close the writer it
    made (nobody else will), keeping the bytes for a resume."""
    if started.cancelled() or started.exception() is not None:
        return                              # it never ran, or reserved nothing
    writer = started.result()
    if not writer.already_present:
        log.info("the caller went away while the upload of %s %s was being set up; releasing it",
                 writer.kind.value, writer.what)
        _close_quietly(writer)


def _close_quietly(writer: Any) -> None:
    try:
        writer.close_incomplete()
    except Exception:  # pragma: no cover - logged, nothing else to do
        log.exception("could not keep the partial upload of %s", writer.what)


__all__ = ["AgentServicer", "SERVICE_NAME", "add_to_server", "parse_upload_request",
           "with_defaults"]
