"""The agent keeps upload-sized buffers in the heap (device/allocator.py): a real agent process
takes few page faults per uploaded byte once warm, and a user's own malloc settings win."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from edgetune.device.allocator import _is_glibc, keep_upload_buffers_in_heap
from tests.host_fixtures import start_agent

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _minor_faults(pid: int) -> int:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        return int(f.read().rsplit(")", 1)[1].split()[7])


def test_a_users_malloc_settings_are_left_alone() -> None:
    assert keep_upload_buffers_in_heap({"GLIBC_TUNABLES": "glibc.malloc.arena_max=1"}) is False
    assert keep_upload_buffers_in_heap({"MALLOC_ARENA_MAX_": "2"}) is False


@pytest.mark.skipif(not _is_glibc() or not os.path.exists("/proc/self/stat"),
                    reason="glibc's mallopt and /proc are Linux/glibc only")
def test_warm_uploads_take_few_page_faults(pki: Any, tmp_path: Path) -> None:
    import numpy as np

    from edgetune.host.client import AgentClient
    from edgetune.protos.messages import BlobKind

    assert keep_upload_buffers_in_heap({}) is True
    agent = start_agent(pki, tmp_path / "agent")
    try:
        pid = agent.agent.process.pid
        faults = []
        for i in range(3):      # the first uploads warm the heap up; the last is measured
            src = tmp_path / f"blob{i}.npz"
            np.savez(src, x=np.random.default_rng(i).integers(0, 255, (32, 1 << 20),
                                                             dtype=np.uint8))
            with AgentClient(agent.address, pki.host.identity) as client:
                before = _minor_faults(pid)
                client.upload(src, BlobKind.DATASET)
                faults.append(_minor_faults(pid) - before)
                for blob in client.list_blobs(BlobKind.DATASET):
                    client.delete_blob(BlobKind.DATASET, blob.sha256)
    finally:
        agent.agent.stop()
    pages = src.stat().st_size // PAGE
    # each 2 MiB message in fresh mmapped buffers faulted in ~0.7 pages per page received
    # (plus the page cache's own); buffers reused from the heap leave a few per cent
    assert faults[-1] < 0.3 * pages, (faults, pages)
