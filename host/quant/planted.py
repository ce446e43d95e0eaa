"""A digits classifier with a planted sensitive layer: the test bed of analysis and fallback.

``build_planted_model(path)`` trains a small MLP on scikit-learn's bundled 8x8 digits (a few
seconds, seeded), writes it as ONNX (input ``input`` float32 [batch,64], the pixels / 16 of
the shipped digits sample, flattened; output ``logits`` [batch,10]; nodes fc0, relu0, ...,
fc8) and plants an outlier channel: one unit of one hidden layer (the last one by default,
whose features feed the classifier) has its weights and bias multiplied by ``scale`` (1e4 by
default) and the next layer's weights for that unit divided by it. ReLU is positively homogeneous, so the
float model computes the same function; but that layer's activations now span ~``scale`` times
their usual range, so a per-tensor 8-bit quantization of them rounds every other unit to zero
and the accuracy collapses. The rest of the network quantizes well. The analysis should rank
the planted layer first, and the fallback should repair it while keeping most layers int8.

scikit-learn is needed here (it trains the model and holds the digits data); the edgetune
commands themselves do not need it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np

from edgetune.host.errors import UsageError


@dataclass(frozen=True)
class PlantedModel:
    model_path: Path
    planted_node: str               # the Gemm whose output unit carries the outliers
    planted_tensor: str             # its (ReLU) output, the activation whose Q/DQ ruins accuracy
    touching: Tuple[str, ...]       # every node around that tensor (its producer, the fused
                                    # ReLU, the consumer): what must not be 8-bit to repair it
    eval_npz: Path                  # held-out split: input, labels, logits (float reference)
    calib_npz: Path                 # train split: input
    scale: float
    unit: int                       # the planted unit (column) of the hidden layer
    float_top1: float               # the float model's accuracy on eval_npz


def _train(hidden: Sequence[int], seed: int, test_size: float):
    try:
        from sklearn.datasets import load_digits
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.model_selection import train_test_split
        from sklearn.neural_network import MLPClassifier
    except ImportError:
        raise UsageError("the planted-layer model needs scikit-learn (for its digits data and "
                         "to train)", hint="pip install scikit-learn") from None
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_size, random_state=seed, stratify=y)
    from threadpoolctl import threadpool_limits      # a scikit-learn dependency

    clf = MLPClassifier(hidden_layer_sizes=tuple(hidden), max_iter=300, random_state=seed)
    # One BLAS thread: the same weights on every machine load, and faster for these sizes
    # (many threads on a busy 2-core machine took 10x longer).
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x_train, y_train)
    weights = [w.astype(np.float32).copy() for w in clf.coefs_]        # [in, out]
    biases = [b.astype(np.float32).copy() for b in clf.intercepts_]
    return weights, biases, (x_train, y_train), (x_test, y_test)


def _to_onnx(weights: Sequence[np.ndarray], biases: Sequence[np.ndarray]):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = []
    inits = []
    prev = "input"
    last = len(weights) - 1
    for i, (w, b) in enumerate(zip(weights, biases)):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(w.T), f"fc{i}.weight"))
        inits.append(numpy_helper.from_array(b, f"fc{i}.bias"))
        out = "logits" if i == last else f"fc{i}_out"
        nodes.append(helper.make_node("Gemm", [prev, f"fc{i}.weight", f"fc{i}.bias"], [out],
                                      name=f"fc{i}", transB=1))
        if i < last:
            nodes.append(helper.make_node("Relu", [out], [f"relu{i}_out"], name=f"relu{i}"))
            prev = f"relu{i}_out"
    graph = helper.make_graph(
        nodes, "digits_mlp_planted",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="edgetune.planted")
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def build_planted_model(path: Path, *, scale: float = 1e4, hidden: Sequence[int] = (64,) * 8,
                        layer: Optional[int] = None, seed: int = 0, test_size: float = 0.3
                        ) -> PlantedModel:
    """Train, plant and write the model to ``path``; the datasets go beside it
    (``<stem>.eval.npz``, ``<stem>.calib.npz``). ``layer``: the hidden layer to plant in
    (default: the last one)."""
    import onnx
    import onnxruntime as ort

    if layer is None:
        layer = len(hidden) - 1
    if not 0 <= layer < len(hidden):
        raise UsageError(f"layer must be in 0..{len(hidden) - 1}, got {layer}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    weights, biases, (x_train, _), (x_test, y_test) = _train(hidden, seed, test_size)
    # The unit with the largest incoming weights: a live one, so the outliers really occur.
    unit = int(np.argmax(np.abs(weights[layer]).sum(axis=0)))
    weights[layer][:, unit] *= scale
    biases[layer][unit] *= scale
    weights[layer + 1][unit, :] /= scale
    model = _to_onnx(weights, biases)
    onnx.save(model, str(path))

    x_eval = np.ascontiguousarray(x_test)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": x_eval})[0]
    float_top1 = float(np.mean(np.argmax(logits, axis=1) == y_test))
    eval_npz = path.with_name(path.stem + ".eval.npz")
    calib_npz = path.with_name(path.stem + ".calib.npz")
    np.savez(eval_npz, input=x_eval, labels=y_test.astype(np.int64), logits=logits)
    np.savez(calib_npz, input=x_train)
    return PlantedModel(
        model_path=path, planted_node=f"fc{layer}", planted_tensor=f"relu{layer}_out",
        touching=(f"fc{layer}", f"relu{layer}", f"fc{layer + 1}"), eval_npz=eval_npz,
        calib_npz=calib_npz, scale=scale, unit=unit, float_top1=float_top1)


__all__ = ["PlantedModel", "build_planted_model"]
