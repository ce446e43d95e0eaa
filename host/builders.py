"""ONNX models built in code, for tests, benchmarks and demos (nothing is downloaded).

Every builder returns an ``onnx.ModelProto`` that passes ``onnx.checker.check_model`` and runs
in onnxruntime. Weights are random but seeded (the same ``seed`` gives the same bytes), and
He-initialised so activations stay finite through the whole network. Every node has a unique,
stable name (``layer2.0.conv1``, ``features.3.dw``...) because the quantizer's exclude lists and
per-layer reports match node names.

- ``resnet18_shape``: ResNet-18 topology, ``input`` [B,3,224,224] -> ``logits`` [B,1000],
  BatchNorm folded into the convolutions (about 11.7 M parameters).
- ``mobilenetv2_shape``: MobileNetV2 1.0, same input and output (about 3.5 M parameters).
- ``tiny_cnn``: a small conv net, ``input`` [B,3,16,16] -> ``logits`` [B,10], for fast tests.
- ``two_input_model``: ``a`` [B,4] and ``b`` [B,4] -> ``y`` [B,3] (MatMul/Add) and
  ``z`` [B,4] (Mul), for multi-input and multi-output tests.

Random-weight ResNet/MobileNet shapes are good for latency and size only; their outputs barely
depend on the input, so an accuracy measured on them means nothing.

For humans: ``python -m edgetune.host.builders resnet18 out.onnx [--seed 0] [--opset 17] [--batch N]``.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

Batch = Union[int, str]
"""A batch dimension: a fixed size (``1``) or a symbolic name (``"N"``, ``"batch"``)."""

MIN_OPSET = 7
# Above this, ``onnx.save`` needs external data (protobuf's 2 GB limit).
_PROTO_LIMIT = 2 * 1024 ** 3 - 1


class GraphBuilder:
    """Collects named nodes and initializers and turns them into a checked model.

    Node names must be unique (a repeated name raises ``ValueError``); a node's first output
    tensor is named ``<node name>_out`` unless given. Weights not passed explicitly are drawn
    from the builder's seeded generator.
    """

    def __init__(self, seed: int = 0, opset: int = 17) -> None:
        if opset < MIN_OPSET:
            raise ValueError(f"opset {opset} is too old: use {MIN_OPSET} or newer")
        self.opset = opset
        self.rng = np.random.default_rng(seed)
        self.nodes: List[onnx.NodeProto] = []
        self.initializers: List[onnx.TensorProto] = []
        self._node_names: set = set()
        self._tensor_names: set = set()

    # -- low level ----------------------------------------------------------------------
    def initializer(self, name: str, array: np.ndarray) -> str:
        """Adds a constant tensor and returns its name."""
        if name in self._tensor_names:
            raise ValueError(f"tensor name {name!r} is used twice")
        self._tensor_names.add(name)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op_type: str, inputs: Sequence[str], name: str,
             outputs: Optional[Sequence[str]] = None, **attrs: object) -> str:
        """Adds a node and returns the name of its first output."""
        if name in self._node_names:
            raise ValueError(f"node name {name!r} is used twice")
        self._node_names.add(name)
        outs = list(outputs) if outputs else [f"{name}_out"]
        for out in outs:
            if out in self._tensor_names:
                raise ValueError(f"tensor name {out!r} is used twice")
            self._tensor_names.add(out)
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=name, **attrs))
        return outs[0]

    def he_normal(self, shape: Tuple[int, ...], fan_in: int, gain: float = 2.0) -> np.ndarray:
        """Normal(0, sqrt(gain / fan_in)) in float32: variance-preserving through a Relu."""
        std = math.sqrt(gain / fan_in)
        return (self.rng.standard_normal(shape) * std).astype(np.float32)

    def small_bias(self, n: int) -> np.ndarray:
        return (self.rng.standard_normal(n) * 0.01).astype(np.float32)

    # -- layers -------------------------------------------------------------------------
    def conv(self, x: str, name: str, cin: int, cout: int, kernel: int, stride: int = 1,
             pad: Optional[int] = None, group: int = 1, gain: float = 2.0,
             weight: Optional[np.ndarray] = None, bias: Optional[np.ndarray] = None,
             output: Optional[str] = None) -> str:
        """Conv with bias (a BatchNorm folded away); ``pad`` defaults to 'same' for odd kernels."""
        pad = kernel // 2 if pad is None else pad
        if weight is None:
            weight = self.he_normal((cout, cin // group, kernel, kernel),
                                    fan_in=(cin // group) * kernel * kernel, gain=gain)
        if bias is None:
            bias = self.small_bias(cout)
        w = self.initializer(f"{name}.weight", weight)
        b = self.initializer(f"{name}.bias", bias)
        return self.node("Conv", [x, w, b], name, [output] if output else None,
                         kernel_shape=[kernel, kernel], strides=[stride, stride],
                         pads=[pad] * 4, group=group, dilations=[1, 1])

    def gemm(self, x: str, name: str, fin: int, fout: int, gain: float = 2.0,
             weight: Optional[np.ndarray] = None, bias: Optional[np.ndarray] = None,
             output: Optional[str] = None) -> str:
        """Fully connected layer, weight stored [out, in] (transB=1) as torch does."""
        if weight is None:
            weight = self.he_normal((fout, fin), fan_in=fin, gain=gain)
        if bias is None:
            bias = self.small_bias(fout)
        w = self.initializer(f"{name}.weight", weight)
        b = self.initializer(f"{name}.bias", bias)
        return self.node("Gemm", [x, w, b], name, [output] if output else None,
                         alpha=1.0, beta=1.0, transB=1)

    def relu(self, x: str, name: str) -> str:
        return self.node("Relu", [x], name)

    def relu6(self, x: str, name: str) -> str:
        """Relu6 as Clip(0, 6); bounds are inputs from opset 11, attributes before."""
        if self.opset < 11:
            return self.node("Clip", [x], name, min=0.0, max=6.0)
        if "relu6.min" not in self._tensor_names:
            self.initializer("relu6.min", np.array(0.0, dtype=np.float32))
            self.initializer("relu6.max", np.array(6.0, dtype=np.float32))
        return self.node("Clip", [x, "relu6.min", "relu6.max"], name)

    def add(self, a: str, b: str, name: str) -> str:
        return self.node("Add", [a, b], name)

    def max_pool(self, x: str, name: str, kernel: int, stride: int, pad: int = 0) -> str:
        return self.node("MaxPool", [x], name, kernel_shape=[kernel, kernel],
                         strides=[stride, stride], pads=[pad] * 4)

    def global_avg_pool_flat(self, x: str, name: str) -> str:
        """GlobalAveragePool then Flatten: [B,C,H,W] -> [B,C]."""
        pooled = self.node("GlobalAveragePool", [x], name)
        return self.node("Flatten", [pooled], f"{name}.flatten", axis=1)

    # -- result -------------------------------------------------------------------------
    def model(self, graph_name: str, inputs: Sequence[onnx.ValueInfoProto],
              outputs: Sequence[onnx.ValueInfoProto], doc: str = "") -> onnx.ModelProto:
        """Builds and checks the model, with the lowest IR version the opset allows
        (so older onnxruntime builds on boards can load it)."""
        graph = helper.make_graph(self.nodes, graph_name, list(inputs), list(outputs),
                                  initializer=self.initializers)
        opset = [helper.make_opsetid("", self.opset)]
        model = helper.make_model(graph, opset_imports=opset, producer_name="edgetune",
                                  doc_string=doc)
        model.ir_version = helper.find_min_ir_version_for(opset)
        onnx.checker.check_model(model)
        return model


def tensor_input(name: str, shape: Sequence[Union[int, str]]) -> onnx.ValueInfoProto:
    """A float32 graph input or output; strings in ``shape`` are symbolic dimensions."""
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _check_batch(batch: Batch) -> Batch:
    if isinstance(batch, bool) or not isinstance(batch, (int, str)):
        raise TypeError(f"batch must be an int or a dimension name, not {batch!r}")
    if isinstance(batch, int) and batch < 1:
        raise ValueError(f"batch must be >= 1, not {batch}")
    if isinstance(batch, str) and not batch:
        raise ValueError("a symbolic batch needs a name, e.g. 'N'")
    return batch


# ---------------------------------------------------------------------------------------
# ResNet-18
# ---------------------------------------------------------------------------------------
def _basic_block(g: GraphBuilder, x: str, prefix: str, cin: int, cout: int, stride: int) -> str:
    """conv3x3-relu-conv3x3 plus shortcut (1x1/stride conv when the shape changes), relu."""
    y = g.relu(g.conv(x, f"{prefix}.conv1", cin, cout, 3, stride), f"{prefix}.relu1")
    # A smaller gain on the branch's last conv keeps the residual sum from doubling its
    # variance at every block (random weights, no BatchNorm to renormalise).
    y = g.conv(y, f"{prefix}.conv2", cout, cout, 3, 1, gain=0.5)
    shortcut = x
    if stride != 1 or cin != cout:
        shortcut = g.conv(x, f"{prefix}.downsample", cin, cout, 1, stride, pad=0, gain=1.0)
    return g.relu(g.add(y, shortcut, f"{prefix}.add"), f"{prefix}.relu2")


def resnet18_shape(seed: int = 0, opset: int = 17, batch: Batch = 1) -> onnx.ModelProto:
    """ResNet-18 (torchvision topology, BatchNorm folded): ``input`` [batch,3,224,224] ->
    ``logits`` [batch,1000]; about 11.7 M parameters, 1.8 GMAC per image."""
    batch = _check_batch(batch)
    g = GraphBuilder(seed, opset)
    x = g.relu(g.conv("input", "conv1", 3, 64, 7, 2, pad=3), "relu")
    x = g.max_pool(x, "maxpool", 3, 2, pad=1)
    cin = 64
    for stage, cout in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            stride = 2 if (stage > 1 and block == 0) else 1
            x = _basic_block(g, x, f"layer{stage}.{block}", cin, cout, stride)
            cin = cout
    x = g.global_avg_pool_flat(x, "avgpool")
    g.gemm(x, "fc", 512, 1000, gain=1.0, output="logits")
    return g.model("resnet18_shape", [tensor_input("input", [batch, 3, 224, 224])],
                   [tensor_input("logits", [batch, 1000])],
                   doc=f"ResNet-18 shape with random weights (seed {seed}); edgetune.builders")


# ---------------------------------------------------------------------------------------
# MobileNetV2
# ---------------------------------------------------------------------------------------
# (expansion t, output channels c, repeats n, first stride s), as in the paper / torchvision.
_MBV2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                  (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def _inverted_residual(g: GraphBuilder, x: str, prefix: str, cin: int, cout: int,
                       stride: int, expand: int) -> str:
    hidden = cin * expand
    y = x
    if expand != 1:
        y = g.relu6(g.conv(y, f"{prefix}.expand", cin, hidden, 1, pad=0), f"{prefix}.expand_relu6")
    y = g.relu6(g.conv(y, f"{prefix}.dw", hidden, hidden, 3, stride, group=hidden),
                f"{prefix}.dw_relu6")
    y = g.conv(y, f"{prefix}.project", hidden, cout, 1, pad=0, gain=1.0)   # linear bottleneck
    if stride == 1 and cin == cout:
        y = g.add(y, x, f"{prefix}.add")
    return y


def mobilenetv2_shape(seed: int = 0, opset: int = 17, batch: Batch = 1) -> onnx.ModelProto:
    """MobileNetV2 1.0 (Relu6 as Clip(0,6), depthwise convs with group=C, BatchNorm folded):
    ``input`` [batch,3,224,224] -> ``logits`` [batch,1000]; about 3.5 M parameters."""
    batch = _check_batch(batch)
    g = GraphBuilder(seed, opset)
    x = g.relu6(g.conv("input", "features.0.conv", 3, 32, 3, 2), "features.0.relu6")
    cin, index = 32, 1
    for t, c, n, s in _MBV2_SETTINGS:
        for i in range(n):
            x = _inverted_residual(g, x, f"features.{index}", cin, c, s if i == 0 else 1, t)
            cin, index = c, index + 1
    x = g.relu6(g.conv(x, f"features.{index}.conv", cin, 1280, 1, pad=0),
                f"features.{index}.relu6")
    x = g.global_avg_pool_flat(x, "avgpool")
    g.gemm(x, "classifier", 1280, 1000, gain=1.0, output="logits")
    return g.model("mobilenetv2_shape", [tensor_input("input", [batch, 3, 224, 224])],
                   [tensor_input("logits", [batch, 1000])],
                   doc=f"MobileNetV2 1.0 shape with random weights (seed {seed}); "
                       "edgetune.builders")


# ---------------------------------------------------------------------------------------
# Small models for fast tests
# ---------------------------------------------------------------------------------------
def tiny_cnn(seed: int = 0, dynamic_batch: bool = True, opset: int = 17) -> onnx.ModelProto:
    """``input`` [batch|1,3,16,16] -> ``logits`` [batch|1,10]: conv-relu, strided conv-relu,
    conv with a residual add, maxpool, flatten, Gemm. Runs in well under a millisecond."""
    batch: Batch = "batch" if dynamic_batch else 1
    g = GraphBuilder(seed, opset)
    x = g.relu(g.conv("input", "conv1", 3, 8, 3), "relu1")
    x = g.relu(g.conv(x, "conv2", 8, 16, 3, 2), "relu2")            # [B,16,8,8]
    y = g.conv(x, "conv3", 16, 16, 3, gain=1.0)
    x = g.relu(g.add(y, x, "add"), "relu3")
    x = g.max_pool(x, "maxpool", 2, 2)                               # [B,16,4,4]
    # Flatten, not a global pool: the logits keep depending on where things are in the
    # input, so quantization error shows up in top-1 agreement even with random weights.
    x = g.node("Flatten", [x], "flatten", axis=1)
    g.gemm(x, "fc", 256, 10, gain=1.0, output="logits")
    return g.model("tiny_cnn", [tensor_input("input", [batch, 3, 16, 16])],
                   [tensor_input("logits", [batch, 10])],
                   doc=f"tiny CNN with random weights (seed {seed}); edgetune.builders")


def two_input_model(seed: int = 0, dynamic_batch: bool = True,
                    opset: int = 17) -> onnx.ModelProto:
    """Two inputs, two outputs: ``y = a @ Wa + b @ Wb + bias`` [batch,3] and ``z = a * b``
    [batch,4], with ``a`` and ``b`` float32 [batch,4]."""
    batch: Batch = "batch" if dynamic_batch else 1
    g = GraphBuilder(seed, opset)
    wa = g.initializer("wa", g.he_normal((4, 3), fan_in=4, gain=1.0))
    wb = g.initializer("wb", g.he_normal((4, 3), fan_in=4, gain=1.0))
    bias = g.initializer("bias", g.small_bias(3))
    ma = g.node("MatMul", ["a", wa], "matmul_a")
    mb = g.node("MatMul", ["b", wb], "matmul_b")
    s = g.add(ma, mb, "add")
    g.node("Add", [s, bias], "add_bias", ["y"])
    g.node("Mul", ["a", "b"], "mul", ["z"])
    return g.model("two_input_model",
                   [tensor_input("a", [batch, 4]), tensor_input("b", [batch, 4])],
                   [tensor_input("y", [batch, 3]), tensor_input("z", [batch, 4])],
                   doc=f"two-input model with random weights (seed {seed}); edgetune.builders")


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------
def save(model: onnx.ModelProto, path: Union[str, Path]) -> Path:
    """Writes ``model`` to ``path`` (parents created). Models over protobuf's 2 GB limit get
    their weights in ``<name>.data`` beside it. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if model.ByteSize() > _PROTO_LIMIT:
        onnx.save_model(model, str(path), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=path.name + ".data")
    else:
        onnx.save_model(model, str(path))
    return path


