"""``analyze FLOAT QUANT --device``: the board's tensors come back in chunks and are compared
on the host. "board vs host INT8" on a real local agent is ~exact; a model change on the
"board" makes one layer depart and flags it; a large tensor arrives in several chunks while
the host holds one sample's references; a board whose agent.toml cannot hold the tensors is
refused saying how many fit; the reader refuses a malformed file. (The previous release's
agent is refused in tests/test_compat_py39.py.)"""

from __future__ import annotations

import json
import math
import struct
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgetune.device.joboutput import MAGIC
from edgetune.host.errors import ExitStatus
from tests.host_fixtures import RunningAgent, local_agent, run_cli, start_agent  # noqa: F401

SAMPLES = Path(__file__).resolve().parent.parent / "host" / "samples"
FLOAT = SAMPLES / "digits_cnn.onnx"
CALIB = SAMPLES / "digits_calib.npz"


@pytest.fixture(scope="module")
def quantized(tmp_path_factory) -> Path:
    from edgetune.host.cli import main
    out = tmp_path_factory.mktemp("q") / "digits.q.onnx"
    assert main(["quantize", str(FLOAT), "-o", str(out), "--calib", str(CALIB),
                 "--no-record"]) == 0
    return out


def test_board_column_is_exact_on_the_local_agent(capsys, local_agent: RunningAgent,
                                                  quantized: Path) -> None:
    r = run_cli(capsys, "analyze", str(FLOAT), str(quantized), "--calib", str(CALIB),
                "--calib-count", "8", *local_agent.conn(), "--json")
    assert r.code == 0, r.err
    board = r.json["board"]
    assert board["samples"] == 8 and board["flagged"] == []
    assert board["thresholds"] == {"board_sqnr_db": 40.0, "board_cosine": 0.9999}
    stream = board["stream"]                           # the tensors came back, not numbers
    assert stream["output_bytes"] > 8 * 23_000 and stream["resumes"] == 0
    assert stream["chunks"] == 1                       # under the agent's 1 MiB chunk
    # the chunk (the whole file here) and one sample's references (2 x 23.9 KB)
    assert stream["output_bytes"] < stream["host_buffer_bytes"] < stream["output_bytes"] + 60_000
    tensors = {t["tensor"]: t for t in board["tensors"]}
    assert {"relu1_out", "relu2_out", "pool_out", "logits"} <= set(tensors)
    for t in tensors.values():
        assert t["board_vs_host_int8"]["cosine"] > 0.999999
        assert t["board_vs_host_int8"]["sqnr_db"] > 100
        assert 0.9 < t["board_vs_fp32"]["cosine"] <= 1.0 + 1e-9
    human = run_cli(capsys, "analyze", str(FLOAT), str(quantized), "--calib", str(CALIB),
                    "--calib-count", "4", *local_agent.conn())
    assert human.code == 0 and "board vs host INT8" in human.out
    assert "below 40 dB or cosine below 0.9999" in human.out
    assert "read back: job" in human.out and "chunk(s)" in human.out


def _changed_on_the_board(quantized: Path) -> bytes:
    """The analysed copy as the host builds it, but conv2's int8 weights off by one step in
    a third of their values: what a board kernel computing conv2 differently would give."""
    from edgetune.host.quant.board_analysis import _augmented, _targets
    fmodel, qmodel = onnx.load(str(FLOAT)), onnx.load(str(quantized))
    names = [q for _, q in _targets(fmodel, qmodel)]
    changed = onnx.load_from_string(_augmented(qmodel, names))
    for init in changed.graph.initializer:
        if init.name == "conv2.weight_quantized":
            w = numpy_helper.to_array(init).astype(np.int16)
            w.reshape(-1)[::3] += 40
            init.CopyFrom(numpy_helper.from_array(np.clip(w, -127, 127).astype(np.int8),
                                                  init.name))
    return changed.SerializeToString()


def test_a_layer_that_differs_on_the_board_is_flagged(local_agent: RunningAgent,
                                                      quantized: Path, tmp_path: Path) -> None:
    from edgetune.host.board import BoardSession
    from edgetune.host.client import AgentClient
    from edgetune.host.quant.board_analysis import board_analysis
    feeds = {"input": np.load(CALIB)["input"][:6]}
    with BoardSession(AgentClient(local_agent.address, local_agent.pki.host.identity),
                      "local") as board:
        result = board_analysis(FLOAT, quantized, feeds, board,
                                sent_model=_changed_on_the_board(quantized))
    flagged = [t.tensor for t in result.flagged()]
    assert "relu2_out" in flagged                      # conv2's output: where it starts
    assert "relu1_out" not in flagged and "input" not in flagged   # upstream: exact
    by_name = {t.tensor: t for t in result.tensors}
    assert by_name["relu1_out"].vs_host_int8["sqnr_db"] > 100
    assert by_name["relu2_out"].vs_host_int8["sqnr_db"] < 40


PLUGIN = Path(__file__).resolve().parent / "plugins" / "ort_plugin.py"


