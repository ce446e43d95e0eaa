"""The 32x32 digits sample (host/samples/digits32_*) and the numpy script that trains it
(tools/train_digits32.py): its gradients, a tiny run end to end, and the shipped files."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "host" / "samples"
SCRIPT = REPO / "tools" / "train_digits32.py"


def _script():
    spec = importlib.util.spec_from_file_location("train_digits32", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(model: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def test_backward_matches_numerical_gradients() -> None:
    t = _script()
    layers = ((3, False), (4, True), (4, True))
    rng = np.random.default_rng(0)
    params = {k: v.astype(np.float64) + rng.normal(0, 0.05, v.shape)
              for k, v in t.init_params(1, layers).items()}
    x = rng.random((2, 1, t.SIZE, t.SIZE))
    y = np.array([3, 7])

    def loss(p):
        return t._loss_grad(t.forward(p, x, layers), y, 0.1)[0]

    logits, saved = t.forward(params, x, layers, keep=True)
    _, dlogits = t._loss_grad(logits, y, 0.1)
    grads = t.backward(params, dlogits.astype(np.float64), saved, layers)
    for key, value in params.items():
        assert grads[key].shape == value.shape, key
        for _ in range(3):
            idx = tuple(int(rng.integers(0, s)) for s in value.shape)
            plus = {k: v.copy() for k, v in params.items()}
            minus = {k: v.copy() for k, v in params.items()}
            plus[key][idx] += 1e-5
            minus[key][idx] -= 1e-5
            numeric = (loss(plus) - loss(minus)) / 2e-5
            assert grads[key][idx] == pytest.approx(numeric, rel=1e-3, abs=1e-6), (key, idx)


def test_upscale_keeps_the_pixel_scale() -> None:
    t = _script()
    x = np.zeros((1, 1, 8, 8), np.float32)
    x[0, 0, 2:6, 2:6] = 1.0
    up = t.upscale(x)
    assert up.shape == (1, 1, 32, 32) and up.dtype == np.float32
    assert up.min() == 0.0 and up.max() == 1.0
    assert np.allclose(up[0, 0, 12:20, 12:20], 1.0)      # the middle of the bright square


@pytest.mark.slow
def test_script_trains_and_writes_the_three_files(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--epochs", "1",
                           "--limit", "64"], capture_output=True, text=True, cwd=REPO,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "onnxruntime vs numpy max abs diff" in proc.stdout
    model = tmp_path / "digits32_cnn.onnx"
    onnx.checker.check_model(onnx.load(str(model)))
    test = np.load(tmp_path / "digits32_test.npz", allow_pickle=False)
    calib = np.load(tmp_path / "digits32_calib.npz", allow_pickle=False)
    assert set(test.files) == {"input", "labels", "logits"} and calib.files == ["input"]
    assert test["input"].shape == (450, 1, 32, 32) and calib["input"].shape == (200, 1, 32, 32)
    # the same split as the 8x8 sample: same labels, same images upscaled
    small = np.load(SAMPLES / "digits_test.npz", allow_pickle=False)
    assert np.array_equal(test["labels"], small["labels"])
    assert np.array_equal(test["input"], _script().upscale(small["input"]))
    assert np.allclose(test["logits"], _run(model, test["input"]), atol=1e-5)


def test_shipped_sample() -> None:
    model = SAMPLES / "digits32_cnn.onnx"
    assert model.stat().st_size <= 3 * 1024 * 1024
    proto = onnx.load(str(model))
    onnx.checker.check_model(proto)
    assert len({n.name for n in proto.graph.node}) == len(proto.graph.node)   # all named
    test = np.load(SAMPLES / "digits32_test.npz", allow_pickle=False)
    calib = np.load(SAMPLES / "digits32_calib.npz", allow_pickle=False)
    logits = _run(model, test["input"])
    assert np.allclose(logits, test["logits"], atol=1e-4)
    assert (logits.argmax(1) == test["labels"]).mean() >= 0.98
    # calibration images come from the training split: none is a test image
    flat_test = {row.tobytes() for row in test["input"].reshape(len(test["input"]), -1)}
    assert not any(row.tobytes() in flat_test
                   for row in calib["input"].reshape(len(calib["input"]), -1))
    small_calib = np.load(SAMPLES / "digits_calib.npz", allow_pickle=False)["input"]
    assert np.array_equal(calib["input"], _script().upscale(small_calib))
