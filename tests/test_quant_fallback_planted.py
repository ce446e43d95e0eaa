"""The accuracy-driven fallback repairs the planted-outlier model within --max-drop while most
layers stay int8, with both strategies, through the Python API and ``edgetune quantize``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

pytest.importorskip("sklearn")

from edgetune.host.cli import main  # noqa: E402
from edgetune.host.quant.calibdata import CalibrationData  # noqa: E402
from edgetune.host.quant.evaluate import LocalEvaluator  # noqa: E402
from edgetune.host.quant.fallback import run_fallback  # noqa: E402
from edgetune.host.quant.planted import build_planted_model  # noqa: E402
from edgetune.host.quant.settings import FallbackSettings, QuantizeSettings  # noqa: E402

pytestmark = pytest.mark.slow
MAX_DROP = 0.01


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory):
    return build_planted_model(tmp_path_factory.mktemp("planted") / "planted.onnx")


@pytest.fixture(scope="module")
def results(planted, tmp_path_factory: pytest.TempPathFactory):
    data = CalibrationData.from_arrays({"input": np.load(planted.calib_npz)["input"][:200]})
    out = {}
    for strategy in ("greedy", "bisect"):
        work = tmp_path_factory.mktemp(strategy)
        settings = QuantizeSettings(model=planted.model_path, output=work / "out.onnx")
        fb = FallbackSettings(max_drop=MAX_DROP, eval_dataset=planted.eval_npz,
                              strategy=strategy)
        seen = []
        report = run_fallback(settings, fb, data=data, on_step=seen.append)
        out[strategy] = (report, seen, work)
    return out


@pytest.mark.parametrize("strategy", ["greedy", "bisect"])
def test_fallback_meets_max_drop_keeping_most_layers_int8(results, planted,
                                                          strategy: str) -> None:
    report, seen, work = results[strategy]
    assert report.met and report.drop <= MAX_DROP
    assert report.int8_fraction >= 0.8
    raised = set(report.float_layers) | set(report.int16_layers)
    assert planted.planted_node in raised
    # The written model is the one that was judged: evaluate it again, independently.
    value = LocalEvaluator(planted.eval_npz).evaluate(work / "out.onnx")
    assert report.baseline - value <= MAX_DROP
    assert value == pytest.approx(report.best.metric)
    ort.InferenceSession(str(work / "out.onnx"), providers=["CPUExecutionProvider"])
    # Every step is recorded and was reported as it happened.
    assert [s.index for s in seen] == [s.index for s in report.steps]
    assert report.steps[0].action.startswith("float model") and report.steps[0].drop == 0
    assert report.steps[1].int8_layers == report.quantizable_layers   # all int8 first ...
    assert not report.steps[1].met and report.steps[1].drop > 0.5      # ... which fails
    assert report.steps[report.best_step].met
    assert all(s.latency_ms is not None and s.latency_ms > 0 for s in report.steps)
    assert report.ranking[0][0] == planted.planted_node
    text = "\n".join(report.lines())
    assert "<- written" in text and "target met" in text and "all int8" in text


@pytest.mark.parametrize("strategy", ["greedy", "bisect"])
def test_fallback_writes_model_record_ranges_and_steps(results, strategy: str) -> None:
    report, _, work = results[strategy]
    names = sorted(p.name for p in work.iterdir())
    assert names == ["out.fallback.json", "out.onnx", "out.ranges.json", "out.record.json"]
    doc = json.loads((work / "out.fallback.json").read_text())
    assert doc["met"] is True and doc["strategy"] == strategy and doc["metric"] == "top1"
    assert len(doc["steps"]) == len(report.steps)
    assert doc["steps"][report.best_step]["met"] is True
    record = json.loads((work / "out.record.json").read_text())
    assert "fc8" in json.dumps(record)           # the raised layers are in the record
    assert report.report.n_float_nodes + report.report.n_int16_nodes >= 2


def test_greedy_is_at_least_as_good_as_bisect(results) -> None:
    greedy, bisect = results["greedy"][0], results["bisect"][0]
    assert greedy.met and bisect.met
    assert greedy.int8_layers >= bisect.int8_layers
    assert greedy.evaluations <= bisect.evaluations


def test_quantize_command_runs_the_fallback(planted, tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli.onnx"
    code = main(["quantize", str(planted.model_path), "-o", str(out), "--calib",
                 str(planted.calib_npz), "--max-drop", str(MAX_DROP), "--eval",
                 str(planted.eval_npz), "--strategy", "greedy", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    assert summary["fallback"]["met"] is True
    assert summary["fallback"]["int8_fraction"] >= 0.8
    assert (tmp_path / "cli.fallback.json").is_file()
