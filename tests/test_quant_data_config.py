"""Config files: edgetune TOML, XQuant-style JSON, Pegasus hybrid lists; settings checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from edgetune.host.errors import BadInputError, NotFoundError, UsageError
from edgetune.host.quant.config import (TOML_KEYS, check_input_count, check_settings, load_config,
                               load_pegasus_layers, resolve_pegasus_layers)
from edgetune.host.quant.settings import CalibSource, Preprocess, QuantizeSettings, SubgraphOverride

DATA = Path(__file__).resolve().parent / "data"


# --- TOML ------------------------------------------------------------------------------------

def test_toml_every_kind_of_key(tmp_path):
    config = tmp_path / "conf" / "q.toml"
    config.parent.mkdir()
    config.write_text("""
model = "models/m.onnx"
output = "out/m.q.onnx"
method = "percentile"
percentile = 99.9
bins = 1024
quantized_bins = 127
per_channel = false
act = "int8"
weight = "int8"
symmetric_act = true
calib_count = 20
seed = 7
exclude = ["head/*", "Softmax"]
int16 = "conv3"
truncate = ["boxes"]
mean = [123.675, 116.28, 103.53]
std = [58.395, 57.12, 57.375]
color = "BGR"
input_size = "32x48"
analysis = true

[[calib]]
path = "calib/list.txt"
input = "data"

[[calib]]
path = "calib/other"
input = "scale"
mean = [0]
std = [1]
preprocess = "prep.py:load"

[[subgraph]]
inputs = ["a"]
outputs = ["b", "c"]
precision = "float"

