"""``AgentClient``: one mutual-TLS connection to one board's agent.

Every method takes and returns the plain dataclasses of ``edgetune.protos.messages``; grpc errors come
out as ``edgetune.host.errors`` exceptions whose message says what went wrong, which side refused, and
what to do (``edgetune.host.rpcerrors``). Every call has a deadline (``ClientSettings``).

    with AgentClient("192.168.1.20:50051", identity) as client:
        outcome = client.upload(Path("model.onnx"), BlobKind.MODEL)
        job = client.run(BenchmarkSpec(model_sha256=outcome.blob.sha256), on_event=print)
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Tuple, TypeVar, Union

import grpc

from edgetune import __version__
from edgetune.host.errors import (AgentError, AuthError, BadInputError, EdgetuneError,
                                  IncompatibleError, LeasesUnsupportedError, TimeoutError_,
                                  UnreachableError)
from edgetune.host.hashcache import (FileIdentity, HashCache, UploadPlan, file_sha256,
                                     finish_upload, plan_upload)
from edgetune.host.interrupts import GATE, SigintGate
from edgetune.host.rpcerrors import RpcContext, translate_rpc_error
from edgetune.protos import agent_pb2 as pb
from edgetune.protos import agent_pb2_grpc
from edgetune.protos.leases import Lease
from edgetune.protos.messages import (JOB_KINDS, VERSION_METADATA, AgentInfo, BlobInfo, BlobKind,
                                      Job, JobEvent, OutputChunk, UnknownToThisVersion)

log = logging.getLogger(__name__)

MiB = 1 << 20
ProgressCallback = Callable[[int, int], None]     # (bytes done, bytes total)
# Every call says which edgetune is calling, so an agent refusing what it cannot read can
# name both versions (a compatible addition: agents that do not look ignore it).
CALL_METADATA = ((VERSION_METADATA, __version__),)
T = TypeVar("T")
EventCallback = Callable[[JobEvent], None]
KindLike = Union[BlobKind, str]

_UPLOAD_STATES = {pb.UPLOAD_STATE_ABSENT: "absent", pb.UPLOAD_STATE_PARTIAL: "partial",
                  pb.UPLOAD_STATE_COMPLETE: "complete"}


@dataclass(frozen=True)
class ClientSettings:
    timeout_s: float = 30.0                 # deadline of every unary call
    connect_timeout_s: float = 10.0         # TCP + TLS handshake + HTTP/2 settings
    upload_chunk_bytes: int = 2 * MiB       # 128 MiB over loopback: 1/2/4 MiB took 0.43/0.38/0.43 s
    upload_min_rate_bytes_s: float = 256 * 1024  # upload deadline: timeout_s + size / this rate
    watch_timeout_s: float = 6 * 3600.0     # deadline of one WatchJob stream
    reattach_window_s: float = 60.0         # how long run()/wait() retry a dropped watch
    max_message_bytes: int = 64 * MiB       # results with raw samples can be large
    cert_warning_days: int = 30             # warn when our own certificate expires this soon
    #                                         (< 0: checked by the caller, once for a fleet)
    hash_first_below_bytes: int = 64 * MiB  # larger files, not in the hash cache: sent by id
    hash_cache: Optional[Path] = None       # None: host.hashcache.default_cache_path()

    def __post_init__(self) -> None:
        if not 64 * 1024 <= self.upload_chunk_bytes <= 4 * MiB:
            raise ValueError("upload_chunk_bytes must be between 64 KiB and 4 MiB "
                             "(the agent accepts messages of up to 8 MiB)")
        for name in ("timeout_s", "connect_timeout_s", "upload_min_rate_bytes_s",
                     "watch_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")


@dataclass(frozen=True)
class UploadStatus:
    state: str                              # "absent", "partial" or "complete"
    committed_bytes: int                    # for "partial": where a resume starts
    max_size_bytes: int                     # the agent's limit for this kind (0: not said)


@dataclass(frozen=True)
class UploadOutcome:
    blob: BlobInfo
    sent_bytes: int                         # bytes this call sent (0 when present, by hash)
    already_present: bool                   # by id: sent, then found stored and discarded
    resumed_from: int                       # committed bytes the upload continued from


def _upload_request_bytes(message: Any) -> bytes:
    """UploadBlob's request serializer: a chunk passed as bytes is framed by hand as an
    UploadBlobRequest holding only ``data``: one copy instead of protobuf's two."""
    if not isinstance(message, bytes):
        return message.SerializeToString()
    n, head = len(message), bytearray(b"\x12")
    while n >= 0x80:
        head.append(n & 0x7F | 0x80)
        n >>= 7
    head.append(n)
    return bytes(head) + message


