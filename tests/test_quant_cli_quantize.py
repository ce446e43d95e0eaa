"""``edgetune quantize`` end to end, in-process through ``edgetune.host.cli.main``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import List

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from edgetune.host import builders
from edgetune.host.cli import build_parser, main
from edgetune.host.cli.quantize_flags import build_settings
from edgetune.host.errors import ExitStatus
from tests.test_quant_data_config import pegasus_model

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "host" / "samples"
DATA = Path(__file__).resolve().parent / "data"


def run_json(capsys, args: List[str]) -> dict:
    code = main(["quantize", *args, "--json"])
    out = capsys.readouterr().out
    document = json.loads(out)
    assert code == ExitStatus.OK, document
    return document


def fails(capsys, args: List[str], status: ExitStatus) -> str:
    code = main(["quantize", *args])
    err = capsys.readouterr().err
    assert code == status, err
    return err


def runs(path: Path, feeds: dict) -> list:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def write_images(folder: Path, count: int, size=(16, 16), seed: int = 0) -> List[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"img{i:02d}.png"
        Image.fromarray(rng.integers(0, 255, size + (3,), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return builders.save(builders.tiny_cnn(), tmp_path / "tiny.onnx")


# --- the digits sample -----------------------------------------------------------------------

def test_digits_quantize_then_requantize_from_ranges(tmp_path, capsys):
    out = tmp_path / "digits.q.onnx"
    doc = run_json(capsys, [str(SAMPLES / "digits_cnn.onnx"), "-o", str(out),
                            "--calib", str(SAMPLES / "digits_calib.npz"), "--calib-count", "64"])
    assert doc["output"] == str(out) and doc["nodes"]["int8"] > 0
    assert doc["size_bytes"]["ratio"] <= 0.35
    assert Path(doc["record"]).is_file() and Path(doc["ranges"]).is_file()
    record = json.loads(Path(doc["record"]).read_text())
    assert record["settings"]["calib_count"] == 64
    test = np.load(SAMPLES / "digits_test.npz")
    logits = runs(out, {"input": test["input"][:50]})[0]
    assert (logits.argmax(1) == test["labels"][:50]).mean() >= 0.9

    again = tmp_path / "digits.pt.q.onnx"
    doc = run_json(capsys, [str(SAMPLES / "digits_cnn.onnx"), "-o", str(again),
                            "--ranges", doc["ranges"], "--per-tensor"])
    assert doc["per_channel"] is False and doc["method"].startswith("ranges:")
    assert runs(again, {"input": test["input"][:2]})[0].shape == (2, 10)


def test_images_with_list_file_and_preprocessing_flags(tmp_path, tiny, capsys):
    paths = write_images(tmp_path / "imgs", 6)
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(p.relative_to(tmp_path).as_posix() for p in paths))
    out = tmp_path / "q.onnx"
    doc = run_json(capsys, [str(tiny), "-o", str(out), "--calib", str(listing),
                            "--mean", "123.675,116.28,103.53", "--std", "58.395,57.12,57.375",
                            "--color", "bgr", "--method", "percentile", "--percentile", "99.9"])
    record = json.loads(Path(doc["record"]).read_text())
    pre = record["settings"]["calib"][0]["preprocess"]
    assert pre["color"] == "bgr" and pre["mean"] == [123.675, 116.28, 103.53]
    assert record["settings"]["method"] == "percentile"
    assert runs(out, {"input": np.zeros((1, 3, 16, 16), np.float32)})[0].shape == (1, 10)


def test_human_summary_table(tmp_path, capsys):
    out = tmp_path / "d.q.onnx"
    code = main(["quantize", str(SAMPLES / "digits_cnn.onnx"), "-o", str(out),
                 "--calib", str(SAMPLES / "digits_calib.npz"), "--calib-count", "16"])
    captured = capsys.readouterr()
    assert code == 0
    assert out.is_file()
    assert "int8" in captured.out and "minmax" in captured.out and "record" in captured.out
    assert "calibrate" in captured.err          # plain progress lines when not a terminal


def test_two_inputs_by_name(tmp_path, capsys):
    model = builders.save(builders.two_input_model(), tmp_path / "two.onnx")
    rng = np.random.default_rng(0)
    np.save(tmp_path / "a.npy", rng.random((8, 4), np.float32))
    np.save(tmp_path / "b.npy", rng.random((8, 4), np.float32))
    doc = run_json(capsys, [str(model), "-o", str(tmp_path / "q.onnx"),
                            "--calib", f"b={tmp_path / 'b.npy'}",
                            "--calib", f"a={tmp_path / 'a.npy'}"])
    assert doc["nodes"]["int8"] > 0


# --- config files ----------------------------------------------------------------------------

def classifier_model() -> onnx.ModelProto:
    """A small fully convolutional classifier whose input and tensor names are the ones the
    shipped XQuant example uses (``data``, ``/stem/relu/Relu_output_0``); any H x W."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)

    def weight(name, shape):
        fan_in = int(np.prod(shape[1:]))
        return numpy_helper.from_array(
            (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32), name)
    inits = [weight("stem.w", (8, 3, 3, 3)), numpy_helper.from_array(np.zeros(8, np.float32),
                                                                     "stem.b"),
             weight("body.w", (16, 8, 3, 3)), weight("fc.w", (10, 16)),
             numpy_helper.from_array(np.zeros(10, np.float32), "fc.b")]
    nodes = [
        helper.make_node("Conv", ["data", "stem.w", "stem.b"], ["/stem/conv/Conv_output_0"],
                         name="/stem/conv/Conv", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["/stem/conv/Conv_output_0"], ["/stem/relu/Relu_output_0"],
                         name="/stem/relu/Relu"),
        helper.make_node("Conv", ["/stem/relu/Relu_output_0", "body.w"], ["body"],
                         name="/body/Conv", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["body"], ["body_relu"], name="/body/Relu"),
        helper.make_node("GlobalAveragePool", ["body_relu"], ["pool"], name="/pool"),
        helper.make_node("Flatten", ["pool"], ["flat"], name="/flatten"),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="/fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "classifier",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def xquant_setup(tmp_path: Path) -> Path:
    """The shipped XQuant example, unchanged, beside the files it names."""
    (tmp_path / "models").mkdir()
    onnx.save(classifier_model(), tmp_path / "models" / "classifier.onnx")
    paths = write_images(tmp_path / "calib" / "images", 3, size=(240, 256))
    (tmp_path / "calib" / "img_list.txt").write_text(
        "\n".join(f"images/{p.name}" for p in paths) + "\n")
    config = tmp_path / "xq.json"
    shutil.copy(DATA / "xquant-style.json", config)
    return config


def test_xquant_example_runs_as_shipped(tmp_path, capsys, monkeypatch):
    config = xquant_setup(tmp_path)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    doc = run_json(capsys, ["--config", str(config)])
    out = tmp_path / "out" / "classifier.q.onnx"
    assert doc["output"] == str(out) and out.is_file()
    assert doc["nodes"]["int16"] >= 1                       # the custom_setting's subgraph
    result = runs(out, {"data": np.random.default_rng(0).random((1, 3, 224, 224), np.float32)})
    assert result[0].shape == (1, 10)
    record = json.loads(Path(doc["record"]).read_text())
    assert record["settings"]["source"] == "xquant:xq.json"
    assert any("finetune_level" in n for n in record["settings"]["notes"])
    assert Path(doc["analysis"]["markdown"]).is_file()       # analysis_enable was honoured
    assert "SQNR" in Path(doc["analysis"]["markdown"]).read_text()


def test_xquant_input_count_mismatch(tmp_path, capsys):
    config = xquant_setup(tmp_path)
    data = json.loads(config.read_text())
    entries = data["calibration_parameters"]["input_parametres"]
    entries.append(dict(entries[0], input_name="second"))
    config.write_text(json.dumps(data))
    err = fails(capsys, ["--config", str(config)], ExitStatus.BAD_INPUT)
    assert "Calibration input_parametres size should equal to model inputs size" in err
    assert not (tmp_path / "out" / "classifier.q.onnx").exists()


def test_xquant_unknown_field(tmp_path, capsys):
    config = xquant_setup(tmp_path)
    data = json.loads(config.read_text())
    data["quantization_parameters"]["foo"] = 1
    config.write_text(json.dumps(data))
    err = fails(capsys, ["--config", str(config)], ExitStatus.BAD_INPUT)
    assert "unsupported XQuant field 'foo' in quantization_parameters" in err


def test_xquant_empty_list(tmp_path, capsys):
    config = xquant_setup(tmp_path)
    (tmp_path / "calib" / "img_list.txt").write_text("\n")
    err = fails(capsys, ["--config", str(config)], ExitStatus.BAD_INPUT)
    assert "Calibration input data finds 0 items" in err


def test_pegasus_list_makes_int16_islands(tmp_path, capsys):
    model = tmp_path / "peg.onnx"
    onnx.save(pegasus_model(), model)
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((8, 8), np.float32))
    doc = run_json(capsys, [str(model), "-o", str(tmp_path / "q.onnx"),
                            "--calib", str(tmp_path / "x.npy"),
                            "--int16-list", str(DATA / "pegasus-hybrid.quantize")])
    assert doc["nodes"]["int16"] >= 1
    assert any("Sigmoid_202" in n for n in doc["notes"])
    record = json.loads(Path(doc["record"]).read_text())
    assert "Sigmoid_202" in record["settings"]["int16"]