def param_count(model: onnx.ModelProto) -> int:
    """Number of weight elements (initializers) in ``model``."""
    total = 0
    for init in model.graph.initializer:
        total += int(np.prod(init.dims)) if init.dims else 1
    return total


def random_feeds(model: onnx.ModelProto, batch: int = 1, seed: int = 0) -> Dict[str, np.ndarray]:
    """Standard-normal float32 inputs for every graph input; symbolic dims become ``batch``."""
    rng = np.random.default_rng(seed)
    init_names = {i.name for i in model.graph.initializer}
    feeds: Dict[str, np.ndarray] = {}
    for inp in model.graph.input:
        if inp.name in init_names:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else batch
                for d in inp.type.tensor_type.shape.dim]
        feeds[inp.name] = rng.standard_normal(dims).astype(np.float32)
    return feeds


BUILDERS = {
    "resnet18": resnet18_shape,
    "mobilenetv2": mobilenetv2_shape,
    "tiny_cnn": tiny_cnn,
    "two_input": two_input_model,
}


def build(name: str, seed: int = 0, opset: int = 17, batch: Optional[Batch] = None
          ) -> onnx.ModelProto:
    """Builds a model by its ``BUILDERS`` name. ``batch``: an int or a dimension name for the
    big shapes (default 1); for the small models any name means dynamic, an int means fixed 1."""
    if name not in BUILDERS:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(BUILDERS)}")
    if name in ("resnet18", "mobilenetv2"):
        return BUILDERS[name](seed=seed, opset=opset, batch=1 if batch is None else batch)
    dynamic = batch is None or isinstance(batch, str)
    if isinstance(batch, int) and batch != 1:
        raise ValueError(f"{name} is built with batch 1 or a dynamic batch, not {batch}")
    return BUILDERS[name](seed=seed, dynamic_batch=dynamic, opset=opset)


