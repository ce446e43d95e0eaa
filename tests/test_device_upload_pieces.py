"""UploadWriter hands a received chunk to the file in pieces of at most WRITE_PIECE_BYTES (one
2 MiB write() cost the kernel 2-3x the system time of 1 MiB pieces), and the stored blob is
still exactly what was sent."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any, List

import numpy as np

from edgetune.device.limits import Limits
from edgetune.device.store import BlobStore
from edgetune.device.upload import WRITE_PIECE_BYTES
from edgetune.protos.messages import BlobKind


class _RecordingFile:
    """The writer's real file, noting the length of every write()."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.writes: List[int] = []

    def write(self, data: Any) -> int:
        self.writes.append(len(data))
        return self.real.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_a_chunk_is_written_in_bounded_pieces(tmp_path: Path) -> None:
    buf = io.BytesIO()
    np.savez(buf, x=np.random.default_rng(0).integers(0, 255, (5, 1 << 20), dtype=np.uint8))
    data = buf.getvalue()
    sha256 = hashlib.sha256(data).hexdigest()
    store = BlobStore(tmp_path / "store", Limits())
    writer = store.begin_upload(BlobKind.DATASET, sha256, len(data), "x.npz")
    spy = _RecordingFile(writer._file)
    writer._file = spy
    chunk = 4 * WRITE_PIECE_BYTES + 123              # bigger than any client sends (2 MiB)
    for at in range(0, len(data), chunk):
        writer.write(data[at:at + chunk], at)
    info = writer.commit()
    assert info.sha256 == sha256
    assert store.path(BlobKind.DATASET, sha256).read_bytes() == data
    assert max(spy.writes) <= WRITE_PIECE_BYTES, spy.writes
    assert sum(spy.writes) == len(data)
    assert len(spy.writes) > len(data) // chunk      # a chunk took several writes