def test_subgraph_flag_and_pegasus_as_config(tmp_path, tiny, capsys):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((4, 3, 16, 16), np.float32))
    doc = run_json(capsys, [str(tiny), "-o", str(tmp_path / "q.onnx"),
                            "--calib", str(tmp_path / "x.npy"),
                            "--subgraph", "input", "relu1_out", "int16"])
    assert doc["nodes"]["int16"] >= 2
    model = tmp_path / "peg.onnx"
    onnx.save(pegasus_model(), model)
    np.save(tmp_path / "p.npy", np.random.default_rng(0).random((4, 8), np.float32))
    doc = run_json(capsys, [str(model), "-o", str(tmp_path / "p.q.onnx"),
                            "--calib", str(tmp_path / "p.npy"),
                            "--config", str(DATA / "pegasus-hybrid.quantize")])
    assert doc["nodes"]["int16"] >= 1


def test_subgraph_boundaries_that_enclose_nothing(tmp_path, tiny, capsys):
    np.save(tmp_path / "x.npy", np.zeros((2, 3, 16, 16), np.float32))
    out = tmp_path / "q.onnx"
    code = main(["quantize", str(tiny), "-o", str(out), "--calib", str(tmp_path / "x.npy"),
                 "--subgraph", "relu3_out", "conv1_out"])
    err = capsys.readouterr().err
    assert code in (ExitStatus.BAD_INPUT, ExitStatus.USAGE) and "relu3_out" in err
    assert not out.exists()