[fallback]
max_drop = 0.01
eval = "test.npz"
strategy = "greedy"
""")
    layer = load_config(config)
    base = config.parent
    assert layer.format == "toml" and layer.analysis is True
    assert layer["model"] == base / "models/m.onnx" and layer["output"] == base / "out/m.q.onnx"
    assert layer["method"] == "percentile" and layer["percentile"] == 99.9
    assert layer["histogram_bins"] == 1024 and layer["quantized_bins"] == 127
    assert layer["per_channel"] is False and layer["act_type"] == "int8"
    assert layer["symmetric_act"] is True and layer["calib_count"] == 20 and layer["seed"] == 7
    assert layer["exclude"] == ("head/*", "Softmax") and layer["int16"] == ("conv3",)
    first, second = layer["calib"]
    assert first == CalibSource(path=base / "calib/list.txt", input_name="data",
                                preprocess=Preprocess(input_size=(32, 48), color="bgr",
                                                      mean=(123.675, 116.28, 103.53),
                                                      std=(58.395, 57.12, 57.375)))
    assert second.preprocess.mean == (0.0,) and second.preprocess.input_size == (32, 48)
    assert second.preprocess.function == f"{base / 'prep.py'}:load"
    assert layer["subgraphs"] == (SubgraphOverride(("a",), ("b", "c"), "float"),)
    assert layer.fallback == {"max_drop": 0.01, "eval": base / "test.npz", "strategy": "greedy"}
    assert layer.preprocess["color"] == "bgr"


def test_toml_unknown_key_names_it_and_lists_valid(tmp_path):
    config = tmp_path / "q.toml"
    config.write_text('methd = "minmax"\n')
    with pytest.raises(BadInputError) as exc:
        load_config(config)
    assert "'methd'" in exc.value.message and "method" in exc.value.hint
    assert all(key in exc.value.hint for key in TOML_KEYS)


def test_toml_wrong_types_and_bad_entries(tmp_path):
    config = tmp_path / "q.toml"
    for text, expected in (('calib_count = "ten"\n', "calib_count must be an integer"),
                           ("per_channel = 1\n", "per_channel must be true or false"),
                           ('[[calib]]\ninput = "x"\n', "needs a path"),
                           ('[[calib]]\npath = "x"\nsize = 3\n', "unknown key(s) ['size']"),
                           ('[[subgraph]]\ninputs = ["a"]\n', "needs 'outputs'"),
                           ("[fallback]\nmaxdrop = 1\n", "unknown key(s) ['maxdrop']"),
                           ("model = [\n", "not valid TOML")):
        config.write_text(text)
        with pytest.raises(BadInputError) as exc:
            load_config(config)
        assert expected in exc.value.message, text


def test_missing_and_unknown_format(tmp_path):
    with pytest.raises(NotFoundError):
        load_config(tmp_path / "none.toml")
    (tmp_path / "q.yaml").write_text("method: minmax\n")
    with pytest.raises(BadInputError, match="unknown format"):
        load_config(tmp_path / "q.yaml")


# --- XQuant JSON -----------------------------------------------------------------------------

def xquant_copy(tmp_path: Path) -> Path:
    path = tmp_path / "xq.json"
    shutil.copy(DATA / "xquant-style.json", path)
    return path


def edit(path: Path, change) -> Path:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return path


def test_xquant_example_as_shipped(tmp_path):
    layer = load_config(xquant_copy(tmp_path))
    assert layer.format == "xquant" and layer.analysis is True and layer.input_count == 1
    assert layer["model"] == tmp_path / "models/classifier.onnx"
    assert layer["output"] == tmp_path / "out" / "classifier.q.onnx"
    assert layer["calib_count"] == 100 and layer["method"] == "minmax"
    assert layer["percentile"] == pytest.approx(99.99)
    (source,) = layer["calib"]
    assert source.path == tmp_path / "calib/img_list.txt" and source.input_name == "data"
    assert source.file_type == "img" and source.shape == (1, 3, 224, 224)
    assert source.preprocess.color == "bgr" and source.preprocess.std == (57.0, 57.0, 57.0)
    assert source.preprocess.mean == (103.94, 116.78, 123.68)
    (sub,) = layer["subgraphs"]
    assert sub.inputs == ("data",) and sub.outputs == ("/stem/relu/Relu_output_0",)
    assert sub.precision == "int16" and sub.percentile == pytest.approx(99.9)
    assert sub.method is None
    notes = " ".join(layer["notes"])
    assert "skip_onnxsim" in notes and "finetune_level=1" in notes
    assert "'default' -> minmax" in notes


def test_xquant_defaults_for_output(tmp_path):
    path = edit(xquant_copy(tmp_path), lambda d: d["model_parameters"].update(
        output_prefix="", working_dir=""))
    layer = load_config(path)
    assert layer["output"] == tmp_path / "models" / "classifier.q.onnx"


@pytest.mark.parametrize("section,key", [("quantization_parameters", "foo"),
                                         ("model_parameters", "input_model"),
                                         ("calibration_parameters", "calib_dir")])
def test_xquant_unknown_field_is_named(tmp_path, section, key):
    path = edit(xquant_copy(tmp_path), lambda d: d[section].update({key: 1}))
    with pytest.raises(BadInputError) as exc:
        load_config(path)
    assert f"unsupported XQuant field '{key}' in {section}" in exc.value.message


def test_xquant_unknown_fields_in_entries_and_top(tmp_path):
    path = edit(xquant_copy(tmp_path), lambda d: d["calibration_parameters"]
                ["input_parametres"][0].update(layout="nchw"))
    with pytest.raises(BadInputError, match="'layout' in input_parametres"):
        load_config(path)
    path = edit(xquant_copy(tmp_path), lambda d: d.update(extra={}))
    with pytest.raises(BadInputError, match="unsupported XQuant field 'extra'"):
        load_config(path)


@pytest.mark.parametrize("change,expected", [
    (lambda d: d["quantization_parameters"].update(precision_level=1), "precision_level 1"),
    (lambda d: d["quantization_parameters"].update(finetune_level=3), "finetune_level 3"),
    (lambda d: d["calibration_parameters"].update(calibration_type="adaround"), "'adaround'"),
    (lambda d: d["calibration_parameters"].update(calibration_device="npu"), "'npu'"),
    (lambda d: d["quantization_parameters"].update(max_percentile=99.99), "(0, 1]"),
    (lambda d: d["calibration_parameters"]["input_parametres"][0].update(dtype="uint8"),
     "dtype 'uint8'"),
    (lambda d: d["calibration_parameters"]["input_parametres"][0].update(file_type="png"),
     "file_type 'png'"),
])
def test_xquant_values_we_cannot_honour(tmp_path, change, expected):
    path = edit(xquant_copy(tmp_path), change)
    with pytest.raises(BadInputError) as exc:
        load_config(path)
    assert expected in exc.value.message


def test_xquant_mappings(tmp_path):
    def change(d):
        d["calibration_parameters"].update(calibration_type="kl", calibration_device="cuda",
                                           calibration_batch_size=8)
        d["quantization_parameters"].update(precision_level=2)
        d["quantization_parameters"]["custom_setting"][0].update(calibration_type="mse",
                                                                 precision_level=0)
        d["calibration_parameters"]["input_parametres"][0].update(
            input_shape=[-1, 3, 32, 32], preprocess_file="prep.py:load")
    layer = load_config(edit(xquant_copy(tmp_path), change))
    assert layer["method"] == "entropy" and layer["act_type"] == "int16"
    assert layer["calib_batch"] == 8
    assert layer["subgraphs"][0].method == "mse" and layer["subgraphs"][0].precision == "int8"
    source = layer["calib"][0]
    assert source.shape == (1, 3, 32, 32)
    assert source.preprocess.function == f"{tmp_path / 'prep.py'}:load"
    assert any("CPU provider" in n for n in layer["notes"])


def test_xquant_input_count_check(tmp_path):
    layer = load_config(xquant_copy(tmp_path))
    check_input_count(layer, ["data"])
    with pytest.raises(BadInputError) as exc:
        check_input_count(layer, ["a", "b"])
    assert "Calibration input_parametres size should equal to model inputs size" in \
        exc.value.message and "has 1, the model has 2" in exc.value.message


# --- Pegasus ---------------------------------------------------------------------------------

def pegasus_model() -> onnx.ModelProto:
    """Nodes named like the shipped Pegasus example: Sigmoid_202 ... Reshape_232."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    w = helper.make_tensor("w", TensorProto.FLOAT, [8, 8], [0.1] * 64)
    c = helper.make_tensor("c", TensorProto.FLOAT, [1, 8], [0.5] * 8)
    shape = helper.make_tensor("shape", TensorProto.INT64, [3], [1, 4, 4])
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["mm"], name="MatMul_200"),
        helper.make_node("Sigmoid", ["mm"], ["sig"], name="Sigmoid_202"),
        helper.make_node("Mul", ["sig", "mm"], ["mul"], name="Mul_209"),
        helper.make_node("Add", ["mul", "c"], ["add"], name="Add_213"),
        helper.make_node("Concat", ["add", "mm"], ["cat"], name="Concat_230", axis=1),
        helper.make_node("Reshape", ["cat", "shape"], ["y"], name="Reshape_232"),
    ]
    graph = helper.make_graph(nodes, "pegasus", [x], [y], [w, c, shape])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def test_pegasus_example_parsed_and_resolved():
    names = load_pegasus_layers(DATA / "pegasus-hybrid.quantize")
    assert names == ("Sigmoid_Sigmoid_202_21", "Mul_Mul_209_47", "Add_Add_213_17",
                     "Concat_Concat_230_5", "Reshape_Reshape_232_2")
    assert resolve_pegasus_layers(names, pegasus_model()) == (
        "Sigmoid_202", "Mul_209", "Add_213", "Concat_230", "Reshape_232")


