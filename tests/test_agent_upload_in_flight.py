"""The bytes in flight per upload stay within ``[limits] max_upload_in_flight_bytes`` when the
store writes slower than the network delivers (issue 16, section 4).

A real agent (in-process, mutual TLS, port 0) with a small cap; a real client streaming a
4 MiB model in 64 KiB chunks as fast as it can. The store's writes are made slow by a real
mechanism: the upload's partial file is a FIFO the test planted at the name the agent writes
to (``partial/model-<sha256>.part``), so every write of the agent's writer blocks until the
test reads the pipe, and the test reads it slowly: a disk slower than the network, with the
test setting its speed. The agent reports, when an upload ends, the most bytes that waited
for its writer (its debug log); that high-water mark must reach the cap (so the writes really
were the bottleneck) and never pass it.

Without the byte cap the same upload queues 4 chunks (256 KiB, the chunk-count bound) for a
cap of 128 KiB, and this test fails.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Iterator, List

import pytest

from edgetune.device.limits import Limits
from edgetune.protos import agent_pb2 as pb
from tests.agent_fixtures import (mlp_model, sha256_hex, start_agent, stub, upload,
                                  upload_requests)

CAP = 128 << 10
CHUNK = 64 << 10
REPORT = re.compile(r"at most (\d+) bytes waited for the writer \(limit (\d+)\); "
                    r"receiving paused (\d+) times")

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")


@pytest.fixture
def agent(pki: Any, tmp_path: Path) -> Iterator[Any]:
    running = start_agent(pki, tmp_path / "store",
                          limits=Limits(max_upload_in_flight_bytes=CAP))
    try:
        yield running
    finally:
        running.stop()


def _read_some(fd: int, most: int) -> int:
    try:
        return len(os.read(fd, most))
    except BlockingIOError:
        return 0


def _drain_to_eof(fd: int, timeout: float) -> int:
    """Read until the writer closes its end; the bytes read."""
    total = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = os.read(fd, 1 << 20)
        except BlockingIOError:
            time.sleep(0.01)
            continue
        if not data:
            return total
        total += len(data)
    raise AssertionError(f"the agent's writer did not close the pipe within {timeout} s")


def _reports(records: List[logging.LogRecord]) -> List[re.Match]:
    found = []
    for record in records:
        match = REPORT.search(record.getMessage())
        if match:
            found.append(match)
    return found


def test_bytes_waiting_for_a_slow_store_stay_within_the_cap(
        agent: Any, pki: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="edgetune.agent.servicer")
    data = mlp_model(inputs=1024, hidden=1024, seed=16)     # 4 MiB of float32 weights
    size = len(data)
    assert size > 4 << 20
    sha = sha256_hex(data)
    fifo = Path(agent.config.store) / "partial" / f"model-{sha}.part"
    os.mkfifo(str(fifo), 0o600)
    reader = os.open(str(fifo), os.O_RDONLY | os.O_NONBLOCK)
    client = stub(agent.address, pki.host.identity)
    call = client.UploadBlob.future(upload_requests(pb.BLOB_KIND_MODEL, data, chunk=CHUNK),
                                    timeout=120)
    try:
        # The slow store: nothing read for a second (the writer blocks once the pipe's
        # 64 KiB are full), then 32 KiB every 50 ms: 640 KiB/s, far below what the
        # local connection delivers, and too slow to finish the upload in the time given.
        time.sleep(1.0)
        drained = 0
        until = time.monotonic() + 2.0
        while time.monotonic() < until:
            drained += _read_some(reader, 32 << 10)
            time.sleep(0.05)
        assert 0 < drained < size // 2, drained
        assert not call.done(), "the upload ended while the store was slow"
        call.cancel()                      # the client goes away mid-upload
        drained += _drain_to_eof(reader, timeout=30)   # the running write finishes, then close
    finally:
        call.cancel()
        os.close(reader)
    assert drained < size                  # it never got to the end

    deadline = time.monotonic() + 10
    while not _reports(caplog.records) and time.monotonic() < deadline:
        time.sleep(0.05)
    reports = _reports(caplog.records)
    assert len(reports) == 1, [r.getMessage() for r in caplog.records]
    peak, limit, paused = (int(x) for x in reports[0].groups())
    assert limit == CAP
    assert paused >= 1                      # the cap held the stream back at least once
    assert CAP - CHUNK < peak <= CAP, (peak, CAP)

    # The agent let go of the upload: once the FIFO is gone the same upload is stored.
    fifo.unlink()
    reply = upload(client, pb.BLOB_KIND_MODEL, data, chunk=CHUNK, timeout=60)
    assert reply.blob.sha256 == sha and reply.received_bytes == size
