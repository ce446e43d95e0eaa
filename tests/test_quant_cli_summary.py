"""``edgetune quantize`` summary: node counts that agree with the record, and a fallback that
cannot meet ``--max-drop`` reported in full (steps + error) with exit code 8."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgetune.host.cli import main
from edgetune.host.errors import ExitStatus

SAMPLES = Path(__file__).resolve().parent.parent / "host" / "samples"
DIGITS = SAMPLES / "digits_cnn.onnx"
CALIB = SAMPLES / "digits_calib.npz"
TEST = SAMPLES / "digits_test.npz"


def test_node_counts_agree_with_the_record(tmp_path, capsys):
    out = tmp_path / "d16.q.onnx"
    code = main(["quantize", str(DIGITS), "-o", str(out), "--calib", str(CALIB),
                 "--calib-count", "16", "--int16", "conv2", "conv3", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == ExitStatus.OK, doc
    record = json.loads(Path(doc["record"]).read_text())
    kinds = list(record["node_precision"].values())
    expected = {kind: kinds.count(kind) for kind in ("int8", "int16", "float")}
    assert doc["nodes"] == expected
    assert doc["nodes"]["int8"] == record["n_int8_nodes"] == 7      # not int8 + int16 (11)
    assert doc["nodes"]["int16"] == record["n_int16_nodes"] == 4
    assert doc["nodes"]["float"] == record["n_float_nodes"] == 0

    code = main(["quantize", str(DIGITS), "-o", str(out), "--force", "--calib", str(CALIB),
                 "--calib-count", "16", "--int16", "conv2", "conv3"])
    table = capsys.readouterr().out
    assert code == ExitStatus.OK
    assert "int8 7  int16 4  float 0" in table


NOT_MET = ["--calib-count", "32", "--method", "entropy", "--max-drop", "0",
           "--eval", str(TEST), "--metric", "fidelity", "--max-steps", "1"]


@pytest.mark.parametrize("strategy", ["greedy", "bisect"])
def test_target_not_met_json_is_one_document_with_report_and_error(tmp_path, capsys, strategy):
    out = tmp_path / "fb.q.onnx"
    code = main(["quantize", str(DIGITS), "-o", str(out), "--calib", str(CALIB), *NOT_MET,
                 "--strategy", strategy, "--json"])
    stdout = capsys.readouterr().out
    assert code == ExitStatus.TARGET_NOT_MET
    doc = json.loads(stdout)                     # exactly one JSON document
    error = doc["error"]
    assert error["type"] == "TargetNotMetError" and error["exit_status"] == 8
    assert "no setting met --max-drop 0" in error["message"] and "--max-steps" in error["hint"]
    fb = doc["fallback"]
    assert fb["met"] is False and fb["strategy"] == strategy
    assert fb["output"] == str(out) == doc["output"]
    assert fb["int8_fraction"] == round(fb["int8_layers"] / fb["quantizable_layers"], 4)
    assert fb["steps"][fb["best_step"]]["int8_layers"] == fb["int8_layers"]
    assert [s["index"] for s in fb["steps"]] == list(range(len(fb["steps"])))
    assert len(fb["steps"]) >= 3                 # float, all int8, at least one candidate
    assert fb["steps"][1]["action"] == "all int8 (calibrated once)"
    # Nothing lost: the best model, its record and ranges, and every step on disk.
    assert out.is_file() and Path(doc["record"]).is_file() and Path(doc["ranges"]).is_file()
    on_disk = json.loads(Path(fb["fallback_record"]).read_text())
    assert on_disk["met"] is False and len(on_disk["steps"]) == len(fb["steps"])


def test_target_not_met_human_output_shows_every_step(tmp_path, capsys):
    out = tmp_path / "fb.q.onnx"
    code = main(["quantize", str(DIGITS), "-o", str(out), "--calib", str(CALIB), *NOT_MET])
    captured = capsys.readouterr()
    assert code == ExitStatus.TARGET_NOT_MET
    doc = json.loads((tmp_path / "fb.q.fallback.json").read_text())
    for step in doc["steps"]:
        assert f"{step['index']:2d}. {step['action']}: {step['metric']:.4f}" in captured.out
    assert "target NOT met" in captured.out
    assert "no setting met --max-drop 0" in captured.err
    assert out.is_file()
