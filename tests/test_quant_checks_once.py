"""Each check of the quantize and fallback settings is made in one place, the library: the
command line and an API caller get the same message, and the command line meets it before
it reads any calibration data or model."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, List

import pytest

from edgetune.host import builders
from edgetune.host.cli import main
from edgetune.host.errors import ExitStatus, UsageError
from edgetune.host.quant.fallback import run_fallback
from edgetune.host.quant.pipeline import quantize
from edgetune.host.quant.settings import FallbackSettings, QuantizeSettings

MISSING_CALIB = "no-such-calibration-folder"     # reading it would fail with NOT_FOUND


@pytest.fixture()
def model(tmp_path: Path) -> Path:
    return builders.save(builders.tiny_cnn(), tmp_path / "m.onnx")


def cli_error(capsys: pytest.CaptureFixture, args: List[str]) -> str:
    code = main(["quantize", *args])
    err = capsys.readouterr().err
    assert code == ExitStatus.USAGE, err
    return err


def api_error(call: Callable[[], Any]) -> UsageError:
    with pytest.raises(UsageError) as caught:
        call()
    return caught.value


@pytest.mark.parametrize("case", ["same_path", "exists", "method", "int8_uint8", "suffix",
                                  "no_folder"])
def test_quantize_refusals_read_the_same_from_cli_and_api(
        case: str, model: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "q.onnx"
    flags = {"same_path": ["-o", str(tmp_path / "." / "m.onnx")],
             "exists": ["-o", str(out)],
             "method": ["-o", str(out), "--method", "kl"],
             "int8_uint8": ["-o", str(out), "--act", "int8", "--weight", "uint8"],
             "suffix": ["-o", str(tmp_path / "q.bin")],
             "no_folder": ["-o", str(tmp_path / "nowhere" / "q.onnx")]}[case]
    settings = QuantizeSettings(model=model, output=out)
    settings = {"same_path": dataclasses.replace(settings, output=tmp_path / "." / "m.onnx"),
                "exists": settings,
                "method": dataclasses.replace(settings, method="kl"),
                "int8_uint8": dataclasses.replace(settings, act_type="int8", weight_type="uint8"),
                "suffix": dataclasses.replace(settings, output=tmp_path / "q.bin"),
                "no_folder": dataclasses.replace(settings,
                                                 output=tmp_path / "nowhere" / "q.onnx")}[case]
    if case == "exists":
        out.write_bytes(b"keep me")
    err = cli_error(capsys, [str(model), *flags, "--calib", str(tmp_path / MISSING_CALIB)])
    api = api_error(lambda: quantize(settings))
    assert api.message in err and (not api.hint or api.hint in err), (err, api)
    fallback = FallbackSettings(max_drop=0.01, eval_dataset=tmp_path / "t.npz")
    assert api_error(lambda: run_fallback(settings, fallback, data=None)).message == api.message
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["m.onnx"] + (["q.onnx"] if case == "exists" else []))


@pytest.mark.parametrize("table,message", [
    ('strategy = "random"', "unknown fallback strategy 'random'"),
    ('metric = "top3"', "unknown metric 'top3'"),
    ("max_steps = 0", "--max-steps must be at least 1, got 0"),
])
def test_fallback_refusals_from_a_config_file_are_the_librarys(
        table: str, message: str, model: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "q.toml"
    config.write_text(f'[[calib]]\npath = "{MISSING_CALIB}"\n'
                      f'[fallback]\nmax_drop = 0.01\neval = "t.npz"\n{table}\n')
    err = cli_error(capsys, [str(model), "-o", str(tmp_path / "q.onnx"), "--config", str(config)])
    assert message in err
    key, value = (part.strip().strip('"') for part in table.split("="))
    fb = FallbackSettings(max_drop=0.01, eval_dataset=tmp_path / "t.npz",
                          **{key: int(value) if key == "max_steps" else value})
    settings = QuantizeSettings(model=model, output=tmp_path / "q.onnx")
    assert message in api_error(lambda: run_fallback(settings, fb, data=None)).message


def test_negative_max_drop_is_the_librarys_message(model: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    err = cli_error(capsys, [str(model), "-o", str(tmp_path / "q.onnx"), "--calib", "x",
                             "--max-drop", "-1", "--eval", "t.npz"])
    settings = QuantizeSettings(model=model, output=tmp_path / "q.onnx")
    api = api_error(lambda: run_fallback(settings, FallbackSettings(
        max_drop=-1.0, eval_dataset=tmp_path / "t.npz"), data=None))
    assert api.message == "--max-drop must be a number >= 0, got -1.0" and api.message in err
