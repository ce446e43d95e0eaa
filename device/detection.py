"""Object detection on the board: output decoders, NumPy NMS and COCO-style mAP.

Pure numpy (Python 3.9, old numpy), shared by the agent and the host so that a local
evaluation means what a board's does.

A detection dataset holds, beside the model's inputs:

- ``boxes`` [N, M, 4]: ground-truth x1, y1, x2, y2 in input pixels;
- ``classes`` [N, M]: integer class of each box, padded with -1 (rows with -1 are no box);
- optionally ``image_ids`` [N]: integers naming the images (default 0..N-1).

Decoders turn one model output into per-image detections (x1, y1, x2, y2, score, class):

- ``yolov5``: raw [N, A, 5 + C] rows (cx, cy, w, h, objectness, C class scores), as exported
  YOLOv5 models give them; score = objectness x class score, the best class per row, rows
  below ``conf`` dropped, then class-wise greedy NMS at ``iou`` (YOLOv5's val.py defaults:
  conf 0.001, iou 0.6), at most ``MAX_DETECTIONS`` kept;
- ``boxes``: post-NMS [N, K, 6] rows (x1, y1, x2, y2, score, class); rows with a negative
  class or a score below ``conf`` are padding and dropped.

``DetectionMAP`` streams over batches and computes what pycocotools' COCOeval reports for
bounding boxes (area "all", 100 detections per image): mAP@0.5 and mAP@0.5:0.95 with the
101-point interpolated precision, classes without ground truth left out of the mean.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from edgetune.device.errors import InvalidArgument

DECODERS = ("yolov5", "boxes")
DEFAULT_CONF = 0.001
DEFAULT_IOU = 0.6
MAX_DETECTIONS = 100                     # COCOeval's maxDets for the summary numbers
IOU_THRESHOLDS = np.linspace(.5, 0.95, int(np.round((0.95 - .5) / .05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(.0, 1.00, int(np.round((1.00 - .0) / .01)) + 1, endpoint=True)
DATASET_KEYS = ("boxes", "classes", "image_ids")


# --- ground truth ---------------------------------------------------------------------------

def check_ground_truth(arrays: Dict[str, np.ndarray], samples: int) -> None:
    """InvalidArgument unless ``boxes``/``classes`` (and ``image_ids``) have usable shapes."""
    if "boxes" not in arrays or "classes" not in arrays:
        missing = [k for k in ("boxes", "classes") if k not in arrays]
        raise InvalidArgument(
            "metric 'map' cannot be computed: the dataset has no "
            f"{' or '.join(map(repr, missing))} array; a detection dataset holds boxes "
            "[N, M, 4] (x1, y1, x2, y2 in input pixels) and classes [N, M] (padded with -1)")
    boxes, classes = arrays["boxes"], arrays["classes"]
    if boxes.ndim != 3 or boxes.shape[2] != 4 or boxes.dtype.kind not in "iuf":
        raise InvalidArgument(f"dataset array 'boxes' has shape {list(boxes.shape)}; it must be "
                              "[N, M, 4] numbers (x1, y1, x2, y2 in input pixels)")
    if classes.shape != boxes.shape[:2] or classes.dtype.kind not in "iu":
        raise InvalidArgument(f"dataset array 'classes' is {classes.dtype} {list(classes.shape)}; "
                              f"it must be integers shaped {list(boxes.shape[:2])} like 'boxes' "
                              "without its last axis (-1 where there is no box)")
    if boxes.shape[0] != samples:
        raise InvalidArgument(f"dataset array 'boxes' holds {boxes.shape[0]} images for "
                              f"{samples} samples")
    ids = arrays.get("image_ids")
    if ids is not None:
        if ids.shape != (samples,) or ids.dtype.kind not in "iu":
            raise InvalidArgument(f"dataset array 'image_ids' is {ids.dtype} {list(ids.shape)}; "
                                  f"it must be {samples} integers")
        if len(np.unique(ids)) != samples:
            raise InvalidArgument("dataset array 'image_ids' repeats an id; give each image "
                                  "its own")


# --- decoders and NMS -----------------------------------------------------------------------

def check_decoder(decoder: str, shape: Sequence[int], output_name: str = "output") -> None:
    """InvalidArgument when ``decoder`` cannot read an output of this shape."""
    if decoder not in DECODERS:
        raise InvalidArgument(f"unknown decoder {decoder!r}; choose one of {', '.join(DECODERS)}")
    shape = list(shape)
    if decoder == "yolov5" and (len(shape) != 3 or shape[2] < 6):
        raise InvalidArgument(
            f"decoder 'yolov5' needs an output shaped [N, anchors, 5 + classes] (cx, cy, w, h, "
            f"objectness, class scores); the model's output '{output_name}' is {shape}")
    if decoder == "boxes" and (len(shape) != 3 or shape[2] != 6):
        raise InvalidArgument(
            f"decoder 'boxes' needs an output shaped [N, K, 6] (x1, y1, x2, y2, score, class); "
            f"the model's output '{output_name}' is {shape}")


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix [len(a), len(b)] of x1, y1, x2, y2 boxes (no +1 on widths, as COCO)."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]),
                0, None)
    h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]),
                0, None)
    inter = w * h
    union = area_a[:, None] + area_b[None, :] - inter
    out = np.zeros_like(inter)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy NMS: indices kept, best score first (ties: the earlier row first)."""
    order = np.argsort(-scores, kind="mergesort")
    keep: List[int] = []
    while order.size:
        best = int(order[0])
        keep.append(best)
        if order.size == 1:
            break
        rest = order[1:]
        overlap = box_iou(boxes[best:best + 1], boxes[rest])[0]
        order = rest[overlap <= iou]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray,
                iou: float) -> np.ndarray:
    """NMS within each class; the kept indices, best score first."""
    keep: List[np.ndarray] = []
    for cls in np.unique(classes):
        idx = np.nonzero(classes == cls)[0]
        keep.append(idx[nms(boxes[idx], scores[idx], iou)])
    if not keep:
        return np.zeros(0, dtype=np.int64)
    kept = np.concatenate(keep)
    return kept[np.argsort(-scores[kept], kind="mergesort")]


