"""What ``AgentClient.upload`` remembers between runs about the files it sent: their sha256,
and the id of an upload by id that did not finish (so that the next run resumes it).

Entries are keyed by a file's identity: (resolved path, size, mtime_ns, inode). A file whose
identity changed is a new file. The cache is one JSON file (``$EDGETUNE_HASH_CACHE``, else
``$XDG_CACHE_HOME/edgetune/hashes.json``, else ``~/.cache/edgetune/hashes.json``), rewritten
atomically, holding at most ``MAX_ENTRIES`` entries (the least recently used go first). A
corrupt or unreadable cache is ignored with a warning and replaced at the next write; a cache
that cannot be written only costs a re-hash next time.

Racy files: file systems stamp mtime with a coarse clock, so a file rewritten (same size)
within one tick of being read would keep its identity. An entry is therefore trusted only if
the file's mtime was at least ``RACY_NS`` older than the moment its reading began (as git does
with its index); a file written just before its upload is simply hashed (or sent from the
start) again next time.

The upload policy (``plan_upload``): cache hit -> upload by hash (dedup, resume); miss and
smaller than ``hash_first_below`` bytes -> hash first, then by hash; miss and larger -> an
upload by id, the file read only once (as it is sent), the agent's hash remembered afterwards
if the file did not change meanwhile (``finish_upload``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

from edgetune.host.errors import BadInputError

log = logging.getLogger(__name__)

CACHE_ENV = "EDGETUNE_HASH_CACHE"
MAX_ENTRIES = 2000
RACY_NS = 2_000_000_000
VERSION = 1
_SHA256 = re.compile(r"[0-9a-f]{64}")
_UPLOAD_ID = re.compile(r"[0-9a-f]{32}")
Hasher = Callable[[Path], Tuple[str, int]]


def file_sha256(path: Path, chunk_bytes: int = 1 << 20) -> Tuple[str, int]:
    """(lowercase hex sha256, size) of ``path``, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(chunk_bytes), b""):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def default_cache_path() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(os.path.expanduser(env))
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgetune" / "hashes.json"


@dataclass(frozen=True)
class FileIdentity:
    path: str                               # resolved
    size: int
    mtime_ns: int
    inode: int

    @classmethod
    def of(cls, path: Path) -> "FileIdentity":
        resolved = Path(path).resolve()
        st = os.stat(resolved)
        return cls(str(resolved), st.st_size, st.st_mtime_ns, st.st_ino)

    @property
    def key(self) -> str:
        return f"{self.size}:{self.mtime_ns}:{self.inode}:{self.path}"


@dataclass(frozen=True)
class Entry:
    sha256: str = ""                        # the file's hash, once known
    upload_id: str = ""                     # an unfinished upload by id of the file
    since_ns: int = 0                       # when reading the file began

    def trusted_for(self, ident: FileIdentity) -> bool:
        return ident.mtime_ns + RACY_NS <= self.since_ns


