"""device/detection.py: mAP against pycocotools on the same predictions, the decoders, NMS,
and the bad inputs (no boxes, a decoder that does not fit the output)."""

from __future__ import annotations

import contextlib
import io
from typing import List, Optional, Sequence, Tuple

import numpy as np
import pytest

from edgetune.device.detection import (DetectionMAP, batched_nms, box_iou, check_decoder,
                                       check_ground_truth, decode, nms)
from edgetune.device.errors import InvalidArgument

pycocotools = pytest.importorskip("pycocotools.cocoeval")


def coco_map(dets: Sequence[np.ndarray], gt_boxes: np.ndarray, gt_classes: np.ndarray,
             image_ids: Optional[Sequence[int]] = None) -> Tuple[float, float]:
    """(mAP@0.5:0.95, mAP@0.5) from pycocotools' COCOeval on the same boxes."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    ids = list(image_ids) if image_ids is not None else list(range(len(dets)))
    classes = sorted(set(int(c) for c in gt_classes.ravel() if c >= 0)
                     | set(int(d[5]) for ds in dets for d in ds))
    annotations, results = [], []
    for i, image in enumerate(ids):
        for box, cls in zip(gt_boxes[i], gt_classes[i]):
            if cls < 0:
                continue
            x1, y1, x2, y2 = (float(v) for v in box)
            annotations.append({"id": len(annotations) + 1, "image_id": int(image),
                                "category_id": int(cls), "bbox": [x1, y1, x2 - x1, y2 - y1],
                                "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
        for d in dets[i]:
            x1, y1, x2, y2, score, cls = (float(v) for v in d)
            results.append({"image_id": int(image), "category_id": int(cls),
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
    gt = COCO()
    gt.dataset = {"images": [{"id": int(i)} for i in ids], "annotations": annotations,
                  "categories": [{"id": c} for c in classes]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        dt = gt.loadRes(results) if results else COCO()
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0]), float(ev.stats[1])


def random_scene(rng: np.random.Generator, images: int, max_boxes: int, classes: int,
                 noise: float, size: float = 64.0):
    """Ground truth and noisy predictions: some boxes jittered, some missed, some false."""
    gt_boxes = np.zeros((images, max_boxes, 4), np.float32)
    gt_classes = np.full((images, max_boxes), -1, np.int64)
    dets: List[np.ndarray] = []
    for i in range(images):
        n = int(rng.integers(0, max_boxes + 1))
        rows = []
        for j in range(n):
            x1, y1 = rng.uniform(0, size * 0.7, 2)
            w, h = rng.uniform(4, size * 0.3, 2)
            gt_boxes[i, j] = (x1, y1, x1 + w, y1 + h)
            gt_classes[i, j] = rng.integers(0, classes)
            if rng.random() < 0.85:
                jitter = rng.normal(0, noise, 4) * np.array([w, h, w, h])
                box = gt_boxes[i, j] + jitter
                cls = gt_classes[i, j] if rng.random() < 0.9 else rng.integers(0, classes)
                rows.append([*box, rng.uniform(0.2, 1.0), cls])
        for _ in range(int(rng.integers(0, 4))):
            x1, y1 = rng.uniform(0, size * 0.7, 2)
            w, h = rng.uniform(4, size * 0.3, 2)
            rows.append([x1, y1, x1 + w, y1 + h, rng.uniform(0.0, 0.6), rng.integers(0, classes)])
        dets.append(np.asarray(rows, np.float64).reshape(-1, 6))
    return dets, gt_boxes, gt_classes


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_map_matches_pycocotools(seed: int) -> None:
    rng = np.random.default_rng(seed)
    dets, boxes, classes = random_scene(rng, images=40, max_boxes=6, classes=4, noise=0.08)
    acc = DetectionMAP()
    for begin in range(0, 40, 7):                      # streamed in uneven batches
        acc.update(dets[begin:begin + 7], boxes[begin:begin + 7], classes[begin:begin + 7],
                   image_ids=range(begin, min(begin + 7, 40)))
    ours = acc.result()
    want_map, want_map50 = coco_map(dets, boxes, classes)
    assert 0.1 < want_map < want_map50 < 1.0           # a scene that tests something
    assert ours["map"] == pytest.approx(want_map, abs=1e-4)
    assert ours["map50"] == pytest.approx(want_map50, abs=1e-4)


def test_map_ties_duplicates_and_image_ids() -> None:
    """Equal scores across images, two detections on one box, a class only predicted,
    a class never predicted, and image ids out of order."""
    boxes = np.array([[[0, 0, 10, 10], [20, 20, 30, 40]], [[5, 5, 15, 15], [0, 0, 0, 0]],
                      [[1, 1, 9, 9], [0, 0, 0, 0]]], np.float32)
    classes = np.array([[0, 1], [0, -1], [2, -1]])
    dets = [np.array([[0, 0, 10, 10, .5, 0], [0, 0, 10, 11, .5, 0], [20, 21, 30, 40, .9, 1],
                      [40, 40, 50, 50, .7, 3]]),
            np.array([[5, 5, 15, 14, .5, 0], [30, 30, 40, 40, .5, 0]]),
            np.zeros((0, 6))]
    ids = [7, 3, 5]
    acc = DetectionMAP()
    acc.update(dets, boxes, classes, image_ids=ids)
    want_map, want_map50 = coco_map(dets, boxes, classes, ids)
    assert acc.result()["map"] == pytest.approx(want_map, abs=1e-4)
    assert acc.result()["map50"] == pytest.approx(want_map50, abs=1e-4)
    assert acc.result()["map_classes"] == 3            # classes 0, 1, 2 have ground truth


def test_decoders_through_map_match_pycocotools() -> None:
    """yolov5 rows (cx, cy, w, h, obj, classes) decoded with NMS, then mAP, against COCOeval on
    the very detections the decoder kept."""
    rng = np.random.default_rng(5)
    dets, boxes, classes = random_scene(rng, images=12, max_boxes=4, classes=3, noise=0.05)
    raw = np.zeros((12, 30, 8), np.float32)
    for i, ds in enumerate(dets):
        for j, d in enumerate(ds[:10]):
            for k in range(3):                          # each box three times, jittered
                x1, y1, x2, y2 = d[:4] + rng.normal(0, 0.5, 4)
                raw[i, 3 * j + k, :4] = ((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1)
                raw[i, 3 * j + k, 4] = d[4] * (1 - 0.1 * k)
                raw[i, 3 * j + k, 5 + int(d[5])] = 0.9
    decoded = decode("yolov5", raw, conf=0.01, iou=0.5)
    assert all(len(d) <= 10 for d in decoded) and sum(map(len, decoded)) > 20
    acc = DetectionMAP()
    acc.update(decoded, boxes, classes)
    want_map, want_map50 = coco_map(decoded, boxes, classes)
    assert acc.result()["map"] == pytest.approx(want_map, abs=1e-4)
    assert acc.result()["map50"] == pytest.approx(want_map50, abs=1e-4)


def test_yolov5_decoder_scores_nms_and_conf() -> None:
    raw = np.zeros((1, 4, 7), np.float32)
    raw[0, 0] = (10, 10, 10, 10, 0.9, 0.2, 0.8)       # class 1, score 0.72
    raw[0, 1] = (11, 10, 10, 10, 0.8, 0.1, 0.9)       # overlaps row 0, same class: suppressed
    raw[0, 2] = (11, 10, 10, 10, 0.8, 0.875, 0.1)     # overlaps, other class: kept (0.7)
    raw[0, 3] = (40, 40, 4, 4, 0.05, 1.0, 0.0)        # below conf 0.1
    (out,) = decode("yolov5", raw, conf=0.1, iou=0.5)
    assert out.shape == (2, 6)
    np.testing.assert_allclose(out[0], [5, 5, 15, 15, 0.72, 1], rtol=1e-6)
    np.testing.assert_allclose(out[1], [6, 5, 16, 15, 0.7, 0], rtol=1e-6)


def test_boxes_decoder_drops_padding() -> None:
    raw = np.array([[[0, 0, 5, 5, 0.3, 2], [1, 1, 4, 4, 0.9, 0], [0, 0, 0, 0, 0, -1]]], np.float32)
    (out,) = decode("boxes", raw, conf=0.1)
    np.testing.assert_allclose(out[:, 4], [0.9, 0.3], rtol=1e-6)


def test_nms_and_iou() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30]], np.float64)
    assert box_iou(boxes[:1], boxes[1:2])[0, 0] == pytest.approx(90 / 110)
    assert nms(boxes, np.array([0.5, 0.9, 0.1]), 0.5).tolist() == [1, 2]
    assert batched_nms(boxes, np.array([0.5, 0.9, 0.1]), np.array([0, 1, 0]), 0.5).tolist() \
        == [1, 0, 2]


@pytest.mark.parametrize("decoder,shape,words", [
    ("yolov5", (1, 10), "[N, anchors, 5 + classes]"),
    ("yolov5", (1, 10, 5), "[N, anchors, 5 + classes]"),
    ("boxes", (1, 10, 7), "[N, K, 6]"),
    ("boxes", (1, 10, 6, 1), "[N, K, 6]"),
    ("ssd", (1, 10, 6), "unknown decoder"),
])
def test_decoder_that_does_not_fit_the_output(decoder: str, shape: Tuple[int, ...],
                                              words: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        check_decoder(decoder, shape, "dets")
    assert words in str(info.value)
    if "unknown" not in words:
        assert "'dets'" in str(info.value) and str(list(shape)) in str(info.value)


def test_dataset_without_boxes_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="no 'boxes'"):
        check_ground_truth({"input": np.zeros((2, 3)), "classes": np.zeros((2, 1), int)}, 2)
    with pytest.raises(InvalidArgument, match="'classes' is float"):
        check_ground_truth({"boxes": np.zeros((2, 1, 4)), "classes": np.zeros((2, 1))}, 2)
    with pytest.raises(InvalidArgument, match=r"\[N, M, 4\]"):
        check_ground_truth({"boxes": np.zeros((2, 4)), "classes": np.zeros((2, 1), int)}, 2)
    with pytest.raises(InvalidArgument, match="repeats"):
        check_ground_truth({"boxes": np.zeros((2, 1, 4)), "classes": np.zeros((2, 1), int),
                            "image_ids": np.array([1, 1])}, 2)


def test_agent_checks_the_detection_spec() -> None:
    """What the agent refuses before running (device/limits.py), whatever the host sent."""
    from edgetune.device.limits import Limits, validate_evaluate
    from edgetune.protos.messages import EvaluateSpec
    base = dict(model_sha256="a" * 64, dataset_sha256="b" * 64)
    validate_evaluate(EvaluateSpec(**base, metrics=("map",), decoder="yolov5", conf=0.1,
                                   iou=0.5), Limits())
    validate_evaluate(EvaluateSpec(**base, decoder="boxes"), Limits())   # map if boxes exist
    for spec, words in [
            (EvaluateSpec(**base, metrics=("map",)), "needs a decoder"),
            (EvaluateSpec(**base, metrics=("map",), decoder="ssd"), "needs a decoder"),
            (EvaluateSpec(**base, metrics=("top1",), decoder="yolov5"), "'map' only"),
            (EvaluateSpec(**base, decoder="ssd"), "unknown decoder"),
            (EvaluateSpec(**base, metrics=("map",), decoder="yolov5", conf=1.5), "conf 1.5"),
            (EvaluateSpec(**base, metrics=("map",), decoder="yolov5", iou=float("nan")),
             "iou nan")]:
        with pytest.raises(InvalidArgument, match=words):
            validate_evaluate(spec, Limits())