def decode(decoder: str, output: np.ndarray, conf: float = DEFAULT_CONF,
           iou: float = DEFAULT_IOU, max_det: int = MAX_DETECTIONS) -> List[np.ndarray]:
    """One [D, 6] float64 array (x1, y1, x2, y2, score, class) per image of ``output``."""
    check_decoder(decoder, output.shape)
    out: List[np.ndarray] = []
    for rows in np.asarray(output, dtype=np.float64):
        if decoder == "boxes":
            keep = (rows[:, 5] >= 0) & (rows[:, 4] >= conf) & np.isfinite(rows).all(axis=1)
            dets = rows[keep]
            dets = dets[np.argsort(-dets[:, 4], kind="mergesort")][:max_det]
            out.append(dets)
            continue
        rows = rows[np.isfinite(rows).all(axis=1)]
        rows = rows[rows[:, 4] > conf]
        cls_scores = rows[:, 5:] * rows[:, 4:5]
        cls = cls_scores.argmax(axis=1) if len(rows) else np.zeros(0, dtype=np.int64)
        score = cls_scores[np.arange(len(rows)), cls] if len(rows) else np.zeros(0)
        keep = score > conf
        rows, cls, score = rows[keep], cls[keep], score[keep]
        xyxy = np.stack([rows[:, 0] - rows[:, 2] / 2, rows[:, 1] - rows[:, 3] / 2,
                         rows[:, 0] + rows[:, 2] / 2, rows[:, 1] + rows[:, 3] / 2], axis=1) \
            if len(rows) else np.zeros((0, 4))
        kept = batched_nms(xyxy, score, cls, iou)[:max_det]
        out.append(np.concatenate([xyxy[kept], score[kept, None],
                                   cls[kept, None].astype(np.float64)], axis=1)
                   if len(kept) else np.zeros((0, 6)))
    return out


# --- mAP ------------------------------------------------------------------------------------

