"""Analysis reports (Markdown, JSON, PNG) and ``edgetune analyze`` on the shipped digits CNN
quantized by the real pipeline, plus the command's bad inputs."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

from edgetune.host.cli import main
from edgetune.host.quant.analysis import analyze
from edgetune.host.quant.calibdata import CalibrationData
from edgetune.host.quant.report import PLOT_SKIPPED
from tests.quant_fixtures import CALIB, DIGITS


@pytest.fixture(scope="module")
def report(digits_q: Path):
    import numpy as np

    data = CalibrationData.from_arrays({"input": np.load(CALIB)["input"][:16]})
    # A threshold no 8-bit tensor reaches: every tensor gets flagged.
    return analyze(DIGITS, digits_q, data, sqnr_threshold_db=100.0)


def test_markdown_has_the_ranked_table_flags_and_formulas(report) -> None:
    md = report.to_markdown(top=5)
    assert md.startswith("# Quantization error analysis")
    assert "| # | tensor | kind | node |" in md
    table = md.split("## Tensors, worst first")[1].split("##")[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "tensor" not in line]
    assert len(rows) == 5 and rows[0].startswith("| 1 | `" + report.ranked()[0].name)
    assert "## Flagged" in md and "SQNR" in md.split("## Flagged")[1]
    formulas = md.split("## Formulas")[1]
    for text in ("10 * log10( sum(x^2) / sum((x - y)^2) )", "cosine = sum(x * y)",
                 "NSR (noise-to-signal ratio) = sum((x - y)^2) / sum(x^2)", "accumulated:",
                 "isolated:", "SQNR < 100 dB"):
        assert text in formulas
    assert "`logits`" in md.split("## Model outputs")[1].split("##")[0]


def test_json_is_ranked_worst_first_and_strict(report) -> None:
    doc = json.loads(report.to_json())
    scores = [t["score_db"] for t in doc["ranked"]]
    assert scores == sorted(scores) and len(scores) == len(report.ranked())
    assert doc["thresholds"] == {"cosine": 0.99, "sqnr_db": 100.0}
    assert set(doc["flagged"]) >= {t["name"] for t in doc["ranked"]}
    assert doc["outputs"][0]["name"] == "logits"
    assert {"isolated", "accumulated", "nodes", "op_type"} <= set(doc["ranked"][0])
    assert "10 * log10" in doc["formulas"]


def test_png_chart_is_written(report, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = report.to_png(tmp_path / "chart.png", top=10)
    assert out == tmp_path / "chart.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_png_is_skipped_without_matplotlib(report, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)     # import matplotlib -> ImportError
    with caplog.at_level(logging.WARNING):
        assert report.to_png(tmp_path / "chart.png") is None
    assert PLOT_SKIPPED == "plot skipped: pip install edgetune[plot]"
    assert PLOT_SKIPPED in caplog.text
    assert not (tmp_path / "chart.png").exists()


# ---------------------------------------------------------------------- the command

def test_cli_json_report_and_png(digits_q: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture) -> None:
    md, png = tmp_path / "analysis.md", tmp_path / "analysis.png"
    code = main(["analyze", str(DIGITS), str(digits_q), "--calib", str(CALIB),
                 "--calib-count", "8", "--report", str(md), "--png", str(png), "--json"])
    out = capsys.readouterr().out
    assert code == 0
    doc = json.loads(out)
    assert doc["samples"] == 8 and doc["written"]["report"] == str(md)
    assert "## Formulas" in md.read_text()
    if "png" in doc["written"]:
        assert png.read_bytes()[:4] == b"\x89PNG"
    else:
        assert doc["plot"] == PLOT_SKIPPED
    code = main(["analyze", str(DIGITS), str(digits_q), "--calib", f"input={CALIB}",
                 "--calib-count", "4", "--report", str(tmp_path / "a.json"), "--json"])
    capsys.readouterr()
    assert code == 0
    assert json.loads((tmp_path / "a.json").read_text())["samples"] == 4


def test_cli_table_for_people(digits_q: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["analyze", str(DIGITS), str(digits_q), "--calib", str(CALIB),
                 "--calib-count", "4", "--top", "3", "--sqnr-threshold", "100"])
    out = capsys.readouterr().out
    assert code == 0
    assert "worst 3 of" in out and "output logits: SQNR" in out
    assert "flagged (cosine < 0.99 or SQNR < 100 dB)" in out


@pytest.mark.parametrize("case, code, message", [
    ("not_onnx", 3, "is not an ONNX model"),
    ("float_as_quant", 3, "not a QDQ model"),
    ("missing_quant", 4, "does not exist"),
    ("missing_float", 4, "does not exist"),
    ("report_folder", 2, "does not exist"),
    ("count", 2, "--calib-count must be at least 1"),
    ("empty_calib", 3, "found 0"),
])
def test_cli_bad_inputs(case: str, code: int, message: str, digits_q: Path, tmp_path: Path,
                        capsys: pytest.CaptureFixture) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01 this is not a model")
    empty = tmp_path / "empty"
    empty.mkdir()
    float_model, quant_model, extra = DIGITS, digits_q, []
    calib = CALIB
    if case == "not_onnx":
        quant_model = junk
    elif case == "float_as_quant":
        quant_model = DIGITS
    elif case == "missing_quant":
        quant_model = tmp_path / "nope.onnx"
    elif case == "missing_float":
        float_model = tmp_path / "nope.onnx"
    elif case == "report_folder":
        extra = ["--report", str(tmp_path / "no" / "such" / "r.md")]
    elif case == "count":
        extra = ["--calib-count", "0"]
    elif case == "empty_calib":
        calib = empty
    got = main(["analyze", str(float_model), str(quant_model), "--calib", str(calib), *extra])
    err = capsys.readouterr().err
    assert got == code, err
    assert message in err
