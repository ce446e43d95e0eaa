"""edgetune.device.store: content-addressed, crash-safe uploads on real files."""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from edgetune.device.errors import (AlreadyExists, DataLoss, FailedPrecondition, InvalidArgument, NotFound,
                           ResourceExhausted)
from edgetune.device.limits import Limits
from edgetune.device.store import BlobStore, UploadState, safe_label
from edgetune.protos.messages import BlobKind
from tests.agent_fixtures import assert_blobs_named_by_content

MODEL = BlobKind.MODEL
DATASET = BlobKind.DATASET


def model_bytes(weights: int = 16) -> bytes:
    """A valid single-file ONNX model whose size grows with ``weights`` (an initializer)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, weights])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, weights])
    w = helper.make_tensor("w", TensorProto.FLOAT, [weights],
                           np.arange(weights, dtype=np.float32).tobytes(), raw=True)
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    return model.SerializeToString()


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "store", Limits())


def upload(store: BlobStore, kind: BlobKind, data: bytes, name: str = "", chunk: int = 1 << 20):
    writer = store.begin_upload(kind, sha(data), len(data), name, 0)
    for i in range(0, len(data), chunk):
        writer.write(data[i:i + chunk])
    return writer.commit()


def test_chunked_upload_is_visible_only_after_commit(store: BlobStore) -> None:
    data = model_bytes(300_000)  # ~1.2 MB, written in 100 kB chunks
    digest = sha(data)
    assert store.status(MODEL, digest, len(data)) == (UploadState.ABSENT, 0)
    writer = store.begin_upload(MODEL, digest, len(data), "resnet.onnx", 0)
    for i in range(0, len(data), 100_000):
        writer.write(data[i:i + 100_000])
    assert store.status(MODEL, digest, len(data)) == (UploadState.PARTIAL, len(data))
    with pytest.raises(NotFound, match="edgetune models upload"):
        store.path(MODEL, digest)
    assert store.list() == []
    info = writer.commit()
    assert (info.sha256, info.size_bytes, info.name, info.kind) == (digest, len(data),
                                                                     "resnet.onnx", MODEL)
    assert store.path(MODEL, digest).read_bytes() == data
    assert store.status(MODEL, digest, len(data)) == (UploadState.COMPLETE, len(data))
    assert [b.sha256 for b in store.list(MODEL)] == [digest]
    assert store.list(DATASET) == []
    assert store.info(MODEL, digest).name == "resnet.onnx"
    assert not list((store.root / "partial").iterdir())
    # A fresh store on the same folder (an agent restart) sees the same blob and label.
    again = BlobStore(store.root, Limits())
    assert again.info(MODEL, digest) == info


def test_hash_mismatch_discards_and_raises_data_loss(store: BlobStore) -> None:
    data = model_bytes()
    wrong = sha(b"something else")
    writer = store.begin_upload(MODEL, wrong, len(data), "m", 0)
    writer.write(data)
    with pytest.raises(DataLoss, match=f"expected {wrong}, got {sha(data)}.*send it again"):
        writer.commit()
    assert store.status(MODEL, wrong, len(data)) == (UploadState.ABSENT, 0)
    assert not list((store.root / "partial").iterdir())
    assert store.list() == []


def test_resume_after_close_incomplete_from_the_committed_offset(store: BlobStore) -> None:
    data = model_bytes(500_000)
    digest, half = sha(data), len(data) // 2 + 3
    writer = store.begin_upload(MODEL, digest, len(data), "big", 0)
    writer.write(data[:half])
    assert writer.close_incomplete() == half
    restarted = BlobStore(store.root, Limits())
    state, committed = restarted.status(MODEL, digest, len(data))
    assert (state, committed) == (UploadState.PARTIAL, half)
    writer = restarted.begin_upload(MODEL, digest, len(data), "big", committed)
    assert writer.start_offset == half
    writer.write(data[half:])
    assert writer.received == len(data) - half
    info = writer.commit()  # the hash covers the resumed part too
    assert info.sha256 == digest
    assert restarted.path(MODEL, digest).read_bytes() == data


def test_a_chunk_that_does_not_follow_is_refused_and_the_partial_stays_a_prefix(
        store: BlobStore) -> None:
    """A chunk written after one that never was (its sender went away, its write failed) would
    splice the partial: the resume would go on from its size and name a blob that is not the
    file. The writer refuses it, writing nothing of it."""
    data = npz_bytes(x=np.arange(100_000, dtype=np.float32))
    upload_id, a, b = "d1" * 16, 100_000, 200_000
    writer = store.begin_upload(DATASET, "", len(data), "d", upload_id=upload_id)
    writer.write(data[:a], at=0)
    with pytest.raises(FailedPrecondition, match=f"does not follow the {a} bytes written"):
        writer.write(data[b:], at=b)                  # data[a:b] was never written
    assert writer.committed == a
    assert writer.close_incomplete() == a
    state, committed = store.status(DATASET, "", len(data), upload_id)
    assert (state, committed) == (UploadState.PARTIAL, a)
    writer = store.begin_upload(DATASET, "", len(data), "d", committed, upload_id=upload_id)
    writer.write(data[committed:], at=committed)
    assert writer.commit().sha256 == sha(data)
    assert assert_blobs_named_by_content(store.root) == 1


def test_bytes_the_writer_did_not_write_are_never_committed(store: BlobStore) -> None:
    data = npz_bytes(x=np.arange(10_000, dtype=np.float32))
    writer = store.begin_upload(DATASET, "", len(data), "d", upload_id="d2" * 16)
    writer.write(data)
    with open(store._part_path(DATASET, writer.key), "ab") as f:
        f.write(b"extra")                               # not seen by the writer's hash
    with pytest.raises(DataLoss, match="discarded"):
        writer.commit()
    assert store.list() == [] and list((store.root / "partial").glob("*.part")) == []


def test_resumed_upload_with_corrupt_prefix_is_caught(store: BlobStore) -> None:
    data = model_bytes(1000)
    digest, half = sha(data), len(data) // 2
    writer = store.begin_upload(MODEL, digest, len(data), "", 0)
    writer.write(b"\0" * half)  # wrong bytes before the disconnect
    writer.close_incomplete()
    writer = store.begin_upload(MODEL, digest, len(data), "", half)
    writer.write(data[half:])
    with pytest.raises(DataLoss):
        writer.commit()


def test_wrong_offset_is_refused_and_zero_restarts(store: BlobStore) -> None:
    data = model_bytes(1000)
    digest = sha(data)
    writer = store.begin_upload(MODEL, digest, len(data), "", 0)
    writer.write(data[:100])
    writer.close_incomplete()
    for offset in (50, 101, len(data)):
        with pytest.raises(FailedPrecondition, match="100 bytes committed; send from offset 100"):
            store.begin_upload(MODEL, digest, len(data), "", offset)
    with pytest.raises(FailedPrecondition, match="0 bytes committed"):
        store.begin_upload(MODEL, sha(b"other"), 10, "", 5)
    writer = store.begin_upload(MODEL, digest, len(data), "", 0)  # offset 0: start over
    writer.write(data)
    assert writer.commit().size_bytes == len(data)


def test_partial_announced_with_another_size_does_not_count(store: BlobStore) -> None:
    data = model_bytes(1000)
    writer = store.begin_upload(MODEL, sha(data), len(data), "", 0)
    writer.write(data[:10])
    writer.close_incomplete()
    assert store.status(MODEL, sha(data), len(data) + 1) == (UploadState.ABSENT, 0)
    assert store.status(MODEL, sha(data), len(data)) == (UploadState.PARTIAL, 10)


def test_size_limits(tmp_path: Path) -> None:
    store = BlobStore(tmp_path, Limits(max_model_bytes=1000))
    data = model_bytes(1000)
    with pytest.raises(ResourceExhausted, match=r"limit of 1000 bytes.*max_model_bytes"):
        store.begin_upload(MODEL, sha(data), len(data), "", 0)
    with pytest.raises(InvalidArgument, match="positive number of bytes"):
        store.begin_upload(MODEL, sha(data), 0, "", 0)
    small = model_bytes(4)
    writer = store.begin_upload(MODEL, sha(small), len(small), "", 0)
    with pytest.raises(InvalidArgument, match="overruns its announced size"):
        writer.write(small + b"x")
    writer.write(small)
    writer.commit()


def test_sha_must_be_lowercase_hex(store: BlobStore) -> None:
    for bad in ("ABC", sha(b"x").upper(), "../" + sha(b"x")[3:], sha(b"x") + "0"):
        with pytest.raises(InvalidArgument, match="64 lowercase hexadecimal"):
            store.begin_upload(MODEL, bad, 10, "", 0)
        with pytest.raises(InvalidArgument):
            store.status(MODEL, bad, 10)


def test_reupload_of_complete_blob_reports_already_present(store: BlobStore) -> None:
    data = model_bytes()
    first = upload(store, MODEL, data, "first")
    writer = store.begin_upload(MODEL, sha(data), len(data), "second", 0)
    assert writer.already_present and writer.info == first
    with pytest.raises(FailedPrecondition, match="stored already"):
        writer.write(data)
    assert writer.commit() == first
    assert store.info(MODEL, sha(data)).name == "first"


def test_concurrent_uploads_of_the_same_blob_do_not_corrupt(store: BlobStore) -> None:
    data = model_bytes(400_000)
    digest = sha(data)
    barrier = threading.Barrier(4)
    outcomes: list = []

    def worker() -> None:
        barrier.wait()
        try:
            writer = store.begin_upload(MODEL, digest, len(data), "race", 0)
        except FailedPrecondition as exc:
            outcomes.append(("busy", str(exc)))
            return
        if writer.already_present:
            outcomes.append(("present", writer.info))
            return
        for i in range(0, len(data), 65536):
            writer.write(data[i:i + 65536])
            time.sleep(0)
        outcomes.append(("stored", writer.commit()))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    kinds = [o[0] for o in outcomes]
    assert len(outcomes) == 4 and kinds.count("stored") == 1
    assert all("already in progress" in o[1] for o in outcomes if o[0] == "busy")
    assert store.path(MODEL, digest).read_bytes() == data
    # While an upload is open, a second one is refused rather than interleaved.
    other = model_bytes(7)
    open_writer = store.begin_upload(MODEL, sha(other), len(other), "", 0)
    with pytest.raises(FailedPrecondition, match="already in progress"):
        store.begin_upload(MODEL, sha(other), len(other), "", 0)
    with pytest.raises(FailedPrecondition, match="being uploaded"):
        store.delete(MODEL, sha(other))
    open_writer.close_incomplete()
    writer = store.begin_upload(MODEL, sha(other), len(other), "", 0)
    writer.write(other)
    writer.commit()


def test_names_are_labels_never_paths(store: BlobStore, tmp_path: Path) -> None:
    data = model_bytes()
    info = upload(store, MODEL, data, "../../evil\n.onnx\x00")
    assert info.name == "../../evil .onnx"
    assert store.path(MODEL, sha(data)) == store.root / "models" / (sha(data) + ".onnx")
    assert not (tmp_path / "evil.onnx").exists() and not (store.root.parent / "evil").exists()
    assert safe_label("a" * 500) == "a" * 200
    assert safe_label("  tab\there  ") == "tab here"


def test_content_is_checked_before_it_becomes_visible(store: BlobStore) -> None:
    junk = b"this is not a model at all" * 10
    with pytest.raises(InvalidArgument, match="not an ONNX model"):
        upload(store, MODEL, junk)
    pickled = npz_bytes(x=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(InvalidArgument, match="pickled Python objects"):
        upload(store, DATASET, pickled)
    assert store.list() == [] and not list((store.root / "partial").iterdir())
    good = npz_bytes(input=np.zeros((3, 4), np.float32), labels=np.arange(3))
    assert upload(store, DATASET, good, "ds").kind is DATASET
    assert store.path(DATASET, sha(good)).suffix == ".npz"


def test_delete_usage_and_not_found(store: BlobStore) -> None:
    model, dataset = model_bytes(), npz_bytes(input=np.zeros((2, 2), np.float32))
    upload(store, MODEL, model)
    upload(store, DATASET, dataset)
    used, n_models, n_datasets = store.usage()
    assert (used, n_models, n_datasets) == (len(model) + len(dataset), 1, 1)
    assert store.delete(MODEL, sha(model)) is True
    with pytest.raises(NotFound, match="models list"):
        store.delete(MODEL, sha(model))
    with pytest.raises(NotFound):
        store.info(MODEL, sha(model))
    assert store.usage() == (len(dataset), 0, 1)
    with pytest.raises(InvalidArgument, match="'model' or 'dataset'"):
        store.list("weights")


def _counted_afresh(store: BlobStore) -> tuple:
    """What usage() says, counted from the disk by a new store on the same folder."""
    return BlobStore(store.root, Limits()).usage()


def test_usage_is_kept_up_to_date_without_counting_every_poll(store: BlobStore) -> None:
    """usage() (every GetInfo) counts the blobs once, then follows the store's own installs
    and deletions; a change made from outside the store is seen (the folder's mtime moved)."""
    datasets = [npz_bytes(input=np.full((2, 2), i, np.float32)) for i in range(6)]
    models = [model_bytes(weights=w) for w in (16, 32)]
    assert store.usage() == (0, 0, 0)
    for data in datasets[:4]:
        upload(store, DATASET, data)
        assert store.usage() == _counted_afresh(store)
    for data in models:
        upload(store, MODEL, data)
    store.delete(DATASET, sha(datasets[1]))
    assert store.usage() == _counted_afresh(store) == (
        sum(map(len, models)) + sum(len(d) for d in (datasets[0], datasets[2], datasets[3])),
        2, 3)
    # A planted link is no blob: not counted, and deleting it takes nothing off.
    planted = store.root / "datasets" / (sha(b"planted") + ".npz")
    os.symlink(str(store.root / "datasets" / (sha(datasets[0]) + ".npz")), str(planted))
    assert store.usage()[2] == 3
    store.delete(DATASET, sha(b"planted"))
    assert store.usage() == _counted_afresh(store)
    # From outside: a blob removed and one copied in by hand are seen at the next poll.
    time.sleep(0.02)                             # past the file system's clock tick
    (store.root / "datasets" / (sha(datasets[2]) + ".npz")).unlink()
    (store.root / "datasets" / (sha(datasets[4]) + ".npz")).write_bytes(datasets[4])
    assert store.usage() == _counted_afresh(store)
    assert store.usage()[2] == 3
    # Uploads by id of content stored already, and of new content, keep the counts.
    for data in (datasets[3], datasets[5]):
        writer = store.begin_upload(DATASET, "", len(data), "", 0, upload_id=os.urandom(16).hex())
        writer.write(data)
        writer.commit()
    assert store.usage() == _counted_afresh(store)


def test_usage_does_not_stat_every_blob_at_every_poll(store: BlobStore,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import edgetune.device.store as store_module
    for i in range(20):
        upload(store, DATASET, npz_bytes(input=np.full((2, 2), i, np.float32)))
    expected = store.usage()
    stats = []
    real = store_module.regular_stat
    monkeypatch.setattr(store_module, "regular_stat", lambda p: stats.append(p) or real(p))
    for _ in range(10):
        assert store.usage() == expected
    assert stats == []                           # nothing stat'ed: no partial upload either


def test_stale_partials_are_removed_at_open(tmp_path: Path) -> None:
    store = BlobStore(tmp_path, Limits())
    old, fresh = model_bytes(10), model_bytes(11)
    for data in (old, fresh):
        writer = store.begin_upload(MODEL, sha(data), len(data), "", 0)
        writer.write(data[:20])
        writer.close_incomplete()
    week_ago = time.time() - 8 * 86400
    os.utime(store._part_path(MODEL, sha(old)), (week_ago, week_ago))
    reopened = BlobStore(tmp_path, Limits(), stale_partial_days=7)
    assert reopened.status(MODEL, sha(old), len(old)) == (UploadState.ABSENT, 0)
    assert reopened.status(MODEL, sha(fresh), len(fresh)) == (UploadState.PARTIAL, 20)
    assert sorted(p.name for p in (tmp_path / "partial").iterdir()) == [
        f"model-{sha(fresh)}.json", f"model-{sha(fresh)}.part"]


def test_large_upload_streams_and_syncs(store: BlobStore) -> None:
    """20 MB through 2 MiB chunks: crosses the periodic fsync threshold several times."""
    data = model_bytes(5_000_000)
    start = time.perf_counter()
    info = upload(store, MODEL, data, chunk=2 << 20)
    elapsed = time.perf_counter() - start
    assert info.size_bytes == len(data) and store.path(MODEL, sha(data)).stat().st_size == len(data)
    assert elapsed < 5, f"20 MB upload took {elapsed:.1f} s"


def test_already_exists_error_is_in_the_hierarchy() -> None:
    import grpc
    assert AlreadyExists("x").grpc_code == grpc.StatusCode.ALREADY_EXISTS
    assert DataLoss("x").grpc_code == grpc.StatusCode.DATA_LOSS
    assert str(NotFound("upload it first")) == "upload it first"
