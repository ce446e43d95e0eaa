"""One read of a file for every board it is uploaded to.

    shared = SharedFile(path, size, chunk_bytes=2 * MiB, window_chunks=8)
    session.upload(path, BlobKind.MODEL, sha256=sha, chunks=shared.chunks)   # on each board
    shared.bytes_read                  # what was read from the file, over every board

Each board's upload stream asks ``chunks(offset)`` for the file's bytes from where that board
starts (0, or the bytes it kept from a cut upload). The boards uploading together share a
*pass*: one sequential reading of the file whose last ``window_chunks`` chunks stay in memory.
A chunk is read once, by the first board to need it, and the others take it from the window;
the fastest board never waits for the others (it reads on). A board resuming a little ahead of
a pass (within the window) joins it and reads on to its offset. A board that falls more than
the window behind, or starts where no pass has or soon reads its chunk (a resume far ahead, a
board that connected late), starts a pass of its own from its offset, which later boards may
join; a stream reaching chunks another pass holds in its window moves over to that pass (so
boards starting at 0 after a board that resumed half-way read only the half it did not). So memory
stays bounded (at most ``window_chunks + 1`` chunks per pass, and no more passes than boards
uploading at once) and the slowest board costs the others nothing but the window; the file is
read once per pass: once when the boards upload together, more only for those that fell
behind or came late (``bytes_read`` and ``passes`` say how much).

A board whose stream ends early (failed, cancelled) leaves its pass; a pass that no board
reads any more is closed. A file that changed size since it was hashed is an error here (the
agent would refuse the bytes anyway: they do not hash to what was announced).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

from edgetune.host.errors import BadInputError

MiB = 1 << 20


class _Pass:
    """One sequential reading of the file: its descriptor, the next chunk to read (``head``),
    the chunks read last (at most the window), and how many streams read from it."""

    def __init__(self, fd: int, head: int) -> None:
        self.fd = fd
        self.head = head
        self.buffer: Dict[int, bytes] = {}
        self.members = 0
        self.reading = False

    def has(self, index: int, window: int) -> bool:
        """Whether the pass holds chunk ``index`` or reads it soon (within the window)."""
        return index in self.buffer or self.head <= index < self.head + window


class SharedFile:
    """``path`` (``size`` bytes, as hashed) read once for all the streams that send it."""

    def __init__(self, path: Path, size: int, *, chunk_bytes: int = 2 * MiB,
                 window_chunks: int = 8) -> None:
        if chunk_bytes < 1 or window_chunks < 1:
            raise ValueError("chunk_bytes and window_chunks must be positive")
        self.path = Path(path)
        self.size = size
        self.chunk_bytes = chunk_bytes
        self.window = window_chunks
        self.bytes_read = 0                 # read from the file, over every pass
        self.passes = 0                     # passes started
        self.max_buffered_bytes = 0         # the most held in memory at once, over all passes
        self._chunks = -(-size // chunk_bytes)
        self._cond = threading.Condition()
        self._passes: List[_Pass] = []
        self._closed = False

    def chunks(self, offset: int = 0) -> Iterator[bytes]:
        """The file's bytes from ``offset`` to its end, chunk by chunk (the first one from
        ``offset`` to the end of its chunk). Close the iterator when stopping early."""
        if not 0 <= offset <= self.size:
            raise ValueError(f"offset {offset} is outside {self.path} ({self.size} bytes)")
        return self._stream(offset)

    def _stream(self, offset: int) -> Iterator[bytes]:
        index, skip = divmod(offset, self.chunk_bytes)
        current: Optional[_Pass] = None
        try:
            while index < self._chunks:
                data, current = self._get(index, current)
                yield data[skip:] if skip else data
                skip = 0
                index += 1
        finally:
            with self._cond:
                self._leave(current)

    def close(self) -> None:
        """Close every pass still open (the streams reading them get an error)."""
        with self._cond:
            self._closed = True
            for p in list(self._passes):
                p.members = 0
                self._drop(p)

    # ------------------------------------------------------------------ under the lock
    def _get(self, index: int, current: Optional[_Pass]) -> Tuple[bytes, _Pass]:
        """Chunk ``index`` and the pass it came from: from the pass's window, else read by
        this stream (the chunk at the pass's head, and on up to ``index`` for a stream that
        joined ahead of the head: what it skips, the others need)."""
        with self._cond:
            while True:
                if self._closed:
                    raise BadInputError(f"the upload of {self.path} was stopped")
                if current is None or not current.has(index, self.window):
                    self._leave(current)    # fell behind its pass (or has none yet)
                    current = self._join(index)
                data = current.buffer.get(index)
                if data is None:            # another pass read it, or reads it now: move over
                    other = next((p for p in self._passes if p is not current and (
                        index in p.buffer or (p.reading and p.head == index))), None)
                    if other is not None:
                        other.members += 1
                        self._leave(current)
                        current = other
                        continue
                if data is not None:
                    return data, current
                if current.reading:
                    self._cond.wait()
                    continue
                current.reading = True
                at = current.head
                self._cond.release()
                data = b""
                try:
                    data = self._read(current.fd, at)
                finally:
                    self._cond.acquire()
                    current.reading = False
                    if data:
                        current.buffer[at] = data
                        current.head = at + 1
                        current.buffer.pop(at - self.window, None)
                        self.bytes_read += len(data)
                        held = sum(len(b) for p in self._passes for b in p.buffer.values())
                        self.max_buffered_bytes = max(self.max_buffered_bytes, held)
                    self._cond.notify_all()

    def _join(self, index: int) -> _Pass:
        """The pass that holds or reads soon chunk ``index``, else a new one starting there."""
        found = ([p for p in self._passes if index in p.buffer] or
                 [p for p in self._passes if p.has(index, self.window)])
        if found:
            chosen = max(found, key=lambda p: p.members)
        else:
            chosen = _Pass(os.open(self.path, os.O_RDONLY), index)
            self._passes.append(chosen)
            self.passes += 1
        chosen.members += 1
        return chosen

    def _leave(self, current: Optional[_Pass]) -> None:
        if current is None:
            return
        current.members -= 1
        self._prune()

    def _prune(self) -> None:
        """Close the passes nobody reads that no other stream can still use: a pass whose
        last stream ended keeps its window while a pass behind it may reach those chunks (a
        board that resumed ahead of the others, then finished)."""
        live = [p for p in self._passes if p.members > 0]
        for p in list(self._passes):
            if p.members > 0 or p.reading:
                continue
            last = max(p.buffer, default=-1)
            if not any(q.head <= last for q in live):
                self._drop(p)

    def _drop(self, p: _Pass) -> None:
        if p in self._passes:
            self._passes.remove(p)
            p.buffer.clear()
            os.close(p.fd)

    # ------------------------------------------------------------------ outside the lock
    def _read(self, fd: int, index: int) -> bytes:
        start = index * self.chunk_bytes
        want = min(self.chunk_bytes, self.size - start)
        parts = []
        got = 0
        while got < want:
            part = os.pread(fd, want - got, start + got)
            if not part:
                break
            parts.append(part)
            got += len(part)
        if got < want or (index == self._chunks - 1 and os.pread(fd, 1, self.size)):
            raise BadInputError(f"{self.path} changed while it was being uploaded (it was "
                                f"{self.size} bytes when hashed)",
                                hint="run the command again once the file is written")
        return parts[0] if len(parts) == 1 else b"".join(parts)