def test_flags_win_over_toml(tmp_path, tiny, capsys):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((10, 3, 16, 16), np.float32))
    config = tmp_path / "q.toml"
    config.write_text(f'model = "tiny.onnx"\noutput = "from_config.onnx"\nmethod = "percentile"\n'
                      f'calib_count = 4\nact = "int8"\n[[calib]]\npath = "x.npy"\n')
    args = build_parser().parse_args(["quantize", "--config", str(config), "--method", "minmax",
                                      "-o", str(tmp_path / "flag.onnx")])
    settings, fallback, layer = build_settings(args)
    assert settings.method == "minmax" and settings.act_type == "int8"
    assert settings.calib_count == 4 and settings.output == tmp_path / "flag.onnx"
    assert settings.model == tmp_path / "tiny.onnx" and fallback is None
    doc = run_json(capsys, ["--config", str(config), "--act", "uint8"])
    assert doc["activations"] == "uint8" and doc["output"] == str(tmp_path / "from_config.onnx")
    record = json.loads(Path(doc["record"]).read_text())
    assert record["settings"]["method"] == "percentile" and record["settings"]["calib_count"] == 4


def test_entropy_compat_from_flags_and_toml(tmp_path, tiny, capsys):
    args = build_parser().parse_args(["quantize", str(tiny), "--calib", "x.npy",
                                      "--method", "entropy", "--entropy-compat", "ort"])
    assert build_settings(args)[0].entropy_compat == "ort"
    args = build_parser().parse_args(["quantize", str(tiny), "--calib", "x.npy"])
    settings = build_settings(args)[0]
    assert settings.entropy_compat == "edgetune" and settings.quantized_bins is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["quantize", str(tiny), "--entropy-compat", "tensorrt"])
    config = tmp_path / "q.toml"
    config.write_text('model = "tiny.onnx"\nmethod = "entropy"\nentropy_compat = "trt"\n'
                      '[[calib]]\npath = "x.npy"\n')
    err = fails(capsys, ["--config", str(config), "-o", str(tmp_path / "q.onnx")],
                ExitStatus.USAGE)
    assert "unknown entropy mode 'trt'" in err


