"""Receiving the bytes of one upload into the store: ``UploadWriter``.

``edgetune.device.store.BlobStore.begin_upload`` checks the request, reserves the upload's key (the
sha256, or ``u-<upload_id>`` for an upload by id) and returns a writer; the store's module
docstring has the upload rules (resume offsets, one upload per key at a time, uploads by id).

Per chunk the writer writes the bytes and hands them to a thread of the upload's own that keeps
the running sha256 (``BackgroundHash``; hashlib releases the GIL). Writing and hashing then
overlap on a board with two or more cores: where sha256 is slow (no SHA instructions) it no
longer adds to the disk time of every chunk (``bench/upload_pipeline.py``). Every few MB an
fsync runs in another helper thread, and ``close_incomplete``/``commit`` fsync the rest. A
disconnect mid-upload ends in ``close_incomplete``: the bytes received are fsynced and kept for
a later resume (after a power cut, the final hash check catches anything the disk lost).
``commit`` checks the hash (an upload by id has no announced hash unless the client gave one:
its hash is what arrived, and a blob stored under it already makes the upload a duplicate,
discarded), then the content (``VALIDATORS``: ``edgetune.device.onnx_safety`` for ONNX models,
``edgetune.device.datasets`` for datasets; a model declared in an opaque format, "om" say, is
kept as bytes for a runner plug-in), and only then asks the store to make the blob visible.

This module does not import ``edgetune.device.store`` (which imports it): the writer reaches the store
only through the few members listed in ``StoreSide``.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import queue
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Protocol

from edgetune.device.config import MODEL_FORMAT
from edgetune.device.errors import (DataLoss, FailedPrecondition, InvalidArgument,
                                    ResourceExhausted, StatusError)
from edgetune.device.limits import Limits, check_hex
from edgetune.device.safefs import open_file, regular_stat
from edgetune.protos.messages import BlobInfo, BlobKind

log = logging.getLogger("edgetune.agent.upload")

SYNC_EVERY_BYTES = 8 << 20           # start a background fsync after this many new bytes
HASH_READ_BYTES = 4 << 20            # chunk size when re-hashing a partial file on resume
HASH_QUEUE_DEPTH = 4                 # chunks written and waiting for the hash thread, at most
# One write() is at most this long: a 2 MiB chunk written at once cost Linux 6.18 2-3x the
# system time of the same bytes in 1 MiB pieces (the kernel's copy into the page cache); on a
# board held to a quarter of a core that was a sixth of an upload (bench/upload_links.py).
WRITE_PIECE_BYTES = 1 << 20


def check_upload_id(value: object) -> str:
    """Return ``value`` if it is 32 lowercase hex characters (it becomes part of a file name),
    else raise InvalidArgument."""
    return check_hex(value, 32, "upload_id",
                     "the client picks it at random (e.g. secrets.token_hex(16))")


def upload_key(sha256: str, upload_id: str) -> str:
    """The name of an upload's partial files after ``<kind>-``: its id or its hash (both
    validated by the caller)."""
    return f"u-{upload_id}" if upload_id else sha256


class StoreSide(Protocol):
    """What an ``UploadWriter`` uses of its ``edgetune.device.store.BlobStore``."""

    limits: Limits

    def _part_path(self, kind: BlobKind, key: str) -> Path: ...

    def _release(self, kind: BlobKind, key: str) -> None: ...

    def _drop_partial(self, kind: BlobKind, key: str) -> None: ...

    def _stored_info(self, kind: BlobKind, sha256: str) -> Optional[BlobInfo]: ...

    def _install(self, kind: BlobKind, sha256: str, size: int, label: str,
                 key: str = "", format: str = "") -> BlobInfo: ...


class BackgroundHash:
    """Feeds ``hasher`` (a hashlib object) from a thread of its own, in ``update`` order.

    At most ``depth`` chunks wait: a hash slower than the caller slows the caller down instead
    of holding the upload in memory. ``depth`` 0 hashes in the caller's thread (no thread).
    Chunks must not change after ``update`` (bytes, or memoryviews of bytes). ``hexdigest``
    waits for the chunks queued; ``stop`` ends the thread without hashing them.
    """

    _END = object()

    def __init__(self, hasher: Any, depth: int = HASH_QUEUE_DEPTH) -> None:
        self._hasher = hasher
        self._depth = depth
        self._queue: "queue.Queue[object]" = queue.Queue(maxsize=max(depth, 1))
        self._thread: Optional[threading.Thread] = None
        self._dropping = False
        self._error: Optional[BaseException] = None

    def update(self, data: object) -> None:
        if self._depth <= 0:
            self._hasher.update(data)
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True, name="edgetune-hash")
            self._thread.start()
        self._queue.put(data)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if self._dropping or self._error is not None:
                continue                     # keep draining: ``update`` must never block for good
            try:
                self._hasher.update(item)
            except BaseException as exc:  # noqa: BLE001 - reported by hexdigest
                self._error = exc

    def _join(self) -> None:
        if self._thread is not None:
            self._queue.put(self._END)
            self._thread.join()
            self._thread = None

    def hexdigest(self) -> str:
        """The hash of every chunk passed to ``update``."""
        self._join()
        if self._error is not None:
            raise StatusError(f"hashing the upload failed: {self._error}")
        return self._hasher.hexdigest()

    def stop(self) -> None:
        """End the thread, dropping the chunks still queued (the upload stops short)."""
        self._dropping = True
        self._join()


def _fsync_quietly(fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError as exc:  # the final fsync at close reports real trouble
        log.debug("background fsync failed: %s", exc)


def check_format(kind: BlobKind, format: str) -> str:
    """A model's declared format, normalised ("" -> "onnx"); InvalidArgument when malformed
    or given for a dataset."""
    if kind is not BlobKind.MODEL:
        if format:
            raise InvalidArgument(f"a format is declared for a {kind.value}; only models have one")
        return ""
    format = format or "onnx"
    if not isinstance(format, str) or not MODEL_FORMAT.match(format):
        raise InvalidArgument(f"model format {format!r} is not 1-16 lowercase letters, digits or "
                              "'_' (e.g. onnx, om, nb, aipu)")
    return format


def _validate_model(path: Path, limits: Limits) -> None:
    from edgetune.device.onnx_safety import check_model_file
    check_model_file(path, limits.max_model_bytes)


def _validate_dataset(path: Path, limits: Limits) -> None:
    from edgetune.device.datasets import check_dataset_file
    check_dataset_file(path, max_bytes=limits.max_dataset_bytes,
                       max_samples=limits.max_dataset_samples)


VALIDATORS: Dict[BlobKind, Callable[[Path, Limits], None]] = {
    BlobKind.MODEL: _validate_model,
    BlobKind.DATASET: _validate_dataset,
}


class UploadWriter:
    """Receives the bytes of one upload; made by ``BlobStore.begin_upload``.

    Use ``write`` for each chunk, then ``commit`` once all ``size`` bytes arrived, or
    ``close_incomplete`` when the sender went away (the bytes stay for a resume).
    As a context manager, leaving with an exception closes it incomplete.

    ``sha256`` is the announced hash ("" for an upload by id without one; ``commit`` sets it to
    the hash received). ``duplicate`` turns True when an upload by id turns out, at commit,
    to hold a blob stored already (``info`` is then the stored blob's).
    """

    def __init__(self, store: StoreSide, kind: BlobKind, sha256: str, size: int, name: str,
                 *, already_present: Optional[BlobInfo] = None, upload_id: str = "",
                 format: str = "") -> None:
        self._store = store
        self.kind = kind
        self.format = format            # models: "onnx" (checked as ONNX) or an opaque format
        self.sha256 = sha256
        self.upload_id = upload_id
        self.key = upload_key(sha256, upload_id)
        self.size = size
        self.name = name
        self.info: Optional[BlobInfo] = already_present
        self.already_present = already_present is not None
        self.duplicate = False
        self.start_offset = 0
        self.committed = 0               # bytes in the partial file, resumed ones included
        self._hasher = hashlib.sha256()     # fed directly only while resuming, then via _hash
        self._hash = BackgroundHash(self._hasher, HASH_QUEUE_DEPTH)
        self._file = None                # type: Optional[object]
        self._unsynced = 0
        self._syncer: Optional[threading.Thread] = None
        self._closed = self.already_present

    # --- set-up, called by the store with the key reserved
    def _open(self, offset: int) -> None:
        part = self._store._part_path(self.kind, self.key)
        if offset == 0:
            f = open_file(part, "wb", buffering=0)      # 0600, never through a link
        else:
            f = open_file(part, "r+b", buffering=0)
            try:
                remaining = offset
                while remaining:
                    chunk = f.read(min(HASH_READ_BYTES, remaining))
                    if not chunk:
                        raise FailedPrecondition(
                            "the partial upload shrank while resuming; resume from offset 0")
                    self._hasher.update(chunk)
                    remaining -= len(chunk)
                f.truncate(offset)
                f.seek(offset)
            except BaseException:
                f.close()
                raise
        self._file = f
        self.start_offset = self.committed = offset

    @property
    def what(self) -> str:
        """How logs and messages name this upload."""
        return f"upload {self.upload_id}" if self.upload_id else self.sha256

    @property
    def received(self) -> int:
        """Bytes carried by this writer (not counting the resumed part)."""
        return self.committed - self.start_offset

    @property
    def complete(self) -> bool:
        return self.committed == self.size

    def write(self, data: bytes, at: Optional[int] = None) -> None:
        """Append ``data`` (bytes, or a memoryview of bytes: it is hashed after this returns,
        so it must not change).

        ``at``: where ``data`` starts in the upload, as the sender counts. A chunk that does not
        start at ``committed`` (a chunk before it was never written: dropped when its sender
        went away, or its write failed) is refused and nothing of it is written, so the partial
        file always stays a prefix of what was sent and a resume never splices."""
        if self._closed:
            if self.already_present:
                raise FailedPrecondition(
                    f"{self.kind.value} {self.sha256} is stored already; nothing needs sending")
            raise FailedPrecondition("this upload is closed; start a new one to send more bytes")
        if at is not None and at != self.committed:
            raise FailedPrecondition(
                f"a chunk at byte {at} does not follow the {self.committed} bytes written (one "
                f"before it was not written); resume from offset {self.committed}")
        n = len(data)
        if self.committed + n > self.size:
            raise InvalidArgument(
                f"upload overruns its announced size: {self.size} bytes announced, "
                f"{self.committed + n} sent; announce the file's real size")
        view = memoryview(data)
        f = self._file
        written = 0
        try:
            while written < n:
                piece = view[written:written + WRITE_PIECE_BYTES]
                written += f.write(piece)  # type: ignore[attr-defined]
        except OSError as exc:
            self.committed += written  # what reached the file is a correct prefix
            self._hash.update(view[:written])
            if exc.errno == errno.ENOSPC:
                raise ResourceExhausted(
                    f"the board's disk is full after {self.committed} of {self.size} bytes; "
                    "free space (or delete blobs) and resume the upload") from None
            raise StatusError(f"writing the upload to the store failed: {exc}") from None
        self._hash.update(data)
        self.committed += n
        self._unsynced += n
        if self._unsynced >= SYNC_EVERY_BYTES:
            self._sync_in_background()

    def _sync_in_background(self) -> None:
        """Start an fsync of what is written so far in a helper thread (one at a time), so the
        stream keeps flowing while the disk catches up."""
        if self._syncer is not None and self._syncer.is_alive():
            return
        self._unsynced = 0
        fd = self._file.fileno()  # type: ignore[attr-defined]
        self._syncer = threading.Thread(target=_fsync_quietly, args=(fd,), daemon=True,
                                        name="edgetune-fsync")
        self._syncer.start()

    def _close_file(self) -> None:
        f = self._file
        self._file = None
        if self._syncer is not None:
            self._syncer.join()
            self._syncer = None
        if f is not None:
            try:
                os.fsync(f.fileno())  # type: ignore[attr-defined]
            finally:
                f.close()  # type: ignore[attr-defined]

    def close_incomplete(self) -> int:
        """Keep the bytes received so far (fsynced) for a later resume; return that offset."""
        if self._end(keep=True):
            log.info("upload of %s %s paused at %d of %d bytes", self.kind.value, self.what,
                     self.committed, self.size)
        return self.committed

    def discard(self) -> None:
        """Throw the partial upload away."""
        self._end(keep=False)

    def _end(self, keep: bool) -> bool:
        """Close an open upload short of commit: stop hashing, fsync and close the file, drop
        it unless ``keep``, release the key. False if it was closed already."""
        if self._closed:
            return False
        self._closed = True
        self._hash.stop()
        try:
            self._close_file()
        finally:
            if not keep:
                self._store._drop_partial(self.kind, self.key)
            self._store._release(self.kind, self.key)
        return True

    def commit(self) -> BlobInfo:
        """Verify the hash and the content, then make the blob visible. Returns its info.

        DataLoss on a hash mismatch and InvalidArgument on refused content (both discard the
        bytes); FailedPrecondition if fewer than ``size`` bytes arrived (they are kept). An
        upload by id whose content is stored already is discarded: ``duplicate`` turns True
        and the stored blob's info is returned.
        """
        if self.already_present:
            assert self.info is not None
            return self.info
        if self._closed:
            raise FailedPrecondition("this upload is closed already; start a new one")
        if self.committed != self.size:
            self.close_incomplete()
            raise FailedPrecondition(
                f"upload incomplete: received {self.committed} of {self.size} bytes; "
                f"the bytes are kept, resume from offset {self.committed}")
        store, key = self._store, self.key
        try:
            self._close_file()
            stored_size = regular_stat(store._part_path(self.kind, key)).st_size
            if stored_size != self.size:      # never name bytes the hash did not see
                store._drop_partial(self.kind, key)
                raise DataLoss(f"the partial file holds {stored_size} bytes where {self.size} "
                               "were written; the upload was discarded, send it again")
            got = self._hash.hexdigest()
            if self.sha256 and got != self.sha256:
                store._drop_partial(self.kind, key)
                raise DataLoss(f"hash mismatch: expected {self.sha256}, got {got}; the upload "
                               "was discarded, send it again")
            self.sha256 = got
            if self.upload_id:
                stored = store._stored_info(self.kind, got)
                if stored is not None:
                    store._drop_partial(self.kind, key)
                    log.info("upload %s of %s %s: stored already, the copy is discarded",
                             self.upload_id, self.kind.value, got)
                    self.info, self.duplicate = stored, True
                    return stored
            part = store._part_path(self.kind, key)
            try:
                if self.kind is not BlobKind.MODEL or self.format in ("", "onnx"):
                    VALIDATORS[self.kind](part, store.limits)   # opaque models: kept as bytes
            except StatusError:
                store._drop_partial(self.kind, key)
                raise
            except Exception as exc:
                store._drop_partial(self.kind, key)
                raise InvalidArgument(f"{self.kind.value} refused: {exc}") from exc
            self.info = store._install(self.kind, got, self.size, self.name, key, self.format)
            return self.info
        finally:
            self._closed = True
            self._hash.stop()               # joined already unless the file could not close
            store._release(self.kind, key)

    def __enter__(self) -> "UploadWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.close_incomplete()
