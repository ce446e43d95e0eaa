"""The file the store checked is the file a job uses (issue 16, section 5: store paths are
never followed through a link planted in the store).

A job opens each blob it needs once (``BlobStore.open``: ``O_NOFOLLOW``, then ``fstat`` says
a regular file) and hands onnxruntime ``/proc/self/fd/N`` and numpy the file object, so the
store's name for the blob is not resolved again between the check and the use.

The race is made deterministic with a real pause of a real agent: a benchmark with a thermal
gate on a board whose (test-written) thermal zone is hot has opened its model and waits,
reporting the phase "cool", before it creates the onnxruntime session. While it waits, the
test replaces the model in the store by a symbolic link to another model, or by another
model's bytes, then lets the board cool. The session must be the first model's (its node
count, from the result's placement, says which model ran). Before this change onnxruntime
opened the store path and ran the second model.
"""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, Tuple

import grpc
import numpy as np
import pytest

from edgetune.device import safefs
from edgetune.device.datasets import load_dataset
from edgetune.device.errors import NotFound
from edgetune.device.limits import Limits
from edgetune.device.providers import create_session
from edgetune.device.store import BlobStore
from edgetune.protos import agent_pb2 as pb
from edgetune.protos.messages import BlobKind, SessionOptions
from tests.agent_fixtures import (mlp_model, sha256_hex, start_agent, stub, submit_benchmark,
                                  upload_model, wait_job)

SMALL = mlp_model(layers=1, seed=1)          # x [1, 16] -> y [1, 10]: 3 nodes
LARGE = mlp_model(layers=4, seed=2)          # the same input and output, 9 nodes


def _zone(sysfs: Path, millideg: int) -> None:
    zone = sysfs / "class" / "thermal" / "thermal_zone0"
    zone.mkdir(parents=True, exist_ok=True)
    tmp = zone / "temp.tmp"
    tmp.write_text(f"{millideg}\n")
    os.replace(tmp, zone / "temp")


@pytest.fixture(scope="module")
def board(pki: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tuple[Any, Path]]:
    work = tmp_path_factory.mktemp("opened")
    sysfs = work / "sys"
    _zone(sysfs, 40000)
    agent = start_agent(pki, work / "store", sysfs_root=sysfs)
    try:
        yield agent, sysfs
    finally:
        agent.stop()


def _nodes(job: pb.Job) -> int:
    assert job.state == pb.JOB_STATE_SUCCEEDED, job.error
    return sum(job.benchmark.provider_nodes.values())


def _gated(client: Any, sha: str) -> pb.SubmitJobResponse:
    bench = pb.BenchmarkSpec(model_sha256=sha, iterations=5, warmup=1)
    bench.thermal.max_temp_c = 60.0
    bench.thermal.max_wait_s = 120.0
    return client.SubmitJob(pb.SubmitJobRequest(spec=pb.JobSpec(benchmark=bench)), timeout=30)


@pytest.mark.parametrize("swap", ["symlink", "file"])
def test_a_model_swapped_after_the_open_is_never_loaded(board: Tuple[Any, Path], pki: Any,
                                                        tmp_path: Path, swap: str) -> None:
    agent, sysfs = board
    client = stub(agent.address, pki.host.identity)
    # Each case stores its own first model (the swap spoils it): seeds differ, nodes do not.
    first = mlp_model(layers=1, seed={"symlink": 11, "file": 12}[swap])
    first_sha, large_sha = upload_model(client, first), upload_model(client, LARGE)
    expected = {}
    for sha in (first_sha, large_sha):         # controls: what each model's placement says
        job = submit_benchmark(client, sha, iterations=5, warmup=1).job
        expected[sha] = _nodes(wait_job(client, job.id))
    assert expected[first_sha] != expected[large_sha], expected

    store = Path(agent.config.store)
    blob = store / "models" / f"{first_sha}.onnx"
    other = store / "models" / f"{large_sha}.onnx"
    _zone(sysfs, 90000)                        # hot: the next job opens its model, then waits
    try:
        job_id = _gated(client, first_sha).job.id
        events = client.WatchJob(pb.WatchJobRequest(job_id=job_id), timeout=120)
        final = None
        swapped = False
        for event in events:
            if not swapped and event.progress.phase == "cool":
                # The job has its model open and has not created its session yet.
                planted = blob.with_name(blob.name + ".swap")
                if swap == "symlink":
                    os.symlink(str(other), str(planted))
                else:
                    planted.write_bytes(other.read_bytes())
                os.replace(str(planted), str(blob))
                swapped = True
                _zone(sysfs, 40000)
            if event.HasField("job") and event.job.state not in (pb.JOB_STATE_QUEUED,
                                                                  pb.JOB_STATE_RUNNING):
                final = event.job
                break
    finally:
        _zone(sysfs, 40000)
    assert swapped, "the job never waited for the board to cool"
    assert final is not None
    assert final.benchmark.thermal.waited_s > 0
    assert _nodes(final) == expected[first_sha], \
        f"the job ran the swapped-in model ({_nodes(final)} nodes, not {expected[first_sha]})"
    if swap == "symlink":                      # the planted link is no blob: not served at all
        with pytest.raises(grpc.RpcError) as err:
            submit_benchmark(client, first_sha, iterations=1)
        assert err.value.code() is grpc.StatusCode.NOT_FOUND


