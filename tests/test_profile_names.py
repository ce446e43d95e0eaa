"""``bench --profile`` and ``analyze`` meet on the model's own names (issue 14, section 2).

onnxruntime profiles its optimized graph, whose nodes it renames as it fuses and changes
layouts; ``host.profile_names`` maps each profiled node back to the model node and tensor that
``edgetune analyze`` reports. Checked on real onnxruntime traces of the 32x32 digits sample at
the agent's default optimization level (``all``: NCHWc and NHWC layouts, Conv+Relu fusion),
FP32 and INT8, and end to end through a local agent and ``edgetune analyze``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgetune.device.profile import node_times
from edgetune.host.profile_names import ModelNode, map_to_model
from edgetune.host.samples import SAMPLES_DIR
from tests.host_fixtures import RunningAgent, local_agent, run_cli  # noqa: F401

MODEL = SAMPLES_DIR / "digits32_cnn.onnx"
CALIB = SAMPLES_DIR / "digits32_calib.npz"
LAYOUT_OPS = {"Transpose", "ReorderInput", "ReorderOutput"}   # inserted by onnxruntime


@pytest.fixture(scope="module")
def int8_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgetune.host.cli import main
    out = tmp_path_factory.mktemp("int8") / "digits32.int8.onnx"
    assert main(["quantize", str(MODEL), "--calib", str(CALIB), "-o", str(out),
                 "--no-record", "--json"]) == 0
    return out


def _profiled(path: Path, level: Any) -> List[Any]:
    so = ort.SessionOptions()
    so.enable_profiling = True
    so.intra_op_num_threads = 1
    so.graph_optimization_level = level
    so.profile_file_prefix = str(path.with_suffix(""))
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((1, 1, 32, 32), dtype=np.float32)
    session.run(None, {session.get_inputs()[0].name: x})
    trace = Path(session.end_profiling())
    try:
        events = json.loads(trace.read_text())
    finally:
        trace.unlink()
    return list(node_times(events, 1))


def _model_tensors(path: Path) -> set:
    return {o for n in onnx.load(str(path)).graph.node for o in n.output}


@pytest.mark.parametrize("level", [ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                                   ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                   ort.GraphOptimizationLevel.ORT_ENABLE_BASIC])
@pytest.mark.parametrize("which", ["fp32", "int8"])
def test_every_model_node_of_the_optimized_graph_is_found(which: str, level: Any,
                                                          int8_model: Path, tmp_path: Path
                                                          ) -> None:
    src = MODEL if which == "fp32" else int8_model
    path = tmp_path / src.name
    path.write_bytes(src.read_bytes())
    nodes = _profiled(path, level)
    mapped = map_to_model((n.name for n in nodes), path)
    graph_nodes = {n.name: n for n in onnx.load(str(path)).graph.node}
    tensors = _model_tensors(path)
    for node in nodes:
        if node.op_type in LAYOUT_OPS:
            continue
        assert node.name in mapped, (node.name, node.op_type)
        hit = mapped[node.name]
        assert hit.node in graph_nodes and hit.tensor in tensors
    # every convolution's time comes back under the model's names: as the Conv itself or, where
    # onnxruntime fused a Relu into it, as the Relu whose output the fused node computes
    found = {n.node for n in mapped.values()}
    consumers = {i: n.name for n in graph_nodes.values() for i in n.input}
    convs = [n for n in graph_nodes.values() if n.op_type == "Conv"]
    assert len(convs) == 5
    for conv in convs:
        assert conv.name in found or consumers.get(conv.output[0]) in found, conv.name


def test_the_renaming_rules_on_names_onnxruntime_gives(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(MODEL.read_bytes())
    got = map_to_model(["conv1_token_1", "relu1_out_nchwc", "relu2_out_nchwc_token_7", "fc",
                        "pool2/SomeFusion", "Transpose_token_22", "ReorderOutput"], path)
    assert got["conv1_token_1"] == ModelNode("conv1", "conv1_out")
    assert got["relu1_out_nchwc"] == ModelNode("relu1", "relu1_out")   # the tensor's producer
    assert got["relu2_out_nchwc_token_7"] == ModelNode("relu2", "relu2_out")
    assert got["fc"] == ModelNode("fc", "logits")
    assert got["pool2/SomeFusion"] == ModelNode("pool2", "pool2_out")
    assert "Transpose_token_22" not in got and "ReorderOutput" not in got   # no guesses


def test_no_model_or_not_onnx_maps_nothing(tmp_path: Path) -> None:
    assert map_to_model(["conv1"], None) == {}
    opaque = tmp_path / "model.bin"
    opaque.write_bytes(b"\x00not an onnx model\xff" * 8)
    assert map_to_model(["conv1"], opaque) == {}


def test_bench_profile_and_analyze_share_names(capsys: Any, local_agent: RunningAgent,
                                                int8_model: Path) -> None:
    r = run_cli(capsys, "bench", str(int8_model), "--iterations", "20", "--warmup", "2",
                "--profile", *local_agent.conn(), "--json", "--no-record")
    assert r.code == 0, r.err
    nodes = r.json["results"][0]["profile"]["nodes"]
    timed = {n["tensor"]: n for n in nodes if n["tensor"]}
    a = run_cli(capsys, "analyze", str(MODEL), str(int8_model), "--calib", str(CALIB),
                "--calib-count", "8", "--json")
    assert a.code == 0, a.err
    layers = {layer["node"]: layer for layer in a.json["layers"]}      # per model node
    convs = {node for node, layer in layers.items() if layer["op_type"] == "Conv"}
    by_node = {n["model_node"]: n for n in nodes if n["model_node"]}
    assert len(convs) == 5 and convs <= set(by_node), (sorted(convs), sorted(by_node))
    ranked = {t["name"]: t for t in a.json["ranked"]}                 # per tensor
    for node in convs:          # each conv's time beside its output tensor's error
        assert by_node[node]["op_type"] == "QLinearConv"
        assert ranked[by_node[node]["tensor"]]["node"] == node
    inserted = [n for n in nodes if n["op_type"] in LAYOUT_OPS]
    assert all(n["model_node"] is None and n["tensor"] is None for n in inserted)
    text = run_cli(capsys, "bench", str(int8_model), "--iterations", "10", "--profile",
                   *local_agent.conn(), "--no-record")
    assert text.code == 0 and "model node" in text.out and "conv1" in text.out