def test_fallback_settings_from_flags(tmp_path, tiny):
    args = build_parser().parse_args(["quantize", str(tiny), "--calib", "x.npy",
                                      "--max-drop", "0.02", "--eval", "t.npz",
                                      "--strategy", "greedy", "--metric", "top1"])
    settings, fallback, _ = build_settings(args)
    assert fallback is not None and fallback.max_drop == 0.02 and fallback.strategy == "greedy"
    assert fallback.eval_dataset == Path("t.npz") and fallback.metric == "top1"
    args = build_parser().parse_args(["quantize", str(tiny), "--calib", "x", "--max-drop", "1"])
    with pytest.raises(Exception, match="evaluation set"):
        build_settings(args)


# --- bad input -------------------------------------------------------------------------------

def test_output_equal_to_input_is_refused(tmp_path, tiny, capsys):
    before = tiny.read_bytes()
    err = fails(capsys, [str(tiny), "-o", str(tmp_path / "." / "tiny.onnx"), "--calib", "x"],
                ExitStatus.USAGE)
    assert "is the input model" in err and tiny.read_bytes() == before


def test_unknown_method_is_refused(tmp_path, tiny, capsys):
    err = fails(capsys, [str(tiny), "-o", str(tmp_path / "q.onnx"), "--calib", "x",
                         "--method", "kl"], ExitStatus.USAGE)
    assert "unknown method 'kl'" in err and "minmax" in err


def test_missing_calibration_data(tmp_path, tiny, capsys):
    err = fails(capsys, [str(tiny), "-o", str(tmp_path / "q.onnx")], ExitStatus.USAGE)
    assert "--calib" in err


def test_empty_folder(tmp_path, tiny, capsys):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "q.onnx"
    err = fails(capsys, [str(tiny), "-o", str(out), "--calib", str(tmp_path / "empty")],
                ExitStatus.BAD_INPUT)
    assert f"found 0 items in {tmp_path / 'empty'}" in err and not out.exists()


def test_not_an_onnx_file(tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_text("hello")
    np.save(tmp_path / "x.npy", np.zeros((2, 3), np.float32))
    out = tmp_path / "q.onnx"
    err = fails(capsys, [str(bad), "-o", str(out), "--calib", str(tmp_path / "x.npy")],
                ExitStatus.BAD_INPUT)
    assert "not an ONNX model" in err and not out.exists()


def test_images_whose_channels_do_not_fit(tmp_path, capsys):
    model = tmp_path / "m4.onnx"
    from onnx import TensorProto, helper
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4, 8, 8])
    w = helper.make_tensor("w", TensorProto.FLOAT, [2, 4, 1, 1], [0.5] * 8)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("Conv", ["input", "w"], ["y"], name="conv")],
                              "g", [x], [y], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                ir_version=10), model)
    write_images(tmp_path / "imgs", 2, size=(8, 8))
    out = tmp_path / "q.onnx"
    err = fails(capsys, [str(model), "-o", str(out), "--calib", str(tmp_path / "imgs")],
                ExitStatus.BAD_INPUT)
    assert "expects 4 channels" in err and "img00.png" in err and not out.exists()


def test_preprocess_function_that_raises(tmp_path, tiny, capsys):
    write_images(tmp_path / "imgs", 2)
    (tmp_path / "prep.py").write_text("def load(paths, info):\n    raise ValueError('boom')\n")
    out = tmp_path / "q.onnx"
    err = fails(capsys, [str(tiny), "-o", str(out), "--calib", str(tmp_path / "imgs"),
                         "--preprocess", f"{tmp_path / 'prep.py'}:load"], ExitStatus.BAD_INPUT)
    assert "prep.py:load raised ValueError: boom" in err and not out.exists()


def test_unknown_calib_input_name(tmp_path, tiny, capsys):
    np.save(tmp_path / "x.npy", np.zeros((2, 3, 16, 16), np.float32))
    err = fails(capsys, [str(tiny), "-o", str(tmp_path / "q.onnx"),
                         "--calib", f"data={tmp_path / 'x.npy'}"], ExitStatus.BAD_INPUT)
    assert "no such input" in err and "input" in err