def _shape_text(value: onnx.ValueInfoProto) -> str:
    dims = (d.dim_param or str(d.dim_value) for d in value.type.tensor_type.shape.dim)
    return "[" + ",".join(dims) + "]"


def _parse_batch(text: str) -> Batch:
    return int(text) if text.isdigit() else text


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m edgetune.host.builders",
        description="Write a random-weight ONNX model built in code (for benchmarks and tests).")
    parser.add_argument("model", choices=sorted(BUILDERS), help="which model to build")
    parser.add_argument("output", type=Path, help="where to write the .onnx file")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    parser.add_argument("--batch", type=_parse_batch, default=None,
                        help="batch dimension: a number, or a name such as N for a dynamic "
                             "batch (default: 1 for resnet18/mobilenetv2, dynamic for the "
                             "small models)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing file")
    args = parser.parse_args(argv)
    if args.output.exists() and not args.force:
        parser.error(f"{args.output} exists: pass --force to overwrite it")
    try:
        model = build(args.model, seed=args.seed, opset=args.opset, batch=args.batch)
    except (ValueError, TypeError) as exc:
        parser.error(str(exc))
    path = save(model, args.output)
    inputs = ", ".join(f"{i.name}{_shape_text(i)}" for i in model.graph.input)
    print(f"wrote {path}: {args.model}, {len(model.graph.node)} nodes, "
          f"{param_count(model):,} parameters, inputs {inputs}, opset {args.opset}, "
          f"{path.stat().st_size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