@pytest.fixture(scope="module")
def plugin_board(pki: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    """A real agent with two runner plug-ins (onnxruntime in their own process): "same", and
    "skewed", whose relu2_out comes out 3 % larger: a board kernel computing that layer
    differently, nothing else."""
    work = tmp_path_factory.mktemp("plugin-board")
    config = work / "agent.toml"
    tables = []
    for name, extra in (("same", ()), ("skewed", ("--behave",
                                                  "skew:relu2_out_DequantizeLinear_Output"))):
        argv = ", ".join(f'"{a}"' for a in (sys.executable, str(PLUGIN), *extra))
        tables.append(f'[runners.{name}]\ncommand = [{argv}]\nformats = ["onnx"]\n'
                      "timeout_s = 120\n")
    config.write_text("".join(tables))
    running = start_agent(pki, work, extra_args=["--config", str(config)])
    try:
        yield running
    finally:
        running.agent.stop()


def test_a_runner_plugin_whose_kernel_differs_gets_that_layer_flagged(
        capsys, plugin_board: RunningAgent, quantized: Path) -> None:
    common = ("analyze", str(FLOAT), str(quantized), "--calib", str(CALIB), "--calib-count",
              "8", *plugin_board.conn(), "--json")
    same = run_cli(capsys, *common, "--runner", "same")
    assert same.code == 0, same.err
    assert same.json["board"]["flagged"] == []
    skewed = run_cli(capsys, *common, "--runner", "skewed")
    assert skewed.code == 0, skewed.err
    board = skewed.json["board"]
    assert board["flagged"] == ["relu2_out"]
    tensors = {t["tensor"]: t["board_vs_host_int8"] for t in board["tensors"]}
    assert tensors["relu2_out"]["sqnr_db"] == pytest.approx(20 * math.log10(1 / 0.03), abs=0.1)
    for name, numbers in tensors.items():
        if name != "relu2_out":
            assert numbers["sqnr_db"] > 60, (name, numbers)
    missing = run_cli(capsys, *common, "--runner", "npu")
    assert missing.code == ExitStatus.BAD_INPUT and "has no runner 'npu'" in missing.out


@pytest.fixture(scope="module")
def small_board(pki: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    """A real agent whose agent.toml keeps a job's output to 64 KiB."""
    work = tmp_path_factory.mktemp("small-board")
    config = work / "agent.toml"
    config.write_text("[limits]\nmax_job_output_bytes = 65536\n")
    running = start_agent(pki, work, extra_args=["--config", str(config)])
    try:
        yield running
    finally:
        running.agent.stop()


def test_a_board_too_small_for_the_tensors(capsys, small_board: RunningAgent,
                                           quantized: Path) -> None:
    """The 8 digits tensors take 23.9 KB a sample (headers included): 8 samples need 191 KB;
    the 5 smallest take 57.5 KB, within the board's 64 KiB; the 6th would not be."""
    r = run_cli(capsys, "analyze", str(FLOAT), str(quantized), "--calib", str(CALIB),
                "--calib-count", "8", *small_board.conn())
    assert r.code == ExitStatus.BAD_INPUT, (r.code, r.err)
    assert "the 8 tensors asked for take 186.6 KiB over 8 samples" in r.err, r.err
    assert "max_job_output_bytes" in r.err and "5 of the 8 tensors fit" in r.err
    assert "--board-samples" in r.err
    assert not list((small_board.store / "models").glob("*.onnx"))   # nothing was sent
    fewer = run_cli(capsys, "analyze", str(FLOAT), str(quantized), "--calib", str(CALIB),
                    "--calib-count", "8", "--board-samples", "2", *small_board.conn(), "--json")
    assert fewer.code == 0, fewer.err
    assert fewer.json["board"]["samples"] == 2 and fewer.json["board"]["flagged"] == []


def _wide_cnn(path: Path) -> Path:
    """A float CNN whose first activation is large: 16 x 64 x 64 floats (256 KiB) a sample."""
    from onnx import TensorProto, helper
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32),
                                       name)
               for name, shape in (("w1", (16, 1, 3, 3)), ("b1", (16,)),
                                   ("w2", (4, 16, 3, 3)), ("b2", (4,)))]
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["conv1_out"], name="conv1",
                              pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv1_out"], ["relu1_out"], name="relu1"),
             helper.make_node("Conv", ["relu1_out", "w2", "b2"], ["conv2_out"], name="conv2",
                              pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv2_out"], ["relu2_out"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["relu2_out"], ["pool_out"], name="pool"),
             helper.make_node("Flatten", ["pool_out"], ["out"], name="flatten")]
    graph = helper.make_graph(
        nodes, "wide", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                      ["batch", 1, 64, 64])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 4])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_a_large_tensor_arrives_in_several_chunks_and_the_host_holds_one_sample(
        local_agent: RunningAgent, tmp_path: Path) -> None:
    from edgetune.host.board import BoardSession
    from edgetune.host.cli import main
    from edgetune.host.client import AgentClient
    from edgetune.host.quant.board_analysis import board_analysis
    fmodel = _wide_cnn(tmp_path / "wide.onnx")
    x = np.random.default_rng(1).random((16, 1, 64, 64), dtype=np.float32)
    np.savez(str(tmp_path / "calib.npz"), input=x)
    qmodel = tmp_path / "wide.q.onnx"
    assert main(["quantize", str(fmodel), "-o", str(qmodel), "--calib",
                 str(tmp_path / "calib.npz"), "--no-record"]) == 0
    chunk = 64 << 10
    with BoardSession(AgentClient(local_agent.address, local_agent.pki.host.identity),
                      "local") as board:
        result = board_analysis(fmodel, qmodel, {"input": x[:8]}, board, chunk_bytes=chunk)
    stream = result.stream
    assert stream is not None and stream.resumes == 0
    assert stream.output_bytes > 8 * (256 << 10)
    assert stream.chunks == math.ceil(stream.output_bytes / chunk) >= 32
    by_name = {t.tensor: t for t in result.tensors}
    assert by_name["relu1_out"].vs_host_int8["sqnr_db"] > 100      # 4 chunks a sample, exact
    assert result.flagged() == []
    # One sample's references (INT8 and FP32: 2 x ~340 KiB) and one chunk, never the file.
    one_sample = 2 * (16 + 256 + 64 + 4) * 1024
    assert stream.host_buffer_bytes <= one_sample + chunk + (64 << 10)
    assert stream.host_buffer_bytes < stream.output_bytes / 3


