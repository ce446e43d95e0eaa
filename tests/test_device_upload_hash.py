"""edgetune.device.upload.BackgroundHash: an upload's sha256 kept by a thread of its own, bounded,
in order, and never left running; and UploadWriter using it on real files."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import List

import numpy as np
import pytest

import edgetune.device.upload as upload
from edgetune.device.errors import DataLoss, StatusError
from edgetune.device.limits import Limits
from edgetune.device.store import BlobStore
from edgetune.device.upload import BackgroundHash
from edgetune.protos.messages import BlobKind

WAIT_S = 10.0


class RecordingHasher:
    """A sha256 that notes the thread of every update and can be held at a gate."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self._sha = hashlib.sha256()
        self.gate = gate
        self.threads: List[str] = []
        self.updates = 0
        self.entered = threading.Event()

    def update(self, data: object) -> None:
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(WAIT_S), "the test never opened the gate"
        self.threads.append(threading.current_thread().name)
        self._sha.update(data)  # type: ignore[arg-type]
        self.updates += 1

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def hash_threads() -> List[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "edgetune-hash"]


def test_hashes_every_chunk_in_order_in_its_own_thread() -> None:
    rng = np.random.default_rng(1)
    data = rng.integers(0, 255, size=3_000_000, dtype=np.uint8).tobytes()
    cuts = sorted(rng.integers(0, len(data), size=40).tolist()) + [len(data)]
    hasher = RecordingHasher()
    bg = BackgroundHash(hasher, depth=3)
    start = 0
    for cut in cuts:
        bg.update(memoryview(data)[start:cut])
        start = cut
    assert bg.hexdigest() == hashlib.sha256(data).hexdigest()
    assert hasher.updates == len(cuts)
    assert set(hasher.threads) == {"edgetune-hash"}
    assert not hash_threads()                       # joined by hexdigest


def test_depth_zero_hashes_in_the_callers_thread() -> None:
    hasher = RecordingHasher()
    bg = BackgroundHash(hasher, depth=0)
    bg.update(b"abc")
    assert hasher.threads == [threading.current_thread().name]
    assert bg.hexdigest() == hashlib.sha256(b"abc").hexdigest()


def test_a_slow_hash_holds_the_caller_back_after_depth_chunks() -> None:
    gate = threading.Event()
    hasher = RecordingHasher(gate)
    bg = BackgroundHash(hasher, depth=2)
    bg.update(b"0")                                 # taken by the thread, held at the gate
    assert hasher.entered.wait(WAIT_S)
    bg.update(b"1")
    bg.update(b"2")                                 # the queue is full now
    fourth_done = threading.Event()
    feeder = threading.Thread(target=lambda: (bg.update(b"3"), fourth_done.set()))
    feeder.start()
    assert not fourth_done.wait(0.3), "update did not wait for the hash to catch up"
    gate.set()
    assert fourth_done.wait(WAIT_S)
    feeder.join()
    assert bg.hexdigest() == hashlib.sha256(b"0123").hexdigest()


def test_stop_drops_what_is_queued_and_ends_the_thread() -> None:
    gate = threading.Event()
    hasher = RecordingHasher(gate)
    bg = BackgroundHash(hasher, depth=4)
    for part in (b"a", b"b", b"c"):
        bg.update(part)
    assert hasher.entered.wait(WAIT_S)
    stopper = threading.Thread(target=bg.stop)
    stopper.start()
    gate.set()                                      # the chunk being hashed finishes
    stopper.join(WAIT_S)
    assert not stopper.is_alive()
    assert hasher.updates == 1                      # b"b" and b"c" were dropped
    assert not hash_threads()


def test_a_failing_hash_is_reported_and_never_blocks_the_writer() -> None:
    class Broken:
        def update(self, data: object) -> None:
            raise MemoryError("no room")

        def hexdigest(self) -> str:  # pragma: no cover - never reached
            return ""

    bg = BackgroundHash(Broken(), depth=1)
    done = threading.Event()

    def feed() -> None:
        for _ in range(20):                         # far more than the queue holds
            bg.update(b"x")
        done.set()

    threading.Thread(target=feed, daemon=True).start()
    assert done.wait(WAIT_S), "update blocked after the hash failed"
    with pytest.raises(StatusError, match="hashing the upload failed: no room"):
        bg.hexdigest()


# ------------------------------------------------------------------ through UploadWriter

@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "store", Limits())


def npz(n: int) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, x=np.random.default_rng(n).standard_normal((n, 8)).astype(np.float32))
    return buf.getvalue()


def test_writer_hashes_in_the_background_and_leaves_no_thread(store: BlobStore) -> None:
    data = npz(40_000)                              # ~1.3 MB
    writer = store.begin_upload(BlobKind.DATASET, hashlib.sha256(data).hexdigest(), len(data))
    for i in range(0, len(data), 64 << 10):
        writer.write(data[i:i + (64 << 10)])
    assert hash_threads(), "no edgetune-hash thread while the upload runs"
    info = writer.commit()
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert store.path(BlobKind.DATASET, info.sha256).read_bytes() == data
    assert not hash_threads()


def test_writer_by_id_is_named_by_the_background_hash(store: BlobStore) -> None:
    data = npz(30_000)
    writer = store.begin_upload(BlobKind.DATASET, "", len(data), upload_id="ab" * 16)
    writer.write(data[:1000])
    writer.write(memoryview(data)[1000:])
    assert writer.commit().sha256 == hashlib.sha256(data).hexdigest()


def test_wrong_bytes_are_still_refused(store: BlobStore) -> None:
    data = npz(20_000)
    writer = store.begin_upload(BlobKind.DATASET, hashlib.sha256(data).hexdigest(), len(data))
    writer.write(b"\0" * 100 + data[100:])
    with pytest.raises(DataLoss, match="hash mismatch"):
        writer.commit()
    assert not hash_threads()


def test_a_paused_upload_stops_its_hash_thread_and_resumes(store: BlobStore) -> None:
    data = npz(30_000)
    digest = hashlib.sha256(data).hexdigest()
    half = len(data) // 2
    writer = store.begin_upload(BlobKind.DATASET, digest, len(data))
    writer.write(data[:half])
    assert writer.close_incomplete() == half
    assert not hash_threads()
    resumed = store.begin_upload(BlobKind.DATASET, digest, len(data), offset=half)
    resumed.write(data[half:])
    assert resumed.commit().sha256 == digest


def test_a_failed_final_fsync_leaves_no_hash_thread(store: BlobStore,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    data = npz(20_000)
    writer = store.begin_upload(BlobKind.DATASET, hashlib.sha256(data).hexdigest(), len(data))
    writer.write(data)
    assert hash_threads()

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(upload.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="Input/output error"):
        writer.commit()
    assert not hash_threads(), "the hash thread outlived a failed commit"


def test_inline_mode_still_stores_correctly(store: BlobStore,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upload, "HASH_QUEUE_DEPTH", 0)
    data = npz(10_000)
    writer = store.begin_upload(BlobKind.DATASET, hashlib.sha256(data).hexdigest(), len(data))
    writer.write(data)
    assert not hash_threads()
    assert writer.commit().sha256 == hashlib.sha256(data).hexdigest()
    assert os.path.getsize(store.path(BlobKind.DATASET, hashlib.sha256(data).hexdigest())) == len(data)