def _file_chunks(path: Path, offset: int, chunk_bytes: int) -> Iterator[bytes]:
    """``path``'s bytes from ``offset`` on, ``chunk_bytes`` at a time."""
    with path.open("rb") as fh:
        fh.seek(offset)
        yield from iter(lambda: fh.read(chunk_bytes), b"")


def _blob_kind(kind: KindLike) -> BlobKind:
    return kind if isinstance(kind, BlobKind) else BlobKind(kind)


class AgentClient:
    """One connection to one agent. Thread-safe for concurrent calls (grpc channels are)."""

    def __init__(self, address: str, identity: Any, *, server_name: Optional[str] = None,
                 settings: Optional[ClientSettings] = None) -> None:
        """``identity``: a ``certs.Identity`` (ca_pem, cert_pem, decrypted key_pem, common_name).
        ``server_name``: the name to check against the agent certificate's SAN instead of the
        host part of ``address`` (grpc.ssl_target_name_override)."""
        from edgetune.certs.grpc_creds import channel_credentials

        self.address = address
        self.identity = identity
        self.server_name = server_name
        self.settings = settings or ClientSettings()
        if self.settings.cert_warning_days >= 0:    # a fleet run checked it once for all
            check_own_certificate(identity.cert_pem, identity.common_name,
                                  self.settings.cert_warning_days)
        options = [("grpc.max_send_message_length", self.settings.max_message_bytes),
                   ("grpc.max_receive_message_length", self.settings.max_message_bytes)]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        creds = channel_credentials(identity.ca_pem, identity.cert_pem, identity.key_pem)
        self._channel = grpc.secure_channel(address, creds, options=options)
        self._stub = agent_pb2_grpc.AgentStub(self._channel)
        self._upload_blob = self._channel.stream_unary(
            f"/{pb.DESCRIPTOR.services_by_name['Agent'].full_name}/UploadBlob",
            request_serializer=_upload_request_bytes,
            response_deserializer=pb.UploadBlobResponse.FromString)
        self._ctx = RpcContext(address=address, our_name=identity.common_name,
                               ca_pem=identity.ca_pem, server_name=server_name,
                               probe_timeout_s=min(5.0, self.settings.connect_timeout_s))
        self._connected = False
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "AgentClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel (explicitly: leaving it to garbage collection after a Ctrl-C
        can hang, see ``SigintGate``)."""
        with GATE.deferred():
            self._channel.close()

    def connect(self) -> None:
        """Open the connection now (the first call does it otherwise): TCP, TLS, HTTP/2.

        Raises UnreachableError or AuthError saying which side refused what."""
        with self._lock, GATE.deferred():
            if self._connected:
                return
            settled = threading.Event()
            GATE.on_interrupt(settled.set)
            states: List[grpc.ChannelConnectivity] = []

            def on_state(state: grpc.ChannelConnectivity) -> None:
                states.append(state)
                if state in (grpc.ChannelConnectivity.READY,
                             grpc.ChannelConnectivity.TRANSIENT_FAILURE,
                             grpc.ChannelConnectivity.SHUTDOWN):
                    settled.set()

            self._channel.subscribe(on_state, try_to_connect=True)
            try:
                settled.wait(self.settings.connect_timeout_s)
            finally:
                self._channel.unsubscribe(on_state)
            if states and states[-1] is grpc.ChannelConnectivity.READY:
                self._connected = True
                return
            if not settled.is_set():
                raise UnreachableError(
                    f"no answer from {self.address} within {self.settings.connect_timeout_s:g} s",
                    hint="is the address right, edgetune-agent running there, and the port "
                         "open? (a firewall that drops packets looks like this)")
            # A fail-fast call brings back the reason of the failed connection attempt.
            self._unary("GetInfo", pb.GetInfoRequest(), self.settings.connect_timeout_s)
            self._connected = True

    def _call(self, method: str, request: Any, timeout: Optional[float] = None) -> Any:
        self.connect()
        return self._unary(method, request, timeout or self.settings.timeout_s)

    def _unary(self, method: str, request: Any, timeout: float) -> Any:
        with GATE.deferred():
            try:
                return self._invoke(method, request, timeout)
            except grpc.RpcError as err:
                raise translate_rpc_error(err, self._ctx) from None
            except grpc.FutureCancelledError:
                raise AgentError(f"the call {method} to {self.address} was cancelled") from None

    def _invoke(self, method: str, request: Any, timeout: float) -> Any:
        """One unary call (inside ``GATE.deferred``). In the main thread a future that Ctrl-C
        cancels; in any other thread (a fleet run's board) a blocking call, which grpc runs
        on the calling thread, where a future needs a channel thread that grpc starts anew
        for a call on an idle channel (a fleet bench made ~10 such thread starts per board,
        each waiting for the GIL on a busy host). Closing the channel ends either."""
        call = getattr(self._stub, method)
        if threading.current_thread() is not threading.main_thread():
            return call(request, timeout=timeout, metadata=CALL_METADATA)
        future = call.future(request, timeout=timeout, metadata=CALL_METADATA)
        GATE.on_interrupt(future.cancel)
        return future.result()

    # ------------------------------------------------------------------ reading replies
    def _read(self, convert: Callable[[Any], T], message: Any) -> T:
        """``convert(message)``; what this version cannot read (a newer agent's job state or
        result) becomes an IncompatibleError naming both versions, not a traceback."""
        try:
            return convert(message)
        except UnknownToThisVersion as exc:
            raise self._incompatible(exc) from None

    def _incompatible(self, exc: UnknownToThisVersion) -> IncompatibleError:
        theirs = ""
        try:
            theirs = self._unary("GetInfo", pb.GetInfoRequest(),
                                 min(5.0, self.settings.timeout_s)).agent_version
        except EdgetuneError:
            pass
        agent = f"the agent at {self.address}" + (f" (edgetune {theirs})" if theirs else "")
        message = (f"{agent} sent {exc.what}, which this edgetune ({__version__}) cannot read")
        if theirs and _version_key(theirs) <= _version_key(__version__):
            return IncompatibleError(message, hint=f"upgrade edgetune-agent on the board to "
                                                   f"{__version__} (pip install -U edgetune)")
        return IncompatibleError(message, hint="upgrade edgetune on this PC "
                                               "(pip install -U edgetune)")

    # ------------------------------------------------------------------ info and store
    def info(self) -> AgentInfo:
        return self._read(AgentInfo.from_pb2, self._call("GetInfo", pb.GetInfoRequest()))

    def list_blobs(self, kind: Optional[KindLike] = None) -> List[BlobInfo]:
        request = pb.ListBlobsRequest(kind=_blob_kind(kind).as_pb2() if kind else 0)
        return [self._read(BlobInfo.from_pb2, b) for b in self._call("ListBlobs", request).blobs]

    def delete_blob(self, kind: KindLike, sha256: str) -> bool:
        request = pb.DeleteBlobRequest(kind=_blob_kind(kind).as_pb2(), sha256=sha256)
        return bool(self._call("DeleteBlob", request).deleted)

    def upload_status(self, kind: KindLike, sha256: str, size: int,
                      upload_id: str = "") -> UploadStatus:
        reply = self._call("GetUploadStatus", pb.GetUploadStatusRequest(
            kind=_blob_kind(kind).as_pb2(), sha256=sha256, size_bytes=size, upload_id=upload_id))
        return UploadStatus(state=_UPLOAD_STATES.get(reply.state, "absent"),
                            committed_bytes=reply.committed_bytes,
                            max_size_bytes=reply.max_size_bytes)

    def upload(self, path: Path, kind: KindLike, name: Optional[str] = None,
               progress: Optional[ProgressCallback] = None, *,
               sha256: str = "", format: str = "",
               chunks: Optional[Callable[[int], Iterator[bytes]]] = None) -> UploadOutcome:
        """Store ``path`` on the agent unless it is there already; resume a partial upload.

        A file in the hash cache or smaller than ``hash_first_below_bytes`` is sent by hash
        (hashed first if need be), a larger one by id, read once as it is sent (see
        ``edgetune.host.hashcache``); never held in memory whole. ``progress(done, total)`` runs in
        grpc's sending thread. An exception it raises (or Ctrl-C) cancels the upload; the
        agent keeps the bytes it committed, and the next ``upload`` of the file resumes.
        ``sha256``: the file's hash when the caller has it already (a fleet run hashes each
        file once for all its boards): sent by that hash, neither hashed nor cached here (the
        agent checks what it receives against it). ``format``: a model's format for the
        agent ("" or "onnx": checked as ONNX; "om", "nb", ...: kept opaque for a runner
        plug-in; only agents with the "runners" feature know it). ``chunks(offset)``: where
        the bytes come from instead of reading ``path`` here: an iterator of the file's bytes
        from ``offset`` on (a fleet run reads each file once for all its boards:
        ``edgetune.host.fleet.fanout``); it is closed when the stream ends."""
        path = Path(path)
        kind = _blob_kind(kind)
        cache = HashCache(self.settings.hash_cache)
        if sha256:
            ident = FileIdentity.of(path)
            plan = UploadPlan(ident, ident.size, sha256=sha256)
        else:
            plan = plan_upload(path, self.settings.hash_first_below_bytes, cache, file_sha256)
        sha256, size = plan.sha256, plan.size
        label = path.name if name is None else name
        status = self.upload_status(kind, sha256, size, plan.upload_id)
        if status.max_size_bytes and size > status.max_size_bytes:
            raise BadInputError(
                f"{path} has {size / MiB:.1f} MiB; the agent at {self.address} accepts "
                f"{kind.value}s of at most {status.max_size_bytes / MiB:.1f} MiB",
                hint=f"raise max_{kind.value}_bytes in the [limits] of the agent's config")
        offset = status.committed_bytes if status.state == "partial" else 0
        if progress is not None:
            progress(size if status.state == "complete" else offset, size)
        failure: List[BaseException] = []
        sent = [0]
        header = pb.UploadHeader(kind=kind.as_pb2(), sha256=sha256, size_bytes=size,
                                 name=label, offset=offset, upload_id=plan.upload_id,
                                 format=format)
        call_box: List[Any] = []
        started = threading.Event()

        def requests() -> Iterator[Any]:
            yield pb.UploadBlobRequest(header=header)
            if status.state == "complete":
                return
            source: Any = None
            try:
                source = (chunks(offset) if chunks is not None
                          else _file_chunks(path, offset, self.settings.upload_chunk_bytes))
                for chunk in source:
                    yield chunk                 # see _upload_request_bytes
                    sent[0] += len(chunk)
                    if progress is not None:
                        progress(offset + sent[0], size)
            except GeneratorExit:               # grpc dropped the stream (cancelled, failed)
                raise
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                failure.append(exc)
                started.wait(10.0)
                call_box[0].cancel()            # not a short stream: the agent keeps the bytes
            finally:
                close = getattr(source, "close", None)
                if close is not None:
                    close()

        self.connect()
        deadline = self.settings.timeout_s + (size - offset) / self.settings.upload_min_rate_bytes_s
        with GATE.deferred():                   # Ctrl-C: cancel, then KeyboardInterrupt
            call = self._upload_blob.future(requests(), timeout=deadline,
                                            metadata=CALL_METADATA)
            call_box.append(call)
            started.set()
            GATE.on_interrupt(call.cancel)
            try:
                reply = call.result()
            except (grpc.RpcError, grpc.FutureCancelledError) as err:
                if failure:                     # raised by ``progress`` or reading the file
                    raise failure[0] from None
                if isinstance(err, grpc.RpcError):
                    if plan.cached and err.code() is grpc.StatusCode.DATA_LOSS:
                        cache.forget(plan.identity)     # a wrong cached hash: re-hash next time
                    raise translate_rpc_error(err, self._ctx) from None
                raise AgentError(f"the upload of {path} was cancelled") from None
        if failure:
            raise failure[0]
        outcome = UploadOutcome(blob=self._read(BlobInfo.from_pb2, reply.blob), sent_bytes=sent[0],
                                already_present=bool(reply.already_present), resumed_from=offset)
        finish_upload(plan, path, outcome.blob.sha256, cache)
        log.info("%s %s (%s): sent %d bytes%s", kind.value, outcome.blob.sha256[:12], label,
                 sent[0], ", already present" if outcome.already_present else "")
        return outcome

    # ------------------------------------------------------------------ jobs
    def submit(self, spec: Any, label: str = "") -> Tuple[Job, int]:
        """Queue a BenchmarkSpec, EvaluateSpec or CompareSpec; (the job, its queue position:
        0 = running)."""
        message = pb.JobSpec(label=label)
        kind = next(k for k, (cls, _) in JOB_KINDS.items() if isinstance(spec, cls))
        getattr(message, kind).CopyFrom(spec.as_pb2())
        reply = self._call("SubmitJob", pb.SubmitJobRequest(spec=message))
        return self._read(Job.from_pb2, reply.job), reply.queue_position

    def get_job(self, job_id: str) -> Job:
        return self._read(Job.from_pb2, self._call("GetJob", pb.GetJobRequest(job_id=job_id)).job)

    def list_jobs(self, limit: int = 0) -> List[Job]:
        return [self._read(Job.from_pb2, j)
                for j in self._call("ListJobs", pb.ListJobsRequest(limit=limit)).jobs]

    def cancel_job(self, job_id: str) -> Job:
        return self._read(Job.from_pb2,
                          self._call("CancelJob", pb.CancelJobRequest(job_id=job_id)).job)

    # ------------------------------------------------------------------ leases
    def acquire_lease(self, ttl_s: float, *, timeout: Optional[float] = None) -> Lease:
        """A claim on the board for ``ttl_s`` seconds, held by our certificate's name (the
        agent's bounds apply: BadInputError naming them). LeaseHeldError when another host
        holds the board; LeasesUnsupportedError from an agent older than leases."""
        import math

        if isinstance(ttl_s, bool) or not isinstance(ttl_s, (int, float)) or \
                not math.isfinite(ttl_s) or ttl_s <= 0:
            raise BadInputError(f"a lease's time to live must be a positive number of seconds "
                                f"(got {ttl_s!r})")
        reply = self._lease_call("AcquireLease", pb.AcquireLeaseRequest(ttl_s=float(ttl_s)),
                                 timeout)
        return Lease.from_pb2(reply.lease)

    def renew_lease(self, lease_id: str = "", ttl_s: float = 0.0, *,
                    timeout: Optional[float] = None) -> Lease:
        """Extend our claim ``lease_id`` (every claim of ours when "") by ``ttl_s`` from now
        (0: the ttl it was granted with). AgentError when we hold no such claim any more."""
        reply = self._lease_call("RenewLease", pb.RenewLeaseRequest(lease_id=lease_id,
                                                                    ttl_s=float(ttl_s)), timeout)
        return Lease.from_pb2(reply.lease)

    def release_lease(self, lease_id: str = "", *,
                      timeout: Optional[float] = None) -> Tuple[bool, Optional[Lease]]:
        """End our claim ``lease_id`` (every claim of ours, freeing the board, when ""):
        (whether a claim ended, our claim left on the board if any)."""
        reply = self._lease_call("ReleaseLease", pb.ReleaseLeaseRequest(lease_id=lease_id),
                                 timeout)
        remaining = Lease.from_pb2(reply.remaining) if reply.HasField("remaining") else None
        return bool(reply.released), remaining

    def _lease_call(self, method: str, request: Any, timeout: Optional[float]) -> Any:
        """A lease RPC; UNIMPLEMENTED (an agent older than leases) becomes
        LeasesUnsupportedError naming the agent's version."""
        self.connect()
        with GATE.deferred():
            try:
                return self._invoke(method, request, timeout or self.settings.timeout_s)
            except grpc.RpcError as err:
                if err.code() is grpc.StatusCode.UNIMPLEMENTED:
                    raise self._no_leases() from None
                raise translate_rpc_error(err, self._ctx) from None
            except grpc.FutureCancelledError:
                raise AgentError(f"the call {method} to {self.address} was cancelled") from None

    def _no_leases(self) -> LeasesUnsupportedError:
        version = ""
        try:
            version = self._unary("GetInfo", pb.GetInfoRequest(),
                                  min(5.0, self.settings.timeout_s)).agent_version
        except EdgetuneError:
            pass
        return LeasesUnsupportedError(
            f"this agent (version {version or 'unknown'}, at {self.address}) does not grant "
            "leases; upgrade it, or pass --no-lease", agent_version=version,
            hint=f"pip install -U edgetune on the board (this PC runs edgetune {__version__})")

    def _watch_raw(self, job_id: str) -> Iterator[JobEvent]:
        """JobEvents of one WatchJob stream; raises grpc.RpcError untranslated."""
        self.connect()
        with GATE.deferred():
            call = self._stub.WatchJob(pb.WatchJobRequest(job_id=job_id),
                                       timeout=self.settings.watch_timeout_s,
                                       metadata=CALL_METADATA)
        try:
            while True:
                with GATE.deferred():           # Ctrl-C while grpc waits: cancel, then raise
                    GATE.on_interrupt(call.cancel)
                    message = next(call, None)
                if message is None:
                    return
                yield self._read(JobEvent.from_pb2, message)
        finally:
            with GATE.deferred():
                call.cancel()

    def watch(self, job_id: str) -> Iterator[JobEvent]:
        """The job's events until its final one (one event at once for a finished job)."""
        try:
            yield from self._watch_raw(job_id)
        except grpc.RpcError as err:
            raise translate_rpc_error(err, self._ctx) from None

    def wait(self, job_id: str, on_event: Optional[EventCallback] = None) -> Job:
        """Watch ``job_id`` until it ends and return it with its result. A dropped stream
        (UNAVAILABLE: network, agent restart) is re-attached for ``reattach_window_s``."""
        lost_since: Optional[float] = None
        while True:
            try:
                for event in self._watch_raw(job_id):
                    lost_since = None
                    if on_event is not None:
                        on_event(event)
                    if event.state.finished:
                        return event.job if event.job is not None else self.get_job(job_id)
                job = self.get_job(job_id)      # the stream ended without a final event
                if job.state.finished:
                    return job
                time.sleep(0.2)
            except grpc.RpcError as err:
                if err.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise TimeoutError_(
                        f"job {job_id} did not end within the watch deadline of "
                        f"{self.settings.watch_timeout_s:g} s",
                        hint=f"it keeps running on the board; re-attach with "
                             f"`edgetune jobs watch {job_id}`") from None
                if err.code() is not grpc.StatusCode.UNAVAILABLE:
                    raise translate_rpc_error(err, self._ctx) from None
                now = time.monotonic()
                if lost_since is None:          # one warning per outage, then debug lines
                    lost_since = now
                    log.warning("the watch of job %s dropped (%s); re-attaching (for up to "
                                "%g s)", job_id, err.details(), self.settings.reattach_window_s)
                else:
                    log.debug("re-attaching to job %s failed (%s); trying again", job_id,
                              err.details())
                if now - lost_since > self.settings.reattach_window_s:
                    raise UnreachableError(
                        f"lost the connection to {self.address} while watching job {job_id} "
                        f"and could not re-attach within {self.settings.reattach_window_s:g} s",
                        hint=f"the job keeps running on the board; re-attach later with "
                             f"`edgetune jobs watch {job_id}`") from None
                time.sleep(min(2.0, 0.25 + (now - lost_since) / 4))

    def read_job_output(self, job_id: str, offset: int = 0, *, chunk_bytes: int = 0,
                        expected_bytes: int = 0) -> "OutputStream":
        """The output file of a finished job that wrote one (``EvaluateSpec.dump_outputs``),
        as ``OutputChunk``s from ``offset`` on. A dropped stream (UNAVAILABLE, or an end
        before the file's last byte) is resumed from the byte after the last chunk received,
        for ``reattach_window_s``. ``chunk_bytes``: 0 for the agent's default, else 4096 up
        to its limit. ``expected_bytes`` (the job's ``output_bytes``) sets the deadline of each
        stream as an upload's: ``timeout_s`` + size / ``upload_min_rate_bytes_s``."""
        return OutputStream(self, job_id, offset, chunk_bytes, expected_bytes)

    def _read_output_raw(self, job_id: str, offset: int, chunk_bytes: int,
                         timeout: float) -> Iterator[OutputChunk]:
        """OutputChunks of one ReadJobOutput stream; raises grpc.RpcError untranslated."""
        self.connect()
        with GATE.deferred():
            call = self._stub.ReadJobOutput(
                pb.ReadJobOutputRequest(job_id=job_id, offset=offset, chunk_bytes=chunk_bytes),
                timeout=timeout, metadata=CALL_METADATA)
        try:
            while True:
                with GATE.deferred():
                    GATE.on_interrupt(call.cancel)
                    message = next(call, None)
                if message is None:
                    return
                yield OutputChunk.from_pb2(message)
        finally:
            with GATE.deferred():
                call.cancel()

    def run(self, spec: Any, on_event: Optional[EventCallback] = None, label: str = "") -> Job:
        """Submit ``spec`` and wait for its end (see ``wait``)."""
        job, position = self.submit(spec, label)
        if on_event is not None:
            on_event(JobEvent(job_id=job.id, state=job.state, queue_position=position, job=job))
        return self.wait(job.id, on_event)


