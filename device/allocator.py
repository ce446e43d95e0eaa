"""The agent's C allocator settings: keep upload-sized buffers in the heap.

An upload arrives as 2 MiB messages. grpcio copies each into fresh buffers (slices, a
bytearray, the final ``bytes``), allocated and freed on different threads. glibc's malloc
serves blocks of that size with their own ``mmap`` and returns them with ``munmap`` (its
threshold adapts, but not reliably across threads and arenas), so every message costs the
kernel hundreds of page faults and zeroed pages: on a board held to a quarter of one core
(bench/upload_links.py, ``1gbit-weak``) that kernel time was a fifth of the upload's time.
With the thresholds fixed, freed buffers are reused from the heap, and at most
``TRIM_THRESHOLD`` of free heap is kept from the system.

Only glibc has ``mallopt`` with these meanings; elsewhere (musl, macOS) nothing changes. A
user who sets ``GLIBC_TUNABLES`` or ``MALLOC_*_`` variables keeps their own settings.
"""

from __future__ import annotations

import ctypes
import logging
import os
from typing import Mapping, Optional

log = logging.getLogger("edgetune.agent.allocator")

M_TRIM_THRESHOLD = -1            # glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 8 << 20         # blocks below this come from the heap (uploads use 2-4 MiB)
TRIM_THRESHOLD = 32 << 20        # free heap above this goes back to the system


def _user_settings(env: Mapping[str, str]) -> Optional[str]:
    for key in env:
        if key == "GLIBC_TUNABLES" or (key.startswith("MALLOC_") and key.endswith("_")):
            return key
    return None


def keep_upload_buffers_in_heap(env: Optional[Mapping[str, str]] = None) -> bool:
    """Set glibc's mmap and trim thresholds for the agent's process; True when set. Call once,
    early in ``serve``."""
    env = os.environ if env is None else env
    own = _user_settings(env)
    if own is not None:
        log.debug("malloc settings left to %s", own)
        return False
    if not _is_glibc():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    ok = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok
    if ok:
        log.debug("malloc: mmap threshold %d MiB, trim threshold %d MiB",
                  MMAP_THRESHOLD >> 20, TRIM_THRESHOLD >> 20)
    return ok


def _is_glibc() -> bool:
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (AttributeError, ValueError, OSError):
        return False
