"""Uploads cancelled at awkward moments, against a real in-process agent over real mutual TLS:
the agent must never keep an upload marked "in progress" after its caller went away."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading
import time
import types
from pathlib import Path
from typing import Any, Dict, Iterator

import grpc
import numpy as np
import pytest

import edgetune.device.servicer
from edgetune.device.limits import Limits
from edgetune.device.servicer import AgentServicer
from edgetune.device.store import BlobStore, UploadState
from edgetune.protos import agent_pb2 as pb
from edgetune.protos import agent_pb2_grpc
from edgetune.protos.messages import BlobKind
from tests.agent_fixtures import (TIMEOUT, assert_blobs_named_by_content, channel, npz_bytes,
                                  sha256_hex, start_agent, upload)

MiB = 1 << 20


def big_dataset(path: Path, mib: int) -> bytes:
    """An uncompressed .npz of about ``mib`` MiB (valid for the agent's dataset check)."""
    np.savez(path, x=np.arange(mib * MiB // 4, dtype=np.float32).reshape(-1, 4096))
    return path.read_bytes()


UPLOAD_ID = "5e" * 16


def plant_partial(store: Path, data: bytes, committed: int, upload_id: str = "") -> None:
    """What an interrupted upload of ``data`` (by hash, or by ``upload_id``) leaves in the
    store: the first ``committed`` bytes and the announced size."""
    partial = store / "partial"
    partial.mkdir(parents=True, exist_ok=True)
    key = f"u-{upload_id}" if upload_id else sha256_hex(data)
    (partial / f"dataset-{key}.part").write_bytes(data[:committed])
    (partial / f"dataset-{key}.json").write_text(json.dumps({"size": len(data), "name": "big"}))


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    # 128 MiB: re-hashing the partial at the start of a resume takes ~0.1 s here, so a cancel
    # 20 ms after the header lands while the agent is still inside begin_upload.
    return big_dataset(tmp_path_factory.mktemp("big") / "big.npz", 128)


def cancel_during_rehash(stub: agent_pb2_grpc.AgentStub, data: bytes, committed: int,
                         delay_s: float, upload_id: str = "") -> None:
    """Start the resume of ``data`` at ``committed``, send only its header, and cancel the
    call ``delay_s`` later: while the agent still re-hashes the partial in begin_upload."""
    header_sent, release = threading.Event(), threading.Event()

    def header_then_stall() -> Iterator[pb.UploadBlobRequest]:
        yield pb.UploadBlobRequest(header=pb.UploadHeader(
            kind=pb.BLOB_KIND_DATASET, sha256="" if upload_id else sha256_hex(data),
            size_bytes=len(data), offset=committed, upload_id=upload_id))
        header_sent.set()
        release.wait(TIMEOUT)

    future = stub.UploadBlob.future(header_then_stall(), timeout=TIMEOUT)
    assert header_sent.wait(TIMEOUT)
    time.sleep(delay_s)
    future.cancel()                        # the PC goes away while the agent re-hashes
    release.set()
    assert future.cancelled()


def retry_while_busy(action: Any, busy_text: str) -> Any:
    """``action()``, retried while the agent says the cancelled upload is still set up (it
    finishes its re-hash in a thread first); failing after 10 s."""
    deadline = time.monotonic() + 10.0
    while True:
        try:
            return action()
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc.details()
            assert busy_text in exc.details(), exc.details()
            assert time.monotonic() < deadline, \
                "the cancelled upload stays marked in progress: " + exc.details()
            time.sleep(0.1)


@pytest.fixture
def planted(pki: Any, tmp_path: Path, big: bytes) -> Iterator[Any]:
    """An agent whose store holds a partial upload of ``big`` (all but its last MiB)."""
    store = tmp_path / "store"
    plant_partial(store, big, len(big) - MiB)
    agent = start_agent(pki, store)
    ch = channel(agent.address, pki.host.identity)
    try:
        yield agent_pb2_grpc.AgentStub(ch), store
    finally:
        ch.close()
        agent.stop()


@pytest.mark.parametrize("delay_s", [0.005, 0.02, 0.05])
def test_cancel_while_the_agent_rehashes_a_resume_releases_the_upload(
        planted: Any, big: bytes, delay_s: float) -> None:
    stub, _ = planted
    sha, committed = sha256_hex(big), len(big) - MiB
    status_request = pb.GetUploadStatusRequest(kind=pb.BLOB_KIND_DATASET, sha256=sha,
                                               size_bytes=len(big))
    status = stub.GetUploadStatus(status_request, timeout=TIMEOUT)
    assert status.state == pb.UPLOAD_STATE_PARTIAL and status.committed_bytes == committed

    cancel_during_rehash(stub, big, committed, delay_s)

    status = stub.GetUploadStatus(status_request, timeout=TIMEOUT)
    assert status.state == pb.UPLOAD_STATE_PARTIAL and status.committed_bytes == committed
    reply = retry_while_busy(
        lambda: upload(stub, pb.BLOB_KIND_DATASET, big, offset=committed, chunk=MiB),
        "already in progress")
    assert reply.blob.sha256 == sha and reply.received_bytes == MiB


def test_cancel_while_rehashing_then_delete_is_not_blocked(planted: Any, big: bytes) -> None:
    """`models rm` (DeleteBlob) of a blob whose resume was cancelled mid-setup must not stay
    refused with "is being uploaded right now"."""
    stub, store = planted
    cancel_during_rehash(stub, big, len(big) - MiB, 0.02)
    reply = retry_while_busy(lambda: stub.DeleteBlob(pb.DeleteBlobRequest(
        kind=pb.BLOB_KIND_DATASET, sha256=sha256_hex(big)), timeout=TIMEOUT), "being uploaded")
    assert reply.deleted
    assert list((store / "partial").glob("*.part")) == []


def test_cancel_while_rehashing_an_upload_by_id_releases_it(pki: Any, tmp_path: Path,
                                                            big: bytes) -> None:
    """The same for a resume by upload id: the id is released, and the next resume by that id
    completes the blob under its hash."""
    store = tmp_path / "store"
    committed = len(big) - MiB
    plant_partial(store, big, committed, UPLOAD_ID)
    agent = start_agent(pki, store)
    ch = channel(agent.address, pki.host.identity)
    try:
        stub = agent_pb2_grpc.AgentStub(ch)
        request = pb.GetUploadStatusRequest(kind=pb.BLOB_KIND_DATASET, size_bytes=len(big),
                                            upload_id=UPLOAD_ID)
        status = stub.GetUploadStatus(request, timeout=TIMEOUT)
        assert status.state == pb.UPLOAD_STATE_PARTIAL and status.committed_bytes == committed
        cancel_during_rehash(stub, big, committed, 0.02, UPLOAD_ID)

        def resume() -> Any:
            header = pb.UploadHeader(kind=pb.BLOB_KIND_DATASET, size_bytes=len(big),
                                     offset=committed, upload_id=UPLOAD_ID)
            return stub.UploadBlob(iter([pb.UploadBlobRequest(header=header),
                                         pb.UploadBlobRequest(data=big[committed:])]),
                                   timeout=TIMEOUT)

        reply = retry_while_busy(resume, "already in progress")
        assert reply.blob.sha256 == sha256_hex(big) and reply.received_bytes == MiB
        assert not reply.already_present
        assert list((store / "partial").glob("*.part")) == []
        assert (store / "datasets" / f"{sha256_hex(big)}.npz").stat().st_size == len(big)
    finally:
        ch.close()
        agent.stop()


class UnluckyUploadThread(concurrent.futures.ThreadPoolExecutor):
    """The servicer's per-upload writer thread, forced into an order ThreadPoolExecutor allows
    when the caller goes away with writes queued: the running write (the 1st) ends only once
    the 2nd was cancelled, and the 3rd starts before its own cancel lands. (Found as a flake of
    test_host_upload_by_id.py's resume test: the partial lost a chunk in its middle, the resume
    went on from its size and the blob was named by the spliced bytes' hash.)"""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.submitted = 0
        self.second_cancelled = threading.Event()
        self.started: Dict[int, threading.Event] = {}

    def submit(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        i = self.submitted
        self.submitted += 1
        started = self.started[i] = threading.Event()

        def run(*a: Any, **kw: Any) -> Any:
            started.set()
            if i == 0:
                self.second_cancelled.wait(TIMEOUT)
            return fn(*a, **kw)

        future = super().submit(run, *args, **kwargs)
        cancel = future.cancel

        def unlucky_cancel() -> bool:
            if i == 2:
                started.wait(TIMEOUT)     # the thread picked the 3rd write up first
            done = cancel()
            if done and i == 1:
                self.second_cancelled.set()
            return done

        future.cancel = unlucky_cancel    # type: ignore[method-assign]
        return future


def test_a_chunk_skipped_when_the_caller_goes_away_never_splices_the_partial(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """UploadBlob cancelled with writes queued: whatever order the writer thread runs them in,
    the partial stays a prefix of the stream, and the resume stores the right blob."""
    data = npz_bytes(x=np.arange(64 * 1024, dtype=np.float32))     # ~256 KiB
    chunk = 64 * 1024
    store = BlobStore(tmp_path / "store", Limits())
    servicer = AgentServicer(Limits(), "test")
    servicer.attach(store, object(), dict)  # type: ignore[arg-type]
    monkeypatch.setattr(edgetune.device.servicer, "concurrent", types.SimpleNamespace(
        futures=types.SimpleNamespace(ThreadPoolExecutor=UnluckyUploadThread)))

    async def cancelled_upload() -> None:
        async def requests() -> Any:
            yield pb.UploadBlobRequest(header=pb.UploadHeader(
                kind=pb.BLOB_KIND_DATASET, size_bytes=len(data), upload_id=UPLOAD_ID))
            for start in (0, chunk, 2 * chunk):                 # 3 writes queued, then a stall
                yield memoryview(data)[start:start + chunk]
            await asyncio.Event().wait()

        task = asyncio.ensure_future(servicer.UploadBlob(requests(), None))
        await asyncio.sleep(0.2)
        task.cancel()                                           # the caller goes away
        with pytest.raises(asyncio.CancelledError):
            await task
        deadline = time.monotonic() + TIMEOUT
        while store._uploading:                                 # closed by the writer thread
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)

    asyncio.run(cancelled_upload())
    part = (tmp_path / "store" / "partial" / f"dataset-u-{UPLOAD_ID}.part").read_bytes()
    assert part == data[:len(part)], "the partial is not a prefix of what was sent"
    state, committed = store.status(BlobKind.DATASET, "", len(data), UPLOAD_ID)
    assert (state, committed) == (UploadState.PARTIAL, chunk)   # the 1st chunk only

    writer = store.begin_upload(BlobKind.DATASET, "", len(data), offset=committed,
                                upload_id=UPLOAD_ID)
    writer.write(data[committed:], at=committed)
    assert writer.commit().sha256 == sha256_hex(data)
    assert assert_blobs_named_by_content(store.root) == 1
