"""Opening files in the agent's store without following symbolic links, with private modes.

The store holds what the agent writes (blobs, partial uploads, side files, ``jobs.db``,
``leases.json``). Everything in it is created ``0600`` in ``0700`` folders: models, datasets
and measurement results are nobody else's business on a shared board. Every file in it is
opened with ``O_NOFOLLOW``: a symbolic link planted there (by another local user before the
folder was private, or by a restored backup) is refused instead of being followed, so the
agent, often root on a board, can never be made to overwrite or serve a file elsewhere.
Folders are checked once, when the store opens (``check_private_dir``): a store folder that
is a symbolic link is refused.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import IO, Any, Optional, Union

FILE_MODE = 0o600
DIR_MODE = 0o700
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
CLOEXEC = getattr(os, "O_CLOEXEC", 0)
NONBLOCK = getattr(os, "O_NONBLOCK", 0)
FD_FOLDER = "/proc/self/fd"         # Linux: opening FD_FOLDER/N opens the file fd N holds

PathLike = Union[str, Path]


class SymlinkRefused(OSError):
    """A path in the store is a symbolic link (errno ELOOP)."""


def open_fd(path: PathLike, flags: int, mode: int = FILE_MODE) -> int:
    """``os.open`` with ``O_NOFOLLOW``; a symbolic link raises SymlinkRefused."""
    try:
        return os.open(str(path), flags | NOFOLLOW | CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SymlinkRefused(errno.ELOOP, "refusing to follow a symbolic link in the store",
                                 str(path)) from None
        raise


def open_file(path: PathLike, how: str, *, buffering: int = -1,
              encoding: Any = None) -> IO[Any]:
    """``open`` for the store: ``how`` is "rb", "r" (text), "wb"/"w" (create or truncate,
    0600) or "r+b" (read and write an existing file); never through a symbolic link."""
    flags = {"rb": os.O_RDONLY, "r": os.O_RDONLY, "r+b": os.O_RDWR,
             "wb": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
             "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC}[how]
    fd = open_fd(path, flags)
    try:
        if "b" in how:
            return os.fdopen(fd, how, buffering=buffering)
        return os.fdopen(fd, how, buffering=buffering, encoding=encoding or "utf-8")
    except BaseException:
        os.close(fd)
        raise


def is_regular(path: PathLike) -> bool:
    """True for a regular file that is not a symbolic link."""
    try:
        return stat.S_ISREG(os.lstat(str(path)).st_mode)
    except OSError:
        return False


def regular_stat(path: PathLike) -> os.stat_result:
    """``lstat`` of a regular file; FileNotFoundError for anything else (a symbolic link, a
    folder), so a planted link reads as absent."""
    st = os.lstat(str(path))
    if not stat.S_ISREG(st.st_mode):
        raise FileNotFoundError(errno.ENOENT, "not a regular file", str(path))
    return st


class OpenedFile:
    """A regular file of the store, opened once for reading (``open_regular``), so that what
    reads it reads the very file that was checked: its name is never resolved again.

    ``file`` is a binary file object over it (for numpy's ``np.load`` and mmap). ``source()``
    is for libraries that open by path (onnxruntime): ``/proc/self/fd/N`` where that names this
    very file (Linux; opening it opens the file held, even if its name in the store was
    replaced since), else the file's bytes (read at each call: only where there is no
    ``/proc``). Close it (or use ``with``): it holds a file descriptor."""

    def __init__(self, file: "IO[bytes]", path: str) -> None:
        self.file = file
        self.path = path                    # its name in the store, for messages only
        self.size = os.fstat(file.fileno()).st_size

    def fileno(self) -> int:
        return self.file.fileno()

    def fd_path(self) -> Optional[str]:
        """``/proc/self/fd/N`` if it opens this very file here, else None."""
        fd = self.file.fileno()
        path = f"{FD_FOLDER}/{fd}"
        try:
            named, held = os.stat(path), os.fstat(fd)
        except OSError:
            return None
        if (named.st_dev, named.st_ino) != (held.st_dev, held.st_ino):
            return None                     # not a procfs that hands back the file held
        return path

    def source(self) -> Union[str, bytes]:
        """What to hand a library that takes a path or bytes: see the class docstring."""
        return self.fd_path() or self.read_bytes()

    def read_bytes(self) -> bytes:
        """The whole file, from its start."""
        self.file.seek(0)
        return self.file.read()

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> "OpenedFile":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_regular(path: PathLike) -> OpenedFile:
    """Open ``path`` for reading without following a symbolic link, and make sure what was
    opened is a regular file (checked on the descriptor, not the name: ``fstat``).
    FileNotFoundError for anything else (a link, a folder, a FIFO, which O_NONBLOCK keeps from
    blocking the open), so a planted one reads as absent."""
    try:
        fd = open_fd(path, os.O_RDONLY | NONBLOCK)
    except SymlinkRefused:
        raise FileNotFoundError(errno.ENOENT, "a symbolic link, not a stored file",
                                str(path)) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FileNotFoundError(errno.ENOENT, "not a regular file", str(path))
        if NONBLOCK and hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        file = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    try:
        return OpenedFile(file, str(path))
    except BaseException:
        file.close()
        raise


def check_private_dir(path: PathLike) -> None:
    """Make ``path`` a real folder with mode 0700 (created if missing); SymlinkRefused when
    it is a symbolic link, NotADirectoryError when it is something else."""
    path = Path(path)
    try:
        os.mkdir(str(path), DIR_MODE)
    except FileExistsError:
        pass
    st = os.lstat(str(path))
    if stat.S_ISLNK(st.st_mode):
        raise SymlinkRefused(errno.ELOOP, "the store's folder is a symbolic link; make it a real "
                             "folder", str(path))
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(path))
    if stat.S_IMODE(st.st_mode) != DIR_MODE:
        os.chmod(str(path), DIR_MODE)


def make_private(path: PathLike) -> None:
    """chmod 0600 a regular file (a file an older agent wrote with the umask's mode); links
    and missing files are left alone."""
    try:
        st = os.lstat(str(path))
    except FileNotFoundError:
        return
    if stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) != FILE_MODE:
        os.chmod(str(path), FILE_MODE)




def fsync_dir(path: PathLike) -> None:
    """fsync a folder, so a file renamed into it survives a power loss (best effort where the
    platform has no directory descriptors)."""
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


__all__ = ["DIR_MODE", "FILE_MODE", "OpenedFile", "SymlinkRefused", "check_private_dir",
           "fsync_dir", "is_regular", "make_private", "open_fd", "open_file", "open_regular",
           "regular_stat"]
