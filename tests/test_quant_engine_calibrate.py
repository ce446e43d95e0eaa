"""Calibration: our streaming calibrators against onnxruntime's own, and bounded memory."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgetune.host import builders
from edgetune.host.quant.calibdata import CalibrationData
from edgetune.host.quant.calibrate import calibrate, tensors_to_calibrate
from edgetune.host.quant.histograms import RangeState, entropy_range, mse_range
from edgetune.host.quant.prepare import effective_op_types, prepare_model
from edgetune.host.quant.settings import QuantizeSettings


def _settings(model: Path, tmp_path: Path, **kw) -> QuantizeSettings:
    return QuantizeSettings(model=model, output=tmp_path / "out.onnx", **kw)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """tiny_cnn (prepared) and 40 random samples."""
    tmp = tmp_path_factory.mktemp("tiny")
    path = builders.save(builders.tiny_cnn(seed=3), tmp / "tiny.onnx")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 3, 16, 16)).astype(np.float32)
    prepared = prepare_model(QuantizeSettings(model=path, output=tmp / "o.onnx"))
    yield path, prepared, x
    prepared.close()


def _ort_ranges(prepared, x, method, tmp_path, batch=1, **extra):
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    calib = create_calibrator(Path(prepared.path),
                              sorted(effective_op_types(QuantizeSettings(Path("m"), Path("o")))),
                              augmented_model_path=str(tmp_path / f"aug_{method}.onnx"),
                              calibrate_method=getattr(CalibrationMethod, method),
                              extra_options=extra)
    reader = CalibrationData.from_arrays({"input": x}).as_reader(batch=batch)
    calib.collect_data(reader)
    return {k: tuple(float(np.asarray(v, dtype=np.float32).reshape(-1)[0]) for v in td.range_value)
            for k, td in calib.compute_data().items()}


def test_minmax_ranges_equal_onnxruntime(tiny, tmp_path):
    path, prepared, x = tiny
    data = CalibrationData.from_arrays({"input": x})
    ours = calibrate(prepared, data, _settings(path, tmp_path, calib_batch=1))
    theirs = _ort_ranges(prepared, x, "MinMax", tmp_path)
    assert set(ours.tensors) == set(theirs)
    for name, (lo, hi) in theirs.items():
        assert ours.tensors[name] == (lo, hi), name
    # chunked runs (batch 16 in one session run) give the same ranges to float precision
    chunked = calibrate(prepared, data, _settings(path, tmp_path, calib_batch=16))
    for name, (lo, hi) in theirs.items():
        assert chunked.tensors[name] == pytest.approx((lo, hi), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("method,ort_method,extra", [
    ("percentile", "Percentile", {"percentile": 99.9}),
    ("entropy", "Entropy", {"num_bins": 512, "num_quantized_bins": 127}),
    ("distribution", "Distribution", {"num_bins": 512}),
])
def test_histogram_ranges_match_onnxruntime(tiny, tmp_path, method, ort_method, extra):
    path, prepared, x = tiny
    settings = _settings(path, tmp_path, method=method, percentile=99.9, histogram_bins=512,
                         quantized_bins=127, calib_batch=1, entropy_compat="ort")
    ours = calibrate(prepared, CalibrationData.from_arrays({"input": x}), settings)
    theirs = _ort_ranges(prepared, x, ort_method, tmp_path, **extra)
    assert set(ours.tensors) == set(theirs)
    for name, (lo, hi) in theirs.items():
        olo, ohi = ours.tensors[name]
        span = max(abs(lo), abs(hi))
        assert abs(olo - lo) <= 0.01 * span and abs(ohi - hi) <= 0.01 * span, \
            (name, (olo, ohi), (lo, hi))
    # the clip methods really clip: some range is narrower than the observed min/max
    if method != "distribution":
        assert any(ours.tensors[n][1] < ours.observed[n][1] for n in ours.tensors)


def test_entropy_search_equals_onnxruntime_get_entropy_threshold():
    from onnxruntime.quantization.calibrate import HistogramCollector

    rng = np.random.default_rng(1)
    for trial in range(3):
        data = np.concatenate([rng.laplace(0, 1, 20000), rng.normal(0, 8, 50)]).astype(np.float32)
        if trial == 2:
            data = np.maximum(data, 0)              # one-sided, like a Relu output
        state = RangeState()
        state.fold(data)
        thr = state.threshold
        hist, edges = np.histogram(data, 256, range=(-thr, thr))
        edges = edges.astype(np.float32)
        collector = HistogramCollector("entropy", False, 256, 63, 99.9, "same")
        expected = collector.get_entropy_threshold(
            (hist, edges, np.float32(data.min()), np.float32(data.max()), thr), 63)
        got = entropy_range(hist, edges, state, 63)
        assert (float(got[0]), float(got[1])) == (float(expected[0]), float(expected[1]))


def test_mse_clips_a_laplace_tail_below_its_max():
    rng = np.random.default_rng(2)
    data = rng.laplace(0.0, 1.0, 200_000).astype(np.float32)
    state = RangeState()
    state.fold(data)
    thr = state.threshold
    hist, edges = np.histogram(data, 2048, range=(-thr, thr))
    lo, hi = mse_range(hist, edges.astype(np.float32), state, levels=255, symmetric=False)
    # For Laplace(b=1) and 8 bits the MSE-optimal clip is near 9-10 b; the max of 200k
    # samples is ~12 b. It must clip (below max) but not absurdly (above 4 b).
    assert 4.0 < hi < float(data.max())
    assert -float(data.max()) < lo < -4.0

    def mse(lo_, hi_):
        step = (hi_ - lo_) / 255
        q = np.clip(np.round((data - lo_) / step), 0, 255) * step + lo_
        return float(np.mean((data - q) ** 2))

    assert mse(lo, hi) < mse(float(data.min()), float(data.max()))


class CountingData:
    """CalibrationData protocol; counts how many chunks are alive at once (weakrefs)."""

    def __init__(self, x: np.ndarray) -> None:
        self.x = x
        self.input_names = ("input",)
        self.alive = 0
        self.max_alive = 0
        self.served = 0

    def __len__(self) -> int:
        return len(self.x)

    def chunks(self, size: int):
        import weakref

        for start in range(0, len(self.x), size):
            arr = self.x[start:start + size].copy()
            self.alive += 1
            self.served += 1
            self.max_alive = max(self.max_alive, self.alive)
            weakref.finalize(arr, self._dead)
            yield {"input": arr}
            del arr

    def _dead(self) -> None:
        self.alive -= 1


@pytest.mark.parametrize("method", ["minmax", "entropy"])
def test_chunks_are_processed_one_at_a_time(tiny, tmp_path, method):
    path, prepared, x = tiny
    data = CountingData(x)
    ranges = calibrate(prepared, data, _settings(path, tmp_path, method=method, calib_batch=8,
                                                 histogram_bins=256, quantized_bins=63))
    passes = 1 if method == "minmax" else 2
    assert data.served == passes * 5
    assert data.max_alive == 1          # never two chunks in memory at once
    assert ranges.n_samples == 40
    # the state kept per tensor is a fixed-size histogram, not the activations
    model = onnx.load(str(prepared.path))
    assert len(ranges.tensors) == len(tensors_to_calibrate(model, effective_op_types(
        QuantizeSettings(Path("m"), Path("o")))))


def test_progress_reports_every_chunk(tiny, tmp_path):
    path, prepared, x = tiny
    seen = []
    calibrate(prepared, CalibrationData.from_arrays({"input": x}),
              _settings(path, tmp_path, method="percentile", calib_batch=10),
              progress=lambda stage, done, total: seen.append((stage, done, total)))
    assert seen == [("calibrate", i, 8) for i in range(1, 9)]


def test_extra_methods_come_from_the_same_passes(tiny, tmp_path):
    path, prepared, x = tiny
    settings = _settings(path, tmp_path, method="minmax", histogram_bins=256,
                         quantized_bins=63)
    ranges = calibrate(prepared, CalibrationData.from_arrays({"input": x}), settings,
                       extra_methods=[("percentile", 99.0), ("mse", None)])
    assert set(ranges.alt) == {"percentile(99)", "mse"}
    alone = calibrate(prepared, CalibrationData.from_arrays({"input": x}),
                      dataclasses.replace(settings, method="percentile", percentile=99.0))
    assert ranges.alt["percentile(99)"] == alone.tensors
    assert ranges.tensors == ranges.observed


def test_data_that_does_not_fit_the_model_is_a_clear_error(tiny, tmp_path):
    from edgetune.host.errors import BadInputError

    path, prepared, _ = tiny
    wrong = CountingData(np.zeros((4, 1, 16, 16), np.float32))      # 1 channel, model wants 3
    with pytest.raises(BadInputError, match=r"calibration data failed \(input \(4, 1, 16, 16\)"):
        calibrate(prepared, wrong, _settings(path, tmp_path))
    other = CalibrationData.from_arrays({"x": np.zeros((4, 3, 16, 16), np.float32)})
    with pytest.raises(BadInputError, match=r"feeds inputs \['x'\] but the model has inputs"):
        calibrate(prepared, other, _settings(path, tmp_path))
