"""The agent's write path: hashing in a thread of its own vs in the writing thread.

    python bench/upload_pipeline.py [--mib 256] [--repeat 5] [--json]

Feeds a ``edgetune.device.store.BlobStore`` upload (``UploadWriter``: write to the partial file, sha256,
background fsyncs, commit with its fsync, hash check and rename) 1 MiB chunks from memory as
fast as it takes them, with no network in the way: what the agent's writer thread can absorb.
Two ways, alternating in each round, each on a fresh upload of the same bytes:
- background hash (what the agent does): the chunk is written, and hashed by the upload's own
  hash thread (``edgetune.device.upload.BackgroundHash``, up to ``HASH_QUEUE_DEPTH`` chunks queued);
- inline hash (the agent before): written, then hashed, in the same thread.
Prints MiB/s of each (median of the rounds) and the ratio background/inline (target >= 1.2 on
two or more cores: the two stages overlap; on one core there is nothing to gain). This is the
stage the agent's network receive feeds: on a board where sha256 is slow (no SHA
instructions) or the link is fast, it is the one that limits an upload.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import check, finish, log_progress, machine, median  # noqa: E402

CHUNK = 1 << 20


def one_upload(store, chunks: list[bytes], sha256: str, depth: int) -> float:
    """Seconds to write, hash and commit ``chunks`` as a new dataset blob (deleted after)."""
    import edgetune.device.upload as upload
    from edgetune.protos.messages import BlobKind

    size = sum(len(c) for c in chunks)
    saved, upload.HASH_QUEUE_DEPTH = upload.HASH_QUEUE_DEPTH, depth
    try:
        start = time.perf_counter()
        writer = store.begin_upload(BlobKind.DATASET, sha256, size, "bench.npz")
        for chunk in chunks:
            writer.write(chunk)
        info = writer.commit()
        elapsed = time.perf_counter() - start
    finally:
        upload.HASH_QUEUE_DEPTH = saved
    assert info.sha256 == sha256, info
    store.delete(BlobKind.DATASET, sha256)
    return elapsed


def make_chunks(mib: int) -> tuple[list[bytes], str]:
    """A valid dataset .npz of about ``mib`` MiB as 1 MiB chunks, and its sha256."""
    import io

    import numpy as np

    buf = io.BytesIO()
    arr = np.random.default_rng(0).integers(0, 255, size=(mib, 1 << 20), dtype=np.uint8)
    np.savez(buf, input=arr)
    data = buf.getvalue()
    return [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)], hashlib.sha256(data).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=256, help="size of the upload (default 256)")
    parser.add_argument("--repeat", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if args.mib < 1 or args.repeat < 1:
        parser.error("--mib and --repeat must be at least 1")

    from edgetune.device.limits import Limits
    from edgetune.device.store import BlobStore
    from edgetune.device.upload import HASH_QUEUE_DEPTH

    chunks, sha256 = make_chunks(args.mib)
    size_mib = sum(len(c) for c in chunks) / (1 << 20)
    ways = {"background_hash": HASH_QUEUE_DEPTH, "inline_hash": 0}
    times: dict[str, list[float]] = {k: [] for k in ways}
    with tempfile.TemporaryDirectory(prefix="edgetune-bench-") as tmp:
        limits = Limits(max_dataset_bytes=2 * len(chunks) * CHUNK + (64 << 20))
        store = BlobStore(Path(tmp) / "store", limits)
        for i in range(args.repeat):
            order = list(ways) if i % 2 == 0 else list(reversed(ways))
            for way in order:
                os.sync()                       # untimed: no dirty pages left by the last one
                time.sleep(0.2)
                times[way].append(one_upload(store, chunks, sha256, ways[way]))
            log_progress(args.json, f"round {i + 1}/{args.repeat}: " + ", ".join(
                f"{k} {size_mib / v[-1]:.0f} MiB/s" for k, v in times.items()))
    rates = {k: size_mib / median(v) for k, v in times.items()}
    ratio = rates["background_hash"] / rates["inline_hash"]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    checks = [check("background / inline hash", ratio, ">=", 1.2)] if (cores or 1) >= 2 else []
    result = {
        "benchmark": "upload_pipeline", "size_mib": round(size_mib, 1), "repeat": args.repeat,
        "hash_queue_depth": HASH_QUEUE_DEPTH,
        "mib_per_s": {k: round(v, 1) for k, v in rates.items()},
        "seconds_per_round": {k: [round(t, 3) for t in v] for k, v in times.items()},
        "ratio_background_vs_inline": round(ratio, 3), "checks": checks, "machine": machine(),
    }
    lines = [f"agent write path, {result['size_mib']} MiB from memory into the store "
             f"(write + sha256 + fsync + commit), median of {args.repeat} rounds:"]
    lines += [f"  {k:<16} {v:8.1f} MiB/s   rounds (s): {result['seconds_per_round'][k]}"
              for k, v in result["mib_per_s"].items()]
    if not checks:
        lines.append("  one core available: the two stages cannot overlap; no target checked")
    return finish(result, args.json, lines)


if __name__ == "__main__":
    sys.exit(main())