class _Refs:
    """A HostReference stand-in for the reader: fixed tensors for every sample."""

    def __init__(self, int8: Any) -> None:
        self.int8, self.fp32 = int8, {}

    def __call__(self, sample: int) -> "_Refs":
        return self


def _record(sample: int, name: str, value: np.ndarray, **override: Any) -> bytes:
    head = {"sample": sample, "name": name, "dtype": "float32", "shape": list(value.shape),
            "bytes": int(value.nbytes), **override}
    text = json.dumps(head).encode()
    return struct.pack("<I", len(text)) + text + value.astype(np.float32).tobytes()


@pytest.mark.parametrize("make, words", [
    (lambda a: b"not-a-job-output-file!\n" + _record(0, "t", a), "does not start with"),
    (lambda a: MAGIC + _record(0, "u", a), "'u' of sample 0 where 't' of sample 0"),
    (lambda a: MAGIC + _record(1, "t", a), "'t' of sample 1 where 't' of sample 0"),
    (lambda a: MAGIC + _record(0, "t", a) + _record(1, "t", a) + _record(2, "t", a),
     "more than the 2 samples"),
    (lambda a: MAGIC + _record(0, "t", a)[:-3], "ended early: 't' of sample 0 is cut short"),
    (lambda a: MAGIC + _record(0, "t", a), "ended early: 't' of sample 1"),
    (lambda a: MAGIC + struct.pack("<I", 1 << 20), "record header of 1048576 bytes"),
    (lambda a: MAGIC + struct.pack("<I", 4) + b"{}{}", "malformed record"),
    (lambda a: MAGIC + _record(0, "t", a, bytes=3), "says 3 bytes"),
    (lambda a: MAGIC + _record(0, "t", a, dtype="object"), "bytes of object"),
    (lambda a: MAGIC + _record(0, "t", np.zeros(5, np.float32)), "the board ran another model"),
])
def test_the_reader_refuses_a_malformed_file(make: Any, words: str) -> None:
    from edgetune.host.errors import AgentError
    from edgetune.host.quant.board_analysis import OutputReader
    a = np.arange(6, dtype=np.float32)
    raw = make(a)
    reader = OutputReader(2, [("t", "t")], _Refs({"t": a}))
    with pytest.raises(AgentError) as err:
        for i in range(0, len(raw), 7):                  # in small, odd pieces
            reader.feed(raw[i:i + 7])
        reader.finish()
    assert words in err.value.message, err.value.message


def test_the_reader_compares_across_odd_chunk_boundaries() -> None:
    from edgetune.host.quant.board_analysis import OutputReader
    a = np.linspace(-1, 1, 37, dtype=np.float32)
    b = a + np.float32(0.01)
    raw = MAGIC + _record(0, "t", a) + _record(1, "t", b)
    reader = OutputReader(2, [("t", "t")], _Refs({"t": a}))
    for i in range(0, len(raw), 5):
        reader.feed(raw[i:i + 5])
    reader.finish()
    got = reader.vs_int8["t"].result()
    err = float(np.sum((a.astype(np.float64) - b) ** 2))
    expected = 10 * math.log10(2 * float(np.sum(a.astype(np.float64) ** 2)) / err)
    assert got["sqnr_db"] == pytest.approx(expected, rel=1e-9)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    cos_b = float(np.dot(a64, b64) / np.linalg.norm(a64) / np.linalg.norm(b64))
    assert got["cosine"] == pytest.approx((1.0 + cos_b) / 2, rel=1e-9)


def test_board_flags_need_a_board(capsys, quantized: Path) -> None:
    r = run_cli(capsys, "analyze", str(FLOAT), str(quantized), "--calib", str(CALIB),
                "--board-samples", "4")
    assert r.code == ExitStatus.USAGE and "need a board" in r.err
