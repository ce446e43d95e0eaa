"""One implementation of each metric: the host's local evaluation and analysis use the board's
``edgetune.device.metrics``, which stays importable with numpy alone."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgetune.device import metrics
from edgetune.host.quant import errmetrics, evaluate

SAMPLES = Path(evaluate.__file__).resolve().parent.parent / "samples"
DIGITS = SAMPLES / "digits_cnn.onnx"
TEST = SAMPLES / "digits_test.npz"

# Modules the host imports from device (and what they need): numpy only, never grpc or
# onnxruntime, so a board without them, or the host's own code, can load them.
PURE = ("edgetune.device.metrics", "edgetune.device.datasets", "edgetune.device.errors",
        "edgetune.exitcodes")

_BLOCKED = textwrap.dedent("""
    import importlib.abc, sys

    BLOCKED = {"grpc", "onnxruntime"}

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Block())
    for name in list(sys.modules):
        if name.split(".")[0] in BLOCKED:
            del sys.modules[name]
    try:
        import grpc  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("the blocker does not block")
""")


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _BLOCKED + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("module", PURE)
def test_pure_device_modules_import_without_grpc_and_onnxruntime(module: str) -> None:
    proc = _run(f"""
        import importlib, sys
        importlib.import_module({module!r})
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not loaded, loaded
    """)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_blocker_catches_an_import_of_grpc() -> None:
    """The check above can fail: a module importing grpc is refused under the blocker."""
    proc = _run("""
        import edgetune.device.errors as e
        e.NotFound("x").grpc_code      # reads grpc lazily: must fail here
    """)
    assert proc.returncode != 0 and "grpc is blocked" in proc.stderr


def test_the_host_uses_the_board_definitions() -> None:
    assert evaluate.class_scores is metrics.as_class_scores
    assert evaluate.topk_correct is metrics.topk_correct
    assert evaluate.sample_cosines is metrics.sample_cosines
    assert errmetrics.SQNR_CAP_DB == metrics.SQNR_CAP_DB
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(6, 4, 5)).astype(np.float32)
    out = ref + rng.normal(scale=0.1, size=ref.shape).astype(np.float32)
    board = metrics.Fidelity()
    board.update(ref, out)
    host = errmetrics.error_metrics(ref, out)
    # Same SQNR and tensor-wide cosine definitions; analysis forms products in float32.
    assert host.sqnr_db == pytest.approx(board.result()["sqnr_db"], rel=1e-5)
    assert host.cosine == pytest.approx(board.result()["cosine_global"], rel=1e-6)
    for signal, noise in ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (2.0, 1e-300), (1.0, 3.0)):
        assert errmetrics.sqnr_db(signal, noise) == metrics.sqnr_from_sums(signal, noise)


def test_local_and_board_evaluation_give_identical_numbers(pki: Any, tmp_path: Path) -> None:
    from edgetune.host.quant.evaluate import LocalEvaluator
    from edgetune.protos import agent_pb2 as pb
    from edgetune.protos.messages import EvaluateSpec, SessionOptions
    from tests.agent_fixtures import start_agent, stub, upload_dataset, upload_model, wait_job

    # The shipped sample, its reference logits made noisy so the cosine is not trivially 1.
    data = dict(np.load(TEST))
    rng = np.random.default_rng(7)
    data["logits"] = (data["logits"] + rng.normal(scale=2.0, size=data["logits"].shape)
                      ).astype(np.float32)
    dataset = tmp_path / "digits_noisy.npz"
    np.savez(dataset, **data)
    session = SessionOptions(intra_op_threads=1, inter_op_threads=1)
    batch = 16                                              # does not divide 450

    local = LocalEvaluator(dataset, metric="top1", session=session, batch_size=batch)
    local.evaluate(DIGITS)
    here = local.last_details

    agent = start_agent(pki, tmp_path / "store")
    try:
        board = stub(agent.address, pki.host.identity)
        spec = EvaluateSpec(model_sha256=upload_model(board, DIGITS.read_bytes()),
                            dataset_sha256=upload_dataset(board, dataset.read_bytes()),
                            session=session, batch_size=batch)
        job = board.SubmitJob(pb.SubmitJobRequest(spec=pb.JobSpec(evaluate=spec.as_pb2())),
                              timeout=30).job
        done = wait_job(board, job.id)
        assert done.state == pb.JOB_STATE_SUCCEEDED, done.error
        there = dict(done.evaluate.metrics)
    finally:
        agent.stop()

    assert set(here) == {"top1", "top5", "fidelity"}
    assert 0.5 < here["top1"] < 1.0 and 0.0 < here["fidelity"] < 0.99
    assert here["top1"] == there["top1"]
    assert here["top5"] == there["top5"]
    assert here["fidelity"] == there["cosine"]              # the same float, not approx