class DetectionMAP:
    """COCO bbox mAP, streamed: ``update`` matches each image's detections at every IoU
    threshold at once (memory grows with the detections kept, not the images)."""

    def __init__(self, max_det: int = MAX_DETECTIONS) -> None:
        self.max_det = max_det
        # class -> list of (image id, scores [D], matched [T, D] bool)
        self._dets: Dict[int, List[Tuple[int, np.ndarray, np.ndarray]]] = {}
        self._gt_count: Dict[int, int] = {}
        self._images = 0

    def update(self, detections: Sequence[np.ndarray], gt_boxes: np.ndarray,
               gt_classes: np.ndarray, image_ids: Optional[Sequence[int]] = None) -> None:
        """``detections``: one [D, 6] array per image; ``gt_*``: [n, M, 4] and [n, M]."""
        for i, dets in enumerate(detections):
            image = int(image_ids[i]) if image_ids is not None else self._images
            valid = gt_classes[i] >= 0
            boxes = np.asarray(gt_boxes[i][valid], dtype=np.float64)
            labels = np.asarray(gt_classes[i][valid], dtype=np.int64)
            dets = np.asarray(dets, dtype=np.float64).reshape(-1, 6)
            det_cls = dets[:, 5].astype(np.int64)
            for cls in set(labels.tolist()) | set(det_cls.tolist()):
                gts = boxes[labels == cls]
                self._gt_count[cls] = self._gt_count.get(cls, 0) + len(gts)
                mine = dets[det_cls == cls]
                mine = mine[np.argsort(-mine[:, 4], kind="mergesort")][:self.max_det]
                matched = self._match(mine[:, :4], gts)
                self._dets.setdefault(cls, []).append((image, mine[:, 4], matched))
            self._images += 1

    @staticmethod
    def _match(dets: np.ndarray, gts: np.ndarray) -> np.ndarray:
        """[T, D]: whether each detection (best score first) matches a ground truth box at
        each IoU threshold (COCOeval.evaluateImg: the best-IoU unmatched box wins)."""
        matched = np.zeros((len(IOU_THRESHOLDS), len(dets)), dtype=bool)
        if len(dets) == 0 or len(gts) == 0:
            return matched
        ious = box_iou(dets, gts)
        for t, threshold in enumerate(IOU_THRESHOLDS):
            taken = np.zeros(len(gts), dtype=bool)
            for d in range(len(dets)):
                best_iou = min(threshold, 1 - 1e-10)
                best = -1
                for g in range(len(gts)):
                    if taken[g] or ious[d, g] < best_iou:
                        continue
                    best_iou = ious[d, g]
                    best = g
                if best >= 0:
                    taken[best] = True
                    matched[t, d] = True
        return matched

    def per_class(self) -> Dict[int, np.ndarray]:
        """class -> precision [T, R] (101 recall points) for every class with ground truth."""
        out: Dict[int, np.ndarray] = {}
        for cls, count in self._gt_count.items():
            if count == 0:
                continue
            parts = sorted(self._dets.get(cls, []), key=lambda p: p[0])   # by image id
            scores = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0)
            matched = np.concatenate([p[2] for p in parts], axis=1) if parts else \
                np.zeros((len(IOU_THRESHOLDS), 0), dtype=bool)
            order = np.argsort(-scores, kind="mergesort")
            tps = np.cumsum(matched[:, order], axis=1).astype(np.float64)
            fps = np.cumsum(~matched[:, order], axis=1).astype(np.float64)
            precision = np.zeros((len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS)))
            for t in range(len(IOU_THRESHOLDS)):
                tp, fp = tps[t], fps[t]
                recall = tp / count
                prec = tp / (fp + tp + np.spacing(1))
                prec = np.maximum.accumulate(prec[::-1])[::-1] if len(prec) else prec
                inds = np.searchsorted(recall, RECALL_THRESHOLDS, side="left")
                valid = inds < len(prec)
                precision[t, valid] = prec[inds[valid]]
            out[cls] = precision
        return out

    def result(self) -> Dict[str, float]:
        """``map50`` and ``map`` (mAP@0.5:0.95); -1 when no class has ground truth (COCO's
        value for "undefined"); also ``map_classes``, the classes averaged."""
        classes = self.per_class()
        if not classes:
            return {"map50": -1.0, "map": -1.0, "map_classes": 0.0}
        stacked = np.stack(list(classes.values()))          # [K, T, R]
        return {"map50": float(stacked[:, 0, :].mean()), "map": float(stacked.mean()),
                "map_classes": float(len(classes))}