def test_existing_output_needs_force(tmp_path, tiny, capsys):
    out = tmp_path / "q.onnx"
    out.write_text("keep me")
    err = fails(capsys, [str(tiny), "-o", str(out), "--calib", "x"], ExitStatus.USAGE)
    assert "--force" in err and out.read_text() == "keep me"


def test_truncate_tensor_not_in_graph(tmp_path, tiny, capsys):
    np.save(tmp_path / "x.npy", np.zeros((2, 3, 16, 16), np.float32))
    out = tmp_path / "q.onnx"
    code = main(["quantize", str(tiny), "-o", str(out), "--calib", str(tmp_path / "x.npy"),
                 "--truncate", "no_such_tensor"])
    err = capsys.readouterr().err
    assert code in (ExitStatus.BAD_INPUT, ExitStatus.USAGE) and "no_such_tensor" in err
    assert not out.exists()


def test_bad_flag_syntax(tmp_path, tiny, capsys):
    for extra, expected in ((["--subgraph", "a"], "--subgraph"),
                            (["--input-shape", "input=1xax3"], "--input-shape"),
                            (["--calib", "input="], "nothing after '='")):
        err = fails(capsys, [str(tiny), "-o", str(tmp_path / "q.onnx"), "--calib", "x", *extra]
                    if extra[0] != "--calib" else [str(tiny), "-o", str(tmp_path / "q.onnx"),
                                                   *extra], ExitStatus.USAGE)
        assert expected in err, extra
    with pytest.raises(SystemExit):
        main(["quantize", str(tiny), "--mean", "1,x"])


# --- the accuracy-driven fallback ------------------------------------------------------------

def test_fallback_met_locally_on_digits(tmp_path, capsys):
    out = tmp_path / "fb.q.onnx"
    doc = run_json(capsys, [str(SAMPLES / "digits_cnn.onnx"), "-o", str(out),
                            "--calib", str(SAMPLES / "digits_calib.npz"), "--calib-count", "64",
                            "--max-drop", "0.02", "--eval", str(SAMPLES / "digits_test.npz"),
                            "--metric", "top1"])
    assert doc["fallback"]["met"] is True and doc["fallback"]["metric"] == "top1"
    assert doc["fallback"]["drop"] <= 0.02 and out.is_file()
    assert doc["nodes"]["int8"] > 0


def test_fallback_not_met_still_writes_best_model(tmp_path, capsys):
    out = tmp_path / "fb.q.onnx"
    code = main(["quantize", str(SAMPLES / "digits_cnn.onnx"), "-o", str(out),
                 "--calib", str(SAMPLES / "digits_calib.npz"), "--calib-count", "32",
                 "--max-drop", "0", "--eval", str(SAMPLES / "digits_test.npz"),
                 "--metric", "fidelity", "--max-steps", "1"])
    err = capsys.readouterr().err
    assert code == ExitStatus.TARGET_NOT_MET, err
    assert "no setting met --max-drop 0" in err and out.is_file()
    runs(out, {"input": np.zeros((1, 1, 8, 8), np.float32)})


def test_fallback_evaluated_on_a_board(tmp_path, capsys, pki):
    from tests.agent_fixtures import start_agent
    from tests.pki_fixtures import PASSPHRASE

    passphrase = tmp_path / "pass.txt"
    passphrase.write_bytes(PASSPHRASE + b"\n")
    agent = start_agent(pki, tmp_path / "store")
    try:
        out = tmp_path / "board.q.onnx"
        doc = run_json(capsys, [str(SAMPLES / "digits_cnn.onnx"), "-o", str(out),
                                "--calib", str(SAMPLES / "digits_calib.npz"),
                                "--calib-count", "32", "--max-drop", "0.05",
                                "--eval", str(SAMPLES / "digits_test.npz"), "--metric", "top1",
                                "--address", agent.address, "--pki", str(pki.dir),
                                "--identity", "laptop", "--passphrase-file", str(passphrase)])
    finally:
        agent.stop()
    assert doc["fallback"]["evaluator"].startswith("agent at 127.0.0.1")
    assert doc["fallback"]["met"] is True and out.is_file()
