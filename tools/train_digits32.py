"""Train the second sample model: a CNN on scikit-learn's digits upscaled to 32x32, in numpy.

The first sample (digits_cnn.onnx, 8x8 inputs) is too small for INT8 to be faster than FP32:
its quantize/dequantize steps cost what its three tiny convolutions save. This one has
enough channels at 32x32 that edgetune's default INT8 runs about 3x faster than FP32 on one
thread of a PC CPU, so the demo and the tuner have a speed-up worth showing.

Writes into host/samples/ (or --out):
- digits32_cnn.onnx   input "input" float32 [batch,1,32,32] -> output "logits" float32
                      [batch,10], opset 17, every node named (conv1, relu1, ..., fc)
- digits32_test.npz   the held-out test split (the same 450 images as digits_test.npz):
                      "input", "labels" int64, "logits" (the FP32 model's outputs)
- digits32_calib.npz  the same 200 TRAIN images as digits_calib.npz: "input" only

Input: load_digits pixels (0..16) / 16, upscaled 4x with bilinear interpolation
(``scipy.ndimage.zoom(order=1, grid_mode=True, mode="nearest")``), NCHW float32.

No torch: the network is trained with plain numpy (im2col convolutions, Adam, cosine
schedule, label smoothing, random 2-pixel shifts), from the repository root:
    python tools/train_digits32.py          # a few minutes on one core; prints the accuracy
Training is seeded; BLAS may change the last bits between machines. The ONNX graph is
written with onnx.helper (host.builders) from the trained weights, and the script checks
that onnxruntime and the numpy forward pass agree.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import onnx
import onnxruntime as ort
from scipy.ndimage import zoom

from edgetune.host.builders import GraphBuilder, save, tensor_input

SCALE = 16.0
UPSCALE = 4
SIZE = 8 * UPSCALE
# (output channels, 2x2 max-pool after the Relu) of each 3x3 convolution (32x32 -> 4x4);
# Flatten and one Gemm follow.
LAYERS: Tuple[Tuple[int, bool], ...] = ((32, False), (64, True), (64, False), (128, True),
                                        (128, True))
DATASET_NOTE = (
    "edgetune sample dataset: the held-out 25% test split of scikit-learn load_digits, "
    "upscaled to 32x32. Keys: one array per model input keyed by input name; optional "
    "'labels'; optional reference outputs keyed by output name. Here: input float32 "
    "[N,1,32,32] = pixels/16 (0..16 -> 0..1) upscaled 4x bilinear; labels int64 [N]; "
    "logits float32 [N,10] from the FP32 ONNX model."
)
CALIB_NOTE = (
    "edgetune calibration set: 200 images of the TRAIN split of scikit-learn load_digits "
    "(never the test split), upscaled to 32x32. input float32 [N,1,32,32] = pixels/16 "
    "upscaled 4x bilinear."
)


def _train_digits():
    """tools/train_digits.py's split and writer (one split for both samples)."""
    spec = importlib.util.spec_from_file_location(
        "train_digits", Path(__file__).resolve().parent / "train_digits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def upscale(x: np.ndarray) -> np.ndarray:
    """[N,1,8,8] -> [N,1,32,32], bilinear (pixel-area aligned, edges repeated)."""
    out = zoom(x, (1, 1, UPSCALE, UPSCALE), order=1, grid_mode=True, mode="nearest")
    return np.clip(out, 0.0, 1.0).astype(np.float32)


# --- the network in numpy (NHWC inside, NCHW at the edges) ---------------------------------

def _im2col(x: np.ndarray) -> np.ndarray:
    """[N,H,W,C] -> [N*H*W, 9*C] patches of a 3x3 'same' convolution (order kh, kw, c)."""
    n, h, w, c = x.shape
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    cols = np.empty((n, h, w, 3, 3, c), dtype=x.dtype)
    for i in range(3):
        for j in range(3):
            cols[:, :, :, i, j, :] = padded[:, i:i + h, j:j + w, :]
    return cols.reshape(n * h * w, 9 * c)


def _col2im(dcols: np.ndarray, shape: Tuple[int, int, int, int]) -> np.ndarray:
    n, h, w, c = shape
    dcols = dcols.reshape(n, h, w, 3, 3, c)
    dpad = np.zeros((n, h + 2, w + 2, c), dtype=dcols.dtype)
    for i in range(3):
        for j in range(3):
            dpad[:, i:i + h, j:j + w, :] += dcols[:, :, :, i, j, :]
    return dpad[:, 1:-1, 1:-1, :]


def init_params(seed: int, layers=LAYERS) -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    params: Dict[str, np.ndarray] = {}
    cin = 1
    for k, (cout, _) in enumerate(layers, 1):
        fan_in = 9 * cin
        params[f"conv{k}.w"] = (rng.standard_normal((9 * cin, cout)) *
                                np.sqrt(2.0 / fan_in)).astype(np.float32)
        params[f"conv{k}.b"] = np.zeros(cout, np.float32)
        cin = cout
    side = SIZE >> sum(1 for _, pool in layers if pool)
    fin = cin * side * side
    params["fc.w"] = (rng.standard_normal((fin, 10)) * np.sqrt(1.0 / fin)).astype(np.float32)
    params["fc.b"] = np.zeros(10, np.float32)
    return params


def forward(params: Dict[str, np.ndarray], x_nchw: np.ndarray, layers=LAYERS,
            keep: bool = False):
    """Logits [N,10]; with ``keep``, also what backward needs."""
    x = np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1))
    cache: List[tuple] = []
    for k, (cout, pool) in enumerate(layers, 1):
        n, h, w, _ = x.shape
        cols = _im2col(x)
        y = (cols @ params[f"conv{k}.w"] + params[f"conv{k}.b"]).reshape(n, h, w, cout)
        mask = y > 0
        y = y * mask
        pool_arg = None
        if pool:
            blocks = y.reshape(n, h // 2, 2, w // 2, 2, cout)
            pooled = blocks.max(axis=(2, 4))
            pool_arg = blocks == pooled[:, :, None, :, None, :]
            y = pooled
        if keep:
            cache.append((cols if keep else None, x.shape, mask, pool_arg))
        x = y
    feat = x.transpose(0, 3, 1, 2).reshape(len(x), -1)       # ONNX Flatten order (c, h, w)
    logits = feat @ params["fc.w"] + params["fc.b"]
    if keep:
        return logits, (cache, feat, x.shape)
    return logits


def backward(params: Dict[str, np.ndarray], dlogits: np.ndarray, saved, layers=LAYERS
             ) -> Dict[str, np.ndarray]:
    cache, feat, last_shape = saved
    grads = {"fc.w": feat.T @ dlogits, "fc.b": dlogits.sum(axis=0)}
    n, h, w, c = last_shape
    dx = np.ascontiguousarray((dlogits @ params["fc.w"].T).reshape(n, c, h, w)
                              .transpose(0, 2, 3, 1))
    for k in range(len(layers), 0, -1):
        cols, in_shape, mask, pool_arg = cache[k - 1]
        if pool_arg is not None:
            n2, h2, w2, c2 = dx.shape
            # the gradient goes to the max of each 2x2 block (ties share it)
            dblocks = pool_arg * dx[:, :, None, :, None, :]
            dx = dblocks.reshape(n2, h2 * 2, w2 * 2, c2)
        dy = (dx * mask).reshape(-1, mask.shape[-1])
        grads[f"conv{k}.w"] = cols.T @ dy
        grads[f"conv{k}.b"] = dy.sum(axis=0)
        if k > 1:
            dx = _col2im(dy @ params[f"conv{k}.w"].T, in_shape)
    return grads


def _loss_grad(logits: np.ndarray, y: np.ndarray, smoothing: float) -> Tuple[float, np.ndarray]:
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted)
    probs /= probs.sum(axis=1, keepdims=True)
    target = np.full_like(probs, smoothing / probs.shape[1])
    target[np.arange(len(y)), y] += 1.0 - smoothing
    loss = float(-(target * np.log(probs + 1e-12)).sum(axis=1).mean())
    return loss, ((probs - target) / len(y)).astype(np.float32)


