"""edgetune.host.quant.evaluate: top-1/top-5 with labels, fidelity to the float model without them,
bad datasets; and the AgentEvaluator against a real agent (when the agent code is here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edgetune.host.errors import BadInputError, NotFoundError, UsageError
from edgetune.host.quant.evaluate import LocalEvaluator, sample_cosines
from tests.quant_fixtures import DIGITS, TEST


def _reference_top1() -> float:
    data = np.load(TEST)
    session = ort.InferenceSession(str(DIGITS), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": data["input"]})[0]
    return float(np.mean(np.argmax(logits, axis=1) == data["labels"]))


def test_top1_and_top5_with_labels(digits_q: Path) -> None:
    evaluator = LocalEvaluator(TEST, batch_size=37)        # a batch that does not divide 450
    assert evaluator.baseline(DIGITS) == pytest.approx(_reference_top1())
    assert evaluator.metric_name == "top1"
    assert evaluator.last_latency_ms is not None and evaluator.last_latency_ms > 0
    assert evaluator.last_details["top5"] >= evaluator.last_details["top1"]
    assert evaluator.evaluate(digits_q, metric="top5") >= evaluator.evaluate(digits_q)
    assert evaluator.evaluations == 3


def test_fidelity_is_cosine_to_the_float_model(digits_q: Path) -> None:
    evaluator = LocalEvaluator(TEST, metric="fidelity")
    assert evaluator.baseline(DIGITS) == pytest.approx(1.0, abs=1e-9)
    value = evaluator.evaluate(digits_q)
    assert 0.99 < value < 1.0
    data = np.load(TEST)
    quant = ort.InferenceSession(str(digits_q), providers=["CPUExecutionProvider"])
    flt = ort.InferenceSession(str(DIGITS), providers=["CPUExecutionProvider"])
    expected = np.mean(sample_cosines(flt.run(None, {"input": data["input"]})[0],
                                      quant.run(None, {"input": data["input"]})[0]))
    assert value == pytest.approx(float(expected), abs=1e-9)
    # Reference outputs stored in the dataset (digits_test.npz has "logits") work without
    # a baseline run.
    assert LocalEvaluator(TEST, metric="fidelity").evaluate(DIGITS) == pytest.approx(1.0,
                                                                                     abs=1e-5)


def test_fidelity_without_labels_needs_the_float_model(tmp_path: Path, digits_q: Path) -> None:
    unlabeled = tmp_path / "unlabeled.npz"
    np.savez(unlabeled, input=np.load(TEST)["input"][:50])
    evaluator = LocalEvaluator(unlabeled)                  # auto -> fidelity (no labels)
    with pytest.raises(BadInputError, match="fidelity needs the float model's outputs"):
        evaluator.evaluate(digits_q)
    assert evaluator.metric_name == "fidelity"
    assert evaluator.baseline(DIGITS) == pytest.approx(1.0)
    assert 0.99 < evaluator.evaluate(digits_q) < 1.0
    with pytest.raises(BadInputError, match="needs labels"):
        LocalEvaluator(unlabeled, metric="top1").evaluate(digits_q)


def test_bad_datasets_and_options(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, pixels=np.zeros((4, 1, 8, 8), np.float32), labels=np.zeros(4, np.int64))
    with pytest.raises(BadInputError, match="no array for model input"):
        LocalEvaluator(wrong).evaluate(DIGITS)
    with pytest.raises(NotFoundError):
        LocalEvaluator(tmp_path / "nope.npz").evaluate(DIGITS)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(BadInputError, match="not an .npz"):
        LocalEvaluator(tmp_path / "junk.npz").evaluate(DIGITS)
    uneven = tmp_path / "uneven.npz"
    np.savez(uneven, input=np.zeros((4, 1, 8, 8), np.float32), labels=np.zeros(3, np.int64))
    with pytest.raises(BadInputError, match="disagree on the number of samples"):
        LocalEvaluator(uneven).evaluate(DIGITS)
    with pytest.raises(UsageError, match="unknown metric"):
        LocalEvaluator(TEST, metric="accuracy")
    with pytest.raises(UsageError, match="no evaluation dataset"):
        LocalEvaluator().evaluate(DIGITS)


def test_fixed_batch_model_is_evaluated_sample_by_sample(tmp_path: Path) -> None:
    from edgetune.host import builders

    model = builders.save(builders.tiny_cnn(dynamic_batch=False), tmp_path / "fixed.onnx")
    data = tmp_path / "d.npz"
    np.savez(data, input=np.random.default_rng(0).standard_normal((5, 3, 16, 16))
             .astype(np.float32))
    evaluator = LocalEvaluator(data, batch_size=4)
    assert evaluator.baseline(model) == pytest.approx(1.0)
    assert evaluator.evaluate(model) == pytest.approx(1.0)


# ---------------------------------------------------------------------- on a real agent

def test_agent_evaluator_matches_local(pki, tmp_path: Path, digits_q: Path) -> None:
    from edgetune.host.client import AgentClient
    from edgetune.host.quant.evaluate import AgentEvaluator
    from tests.agent_fixtures import start_agent

    agent = start_agent(pki, tmp_path / "store")
    try:
        with AgentClient(agent.address, pki.host.identity) as client:
            remote = AgentEvaluator(client, TEST)
            local = LocalEvaluator(TEST)
            assert remote.baseline(DIGITS) == pytest.approx(local.baseline(DIGITS))
            assert remote.evaluate(digits_q) == pytest.approx(local.evaluate(digits_q))
            assert remote.metric_name == "top1" and remote.last_latency_ms > 0
            assert remote.where == f"agent at {agent.address}"

            unlabeled = tmp_path / "unlabeled.npz"
            np.savez(unlabeled, input=np.load(TEST)["input"][:40])
            remote_f = AgentEvaluator(client, unlabeled)       # fidelity: refs made here
            local_f = LocalEvaluator(unlabeled)
            assert remote_f.baseline(DIGITS) == pytest.approx(1.0, abs=1e-5)
            local_f.baseline(DIGITS)
            assert remote_f.evaluate(digits_q) == pytest.approx(local_f.evaluate(digits_q),
                                                                abs=1e-4)
            remote_f.close()
    finally:
        agent.stop()