class OutputStream:
    """Iterates over a job's output file in chunks (``AgentClient.read_job_output``), one
    chunk in memory at a time, resuming a dropped stream by offset. ``chunks``: received;
    ``resumes``: streams opened again after a drop; ``total_bytes``: the file's size (-1
    until the first chunk)."""

    def __init__(self, client: AgentClient, job_id: str, offset: int, chunk_bytes: int,
                 expected_bytes: int) -> None:
        self.client = client
        self.job_id = job_id
        self.offset = offset
        self.chunk_bytes = chunk_bytes
        self.expected_bytes = expected_bytes
        self.chunks = 0
        self.resumes = 0
        self.total_bytes = -1

    def __iter__(self) -> Iterator[OutputChunk]:
        settings = self.client.settings
        lost_since: Optional[float] = None
        while True:
            remaining = max(self.expected_bytes - self.offset, 0)
            timeout = settings.timeout_s + remaining / settings.upload_min_rate_bytes_s
            try:
                for chunk in self.client._read_output_raw(self.job_id, self.offset,
                                                          self.chunk_bytes, timeout):
                    if chunk.offset != self.offset:
                        raise AgentError(f"the agent at {self.client.address} sent job "
                                         f"{self.job_id}'s output from byte {chunk.offset}, "
                                         f"not {self.offset} as asked")
                    lost_since = None
                    self.total_bytes = chunk.total_bytes
                    self.chunks += 1
                    self.offset += len(chunk.data)
                    yield chunk
                if 0 <= self.total_bytes <= self.offset:
                    return
                raise _Dropped()                # ended early: the agent stopped, say
            except (grpc.RpcError, _Dropped) as err:
                code = err.code() if isinstance(err, grpc.RpcError) else grpc.StatusCode.UNAVAILABLE
                if code is grpc.StatusCode.PERMISSION_DENIED:
                    raise AuthError(
                        f"the agent at {self.client.address} refused to send job "
                        f"{self.job_id}'s output to {self.client.identity.common_name!r}: "
                        f"{err.details()}",   # type: ignore[union-attr]
                        hint="read it with the certificate that submitted the job") from None
                if code is not grpc.StatusCode.UNAVAILABLE:
                    assert isinstance(err, grpc.RpcError)
                    raise translate_rpc_error(err, self.client._ctx) from None
                now = time.monotonic()
                if lost_since is None:
                    lost_since = now
                    log.warning("the output stream of job %s dropped at byte %d; resuming",
                                self.job_id, self.offset)
                if now - lost_since > settings.reattach_window_s:
                    raise UnreachableError(
                        f"lost the connection to {self.client.address} while reading job "
                        f"{self.job_id}'s output at byte {self.offset} and could not resume "
                        f"within {settings.reattach_window_s:g} s",
                        hint="run the command again while the board keeps the output") from None
                self.resumes += 1
                time.sleep(min(2.0, 0.1 + (now - lost_since) / 4))


