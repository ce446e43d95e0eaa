"""The fallback's default strategy is defined once (greedy) and used everywhere."""

from __future__ import annotations

from pathlib import Path

from edgetune.host import builders
from edgetune.host.cli import build_parser
from edgetune.host.cli.quantize_flags import build_settings
from edgetune.host.quant import fallback, settings
from edgetune.host.quant.config import load_config
from edgetune.host.quant.settings import FallbackSettings


def test_one_default_greedy_everywhere(tmp_path, capsys):
    assert settings.DEFAULT_FALLBACK_STRATEGY == "greedy"
    assert fallback.DEFAULT_STRATEGY == settings.DEFAULT_FALLBACK_STRATEGY
    assert FallbackSettings(max_drop=0.01, eval_dataset=Path("t.npz")).strategy == "greedy"

    model = builders.save(builders.tiny_cnn(), tmp_path / "tiny.onnx")
    args = build_parser().parse_args(["quantize", str(model), "--calib", "x.npy",
                                      "--max-drop", "0.01", "--eval", "t.npz"])
    _, fb, _ = build_settings(args)
    assert fb is not None and fb.strategy == "greedy"

    config = tmp_path / "q.toml"
    config.write_text('[[calib]]\npath = "x.npy"\n[fallback]\nmax_drop = 0.01\neval = "t.npz"\n')
    assert "strategy" not in load_config(config).fallback
    args = build_parser().parse_args(["quantize", str(model), "--config", str(config)])
    _, fb, _ = build_settings(args)
    assert fb is not None and fb.strategy == "greedy"


def test_help_names_the_default(capsys):
    parser = build_parser()
    try:
        parser.parse_args(["quantize", "--help"])
    except SystemExit:
        pass
    text = " ".join(capsys.readouterr().out.split())
    assert "default greedy" in text and "(bisect)" not in text
