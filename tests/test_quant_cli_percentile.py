"""A percentile no calibration uses (XQuant ``max_percentile``, ``--percentile``) is never
silently ignored: a warning and a note in the record."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from edgetune.host import builders
from edgetune.host.cli import build_parser, main
from edgetune.host.cli.quantize_flags import build_settings
from edgetune.host.errors import ExitStatus
from tests.test_quant_cli_quantize import xquant_setup

TOP = ("max_percentile 0.9999 is unused: calibration_type 'default' maps to minmax; "
       "set calibration_type percentile to use it")


def settings_for(argv):
    args = build_parser().parse_args(["quantize", *argv])
    return build_settings(args)[0]


def edit(config: Path, change) -> Path:
    data = json.loads(config.read_text())
    change(data)
    config.write_text(json.dumps(data))
    return config


def test_xquant_max_percentile_unused_is_warned_and_recorded(tmp_path, capsys, caplog):
    config = xquant_setup(tmp_path)          # calibration_type default, max_percentile 0.9999
    with caplog.at_level(logging.WARNING):
        code = main(["quantize", "--config", str(config), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == ExitStatus.OK, doc
    assert TOP in doc["notes"]
    record = json.loads(Path(doc["record"]).read_text())
    assert TOP in record["settings"]["notes"]
    assert any(TOP in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    # The custom_setting's max_percentile (calibration_type default) IS used: percentile
    # ranges for its subgraph, and no note about it.
    assert not any("custom_setting" in n for n in record["settings"]["notes"])
    assert any("percentile(99.9)" in d["action"] for d in record["decisions"])


def test_xquant_max_percentile_used_with_percentile_method(tmp_path):
    config = xquant_setup(tmp_path)
    assert not any("unused" in n for n in settings_for(
        ["--config", str(config), "--method", "percentile"]).notes)
    edit(config, lambda d: d["calibration_parameters"].update(calibration_type="percentile"))
    s = settings_for(["--config", str(config)])
    assert s.method == "percentile" and s.percentile == 99.99
    assert not any("unused" in n for n in s.notes)
    # A flag that changes the method makes it unused again, and says which flag.
    s = settings_for(["--config", str(config), "--method", "entropy"])
    assert ("max_percentile 0.9999 is unused: --method is entropy; use --method percentile "
            "to use it") in s.notes


def test_xquant_custom_setting_max_percentile_with_another_method(tmp_path):
    config = edit(xquant_setup(tmp_path), lambda d: d["quantization_parameters"]
                  ["custom_setting"][0].update(calibration_type="kl"))
    s = settings_for(["--config", str(config)])
    assert s.subgraphs[0].method == "entropy" and s.subgraphs[0].percentile == 99.9
    assert TOP in s.notes
    assert ("custom_setting[0].max_percentile 0.999 is unused: its calibration_type 'kl' maps "
            "to entropy; set its calibration_type percentile (or default) to use it") in s.notes


def test_xquant_without_calibration_type(tmp_path):
    config = edit(xquant_setup(tmp_path),
                  lambda d: d["calibration_parameters"].pop("calibration_type"))
    s = settings_for(["--config", str(config)])
    assert ("max_percentile 0.9999 is unused: the method is minmax (the default); set "
            "calibration_type percentile to use it") in s.notes


def test_percentile_flag_and_toml_without_percentile_method(tmp_path):
    model = builders.save(builders.tiny_cnn(), tmp_path / "tiny.onnx")
    np.save(tmp_path / "x.npy", np.zeros((2, 3, 16, 16), np.float32))
    s = settings_for([str(model), "--calib", str(tmp_path / "x.npy"), "--percentile", "99.9"])
    assert ("--percentile 99.9 is unused: the method is minmax (the default); add --method "
            "percentile to use it") in s.notes
    s = settings_for([str(model), "--calib", str(tmp_path / "x.npy"), "--percentile", "99.9",
                      "--method", "percentile"])
    assert not any("unused" in n for n in s.notes)
    config = tmp_path / "q.toml"
    config.write_text('method = "mse"\npercentile = 99.5\n[[calib]]\npath = "x.npy"\n')
    s = settings_for([str(model), "--config", str(config)])
    assert ("percentile 99.5 in q.toml is unused: q.toml sets method 'mse'; set method = "
            "\"percentile\" to use it") in s.notes