def _shift(x: np.ndarray, rng: np.random.Generator, max_shift: int) -> np.ndarray:
    """Every image moved by up to ``max_shift`` pixels in x and y (zeros come in)."""
    if max_shift <= 0:
        return x
    out = np.zeros_like(x)
    n, _, h, w = x.shape
    dys = rng.integers(-max_shift, max_shift + 1, n)
    dxs = rng.integers(-max_shift, max_shift + 1, n)
    for i in range(n):
        dy, dx = int(dys[i]), int(dxs[i])
        out[i, :, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
            x[i, :, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def train(x: np.ndarray, y: np.ndarray, epochs: int, seed: int, layers=LAYERS,
          batch: int = 32, lr: float = 2e-3, weight_decay: float = 1e-4,
          smoothing: float = 0.1, max_shift: int = 2) -> Dict[str, np.ndarray]:
    """AdamW with a cosine schedule over ``epochs``; returns the parameters."""
    rng = np.random.default_rng(seed)
    params = init_params(seed, layers)
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(p) for k, p in params.items()}
    b1, b2, eps = 0.9, 0.999, 1e-8
    steps_per_epoch = int(np.ceil(len(x) / batch))
    total = max(1, epochs * steps_per_epoch)
    step = 0
    for epoch in range(epochs):
        order = rng.permutation(len(x))
        seen = 0.0
        for start in range(0, len(x), batch):
            idx = order[start:start + batch]
            xb = _shift(x[idx], rng, max_shift)
            logits, saved = forward(params, xb, layers, keep=True)
            loss, dlogits = _loss_grad(logits, y[idx], smoothing)
            grads = backward(params, dlogits, saved, layers)
            step += 1
            rate = lr * 0.5 * (1.0 + np.cos(np.pi * (step - 1) / total))
            for key, g in grads.items():
                m[key] = b1 * m[key] + (1 - b1) * g
                v[key] = b2 * v[key] + (1 - b2) * g * g
                mhat = m[key] / (1 - b1 ** step)
                vhat = v[key] / (1 - b2 ** step)
                decay = weight_decay * params[key] if key.endswith(".w") else 0.0
                params[key] = (params[key] - rate * (mhat / (np.sqrt(vhat) + eps) + decay)
                               ).astype(np.float32)
            seen += loss * len(idx)
        print(f"epoch {epoch + 1:3d}  loss {seen / len(x):.4f}", flush=True)
    return params


def build_onnx(params: Dict[str, np.ndarray], layers=LAYERS) -> onnx.ModelProto:
    g = GraphBuilder(seed=0, opset=17)
    x, cin = "input", 1
    for k, (cout, pool) in enumerate(layers, 1):
        # im2col order (kh, kw, cin) x cout -> ONNX [cout, cin, kh, kw]
        weight = params[f"conv{k}.w"].reshape(3, 3, cin, cout).transpose(3, 2, 0, 1)
        x = g.relu(g.conv(x, f"conv{k}", cin, cout, 3, weight=np.ascontiguousarray(weight),
                          bias=params[f"conv{k}.b"]), f"relu{k}")
        if pool:
            x = g.max_pool(x, f"pool{k}", 2, 2)
        cin = cout
    side = SIZE >> sum(1 for _, pool in layers if pool)
    x = g.node("Flatten", [x], "flatten", axis=1)
    g.gemm(x, "fc", cin * side * side, 10, weight=np.ascontiguousarray(params["fc.w"].T),
           bias=params["fc.b"], output="logits")
    return g.model(
        "digits32_cnn", [tensor_input("input", ["batch", 1, SIZE, SIZE])],
        [tensor_input("logits", ["batch", 10])],
        doc="Digits CNN on 32x32 inputs, trained on scikit-learn load_digits upscaled 4x "
            "(tools/train_digits32.py). Input: pixels / 16 (0..1) upscaled bilinear, float32 "
            "NCHW [batch,1,32,32]. Output: class logits.")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("host/samples"),
                        help="output folder (default host/samples)")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=0,
                        help="train on the first N training images only (to test the script)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    digits = _train_digits()

    x_train, y_train, x_test, y_test, x_calib = digits.split_data(args.seed)
    x_train, x_test, x_calib = upscale(x_train), upscale(x_test), upscale(x_calib)
    if args.limit:
        x_train, y_train = x_train[:args.limit], y_train[:args.limit]
    print(f"train {len(x_train)}, test {len(x_test)}, calibration {len(x_calib)} (from train), "
          f"{SIZE}x{SIZE}")
    start = time.perf_counter()
    params = train(x_train, y_train, args.epochs, args.seed)
    print(f"trained in {time.perf_counter() - start:.1f} s")

    model_path = save(build_onnx(params), args.out / "digits32_cnn.onnx")
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    diff = np.abs(sess.run(None, {"input": x_test[:64]})[0] - forward(params, x_test[:64])).max()
    if diff > 1e-3:
        sys.exit(f"onnxruntime and the numpy network disagree (max abs diff {diff:.2e})")
    logits = sess.run(None, {"input": x_test})[0].astype(np.float32)
    accuracy = float((logits.argmax(axis=1) == y_test).mean())

    digits.write_npz(args.out / "digits32_test.npz",
                     {"input": x_test, "labels": y_test, "logits": logits}, DATASET_NOTE)
    digits.write_npz(args.out / "digits32_calib.npz", {"input": x_calib}, CALIB_NOTE)
    print(f"onnxruntime vs numpy max abs diff {diff:.1e}")
    print(f"test accuracy (onnxruntime, FP32): {accuracy:.4f} "
          f"({int(round(accuracy * len(y_test)))}/{len(y_test)})")
    for name in ("digits32_cnn.onnx", "digits32_test.npz", "digits32_calib.npz"):
        print(f"  {args.out / name}: {(args.out / name).stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
