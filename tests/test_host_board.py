"""``BoardSession`` end to end against a real agent subprocess over real mutual TLS: typed,
frozen results (benchmark, evaluation, the board's info, the options), a re-upload deduped, a
dropped watch re-attached, every result through the one recording hook; and the rule that
nothing on the host but ``host/board.py`` uploads, submits or waits (an AST scan)."""

from __future__ import annotations

import ast
import dataclasses
import threading
from pathlib import Path
from typing import Any, List

import pytest

from edgetune.host.board import (BenchmarkRun, BlobRef, BoardInfo, BoardSession, EvaluationRun,
                                 run_from_job)
from edgetune.host.client import AgentClient
from edgetune.protos.messages import (BenchmarkSpec, BlobKind, EvaluateSpec, Job, JobEvent,
                                      JobState, SessionOptions)
from tests.host_fixtures import (DIGITS_MODEL, DIGITS_TEST, RunningAgent, TcpProxy,  # noqa: F401
                                 local_agent)

ONE = SessionOptions(input_shapes=(("input", (1, 1, 8, 8)),))
HOST = Path(__file__).resolve().parents[1] / "host"


@pytest.fixture()
def board(local_agent: RunningAgent) -> Any:
    recorded: List[Any] = []
    client = AgentClient(local_agent.address, local_agent.pki.host.identity)
    with BoardSession(client, "board1", recorder=recorded.append) as session:
        session.recorded = recorded          # type: ignore[attr-defined]
        yield session


def test_benchmark_returns_a_typed_frozen_result_and_records_it(board: BoardSession) -> None:
    spec = BenchmarkSpec(model_sha256="", session=ONE, iterations=20, warmup=2)
    run = board.benchmark(DIGITS_MODEL, spec, label="typed")
    assert isinstance(run, BenchmarkRun) and run.ok and run.state is JobState.SUCCEEDED
    assert run.model == str(DIGITS_MODEL) and len(run.model_sha256) == 64 and run.job_id
    assert run.options == dataclasses.replace(spec, model_sha256=run.model_sha256)
    assert run.result is not None and run.result.iterations == 20
    assert run.result.latency.p50_ms > 0 and run.label == "typed"
    assert run.board.name == "board1" and run.board.address == board.address
    assert run.board.agent is not None and run.board.agent.agent_name == "board1"
    assert board.recorded == [run]                                   # type: ignore[attr-defined]
    for frozen in (run, run.board, run.result, run.options):
        with pytest.raises(dataclasses.FrozenInstanceError):
            frozen.job_id = "x"                                      # type: ignore[misc,union-attr]


def test_evaluate_uploads_both_and_returns_metrics(board: BoardSession) -> None:
    run = board.evaluate(DIGITS_MODEL, DIGITS_TEST,
                         EvaluateSpec(model_sha256="", dataset_sha256="", metrics=("top1",)))
    assert isinstance(run, EvaluationRun) and run.ok
    assert len(run.dataset_sha256) == 64 and run.dataset_sha256 != run.model_sha256
    assert run.result is not None and run.result.samples == 450
    assert run.result.metric_dict()["top1"] >= 0.97
    assert board.recorded == [run]                                   # type: ignore[attr-defined]


def test_a_second_upload_is_deduplicated(board: BoardSession, tmp_path: Path) -> None:
    model = tmp_path / "copy.onnx"
    model.write_bytes(DIGITS_MODEL.read_bytes() + b"")              # same bytes, another file
    first = board.upload(model, BlobKind.MODEL)
    again = board.upload(model, BlobKind.MODEL)
    assert again.blob.sha256 == first.blob.sha256
    assert again.sent_bytes == 0 and again.already_present
    # A benchmark of the same file uploads nothing either, and names the model by its hash.
    by_hash = board.benchmark(BlobRef("m", BlobKind.MODEL, sha256=first.blob.sha256[:10]),
                              BenchmarkSpec(model_sha256="", session=ONE, iterations=3))
    assert by_hash.ok and by_hash.model_sha256 == first.blob.sha256


def test_a_dropped_watch_is_reattached_and_still_gives_a_typed_result(
        local_agent: RunningAgent, caplog: pytest.LogCaptureFixture) -> None:
    proxy = TcpProxy(local_agent.address)
    recorded: List[Any] = []
    try:
        client = AgentClient(proxy.address, local_agent.pki.host.identity)
        with BoardSession(client, "via-proxy", recorder=recorded.append) as session:
            cut = threading.Event()

            def on_event(event: JobEvent) -> None:
                if event.state is JobState.RUNNING and not cut.is_set():
                    cut.set()
                    proxy.cut()

            run = session.benchmark(DIGITS_MODEL, BenchmarkSpec(
                model_sha256="", session=ONE, iterations=0, min_duration_s=1.5),
                on_event=on_event)
        assert cut.is_set() and "re-attaching" in caplog.text
        assert isinstance(run, BenchmarkRun) and run.ok and run.result.iterations > 0
        assert recorded == [run] and run.board.name == "via-proxy"
    finally:
        proxy.close()


def test_a_failed_job_is_a_typed_result_with_its_error() -> None:
    job = Job(id="j9", state=JobState.FAILED, spec=BenchmarkSpec(model_sha256="ab" * 32),
              error="boom", label="x")
    run = run_from_job(job, "m.onnx", BoardInfo("b", "h:1"))
    assert isinstance(run, BenchmarkRun) and not run.ok
    assert (run.result, run.error, run.job_id, run.label) == (None, "boom", "j9", "x")


# ---------------------------------------------------------------------- one path

JOB_METHODS = {"upload", "submit", "wait", "run"}
ALLOWED = {HOST / "board.py", HOST / "client.py"}


def job_calls(source: str) -> List[str]:
    """``x.client.upload(...)``, ``client.run(...)``...: calls of the client's upload, submit,
    wait or run methods on anything named ``client``/``*_client``/``.client``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in JOB_METHODS):
            continue
        owner = node.func.value
        name = owner.attr if isinstance(owner, ast.Attribute) else \
            owner.id if isinstance(owner, ast.Name) else ""
        if name == "client" or name.endswith("_client"):
            found.append(f"line {node.lineno}: {name}.{node.func.attr}()")
    return found


def test_the_scan_finds_a_direct_client_call() -> None:
    assert job_calls("def f(client):\n    client.upload(p, k)\n") == ["line 2: client.upload()"]
    assert job_calls("self.client.run(spec)") == ["line 1: client.run()"]
    assert job_calls("board.run(spec)\nclient.info()") == []


def test_only_board_py_uploads_submits_or_waits() -> None:
    offenders = {}
    for path in sorted(HOST.rglob("*.py")):
        if path in ALLOWED:
            continue
        calls = job_calls(path.read_text(encoding="utf-8"))
        if calls:
            offenders[str(path.relative_to(HOST))] = calls
    assert offenders == {}, f"go through edgetune.host.board.BoardSession instead: {offenders}"
