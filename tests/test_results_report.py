"""edgetune results report: report.md with its tables and PNG plots, the before/after pairing
through parent_sha256, refusing a folder that is not empty, and the message when matplotlib is
missing (the import blocked in a subprocess)."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any, List, Tuple

import pytest

from edgetune.host.cli import main
from edgetune.host.results.records import ModelRef, Record
from edgetune.host.results.report import build_report
from edgetune.host.results.report_md import render_markdown
from edgetune.host.results.store import ResultsStore

FP32, INT8, OTHER = "f" * 64, "1" * 64, "0" * 64
BOARD = {"name": "board1", "arch": "aarch64", "cpu_model": "Cortex-A55", "cpu_cores": 4,
         "onnxruntime_version": "1.16.3", "agent_name": "board1", "os": "Linux 5.10"}


def _latency(samples: List[float]) -> dict:
    data = sorted(samples)
    return {"min": data[0], "p50": data[len(data) // 2], "p90": data[int(len(data) * 0.9)],
            "p99": data[int(len(data) * 0.99)], "max": data[-1],
            "mean": sum(data) / len(data)}


def _bench(model: ModelRef, base: float, *, samples: bool, device: dict = BOARD) -> Record:
    values = [base * (1 + 0.01 * (i % 17)) for i in range(400)]
    return Record(kind="bench", model=model, device=device,
                  metrics={"latency_ms": _latency(values), "throughput_ips": 1000 / base,
                           "iterations": 400},
                  board_state={"cpu_freq_mhz": 1800.0, "temperature_c": 45.0},
                  samples_ms=tuple(values) if samples else None)


@pytest.fixture
def filled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Tuple[str, Path]:
    monkeypatch.delenv("EDGETUNE_DB", raising=False)
    url = f"sqlite:///{tmp_path / 'results.db'}"
    fp32 = ModelRef(FP32, "digits_cnn.onnx", 359662)
    int8 = ModelRef(INT8, "digits_cnn.int8.onnx", 99840, FP32)
    other = ModelRef(OTHER, "other|model.onnx", 1000)
    board2 = {**BOARD, "name": "board2", "arch": "riscv64"}
    with ResultsStore.open(url) as store:
        store.add(Record(kind="quantize", model=int8, metrics={"input_bytes": 359662},
                         options={"method": "minmax"}))
        store.add(_bench(fp32, 0.20, samples=True))
        store.add(_bench(int8, 0.10, samples=True))
        store.add(_bench(fp32, 0.50, samples=False, device=board2))      # percentiles only
        store.add(_bench(other, 0.30, samples=False))
        for model, top1 in ((fp32, 0.9956), (int8, 0.9911)):
            store.add(Record(kind="eval", model=model, device=BOARD,
                             metrics={"top1": top1, "cosine": 0.999, "samples": 450}))
    return url, tmp_path


def _png(path: Path) -> Tuple[int, int]:
    """A PNG's (width, height), checking its signature and that the image is not blank."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    import matplotlib.image

    pixels = matplotlib.image.imread(str(path))
    assert pixels.std() > 0.05, f"{path.name} is (nearly) blank"
    # some plotted colour: not only white, black and greys (the axes and text)
    rgb = pixels[..., :3]
    coloured = (rgb.max(axis=-1) - rgb.min(axis=-1)) > 0.2
    assert coloured.sum() > 200, f"{path.name} has no coloured marks"
    assert zlib.crc32(data) != 0
    return width, height


