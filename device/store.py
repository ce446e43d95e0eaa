"""Content-addressed, crash-safe storage for models and datasets on the board.

Layout under the store's root::

    models/<sha256>.onnx        complete, verified models
    models/<sha256>.json        its metadata: name label, size, created time
    datasets/<sha256>.npz       complete, verified datasets (+ .json beside it)
    partial/<kind>-<sha256>.part   bytes of an upload in progress or interrupted
    partial/<kind>-<sha256>.json   what that upload announced (size, name)

A blob becomes visible only through ``os.replace`` after its sha256 matched and its content
passed the safety checks (``device.onnx_safety`` for models, ``device.datasets`` for
datasets). Client-supplied names are labels stored in the JSON side file, never part of a
path: every path is built from a validated hex digest.

Uploads (``begin_upload``):
- a blob that is complete already returns a writer with ``already_present=True`` and
  ``info`` set: nothing needs sending, ``write`` refuses data, ``commit`` returns ``info``;
- ``offset`` must equal the bytes committed in the partial file (see ``status``), or be 0,
  which restarts the upload from scratch;
- one upload per (kind, sha256) at a time: a second one while the first is open gets
  FailedPrecondition (retry later; by then it is usually already present).

Per chunk the writer only writes and updates the running sha256; every few MB an fsync runs
in a helper thread, and ``close_incomplete``/``commit`` fsync the rest. A disconnect
mid-upload ends in ``close_incomplete``: the bytes received are fsynced and kept for a later
resume (after a power cut, the final hash check catches anything the disk lost). Partial files untouched for ``stale_partial_days`` are removed at open.
"""

from __future__ import annotations

import enum
import errno
import hashlib
import json
import logging
import os
import shutil
import threading
import time
import unicodedata
from pathlib import Path
from typing import Callable, Dict, List, Optional, Set, Tuple, Union

from device.errors import (AgentError, DataLoss, FailedPrecondition, InvalidArgument, NotFound,
                           ResourceExhausted)
from device.limits import SHA256_RE, Limits, check_sha256
from protos.messages import BlobInfo, BlobKind

log = logging.getLogger(__name__)

SYNC_EVERY_BYTES = 8 << 20           # start a background fsync after this many new bytes
HASH_READ_BYTES = 4 << 20            # chunk size when re-hashing a partial file on resume
MAX_NAME_CHARS = 200
SUFFIX = {BlobKind.MODEL: ".onnx", BlobKind.DATASET: ".npz"}
FOLDER = {BlobKind.MODEL: "models", BlobKind.DATASET: "datasets"}
UPLOAD_HINT = {BlobKind.MODEL: "upload it first with `edgetune models upload`",
               BlobKind.DATASET: "upload it first with `edgetune datasets upload`"}

KindLike = Union[BlobKind, str]


class UploadState(str, enum.Enum):
    ABSENT = "absent"
    PARTIAL = "partial"
    COMPLETE = "complete"


def safe_label(name: str) -> str:
    """A display string from a client-supplied name: no control characters, bounded length.

    It is only ever shown and stored as a label, never used to build a path.
    """
    if not isinstance(name, str):
        return ""
    cleaned = "".join(" " if unicodedata.category(ch)[0] in ("C", "Z") else ch for ch in name)
    return " ".join(cleaned.split())[:MAX_NAME_CHARS]


