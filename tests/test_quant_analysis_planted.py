"""The planted-outlier model: int8 ruins it, and the analysis points at the planted layer."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("sklearn")

from edgetune.host.cli import main  # noqa: E402
from edgetune.host.quant.analysis import analyze  # noqa: E402
from edgetune.host.quant.calibdata import CalibrationData  # noqa: E402
from edgetune.host.quant.evaluate import LocalEvaluator  # noqa: E402
from edgetune.host.quant.planted import build_planted_model  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory):
    from edgetune.host.quant.pipeline import quantize
    from edgetune.host.quant.settings import CalibSource, QuantizeSettings

    work = tmp_path_factory.mktemp("planted")
    pm = build_planted_model(work / "planted.onnx")
    out = work / "planted.q.onnx"
    quantize(QuantizeSettings(model=pm.model_path, output=out,
                              calib=(CalibSource(path=pm.calib_npz),)))
    return pm, out


def test_the_float_model_is_good_and_int8_destroys_it(planted) -> None:
    pm, quantized = planted
    evaluator = LocalEvaluator(pm.eval_npz)
    assert evaluator.baseline(pm.model_path) == pytest.approx(pm.float_top1)
    assert pm.float_top1 > 0.93
    assert evaluator.evaluate(quantized) < 0.5


def test_analysis_ranks_the_planted_layer_first(planted) -> None:
    pm, quantized = planted
    data = CalibrationData.from_arrays({"input": np.load(pm.calib_npz)["input"][:32]})
    report = analyze(pm.model_path, quantized, data)
    worst = report.ranked()[0]
    assert worst.name == pm.planted_tensor and worst.node == pm.planted_node
    assert set(worst.nodes) == set(pm.touching)
    assert report.layer_scores()[0].node == pm.planted_node
    # The outlier channel dominates the tensor's energy: its plain SQNR looks fine; the
    # per-channel figure shows every other channel rounded away.
    assert worst.isolated.sqnr_db > 40 and worst.isolated.channel_sqnr_db < 5
    assert worst.flagged and any("channel SQNR" in r for r in worst.reasons)
    runner_up = report.ranked()[1]
    assert runner_up.score > worst.score + 10
    assert report.outputs[0].flagged and report.outputs[0].accumulated.cosine < 0.9


def test_analyze_command_on_the_planted_model(planted, capsys: pytest.CaptureFixture) -> None:
    pm, quantized = planted
    code = main(["analyze", str(pm.model_path), str(quantized), "--calib", str(pm.calib_npz),
                 "--calib-count", "16", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0
    assert doc["ranked"][0]["name"] == pm.planted_tensor
    assert doc["layers"][0]["node"] == pm.planted_node
    assert pm.planted_tensor in doc["flagged"]
