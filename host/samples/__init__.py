"""Where the shipped sample model and datasets are (see README.md in this folder).

- ``DIGITS_MODEL``: ``input`` float32 [batch,1,8,8] (pixels / 16) -> ``logits`` [batch,10]
- ``DIGITS_TEST``: ``input``, ``labels`` int64, ``logits`` (FP32 reference outputs)
- ``DIGITS_CALIB``: ``input`` only, 200 images from the training split
"""

from __future__ import annotations

from pathlib import Path

SAMPLES_DIR = Path(__file__).resolve().parent
DIGITS_MODEL = SAMPLES_DIR / "digits_cnn.onnx"
DIGITS_TEST = SAMPLES_DIR / "digits_test.npz"
DIGITS_CALIB = SAMPLES_DIR / "digits_calib.npz"
DIGITS_INPUT_SCALE = 16.0   # raw load_digits pixels (0..16) are divided by this

__all__ = ["SAMPLES_DIR", "DIGITS_MODEL", "DIGITS_TEST", "DIGITS_CALIB", "DIGITS_INPUT_SCALE"]