def _kind(kind: KindLike) -> BlobKind:
    try:
        return BlobKind(kind)
    except ValueError:
        raise InvalidArgument(f"blob kind must be 'model' or 'dataset' (got {kind!r})") from None


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _fsync_quietly(fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError as exc:  # the final fsync at close reports real trouble
        log.debug("background fsync failed: %s", exc)


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False


def _validate_model(path: Path, limits: Limits) -> None:
    from device.onnx_safety import check_model_file
    check_model_file(path, limits.max_model_bytes)


def _validate_dataset(path: Path, limits: Limits) -> None:
    from device.datasets import check_dataset_file
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
    """

    def __init__(self, store: "BlobStore", kind: BlobKind, sha256: str, size: int, name: str,
                 *, already_present: Optional[BlobInfo] = None) -> None:
        self._store = store
        self.kind = kind
        self.sha256 = sha256
        self.size = size
        self.name = name
        self.info: Optional[BlobInfo] = already_present
        self.already_present = already_present is not None
        self.start_offset = 0
        self.committed = 0               # bytes in the partial file, resumed ones included
        self._hasher = hashlib.sha256()
        self._file = None                # type: Optional[object]
        self._unsynced = 0
        self._syncer: Optional[threading.Thread] = None
        self._closed = self.already_present

    # --- set-up, called by the store with the key reserved
    def _open(self, offset: int) -> None:
        part = self._store._part_path(self.kind, self.sha256)
        if offset == 0:
            f = open(part, "wb", buffering=0)
        else:
            f = open(part, "r+b", buffering=0)
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
    def received(self) -> int:
        """Bytes carried by this writer (not counting the resumed part)."""
        return self.committed - self.start_offset

    @property
    def complete(self) -> bool:
        return self.committed == self.size

    def write(self, data: bytes) -> None:
        if self._closed:
            if self.already_present:
                raise FailedPrecondition(
                    f"{self.kind.value} {self.sha256} is stored already; nothing needs sending")
            raise FailedPrecondition("this upload is closed; start a new one to send more bytes")
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
                written += f.write(view[written:])  # type: ignore[attr-defined]
        except OSError as exc:
            self.committed += written  # what reached the file is a correct prefix
            self._hasher.update(view[:written])
            if exc.errno == errno.ENOSPC:
                raise ResourceExhausted(
                    f"the board's disk is full after {self.committed} of {self.size} bytes; "
                    "free space (or delete blobs) and resume the upload") from None
            raise AgentError(f"writing the upload to the store failed: {exc}") from None
        self._hasher.update(data)
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
        if not self._closed:
            self._closed = True
            try:
                self._close_file()
            finally:
                self._store._release(self.kind, self.sha256)
            log.info("upload of %s %s paused at %d of %d bytes", self.kind.value, self.sha256,
                     self.committed, self.size)
        return self.committed

    def discard(self) -> None:
        """Throw the partial upload away."""
        if not self._closed:
            self._closed = True
            try:
                self._close_file()
            finally:
                self._store._drop_partial(self.kind, self.sha256)
                self._store._release(self.kind, self.sha256)

    def commit(self) -> BlobInfo:
        """Verify the hash and the content, then make the blob visible. Returns its info.

        DataLoss on a hash mismatch and InvalidArgument on refused content (both discard the
        bytes); FailedPrecondition if fewer than ``size`` bytes arrived (they are kept).
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
        try:
            self._close_file()
            got = self._hasher.hexdigest()
            if got != self.sha256:
                self._store._drop_partial(self.kind, self.sha256)
                raise DataLoss(f"hash mismatch: expected {self.sha256}, got {got}; the upload "
                               "was discarded, send it again")
            part = self._store._part_path(self.kind, self.sha256)
            try:
                VALIDATORS[self.kind](part, self._store.limits)
            except AgentError:
                self._store._drop_partial(self.kind, self.sha256)
                raise
            except Exception as exc:
                self._store._drop_partial(self.kind, self.sha256)
                raise InvalidArgument(f"{self.kind.value} refused: {exc}") from exc
            self.info = self._store._install(self.kind, self.sha256, self.size, self.name)
            return self.info
        finally:
            self._closed = True
            self._store._release(self.kind, self.sha256)

    def __enter__(self) -> "UploadWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.close_incomplete()


class BlobStore:
    """Models and datasets keyed by sha256, under ``root``. Thread-safe, synchronous."""

    def __init__(self, root: Path, limits: Limits, *, stale_partial_days: float = 7.0) -> None:
        self.root = Path(root)
        self.limits = limits
        self._lock = threading.Lock()
        self._uploading: Set[Tuple[BlobKind, str]] = set()
        for folder in (*FOLDER.values(), "partial"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        self.cleanup_stale(stale_partial_days)

    # ------------------------------------------------------------------ paths
    def _blob_path(self, kind: BlobKind, sha256: str) -> Path:
        return self.root / FOLDER[kind] / (sha256 + SUFFIX[kind])

    def _meta_path(self, kind: BlobKind, sha256: str) -> Path:
        return self.root / FOLDER[kind] / (sha256 + ".json")

    def _part_path(self, kind: BlobKind, sha256: str) -> Path:
        return self.root / "partial" / f"{kind.value}-{sha256}.part"

    def _part_meta_path(self, kind: BlobKind, sha256: str) -> Path:
        return self.root / "partial" / f"{kind.value}-{sha256}.json"

    # ------------------------------------------------------------------ queries
    def status(self, kind: KindLike, sha256: str, size: int = 0) -> Tuple[UploadState, int]:
        """(state, committed_bytes). ``size`` (0: unknown) must match a partial's announced
        size for it to count; otherwise the partial is reported ABSENT (an upload from offset 0
        replaces it)."""
        kind = _kind(kind)
        check_sha256(sha256)
        blob = self._blob_path(kind, sha256)
        try:
            return UploadState.COMPLETE, blob.stat().st_size
        except FileNotFoundError:
            pass
        return self._partial_state(kind, sha256, size)

    def _partial_state(self, kind: BlobKind, sha256: str, size: int) -> Tuple[UploadState, int]:
        try:
            committed = self._part_path(kind, sha256).stat().st_size
        except FileNotFoundError:
            return UploadState.ABSENT, 0
        announced = _read_json(self._part_meta_path(kind, sha256)).get("size")
        if not isinstance(announced, int) or committed > announced \
                or (size and announced != size):
            return UploadState.ABSENT, 0
        return UploadState.PARTIAL, committed

    def path(self, kind: KindLike, sha256: str) -> Path:
        """Where a complete blob lives; NotFound (saying how to upload it) if it does not."""
        kind = _kind(kind)
        check_sha256(sha256, f"{kind.value} sha256")
        blob = self._blob_path(kind, sha256)
        if not blob.is_file():
            raise NotFound(f"{kind.value} {sha256} is not stored on this board; {UPLOAD_HINT[kind]}")
        return blob

    def info(self, kind: KindLike, sha256: str) -> BlobInfo:
        kind = _kind(kind)
        blob = self.path(kind, sha256)
        return self._info_from_disk(kind, sha256, blob)

    def _info_from_disk(self, kind: BlobKind, sha256: str, blob: Path) -> BlobInfo:
        st = blob.stat()
        meta = _read_json(self._meta_path(kind, sha256))
        created = meta.get("created_unix")
        return BlobInfo(kind=kind, sha256=sha256, size_bytes=st.st_size,
                        name=safe_label(meta.get("name", "")),
                        created_unix=float(created) if isinstance(created, (int, float))
                        else st.st_mtime)

    def list(self, kind: Optional[KindLike] = None) -> List[BlobInfo]:
        """Complete blobs, oldest first (models before datasets when both kinds are listed)."""
        kinds = [_kind(kind)] if kind is not None else [BlobKind.MODEL, BlobKind.DATASET]
        out: List[BlobInfo] = []
        for k in kinds:
            infos = []
            for blob in (self.root / FOLDER[k]).glob("*" + SUFFIX[k]):
                sha = blob.name[:-len(SUFFIX[k])]
                if not SHA256_RE.fullmatch(sha):
                    continue
                try:
                    infos.append(self._info_from_disk(k, sha, blob))
                except FileNotFoundError:  # deleted meanwhile
                    continue
            out.extend(sorted(infos, key=lambda i: (i.created_unix, i.sha256)))
        return out

    def usage(self) -> Tuple[int, int, int]:
        """(bytes used by complete and partial blobs, number of models, number of datasets)."""
        used = 0
        counts = {}
        for k in (BlobKind.MODEL, BlobKind.DATASET):
            n = 0
            for blob in (self.root / FOLDER[k]).glob("*" + SUFFIX[k]):
                try:
                    used += blob.stat().st_size
                    n += 1
                except FileNotFoundError:
                    pass
            counts[k] = n
        for part in (self.root / "partial").glob("*.part"):
            try:
                used += part.stat().st_size
            except FileNotFoundError:
                pass
        return used, counts[BlobKind.MODEL], counts[BlobKind.DATASET]

    # ------------------------------------------------------------------ uploads
    def begin_upload(self, kind: KindLike, sha256: str, size: int, name: str = "",
                     offset: int = 0) -> UploadWriter:
        """Start or resume an upload. See the module docstring for the rules."""
        kind = _kind(kind)
        check_sha256(sha256)
        label = safe_label(name)
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise InvalidArgument(f"size must be a positive number of bytes (got {size!r})")
        limit = self.limits.max_bytes(kind)
        if size > limit:
            raise ResourceExhausted(
                f"{kind.value} of {size} bytes exceeds this agent's limit of {limit} bytes; "
                f"raise {Limits.config_key(kind)} in the agent's config to accept it")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise InvalidArgument(f"offset must be 0 or more (got {offset!r})")
        key = (kind, sha256)
        with self._lock:
            blob = self._blob_path(kind, sha256)
            if blob.is_file():
                return UploadWriter(self, kind, sha256, size, label,
                                    already_present=self._info_from_disk(kind, sha256, blob))
            if key in self._uploading:
                raise FailedPrecondition(
                    f"an upload of {kind.value} {sha256} is already in progress; wait for it "
                    "to finish and ask again (it will then be stored already)")
            state, committed = self._partial_state(kind, sha256, size)
            if offset and (state is not UploadState.PARTIAL or offset != committed):
                raise FailedPrecondition(
                    f"cannot resume {kind.value} {sha256} at offset {offset}: the agent has "
                    f"{committed} bytes committed; send from offset {committed}")
            self._uploading.add(key)
        try:
            need = size - offset
            free = shutil.disk_usage(str(self.root)).free
            if need > free:
                raise ResourceExhausted(
                    f"not enough free space in the agent's store for this {kind.value}: "
                    f"{need} bytes needed, {free} free; delete blobs with `edgetune "
                    f"{FOLDER[kind]} delete` or free space on the board")
            writer = UploadWriter(self, kind, sha256, size, label)
            if offset == 0:
                _write_json_atomic(self._part_meta_path(kind, sha256),
                                   {"size": size, "name": label, "started_unix": time.time()})
            writer._open(offset)
        except BaseException:
            self._release(kind, sha256)
            raise
        log.info("upload of %s %s (%s) %s at %d of %d bytes", kind.value, sha256, label or "-",
                 "resumed" if offset else "started", offset, size)
        return writer

    def _release(self, kind: BlobKind, sha256: str) -> None:
        with self._lock:
            self._uploading.discard((kind, sha256))

    def _drop_partial(self, kind: BlobKind, sha256: str) -> None:
        _unlink(self._part_path(kind, sha256))
        _unlink(self._part_meta_path(kind, sha256))

    def _install(self, kind: BlobKind, sha256: str, size: int, label: str) -> BlobInfo:
        """Move a verified partial into place and record its metadata."""
        part_meta = _read_json(self._part_meta_path(kind, sha256))
        name = label or safe_label(part_meta.get("name", ""))
        created = time.time()
        blob = self._blob_path(kind, sha256)
        _write_json_atomic(self._meta_path(kind, sha256),
                           {"name": name, "size": size, "created_unix": created})
        os.replace(self._part_path(kind, sha256), blob)
        _fsync_dir(blob.parent)
        _unlink(self._part_meta_path(kind, sha256))
        log.info("stored %s %s (%s, %d bytes)", kind.value, sha256, name or "-", size)
        return BlobInfo(kind=kind, sha256=sha256, size_bytes=size, name=name, created_unix=created)

    # ------------------------------------------------------------------ removal
    def delete(self, kind: KindLike, sha256: str) -> bool:
        """Remove a blob (and any idle partial upload of it). NotFound if neither exists.

        Refusing to delete a blob that a queued job needs is the caller's business.
        """
        kind = _kind(kind)
        check_sha256(sha256)
        with self._lock:
            if (kind, sha256) in self._uploading:
                raise FailedPrecondition(f"{kind.value} {sha256} is being uploaded right now; "
                                         "delete it after the upload ends")
            removed = _unlink(self._blob_path(kind, sha256))
            _unlink(self._meta_path(kind, sha256))
            had_partial = _unlink(self._part_path(kind, sha256))
            _unlink(self._part_meta_path(kind, sha256))
        if not (removed or had_partial):
            raise NotFound(f"{kind.value} {sha256} is not stored on this board; "
                           f"`edgetune {FOLDER[kind]} list` shows what is")
        log.info("deleted %s %s", kind.value, sha256)
        return True

    def cleanup_stale(self, older_than_days: float) -> int:
        """Remove partial uploads untouched for ``older_than_days`` and orphaned side files."""
        cutoff = time.time() - older_than_days * 86400.0
        removed = 0
        partial = self.root / "partial"
        with self._lock:
            busy = {f"{k.value}-{s}" for k, s in self._uploading}
            for part in partial.glob("*.part"):
                stem = part.name[:-len(".part")]
                if stem in busy:
                    continue
                try:
                    if part.stat().st_mtime < cutoff:
                        _unlink(part)
                        _unlink(partial / (stem + ".json"))
                        removed += 1
                        log.info("removed stale partial upload %s", part.name)
                except FileNotFoundError:
                    pass
            for meta in partial.glob("*.json"):
                stem = meta.name[:-len(".json")]
                if stem not in busy and not (partial / (stem + ".part")).exists():
                    _unlink(meta)
            for tmp in partial.glob("*.tmp"):
                _unlink(tmp)
            for k in (BlobKind.MODEL, BlobKind.DATASET):
                folder = self.root / FOLDER[k]
                for meta in folder.glob("*.json"):
                    if not (folder / (meta.name[:-len(".json")] + SUFFIX[k])).exists():
                        _unlink(meta)
                for tmp in folder.glob("*.tmp"):
                    _unlink(tmp)
        return removed
