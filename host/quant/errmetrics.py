"""The error figures of one tensor against its reference: SQNR, cosine, noise-to-signal ratio.

Streamed: ``ErrorAccumulator`` keeps running sums (per tensor, and per channel along one
axis), so a chunk of samples is added at a time and nothing is kept per sample; ``result()``
turns the sums into ``ErrorMetrics``. ``error_metrics`` is the one-shot form. The SQNR
definition is onnxruntime's (``compute_signal_to_quantization_noice_ratio``), capped at
+/-``SQNR_CAP_DB`` instead of +/-inf. Part of ``edgetune.host.quant.analysis`` (which re-exports it).

SQNR and the cosine from the sums are the board's own (``edgetune.device.metrics``:
``sqnr_from_sums``, ``cosine_from_sums``, the same cap), so an SQNR here means what a board's
evaluation reports. What differs, on purpose: this cosine is tensor-wide (the board's
``cosine_global``, not its per-sample mean ``cosine``), and products are formed in the
tensors' own precision (float32) rather than float64, because analysis streams every
intermediate tensor of a model; identical tensors report exactly 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import numpy as np

from edgetune.device.metrics import SQNR_CAP_DB, cosine_from_sums, sqnr_from_sums

NSR_CAP = 10.0 ** (SQNR_CAP_DB / 10.0)


@dataclass(frozen=True)
class ErrorMetrics:
    """The error of a tensor ``y`` against its reference ``x`` (formulas: ``FORMULAS``)."""

    sqnr_db: float                           # 10*log10(sum x^2 / sum (x-y)^2), capped +/-200
    cosine: float                            # sum xy / (|x| |y|)
    nsr: float                               # sum (x-y)^2 / sum x^2
    channel_sqnr_db: Optional[float] = None  # mean per-channel SQNR (None: no channel axis)
    elements: int = 0                        # how many values were compared

    def as_dict(self) -> Dict[str, Any]:
        return {"sqnr_db": self.sqnr_db, "cosine": self.cosine, "nsr": self.nsr,
                "channel_sqnr_db": self.channel_sqnr_db, "elements": self.elements}


def sqnr_db(signal: float, noise: float) -> float:
    """SQNR in dB from sum(x^2) and sum((x-y)^2), capped at +/-``SQNR_CAP_DB`` (the board's)."""
    return sqnr_from_sums(signal, noise, SQNR_CAP_DB)


class ErrorAccumulator:
    """Running sums of one (reference, test) pair; ``update`` per chunk, ``result`` at the end.

    ``channel_axis``: the axis whose slices get their own SQNR (None: no per-channel figure).
    """

    def __init__(self, channel_axis: Optional[int] = None) -> None:
        self.channel_axis = channel_axis
        self.ref_sq = 0.0
        self.test_sq = 0.0
        self.dot = 0.0
        self.err_sq = 0.0
        self.elements = 0
        self.ch_ref: Optional[np.ndarray] = None
        self.ch_err: Optional[np.ndarray] = None

    def update(self, reference: np.ndarray, test: np.ndarray) -> None:
        """Add one chunk. Products are formed in the inputs' precision (float32 for model
        tensors) per sample and channel, and summed in float64 (relative error ~1e-6)."""
        dtype = np.result_type(np.asarray(reference).dtype, np.asarray(test).dtype, np.float32)
        x = np.ascontiguousarray(reference, dtype=dtype)
        y = np.ascontiguousarray(test, dtype=dtype)
        if x.shape != y.shape:
            raise ValueError(f"shape {x.shape} differs from {y.shape}")
        axis = self.channel_axis
        if axis is not None and x.ndim >= 2 and -x.ndim <= axis < x.ndim:
            axis %= x.ndim
            if axis == 1:
                x3 = x.reshape(x.shape[0], x.shape[1], -1)
                y3 = y.reshape(x3.shape)
            else:
                x3 = np.ascontiguousarray(np.moveaxis(x, axis, 0)).reshape(1, x.shape[axis], -1)
                y3 = np.ascontiguousarray(np.moveaxis(y, axis, 0)).reshape(x3.shape)
        else:
            axis = None
            x3 = x.reshape(1, 1, -1)
            y3 = y.reshape(1, 1, -1)
        e3 = x3 - y3

        def sums(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            return np.einsum("ncr,ncr->nc", a, b).sum(axis=0, dtype=np.float64)

        ch_ref, ch_err = sums(x3, x3), sums(e3, e3)
        self.ref_sq += float(ch_ref.sum())
        self.err_sq += float(ch_err.sum())
        self.dot += float(sums(x3, y3).sum())
        self.test_sq += float(sums(y3, y3).sum())
        self.elements += int(x.size)
        if axis is None:
            return
        if self.ch_ref is None or self.ch_ref.shape != ch_ref.shape:
            if self.ch_ref is not None:         # the channel count changed between chunks
                self.channel_axis = None
                self.ch_ref = self.ch_err = None
                return
            self.ch_ref, self.ch_err = ch_ref, ch_err
        else:
            self.ch_ref += ch_ref
            self.ch_err += ch_err

    def result(self) -> ErrorMetrics:
        sqnr = sqnr_db(self.ref_sq, self.err_sq)
        if self.ref_sq > 0.0:
            nsr = min(NSR_CAP, self.err_sq / self.ref_sq)
        else:
            nsr = 0.0 if self.err_sq == 0.0 else NSR_CAP
        if self.err_sq == 0.0:
            cosine = 1.0                        # identical (also when both are all zero)
        else:
            cosine = cosine_from_sums(self.dot, self.ref_sq, self.test_sq)
        channel: Optional[float] = None
        if self.ch_ref is not None and self.ch_err is not None:
            live = self.ch_ref > 0.0
            if live.any():
                channel = float(np.mean([sqnr_db(float(s), float(n)) for s, n in
                                         zip(self.ch_ref[live], self.ch_err[live])]))
        return ErrorMetrics(sqnr_db=sqnr, cosine=cosine, nsr=nsr, channel_sqnr_db=channel,
                            elements=self.elements)


def error_metrics(reference: np.ndarray, test: np.ndarray,
                  channel_axis: Optional[int] = None) -> ErrorMetrics:
    """One-shot ``ErrorMetrics`` of ``test`` against ``reference``."""
    acc = ErrorAccumulator(channel_axis)
    acc.update(reference, test)
    return acc.result()


def flag_reasons(metrics: Optional[ErrorMetrics], view: str, cos_thr: float, sqnr_thr: float
                 ) -> List[str]:
    """Why ``metrics`` is flagged (cosine under ``cos_thr``, SQNR under ``sqnr_thr`` dB; the
    per-channel SQNR too, except for the accumulated view); empty: not flagged."""
    if metrics is None:
        return []
    reasons = []
    if metrics.cosine < cos_thr:
        reasons.append(f"{view} cosine {metrics.cosine:.4f} < {cos_thr:g}")
    if metrics.sqnr_db < sqnr_thr:
        reasons.append(f"{view} SQNR {metrics.sqnr_db:.1f} dB < {sqnr_thr:g} dB")
    channel = metrics.channel_sqnr_db
    if channel is not None and channel < sqnr_thr and view != "accumulated":
        reasons.append(f"{view} channel SQNR {channel:.1f} dB < {sqnr_thr:g} dB")
    return reasons


__all__ = ["ErrorAccumulator", "ErrorMetrics", "NSR_CAP", "SQNR_CAP_DB", "error_metrics",
           "flag_reasons", "sqnr_db"]
