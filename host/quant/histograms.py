"""Streaming per-tensor statistics and the range-selection math of the histogram methods.

Calibration runs in two passes over the data, one chunk at a time (see ``calibrate.py``):

1. ``RangeState``: min, max (and min/max of |x| for percentile), folded sample by sample;
2. ``HistogramState``: histograms with the *final* edges known from pass 1, so adding the
   chunks' counts gives exactly the histogram onnxruntime builds when it holds every
   activation of every sample in RAM at once (same edges, same float32 bin arithmetic).

The selection functions then reproduce onnxruntime's own math (``HistogramCollector`` in
``onnxruntime/quantization/calibrate.py``): ``percentile_range`` and ``entropy_range`` give
the same thresholds as ``compute_percentile`` / ``get_entropy_threshold`` (the KL search is
the same algorithm with numpy sums instead of Python loops), ``distribution_range`` the same
as ``compute_distribution``. ``mse_range`` is ours; its formula is in its docstring.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np


@dataclass
class RangeState:
    """Running min/max of one tensor (NaNs ignored, as onnxruntime's nanmin/nanmax do)."""

    min: Optional[np.float32] = None
    max: Optional[np.float32] = None
    abs_min: Optional[np.float32] = None       # only tracked when ``track_abs``
    abs_max: Optional[np.float32] = None
    count: int = 0
    track_abs: bool = False

    def fold(self, arr: np.ndarray) -> None:
        if arr.size == 0:
            lo = hi = np.zeros((), dtype=arr.dtype)[()]
        else:
            lo, hi = np.nanmin(arr), np.nanmax(arr)
        self.min = lo if self.min is None else min(self.min, lo)
        self.max = hi if self.max is None else max(self.max, hi)
        if self.track_abs:
            if arr.size == 0:
                alo = ahi = lo
            else:
                ahi = max(abs(lo), abs(hi))
                if lo >= 0:                      # one-sided data: no |x| pass needed
                    alo = lo
                elif hi <= 0:
                    alo = -hi
                else:
                    alo = np.nanmin(np.abs(arr))
                alo = np.asarray(alo, dtype=arr.dtype)[()]
                ahi = np.asarray(ahi, dtype=arr.dtype)[()]
            self.abs_min = alo if self.abs_min is None else min(self.abs_min, alo)
            self.abs_max = ahi if self.abs_max is None else max(self.abs_max, ahi)
        self.count += int(arr.size)

    @property
    def threshold(self) -> np.float32:
        """max(|min|, |max|) in the tensor's dtype: the half-width of the signed histogram."""
        return np.array(max(abs(self.min), abs(self.max)), dtype=np.asarray(self.min).dtype)[()]


class HistogramState:
    """A fixed-edge histogram filled chunk by chunk (memory: one int64 array of ``bins``)."""

    def __init__(self, bins: int, lo: np.floating, hi: np.floating, absolute: bool,
                 count_zeros: bool = False) -> None:
        self.bins = int(bins)
        self.range = (lo, hi)
        self.absolute = absolute
        self.count_zeros = count_zeros
        self.zeros = 0                 # exact zeros seen (when ``count_zeros``)
        self.hist: Optional[np.ndarray] = None
        self.edges: Optional[np.ndarray] = None

    def fold(self, arr: np.ndarray) -> None:
        flat = arr.reshape(-1)
        if self.count_zeros:
            self.zeros += int(flat.size - np.count_nonzero(flat))
        if self.absolute:
            flat = np.absolute(flat)
        hist, edges = np.histogram(flat, bins=self.bins, range=self.range)
        if self.hist is None:
            self.hist = hist
            self.edges = edges.astype(arr.dtype)
        else:
            self.hist += hist

    def finish(self, dtype=np.float32) -> Tuple[np.ndarray, np.ndarray]:
        if self.hist is None:  # no data at all: an empty histogram over the range
            hist, edges = np.histogram(np.zeros(0, dtype=dtype), bins=self.bins, range=self.range)
            self.hist, self.edges = hist, edges.astype(dtype)
        return self.hist, self.edges


def abs_histogram(bins: int, state: RangeState) -> HistogramState:
    """onnxruntime's percentile histogram: |x| over [min|x|, max|x|]
    (``collect_absolute_value``)."""
    return HistogramState(bins, state.abs_min, state.abs_max, absolute=True)


def signed_histogram(bins: int, state: RangeState, count_zeros: bool = False) -> HistogramState:
    """onnxruntime's entropy/distribution histogram: x over [-T, T], T = max|x|
    (``collect_value``)."""
    threshold = state.threshold
    return HistogramState(bins, -threshold, threshold, absolute=False, count_zeros=count_zeros)


def one_sided_histogram(bins: int, state: RangeState) -> HistogramState:
    """|x| over [0, max|x|] with the exact zeros counted: edgetune's entropy histogram for a
    tensor whose values are all >= 0 (or all <= 0), e.g. a Relu output."""
    threshold = state.threshold
    return HistogramState(bins, np.zeros((), dtype=np.asarray(threshold).dtype)[()], threshold,
                          absolute=True, count_zeros=True)


def _clamp(lo, hi, state: RangeState):
    if lo < state.min:
        lo = state.min
    if hi > state.max:
        hi = state.max
    return lo, hi


def percentile_range(hist: np.ndarray, edges: np.ndarray, state: RangeState,
                     percentile: float) -> Tuple[np.float32, np.float32]:
    """Symmetric percentile of |x| (onnxruntime ``compute_percentile`` with symmetric=True)."""
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile {percentile} is not in [0, 100]")
    total = hist.sum()
    cdf = np.cumsum(hist / total) if total else np.zeros(hist.shape)
    idx = min(int(np.searchsorted(cdf, percentile / 100.0)), edges.size - 1)
    thr = np.array(edges[idx], dtype=edges.dtype)
    return _clamp(-thr, thr, state)


def entropy_range(hist: np.ndarray, edges: np.ndarray, state: RangeState,
                  num_quantized_bins: int) -> Tuple[np.float32, np.float32]:
    """KL-divergence threshold search (onnxruntime ``get_entropy_threshold``, TensorRT's method).

    For every candidate window [zero - i, zero + i] of the signed histogram, the outliers are
    folded into the edge bins (reference distribution p), the window is merged into
    ``num_quantized_bins`` bins and expanded back over its non-empty bins (candidate q), and
    the window with the least KL(p || q) wins. Same integer arithmetic as onnxruntime.
    """
    from onnxruntime.quantization.calibrate import entropy
    from onnxruntime.quantization.quant_utils import smooth_distribution

    num_bins = hist.size
    zero = num_bins // 2
    half_q = num_quantized_bins // 2
    if zero - half_q + 1 <= 0:
        raise ValueError(f"{num_bins} histogram bins cannot hold {num_quantized_bins} "
                         "quantized bins: use more histogram bins")
    dtype = edges.dtype
    hist = hist.astype(np.int64, copy=False)
    csum = np.concatenate(([0], np.cumsum(hist)))
    total = csum[-1]
    divergences = np.zeros(zero - half_q + 1)
    windows = []
    for i in range(half_q, zero + 1):
        start = zero - i
        end = min(zero + i + 1, num_bins)
        windows.append((start, end))
        sliced = hist[start:end]
        p = sliced.copy()
        p[0] += csum[start]
        p[-1] += total - csum[end]
        nonzeros = (p != 0).astype(np.int64)
        merged = sliced.size // num_quantized_bins
        head = merged * num_quantized_bins
        quantized = sliced[:head].reshape(num_quantized_bins, merged).sum(axis=1)
        quantized[-1] += sliced[head:].sum()
        norm = nonzeros[:head].reshape(num_quantized_bins, merged).sum(axis=1)
        values = np.zeros(num_quantized_bins, dtype=np.int64)
        filled = norm != 0
        values[filled] = quantized[filled] / norm[filled]      # truncates, as onnxruntime does
        q = np.zeros(p.size, dtype=np.int64)
        q[:head] = np.repeat(values, merged)
        ps = smooth_distribution(p)
        qs = smooth_distribution(q)
        if ps is None or qs is None:
            div = np.array(np.inf, dtype=dtype)
        else:
            div = np.array(entropy(ps, qs), dtype=dtype)
        divergences[i - half_q] = div
    best = int(np.argmin(divergences))
    start, end = windows[best]
    return _clamp(edges[start], edges[end], state)


def distribution_stats(hist: np.ndarray, edges: np.ndarray) -> Tuple[float, float]:
    """Mean and standard deviation of the histogram (onnxruntime ``_avg_std``, power 1)."""
    values = (edges[:-1] + edges[1:]) * 0.5
    total = hist.sum()
    if not total:
        return 0.0, 0.0
    avg = (hist * values).sum() / total
    std = ((hist * values ** 2).sum() / total - avg ** 2) ** 0.5
    return float(np.float32(avg)), float(np.float32(std))


def distribution_range(hist: np.ndarray, edges: np.ndarray) -> Tuple[np.float32, np.float32]:
    """onnxruntime ``compute_distribution``: the histogram's full (symmetric) extent."""
    return edges.min(), edges.max()


def mse_range(hist: np.ndarray, edges: np.ndarray, state: RangeState, levels: int,
              symmetric: bool) -> Tuple[np.float32, np.float32]:
    """The clipping range that minimises the expected quantization MSE of the histogram.

    With bin centres c_j and counts n_j (N = sum n_j) of the signed histogram over [-T, T],
    every candidate threshold t = T*k/K (k = 1..K, K = bins/2, the positive bin edges) gives
    the range [lo, hi] = [max(min, -t), min(max, t)], widened to hold 0 (and made symmetric
    when activations are) exactly as onnxruntime's ``compute_scale_zp`` does, and the step
    D = (hi - lo) / levels (levels = qmax - qmin of the activation type). Then

        MSE(t) = 1/N * sum_j n_j * [ (c_j - clip(c_j, lo, hi))^2  +  D^2/12 * [lo <= c_j <= hi] ]

    (clipping error of the values outside the range, plus uniform rounding noise D^2/12 for
    the values inside it). The t with the least MSE wins (the smallest on ties).
    """
    lo_obs = float(state.min)
    hi_obs = float(state.max)
    total = hist.sum()
    if not total or hi_obs == lo_obs:
        return state.min, state.max
    e = edges.astype(np.float64)
    centres = (e[:-1] + e[1:]) * 0.5
    counts = hist.astype(np.float64)
    half = hist.size // 2
    thresholds = e[half + 1:]
    thresholds = thresholds[thresholds > 0]
    if thresholds.size == 0:
        return state.min, state.max
    best_err = np.inf
    best = (lo_obs, hi_obs)
    # Blocks of candidates keep the temporary [candidates x bins] matrix small.
    for begin in range(0, thresholds.size, 128):
        t = thresholds[begin:begin + 128, None]
        lo = np.maximum(lo_obs, -t)
        hi = np.minimum(hi_obs, t)
        qlo = np.minimum(lo, 0.0)
        qhi = np.maximum(hi, 0.0)
        if symmetric:
            a = np.maximum(-qlo, qhi)
            qlo, qhi = -a, a
        step = (qhi - qlo) / levels
        clipped = np.clip(centres[None, :], qlo, qhi)
        inside = (centres[None, :] >= qlo) & (centres[None, :] <= qhi)
        err = ((centres[None, :] - clipped) ** 2 + inside * (step ** 2 / 12.0)) @ counts
        k = int(np.argmin(err))
        if err[k] < best_err:
            best_err = float(err[k])
            best = (float(lo[k, 0]), float(hi[k, 0]))
    dtype = np.asarray(state.min).dtype
    return np.array(best[0], dtype=dtype)[()], np.array(best[1], dtype=dtype)[()]
