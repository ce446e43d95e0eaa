"""Image preprocessing numbers, checked by hand on 2x2 images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgetune.host.errors import BadInputError, UsageError
from edgetune.host.quant import preprocess as pp
from edgetune.host.quant.settings import Preprocess

# A 2x2 RGB image: pixel (row, col) -> (R, G, B).
PIXELS = np.array([[[10, 20, 30], [40, 50, 60]],
                   [[70, 80, 90], [100, 110, 120]]], np.uint8)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "img.png"
    Image.fromarray(PIXELS).save(path)
    return path


def sample(path: Path, shape, **pre) -> np.ndarray:
    spec = pp.resolve_image_spec("input", shape, Preprocess(**pre))
    return pp.load_image(path, spec)


def test_plain_rgb_nchw(image):
    out = sample(image, [1, 3, 2, 2])
    assert out.shape == (3, 2, 2) and out.dtype == np.float32
    assert out[:, 0, 1].tolist() == [40, 50, 60]          # R, G, B of pixel (0, 1)
    assert out[0].tolist() == [[10, 40], [70, 100]]        # the R plane


def test_mean_std_in_0_255_scale(image):
    out = sample(image, [1, 3, 2, 2], mean=(10, 20, 30), std=(2, 4, 5))
    # pixel (1, 1) = (100, 110, 120): ((100-10)/2, (110-20)/4, (120-30)/5)
    assert out[:, 1, 1].tolist() == [45.0, 22.5, 18.0]


def test_bgr_reverses_channels_before_mean(image):
    out = sample(image, [1, 3, 2, 2], color="bgr", mean=(1, 2, 3))
    # channel 0 is now blue: 30 - 1; channel 2 is red: 10 - 3
    assert out[:, 0, 0].tolist() == [29.0, 18.0, 7.0]


def test_nhwc_inferred_from_shape(image):
    out = sample(image, [1, 2, 2, 3], std=(10, 10, 10))
    assert out.shape == (2, 2, 3)
    assert out[1, 0].tolist() == [7.0, 8.0, 9.0]


def test_layout_flag_overrides_inference(image):
    out = sample(image, [1, 2, 2, 3], layout="nhwc")
    assert out.shape == (2, 2, 3)
    assert pp.infer_layout([1, 3, 224, 224]) == "nchw"
    assert pp.infer_layout(["N", 224, 224, 3]) == "nhwc"
    assert pp.infer_layout([1, 1, 8, 8]) == "nchw"


def test_grayscale_model_converts_to_L(image):
    out = sample(image, [1, 1, 2, 2])
    # Pillow's L = R*299/1000 + G*587/1000 + B*114/1000, truncated
    assert out.shape == (1, 2, 2)
    assert out[0].tolist() == [[18.0, 48.0], [78.0, 108.0]]


def test_grayscale_image_for_rgb_model_is_expanded(tmp_path):
    path = tmp_path / "gray.png"
    Image.fromarray(np.array([[5, 6], [7, 8]], np.uint8), "L").save(path)
    out = sample(path, [1, 3, 2, 2])
    assert out[:, 1, 0].tolist() == [7.0, 7.0, 7.0]


def test_resize_to_model_size_and_input_size(tmp_path):
    path = tmp_path / "big.png"
    Image.fromarray(np.full((8, 6, 3), 100, np.uint8)).save(path)
    assert sample(path, [1, 3, 4, 4]).shape == (3, 4, 4)
    assert sample(path, ["N", 3, "h", "w"], input_size=(5, 3), interpolation="nearest").shape \
        == (3, 5, 3)
    with pytest.raises(BadInputError, match="--input-size"):
        sample(path, ["N", 3, "h", "w"])


def test_channel_count_that_cannot_fit(image):
    with pytest.raises(BadInputError) as exc:
        sample(image, [1, 4, 2, 2])
    assert str(image) in exc.value.message and "expects 4 channels" in exc.value.message


def test_16_bit_images_are_refused(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((2, 2), 1000, np.uint16)).save(path)
    with pytest.raises(BadInputError) as exc:
        sample(path, [1, 3, 2, 2])
    assert str(path) in exc.value.message and "3 channel" in exc.value.message


def test_unreadable_image(tmp_path):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"not a jpeg")
    with pytest.raises(BadInputError, match="cannot read image"):
        sample(path, [1, 3, 2, 2])


def test_mean_std_length_must_fit_channels(image):
    with pytest.raises(BadInputError, match="mean has 2 values"):
        sample(image, [1, 3, 2, 2], mean=(1, 2))
    with pytest.raises(BadInputError, match="contains 0"):
        sample(image, [1, 3, 2, 2], std=(1, 0, 1))
    # one value for every channel is fine, and so is the 3-value default on a 1-channel model
    assert sample(image, [1, 3, 2, 2], mean=(10,))[:, 0, 0].tolist() == [0.0, 10.0, 20.0]
    assert sample(image, [1, 1, 2, 2])[0, 0, 0] == 18.0


def test_symbolic_channels_need_a_shape(image):
    with pytest.raises(BadInputError, match="symbolic channel"):
        sample(image, ["N", "C", 2, 2])


def test_unknown_interpolation(tmp_path):
    path = tmp_path / "big.png"
    Image.fromarray(np.full((4, 4, 3), 1, np.uint8)).save(path)
    with pytest.raises(UsageError):
        sample(path, [1, 3, 2, 2], interpolation="cubic-ish")


def test_pt_imagenet_preset_is_resize_shorter_side_then_center_crop(tmp_path):
    path = tmp_path / "wide.png"
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (12, 20, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    out = sample(path, [1, 3, 7, 7], function="PT_IMAGENET", mean=(1, 2, 3), std=(2, 2, 2))
    # by hand: shorter side -> int(7 / 0.875) = 8, so 12x20 -> 8x13; crop 7x7 at (0, 3)
    resized = Image.fromarray(pixels).resize((13, 8), Image.Resampling.BILINEAR)
    top, left = int(round((8 - 7) / 2.0)), int(round((13 - 7) / 2.0))
    crop = np.asarray(resized.crop((left, top, left + 7, top + 7)), np.float32)
    expected = ((crop - [1, 2, 3]) / 2).transpose(2, 0, 1)
    assert out.shape == (3, 7, 7) and np.allclose(out, expected)


def test_imagenet_preset_keeps_aspect_with_area_resize(tmp_path):
    path = tmp_path / "tall.png"
    pixels = np.random.default_rng(1).integers(0, 255, (30, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    out = sample(path, [1, 3, 7, 7], function="IMAGENET")
    # new size int(100 * 7 / 87.5) = 8; tall: w = 8, h = int(8 * 30 / 16) = 15; crop 7x7
    resized = Image.fromarray(pixels).resize((8, 15), Image.Resampling.BOX)
    top, left = int((15 - 7) / 2), int((8 - 7) / 2)
    crop = np.asarray(resized.crop((left, top, left + 7, top + 7)), np.float32)
    assert np.allclose(out, crop.transpose(2, 0, 1))
