"""The shipped digits sample (model + datasets) and the ONNX model builders (host.builders)."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from collections import Counter
from typing import List

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from edgetune.host import builders
from edgetune.host.builders import GraphBuilder, param_count, random_feeds, tensor_input
from edgetune.host.samples import DIGITS_CALIB, DIGITS_MODEL, DIGITS_TEST, SAMPLES_DIR


def session(model) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def dims(value_info: onnx.ValueInfoProto) -> List[object]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def node_names_unique_and_set(model: onnx.ModelProto) -> None:
    names = [n.name for n in model.graph.node]
    assert all(names), "every node needs a name"
    dupes = [name for name, count in Counter(names).items() if count > 1]
    assert not dupes, f"duplicate node names: {dupes}"


# ---------------------------------------------------------------------------------------
# The shipped sample
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_test():
    with np.load(DIGITS_TEST, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="module")
def digits_session():
    return session(DIGITS_MODEL)


def test_digits_model_is_small_checked_and_has_the_documented_interface():
    assert DIGITS_MODEL.stat().st_size < 1_000_000
    model = onnx.load(str(DIGITS_MODEL))
    onnx.checker.check_model(model)
    assert model.opset_import[0].version == 17
    assert model.ir_version <= 9, "keep the IR version loadable by older onnxruntime on boards"
    (inp,), (out,) = model.graph.input, model.graph.output
    assert (inp.name, dims(inp)) == ("input", ["batch", 1, 8, 8])
    assert (out.name, dims(out)) == ("logits", ["batch", 10])
    node_names_unique_and_set(model)
    assert [n.op_type for n in model.graph.node].count("Conv") == 3


def test_digits_accuracy_on_the_shipped_test_set(digits_session, digits_test):
    logits = digits_session.run(["logits"], {"input": digits_test["input"]})[0]
    accuracy = float((logits.argmax(axis=1) == digits_test["labels"]).mean())
    assert accuracy >= 0.97
    # The number the README gives is the one the model really reaches.
    readme = (SAMPLES_DIR / "README.md").read_text()
    assert f"{accuracy * 100:.2f}%" in readme


def test_digits_test_set_follows_the_dataset_convention(digits_session, digits_test):
    assert set(digits_test) == {"input", "labels", "logits"}
    x, labels, ref = digits_test["input"], digits_test["labels"], digits_test["logits"]
    assert x.dtype == np.float32 and x.shape[1:] == (1, 8, 8)
    assert labels.dtype == np.int64 and labels.shape == (len(x),)
    assert ref.dtype == np.float32 and ref.shape == (len(x), 10)
    assert set(np.unique(labels)) == set(range(10))
    # Already scaled (pixels / 16): values are k/16 with k in 0..16.
    assert 0.0 <= x.min() and x.max() <= 1.0
    np.testing.assert_array_equal(x * 16, np.round(x * 16))
    # The reference outputs are what the model produces.
    logits = digits_session.run(["logits"], {"input": x})[0]
    np.testing.assert_allclose(logits, ref, atol=1e-4, rtol=1e-4)
    assert "pixels/16" in zipfile.ZipFile(DIGITS_TEST).comment.decode()


def test_digits_calibration_set_is_separate_from_the_test_set(digits_test):
    with np.load(DIGITS_CALIB, allow_pickle=False) as data:
        assert data.files == ["input"]
        calib = data["input"]
    assert calib.dtype == np.float32 and calib.shape == (200, 1, 8, 8)
    assert 0.0 <= calib.min() and calib.max() <= 1.0
    test_rows = {row.tobytes() for row in digits_test["input"]}
    assert not any(row.tobytes() in test_rows for row in calib), "a test image is in calib"


def test_digits_model_batch_is_dynamic(digits_session, digits_test):
    x = digits_test["input"][:7]
    batched = digits_session.run(None, {"input": x})[0]
    single = np.concatenate([digits_session.run(None, {"input": x[i:i + 1]})[0]
                             for i in range(len(x))])
    assert batched.shape == (7, 10)
    np.testing.assert_allclose(batched, single, atol=1e-5)


# ---------------------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def resnet18():
    return builders.resnet18_shape()


@pytest.fixture(scope="module")
def mobilenetv2():
    return builders.mobilenetv2_shape()


@pytest.mark.parametrize("fixture, low, high, depthwise", [
    ("resnet18", 11_500_000, 11_900_000, 0),
    ("mobilenetv2", 3_350_000, 3_650_000, 17),
])
def test_big_shapes_check_run_and_have_the_expected_size(request, fixture, low, high, depthwise):
    model = request.getfixturevalue(fixture)
    onnx.checker.check_model(model)
    node_names_unique_and_set(model)
    assert low <= param_count(model) <= high
    (inp,), (out,) = model.graph.input, model.graph.output
    assert (inp.name, dims(inp)) == ("input", [1, 3, 224, 224])
    assert (out.name, dims(out)) == ("logits", [1, 1000])
    (logits,) = session(model).run(None, random_feeds(model))
    assert logits.shape == (1, 1000)
    assert np.isfinite(logits).all() and 0.1 < np.abs(logits).max() < 1000
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    channels = {i.name: i.dims[0] for i in model.graph.initializer}
    dw = [n for n in convs if helper.get_attribute_value(
        next(a for a in n.attribute if a.name == "group")) == channels[n.input[1]] > 1]
    assert len(dw) == depthwise


def test_resnet18_topology(resnet18):
    ops = Counter(n.op_type for n in resnet18.graph.node)
    assert ops["Conv"] == 20          # stem + 8 blocks x 2 + 3 downsample 1x1 convs
    assert ops["Add"] == 8 and ops["MaxPool"] == 1 and ops["GlobalAveragePool"] == 1
    names = {n.name for n in resnet18.graph.node}
    assert {"conv1", "layer1.0.conv1", "layer4.1.conv2", "layer2.0.downsample", "fc"} <= names
    assert "layer1.0.downsample" not in names
    fc = next(i for i in resnet18.graph.initializer if i.name == "fc.weight")
    assert list(fc.dims) == [1000, 512]


def test_mobilenetv2_topology(mobilenetv2):
    ops = Counter(n.op_type for n in mobilenetv2.graph.node)
    assert ops["Clip"] == 35          # stem, 17 depthwise, 16 expansions, head: Relu6 each
    assert ops["Add"] == 10           # residual connections of stride-1 same-width blocks
    assert "Relu" not in ops
    head = next(i for i in mobilenetv2.graph.initializer if i.name == "classifier.weight")
    assert list(head.dims) == [1000, 1280]


def test_big_shape_with_a_symbolic_batch_runs_at_batch_two():
    model = builders.mobilenetv2_shape(batch="N")
    assert dims(model.graph.input[0])[0] == "N"
    (logits,) = session(model).run(None, random_feeds(model, batch=2, seed=3))
    assert logits.shape == (2, 1000)


def test_builders_are_deterministic_per_seed():
    a = builders.tiny_cnn(seed=0).SerializeToString()
    assert a == builders.tiny_cnn(seed=0).SerializeToString()
    assert a != builders.tiny_cnn(seed=1).SerializeToString()


@pytest.mark.parametrize("dynamic", [True, False])
def test_tiny_cnn(dynamic):
    model = builders.tiny_cnn(dynamic_batch=dynamic)
    onnx.checker.check_model(model)
    node_names_unique_and_set(model)
    batch = "batch" if dynamic else 1
    assert dims(model.graph.input[0]) == [batch, 3, 16, 16]
    assert dims(model.graph.output[0]) == [batch, 10]
    n = 5 if dynamic else 1
    feeds = random_feeds(model, batch=n)
    (logits,) = session(model).run(None, feeds)
    assert logits.shape == (n, 10) and np.isfinite(logits).all()
    if dynamic:  # the logits depend on the input (a flatten head, not a global pool)
        assert np.ptp(logits, axis=0).max() > 0.1


def test_two_input_model_computes_what_it_says():
    model = builders.two_input_model()
    onnx.checker.check_model(model)
    node_names_unique_and_set(model)
    assert [(i.name, dims(i)) for i in model.graph.input] == [("a", ["batch", 4]),
                                                              ("b", ["batch", 4])]
    assert [o.name for o in model.graph.output] == ["y", "z"]
    w = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    feeds = random_feeds(model, batch=3)
    y, z = session(model).run(None, feeds)
    a, b = feeds["a"], feeds["b"]
    np.testing.assert_allclose(y, a @ w["wa"] + b @ w["wb"] + w["bias"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(z, a * b)


def test_old_opset_relu6_uses_clip_attributes_and_runs():
    g = GraphBuilder(seed=0, opset=10)
    g.relu6(g.conv("x", "conv", 2, 4, 3), "relu6")
    model = g.model("t", [tensor_input("x", [1, 2, 5, 5])],
                    [tensor_input("relu6_out", [1, 4, 5, 5])])
    assert model.opset_import[0].version == 10
    clip = model.graph.node[1]
    assert len(clip.input) == 1 and {a.name for a in clip.attribute} == {"min", "max"}
    feeds = {"x": np.full((1, 2, 5, 5), 50.0, dtype=np.float32)}
    (out,) = session(model).run(None, feeds)
    assert out.max() == 6.0 and out.min() >= 0.0


def test_tiny_cnn_at_opset_9_checks_and_runs():
    model = builders.tiny_cnn(opset=9)
    assert model.opset_import[0].version == 9
    (logits,) = session(model).run(None, random_feeds(model, batch=2))
    assert logits.shape == (2, 10)


def test_graph_builder_refuses_duplicate_names():
    g = GraphBuilder()
    g.relu("x", "act")
    with pytest.raises(ValueError, match="node name 'act'"):
        g.relu("act_out", "act")


def test_bad_batch_is_refused():
    with pytest.raises(ValueError):
        builders.resnet18_shape(batch=0)
    with pytest.raises(ValueError, match="unknown model"):
        builders.build("vgg16")


def test_save_creates_parent_folders(tmp_path):
    path = builders.save(builders.two_input_model(), tmp_path / "a" / "b" / "m.onnx")
    assert onnx.load(str(path)).graph.name == "two_input_model"


def test_cli_writes_models_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "tiny.onnx"
    assert builders.main(["tiny_cnn", str(out), "--batch", "1", "--seed", "4"]) == 0
    model = onnx.load(str(out))
    assert dims(model.graph.input[0]) == [1, 3, 16, 16]
    assert model.SerializeToString() == builders.tiny_cnn(seed=4, dynamic_batch=False
                                                          ).SerializeToString()
    assert "wrote" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        builders.main(["tiny_cnn", str(out)])
    assert exc.value.code == 2
    assert "--force" in capsys.readouterr().err
    assert builders.main(["resnet18", str(out), "--batch", "N", "--force"]) == 0
    assert dims(onnx.load(str(out)).graph.input[0]) == ["N", 3, 224, 224]


def test_cli_runs_as_a_module(tmp_path):
    out = tmp_path / "mbv2.onnx"
    proc = subprocess.run([sys.executable, "-m", "edgetune.host.builders", "mobilenetv2", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"3,4\d\d,\d\d\d parameters", proc.stdout)
    assert 10_000_000 < out.stat().st_size < 20_000_000
