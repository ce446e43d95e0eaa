"""Perf-based fallback (--fallback-by latency): candidates chosen by their measured latency.

The selection is checked twice: with a deterministic cost of a model (so the test knows which
choice is right), and end to end through the CLI against a real agent in its own process,
where every candidate is benchmarked by a board job.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import pytest

from edgetune.host.errors import ExitStatus, UsageError
from edgetune.host.quant.calibdata import CalibrationData
from edgetune.host.quant.evaluate import LocalEvaluator
from edgetune.host.quant.fallback import run_fallback
from edgetune.host.quant.settings import CalibSource, FallbackSettings, QuantizeSettings
from tests.host_fixtures import RunningAgent, local_agent, run_cli  # noqa: F401

SAMPLES = Path(__file__).resolve().parent.parent / "host" / "samples"
DIGITS = SAMPLES / "digits_cnn.onnx"
CALIB = SAMPLES / "digits_calib.npz"
TEST = SAMPLES / "digits_test.npz"
# onnxruntime's entropy search clips this Relu CNN hard (87.8% top-1): the fallback has work.
BROKEN = ["--method", "entropy", "--entropy-compat", "ort", "--calib-count", "64"]


def _settings(tmp_path: Path, name: str) -> QuantizeSettings:
    return QuantizeSettings(model=DIGITS, output=tmp_path / name, calib=(CalibSource(CALIB),),
                            calib_count=64, method="entropy", entropy_compat="ort")


def _data() -> CalibrationData:
    return CalibrationData.from_arrays({"input": np.load(CALIB)["input"][:64]})


def _int16_tensors(path: Path) -> int:
    model = onnx.load(str(path))
    int16 = {i.name for i in model.graph.initializer
             if i.data_type in (onnx.TensorProto.INT16, onnx.TensorProto.UINT16)}
    return sum(1 for n in model.graph.node
               if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in int16)


def _float_layers(path: Path) -> int:
    model = onnx.load(str(path))
    weights = {i.name for i in model.graph.initializer}
    return sum(1 for n in model.graph.node
               if n.op_type in ("Conv", "Gemm") and n.input[1] in weights)


def _run(tmp_path: Path, cost: Callable[[Path], float], name: str) -> Any:
    fb = FallbackSettings(max_drop=0.01, eval_dataset=TEST, metric="top1", by="latency")
    return run_fallback(_settings(tmp_path, name), fb, data=_data(),
                        evaluator=LocalEvaluator(TEST), latency=cost)


@pytest.mark.slow
def test_int16_that_costs_time_makes_it_choose_float(tmp_path: Path) -> None:
    seen = []

    def cost(path: Path) -> float:
        seen.append(path.name)
        return 1.0 + 10.0 * _int16_tensors(path)

    report = _run(tmp_path, cost, "a.onnx")
    assert report.met and report.by == "latency" and report.strategy == "latency"
    assert report.float_layers and not report.int16_layers
    # the written model is the fastest met candidate, as measured
    met = [s for s in report.steps[1:] if s.met]
    assert report.best.latency_ms == min(s.latency_ms for s in met)
    assert _int16_tensors(report.output) == 0
    # the float model, the all-int8 model and every candidate: one measurement each
    assert len(seen) == len(report.steps) and all(s.latency_ms for s in report.steps)
    assert json.loads(report.fallback_record.read_text())["by"] == "latency"


@pytest.mark.slow
def test_float_that_costs_time_makes_it_choose_int16(tmp_path: Path) -> None:
    report = _run(tmp_path, lambda p: 1.0 + 10.0 * _float_layers(p), "b.onnx")
    assert report.met and report.int16_layers and not report.float_layers
    assert _float_layers(report.output) == 0 and _int16_tensors(report.output) > 0


def test_latency_without_a_board_is_refused(tmp_path: Path) -> None:
    fb = FallbackSettings(max_drop=0.01, eval_dataset=TEST, by="latency")
    with pytest.raises(UsageError, match="measures every candidate on a board"):
        run_fallback(_settings(tmp_path, "d.onnx"), fb, data=_data())
    assert not (tmp_path / "d.onnx").exists()
    with pytest.raises(UsageError, match="unknown --fallback-by 'speed'"):
        run_fallback(_settings(tmp_path, "d.onnx"),
                     FallbackSettings(max_drop=0.01, eval_dataset=TEST, by="speed"),
                     data=_data())


def test_cli_without_device_is_a_usage_error(tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "e.onnx"
    result = run_cli(capsys, "quantize", str(DIGITS), "-o", str(out), "--calib", str(CALIB),
                     *BROKEN, "--max-drop", "0.01", "--eval", str(TEST),
                     "--fallback-by", "latency", "--no-record")
    assert result.code == ExitStatus.USAGE, result.err
    assert "--fallback-by latency measures every candidate on a board" in result.err
    assert not out.exists()


@pytest.mark.slow
def test_on_a_real_agent_every_candidate_is_a_benchmark_job(
        tmp_path: Path, capsys: Any, local_agent: RunningAgent) -> None:  # noqa: F811
    before = run_cli(capsys, "jobs", "list", "--limit", "500", *local_agent.conn(), "--json")
    known = {j["id"] for j in before.json["jobs"]}
    out = tmp_path / "board.onnx"
    result = run_cli(capsys, "quantize", str(DIGITS), "-o", str(out), "--calib", str(CALIB),
                     *BROKEN, "--max-drop", "0.01", "--eval", str(TEST), "--metric", "top1",
                     "--fallback-by", "latency", "--max-steps", "8", *local_agent.conn(),
                     "--no-record", "--json")
    assert result.code == ExitStatus.OK, result.err
    fb = result.json["fallback"]
    assert fb["by"] == "latency" and fb["met"] is True
    assert fb["evaluator"].startswith("agent at 127.0.0.1")
    steps = fb["steps"]
    assert all(s["latency_ms"] and s["latency_ms"] > 0 for s in steps)
    met = [s for s in steps[1:] if s["met"]]
    assert steps[fb["best_step"]]["latency_ms"] == min(s["latency_ms"] for s in met)
    assert out.is_file()
    # each step's latency is a benchmark job on the board (distinct models: one job each)
    after = run_cli(capsys, "jobs", "list", "--limit", "500", *local_agent.conn(), "--json")
    new = [j for j in after.json["jobs"] if j["id"] not in known]
    benchmarks = [j for j in new if j["kind"] == "benchmark"]
    assert len(benchmarks) == len(steps)
    assert all(j["state"] == "succeeded" and "fallback latency" in j["label"]
               for j in benchmarks)
    assert {j["result"]["latency"]["p50_ms"] for j in benchmarks} == \
        {s["latency_ms"] for s in steps}