def test_pegasus_config_layer_and_sanitized_names(tmp_path):
    layer = load_config(DATA / "pegasus-hybrid.quantize")
    assert layer.format == "pegasus" and len(layer.pegasus_layers) == 5
    model = pegasus_model()
    model.graph.node[1].name = "/head/Sigmoid.0"
    assert resolve_pegasus_layers(["Sigmoid__head_Sigmoid_0_3"], model) == ("/head/Sigmoid.0",)


def test_pegasus_unmatched_and_other_types(tmp_path):
    with pytest.raises(BadInputError) as exc:
        resolve_pegasus_layers(["Sigmoid_Sigmoid_999_1", "Mul_Mul_209_47", "Conv_Sigmoid_202_2"],
                               pegasus_model())
    assert "Sigmoid_Sigmoid_999_1" in exc.value.message and "Conv_Sigmoid_202_2" in \
        exc.value.message and "Mul_Mul_209_47" not in exc.value.message
    listing = tmp_path / "h.quantize"
    listing.write_text("quantize_parameters:\n  x: 1\ncustomized_quantize_layers:\n"
                       "  Add_Add_213_17: dynamic_fixed_point-i16\n"
                       "  Mul_Mul_209_47: asymmetric_affine-u8\n")
    with pytest.raises(BadInputError) as exc:
        load_pegasus_layers(listing)
    assert "Mul_Mul_209_47: asymmetric_affine-u8 (line 5)" in exc.value.message
    listing.write_text("quantize_parameters:\n  x: 1\ncustomized_quantize_layers:\n"
                       "  Add_Add_213_17: dynamic_fixed_point-i16\n")
    layer = load_config(listing)
    assert layer.pegasus_layers == ("Add_Add_213_17",)
    assert "skipped section(s) quantize_parameters" in layer["notes"][0]
    listing.write_text("quantize_parameters:\n  x: 1\n")
    with pytest.raises(BadInputError, match="no customized_quantize_layers"):
        load_pegasus_layers(listing)


# --- settings checks -------------------------------------------------------------------------

def test_check_settings(tmp_path):
    model = tmp_path / "m.onnx"
    good = QuantizeSettings(model=model, output=tmp_path / "q.onnx")
    check_settings(good)
    bad = {
        "method": ({"method": "kl"}, "unknown method 'kl'"),
        "percentile": ({"percentile": 0.0}, "out of (0, 100]"),
        "same": ({"output": tmp_path / "." / "m.onnx"}, "is the input model"),
        "act": ({"act_type": "fp8"}, "unknown activation type"),
        "bins": ({"histogram_bins": 100, "quantized_bins": 255}, "not usable"),
        "entropy": ({"entropy_compat": "tensorrt"}, "unknown entropy mode 'tensorrt'"),
        "color": ({"calib": (CalibSource(tmp_path, preprocess=Preprocess(color="yuv")),)},
                  "unknown color order"),
        "meanstd": ({"calib": (CalibSource(tmp_path, preprocess=Preprocess(
            mean=(1, 2), std=(1, 2, 3))),)}, "--mean has 2 values but --std has 3"),
        "subgraph": ({"subgraphs": (SubgraphOverride(("a",), ("b",), "int4"),)},
                     "unknown subgraph precision"),
    }
    for name, (change, expected) in bad.items():
        with pytest.raises(UsageError) as exc:
            fields = {"model": model, "output": tmp_path / "q.onnx", **change}
            check_settings(QuantizeSettings(**fields))
        assert expected in exc.value.message, name
