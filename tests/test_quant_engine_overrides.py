"""Precision overrides: exclude, int16 islands, subgraphs between boundary tensors, truncate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgetune.host import builders
from edgetune.host.errors import BadInputError
from edgetune.host.quant.calibdata import CalibrationData
from edgetune.host.quant.pipeline import quantize
from edgetune.host.quant.settings import QuantizeSettings, SubgraphOverride


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tiny")
    path = builders.save(builders.tiny_cnn(seed=1), tmp / "tiny.onnx")
    x = np.random.default_rng(0).standard_normal((24, 3, 16, 16)).astype(np.float32)
    return path, CalibrationData.from_arrays({"input": x})


def _q(tiny, tmp_path, **kw):
    path, data = tiny
    return quantize(QuantizeSettings(model=path, output=tmp_path / "q.onnx", force=True, **kw),
                    data=data)


@pytest.mark.parametrize("pattern,expected", [
    ("conv2", {"conv2"}),
    ("conv*", {"conv1", "conv2", "conv3"}),
    ("Gemm", {"fc"}),
])
def test_exclude_by_name_glob_and_op_type(tiny, tmp_path, pattern, expected):
    report = _q(tiny, tmp_path, exclude=(pattern,))
    floats = {n for n, p in report.node_precision.items() if p == "float"}
    assert expected <= floats
    model = onnx.load(str(report.output))
    float_inits = {i.name for i in model.graph.initializer if i.data_type == TensorProto.FLOAT}
    for node in model.graph.node:
        if node.name in expected:                   # the weights stay float, read directly
            assert node.input[1] in float_inits and node.input[1].endswith(".weight")
    record = json.loads(report.record_path.read_text())
    assert all(record["overrides"]["float"][n] == f"--exclude {pattern}" for n in expected)


def test_pattern_matching_nothing_names_close_matches(tiny, tmp_path):
    with pytest.raises(BadInputError, match=r"'conv22' matches no node.*did you mean: conv2"):
        _q(tiny, tmp_path, exclude=("conv22",))
    assert not (tmp_path / "q.onnx").exists()


def test_truncate_keeps_everything_after_the_tensor_float(tiny, tmp_path):
    report = _q(tiny, tmp_path, truncate=("relu3_out",))
    assert {report.node_precision[n] for n in ("maxpool", "flatten", "fc")} == {"float"}
    assert report.node_precision["conv3"] == "int8"
    sess = ort.InferenceSession(str(report.output), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"input": np.zeros((1, 3, 16, 16), np.float32)})[0].shape == (1, 10)


@pytest.mark.parametrize("tensor,message", [
    ("logits", "truncate graph failed: tensor 'logits' does not split the graph"),
    ("relu9_out", "truncate graph failed: tensor 'relu9_out' is not in the graph"),
])
def test_truncate_errors(tiny, tmp_path, tensor, message):
    with pytest.raises(BadInputError, match=message):
        _q(tiny, tmp_path, truncate=(tensor,))


def test_subgraph_between_boundary_tensors_gets_its_precision(tiny, tmp_path):
    sg = SubgraphOverride(inputs=("relu1_out",), outputs=("relu2_out",), precision="int16")
    report = _q(tiny, tmp_path, subgraphs=(sg,))
    assert report.node_precision["conv2"] == "int16" and report.node_precision["relu2"] == "int16"
    assert report.node_precision["conv1"] == "int8" and report.node_precision["conv3"] == "int8"
    assert report.n_int16_nodes == 2
    sess = ort.InferenceSession(str(report.output), providers=["CPUExecutionProvider"])
    sess.run(None, {"input": np.zeros((2, 3, 16, 16), np.float32)})
    float_sg = SubgraphOverride(inputs=("relu1_out",), outputs=("add_out",), precision="float",
                                method=None)
    report = _q(tiny, tmp_path, subgraphs=(float_sg,))
    assert {report.node_precision[n] for n in ("conv2", "relu2", "conv3", "add")} == {"float"}


@pytest.mark.parametrize("sg,message", [
    (SubgraphOverride(inputs=("relu2_out",), outputs=("relu1_out",)),
     "do not enclose a subgraph: node 'conv1' reads graph input 'input' from outside"),
    (SubgraphOverride(inputs=("relu1_out", "conv3_out"), outputs=("relu2_out",)),
     r"do not enclose a subgraph: input\(s\) \['conv3_out'\] are not read"),
    (SubgraphOverride(inputs=("relu1_out",), outputs=("no_such",)),
     "subgraph output tensor 'no_such' is not in the graph"),
])
def test_boundaries_that_do_not_enclose_a_subgraph(tiny, tmp_path, sg, message):
    with pytest.raises(BadInputError, match=message):
        _q(tiny, tmp_path, subgraphs=(sg,))


def test_subgraph_with_its_own_method_uses_those_ranges(tiny, tmp_path):
    sg = SubgraphOverride(inputs=("relu1_out",), outputs=("relu2_out",), precision="int8",
                          method="percentile", percentile=99.0)
    report = _q(tiny, tmp_path, subgraphs=(sg,), histogram_bins=256)
    ranges = json.loads(report.ranges_path.read_text())
    assert "percentile(99)" in ranges["alt"]
    assert any("percentile(99) ranges" in d.action for d in report.decisions)
    record = json.loads(report.record_path.read_text())
    scale = {t["tensor"]: t["scale"] for t in record["tensors"] if t["kind"] == "activation"}
    lo, hi = ranges["alt"]["percentile(99)"]["conv2_out"]
    assert hi < ranges["observed"]["conv2_out"][1]
    # relu2 is removed: conv2_out takes relu2_out's range, clipped at the 99th percentile
    plo, phi = ranges["alt"]["percentile(99)"]["relu2_out"]
    assert scale["relu2_out"] == pytest.approx((phi - min(plo, 0.0)) / 255, rel=1e-5)


def _outlier_model(path: Path) -> Path:
    """x -> MatMul (one output column 200x larger) -> Relu -> MatMul+Add -> y."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.3, (8, 16)).astype(np.float32)
    w1[:, 3] *= 200
    w2 = rng.normal(0, 0.3, (16, 4)).astype(np.float32)
    w2[3, :] *= 0.005
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
             helper.make_node("Relu", ["h"], ["hr"], name="relu"),
             helper.make_node("MatMul", ["hr", "w2"], ["y0"], name="mm2"),
             helper.make_node("Add", ["y0", "b2"], ["y"], name="add")]
    graph = helper.make_graph(
        nodes, "outlier", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
         numpy_helper.from_array(np.zeros(4, np.float32), "b2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_int16_island_runs_and_is_closer_to_float_than_int8(tmp_path):
    path = _outlier_model(tmp_path / "outlier.onnx")
    x = np.random.default_rng(1).normal(0, 1, (64, 8)).astype(np.float32)
    data = CalibrationData.from_arrays({"x": x})
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    def error(report):
        sess = ort.InferenceSession(str(report.output), providers=["CPUExecutionProvider"])
        return float(np.abs(sess.run(None, {"x": x})[0] - ref).max())

    int8 = quantize(QuantizeSettings(model=path, output=tmp_path / "int8.onnx"), data=data)
    # "mm2" was fused with the Add by pre-processing: the original name still resolves
    island = quantize(QuantizeSettings(model=path, output=tmp_path / "island.onnx",
                                       int16=("mm1", "mm2")), data=data)
    assert island.node_precision == {"mm1": "int16", "relu": "int16",
                                     "mm2/MatMulAddFusion": "int16"}
    assert int8.node_precision["mm1"] == "int8"
    assert error(island) < 0.2 * error(int8)
    record = json.loads(island.record_path.read_text())
    types = {(t["tensor"], t["type"]) for t in record["tensors"]}
    assert ("x", "uint8") in types and ("x", "int16") in types       # converted at the border
    assert ("hr", "int16") in types
    assert any("opset 17 -> 21" in d["action"] for d in record["decisions"])
    assert all(t["domain"] == "ai.onnx" for t in record["tensors"])   # standard ONNX Q/DQ
    assert onnx.load(str(island.output)).opset_import[0].version == 21


def test_name_fused_away_maps_and_tensor_fused_away_is_explained(tmp_path):
    path = _outlier_model(tmp_path / "outlier.onnx")
    data = CalibrationData.from_arrays({"x": np.ones((4, 8), np.float32)})
    report = quantize(QuantizeSettings(model=path, output=tmp_path / "a.onnx",
                                       exclude=("mm2",)), data=data)
    assert report.node_precision["mm2/MatMulAddFusion"] == "float"
    with pytest.raises(BadInputError, match="'y0' was removed by pre-processing"):
        quantize(QuantizeSettings(model=path, output=tmp_path / "b.onnx", truncate=("y0",)),
                 data=data)


def test_pass_through_nodes_between_int16_nodes_join_the_island(tiny, tmp_path):
    report = _q(tiny, tmp_path, int16=("Conv",))
    p = report.node_precision
    assert {p[n] for n in ("conv1", "relu1", "conv2", "relu2", "conv3")} == {"int16"}
    assert p["relu3"] == "int8" and p["maxpool"] == "int8"      # not between int16 nodes
    assert any("joined their island: relu1, relu2" in d.action for d in report.decisions)
    # a subgraph's end is not extended: relu2 after conv2 stays int8
    sg = SubgraphOverride(inputs=("relu1_out",), outputs=("conv2_out",), precision="int16")
    report = _q(tiny, tmp_path, subgraphs=(sg,))
    assert report.node_precision["conv2"] == "int16"
    assert report.node_precision["relu2"] == "int8"
