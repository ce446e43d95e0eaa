"""Entropy calibration (host.quant.entropy): the zero bin, one-sided data, levels per dtype."""

from __future__ import annotations

import numpy as np
import pytest

from edgetune.host.quant.entropy import (entropy_one_sided, entropy_two_sided, quant_levels)
from edgetune.host.quant.histograms import (RangeState, entropy_range, one_sided_histogram,
                                            signed_histogram)

BINS = 2048


def _relu_like(zeros: int, seed: int = 0) -> np.ndarray:
    """A Relu output: exact zeros plus a positive, long-tailed part."""
    rng = np.random.default_rng(seed)
    positive = np.abs(rng.laplace(0.0, 1.0, 40_000)).astype(np.float32)
    return np.concatenate([np.zeros(zeros, np.float32), positive])


def _fixed_range(data: np.ndarray, act: str = "uint8", symmetric: bool = False):
    state = RangeState()
    state.fold(data)
    lo, hi = float(state.min), float(state.max)
    levels = quant_levels(act, symmetric)
    if lo >= 0 or hi <= 0:
        h = one_sided_histogram(BINS, state)
        h.fold(data)
        hist, edges = h.finish()
        return entropy_one_sided(hist, edges, h.zeros, lo, hi, levels, symmetric)
    h = signed_histogram(BINS, state, count_zeros=True)
    h.fold(data)
    hist, edges = h.finish()
    return entropy_two_sided(hist, edges, h.zeros, lo, hi, levels, symmetric)


def _ort_range(data: np.ndarray):
    state = RangeState()
    state.fold(data)
    h = signed_histogram(BINS, state)
    h.fold(data)
    hist, edges = h.finish()
    return tuple(float(v) for v in entropy_range(hist, edges, state, 255))


def _mse(data: np.ndarray, lo: float, hi: float, levels: int = 255) -> float:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    step = (hi - lo) / levels
    zp = np.round(-lo / step)
    q = (np.clip(np.round(data / step) + zp, 0, levels) - zp) * step
    return float(np.mean((data - q) ** 2))


def test_levels_per_activation_type():
    assert quant_levels("uint8", False) == 256 and quant_levels("int8", False) == 256
    assert quant_levels("int8", True) == 255
    assert quant_levels("int16", False) == 65536 and quant_levels("int16", True) == 65535


def test_relu_output_is_not_clipped_to_a_fraction_of_its_range():
    data = _relu_like(zeros=60_000)            # 60% exact zeros, like a Relu output
    lo, hi = _fixed_range(data)
    ort_lo, ort_hi = _ort_range(data)
    assert lo == 0.0 and ort_lo == 0.0
    # onnxruntime's search (kept as --entropy-compat ort) cuts far into the distribution...
    assert ort_hi < np.quantile(data[data > 0], 0.95)
    # ...ours keeps at least the 99.9th percentile of the non-zero values and clips the tail
    assert np.quantile(data[data > 0], 0.999) <= hi < float(data.max())
    assert _mse(data, lo, hi) < _mse(data, ort_lo, ort_hi)


def test_exact_zeros_do_not_move_the_threshold():
    few = _fixed_range(_relu_like(zeros=10))
    many = _fixed_range(_relu_like(zeros=400_000))
    assert many == pytest.approx(few, rel=1e-6)
    # with the zero spike in the search (onnxruntime's), the threshold moves
    assert _ort_range(_relu_like(zeros=400_000))[1] < _ort_range(_relu_like(zeros=10))[1]


def test_negative_one_sided_data_mirrors_positive():
    data = _relu_like(zeros=1000)
    lo, hi = _fixed_range(data)
    nlo, nhi = _fixed_range(-data)
    assert (nlo, nhi) == pytest.approx((-hi, -lo), rel=1e-6)


def test_int16_activations_are_not_clipped():
    # 65536 levels are finer than a 2048-bin histogram: nothing to gain by clipping
    data = _relu_like(zeros=1000)
    assert _fixed_range(data, act="int16") == (0.0, float(data.max()))
    rng = np.random.default_rng(3)
    two = rng.laplace(0.0, 1.0, 50_000).astype(np.float32)
    assert _fixed_range(two, act="int16") == (float(two.min()), float(two.max()))


def test_symmetric_activations_give_one_sided_data_half_the_levels():
    data = _relu_like(zeros=1000)
    _, hi_asym = _fixed_range(data, act="int8", symmetric=False)
    _, hi_sym = _fixed_range(data, act="int8", symmetric=True)
    assert hi_sym < hi_asym           # coarser steps: clipping earlier pays off sooner


def test_two_sided_laplace_tail_is_clipped_but_not_absurdly():
    rng = np.random.default_rng(2)
    data = rng.laplace(0.0, 1.0, 200_000).astype(np.float32)
    lo, hi = _fixed_range(data)
    assert 4.0 < hi < float(data.max()) and -float(data.max()) < lo < -4.0
    assert _mse(data, lo, hi) < _mse(data, float(data.min()), float(data.max()))


def test_two_sided_range_is_clamped_to_the_data():
    rng = np.random.default_rng(4)
    data = np.concatenate([rng.uniform(-0.5, 0.0, 5_000),
                           rng.exponential(1.0, 50_000)]).astype(np.float32)
    lo, hi = _fixed_range(data)
    assert lo >= float(data.min()) and hi <= float(data.max())
    assert lo < 0 < hi


def test_all_zero_tensor_keeps_its_range():
    data = np.zeros(1000, np.float32)
    assert _fixed_range(data) == (0.0, 0.0)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_a_tensor_of_a_few_values_is_not_collapsed_onto_one(sign: float) -> None:
    """Spiky, strictly one-sided tensors (a detector's anchor-size branch) keep their spikes:
    a window may clip at most MAX_CLIPPED_SHARE of the values. (The detector below is the
    case that failed: its range became [0.236, 0.236]; these synthetic spikes pin the
    property, they did not fail before the fix.)"""
    data = sign * np.repeat(np.array([0.236, 0.602], np.float32), 5000)
    lo, hi = _fixed_range(data)
    assert (lo, hi) == pytest.approx(tuple(sorted((sign * 0.236, sign * 0.602))), abs=1e-3)
    three = np.repeat(np.array([0.1, 0.5, 0.9], np.float32), [100, 5000, 5000])
    lo, hi = _fixed_range(three)
    assert hi == pytest.approx(0.9, abs=1e-3)          # the two big spikes are kept


def test_the_sample_detector_keeps_its_map_under_entropy(tmp_path) -> None:
    """End to end on the shipped detector: entropy calibration used to score mAP 0 on it."""
    import onnxruntime as ort

    from edgetune.device.detection import DetectionMAP, decode
    from edgetune.host.cli import main
    from tests.host_fixtures import SAMPLES

    out = tmp_path / "det.int8.onnx"
    code = main(["quantize", str(SAMPLES / "shapes_det.onnx"), "-o", str(out), "--calib",
                 str(SAMPLES / "shapes_det_calib.npz"), "--method", "entropy", "--no-record"])
    assert code == 0
    test = np.load(SAMPLES / "shapes_det_test.npz")
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    output = session.run(None, {session.get_inputs()[0].name: test["images"]})[0]
    score = DetectionMAP()
    score.update(decode("yolov5", output), test["boxes"], test["classes"])
    assert score.result()["map50"] > 0.9            # minmax's INT8 gives 0.97 here
