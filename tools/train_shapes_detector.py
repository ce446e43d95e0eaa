"""Train the sample detector: a tiny YOLO-style CNN on synthetic shapes, in numpy.

Images are 32x32 grey pictures with one to three shapes on a noisy background; three
classes: 0 filled square, 1 square outline, 2 filled disc, sides 6 to 12 pixels. The network
predicts, on an 8x8 grid (stride 4, one anchor of 10 pixels), objectness, a box and the class
scores, and its ONNX graph decodes them as an exported YOLOv5 model does (the Detect layer's
``xy = (2 sigmoid - 0.5 + grid) * stride``, ``wh = (2 sigmoid)^2 * anchor``), so its output
"output" is [batch, 64, 8]: cx, cy, w, h, objectness, 3 class scores, in input pixels.
``edgetune eval --metric map --decoder yolov5`` reads it as it is. The raw head (before the
decoding) is the tensor "head": ``--truncate head`` keeps the decoding float.

Writes into host/samples/ (or --out):
- shapes_det.onnx       input "images" float32 [batch,1,32,32] (0..1) -> "output"
- shapes_det_test.npz   300 held-out images: "images", "boxes" [N,3,4] (x1,y1,x2,y2),
                        "classes" [N,3] (-1 padding), "image_ids"
- shapes_det_calib.npz  100 training-distribution images: "images" only

No torch: plain numpy (tools/train_digits32.py's im2col convolutions), Adam. Seeded; from
the repository root:
    python tools/train_shapes_detector.py     # a few minutes on one core; prints the mAP
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import onnxruntime as ort
from onnx import numpy_helper

from edgetune.device.detection import DetectionMAP, decode
from edgetune.host.builders import GraphBuilder, save, tensor_input

SIZE = 32
GRID = 8
STRIDE = SIZE // GRID
ANCHOR = 10.0
CLASSES = 3
MAX_OBJECTS = 3
# (output channels, 2x2 max-pool after the Relu) of each 3x3 convolution; a 3x3 head follows.
LAYERS: Tuple[Tuple[int, bool], ...] = ((16, True), (32, True), (32, False), (32, False))
HEAD = 5 + CLASSES
TEST_NOTE = (
    "edgetune sample detection dataset: 300 synthetic 32x32 grey images (seed 1) with one to "
    "three shapes: class 0 filled square, 1 square outline, 2 filled disc. images float32 "
    "[N,1,32,32] in 0..1; boxes float32 [N,3,4] x1,y1,x2,y2 in input pixels; classes int64 "
    "[N,3], -1 where there is no box; image_ids int64 [N].")
CALIB_NOTE = ("edgetune calibration set for shapes_det.onnx: 100 synthetic images drawn as "
              "the training ones (seed 2). images float32 [N,1,32,32].")


def _digits32():
    spec = importlib.util.spec_from_file_location(
        "train_digits32", Path(__file__).resolve().parent / "train_digits32.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _train_digits():
    spec = importlib.util.spec_from_file_location(
        "train_digits", Path(__file__).resolve().parent / "train_digits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


D32 = _digits32()


# --- data -----------------------------------------------------------------------------------

def make_scenes(n: int, seed: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images [n,1,32,32], boxes [n,3,4], classes [n,3]); centres in distinct grid cells."""
    rng = np.random.default_rng(seed)
    images = rng.normal(0.1, 0.05, (n, 1, SIZE, SIZE)).astype(np.float32)
    boxes = np.zeros((n, MAX_OBJECTS, 4), np.float32)
    classes = np.full((n, MAX_OBJECTS), -1, np.int64)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    for i in range(n):
        count = int(rng.integers(1, MAX_OBJECTS + 1))
        placed: List[Tuple[float, float, float, float]] = []
        for j in range(count):
            for _ in range(20):
                side = int(rng.integers(6, 13))
                x1 = int(rng.integers(0, SIZE - side + 1))
                y1 = int(rng.integers(0, SIZE - side + 1))
                box = (x1, y1, x1 + side, y1 + side)
                if all(_overlap(box, other) == 0.0 for other in placed):
                    break
            else:
                break
            placed.append(box)
            cls = int(rng.integers(0, CLASSES))
            level = float(rng.uniform(0.6, 1.0))
            x2, y2 = x1 + side, y1 + side
            if cls == 0:
                images[i, 0, y1:y2, x1:x2] = level
            elif cls == 1:
                images[i, 0, y1:y2, x1:x2] = np.where(
                    (yy[y1:y2, x1:x2] - y1 < 2) | (y2 - 1 - yy[y1:y2, x1:x2] < 2)
                    | (xx[y1:y2, x1:x2] - x1 < 2) | (x2 - 1 - xx[y1:y2, x1:x2] < 2),
                    level, images[i, 0, y1:y2, x1:x2])
            else:
                cx, cy, r = (x1 + x2) / 2 - 0.5, (y1 + y2) / 2 - 0.5, side / 2
                disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
                images[i, 0][disc] = level
            boxes[i, j] = box
            classes[i, j] = cls
    return np.clip(images, 0.0, 1.0), boxes, classes


