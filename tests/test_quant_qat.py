"""QAT models (host/quant/qat.py, quantize --from-qat): a trained float CNN with fake-quant
Q/DQ pairs built here, its faulty variants refused naming the tensor, weight Q/DQ folded,
the PTQ record, and --ranges RECORD.json re-quantizing without calibration data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Dict, Tuple

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgetune.host.cli import main
from edgetune.host.errors import BadInputError, ExitStatus
from edgetune.host.quant.qat import check_qdq, convert_qat, has_qdq

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "host" / "samples"
FLOAT = SAMPLES / "digits_cnn.onnx"                  # trained (tools/train_digits.py)


def activation_ranges(model: onnx.ModelProto, tensors) -> Dict[str, Tuple[float, float]]:
    """min/max of ``tensors`` over the calibration sample, from the float model."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for name in tensors:
        if name not in {o.name for o in probe.graph.output}:
            probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.load(SAMPLES / "digits_calib.npz")["input"]
    outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"input": x})))
    return {t: (min(0.0, float(outs[t].min())), max(0.0, float(outs[t].max()))) for t in tensors}


def qat_model(weight_axis: int = 0) -> onnx.ModelProto:
    """The digits CNN as a QAT export has it: uint8 Q/DQ on every Conv/Gemm input, int8
    per-channel symmetric Q/DQ on every weight (float weights kept, as fake-quant does)."""
    model = onnx.load(str(FLOAT))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    acts = [n.input[0] for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    ranges = activation_ranges(model, acts)
    nodes, extra = [], []
    renamed: Dict[str, str] = {}
    for tensor in acts:
        lo, hi = ranges[tensor]
        scale = (hi - lo) / 255.0
        zp = int(round(-lo / scale))
        extra += [numpy_helper.from_array(np.array(scale, np.float32), f"{tensor}.scale"),
                  numpy_helper.from_array(np.array(zp, np.uint8), f"{tensor}.zp")]
        nodes += [helper.make_node("QuantizeLinear", [tensor, f"{tensor}.scale", f"{tensor}.zp"],
                                   [f"{tensor}.q"], name=f"{tensor}.Q"),
                  helper.make_node("DequantizeLinear", [f"{tensor}.q", f"{tensor}.scale",
                                                        f"{tensor}.zp"], [f"{tensor}.dq"],
                                   name=f"{tensor}.DQ")]
        renamed[tensor] = f"{tensor}.dq"
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        w = inits[node.input[1]]
        scale = (np.abs(w).reshape(len(w), -1).max(axis=1) / 127.0).astype(np.float32)
        name = node.input[1]
        extra += [numpy_helper.from_array(scale, f"{name}.scale"),
                  numpy_helper.from_array(np.zeros(len(w), np.int8), f"{name}.zp")]
        nodes += [helper.make_node("QuantizeLinear", [name, f"{name}.scale", f"{name}.zp"],
                                   [f"{name}.q"], name=f"{name}.Q", axis=weight_axis),
                  helper.make_node("DequantizeLinear", [f"{name}.q", f"{name}.scale",
                                                        f"{name}.zp"], [f"{name}.dq"],
                                   name=f"{name}.DQ", axis=weight_axis)]
        renamed[name] = f"{name}.dq"
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
    # Q/DQ nodes go first in topological order only where their input exists: put the
    # weight pairs first, then each activation pair right before its consumer.
    ordered = [n for n in nodes if n.input[0] in inits or n.input[0].endswith(".weight.q")]
    act_nodes = {n.input[0]: n for n in nodes if n not in ordered}
    body = []
    for node in model.graph.node:
        for name in node.input:
            base = name[:-3] if name.endswith(".dq") else None
            if base is not None and base in act_nodes:
                q = act_nodes.pop(base)
                dq = act_nodes.pop(f"{base}.q")
                body += [q, dq]
        body.append(node)
    del model.graph.node[:]
    model.graph.node.extend(ordered + body)
    model.graph.initializer.extend(extra)
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def qat_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("qat") / "digits_qat.onnx"
    onnx.save(qat_model(), str(path))
    return path


def run(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def test_from_qat_folds_weights_and_writes_the_ptq_record(qat_path: Path, tmp_path: Path,
                                                          capsys) -> None:
    out = tmp_path / "digits.q.onnx"
    code = main(["quantize", "--from-qat", str(qat_path), "-o", str(out), "--json",
                 "--no-record"])
    captured = capsys.readouterr()
    assert code == ExitStatus.OK, captured.err
    doc = json.loads(captured.out)
    assert doc["folded_weights"] == 5 and doc["qdq_nodes"] == 20
    model = onnx.load(str(out))
    inits = {i.name: i for i in model.graph.initializer}
    assert not any(n.op_type == "QuantizeLinear" and n.input[0] in inits
                   for n in model.graph.node)                     # no weight Q left
    weights = [i for i in model.graph.initializer if i.name.endswith(".weight_quantized")]
    assert len(weights) == 5 and all(w.data_type == TensorProto.INT8 for w in weights)
    assert doc["size_bytes"]["ratio"] < 0.4                     # shrinks as PTQ does
    test = np.load(SAMPLES / "digits_test.npz")
    x = test["input"]
    np.testing.assert_allclose(run(out, x), run(qat_path, x), atol=1e-4)   # folding is exact
    assert (run(out, x).argmax(1) == test["labels"]).mean() >= 0.95

    record = json.loads(Path(doc["record"]).read_text())
    ptq = tmp_path / "ptq.q.onnx"
    assert main(["quantize", str(FLOAT), "-o", str(ptq), "--calib",
                 str(SAMPLES / "digits_calib.npz"), "--no-record"]) == 0
    ptq_record = json.loads(ptq.with_name("ptq.q.record.json").read_text())
    assert set(record) == set(ptq_record)                        # the same document
    assert record["format"] == ptq_record["format"] == "edgetune-quantize-record"
    kinds = {t["kind"] for t in record["tensors"]}
    assert kinds == {"weight", "activation"}
    conv1 = next(t for t in record["tensors"] if t["tensor"] == "conv1.weight")
    assert conv1["type"] == "int8" and len(conv1["scale"]) == 16 and conv1["axis"] == 0


def test_auto_detected_without_the_flag(qat_path: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "auto.q.onnx"
    assert main(["quantize", str(qat_path), "-o", str(out), "--no-record"]) == 0
    assert "QAT model" in capsys.readouterr().out and out.is_file()
    code = main(["quantize", str(qat_path), "-o", str(tmp_path / "x.onnx"), "--calib",
                 str(SAMPLES / "digits_calib.npz"), "--no-record"])
    err = capsys.readouterr().err
    assert code == ExitStatus.USAGE and "--calib do(es) not apply" in err


def test_float_model_given_to_from_qat_is_refused(tmp_path: Path, capsys) -> None:
    code = main(["quantize", "--from-qat", str(FLOAT), "-o", str(tmp_path / "q.onnx"),
                 "--no-record"])
    err = capsys.readouterr().err
    assert code == ExitStatus.BAD_INPUT and "holds no QuantizeLinear/DequantizeLinear" in err
    assert not (tmp_path / "q.onnx").exists()


def _set(model: onnx.ModelProto, name: str, array: np.ndarray) -> onnx.ModelProto:
    for i, init in enumerate(model.graph.initializer):
        if init.name == name:
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(array, name))
            return model
    raise KeyError(name)


FAULTS: Dict[str, Tuple[Callable[[], onnx.ModelProto], str]] = {
    "zero scale": (lambda: _set(qat_model(), "relu1_out.scale", np.array(0.0, np.float32)),
                   "tensor 'relu1_out': scale 0 is not a positive finite number"),
    "negative channel scale": (
        lambda: _set(qat_model(), "conv2.weight.scale",
                     np.r_[np.full(15, 0.01), -0.01].astype(np.float32)),
        "tensor 'conv2.weight': scale -0.01 is not a positive finite number"),
    "nan scale": (lambda: _set(qat_model(), "input.scale", np.array(np.nan, np.float32)),
                  "tensor 'input': scale nan is not a positive finite number"),
    "infinite scale": (lambda: _set(qat_model(), "flatten_out.scale",
                                    np.array(np.inf, np.float32)),
                       "tensor 'flatten_out': scale inf"),
    "zero point out of range": (
        lambda: _set(qat_model(), "pool_out.zp", np.array(300, np.int32)),
        "tensor 'pool_out': zero point 300 is outside uint8's range [0, 255]"),
    "weight zero point out of range": (
        lambda: _set(qat_model(), "fc1.weight.zp", np.full(32, -200, np.int32)),
        "tensor 'fc1.weight': zero point -200 is outside int8's range [-128, 127]"),
    "axis mismatch": (lambda: qat_model(weight_axis=1),
                      "tensor 'conv1.weight': 16 per-channel scales on axis 1, but the tensor "
                      "has 1 there"),
    "axis out of range": (lambda: qat_model(weight_axis=5),
                          "per-channel axis 5 does not exist in a tensor of shape"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_faulty_qat_models_are_refused_naming_the_tensor(fault: str, tmp_path: Path) -> None:
    build, message = FAULTS[fault]
    path = tmp_path / "bad.onnx"
    onnx.save(build(), str(path))
    with pytest.raises(BadInputError) as info:
        convert_qat(path, tmp_path / "out.onnx")
    assert message in str(info.value)
    assert not (tmp_path / "out.onnx").exists()


def test_faulty_model_exit_status_on_the_cli(tmp_path: Path, capsys) -> None:
    path = tmp_path / "bad.onnx"
    onnx.save(FAULTS["zero scale"][0](), str(path))
    code = main(["quantize", str(path), "-o", str(tmp_path / "o.onnx"), "--no-record"])
    assert code == ExitStatus.BAD_INPUT and "relu1_out" in capsys.readouterr().err


def test_wide_zero_point_in_range_is_stored_in_its_type(tmp_path: Path) -> None:
    model = _set(qat_model(), "pool_out.zp", np.array(0, np.int32))
    assert any("stored as int32: read as uint8" in n for n in check_qdq(model))
    path = tmp_path / "wide.onnx"
    onnx.save(model, str(path))
    report = convert_qat(path, tmp_path / "wide.q.onnx")
    x = np.load(SAMPLES / "digits_test.npz")["input"][:8]
    assert run(report.output, x).shape == (8, 10)


def test_ranges_from_a_record_requantize_without_calibration(qat_path: Path, tmp_path: Path,
                                                              capsys) -> None:
    """--ranges OUT.record.json: a PTQ record gives back its own scales; a QAT record puts
    the trained activation scales on the float model (AMCT's convert_model)."""
    first = tmp_path / "a.q.onnx"
    assert main(["quantize", str(FLOAT), "-o", str(first), "--calib",
                 str(SAMPLES / "digits_calib.npz"), "--no-record"]) == 0
    again = tmp_path / "b.q.onnx"
    assert main(["quantize", str(FLOAT), "-o", str(again), "--ranges",
                 str(tmp_path / "a.q.record.json"), "--no-record"]) == 0

    def act_scales(record: Path) -> Dict[str, Tuple[float, int]]:
        doc = json.loads(record.read_text())
        return {t["tensor"]: (t["scale"], t["zero_point"]) for t in doc["tensors"]
                if t["kind"] == "activation"}
    a, b = act_scales(tmp_path / "a.q.record.json"), act_scales(tmp_path / "b.q.record.json")
    assert a.keys() == b.keys() and len(a) >= 5
    for name in a:
        assert b[name][0] == pytest.approx(a[name][0], rel=1e-6) and b[name][1] == a[name][1]
    assert json.loads((tmp_path / "b.q.record.json").read_text())["ranges"]["calibrated"] is False

    qat_out = tmp_path / "qat.q.onnx"
    report = convert_qat(qat_path, qat_out)
    from_qat = tmp_path / "c.q.onnx"
    # The export left the classifier's output float (no range for 'logits'): the
    # convolutions are re-quantized.
    assert main(["quantize", str(FLOAT), "-o", str(from_qat), "--ranges",
                 str(report.record_path), "--op-types", "Conv", "MaxPool", "--no-record"]) == 0
    trained = act_scales(report.record_path)
    c = act_scales(tmp_path / "c.q.record.json")
    shared = [name for name in trained if name in c]
    assert {"input", "relu1_out", "pool_out"} <= set(shared)
    # tensors without fake-quant in the export take their neighbour's range across
    # Relu/MaxPool/Flatten: conv2_out <- relu2_out <- pool_out, conv3_out <- flatten_out
    assert c["conv2_out"][0] == pytest.approx(trained["pool_out"][0], rel=1e-6)
    assert c["conv3_out"][0] == pytest.approx(trained["flatten_out"][0], rel=1e-6)
    for name in shared:
        assert c[name][0] == pytest.approx(trained[name][0], rel=1e-6)
        assert c[name][1] == trained[name][1]
    # and the ranges file written beside the QAT output does the same
    d = tmp_path / "d.q.onnx"
    assert main(["quantize", str(FLOAT), "-o", str(d), "--ranges", str(report.ranges_path),
                 "--op-types", "Conv", "--no-record"]) == 0
    d_scales = act_scales(tmp_path / "d.q.record.json")
    for name in ("input", "relu1_out", "pool_out"):
        assert d_scales[name][0] == pytest.approx(trained[name][0], rel=1e-6)


def test_has_qdq() -> None:
    assert has_qdq(qat_model()) and not has_qdq(onnx.load(str(FLOAT)))


def test_analyze_reads_the_converted_model_as_a_ptq_one(qat_path: Path, tmp_path: Path,
                                                        capsys) -> None:
    report = convert_qat(qat_path, tmp_path / "qat.q.onnx")
    code = main(["analyze", str(FLOAT), str(report.output), "--calib",
                 str(SAMPLES / "digits_calib.npz"), "--calib-count", "20", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and doc["unmatched"] == [] and len(doc["layers"]) >= 5
    assert all(layer["score_db"] > 20 for layer in doc["layers"])