class HashCache:
    """The cache file at ``path`` (default: ``default_cache_path()``). Every method re-reads
    the file, so that several edgetune processes lose little of each other's entries."""

    def __init__(self, path: Optional[Path] = None, max_entries: int = MAX_ENTRIES) -> None:
        self.path = Path(path) if path is not None else default_cache_path()
        self.max_entries = max_entries
        self._warned = False

    def get(self, ident: FileIdentity) -> Entry:
        """The trusted entry of ``ident`` (an empty Entry if none)."""
        raw = self._load().get(ident.key)
        entry = _entry(raw)
        return entry if entry is not None and entry.trusted_for(ident) else Entry()

    def put(self, ident: FileIdentity, entry: Entry) -> None:
        if not entry.trusted_for(ident):
            log.debug("not caching %s: modified too recently to trust its mtime", ident.path)
            return
        entries = self._load()
        entries.pop(ident.key, None)
        entries[ident.key] = {"sha256": entry.sha256, "upload_id": entry.upload_id,
                              "since_ns": entry.since_ns, "used_ns": time.time_ns()}
        self._save(entries)

    def forget(self, ident: FileIdentity) -> None:
        entries = self._load()
        if entries.pop(ident.key, None) is not None:
            self._save(entries)

    def _load(self) -> Dict[str, dict]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            self._warn(f"cannot read the hash cache {self.path} ({exc}); ignoring it")
            return {}
        try:
            data = json.loads(raw.decode("utf-8"))
            if not isinstance(data, dict) or data.get("version") != VERSION \
                    or not isinstance(data.get("entries"), dict):
                raise ValueError("not an edgetune hash cache")
        except ValueError as exc:
            self._warn(f"the hash cache {self.path} is corrupt ({exc}); ignoring it (it is "
                       "rewritten at the next upload)")
            return {}
        return {k: v for k, v in data["entries"].items() if _entry(v) is not None}

    def _save(self, entries: Dict[str, dict]) -> None:
        if len(entries) > self.max_entries:
            newest = sorted(entries.items(), key=lambda kv: kv[1].get("used_ns", 0))
            entries = dict(newest[-self.max_entries:])
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp",
                                       dir=str(self.path.parent))
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump({"version": VERSION, "entries": entries}, f)
                os.replace(tmp, self.path)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError as exc:
            self._warn(f"cannot write the hash cache {self.path} ({exc}); files will be "
                       "hashed again next time")

    def _warn(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning("%s", message)


def _entry(raw: object) -> Optional[Entry]:
    if not isinstance(raw, dict):
        return None
    sha, upload_id, since = raw.get("sha256", ""), raw.get("upload_id", ""), raw.get("since_ns")
    if not isinstance(sha, str) or not isinstance(upload_id, str) \
            or isinstance(since, bool) or not isinstance(since, int):
        return None
    if not (_SHA256.fullmatch(sha) or (not sha and _UPLOAD_ID.fullmatch(upload_id))):
        return None
    return Entry(sha256=sha, upload_id="" if sha else upload_id, since_ns=since)


@dataclass(frozen=True)
class UploadPlan:
    """How to send one file: by hash (``sha256`` set) or by id (``upload_id`` set)."""

    identity: FileIdentity                  # before the upload
    size: int
    sha256: str = ""
    upload_id: str = ""
    since_ns: int = 0                       # upload by id: when reading the file began
    cached: bool = False                    # the sha256 came from the cache


def plan_upload(path: Path, hash_first_below: int, cache: HashCache,
                hasher: Hasher) -> UploadPlan:
    """The policy in this module's docstring. ``hasher(path)`` returns (sha256, size).
    BadInputError for a path that is not a file or an empty file."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path} is not a file")
    ident = FileIdentity.of(path)
    if ident.size == 0:
        raise BadInputError(f"{path} is empty")
    entry = cache.get(ident)
    if entry.sha256:
        return UploadPlan(ident, ident.size, sha256=entry.sha256, cached=True)
    if ident.size < hash_first_below:
        since = time.time_ns()
        sha, size = hasher(path)
        if size == 0:
            raise BadInputError(f"{path} is empty")
        if size == ident.size and FileIdentity.of(path) == ident:
            cache.put(ident, Entry(sha256=sha, since_ns=since))
        return UploadPlan(ident, size, sha256=sha)
    if entry.upload_id:                     # an earlier run was cut off: resume it
        return UploadPlan(ident, ident.size, upload_id=entry.upload_id, since_ns=entry.since_ns)
    plan = UploadPlan(ident, ident.size, upload_id=secrets.token_hex(16), since_ns=time.time_ns())
    cache.put(ident, Entry(upload_id=plan.upload_id, since_ns=plan.since_ns))
    return plan


def finish_upload(plan: UploadPlan, path: Path, sha256: str, cache: HashCache) -> None:
    """After an upload by id: refuse (BadInputError) if the file changed while it was sent,
    else remember the hash the agent computed."""
    if not plan.upload_id:
        return
    try:
        after: Optional[FileIdentity] = FileIdentity.of(path)
    except OSError:
        after = None
    if after != plan.identity:
        cache.forget(plan.identity)
        raise BadInputError(f"{path} changed while it was being sent; run again",
                            hint="the agent stored what it received (sha256 "
                                 f"{sha256[:12]}), which may not be the file as it is now")
    cache.put(plan.identity, Entry(sha256=sha256, since_ns=plan.since_ns))


__all__ = ["CACHE_ENV", "Entry", "FileIdentity", "HashCache", "UploadPlan", "default_cache_path",
           "file_sha256", "finish_upload", "plan_upload"]
