"""What the board commands tell the user beyond the result, in-process through
``edgetune.host.cli.main`` against a real agent subprocess (mutual TLS) whose ``[limits]
max_iterations`` is small: a ``--duration`` run cut short by it, an upload ``--name`` that
did not apply, and the help of the connection flags."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgetune.host.cli import build_parser
from tests.host_fixtures import DIGITS_MODEL, ONE_DIGIT, RunningAgent, run_cli, start_agent

MAX_ITERATIONS = 300


@pytest.fixture(scope="module")
def small_agent(pki: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    """An agent that stops every run after MAX_ITERATIONS measured iterations."""
    workdir = tmp_path_factory.mktemp("small-agent")
    config = workdir / "agent.toml"
    config.write_text(f"[limits]\nmax_iterations = {MAX_ITERATIONS}\n")
    running = start_agent(pki, workdir, extra_args=["--config", str(config)])
    try:
        yield running
    finally:
        running.agent.stop()


def test_duration_run_stopped_by_max_iterations_says_so(capsys: pytest.CaptureFixture,
                                                        small_agent: RunningAgent) -> None:
    args = ["bench", str(DIGITS_MODEL), "--shape", ONE_DIGIT, "--duration", "5",
            *small_agent.conn()]
    r = run_cli(capsys, *args, "--json")
    assert r.code == 0, r.out
    (record,) = r.json["results"]
    assert record["iterations"] == MAX_ITERATIONS and record["measured_s"] < 5
    assert record["note"].startswith(f"stopped after {MAX_ITERATIONS} iterations at ")
    assert "of the 5 s asked" in record["note"]
    assert "max_iterations limit ([limits] max_iterations" in record["note"]

    r = run_cli(capsys, *args)
    assert r.code == 0, r.err
    warnings = [line for line in r.err.splitlines() if line.startswith("edgetune: warning:")]
    assert len(warnings) == 1
    assert f"digits_cnn.onnx: stopped after {MAX_ITERATIONS} iterations" in warnings[0]
    assert "max_iterations" in warnings[0]

    # A fixed count (or a duration that ran its course) needs no note.
    r = run_cli(capsys, "bench", str(DIGITS_MODEL), "--shape", ONE_DIGIT, "--iterations", "5",
                *small_agent.conn(), "--json")
    assert r.code == 0 and "note" not in r.json["results"][0]
    r = run_cli(capsys, "jobs", "watch", record["job_id"], *small_agent.conn(), "--json")
    assert r.json["results"][0]["note"] == record["note"]       # re-attaching says it too


def labelled_model(path: Path) -> Path:
    w = np.random.default_rng(int(time.time() * 1000) % 2**31).standard_normal((8, 2))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="matmul")], "labelled",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [numpy_helper.from_array(w.astype(np.float32), "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                ir_version=9), path)
    return path


def test_upload_name_of_a_stored_blob_says_the_stored_name_stays(
        capsys: pytest.CaptureFixture, small_agent: RunningAgent, tmp_path: Path) -> None:
    model = labelled_model(tmp_path / "m.onnx")
    first = run_cli(capsys, "models", "upload", str(model), "--name", "first",
                    *small_agent.conn(), "--json")
    assert first.code == 0 and first.json["uploads"][0]["name"] == "first"
    assert "note" not in first.json["uploads"][0]

    again = run_cli(capsys, "models", "upload", str(model), "--name", "second",
                    *small_agent.conn(), "--json")
    (entry,) = again.json["uploads"]
    assert entry["already_present"] and entry["name"] == "first"
    assert entry["note"] == ("already stored on the board as 'first'; the name 'second' was "
                             "not applied (the stored name stays)")

    human = run_cli(capsys, "models", "upload", str(model), "--name", "second",
                    *small_agent.conn())
    assert human.code == 0
    assert "m.onnx: already stored on the board as 'first'" in human.err
    listed = run_cli(capsys, "models", "list", *small_agent.conn(), "--json")
    assert [m["name"] for m in listed.json["models"] if m["sha256"] == entry["sha256"]] == \
        ["first"]
    same = run_cli(capsys, "models", "upload", str(model), "--name", "first",
                   *small_agent.conn(), "--json")
    assert "note" not in same.json["uploads"][0]                 # nothing to say


@pytest.mark.parametrize("command", [["info"], ["models", "list"], ["jobs", "watch", "x"],
                                     ["bench", "m.onnx"], ["eval", "m.onnx", "--dataset", "d"]])
def test_passphrase_file_help_of_board_commands(capsys: pytest.CaptureFixture,
                                                command: Any) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args([*command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--passphrase-file FILE read the passphrase of this PC's key" in text
    assert "twice" not in text and "new key" not in text
