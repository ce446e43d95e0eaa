"""Runner plug-ins through a real agent over mutual TLS: the board's agent.toml registers them,
``edgetune info`` lists them, ``bench``/``eval --runner NAME`` run on them, an opaque ``.om``
model is refused by onnxruntime and taken by a plug-in that declares "om", and a crash, a hang
past its timeout and garbage each fail their job with a clear error while the agent goes on
serving. The plug-in: tests/plugins/ort_plugin.py (onnxruntime in its own process)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterator

import onnx
import pytest

from edgetune.host.errors import ExitStatus
from tests.host_fixtures import (DIGITS_MODEL, DIGITS_TEST, ONE_DIGIT, RunningAgent, run_cli,
                                 start_agent)

PLUGIN = Path(__file__).resolve().parent / "plugins" / "ort_plugin.py"


def _table(name: str, *args: str, formats: str = '["onnx", "om"]', timeout: float = 60) -> str:
    argv = ", ".join(f'"{a}"' for a in (sys.executable, str(PLUGIN), *args))
    return f"[runners.{name}]\ncommand = [{argv}]\nformats = {formats}\ntimeout_s = {timeout}\n"


@pytest.fixture(scope="module")
def agent(pki: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    work = tmp_path_factory.mktemp("plugin-agent")
    config = work / "agent.toml"
    config.write_text(_table("npu") + _table("crash", "--behave", "crash")
                      + _table("hang", "--behave", "hang", timeout=2)
                      + _table("garbage", "--behave", "garbage"))
    running = start_agent(pki, work, extra_args=["--config", str(config)])
    try:
        yield running
    finally:
        running.agent.stop()


def bench(capsys: Any, agent: RunningAgent, model: Path, *flags: str) -> Any:
    return run_cli(capsys, "bench", str(model), "--shape", ONE_DIGIT, "--iterations", "20",
                   "--warmup", "2", "--no-lease", *flags, *agent.conn(), "--json")


def test_info_lists_the_boards_runners(capsys: Any, agent: RunningAgent) -> None:
    info = run_cli(capsys, "info", *agent.conn(), "--json")
    assert info.code == 0, info.err
    assert "runners" in info.json["features"]
    assert {r["name"]: r["formats"] for r in info.json["runners"]} == {
        "crash": ["onnx", "om"], "garbage": ["onnx", "om"], "hang": ["onnx", "om"],
        "npu": ["onnx", "om"]}
    assert not any(r["can_profile"] for r in info.json["runners"])


def test_bench_and_eval_on_a_plugin(capsys: Any, agent: RunningAgent) -> None:
    r = bench(capsys, agent, DIGITS_MODEL, "--runner", "npu")
    assert r.code == 0, r.out + r.err
    (result,) = r.json["results"]
    assert result["iterations"] == 20 and 0 < result["latency_ms"]["p50"] < 1000
    plug = run_cli(capsys, "eval", str(DIGITS_MODEL), "--dataset", str(DIGITS_TEST),
                   "--runner", "npu", *agent.conn(), "--json")
    own = run_cli(capsys, "eval", str(DIGITS_MODEL), "--dataset", str(DIGITS_TEST),
                  *agent.conn(), "--json")
    assert plug.code == own.code == 0, plug.out + own.out
    top1 = [x.json["results"][0]["metrics"]["top1"] for x in (plug, own)]
    assert top1[0] == top1[1] > 0.9


@pytest.mark.parametrize("name, words", [
    ("crash", ["runner 'crash' was killed by signal", "the NPU driver is gone"]),
    ("hang", ["runner 'hang' did not finish within its timeout of 2 s"]),
    ("garbage", ["runner 'garbage' printed line 1 that is not the protocol's JSON"]),
])
def test_a_failing_plugin_fails_its_job_and_the_agent_serves_on(
        capsys: Any, agent: RunningAgent, name: str, words: Any) -> None:
    r = bench(capsys, agent, DIGITS_MODEL, "--runner", name)
    assert r.code == ExitStatus.AGENT, r.out + r.err
    text = r.out + r.err
    for word in words:
        assert word in text
    again = bench(capsys, agent, DIGITS_MODEL, "--runner", "npu")
    assert again.code == 0, again.out + again.err


def test_a_runner_the_board_lacks_is_refused_naming_its_runners(capsys: Any,
                                                                agent: RunningAgent) -> None:
    r = bench(capsys, agent, DIGITS_MODEL, "--runner", "vpu")
    assert r.code == ExitStatus.BAD_INPUT, r.out + r.err
    assert "has no runner 'vpu'; its runners: crash (onnx/om), garbage (onnx/om), " \
           "hang (onnx/om), npu (onnx/om)" in r.out + r.err


def test_profile_with_a_plugin_is_refused(capsys: Any, agent: RunningAgent) -> None:
    r = bench(capsys, agent, DIGITS_MODEL, "--runner", "npu", "--profile")
    assert r.code == ExitStatus.BAD_INPUT, r.out + r.err
    assert "runner 'npu' cannot profile operators" in r.out + r.err


def test_an_om_model_is_refused_by_onnxruntime_and_run_by_a_plugin(
        capsys: Any, agent: RunningAgent, tmp_path: Path) -> None:
    model = onnx.load(str(DIGITS_MODEL))
    model.doc_string = "compiled for the NPU"         # bytes of its own, sent as "om"
    om = tmp_path / "digits.om"
    om.write_bytes(model.SerializeToString())
    refused = bench(capsys, agent, om)
    assert refused.code == ExitStatus.BAD_INPUT, refused.out + refused.err
    assert "the model is a 'om' file and onnxruntime cannot run it; run it with --runner " \
           "crash" in refused.out + refused.err
    r = bench(capsys, agent, om, "--runner", "npu")
    assert r.code == 0, r.out + r.err
    assert r.json["results"][0]["iterations"] == 20
    listed = run_cli(capsys, "models", "list", *agent.conn(), "--json")
    assert listed.code == 0, listed.err
    assert "om" in [b.get("format") for b in (listed.json if isinstance(listed.json, list)
                                              else listed.json["models"])]
    table = run_cli(capsys, "models", "list", *agent.conn())
    assert table.code == 0 and "format" in table.out and "digits.om" in table.out


def test_a_models_format_comes_from_its_suffix_or_format() -> None:
    from edgetune.host.board import model_format
    from edgetune.host.errors import UsageError

    assert [model_format(Path(p)) for p in ("m.onnx", "m.ONNX", "m", "m.om", "m.nb",
                                            "m.aipu", "m.v2")] == \
        ["onnx", "onnx", "onnx", "om", "nb", "aipu", "onnx"]
    assert model_format(Path("m.om"), "onnx") == "onnx"       # --format overrides
    assert model_format(Path("m.onnx"), "rknn") == "rknn"
    with pytest.raises(UsageError, match="--format 'OM!'"):
        model_format(Path("m.om"), "OM!")


def test_the_agent_itself_refuses_what_a_runner_cannot_do(agent: RunningAgent,
                                                          tmp_path: Path) -> None:
    """Straight to SubmitJob (no host-side check): the agent's own refusals."""
    from edgetune.host.client import AgentClient
    from edgetune.host.errors import EdgetuneError
    from edgetune.protos.messages import BenchmarkSpec, BlobKind, SessionOptions

    shape = SessionOptions(input_shapes=(("input", (1, 1, 8, 8)),))
    with AgentClient(agent.address, agent.pki.host.identity) as client:
        sha = client.upload(DIGITS_MODEL, BlobKind.MODEL).blob.sha256
        for spec, words in [
                (BenchmarkSpec(sha, shape, runner="vpu"), "this board has no runner 'vpu'; its "
                 "runners: crash (onnx/om), garbage (onnx/om), hang (onnx/om), npu (onnx/om)"),
                (BenchmarkSpec(sha, shape, runner="npu", profile=True),
                 "runner 'npu' cannot profile operators"),
                (BenchmarkSpec(sha, SessionOptions(input_shapes=shape.input_shapes,
                                                   intra_op_threads=2), runner="npu"),
                 "session options")]:
            with pytest.raises(EdgetuneError) as refused:
                client.submit(spec)
            assert refused.value.exit_status == ExitStatus.BAD_INPUT
            assert words in refused.value.message
        nb = tmp_path / "model.nb"
        nb.write_bytes(b"\x00vendor graph" * 64)
        blob = client.upload(nb, BlobKind.MODEL, format="nb").blob
        assert blob.format == "nb"
        with pytest.raises(EdgetuneError) as refused:
            client.submit(BenchmarkSpec(blob.sha256, shape))
        assert "a 'nb' file and onnxruntime cannot run it; this board has no runner for 'nb'" \
            in refused.value.message
