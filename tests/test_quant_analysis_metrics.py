"""edgetune.host.quant.analysis: the error figures on hand-checkable cases, and agreement with
onnxruntime's own qdq_loss_debug on a real quantized model."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgetune.host.errors import BadInputError, NotFoundError
from edgetune.host.quant.analysis import SQNR_CAP_DB, ErrorAccumulator, analyze, error_metrics
from edgetune.host.quant.calibdata import CalibrationData


# ---------------------------------------------------------------------- the formulas

def test_identical_tensors_are_capped_not_infinite() -> None:
    x = np.linspace(-3, 3, 60, dtype=np.float32).reshape(5, 12)
    m = error_metrics(x, x.copy(), channel_axis=1)
    assert m.sqnr_db == SQNR_CAP_DB and math.isfinite(m.sqnr_db)
    assert m.cosine == 1.0 and m.nsr == 0.0
    assert m.channel_sqnr_db == SQNR_CAP_DB


def test_known_noise_gives_known_figures() -> None:
    x = np.ones((10, 10), np.float32)
    m = error_metrics(x, x * 1.1)               # every value off by 10 %: NSR 0.01, 20 dB
    assert m.sqnr_db == pytest.approx(20.0, abs=1e-4)
    assert m.nsr == pytest.approx(0.01, rel=1e-4)
    assert m.cosine == pytest.approx(1.0)
    orthogonal = error_metrics(np.array([1.0, 0.0]), np.array([0.0, 1.0]))
    assert orthogonal.cosine == pytest.approx(0.0)
    assert orthogonal.sqnr_db == pytest.approx(10 * math.log10(1 / 2))
    assert orthogonal.nsr == pytest.approx(2.0)


def test_no_signal_is_minus_cap_and_zero_vs_zero_is_perfect() -> None:
    zeros = np.zeros(8)
    assert error_metrics(zeros, np.ones(8)).sqnr_db == -SQNR_CAP_DB
    both = error_metrics(zeros, zeros)
    assert both.cosine == 1.0 and both.sqnr_db == SQNR_CAP_DB and both.nsr == 0.0


def test_streaming_equals_one_shot_and_onnxruntime() -> None:
    from onnxruntime.quantization.qdq_loss_debug import compute_signal_to_quantization_noice_ratio

    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((3, 4, 5)).astype(np.float32) for _ in range(4)]
    ys = [x + 0.05 * rng.standard_normal(x.shape).astype(np.float32) for x in xs]
    acc = ErrorAccumulator(channel_axis=1)
    for x, y in zip(xs, ys):
        acc.update(x, y)
    streamed = acc.result()
    whole = error_metrics(np.concatenate(xs), np.concatenate(ys), channel_axis=1)
    assert streamed.sqnr_db == pytest.approx(whole.sqnr_db, abs=1e-9)
    assert streamed.cosine == pytest.approx(whole.cosine, abs=1e-12)
    assert streamed.channel_sqnr_db == pytest.approx(whole.channel_sqnr_db, abs=1e-9)
    assert streamed.sqnr_db == pytest.approx(compute_signal_to_quantization_noice_ratio(xs, ys),
                                             abs=1e-3)


def test_channel_sqnr_sees_the_channels_a_big_one_hides() -> None:
    x = np.ones((4, 3), np.float64)
    x[:, 0] = 1000.0
    y = x.copy()
    y[:, 0] += 0.1                              # the big channel: small error
    y[:, 1:] = 0.0                              # the others rounded away
    m = error_metrics(x, y, channel_axis=1)
    signal, noise = 4 * 1000.0 ** 2 + 8, 4 * 0.01 + 8
    assert m.sqnr_db == pytest.approx(10 * math.log10(signal / noise))
    assert m.sqnr_db > 50                       # the tensor figure looks fine ...
    per_channel = [10 * math.log10(1e6 / 0.01), 0.0, 0.0]
    assert m.channel_sqnr_db == pytest.approx(sum(per_channel) / 3)   # ... the channels do not


# ---------------------------------------------------------------------- a hand-made QDQ model

def _pair_models(tmp_path: Path, scale: float):
    """float: X -> Relu -> Y;  QDQ: X -> Q(scale, zp 0, uint8) -> DQ -> Relu -> Y."""
    x_in = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 4])
    y_out = helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 4])
    fmodel = helper.make_model(
        helper.make_graph([helper.make_node("Relu", ["X"], ["Y"], name="relu")], "f",
                          [x_in], [y_out]), opset_imports=[helper.make_opsetid("", 17)])
    inits = [numpy_helper.from_array(np.array(scale, np.float32), "X_scale"),
             numpy_helper.from_array(np.array(0, np.uint8), "X_zero_point")]
    nodes = [helper.make_node("QuantizeLinear", ["X", "X_scale", "X_zero_point"], ["X_q"],
                              name="X_QuantizeLinear"),
             helper.make_node("DequantizeLinear", ["X_q", "X_scale", "X_zero_point"],
                              ["X_DequantizeLinear_Output"], name="X_DequantizeLinear"),
             helper.make_node("Relu", ["X_DequantizeLinear_Output"], ["Y"], name="relu")]
    qmodel = helper.make_model(helper.make_graph(nodes, "q", [x_in], [y_out], inits),
                               opset_imports=[helper.make_opsetid("", 17)])
    for model in (fmodel, qmodel):
        model.ir_version = 9
        onnx.checker.check_model(model)
    onnx.save(fmodel, tmp_path / "f.onnx")
    onnx.save(qmodel, tmp_path / f"q{scale:g}.onnx")
    return tmp_path / "f.onnx", tmp_path / f"q{scale:g}.onnx"


def _integers(n: int = 40) -> np.ndarray:
    return (np.arange(n * 4, dtype=np.float32).reshape(n, 4) % 200)


def test_exact_quantization_reads_as_identical(tmp_path: Path) -> None:
    fpath, qpath = _pair_models(tmp_path, 1.0)    # integers 0..199 survive uint8 scale 1
    report = analyze(fpath, qpath, CalibrationData.from_arrays({"X": _integers()}))
    (tensor,) = report.tensors
    assert tensor.name == "X" and tensor.quant_type == "uint8" and tensor.scale == 1.0
    for m in (tensor.isolated, tensor.accumulated, report.outputs[0].accumulated):
        assert m.sqnr_db == SQNR_CAP_DB and m.cosine == 1.0 and m.nsr == 0.0
    assert not report.flagged() and report.samples == 32        # max_samples' default
    assert tensor.nodes == ("relu",)


def test_known_rounding_noise_is_measured_exactly(tmp_path: Path) -> None:
    fpath, qpath = _pair_models(tmp_path, 2.0)
    x = _integers(10)
    report = analyze(fpath, qpath, CalibrationData.from_arrays({"X": x}), batch_size=3)
    y = 2.0 * np.round(x / 2.0)                  # QuantizeLinear rounds half to even
    expected = error_metrics(x, y, channel_axis=1)
    (tensor,) = report.tensors
    assert tensor.isolated.sqnr_db == pytest.approx(expected.sqnr_db, abs=1e-6)
    assert tensor.accumulated.nsr == pytest.approx(expected.nsr, rel=1e-6)
    assert tensor.isolated.channel_sqnr_db == pytest.approx(expected.channel_sqnr_db, abs=1e-6)
    assert report.samples == 10
    strict = analyze(fpath, qpath, CalibrationData.from_arrays({"X": x}),
                     sqnr_threshold_db=expected.sqnr_db + 1)
    assert strict.flagged() and "SQNR" in strict.flagged()[0].reasons[0]


def test_a_float_model_is_no_qdq_model(tmp_path: Path) -> None:
    fpath, _ = _pair_models(tmp_path, 1.0)
    with pytest.raises(BadInputError, match="not a QDQ model"):
        analyze(fpath, fpath, CalibrationData.from_arrays({"X": _integers()}))
    with pytest.raises(NotFoundError):
        analyze(fpath, tmp_path / "missing.onnx", CalibrationData.from_arrays({"X": _integers()}))
    (tmp_path / "junk.onnx").write_bytes(b"definitely not protobuf \xff\xfe")
    with pytest.raises(BadInputError, match="not an ONNX model"):
        analyze(fpath, tmp_path / "junk.onnx", CalibrationData.from_arrays({"X": _integers()}))


# ---------------------------------------------------------------------- vs onnxruntime

@pytest.fixture(scope="module")
def tiny_quantized(tmp_path_factory: pytest.TempPathFactory):
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from edgetune.host import builders

    work = tmp_path_factory.mktemp("tiny")
    fpath = builders.save(builders.tiny_cnn(), work / "tiny.onnx")
    feeds = builders.random_feeds(builders.tiny_cnn(), batch=12, seed=3)
    data = CalibrationData.from_arrays(feeds)
    qpath = work / "tiny.q.onnx"
    quantize_static(str(fpath), str(qpath), data.as_reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    per_channel=True)
    return fpath, qpath, feeds


def test_figures_match_onnxruntime_qdq_loss_debug(tiny_quantized, tmp_path: Path) -> None:
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations, compute_activation_error, compute_weight_error,
        create_activation_matching, create_weight_matching,
        modify_model_output_intermediate_tensors)

    fpath, qpath, feeds = tiny_quantized
    data = CalibrationData.from_arrays(feeds)
    report = analyze(fpath, qpath, data, max_samples=12)

    modify_model_output_intermediate_tensors(str(fpath), str(tmp_path / "f_aug.onnx"))
    modify_model_output_intermediate_tensors(str(qpath), str(tmp_path / "q_aug.onnx"))
    fa = collect_activations(str(tmp_path / "f_aug.onnx"), data.as_reader(batch=1))
    qa = collect_activations(str(tmp_path / "q_aug.onnx"), data.as_reader(batch=1))
    ort_err = compute_activation_error(create_activation_matching(qa, fa))
    ours = {t.name: t for t in report.tensors if t.kind == "activation"}
    assert set(ours) == set(ort_err)            # the same pairs, found by structure
    float_graph = onnx.load(str(fpath)).graph
    producer = {o: n.op_type for n in float_graph.node for o in n.output}
    capped = lambda db: min(db, SQNR_CAP_DB)   # noqa: E731 - ORT: 20*log10(|x| / eps)
    for name, err in ort_err.items():
        assert ours[name].accumulated.sqnr_db == pytest.approx(capped(err["xmodel_err"]),
                                                               abs=0.01)
        if producer.get(name) != "Relu":       # a folded Relu: we compare after it, ORT before
            assert ours[name].isolated.sqnr_db == pytest.approx(capped(err["qdq_err"]),
                                                                abs=0.01)

    ort_weights = compute_weight_error(create_weight_matching(str(fpath), str(qpath)))
    weights = {t.name: t for t in report.tensors if t.kind in ("weight", "bias")}
    assert set(weights) == set(ort_weights)
    for name, sqnr in ort_weights.items():
        assert weights[name].isolated.sqnr_db == pytest.approx(capped(sqnr), abs=0.01)


def test_tensors_map_back_to_their_layers(tiny_quantized) -> None:
    fpath, qpath, feeds = tiny_quantized
    report = analyze(fpath, qpath, CalibrationData.from_arrays(feeds), max_samples=4)
    by_name = {t.name: t for t in report.tensors}
    # relu1 was folded into conv1's quantization: conv1 produces relu1_out in the QDQ model,
    # and every layer around it must change to store it differently.
    relu1 = by_name["relu1_out"]
    assert relu1.node == "conv1" and relu1.op_type == "Conv"
    assert set(relu1.nodes) == {"conv1", "relu1", "conv2"}
    assert by_name["conv2.weight"].kind == "weight" and by_name["conv2.weight"].nodes == ("conv2",)
    assert by_name["conv2.bias"].kind == "bias"
    assert all(t.kind != "bias" for t in report.ranked())
    scores = [t.score for t in report.ranked()]
    assert scores == sorted(scores)
    layers = report.layer_scores()
    assert [s.score for s in layers] == sorted(s.score for s in layers)
    assert {s.node for s in layers} >= {"conv1", "conv2", "conv3", "fc"}
    assert report.outputs[0].name == "logits" and report.outputs[0].accumulated.cosine > 0.99


def test_memory_is_bounded_by_max_samples(tiny_quantized) -> None:
    fpath, qpath, feeds = tiny_quantized
    seen = []
    report = analyze(fpath, qpath, CalibrationData.from_arrays(feeds), max_samples=5,
                     batch_size=2, progress=lambda stage, done, total: seen.append((done, total)))
    assert report.samples == 5
    assert seen[0] == (0, 5) and seen[-1] == (5, 5) and len(seen) == 4   # 2 + 2 + 1


def test_int16_island_conversions_and_relu_ranges(tmp_path: Path) -> None:
    """An int8 model with an int16 island: every Q/DQ pair is found (the conversions at the
    island's borders too, each with its own label), and a Relu's input quantized with the
    Relu's output range (negatives clipped) is not reported as an error the Relu removes."""
    from edgetune.host.quant.pipeline import quantize
    from edgetune.host.quant.settings import CalibSource, QuantizeSettings

    samples = Path(__file__).resolve().parent.parent / "host" / "samples"
    out = tmp_path / "island.onnx"
    quantize(QuantizeSettings(model=samples / "digits_cnn.onnx", output=out, int16=("conv2",),
                              calib=(CalibSource(path=samples / "digits_calib.npz"),)))
    data = CalibrationData.from_arrays(
        {"input": np.load(samples / "digits_calib.npz")["input"][:16]})
    report = analyze(samples / "digits_cnn.onnx", out, data)
    by_name = {t.name: t for t in report.tensors if t.kind == "activation"}
    assert len(by_name) == len([t for t in report.tensors if t.kind == "activation"])
    island = by_name["conv2_out (int16)"]
    assert island.quant_type == "int16" and island.isolated.sqnr_db > 50   # 8-bit: ~40
    converted = [n for n in by_name if n.endswith(", converted)")]
    assert converted and all(by_name[n].isolated.sqnr_db > 30 for n in converted)
    # conv1 keeps its Relu here (its consumer is in the island): conv1_out is quantized with
    # relu1's range, which clips exactly what relu1 zeroes.
    assert by_name["conv1_out"].isolated.sqnr_db > 30
    assert not [t for t in report.ranked() if t.flagged]
