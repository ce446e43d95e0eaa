"""Model preparation: node naming, pre-processing retry, opset upgrades, bad models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgetune.host import builders
from edgetune.host.errors import BadInputError, NotFoundError
from edgetune.host.quant.calibdata import CalibrationData
from edgetune.host.quant.pipeline import quantize
from edgetune.host.quant.prepare import name_nodes, prepare_model
from edgetune.host.quant.settings import QuantizeSettings


def _settings(model: Path, tmp_path: Path, **kw) -> QuantizeSettings:
    return QuantizeSettings(model=model, output=tmp_path / "q.onnx", **kw)


def test_nodes_get_unique_stable_names():
    nodes = [helper.make_node("Relu", ["x"], ["a"]),
             helper.make_node("Relu", ["a"], ["b"], name="act"),
             helper.make_node("Relu", ["b"], ["c"], name="act"),
             helper.make_node("Relu", ["c"], ["d"], name="Relu_3")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [1])],
                              [helper.make_tensor_value_info("d", 1, [1])])
    model = helper.make_model(graph)
    decisions = name_nodes(model)
    names = [n.name for n in model.graph.node]
    assert names == ["Relu_0", "act", "act__1", "Relu_3"]
    assert len(decisions) == 2
    again = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["b"], name="act"),
         helper.make_node("Relu", ["b"], ["c"], name="act"),
         helper.make_node("Relu", ["c"], ["d"], name="Relu_3")], "g",
        [helper.make_tensor_value_info("x", 1, [1])], [helper.make_tensor_value_info("d", 1, [1])]))
    name_nodes(again)
    assert [n.name for n in again.graph.node] == names            # stable across runs


def test_unnamed_nodes_can_be_excluded_by_their_generated_name(tmp_path):
    model = builders.tiny_cnn()
    for node in model.graph.node:
        node.name = ""
    path = tmp_path / "unnamed.onnx"
    onnx.save(model, str(path))
    data = CalibrationData.from_arrays(
        {"input": np.random.default_rng(0).normal(size=(8, 3, 16, 16)).astype(np.float32)})
    report = quantize(_settings(path, tmp_path, exclude=("Conv_0",)), data=data)
    assert report.node_precision["Conv_0"] == "float"
    assert report.node_precision["Conv_2"] == "int8"
    assert any("named" in d.action for d in report.decisions)


def test_opset9_model_with_per_channel_is_upgraded_and_loads(tmp_path):
    path = builders.save(builders.tiny_cnn(opset=9), tmp_path / "old.onnx")
    data = CalibrationData.from_arrays(
        {"input": np.random.default_rng(0).normal(size=(8, 3, 16, 16)).astype(np.float32)})
    report = quantize(_settings(path, tmp_path), data=data)
    assert report.opset_before == 9 and report.opset == 13
    record = json.loads(report.record_path.read_text())
    actions = [d["action"] for d in record["decisions"]]
    assert "upgraded opset 9 -> 11" in actions and "upgraded opset 11 -> 13" in actions
    reasons = " ".join(d["reason"] for d in record["decisions"])
    assert "per-channel" in reasons
    assert any(isinstance(t["scale"], list) for t in record["tensors"] if t["kind"] == "weight")
    sess = ort.InferenceSession(str(report.output), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"input": np.zeros((1, 3, 16, 16), np.float32)})[0].shape == (1, 10)


def test_per_tensor_does_not_upgrade_beyond_what_it_needs(tmp_path):
    path = builders.save(builders.tiny_cnn(opset=13), tmp_path / "m.onnx")
    prepared = prepare_model(_settings(path, tmp_path, per_channel=False))
    with prepared:
        assert prepared.opset == 13
    prepared = prepare_model(_settings(path, tmp_path, act_type="int16"))
    with prepared:
        assert prepared.opset == 21
        assert any("opset 13 -> 21" in d.action and "16-bit" in d.reason
                   for d in prepared.decisions)
    assert not prepared.path.exists()                  # close() removed the temp folder


def test_symbolic_shape_failure_is_retried_and_recorded(tmp_path, monkeypatch):
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)   # onnxruntime dumps sym_shape_infer_temp.onnx here on failure
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Scaler", ["x"], ["s"], name="scale", domain="ai.onnx.ml",
                          offset=[0.0] * 4, scale=[2.0] * 4),
         helper.make_node("MatMul", ["s", "w"], ["y"], name="mm")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("ai.onnx.ml", 3)])
    model.ir_version = 8
    path = tmp_path / "ml.onnx"
    onnx.save(model, str(path))
    data = CalibrationData.from_arrays({"x": np.ones((4, 4), np.float32)})
    report = quantize(_settings(path, tmp_path), data=data)
    retry = [d for d in report.decisions if "without symbolic shape inference" in d.action]
    assert retry and "Incomplete symbolic shape inference" in retry[0].reason
    assert report.node_precision["mm"] == "int8"
    assert list(workdir.iterdir()) == []        # nothing left behind in the current directory
    # the domain a node uses stays declared; the optimizer's unused ones do not
    declared = {o.domain for o in onnx.load(str(tmp_path / "q.onnx")).opset_import}
    assert declared == {"", "ai.onnx.ml"}


def test_the_output_declares_only_the_opsets_its_nodes_use(tmp_path):
    """onnxruntime's optimizer (quant_pre_process) declares ai.onnx.ml 5, com.microsoft.nchwc,
    training domains ...; the floors' onnxruntime (1.12) refused to load a quantized model
    only for its ai.onnx.ml 5 import, which no node used."""
    path = builders.save(builders.build("tiny_cnn", seed=0, batch=1), tmp_path / "m.onnx")
    data = CalibrationData.from_arrays({"input": np.random.default_rng(0).random(
        (8, 3, 16, 16), dtype=np.float32)})
    report = quantize(_settings(path, tmp_path), data=data)
    model = onnx.load(str(tmp_path / "q.onnx"))
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    dropped = [d for d in report.decisions if d.action.startswith("dropped unused opset")]
    assert dropped and "ai.onnx.ml" in dropped[0].action
    ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"])


def test_missing_and_non_onnx_models(tmp_path):
    with pytest.raises(NotFoundError, match="does not exist"):
        prepare_model(_settings(tmp_path / "nope.onnx", tmp_path))
    text = tmp_path / "m.onnx"
    text.write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(BadInputError, match="MODEL is not an ONNX model"):
        prepare_model(_settings(text, tmp_path))
