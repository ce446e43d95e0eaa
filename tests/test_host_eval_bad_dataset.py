"""`edgetune eval` with a dataset that does not fit the model, or holds pickled objects:
a clear error naming the mismatch, and the agent keeps serving."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgetune.host.errors import ExitStatus
from tests.host_fixtures import DIGITS_MODEL, RunningAgent, local_agent, run_cli  # noqa: F401


def test_dataset_whose_arrays_do_not_match_the_model_inputs(
        capsys: pytest.CaptureFixture, local_agent: RunningAgent, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, pixels=np.zeros((4, 1, 8, 8), np.float32), labels=np.zeros(4, np.int64))
    r = run_cli(capsys, "eval", str(DIGITS_MODEL), "--dataset", str(wrong),
                *local_agent.conn(), "--json")
    assert r.code != 0
    text = r.out + r.err
    assert "name each array after a model input" in text and "input" in text
    info = run_cli(capsys, "info", *local_agent.conn(), "--json")   # still serving
    assert info.code == 0


def test_dataset_with_the_wrong_shape_names_the_expected_shape(
        capsys: pytest.CaptureFixture, local_agent: RunningAgent, tmp_path: Path) -> None:
    wrong = tmp_path / "shape.npz"
    np.savez(wrong, input=np.zeros((4, 3, 8, 8), np.float32), labels=np.zeros(4, np.int64))
    r = run_cli(capsys, "eval", str(DIGITS_MODEL), "--dataset", str(wrong),
                *local_agent.conn(), "--json")
    assert r.code != 0
    assert "input" in (r.out + r.err)


def test_pickled_dataset_is_refused_at_upload(
        capsys: pytest.CaptureFixture, local_agent: RunningAgent, tmp_path: Path) -> None:
    evil = tmp_path / "evil.npz"
    np.savez(evil, input=np.array([{"a": 1}, {"b": 2}], dtype=object))
    r = run_cli(capsys, "eval", str(DIGITS_MODEL), "--dataset", str(evil),
                *local_agent.conn(), "--json")
    assert r.code == ExitStatus.BAD_INPUT, (r.code, r.out, r.err)
    assert "pickled" in (r.out + r.err)
