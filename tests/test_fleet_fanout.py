"""The shared reader of a fleet upload (host/fleet/fanout.py), over a real file and real
threads: boards reading together cost one read of the file; a board resuming at an offset gets
exactly the bytes from there; a board that falls behind neither holds the others back nor
grows the memory held (it reads on its own); a board that stops early leaves; a file that
changed since it was hashed is an error."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Iterator, List

import pytest

from edgetune.host.errors import BadInputError
from edgetune.host.fleet.fanout import SharedFile

CHUNK = 64 * 1024


@pytest.fixture()
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.bin"
    path.write_bytes(os.urandom(CHUNK * 20 + 123))         # 21 chunks, the last one short
    return path


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _drain(chunks: Iterator[bytes], out: List[bytes], start: threading.Event) -> None:
    start.wait(10)
    out.extend(chunks)


def test_boards_reading_together_read_the_file_once(data_file: Path) -> None:
    content = data_file.read_bytes()
    # A window as large as the file: threads scheduled unevenly cannot fall out of the pass.
    shared = SharedFile(data_file, len(content), chunk_bytes=CHUNK, window_chunks=21)
    fds = _open_fds()
    start = threading.Event()
    outs: List[List[bytes]] = [[] for _ in range(6)]
    streams = [shared.chunks(0) for _ in outs]
    for stream in streams:                  # every board at its first chunk: one pass
        next(stream)
    threads = [threading.Thread(target=_drain, args=(s, o, start)) for s, o in zip(streams, outs)]
    for t in threads:
        t.start()
    start.set()
    for t in threads:
        t.join(30)
    for out in outs:
        assert content[:CHUNK] + b"".join(out) == content
    assert shared.bytes_read == len(content) and shared.passes == 1
    assert shared.max_buffered_bytes <= 21 * CHUNK          # the window, at most
    assert _open_fds() == fds                               # the pass was closed


def test_a_board_resuming_at_an_offset_gets_the_bytes_from_there(data_file: Path) -> None:
    content = data_file.read_bytes()
    shared = SharedFile(data_file, len(content), chunk_bytes=CHUNK, window_chunks=4)
    leader = shared.chunks(0)
    first = [next(leader) for _ in range(3)]                # chunks 0-2 read, 3 is next
    for offset in (3 * CHUNK + 5, 2 * CHUNK + 17, len(content) - 1, len(content)):
        assert b"".join(shared.chunks(offset)) == content[offset:], offset
    assert b"".join(first) + b"".join(leader) == content
    with pytest.raises(ValueError):
        shared.chunks(len(content) + 1)


def test_a_slow_board_holds_back_neither_the_others_nor_memory(data_file: Path) -> None:
    content = data_file.read_bytes()
    shared = SharedFile(data_file, len(content), chunk_bytes=CHUNK, window_chunks=3)
    slow = shared.chunks(0)
    got_slow = [next(slow)]                 # then it stalls (a board on a slow link)
    fast_out: List[bytes] = []
    start = threading.Event()
    fast = threading.Thread(target=_drain, args=(shared.chunks(0), fast_out, start))
    fast.start()
    start.set()
    fast.join(10)
    assert not fast.is_alive(), "the fast board waited for the slow one"
    assert b"".join(fast_out) == content
    assert shared.max_buffered_bytes <= 3 * CHUNK
    got_slow.extend(slow)                   # it resumes: from its own pass, same bytes
    assert b"".join(got_slow) == content
    # The fast board's pass read the file once; the slow one re-read what it fell behind on.
    assert shared.passes == 2
    assert len(content) < shared.bytes_read < 2 * len(content)


def test_a_board_that_stops_early_leaves_and_the_others_go_on(data_file: Path) -> None:
    content = data_file.read_bytes()
    shared = SharedFile(data_file, len(content), chunk_bytes=CHUNK, window_chunks=4)
    fds = _open_fds()
    failing, going = shared.chunks(0), shared.chunks(0)
    assert next(failing) == next(going) == content[:CHUNK]
    next(failing)
    failing.close()                         # its upload failed: grpc dropped the stream
    assert content[:CHUNK] + b"".join(going) == content
    assert shared.bytes_read == len(content)
    assert _open_fds() == fds


def test_a_file_that_changed_since_it_was_hashed_is_refused(data_file: Path) -> None:
    size = data_file.stat().st_size
    shared = SharedFile(data_file, size, chunk_bytes=CHUNK, window_chunks=4)
    with data_file.open("r+b") as fh:
        fh.truncate(size - 1000)
    with pytest.raises(BadInputError, match="changed while it was being uploaded"):
        b"".join(shared.chunks(0))
    data_file.write_bytes(os.urandom(size + 10))            # longer now
    with pytest.raises(BadInputError, match="changed while"):
        b"".join(SharedFile(data_file, size, chunk_bytes=CHUNK).chunks(0))


def test_close_ends_the_streams_still_reading(data_file: Path) -> None:
    content = data_file.read_bytes()
    shared = SharedFile(data_file, len(content), chunk_bytes=CHUNK, window_chunks=4)
    fds = _open_fds()
    stream = shared.chunks(0)
    next(stream)
    shared.close()                          # the run ended (Ctrl-C)
    with pytest.raises(BadInputError, match="stopped"):
        next(stream)
    assert _open_fds() == fds


def test_boards_starting_behind_a_resumed_one_take_its_chunks(data_file: Path) -> None:
    """A board resuming half-way starts first; boards from 0 come later and, reaching what it
    read, take those chunks from its window instead of reading them again."""
    content = data_file.read_bytes()
    shared = SharedFile(data_file, len(content), chunk_bytes=CHUNK, window_chunks=21)
    offset = 10 * CHUNK + 7
    resumed = shared.chunks(offset)
    first = [next(resumed) for _ in range(5)]               # chunks 10-14
    fresh = shared.chunks(0)
    assert b"".join(fresh) == content
    assert b"".join(first) + b"".join(resumed) == content[offset:]
    assert shared.bytes_read == len(content) and shared.passes == 2
