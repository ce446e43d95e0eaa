"""Uploads by id (the file streamed without hashing it first) and the persistent hash cache,
against a real agent subprocess over real mutual TLS."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator, List, Tuple

import grpc
import numpy as np
import pytest

import edgetune.host.client
from edgetune.host.client import AgentClient, ClientSettings
from edgetune.host.errors import BadInputError, EdgetuneError
from edgetune.host.hashcache import RACY_NS, Entry, FileIdentity, HashCache
from edgetune.protos import agent_pb2 as pb
from edgetune.protos import agent_pb2_grpc
from edgetune.protos.messages import BlobKind
from tests.agent_fixtures import (TIMEOUT, assert_blobs_named_by_content, channel, mlp_model,
                                  npz_bytes)
from tests.host_fixtures import (RunningAgent, local_agent, retry_busy,  # noqa: F401
                                 settled_partial)

MiB = 1 << 20


def aged(path: Path) -> Path:
    """Back-date ``path``'s mtime so the hash cache trusts it (see edgetune.host.hashcache: a file
    written within RACY_NS of being read is never cached)."""
    past = time.time_ns() - 10 * RACY_NS
    os.utime(path, ns=(past, past))
    return path


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return aged(path)


def dataset(seed: int, mib: float = 0.25) -> bytes:
    rng = np.random.default_rng(seed)
    return npz_bytes(x=rng.integers(0, 255, size=(int(mib * 1024), 1024), dtype=np.uint8))


def settings(tmp_path: Path, **kw: Any) -> ClientSettings:
    values: dict = dict(hash_first_below_bytes=1, hash_cache=tmp_path / "cache" / "hashes.json",
                        upload_chunk_bytes=64 * 1024)
    values.update(kw)
    return ClientSettings(**values)


@pytest.fixture()
def hashes(monkeypatch: pytest.MonkeyPatch) -> List[Path]:
    """The files the client hashes up front (``edgetune.host.client.file_sha256`` calls)."""
    calls: List[Path] = []
    real = edgetune.host.client.file_sha256

    def counting(path: Path, *args: Any) -> Tuple[str, int]:
        calls.append(Path(path))
        return real(path, *args)

    monkeypatch.setattr(edgetune.host.client, "file_sha256", counting)
    return calls


@pytest.fixture()
def connect(local_agent: RunningAgent, tmp_path: Path) -> Iterator[Callable[..., AgentClient]]:
    clients: List[AgentClient] = []

    def make(**kw: Any) -> AgentClient:
        c = AgentClient(local_agent.address, local_agent.pki.host.identity,
                        settings=settings(tmp_path, **kw))
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()


def partials(store: Path, pattern: str = "*-u-*") -> List[str]:
    return sorted(p.name for p in (store / "partial").glob(pattern))


def cache_entries(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "cache" / "hashes.json").read_text())["entries"]


def test_streamed_upload_stores_the_right_sha_without_hashing_first(
        connect: Any, local_agent: RunningAgent, tmp_path: Path, hashes: List[Path]) -> None:
    data = dataset(seed=11)
    path = write(tmp_path / "d.npz", data)
    outcome = connect().upload(path, BlobKind.DATASET)
    assert hashes == []                                       # no pass over the file up front
    assert outcome.blob.sha256 == hashlib.sha256(data).hexdigest()
    assert outcome.sent_bytes == len(data) and not outcome.already_present
    assert outcome.resumed_from == 0 and outcome.blob.name == "d.npz"
    stored = local_agent.store / "datasets" / f"{outcome.blob.sha256}.npz"
    assert stored.read_bytes() == data
    assert partials(local_agent.store) == []
    # The agent's hash is remembered for this file: a later upload is by hash, sends nothing.
    [entry] = cache_entries(tmp_path).values()
    assert entry["sha256"] == outcome.blob.sha256 and entry["upload_id"] == ""


def test_cache_hit_sends_nothing_and_hashes_nothing(connect: Any, tmp_path: Path,
                                                    hashes: List[Path]) -> None:
    path = write(tmp_path / "m.onnx", mlp_model(seed=12))
    client = connect(hash_first_below_bytes=64 * MiB)         # small file: hashed first
    first = client.upload(path, BlobKind.MODEL)
    assert len(hashes) == 1 and first.sent_bytes == path.stat().st_size
    second = connect(hash_first_below_bytes=64 * MiB).upload(path, BlobKind.MODEL)
    assert len(hashes) == 1                                   # the cached hash was used
    assert second.already_present and second.sent_bytes == 0
    assert second.blob.sha256 == first.blob.sha256


def test_a_file_just_written_is_not_cached(connect: Any, tmp_path: Path,
                                           hashes: List[Path]) -> None:
    path = tmp_path / "fresh.onnx"
    path.write_bytes(mlp_model(seed=13))                      # mtime: now (racy)
    client = connect(hash_first_below_bytes=64 * MiB)
    client.upload(path, BlobKind.MODEL)
    client.upload(path, BlobKind.MODEL)
    assert len(hashes) == 2


def test_content_stored_already_is_discarded_after_streaming(
        connect: Any, local_agent: RunningAgent, tmp_path: Path, hashes: List[Path]) -> None:
    data = dataset(seed=14)
    by_hash = connect(hash_first_below_bytes=64 * MiB).upload(write(tmp_path / "a.npz", data),
                                                              BlobKind.DATASET)
    copy = write(tmp_path / "copy.npz", data)                 # another file, not in the cache
    outcome = connect().upload(copy, BlobKind.DATASET, name="copy")
    assert len(hashes) == 1                                   # only the first, by hash
    assert outcome.already_present and outcome.sent_bytes == len(data)
    assert outcome.blob.sha256 == by_hash.blob.sha256
    assert outcome.blob.name == "a.npz"                       # the stored blob's info
    sha = by_hash.blob.sha256
    assert [p.name for p in (local_agent.store / "datasets").glob(f"{sha}*")] \
        == sorted([f"{sha}.json", f"{sha}.npz"])
    assert partials(local_agent.store) == []


def test_interrupted_streamed_upload_resumes_by_upload_id(
        connect: Any, local_agent: RunningAgent, tmp_path: Path, hashes: List[Path]) -> None:
    data = dataset(seed=15, mib=16)      # big enough that bytes reach the agent before the stop
    path = write(tmp_path / "big.npz", data)

    class Stop(Exception):
        pass

    def stop_after_half(done: int, total: int) -> None:
        if done >= total // 2:
            raise Stop()

    client = connect(upload_chunk_bytes=256 * 1024)
    with pytest.raises(Stop):
        client.upload(path, BlobKind.DATASET, progress=stop_after_half)
    [entry] = cache_entries(tmp_path).values()
    upload_id = entry["upload_id"]
    assert len(upload_id) == 32 and entry["sha256"] == ""
    committed = settled_partial(client, BlobKind.DATASET, len(data), upload_id=upload_id)
    assert 0 < committed < len(data)
    assert partials(local_agent.store, "*.part") == [f"dataset-u-{upload_id}.part"]

    outcome = retry_busy(lambda: connect().upload(path, BlobKind.DATASET))
    assert hashes == []
    assert outcome.resumed_from == committed
    assert outcome.sent_bytes == len(data) - committed < len(data)
    assert outcome.blob.sha256 == hashlib.sha256(data).hexdigest()
    assert (local_agent.store / "datasets" / f"{outcome.blob.sha256}.npz").read_bytes() == data
    assert partials(local_agent.store) == []
    [entry] = cache_entries(tmp_path).values()
    assert entry["sha256"] == outcome.blob.sha256 and entry["upload_id"] == ""
    assert assert_blobs_named_by_content(local_agent.store) >= 1


def test_file_changed_while_streaming_is_refused_and_not_cached(
        connect: Any, tmp_path: Path, hashes: List[Path]) -> None:
    data = dataset(seed=16, mib=1)
    path = write(tmp_path / "moving.npz", data)
    touched: List[bool] = []

    def edit_once(done: int, total: int) -> None:
        if done and not touched:                  # same size, new content and mtime
            touched.append(True)
            with path.open("r+b") as f:
                f.seek(len(data) // 2)            # inside the array, not yet sent
                f.write(b"0123456789")

    with pytest.raises(BadInputError, match="changed while it was being sent; run again"):
        connect().upload(path, BlobKind.DATASET, progress=edit_once)
    assert touched
    assert cache_entries(tmp_path) == {}
    aged(path)
    again = connect().upload(path, BlobKind.DATASET)          # as the message says
    assert again.blob.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert hashes == []


@pytest.mark.parametrize("upload_id", ["../x", "0" * 31, "0" * 33, "A" * 32,
                                       "../" + "0" * 29, "0" * 31 + "/"])
def test_bad_upload_id_is_invalid_argument(local_agent: RunningAgent, upload_id: str) -> None:
    ch = channel(local_agent.address, local_agent.pki.host.identity)
    try:
        stub = agent_pb2_grpc.AgentStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.GetUploadStatus(pb.GetUploadStatusRequest(
                kind=pb.BLOB_KIND_MODEL, size_bytes=10, upload_id=upload_id), timeout=TIMEOUT)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "upload_id must be 32 lowercase hexadecimal" in info.value.details()

        def requests() -> Iterator[pb.UploadBlobRequest]:
            yield pb.UploadBlobRequest(header=pb.UploadHeader(
                kind=pb.BLOB_KIND_MODEL, size_bytes=10, upload_id=upload_id))
            yield pb.UploadBlobRequest(data=b"0123456789")

        with pytest.raises(grpc.RpcError) as info:
            stub.UploadBlob(requests(), timeout=TIMEOUT)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "upload_id" in info.value.details()
    finally:
        ch.close()
    assert partials(local_agent.store, "*") == []
    assert not (local_agent.store / "x.part").exists()


def test_announced_sha_is_checked_for_an_upload_by_id(local_agent: RunningAgent) -> None:
    data = dataset(seed=17)
    ch = channel(local_agent.address, local_agent.pki.host.identity)
    try:
        stub = agent_pb2_grpc.AgentStub(ch)
        header = pb.UploadHeader(kind=pb.BLOB_KIND_DATASET, size_bytes=len(data),
                                 upload_id="ab" * 16, sha256="0" * 64)
        with pytest.raises(grpc.RpcError) as info:
            stub.UploadBlob(iter([pb.UploadBlobRequest(header=header),
                                  pb.UploadBlobRequest(data=data)]), timeout=TIMEOUT)
        assert info.value.code() == grpc.StatusCode.DATA_LOSS
    finally:
        ch.close()
    assert partials(local_agent.store, "*") == []


def test_hostile_content_by_id_is_still_refused(connect: Any, local_agent: RunningAgent,
                                                tmp_path: Path) -> None:
    junk = write(tmp_path / "junk.onnx", b"this is not an ONNX model\x00" * 100)
    with pytest.raises(EdgetuneError, match="refused") as info:
        connect().upload(junk, BlobKind.MODEL)
    assert info.value.exit_status == 3                        # bad input
    sha = hashlib.sha256(junk.read_bytes()).hexdigest()
    assert not (local_agent.store / "models" / f"{sha}.onnx").exists()
    assert partials(local_agent.store) == []
    assert sha not in json.dumps(cache_entries(tmp_path))


def test_corrupt_cache_is_ignored_with_a_warning(connect: Any, tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    cache = tmp_path / "cache" / "hashes.json"
    cache.parent.mkdir()
    cache.write_bytes(b"{\"version\": 1, \"entries\": {trunc\xff")
    path = write(tmp_path / "d.npz", dataset(seed=18))
    with caplog.at_level(logging.WARNING, logger="edgetune.host.hashcache"):
        outcome = connect().upload(path, BlobKind.DATASET)
    assert outcome.blob.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert any("is corrupt" in r.getMessage() and str(cache) in r.getMessage()
               for r in caplog.records)
    [entry] = cache_entries(tmp_path).values()                # rewritten, valid again
    assert entry["sha256"] == outcome.blob.sha256


def test_cache_is_bounded_and_keeps_the_most_recent(tmp_path: Path) -> None:
    cache = HashCache(tmp_path / "h.json", max_entries=3)
    idents = []
    for i in range(5):
        f = write(tmp_path / f"f{i}", bytes([i]) * 10)
        idents.append(FileIdentity.of(f))
        cache.put(idents[-1], Entry(sha256=f"{i:064x}", since_ns=time.time_ns()))
    assert [cache.get(i).sha256 for i in idents] == ["", ""] + [f"{i:064x}" for i in (2, 3, 4)]
    moved = tmp_path / "moved"
    shutil.copy2(tmp_path / "f4", moved)                      # another path: another file
    assert cache.get(FileIdentity.of(moved)).sha256 == ""


@pytest.mark.parametrize("n", [1, 127, 128, 16383, 16384, 2 * MiB, 4 * MiB + 3])
def test_hand_framed_chunk_equals_the_protobuf_encoding(n: int) -> None:
    chunk = bytes(range(256)) * (n // 256) + b"x" * (n % 256)
    framed = edgetune.host.client._upload_request_bytes(chunk)
    assert framed == pb.UploadBlobRequest(data=chunk).SerializeToString()
    header = pb.UploadBlobRequest(header=pb.UploadHeader(upload_id="ab" * 16))
    assert edgetune.host.client._upload_request_bytes(header) == header.SerializeToString()
