"""``edgetune analyze`` takes the calibration flags of ``quantize`` (one shared definition):
an image folder with --mean/--std gives exactly the figures of the same pixels preprocessed
by hand."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
from PIL import Image

from edgetune.host import builders
from edgetune.host.cli import build_parser, main
from edgetune.host.errors import ExitStatus

MEAN = (120.0, 110.0, 100.0)
STD = (60.0, 50.0, 40.0)


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


def _group_options(parser: argparse.ArgumentParser) -> Dict[str, List[str]]:
    return {g.title: sorted(o for a in g._group_actions for o in a.option_strings)
            for g in parser._action_groups
            if g.title in ("calibration data", "image preprocessing")}


def test_analyze_accepts_every_calibration_flag_of_quantize():
    quantize, analyze = _group_options(_subparser("quantize")), _group_options(_subparser("analyze"))
    assert set(quantize) == {"calibration data", "image preprocessing"}
    assert analyze == quantize
    assert "--calib-batch" in analyze["calibration data"]
    assert "--preprocess" in analyze["image preprocessing"]


@pytest.fixture(scope="module")
def images_and_models(tmp_path_factory):
    """A tiny CNN, its QDQ model, 6 RGB PNGs and the same pixels preprocessed by hand."""
    from edgetune.host.quant.pipeline import quantize
    from edgetune.host.quant.settings import CalibSource, QuantizeSettings

    tmp = tmp_path_factory.mktemp("analyze_cli")
    model = builders.save(builders.tiny_cnn(), tmp / "tiny.onnx")
    folder = tmp / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(3)
    pixels = []
    for i in range(6):
        rgb = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(folder / f"img{i}.png")
        pixels.append(rgb.astype(np.float32))
    hand = ((np.stack(pixels) - np.array(MEAN, np.float32)) / np.array(STD, np.float32))
    hand = np.ascontiguousarray(hand.transpose(0, 3, 1, 2))        # NHWC -> NCHW, RGB order
    np.save(tmp / "hand.npy", hand)
    quant = tmp / "tiny.q.onnx"
    quantize(QuantizeSettings(model=model, output=quant, calib=(CalibSource(path=tmp / "hand.npy"),)))
    return model, quant, folder, tmp / "hand.npy"


def _analyze(capsys, model: Path, quant: Path, *calib: str) -> dict:
    code = main(["analyze", str(model), str(quant), "--calib", *calib, "--json"])
    out = capsys.readouterr().out
    assert code == ExitStatus.OK, out
    return json.loads(out)


def test_analyze_image_folder_with_mean_std(images_and_models, capsys):
    model, quant, folder, hand = images_and_models
    flags = ["--mean", ",".join(map(str, MEAN)), "--std", ",".join(map(str, STD)),
             "--calib-count", "6", "--calib-batch", "3"]
    from_images = _analyze(capsys, model, quant, str(folder), *flags)
    from_arrays = _analyze(capsys, model, quant, str(hand), "--calib-count", "6")
    assert from_images["samples"] == from_arrays["samples"] == 6
    by_name = {t["name"]: t for t in from_arrays["ranked"]}
    for tensor in from_images["ranked"]:
        ref = by_name[tensor["name"]]
        assert tensor["isolated"]["sqnr_db"] == pytest.approx(ref["isolated"]["sqnr_db"],
                                                             abs=1e-3)
    out_img, out_ref = from_images["outputs"][0], from_arrays["outputs"][0]
    assert out_img["accumulated"]["sqnr_db"] == pytest.approx(
        out_ref["accumulated"]["sqnr_db"], abs=1e-3)
    # Without --mean/--std the same images are other samples: other figures.
    plain = _analyze(capsys, model, quant, str(folder), "--calib-count", "6")
    assert plain["outputs"][0]["accumulated"]["sqnr_db"] != pytest.approx(
        out_ref["accumulated"]["sqnr_db"], abs=1e-3)


def test_analyze_batch_and_calib_batch_must_agree(images_and_models, capsys):
    model, quant, _, hand = images_and_models
    code = main(["analyze", str(model), str(quant), "--calib", str(hand), "--batch", "2",
                 "--calib-batch", "4"])
    assert code == ExitStatus.USAGE
    assert "--batch 2 and --calib-batch 4 disagree" in capsys.readouterr().err
