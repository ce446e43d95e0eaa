"""Content-addressed, crash-safe storage for models and datasets on the board.

Layout under the store's root::

    models/<sha256>.onnx        complete, verified models
    models/<sha256>.json        its metadata: name label, size, created time
    datasets/<sha256>.npz       complete, verified datasets (+ .json beside it)
    partial/<kind>-<sha256>.part   bytes of an upload in progress or interrupted
    partial/<kind>-<sha256>.json   what that upload announced (size, name)
    partial/<kind>-u-<upload_id>.part/.json   the same for an upload by id

A blob becomes visible only through ``os.replace`` after its sha256 matched and its content
passed the safety checks (``edgetune.device.onnx_safety`` for models, ``edgetune.device.datasets`` for
datasets). Client-supplied names are labels stored in the JSON side file, never part of a
path: every path is built from a validated hex digest (or a validated 32-hex upload id).

Uploads (``begin_upload``):
- a blob that is complete already returns a writer with ``already_present=True`` and
  ``info`` set: nothing needs sending, ``write`` refuses data, ``commit`` returns ``info``;
- ``offset`` must equal the bytes committed in the partial file (see ``status``), or be 0,
  which restarts the upload from scratch;
- one upload per (kind, sha256) at a time: a second one while the first is open gets
  FailedPrecondition (retry later; by then it is usually already present);
- an upload by id (``upload_id``: 32 lowercase hex characters the client picked) needs no
  hash up front: its bytes go to ``partial/<kind>-u-<upload_id>.part``, resume by that id like
  resume by hash, and at ``commit`` the hash of what arrived decides: stored already -> the
  copy is discarded and the stored blob answers (``writer.duplicate``); else the content is
  checked and installed under that hash. One upload per (kind, upload_id) at a time.

The writer (``edgetune.device.upload.UploadWriter``, re-exported here) receives the chunks, fsyncs as
it goes and checks hash and content at ``commit``; a disconnect mid-upload ends in
``close_incomplete``, which keeps the bytes received for a later resume. Partial files
untouched for ``stale_partial_days`` are removed at open.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import shutil
import threading
import time
import unicodedata
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple, Union

from edgetune.device.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from edgetune.device.limits import SHA256_RE, Limits, check_sha256
from edgetune.device.safefs import (OpenedFile, check_private_dir, fsync_dir, is_regular,
                                    make_private, open_file, open_regular, regular_stat)
# UploadWriter and its constants live in device.upload; importable from here as before.
from edgetune.device.upload import (MODEL_FORMAT, check_format,  # noqa: F401
                                    HASH_READ_BYTES, SYNC_EVERY_BYTES, VALIDATORS,  # noqa: F401
                           UploadWriter, check_upload_id, upload_key)
from edgetune.protos.messages import BlobInfo, BlobKind

log = logging.getLogger("edgetune.agent.store")

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


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open_file(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_json(path: Path) -> dict:
    try:
        with open_file(path, "r") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _mtime_ns(folder: Path) -> int:
    return os.stat(str(folder)).st_mtime_ns


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False


class BlobStore:
    """Models and datasets keyed by sha256, under ``root``. Thread-safe, synchronous."""

    def __init__(self, root: Path, limits: Limits, *, stale_partial_days: float = 7.0) -> None:
        self.root = Path(root)
        self.limits = limits
        self._lock = threading.Lock()
        self._uploading: Set[Tuple[BlobKind, str]] = set()
        # Per kind: (the folder's mtime_ns when counted, bytes, blobs); see _blob_usage.
        self._counted: Dict[BlobKind, Tuple[int, int, int]] = {}
        self.root.parent.mkdir(parents=True, exist_ok=True)
        check_private_dir(self.root)            # 0700, not a symbolic link (device.safefs)
        for folder in (*FOLDER.values(), "partial"):
            check_private_dir(self.root / folder)
        self._make_files_private()
        self.cleanup_stale(stale_partial_days)

    def _make_files_private(self) -> None:
        """chmod 0600 what an older agent left with the umask's mode."""
        for folder in (*FOLDER.values(), "partial"):
            for entry in (self.root / folder).iterdir():
                make_private(entry)
        for entry in self.root.iterdir():
            make_private(entry)     # jobs.db and its -wal/-shm, leases.json

    # ------------------------------------------------------------------ paths
    def _blob_path(self, kind: BlobKind, sha256: str) -> Path:
        return self.root / FOLDER[kind] / (sha256 + SUFFIX[kind])

    def _meta_path(self, kind: BlobKind, sha256: str) -> Path:
        return self.root / FOLDER[kind] / (sha256 + ".json")

    # ``key`` names an upload's partial files: its validated sha256, or "u-" + a validated
    # upload id (``edgetune.device.upload.upload_key``).
    def _part_path(self, kind: BlobKind, key: str) -> Path:
        return self.root / "partial" / f"{kind.value}-{key}.part"

    def _part_meta_path(self, kind: BlobKind, key: str) -> Path:
        return self.root / "partial" / f"{kind.value}-{key}.json"

    # ------------------------------------------------------------------ queries
    def status(self, kind: KindLike, sha256: str, size: int = 0,
               upload_id: str = "") -> Tuple[UploadState, int]:
        """(state, committed_bytes). ``size`` (0: unknown) must match a partial's announced
        size for it to count; otherwise the partial is reported ABSENT (an upload from offset 0
        replaces it). With ``upload_id`` the partial is that upload's, and ``sha256`` may be
        empty (if given, a stored blob of that hash is reported COMPLETE)."""
        kind = _kind(kind)
        if upload_id:
            check_upload_id(upload_id)
        if sha256 or not upload_id:
            check_sha256(sha256)
            blob = self._blob_path(kind, sha256)
            try:
                return UploadState.COMPLETE, regular_stat(blob).st_size
            except FileNotFoundError:
                pass
        return self._partial_state(kind, upload_key(sha256, upload_id), size)

    def _partial_state(self, kind: BlobKind, key: str, size: int) -> Tuple[UploadState, int]:
        try:
            committed = regular_stat(self._part_path(kind, key)).st_size
        except FileNotFoundError:
            return UploadState.ABSENT, 0
        announced = _read_json(self._part_meta_path(kind, key)).get("size")
        if not isinstance(announced, int) or committed > announced \
                or (size and announced != size):
            return UploadState.ABSENT, 0
        return UploadState.PARTIAL, committed

    def path(self, kind: KindLike, sha256: str) -> Path:
        """Where a complete blob lives; NotFound (saying how to upload it) if it does not."""
        kind = _kind(kind)
        check_sha256(sha256, f"{kind.value} sha256")
        blob = self._blob_path(kind, sha256)
        if not is_regular(blob):           # a planted symbolic link is not a blob
            raise NotFound(f"{kind.value} {sha256} is not stored on this board; {UPLOAD_HINT[kind]}")
        return blob

    def open(self, kind: KindLike, sha256: str) -> OpenedFile:
        """A complete blob, opened once without following a link and checked to be a regular
        file on the descriptor (``edgetune.device.safefs.open_regular``): jobs read through
        it, so the file checked is the file used even if its name is replaced meanwhile.
        NotFound (saying how to upload it) if it is not stored. Close it when done."""
        kind = _kind(kind)
        check_sha256(sha256, f"{kind.value} sha256")
        try:
            return open_regular(self._blob_path(kind, sha256))
        except FileNotFoundError:
            raise NotFound(f"{kind.value} {sha256} is not stored on this board; "
                           f"{UPLOAD_HINT[kind]}") from None

    def info(self, kind: KindLike, sha256: str) -> BlobInfo:
        kind = _kind(kind)
        blob = self.path(kind, sha256)
        return self._info_from_disk(kind, sha256, blob)

    def _stored_info(self, kind: BlobKind, sha256: str) -> Optional[BlobInfo]:
        """The info of a complete blob, None if it is not stored."""
        try:
            return self._info_from_disk(kind, sha256, self._blob_path(kind, sha256))
        except FileNotFoundError:
            return None

    def _info_from_disk(self, kind: BlobKind, sha256: str, blob: Path) -> BlobInfo:
        st = regular_stat(blob)
        meta = _read_json(self._meta_path(kind, sha256))
        created = meta.get("created_unix")
        fmt = meta.get("format")
        return BlobInfo(kind=kind, sha256=sha256, size_bytes=st.st_size,
                        name=safe_label(meta.get("name", "")),
                        created_unix=float(created) if isinstance(created, (int, float))
                        else st.st_mtime,
                        format=(fmt if isinstance(fmt, str) and MODEL_FORMAT.match(fmt)
                                else "onnx") if kind is BlobKind.MODEL else "")

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
        """(bytes used by complete and partial blobs, number of models, number of datasets).
        Every GetInfo asks: the complete blobs are counted once and then kept up to date
        (``_blob_usage``), so a poll does not stat every blob of a store that holds
        hundreds; the few partial uploads are counted each time."""
        used = 0
        counts = {}
        for k in (BlobKind.MODEL, BlobKind.DATASET):
            size, n = self._blob_usage(k)
            used += size
            counts[k] = n
        for part in (self.root / "partial").glob("*.part"):
            try:
                used += regular_stat(part).st_size
            except FileNotFoundError:
                pass
        return used, counts[BlobKind.MODEL], counts[BlobKind.DATASET]

    def _blob_usage(self, kind: BlobKind) -> Tuple[int, int]:
        """(bytes, count) of the complete blobs of ``kind``: counted when first asked, then
        changed by the store's own installs and deletions (made under the lock, which also
        records the folder's mtime after them), and counted again when the folder's mtime is
        not the one recorded: something else changed it (a change from outside in the same
        clock tick as one of the store's own goes unseen until the folder next changes)."""
        folder = self.root / FOLDER[kind]
        with self._lock:
            stamp = _mtime_ns(folder)
            known = self._counted.get(kind)
            if known is not None and known[0] == stamp:
                return known[1], known[2]
            size = n = 0
            for blob in folder.glob("*" + SUFFIX[kind]):
                try:
                    size += regular_stat(blob).st_size
                    n += 1
                except FileNotFoundError:
                    pass
            self._counted[kind] = (stamp, size, n)
            return size, n

    def _blob_changed(self, kind: BlobKind, before: int, size: int, count: int) -> None:
        """With the lock held, after the store itself added or removed a blob of ``kind``
        (``size`` bytes, ``count`` blobs, negative for a removal) in a folder whose mtime was
        ``before``: keep the counts if they were current, else forget them."""
        known = self._counted.pop(kind, None)
        if known is not None and known[0] == before:
            self._counted[kind] = (_mtime_ns(self.root / FOLDER[kind]), known[1] + size,
                                   known[2] + count)

    # ------------------------------------------------------------------ uploads
    def begin_upload(self, kind: KindLike, sha256: str, size: int, name: str = "",
                     offset: int = 0, upload_id: str = "", format: str = "") -> UploadWriter:
        """Start or resume an upload (by id when ``upload_id`` is set; ``sha256`` may then be
        empty). See the module docstring for the rules. ``format`` (models only): "" or "onnx"
        for an ONNX model (checked as one), else an opaque format kept for a runner plug-in."""
        kind = _kind(kind)
        format = check_format(kind, format)
        if upload_id:
            check_upload_id(upload_id)
        if sha256 or not upload_id:
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
        part_key = upload_key(sha256, upload_id)
        what = f"upload {upload_id}" if upload_id else sha256
        key = (kind, part_key)
        with self._lock:
            stored = self._stored_info(kind, sha256) if sha256 else None
            if stored is not None:
                return UploadWriter(self, kind, sha256, size, label, already_present=stored)
            if key in self._uploading:
                raise FailedPrecondition(
                    f"an upload of {kind.value} {what} is already in progress; wait for it "
                    "to finish and ask again (it will then be stored already)")
            state, committed = self._partial_state(kind, part_key, size)
            if offset and (state is not UploadState.PARTIAL or offset != committed):
                raise FailedPrecondition(
                    f"cannot resume {kind.value} {what} at offset {offset}: the agent has "
                    f"{committed} bytes committed; send from offset {committed}")
            self._uploading.add(key)
        try:
            need = size - offset
            free = shutil.disk_usage(str(self.root)).free
            if need > free:
                raise ResourceExhausted(
                    f"not enough free space in the agent's store for this {kind.value}: "
                    f"{need} bytes needed, {free} free; delete blobs with `edgetune "
                    f"{FOLDER[kind]} rm` or free space on the board")
            writer = UploadWriter(self, kind, sha256, size, label, upload_id=upload_id,
                                  format=format)
            if offset == 0:
                _write_json_atomic(self._part_meta_path(kind, part_key),
                                   {"size": size, "name": label, "started_unix": time.time()})
            writer._open(offset)
        except BaseException:
            self._release(kind, part_key)
            raise
        log.info("upload of %s %s (%s) %s at %d of %d bytes", kind.value, what, label or "-",
                 "resumed" if offset else "started", offset, size)
        return writer

    def _release(self, kind: BlobKind, key: str) -> None:
        with self._lock:
            self._uploading.discard((kind, key))

    def _drop_partial(self, kind: BlobKind, key: str) -> None:
        _unlink(self._part_path(kind, key))
        _unlink(self._part_meta_path(kind, key))

    def _install(self, kind: BlobKind, sha256: str, size: int, label: str,
                 key: str = "", format: str = "") -> BlobInfo:
        """Move a verified partial (the upload ``key``: by default its hash) into place under
        ``sha256`` and record its metadata."""
        key = key or sha256
        part_meta = _read_json(self._part_meta_path(kind, key))
        name = label or safe_label(part_meta.get("name", ""))
        created = time.time()
        blob = self._blob_path(kind, sha256)
        meta: Dict[str, Any] = {"name": name, "size": size, "created_unix": created}
        if kind is BlobKind.MODEL:
            format = format or "onnx"
            meta["format"] = format
        with self._lock:                    # the counts of usage() change with the folder
            before = _mtime_ns(blob.parent)
            try:
                replaced = regular_stat(blob).st_size   # the same content, stored meanwhile
            except FileNotFoundError:
                replaced = -1
            _write_json_atomic(self._meta_path(kind, sha256), meta)
            os.replace(self._part_path(kind, key), blob)
            self._blob_changed(kind, before, size - max(replaced, 0), 0 if replaced >= 0 else 1)
        fsync_dir(blob.parent)
        _unlink(self._part_meta_path(kind, key))
        log.info("stored %s %s (%s, %d bytes)", kind.value, sha256, name or "-", size)
        return BlobInfo(kind=kind, sha256=sha256, size_bytes=size, name=name, created_unix=created,
                        format=format if kind is BlobKind.MODEL else "")

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
            before = _mtime_ns(self.root / FOLDER[kind])
            try:
                size = regular_stat(self._blob_path(kind, sha256)).st_size
            except FileNotFoundError:
                size = -1                   # absent, or a planted link usage() never counted
            removed = _unlink(self._blob_path(kind, sha256))
            _unlink(self._meta_path(kind, sha256))
            self._blob_changed(kind, before, -max(size, 0), -1 if size >= 0 else 0)
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
