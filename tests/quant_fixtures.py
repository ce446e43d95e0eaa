"""Fixtures for the tests/test_quant_*.py modules (enabled in tests/conftest.py; no tests here).

``digits_q``: the shipped digits CNN quantized by the real pipeline with the default settings
on its calibration set, once per test module that asks for it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

SAMPLES = Path(__file__).resolve().parent.parent / "host" / "samples"
DIGITS = SAMPLES / "digits_cnn.onnx"
CALIB = SAMPLES / "digits_calib.npz"
TEST = SAMPLES / "digits_test.npz"


@pytest.fixture(scope="module")
def digits_q(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgetune.host.quant.pipeline import quantize
    from edgetune.host.quant.settings import CalibSource, QuantizeSettings

    out = tmp_path_factory.mktemp("digits") / "digits.q.onnx"
    quantize(QuantizeSettings(model=DIGITS, output=out, calib=(CalibSource(path=CALIB),)))
    return out