class _Dropped(Exception):
    """A ReadJobOutput stream that ended before the file's last byte."""


def _version_key(version: str) -> Tuple[int, ...]:
    """"0.2.0rc1" -> (0, 2, 0): the leading numbers, enough to tell which side is older."""
    key: List[int] = []
    for part in version.split("."):
        number = part[:len(part) - len(part.lstrip("0123456789"))]
        if not number:
            break
        key.append(int(number))
    return tuple(key)


def check_own_certificate(cert_pem: bytes, name: str, warning_days: int) -> None:
    """Refuse a host certificate the agent would refuse less clearly (expired, not for
    clients); warn near expiry."""
    from edgetune.certs import describe_certificate, has_client_auth

    info = describe_certificate(cert_pem)
    reissue = f"issue a new one with `edgetune certs issue host {name or 'NAME'}`"
    if not has_client_auth(cert_pem):
        raise AuthError(f"our certificate {name!r} lacks the clientAuth usage (a device "
                        "certificate used as a client?); agents refuse it",
                        hint="use a host certificate: `edgetune certs issue host NAME`")
    status = info.status()
    if status == "expired":
        raise AuthError(f"our certificate {name!r} expired on {info.not_after:%Y-%m-%d %H:%M} "
                        "UTC; the agent would refuse it", hint=reissue)
    if status == "not yet valid":
        raise AuthError(f"our certificate {name!r} is valid only from "
                        f"{info.not_before:%Y-%m-%d %H:%M} UTC", hint="is this PC's clock right?")
    if info.days_left() <= warning_days:
        log.warning("our certificate %r expires in %d days (%s UTC); %s", name,
                    int(info.days_left()), f"{info.not_after:%Y-%m-%d}", reissue)


__all__ = ["AgentClient", "ClientSettings", "GATE", "SigintGate", "UploadOutcome",
           "UploadStatus", "check_own_certificate", "file_sha256"]
