"""The fallback on the shipped digits CNN: an impossible target still writes the best model
and ends in TargetNotMetError (exit 8); fidelity without labels; refused settings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edgetune.host.cli import main
from edgetune.host.errors import ExitStatus, TargetNotMetError, UsageError
from edgetune.host.quant.calibdata import CalibrationData
from edgetune.host.quant.fallback import run_fallback
from edgetune.host.quant.settings import FallbackSettings, QuantizeSettings

SAMPLES = Path(__file__).resolve().parent.parent / "host" / "samples"
DIGITS = SAMPLES / "digits_cnn.onnx"
TEST = SAMPLES / "digits_test.npz"
CALIB = SAMPLES / "digits_calib.npz"


@pytest.fixture(scope="module")
def data() -> CalibrationData:
    return CalibrationData.from_arrays({"input": np.load(CALIB)["input"][:64]})


def test_impossible_target_writes_the_best_model_then_fails(tmp_path: Path, data) -> None:
    out = tmp_path / "q.onnx"
    settings = QuantizeSettings(model=DIGITS, output=out)
    # Fidelity 1.0 exactly is the float model itself: no quantized candidate reaches it.
    fb = FallbackSettings(max_drop=0.0, eval_dataset=TEST, metric="fidelity", max_steps=3)
    with pytest.raises(TargetNotMetError) as caught:
        run_fallback(settings, fb, data=data)
    assert caught.value.exit_status == ExitStatus.TARGET_NOT_MET
    assert "no setting met --max-drop 0" in caught.value.message
    assert "written to" in caught.value.message
    ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])   # a whole model
    doc = json.loads((tmp_path / "q.fallback.json").read_text())
    assert doc["met"] is False and doc["metric"] == "fidelity"
    searched = doc["steps"][2:]
    assert 1 <= len(searched) <= 3                                       # --max-steps
    best = doc["steps"][doc["best_step"]]
    assert best["metric"] == max(s["metric"] for s in doc["steps"][1:])
    assert (tmp_path / "q.record.json").is_file() and (tmp_path / "q.ranges.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_impossible_target_exit_code_from_the_command(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "q.onnx"
    code = main(["quantize", str(DIGITS), "-o", str(out), "--calib", str(CALIB),
                 "--max-drop", "0", "--eval", str(TEST), "--metric", "fidelity",
                 "--max-steps", "1"])
    err = capsys.readouterr().err
    assert code == 8, err
    assert "no setting met --max-drop" in err
    assert out.is_file()


def test_fidelity_without_labels(tmp_path: Path, data) -> None:
    unlabeled = tmp_path / "unlabeled.npz"
    np.savez(unlabeled, input=np.load(TEST)["input"][:100])
    settings = QuantizeSettings(model=DIGITS, output=tmp_path / "q.onnx")
    report = run_fallback(settings, FallbackSettings(max_drop=0.01, eval_dataset=unlabeled),
                          data=data)
    assert report.metric == "fidelity" and report.baseline == pytest.approx(1.0)
    assert report.met and len(report.steps) == 2         # all int8 is already faithful
    assert report.int8_layers == report.quantizable_layers
    assert 0.99 <= report.best.metric < 1.0


def test_refused_settings_cost_nothing(tmp_path: Path, data) -> None:
    out = tmp_path / "q.onnx"
    settings = QuantizeSettings(model=DIGITS, output=out)
    for fb, match in ((FallbackSettings(max_drop=0.01, eval_dataset=TEST, strategy="random"),
                       "unknown fallback strategy"),
                      (FallbackSettings(max_drop=-1, eval_dataset=TEST), "--max-drop"),
                      (FallbackSettings(max_drop=0.01, eval_dataset=TEST, max_steps=0),
                       "--max-steps")):
        with pytest.raises(UsageError, match=match):
            run_fallback(settings, fb, data=data)
    out.write_bytes(b"keep me")
    with pytest.raises(UsageError, match="already exists"):
        run_fallback(settings, FallbackSettings(max_drop=0.01, eval_dataset=TEST), data=data)
    assert out.read_bytes() == b"keep me"
    with pytest.raises(UsageError, match="is the input model"):
        run_fallback(QuantizeSettings(model=DIGITS, output=DIGITS),
                     FallbackSettings(max_drop=0.01, eval_dataset=TEST), data=data)
    assert list(tmp_path.iterdir()) == [out]