def test_report_writes_markdown_tables_and_plots(filled: Tuple[str, Path], capsys: Any) -> None:
    url, tmp = filled
    out = tmp / "report"
    assert main(["results", "report", "--db", url, "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["accuracy_latency.png", "latency.png",
                                                     "report.md"]
    text = (out / "report.md").read_text()
    # relative image links, tables inline
    assert "![latency per model and board](latency.png)" in text
    assert "![accuracy against latency](accuracy_latency.png)" in text
    assert str(tmp) not in text
    assert "## Before / after quantization" in text
    assert "### digits_cnn.onnx (ffffffff) -> digits_cnn.int8.onnx (11111111), on board1" in text
    before_after = text.split("### digits_cnn.onnx")[1].split("##")[0]
    assert "| size " in before_after and "351.2 KiB" in before_after and "97.5 KiB" in before_after
    assert "0.28x (-72%)" in before_after                       # size change
    assert "99.56 %" in before_after and "99.11 %" in before_after and "-0.45 pts" in before_after
    assert "0.50x (-50%)" in before_after                       # p50 latency halved
    # the latency table says where each distribution comes from
    assert "raw samples (400)" in text and "stored percentiles" in text
    # accuracy against latency joins eval and bench of the same model and board
    joined = text.split("## Accuracy against latency")[1].split("##")[0]
    assert "digits_cnn.int8.onnx (11111111) | board1" in joined
    assert "other" not in joined                                 # bench only: not joined
    # what was measured where; a | in a name does not break a table
    assert "| board1 " in text and "Cortex-A55" in text and "other\\|model.onnx" in text
    for png in ("latency.png", "accuracy_latency.png"):
        width, height = _png(out / png)
        assert width > 400 and height > 300


def test_pairing_follows_parent_sha256_per_board(filled: Tuple[str, Path]) -> None:
    url, _ = filled
    with ResultsStore.open(url) as store:
        records = store.list(limit=None, newest_first=False)
    report = build_report(records, {})
    pairs = [(a.sha256, b.sha256, b.device) for a, b in report.pairs()]
    assert pairs == [(FP32, INT8, "board1")]       # board2 measured only the float model
    # without the parent's results there is nothing to pair, and the report says so
    alone = build_report([r for r in records if r.model.sha256 != FP32], {})
    assert alone.pairs() == []
    text = render_markdown(alone, {})
    assert "No quantized model in this selection" in text
    assert "Quantized without their float model measured on the same board: " \
           "digits_cnn.int8.onnx (11111111)" in text


def test_filters_select_what_is_reported(filled: Tuple[str, Path]) -> None:
    url, tmp = filled
    out = tmp / "only-board2"
    assert main(["results", "report", "--db", url, "-o", str(out), "--device", "board2"]) == 0
    text = (out / "report.md").read_text()
    assert "selection: --device board2" in text and "1 results (1 bench)" in text
    assert not (out / "accuracy_latency.png").exists()           # no eval on board2
    assert "No model in this selection has both" in text
    _png(out / "latency.png")                                    # percentiles drawn


def test_a_folder_that_is_not_empty_is_refused_unless_forced(filled: Tuple[str, Path],
                                                             capsys: Any) -> None:
    url, tmp = filled
    out = tmp / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["results", "report", "--db", url, "-o", str(out)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert main(["results", "report", "--db", url, "-o", str(out), "--force"]) == 0
    assert {"notes.txt", "report.md", "latency.png"} <= {p.name for p in out.iterdir()}
    assert (out / "notes.txt").read_text() == "mine"
    # an empty folder is fine; no temporary folder is left beside it
    empty = tmp / "empty"
    empty.mkdir()
    assert main(["results", "report", "--db", url, "-o", str(empty), "--no-plots"]) == 0
    assert [p.name for p in empty.iterdir()] == ["report.md"]
    assert not [p for p in tmp.iterdir() if p.name.startswith(".")]


def test_missing_matplotlib_says_which_extra(filled: Tuple[str, Path]) -> None:
    url, tmp = filled
    blocker = ("import sys\n"
               "class Block:\n"
               "    def find_spec(self, name, path=None, target=None):\n"
               "        if name == 'matplotlib' or name.startswith('matplotlib.'):\n"
               "            raise ImportError('No module named ' + repr(name))\n"
               "        return None\n"
               "sys.meta_path.insert(0, Block())\n"
               "from edgetune.host.cli import main\n"
               "sys.exit(main(sys.argv[1:]))\n")
    out = tmp / "no-mpl"
    env = {k: v for k, v in os.environ.items() if k != "EDGETUNE_DB"}
    proc = subprocess.run([sys.executable, "-c", blocker, "results", "report", "--db", url,
                           "-o", str(out)], capture_output=True, text=True, timeout=120,
                          env=env)
    assert proc.returncode == 3, proc.stderr
    assert "matplotlib" in proc.stderr and "pip install 'edgetune[plot]'" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()
    # the Markdown alone needs no matplotlib
    proc = subprocess.run([sys.executable, "-c", blocker, "results", "report", "--db", url,
                           "-o", str(out), "--no-plots"], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert (out / "report.md").is_file() and not (out / "latency.png").exists()


def test_report_json_names_the_files(filled: Tuple[str, Path], capsys: Any) -> None:
    import json

    url, tmp = filled
    capsys.readouterr()
    assert main(["results", "report", "--db", url, "-o", str(tmp / "j"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["results"] == 7 and doc["report"].endswith("report.md")
    assert all(Path(f).is_file() for f in doc["files"])


def test_repeat_sets_and_their_flags_are_reported(tmp_path: Path) -> None:
    model = ModelRef(INT8, "digits_cnn.int8.onnx", 99840, FP32)
    records = []
    for index, (p50, flags) in enumerate(((0.10, []), (0.11, []), (0.15, ["cpu_freq_drop"])),
                                          start=1):
        record = _bench(model, p50, samples=False)
        records.append(Record(kind="bench", model=model, device=BOARD, run_id="RUN1",
                              metrics=record.metrics, options={"repeat": {"index": index,
                                                                          "of": 3}},
                              board_state={"cpu_freq_mhz": 1800.0, "flags": flags},
                              id=f"01TEST{index}"))
    text = render_markdown(build_report(records, {}), {})
    section = text.split("## Repeated measurements")[1].split("## ")[0]
    assert "more than 5 % below" in section and "more than 5 degC above" in section
    row = next(line for line in section.splitlines() if "RUN1" in line)
    assert "| 3 " in row and "| 3   " not in row.split("RUN1")[0]
    assert row.rstrip(" |").endswith("3")                     # the third one flagged
    assert "FLAGGED cpu_freq_drop" in text                     # and in the results table
