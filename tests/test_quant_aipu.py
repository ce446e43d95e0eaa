"""Zhouyi AIPU builder .cfg files (host/quant/aipu.py): every mapped key, the keys that do not
apply to an ONNX QDQ output, unknown keys, missing files, and the guide's config end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgetune.host import builders
from edgetune.host.cli import build_parser, main
from edgetune.host.cli.quantize_flags import build_settings
from edgetune.host.errors import BadInputError, ExitStatus, NotFoundError
from edgetune.host.quant.config import load_config

# The R329 guide's resnet_onnx_run.cfg, with its paths pointing at files the test writes.
GUIDE_CFG = """\
[Common]
mode = build

[Parser]
model_type = onnx
model_name = small_net
detection_postprocess =
model_domain = image_classification
input_model = ./model/small_net.onnx
input = input
input_shape = [1, 3, 16, 16]
output = logits
output_dir = ./out

[AutoQuantizationTool]
model_name = small_net
quantize_method = SYMMETRIC
ops_per_channel = DepthwiseConv
calibration_data = ./dataset/dataset.npy
calibration_label = ./dataset/label.npy
preprocess_mode = normalize
quant_precision = int8
reverse_rgb = False
label_id_offset = 0

[GBuilder]
inputs = ./model/input.bin
simulator = aipu_simulator_z1
outputs = output_small_net.bin
profile = True
target = Z1_0701
"""


def small_net() -> onnx.ModelProto:
    """Conv -> depthwise Conv -> Conv -> pool -> Gemm: one of each op kind ops_per_channel names."""
    g = builders.GraphBuilder(seed=3)
    x = g.relu(g.conv("input", "conv1", 3, 8, 3), "relu1")
    x = g.relu(g.conv(x, "dw", 8, 8, 3, group=8), "relu2")
    x = g.relu(g.conv(x, "conv2", 8, 8, 1), "relu3")
    x = g.global_avg_pool_flat(x, "pool")
    g.gemm(x, "fc", 8, 4, output="logits")
    return g.model("small_net", [builders.tensor_input("input", ["batch", 3, 16, 16])],
                   [builders.tensor_input("logits", ["batch", 4])])


@pytest.fixture()
def guide(tmp_path: Path) -> Path:
    (tmp_path / "model").mkdir()
    (tmp_path / "dataset").mkdir()
    builders.save(small_net(), tmp_path / "model" / "small_net.onnx")
    rng = np.random.default_rng(0)
    np.save(tmp_path / "dataset" / "dataset.npy", rng.random((12, 3, 16, 16), np.float32))
    np.save(tmp_path / "dataset" / "label.npy", rng.integers(0, 4, 12))
    cfg = tmp_path / "resnet_onnx_run.cfg"
    cfg.write_text(GUIDE_CFG)
    return cfg


def settings_of(*argv: str):
    return build_settings(build_parser().parse_args(["quantize", *argv]))


def dq_scales(model_path: Path) -> dict:
    """weight initializer name (before quantization) -> number of scales of its DequantizeLinear."""
    model = onnx.load(str(model_path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits \
                and inits[node.input[0]].ndim > 1:
            out[node.input[0]] = inits[node.input[1]].size
    return out


def test_guide_config_end_to_end(guide: Path, capsys, caplog) -> None:
    code = main(["quantize", "--config", str(guide), "--json", "--no-record"])
    captured = capsys.readouterr()
    assert code == ExitStatus.OK, captured.err
    doc = json.loads(captured.out)
    out = guide.parent / "out" / "small_net.q.onnx"                  # output_dir
    assert Path(doc["output"]) == out and out.is_file()
    warned = [r.getMessage() for r in caplog.records if "not applicable" in r.getMessage()]
    assert len(warned) == 1 and "[GBuilder] simulator" in warned[0]     # one line, named
    record = json.loads(Path(doc["record"]).read_text())
    notes = "\n".join(record["settings"]["notes"])
    assert ("not applicable to an ONNX QDQ output, ignored: [Common] mode, [GBuilder] inputs, "
            "[GBuilder] simulator, [GBuilder] outputs, [GBuilder] profile, [GBuilder] target"
            in notes)
    assert "calibration_label label.npy" in notes
    assert record["settings"]["act_type"] == "int8" and record["settings"]["symmetric_act"]
    scales = dq_scales(out)
    # ops_per_channel = DepthwiseConv: 8 scales for the depthwise weight, one elsewhere.
    assert scales and max(scales.values()) == 8
    assert sorted(scales.values()).count(8) == 1, scales


def test_parser_keys(guide: Path) -> None:
    text = GUIDE_CFG.replace("input = input\n", "input = input\ninput_data_format = NHWC\n")
    text = text.replace("output = logits", "output = relu2_out, relu3_out")
    guide.write_text(text)
    layer = load_config(guide)
    assert layer["model"] == guide.parent / "model" / "small_net.onnx"
    assert layer["truncate"] == ("relu2_out", "relu3_out")
    (source,) = layer["calib"]
    assert source.input_name == "input" and source.shape == (1, 3, 16, 16)
    assert source.file_type == "npy" and source.preprocess.layout == "nhwc"
    assert layer.format == "aipu"


def test_several_inputs_and_shapes(guide: Path) -> None:
    np.save(guide.parent / "dataset" / "b.npy", np.zeros((12, 10), np.float32))
    text = GUIDE_CFG.replace("input = input", "input = a, b").replace(
        "input_shape = [1, 3, 16, 16]", "input_shape = [1, 3, 16, 16], [1, 10]").replace(
        "calibration_data = ./dataset/dataset.npy",
        "calibration_data = ./dataset/dataset.npy, ./dataset/b.npy")
    guide.write_text(text)
    a, b = load_config(guide)["calib"]
    assert (a.input_name, a.shape, b.input_name, b.shape) == ("a", (1, 3, 16, 16), "b", (1, 10))
    guide.write_text(text.replace("[1, 3, 16, 16], [1, 10]", "[1, 3, 16, 16]"))
    with pytest.raises(BadInputError, match="input_shape gives 1 shapes"):
        load_config(guide)


@pytest.mark.parametrize("method,precision,act,symmetric", [
    ("SYMMETRIC", "int8", "int8", True), ("ASYMMETRIC", "int8", "uint8", False),
    ("SYMMETRIC", "int16", "int16", True)])
def test_quantize_method_and_precision(guide: Path, method: str, precision: str, act: str,
                                       symmetric: bool) -> None:
    guide.write_text(GUIDE_CFG.replace("quantize_method = SYMMETRIC", f"quantize_method = {method}")
                     .replace("quant_precision = int8", f"quant_precision = {precision}"))
    settings, _, _ = settings_of("--config", str(guide))
    assert (settings.act_type, settings.symmetric_act) == (act, symmetric)
    guide.write_text(GUIDE_CFG.replace("quant_precision = int8", "quant_precision = int4"))
    with pytest.raises(BadInputError, match="quant_precision 'int4'"):
        load_config(guide)


def test_ops_per_channel_kinds(guide: Path) -> None:
    guide.write_text(GUIDE_CFG.replace("ops_per_channel = DepthwiseConv",
                                       "ops_per_channel = DepthwiseConv, FullyConnected"))
    settings, _, _ = settings_of("--config", str(guide))
    assert settings.per_channel is False
    assert settings.per_channel_ops == ("Conv/depthwise", "Gemm")
    from edgetune.host.quant.pipeline import per_channel_weights
    axes = per_channel_weights(small_net(), settings.per_channel_ops)
    assert axes == {"dw.weight": 0, "fc.weight": 0}
    assert per_channel_weights(small_net(), ("Conv",)).keys() == {"conv1.weight", "dw.weight",
                                                                  "conv2.weight"}
    guide.write_text(GUIDE_CFG.replace("ops_per_channel = DepthwiseConv",
                                       "ops_per_channel = Pooling"))
    with pytest.raises(BadInputError, match="ops_per_channel 'Pooling'"):
        load_config(guide)


def test_preprocess_mode_and_reverse_rgb(guide: Path) -> None:
    guide.write_text(GUIDE_CFG.replace("reverse_rgb = False", "reverse_rgb = True"))
    layer = load_config(guide)
    assert layer["calib"][0].preprocess.color == "bgr"
    assert any("preprocess_mode normalize, reverse_rgb True" in n for n in layer["notes"])
    guide.write_text(GUIDE_CFG.replace("preprocess_mode = normalize", "preprocess_mode = zscore"))
    with pytest.raises(BadInputError, match="preprocess_mode 'zscore'"):
        load_config(guide)
    guide.write_text(GUIDE_CFG.replace("reverse_rgb = False", "reverse_rgb = maybe"))
    with pytest.raises(BadInputError, match="reverse_rgb"):
        load_config(guide)


def test_calibration_label_feeds_max_drop(guide: Path) -> None:
    """--max-drop without --eval: the calibration arrays and their labels are the check."""
    out = guide.parent / "q.onnx"
    _, fallback, _ = settings_of("--config", str(guide), "-o", str(out), "--max-drop", "0.05")
    assert fallback is not None and fallback.eval_dataset == guide.parent / "q.aipu_eval.npz"
    data = np.load(fallback.eval_dataset)
    assert sorted(data.files) == ["input", "labels"]
    np.testing.assert_array_equal(data["labels"], np.load(guide.parent / "dataset" / "label.npy"))
    np.save(guide.parent / "dataset" / "label.npy", np.zeros(5, np.int64))
    with pytest.raises(BadInputError, match="5 labels for 12 samples"):
        settings_of("--config", str(guide), "-o", str(out), "--max-drop", "0.05")


def test_unknown_keys_named_with_nearest(guide: Path) -> None:
    guide.write_text(GUIDE_CFG.replace("quantize_method", "quantise_method")
                     .replace("ops_per_channel", "op_per_channels") + "[Gbuilder]\nfoo = 1\n")
    with pytest.raises(BadInputError) as info:
        load_config(guide)
    message = str(info.value)
    assert "[AutoQuantizationTool] quantise_method (did you mean quantize_method?)" in message
    assert "[AutoQuantizationTool] op_per_channels (did you mean ops_per_channel?)" in message
    assert "section [Gbuilder] (did you mean [GBuilder]?)" in message


def test_missing_model_or_npy(guide: Path) -> None:
    (guide.parent / "dataset" / "dataset.npy").unlink()
    with pytest.raises(NotFoundError, match="calibration_data dataset.npy does not exist"):
        load_config(guide)
    (guide.parent / "model" / "small_net.onnx").unlink()
    with pytest.raises(NotFoundError, match="input_model ./model/small_net.onnx does not exist"):
        load_config(guide)
    guide.write_text(GUIDE_CFG.replace("input_model = ./model/small_net.onnx\n", ""))
    with pytest.raises(BadInputError, match="input_model is missing"):
        load_config(guide)


def test_missing_label_npy_and_cli_exit(guide: Path, capsys) -> None:
    (guide.parent / "dataset" / "label.npy").unlink()
    code = main(["quantize", "--config", str(guide), "--no-record"])
    err = capsys.readouterr().err
    assert code == ExitStatus.NOT_FOUND and "calibration_label label.npy does not exist" in err


def test_model_type_and_input_data_format_values(guide: Path) -> None:
    guide.write_text(GUIDE_CFG.replace("model_type = onnx", "model_type = tflite"))
    with pytest.raises(BadInputError, match="model_type = tflite: edgetune quantizes ONNX"):
        load_config(guide)
    guide.write_text(GUIDE_CFG.replace("input = input\n",
                                       "input = input\ninput_data_format = CHW\n"))
    with pytest.raises(BadInputError, match="input_data_format 'chw'"):
        load_config(guide)
    guide.write_text(GUIDE_CFG.replace("input_shape = [1, 3, 16, 16]", "input_shape = [1, x, 16]"))
    with pytest.raises(BadInputError, match="is not integers"):
        load_config(guide)
