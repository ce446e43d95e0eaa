"""Files to the board over SFTP: resumable, each file verified by sha256 on the board.

A wheel goes to ``NAME.part`` and is renamed to ``NAME`` only once the board's own sha256 of
it matches. An interrupted upload resumes from the bytes already there when their hash matches
the same prefix of the local file. Small files (configuration, certificates) are written to a
temporary name beside their target, their mode set before a byte is written, then renamed.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from edgetune.host.deploy.ssh import RemoteError, SshSession
from edgetune.host.deploy.wheelhouse import Wheelhouse

log = logging.getLogger(__name__)

CHUNK = 1 << 20


@dataclass(frozen=True)
class UploadReport:
    sent_files: int
    sent_bytes: int
    resumed_files: int
    kept_files: int


def _prefix_sha256(path: Path, size: int) -> str:
    h = hashlib.sha256()
    left = size
    with path.open("rb") as fh:
        while left > 0:
            block = fh.read(min(CHUNK, left))
            if not block:
                break
            h.update(block)
            left -= len(block)
    return h.hexdigest()


def upload_wheelhouse(session: SshSession, house: Wheelhouse, remote_dir: str,
                      progress: Optional[Callable[[str, int, int], None]] = None) -> UploadReport:
    """Make ``remote_dir`` hold every wheel of ``house`` (other files there are left alone)."""
    names = [w.name for w in house.wheels]
    paths = [posixpath.join(remote_dir, n) for n in names]
    there = session.boardctl("sha256", *paths, *(p + ".part" for p in paths))
    sent = resumed = kept = 0
    sent_bytes = 0
    todo: List[str] = []
    for wheel, path in zip(house.wheels, paths):
        size, digest = there[path]
        if digest == wheel.sha256:
            kept += 1
            continue
        todo.append(path)
        local = house.directory / wheel.name
        part_size, part_digest = there[path + ".part"]
        offset = 0
        if part_digest and 0 < part_size <= wheel.size and \
                _prefix_sha256(local, part_size) == part_digest:
            offset = part_size
            resumed += 1
        sent_bytes += _send(session, local, path + ".part", offset, wheel.size, progress)
        sent += 1
    if todo:
        check = session.boardctl("sha256", *(p + ".part" for p in todo))
        by_path = {posixpath.join(remote_dir, w.name): w for w in house.wheels}
        for path in todo:
            size, digest = check[path + ".part"]
            if digest != by_path[path].sha256:
                session.sftp.remove(path + ".part")
                raise RemoteError(f"{posixpath.basename(path)} arrived on the board with sha256 "
                                  f"{digest}, not {by_path[path].sha256}: removed it; run again")
            session.sftp.posix_rename(path + ".part", path)
    return UploadReport(sent, sent_bytes, resumed, kept)


def _send(session: SshSession, local: Path, remote: str, offset: int, total: int,
          progress: Optional[Callable[[str, int, int], None]]) -> int:
    sftp = session.sftp
    mode = "ab" if offset else "wb"
    with local.open("rb") as src, sftp.open(remote, mode) as dst:
        dst.set_pipelined(True)
        src.seek(offset)
        done = offset
        for block in iter(lambda: src.read(CHUNK), b""):
            dst.write(block)
            done += len(block)
            if progress:
                progress(local.name, done, total)
    return total - offset


def write_file(session: SshSession, remote: str, data: bytes, mode: int) -> None:
    """``data`` to ``remote``: mode set on the empty temp file first, then renamed over."""
    sftp = session.sftp
    tmp = f"{remote}.edgetune-tmp"
    with sftp.open(tmp, "wb") as fh:
        fh.chmod(mode)
        fh.write(data)
    sftp.posix_rename(tmp, remote)


def read_text(session: SshSession, remote: str) -> Optional[str]:
    try:
        with session.sftp.open(remote, "rb") as fh:
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return None


def digests(session: SshSession, paths: Sequence[str]) -> Dict[str, Optional[str]]:
    there = session.boardctl("sha256", *paths)
    return {p: there[p][1] for p in paths}
