"""Accuracy and fidelity metrics, pure numpy: the truth of what a board measures.

Each metric has a one-shot function and a streaming accumulator (``update`` per batch,
``result`` at the end) so an evaluation never has to keep every output in memory.

The host imports this module for its own local evaluation (``edgetune.host.quant.evaluate``)
and its SQNR definition (``edgetune.host.quant.errmetrics``), so "top-1" or "SQNR" mean the
same on the PC as on a board. It must stay importable with numpy alone: no grpc, no
onnxruntime, no other device module (tests/test_metrics_shared.py checks).
"""

from __future__ import annotations

import math
from typing import Dict, Optional

import numpy as np

SQNR_CAP_DB = 200.0             # what "identical" reports instead of infinity


def as_class_scores(output: np.ndarray) -> Optional[np.ndarray]:
    """``output`` as [N, C] scores when it is class-shaped ([N, C], [N, 1, C], [N, C, 1, 1]...),
    else None."""
    if output.ndim < 2:
        return None
    rest = [d for d in output.shape[1:] if d != 1]
    if len(rest) > 1:
        return None
    classes = rest[0] if rest else 1
    return output.reshape(output.shape[0], classes)


def topk_correct(scores: np.ndarray, labels: np.ndarray, k: int) -> int:
    """How many rows of ``scores`` [N, C] have their label among the k highest scores."""
    scores = np.asarray(scores)
    labels = np.asarray(labels).reshape(-1)
    if scores.shape[0] != labels.shape[0]:
        raise ValueError(f"{scores.shape[0]} score rows but {labels.shape[0]} labels")
    k = min(k, scores.shape[1])
    if k == 1:
        return int(np.count_nonzero(np.argmax(scores, axis=1) == labels))
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return int(np.count_nonzero((top == labels[:, None]).any(axis=1)))


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Fraction of samples whose label is among the ``k`` highest scores."""
    n = np.asarray(labels).size
    return topk_correct(scores, labels, k) / n if n else 0.0


class TopK:
    def __init__(self, k: int) -> None:
        self.k = k
        self.correct = 0
        self.count = 0

    def update(self, scores: np.ndarray, labels: np.ndarray) -> None:
        self.correct += topk_correct(scores, labels, self.k)
        self.count += int(np.asarray(labels).size)

    def result(self) -> float:
        return self.correct / self.count if self.count else 0.0


def _cap_db(value: float, cap: float) -> float:
    if math.isnan(value):
        return value
    return max(-cap, min(cap, value))


def sqnr_from_sums(signal: float, noise: float, cap: float = SQNR_CAP_DB) -> float:
    """10*log10(signal / noise) from sum(ref^2) and sum((ref-out)^2), capped at +/-``cap``:
    no noise at all is +cap (also for an all-zero reference), no signal is -cap."""
    if noise <= 0.0:
        return cap
    if signal <= 0.0:
        return -cap
    return _cap_db(10.0 * math.log10(signal / noise), cap)


def cosine_from_sums(dot: float, ref_sq: float, out_sq: float) -> float:
    """sum(ref*out) / (|ref| |out|) in [-1, 1]; 1 when both are all zero, 0 when one is."""
    denom = math.sqrt(ref_sq) * math.sqrt(out_sq)
    if denom > 0:
        return max(-1.0, min(1.0, dot / denom))
    return 1.0 if ref_sq == out_sq == 0.0 else 0.0


def sample_cosines(reference: np.ndarray, output: np.ndarray) -> np.ndarray:
    """The cosine similarity of each sample (first axis) flattened, in float64: 1 when both
    are all zero. ``Fidelity``'s ``cosine`` is their mean."""
    ref = np.asarray(reference, np.float64)
    out = np.asarray(output, np.float64)
    if ref.shape != out.shape:
        raise ValueError(f"reference shape {ref.shape} differs from output shape {out.shape}")
    n = ref.shape[0] if ref.ndim else 1
    ref2, out2 = ref.reshape(n, -1), out.reshape(n, -1)
    return _cosines(np.einsum("ij,ij->i", ref2, out2), np.einsum("ij,ij->i", ref2, ref2),
                    np.einsum("ij,ij->i", out2, out2), ref2, out2)