def _overlap(a, b) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(w, 0) * max(h, 0)


def targets(boxes: np.ndarray, classes: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(targets [n, G, G, HEAD] in sigmoid space, positive mask [n, G, G])."""
    n = len(boxes)
    t = np.zeros((n, GRID, GRID, HEAD), np.float32)
    pos = np.zeros((n, GRID, GRID), bool)
    for i in range(n):
        for box, cls in zip(boxes[i], classes[i]):
            if cls < 0:
                continue
            cx, cy = (box[0] + box[2]) / 2 / STRIDE, (box[1] + box[3]) / 2 / STRIDE
            gx, gy = min(int(cx), GRID - 1), min(int(cy), GRID - 1)
            w, h = box[2] - box[0], box[3] - box[1]
            t[i, gy, gx, 0] = (cx - gx + 0.5) / 2
            t[i, gy, gx, 1] = (cy - gy + 0.5) / 2
            t[i, gy, gx, 2] = np.sqrt(w / ANCHOR) / 2
            t[i, gy, gx, 3] = np.sqrt(h / ANCHOR) / 2
            t[i, gy, gx, 4] = 1.0
            t[i, gy, gx, 5 + cls] = 1.0
            pos[i, gy, gx] = True
    return t, pos


# --- the network ----------------------------------------------------------------------------

def init_params(seed: int) -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    params: Dict[str, np.ndarray] = {}
    cin = 1
    for k, (cout, _) in enumerate(LAYERS, 1):
        params[f"conv{k}.w"] = (rng.standard_normal((9 * cin, cout)) *
                                np.sqrt(2.0 / (9 * cin))).astype(np.float32)
        params[f"conv{k}.b"] = np.zeros(cout, np.float32)
        cin = cout
    params["head.w"] = (rng.standard_normal((9 * cin, HEAD)) * 0.01).astype(np.float32)
    params["head.b"] = np.array([0, 0, 0, 0, -4.0] + [0.0] * CLASSES, np.float32)
    return params


def forward(params: Dict[str, np.ndarray], x_nchw: np.ndarray, keep: bool = False):
    """Raw head [n, G, G, HEAD] (NHWC); with ``keep``, also what backward needs."""
    x = np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1))
    cache = []
    for k, (cout, pool) in enumerate(LAYERS, 1):
        n, h, w, _ = x.shape
        cols = D32._im2col(x)
        y = (cols @ params[f"conv{k}.w"] + params[f"conv{k}.b"]).reshape(n, h, w, cout)
        mask = y > 0
        y = y * mask
        pool_arg = None
        if pool:
            blocks = y.reshape(n, h // 2, 2, w // 2, 2, cout)
            pooled = blocks.max(axis=(2, 4))
            pool_arg = blocks == pooled[:, :, None, :, None, :]
            y = pooled
        cache.append((cols, x.shape, mask, pool_arg))
        x = y
    n, h, w, _ = x.shape
    cols = D32._im2col(x)
    head = (cols @ params["head.w"] + params["head.b"]).reshape(n, h, w, HEAD)
    return (head, (cache, cols, x.shape)) if keep else head


def backward(params, dhead: np.ndarray, saved) -> Dict[str, np.ndarray]:
    cache, cols, shape = saved
    dy = dhead.reshape(-1, HEAD)
    grads = {"head.w": cols.T @ dy, "head.b": dy.sum(axis=0)}
    dx = D32._col2im(dy @ params["head.w"].T, shape)
    for k in range(len(LAYERS), 0, -1):
        cols_k, in_shape, mask, pool_arg = cache[k - 1]
        if pool_arg is not None:
            n2, h2, w2, c2 = dx.shape
            dx = (pool_arg * dx[:, :, None, :, None, :]).reshape(n2, h2 * 2, w2 * 2, c2)
        dy = (dx * mask).reshape(-1, mask.shape[-1])
        grads[f"conv{k}.w"] = cols_k.T @ dy
        grads[f"conv{k}.b"] = dy.sum(axis=0)
        if k > 1:
            dx = D32._col2im(dy @ params[f"conv{k}.w"].T, in_shape)
    return grads


def loss_grad(head: np.ndarray, t: np.ndarray, pos: np.ndarray) -> Tuple[float, np.ndarray]:
    """Objectness BCE on every cell; box L2 (x5) and class BCE on positive cells."""
    s = 1.0 / (1.0 + np.exp(-head))
    n = len(head)
    grad = np.zeros_like(head)
    eps = 1e-7
    obj = s[..., 4]
    loss = -(t[..., 4] * np.log(obj + eps) + (1 - t[..., 4]) * np.log(1 - obj + eps)).sum()
    grad[..., 4] = obj - t[..., 4]
    p = pos[..., None]
    box = (s[..., :4] - t[..., :4]) * p
    loss += 5.0 * (box ** 2).sum()
    grad[..., :4] = 5.0 * 2 * box * s[..., :4] * (1 - s[..., :4])
    cls = s[..., 5:]
    loss += -((t[..., 5:] * np.log(cls + eps) + (1 - t[..., 5:]) * np.log(1 - cls + eps))
              * p).sum()
    grad[..., 5:] = (cls - t[..., 5:]) * p
    return float(loss / n), (grad / n).astype(np.float32)


def train(images, boxes, classes, epochs: int, seed: int, batch: int = 32,
          lr: float = 3e-3) -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    params = init_params(seed)
    t_all, pos_all = targets(boxes, classes)
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(p) for k, p in params.items()}
    b1, b2, eps = 0.9, 0.999, 1e-8
    total = max(1, epochs * int(np.ceil(len(images) / batch)))
    step = 0
    for epoch in range(epochs):
        order = rng.permutation(len(images))
        seen = 0.0
        for start in range(0, len(images), batch):
            idx = order[start:start + batch]
            head, saved = forward(params, images[idx], keep=True)
            loss, dhead = loss_grad(head, t_all[idx], pos_all[idx])
            grads = backward(params, dhead, saved)
            step += 1
            rate = lr * 0.5 * (1.0 + np.cos(np.pi * (step - 1) / total))
            for key, g in grads.items():
                m[key] = b1 * m[key] + (1 - b1) * g
                v[key] = b2 * v[key] + (1 - b2) * g * g
                update = (m[key] / (1 - b1 ** step)) / (np.sqrt(v[key] / (1 - b2 ** step)) + eps)
                params[key] = (params[key] - rate * update).astype(np.float32)
            seen += loss * len(idx)
        print(f"epoch {epoch + 1:3d}  loss {seen / len(images):.4f}", flush=True)
    return params


def build_onnx(params: Dict[str, np.ndarray]):
    g = GraphBuilder(seed=0, opset=17)
    x, cin = "images", 1
    for k, (cout, pool) in enumerate(LAYERS, 1):
        weight = params[f"conv{k}.w"].reshape(3, 3, cin, cout).transpose(3, 2, 0, 1)
        x = g.relu(g.conv(x, f"conv{k}", cin, cout, 3, weight=np.ascontiguousarray(weight),
                          bias=params[f"conv{k}.b"]), f"relu{k}")
        if pool:
            x = g.max_pool(x, f"pool{k}", 2, 2)
        cin = cout
    weight = params["head.w"].reshape(3, 3, cin, HEAD).transpose(3, 2, 0, 1)
    head = g.conv(x, "head_conv", cin, HEAD, 3, weight=np.ascontiguousarray(weight),
                  bias=params["head.b"], output="head")
    # The Detect layer of an exported YOLOv5 model, one anchor per cell.
    shape = g.initializer("detect.shape", np.array([0, HEAD, GRID * GRID], np.int64))
    flat = g.node("Reshape", [head, shape], "detect.reshape")
    rows = g.node("Transpose", [flat], "detect.transpose", perm=[0, 2, 1])
    sig = g.node("Sigmoid", [rows], "detect.sigmoid")
    def part(name: str, lo: int, hi: int) -> str:
        starts = g.initializer(f"{name}.starts", np.array([lo], np.int64))
        ends = g.initializer(f"{name}.ends", np.array([hi], np.int64))
        axes = g.initializer(f"{name}.axes", np.array([2], np.int64))
        return g.node("Slice", [sig, starts, ends, axes], name)
    xy, wh, rest = part("detect.xy", 0, 2), part("detect.wh", 2, 4), part("detect.conf", 4, HEAD)
    gy, gx = np.mgrid[0:GRID, 0:GRID]
    grid = np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float32)   # [G*G, 2]
    two = g.initializer("detect.two", np.array(2.0, np.float32))
    xy = g.node("Mul", [xy, two], "detect.xy2")
    xy = g.node("Add", [xy, g.initializer("detect.grid", grid - 0.5)], "detect.xy_grid")
    xy = g.node("Mul", [xy, g.initializer("detect.stride", np.array(float(STRIDE), np.float32))],
                "detect.xy_px")
    wh = g.node("Mul", [wh, two], "detect.wh2")
    wh = g.node("Mul", [wh, wh], "detect.wh_sq")
    wh = g.node("Mul", [wh, g.initializer("detect.anchor", np.array(ANCHOR, np.float32))],
                "detect.wh_px")
    g.node("Concat", [xy, wh, rest], "detect.concat", ["output"], axis=2)
    return g.model(
        "shapes_det", [tensor_input("images", ["batch", 1, SIZE, SIZE])],
        [tensor_input("output", ["batch", GRID * GRID, HEAD])],
        doc="Tiny YOLO-style detector on synthetic 32x32 shapes (tools/train_shapes_detector.py). "
            "Output rows: cx, cy, w, h (input pixels), objectness, 3 class scores; the raw head "
            "is tensor 'head'.")


def numpy_output(params, images: np.ndarray) -> np.ndarray:
    s = 1.0 / (1.0 + np.exp(-forward(params, images).reshape(len(images), -1, HEAD)))
    gy, gx = np.mgrid[0:GRID, 0:GRID]
    grid = np.stack([gx.ravel(), gy.ravel()], axis=1)
    xy = (s[..., :2] * 2 - 0.5 + grid) * STRIDE
    wh = (s[..., 2:4] * 2) ** 2 * ANCHOR
    return np.concatenate([xy, wh, s[..., 4:]], axis=2)


def evaluate(output: np.ndarray, boxes, classes) -> Dict[str, float]:
    acc = DetectionMAP()
    acc.update(decode("yolov5", output), boxes, classes)
    return acc.result()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("host/samples"))
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--train", type=int, default=2000, help="training images")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    images, boxes, classes = make_scenes(args.train, seed=args.seed)
    test_images, test_boxes, test_classes = make_scenes(300, seed=1)
    calib, _, _ = make_scenes(100, seed=2)
    start = time.perf_counter()
    params = train(images, boxes, classes, args.epochs, args.seed)
    print(f"trained in {time.perf_counter() - start:.1f} s")
    model_path = save(build_onnx(params), args.out / "shapes_det.onnx")
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    output = sess.run(None, {"images": test_images})[0]
    diff = float(np.abs(output - numpy_output(params, test_images)).max())
    if diff > 1e-3:
        sys.exit(f"onnxruntime and the numpy network disagree (max abs diff {diff:.2e})")
    writer = _train_digits()
    writer.write_npz(args.out / "shapes_det_test.npz",
                     {"images": test_images, "boxes": test_boxes, "classes": test_classes,
                      "image_ids": np.arange(len(test_images), dtype=np.int64)}, TEST_NOTE)
    writer.write_npz(args.out / "shapes_det_calib.npz", {"images": calib}, CALIB_NOTE)
    result = evaluate(output, test_boxes, test_classes)
    print(f"onnxruntime vs numpy max abs diff {diff:.1e}")
    print(f"test mAP@0.5 {result['map50']:.4f}  mAP@0.5:0.95 {result['map']:.4f} (FP32)")
    for name in ("shapes_det.onnx", "shapes_det_test.npz", "shapes_det_calib.npz"):
        print(f"  {args.out / name}: {(args.out / name).stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