# ------------------------------------------------------------------------- the store's side

def _store_with(tmp_path: Path, kind: BlobKind, data: bytes) -> Tuple[BlobStore, str]:
    store = BlobStore(tmp_path / "store", Limits())
    sha = sha256_hex(data)
    with store.begin_upload(kind, sha, len(data)) as writer:
        writer.write(data)
        writer.commit()
    return store, sha


def _npz(**arrays: Any) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_a_dataset_is_read_from_the_file_opened(tmp_path: Path) -> None:
    """numpy reads the opened file: a link (or a file) swapped in after the open is not read,
    and the next open refuses the link."""
    original = {"x": np.arange(8, dtype=np.float32).reshape(8, 1),
                "labels": np.arange(8, dtype=np.int64)}
    store, sha = _store_with(tmp_path, BlobKind.DATASET, _npz(**original))
    elsewhere = tmp_path / "elsewhere.npz"
    elsewhere.write_bytes(_npz(x=np.full((3, 1), 7, np.float32), labels=np.zeros(3, np.int64)))
    path = store.root / "datasets" / f"{sha}.npz"
    with store.open(BlobKind.DATASET, sha) as blob:
        planted = path.with_name("planted")
        os.symlink(str(elsewhere), str(planted))
        os.replace(str(planted), str(path))
        dataset = load_dataset(blob.file)
        fd = blob.fileno()
    assert dataset.samples == 8
    for name, array in original.items():
        np.testing.assert_array_equal(dataset.arrays[name], array)
    with pytest.raises(OSError):               # closed: no descriptor left behind
        os.fstat(fd)
    with pytest.raises(NotFound, match="is not stored on this board"):
        store.open(BlobKind.DATASET, sha)


def test_a_model_is_loaded_from_the_file_opened(tmp_path: Path) -> None:
    """onnxruntime gets /proc/self/fd/N, which opens the file held even after its name was
    replaced; where there is no such folder, it gets the bytes read from the descriptor."""
    store, sha = _store_with(tmp_path, BlobKind.MODEL, SMALL)
    path = store.root / "models" / f"{sha}.onnx"
    with store.open(BlobKind.MODEL, sha) as blob:
        planted = path.with_name("planted")
        planted.write_bytes(b"not a model")
        os.replace(str(planted), str(path))     # a new file under the name; the old is held
        source = blob.source()
        assert isinstance(source, str) and source == f"/proc/self/fd/{blob.fileno()}"
        session, _ = create_session(blob, SessionOptions())
        assert [i.shape for i in session.get_inputs()] == [[1, 16]]


def test_without_proc_the_model_goes_as_bytes(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    store, sha = _store_with(tmp_path, BlobKind.MODEL, SMALL)
    monkeypatch.setattr(safefs, "FD_FOLDER", str(tmp_path / "no-proc"))
    with store.open(BlobKind.MODEL, sha) as blob:
        assert blob.source() == SMALL
        session, _ = create_session(blob, SessionOptions())
        assert session.get_outputs()[0].name == "y"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_things_that_are_not_files_are_not_stored_blobs(tmp_path: Path) -> None:
    """A FIFO, a folder or a link planted as a blob reads as absent, at once (a FIFO opened
    for reading would block until a writer came: O_NONBLOCK keeps the open from waiting)."""
    store = BlobStore(tmp_path / "store", Limits())
    shas = [sha256_hex(bytes([i])) for i in range(3)]
    os.mkfifo(str(store.root / "models" / f"{shas[0]}.onnx"), 0o600)
    (store.root / "models" / f"{shas[1]}.onnx").mkdir()
    os.symlink(str(tmp_path), str(store.root / "models" / f"{shas[2]}.onnx"))
    outcome: Dict[str, Any] = {}

    def opens() -> None:
        for sha in shas:
            try:
                store.open(BlobKind.MODEL, sha)
                outcome[sha] = "opened"
            except NotFound:
                outcome[sha] = "absent"

    thread = threading.Thread(target=opens, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "opening a FIFO planted as a blob blocked"
    assert outcome == {sha: "absent" for sha in shas}


def test_a_runner_plugin_gets_the_file_opened(tmp_path: Path) -> None:
    """A plug-in's ``model.<format>`` is a hard link made from the descriptor (the file held,
    not whatever the store's name points at now), or, once the file has no name left (a
    swap removed it), a copy read from the descriptor."""
    from edgetune.device.plugins import place_model
    store, sha = _store_with(tmp_path, BlobKind.MODEL, SMALL)
    path = store.root / "models" / f"{sha}.onnx"
    work = tmp_path / "work"
    work.mkdir()
    with store.open(BlobKind.MODEL, sha) as blob:
        held = os.fstat(blob.fileno()).st_ino
        place_model(blob, work / "linked.onnx")
        linked = work / "linked.onnx"
        assert not linked.is_symlink() and os.stat(str(linked)).st_ino == held
        linked.unlink()
        (tmp_path / "elsewhere").write_bytes(LARGE)
        os.symlink(str(tmp_path / "elsewhere"), str(path.with_name("planted")))
        os.replace(str(path.with_name("planted")), str(path))     # the blob's last name goes
        place_model(blob, work / "swapped.onnx")
    swapped = work / "swapped.onnx"
    assert not swapped.is_symlink() and swapped.read_bytes() == SMALL