def sqnr_db(reference: np.ndarray, output: np.ndarray, cap: float = SQNR_CAP_DB) -> float:
    """10*log10(sum(ref^2) / sum((ref-out)^2)), capped at +/-``cap`` dB (identical: +cap)."""
    acc = Fidelity(cap=cap)
    acc.update(reference, output)
    return acc.result()["sqnr_db"]


def cosine_similarity(reference: np.ndarray, output: np.ndarray) -> float:
    """Cosine similarity of each sample (first axis) flattened, averaged over samples."""
    acc = Fidelity()
    acc.update(reference, output)
    return acc.result()["cosine"]


def max_abs_error(reference: np.ndarray, output: np.ndarray) -> float:
    diff = np.abs(np.asarray(reference, np.float64) - np.asarray(output, np.float64))
    return float(diff.max()) if diff.size else 0.0


class Fidelity:
    """Streams cosine (per sample averaged, and global), SQNR dB and max abs error."""

    def __init__(self, cap: float = SQNR_CAP_DB) -> None:
        self.cap = cap
        self.samples = 0
        self.cos_sum = 0.0
        self.dot = 0.0
        self.ref_sq = 0.0
        self.out_sq = 0.0
        self.err_sq = 0.0
        self.max_abs = 0.0

    def update(self, reference: np.ndarray, output: np.ndarray) -> None:
        ref = np.asarray(reference, np.float64)
        out = np.asarray(output, np.float64)
        if ref.shape != out.shape:
            raise ValueError(f"reference shape {ref.shape} differs from output shape {out.shape}")
        n = ref.shape[0] if ref.ndim else 1
        ref2 = ref.reshape(n, -1)
        out2 = out.reshape(n, -1)
        dots = np.einsum("ij,ij->i", ref2, out2)
        rsq = np.einsum("ij,ij->i", ref2, ref2)
        osq = np.einsum("ij,ij->i", out2, out2)
        err = ref2 - out2
        self.cos_sum += float(np.sum(_cosines(dots, rsq, osq, ref2, out2)))
        self.samples += n
        self.dot += float(dots.sum())
        self.ref_sq += float(rsq.sum())
        self.out_sq += float(osq.sum())
        self.err_sq += float(np.einsum("ij,ij->", err, err))
        if err.size:
            self.max_abs = max(self.max_abs, float(np.abs(err).max()))

    def result(self) -> Dict[str, float]:
        return {
            "cosine": self.cos_sum / self.samples if self.samples else 0.0,
            "cosine_global": cosine_from_sums(self.dot, self.ref_sq, self.out_sq),
            "sqnr_db": sqnr_from_sums(self.ref_sq, self.err_sq, self.cap),
            "max_abs_error": self.max_abs,
        }


def _cosines(dots: np.ndarray, rsq: np.ndarray, osq: np.ndarray, ref: np.ndarray,
             out: np.ndarray) -> np.ndarray:
    denom = np.sqrt(rsq) * np.sqrt(osq)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(denom > 0, dots / np.where(denom > 0, denom, 1.0), 0.0)
    both_zero = (rsq == 0) & (osq == 0)
    cos = np.where(both_zero, 1.0, cos)
    return np.clip(cos, -1.0, 1.0)


class MeanIoU:
    """Confusion-matrix mIoU for segmentation: scores [N, C, ...] against labels [N, ...].

    Labels outside 0..C-1 (e.g. 255 "ignore") are skipped; classes that never occur in
    either the labels or the predictions do not count in the mean.
    """

    def __init__(self, classes: int) -> None:
        self.classes = classes
        self.confusion = np.zeros((classes, classes), dtype=np.int64)

    def update(self, scores: np.ndarray, labels: np.ndarray) -> None:
        pred = np.argmax(scores, axis=1).reshape(-1)
        truth = np.asarray(labels).reshape(-1).astype(np.int64)
        if pred.shape != truth.shape:
            raise ValueError(f"{pred.size} predicted pixels but {truth.size} labelled pixels")
        keep = (truth >= 0) & (truth < self.classes)
        index = truth[keep] * self.classes + pred[keep]
        self.confusion += np.bincount(index, minlength=self.classes ** 2).reshape(
            self.classes, self.classes)

    def result(self) -> float:
        tp = np.diag(self.confusion).astype(np.float64)
        union = self.confusion.sum(0) + self.confusion.sum(1) - tp
        present = union > 0
        return float(np.mean(tp[present] / union[present])) if present.any() else 0.0
