"""Image files -> input tensors (Pillow + numpy), and user preprocess functions.

The numbers follow the vendor tools' convention: pixels stay in the 0-255 scale and each
channel becomes ``(x - mean) / std``, after the channels were put in the requested order
(``rgb`` or ``bgr``). The layout (NCHW or NHWC) is inferred from the model's input shape
unless given.

Presets (``--preprocess PT_IMAGENET`` / ``IMAGENET``) reproduce SpacemiT XQuant's
``preprocess_file`` presets. Its sources (``xslim`` dataset module, classes
``PTImagenetPreprocess`` and ``ImagenetPreprocess``) show that the presets fix the *geometry*
only and take mean/std from the input's own ``mean_value``/``std_value``:

- ``PT_IMAGENET`` (torchvision style): resize the shorter side to ``int(H / 0.875)``
  (bilinear), center-crop to the input size, then ``(x - mean) / std``.
- ``IMAGENET`` (MLPerf/OpenCV style): resize keeping the aspect ratio so the shorter side is
  ``int(100 * H / 87.5)`` with area interpolation (Pillow's BOX filter here, OpenCV's
  INTER_AREA there), center-crop, then ``(x - mean) / std``.

So ``PT_IMAGENET`` with the usual torchvision numbers is written
``--mean 123.675,116.28,103.53 --std 58.395,57.12,57.375 --color rgb``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from edgetune.host.errors import BadInputError, NotFoundError, UsageError
from edgetune.host.quant.settings import Preprocess

Dim = Union[int, str, None]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
PRESETS = ("PT_IMAGENET", "IMAGENET")

# Pillow modes that hold more than 8 bits per channel: converting them to L/RGB clips
# silently, so they are refused with a pointer to --preprocess.
_HIGH_DEPTH_MODES = ("I", "F", "I;16", "I;16B", "I;16L", "I;16N")


@dataclass(frozen=True)
class ImageSpec:
    """Everything needed to turn one image file into one sample of one input."""

    input_name: str
    height: int
    width: int
    channels: int
    layout: str                    # "nchw" or "nhwc"
    color: str                     # "rgb" or "bgr"
    mean: Tuple[float, ...]        # one value per channel, 0-255 scale
    std: Tuple[float, ...]
    interpolation: str
    preset: Optional[str] = None   # "PT_IMAGENET", "IMAGENET" or None

    @property
    def sample_shape(self) -> Tuple[int, int, int]:
        if self.layout == "nchw":
            return (self.channels, self.height, self.width)
        return (self.height, self.width, self.channels)


def infer_layout(shape: Sequence[Dim]) -> str:
    """NCHW when dim 1 looks like channels (1 or 3), NHWC when the last one does."""
    if len(shape) != 4:
        raise BadInputError(
            f"an image input must have 4 dimensions (N, C, H, W or N, H, W, C), this one has "
            f"shape {_fmt_shape(shape)}",
            hint="feed .npy/.npz/raw arrays instead, or give --preprocess file.py:function")
    c_first, c_last = shape[1], shape[3]
    if c_first in (1, 3):
        return "nchw"
    if c_last in (1, 3):
        return "nhwc"
    def small(dim: Dim) -> bool:
        return isinstance(dim, int) and dim <= 4
    if small(c_last) and isinstance(c_first, int) and not small(c_first):
        return "nhwc"
    return "nchw"


def resolve_image_spec(input_name: str, shape: Sequence[Dim], pre: Preprocess) -> ImageSpec:
    """Combine the model's input shape with the user's preprocessing options."""
    layout = pre.layout or infer_layout(shape)
    if len(shape) != 4:
        infer_layout(shape)  # raises the rank error
    if layout == "nchw":
        channels, height, width = shape[1], shape[2], shape[3]
    else:
        height, width, channels = shape[1], shape[2], shape[3]
    if pre.input_size is not None:
        height, width = pre.input_size
    if not isinstance(channels, int):
        raise BadInputError(
            f"input {input_name!r} has a symbolic channel dimension ({_fmt_shape(shape)}), so "
            f"the image channel count is unknown",
            hint="give the full input shape (--input-shape NAME=1x3x224x224, or input_shape in "
                 "the config file)")
    if not isinstance(height, int) or not isinstance(width, int):
        raise BadInputError(
            f"input {input_name!r} has a symbolic height/width ({_fmt_shape(shape)}), so the "
            f"images cannot be resized",
            hint="give --input-size HxW (or input_shape in the config file)")
    mean = _per_channel(pre.mean, channels, "mean", input_name)
    std = _per_channel(pre.std, channels, "std", input_name)
    if any(s == 0 for s in std):
        raise BadInputError(f"std for input {input_name!r} contains 0: {std}",
                            hint="every std value must be non-zero (0-255 scale, e.g. 58.395)")
    preset = pre.function if pre.function in PRESETS else None
    return ImageSpec(input_name=input_name, height=height, width=width, channels=channels,
                     layout=layout, color=pre.color, mean=mean, std=std,
                     interpolation=pre.interpolation, preset=preset)


def _per_channel(values: Sequence[float], channels: int, what: str,
                 input_name: str) -> Tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) == channels:
        return values
    if len(values) == 1 or (values and all(v == values[0] for v in values)):
        return (values[0],) * channels
    raise BadInputError(
        f"{what} has {len(values)} values {list(values)} but input {input_name!r} has "
        f"{channels} channel(s)",
        hint=f"give one {what} value per channel (or a single value for all)")


def _resample(name: str) -> int:
    from PIL import Image
    filters = getattr(Image, "Resampling", Image)        # Pillow < 9.1 has no Resampling
    table = {
        "nearest": filters.NEAREST,
        "bilinear": filters.BILINEAR,
        "bicubic": filters.BICUBIC,
        "lanczos": filters.LANCZOS,
        "area": filters.BOX,
    }
    try:
        return table[name]
    except KeyError:
        raise UsageError(f"unknown interpolation {name!r}",
                         hint=f"choose one of {', '.join(table)}") from None


def load_image(path: Path, spec: ImageSpec) -> np.ndarray:
    """One image file -> one float32 sample in ``spec.sample_shape``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            image = img
    except FileNotFoundError:
        raise NotFoundError(f"calibration image {path} does not exist") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise BadInputError(f"cannot read image {path}: {exc}",
                            hint="remove the file or convert it to jpg/png/bmp") from None
    image = _to_channels(image, path, spec)
    image = _geometry(image, spec)
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 2:
        array = array[:, :, None]
    if spec.color == "bgr" and spec.channels == 3:
        array = array[:, :, ::-1]
    array = (array - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    if spec.layout == "nchw":
        array = array.transpose(2, 0, 1)
    return np.ascontiguousarray(array, dtype=np.float32)


def _to_channels(image: Any, path: Path, spec: ImageSpec) -> Any:
    mode = image.mode
    if mode in _HIGH_DEPTH_MODES or mode.startswith("I;"):
        raise BadInputError(
            f"image {path} is a high bit depth image (Pillow mode {mode}); input "
            f"{spec.input_name!r} expects 8-bit images with {spec.channels} channel(s)",
            hint="convert the images to 8-bit, or give --preprocess file.py:function")
    if spec.channels == 1:
        return image if mode == "L" else image.convert("L")
    if spec.channels == 3:
        # Alpha is dropped, palette/grayscale/CMYK/YCbCr images are expanded to RGB.
        return image if mode == "RGB" else image.convert("RGB")
    raise BadInputError(
        f"image {path} has {len(image.getbands())} channel(s) (mode {mode}) but input "
        f"{spec.input_name!r} expects {spec.channels} channels; images can feed only 1- or "
        f"3-channel inputs",
        hint="give --preprocess file.py:function that builds the input, or .npy arrays")


def _geometry(image: Any, spec: ImageSpec) -> Any:
    out_h, out_w = spec.height, spec.width
    if spec.preset == "PT_IMAGENET":
        # torchvision: F.resize(img, int(H / 0.875)) scales the shorter side, then center_crop.
        size = int(out_h / 0.875)
        w, h = image.size
        if w <= h:
            new_w, new_h = size, int(size * h / w)
        else:
            new_h, new_w = size, int(size * w / h)
        image = image.resize((new_w, new_h), _resample("bilinear"))
        return _center_crop(image, out_h, out_w, rounding=True)
    if spec.preset == "IMAGENET":
        w, h = image.size
        new_h, new_w = int(100.0 * out_h / 87.5), int(100.0 * out_w / 87.5)
        if h > w:
            rw, rh = new_w, int(new_h * h / w)
        else:
            rh, rw = new_h, int(new_w * w / h)
        image = image.resize((rw, rh), _resample("area"))
        return _center_crop(image, out_h, out_w, rounding=False)
    if image.size != (out_w, out_h):
        image = image.resize((out_w, out_h), _resample(spec.interpolation))
    return image


def _center_crop(image: Any, out_h: int, out_w: int, *, rounding: bool) -> Any:
    w, h = image.size
    if rounding:
        top, left = int(round((h - out_h) / 2.0)), int(round((w - out_w) / 2.0))
    else:
        top, left = int((h - out_h) / 2), int((w - out_w) / 2)
    return image.crop((left, top, left + out_w, top + out_h))


# --- user preprocess functions -------------------------------------------------------------

def load_preprocess_function(spec: str) -> Callable[..., Any]:
    """``"path/to/file.py:function"`` -> the function (the file is imported once)."""
    if ":" not in spec:
        raise UsageError(
            f"--preprocess {spec!r} is neither a preset nor file.py:function",
            hint=f"presets: {', '.join(PRESETS)}; or e.g. --preprocess prep.py:load_batch")
    file_part, func_name = spec.rsplit(":", 1)
    path = Path(os.path.expanduser(file_part))
    if not path.is_file():
        raise NotFoundError(f"preprocess file {path} does not exist (from {spec!r})",
                            hint="paths in a config file are relative to the config's folder")
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    module_name = f"_edgetune_preprocess_{digest}"
    try:
        module_spec = importlib.util.spec_from_file_location(module_name, str(path))
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - any error in user code is bad input
        raise BadInputError(f"importing preprocess file {path} failed: "
                            f"{type(exc).__name__}: {exc}",
                            hint="run the file with python to see the full traceback") from exc
    func = getattr(module, func_name, None)
    if not callable(func):
        raise BadInputError(f"preprocess file {path} has no function {func_name!r}",
                            hint="the spec is file.py:function, e.g. prep.py:load_batch")
    return func


def call_preprocess_function(func: Callable[..., Any], spec: str, paths: List[str],
                             info: Dict[str, Any], sample_shape: Sequence[Dim],
                             dtype: np.dtype) -> np.ndarray:
    """Call a user function and check that it returned ``(len(paths),) + sample_shape``."""
    try:
        result = func(list(paths), dict(info))
    except Exception as exc:  # noqa: BLE001 - any error in user code is bad input
        raise BadInputError(
            f"preprocess function {spec} raised {type(exc).__name__}: {exc} "
            f"(on {len(paths)} file(s), first {paths[0] if paths else '-'})",
            hint="fix the function; it receives (list of paths, input info dict) and "
                 "returns one batch array") from exc
    expected = (len(paths),) + tuple(sample_shape)
    if hasattr(result, "numpy") and not isinstance(result, np.ndarray):
        result = result.numpy()  # a torch tensor, as XQuant's functions return
    if not isinstance(result, np.ndarray):
        raise BadInputError(
            f"preprocess function {spec} returned {type(result).__name__}, expected a numpy "
            f"array of shape {_fmt_shape(expected)} and dtype {np.dtype(dtype).name}")
    if not _shape_fits(result.shape, expected):
        raise BadInputError(
            f"preprocess function {spec} returned shape {tuple(result.shape)}, expected "
            f"{_fmt_shape(expected)} ({len(paths)} file(s) -> one sample each)",
            hint="return a batch whose first axis is the number of paths received")
    if np.dtype(dtype).kind == "f" and result.dtype.kind != "f":
        raise BadInputError(
            f"preprocess function {spec} returned dtype {result.dtype.name}, expected "
            f"{np.dtype(dtype).name}", hint="return a floating point array")
    if np.dtype(dtype).kind != "f" and result.dtype != np.dtype(dtype):
        raise BadInputError(
            f"preprocess function {spec} returned dtype {result.dtype.name}, expected "
            f"{np.dtype(dtype).name}")
    return np.ascontiguousarray(result, dtype=dtype)


def _shape_fits(got: Sequence[int], expected: Sequence[Dim]) -> bool:
    if len(got) != len(expected):
        return False
    return all(not isinstance(e, int) or g == e for g, e in zip(got, expected))


def _fmt_shape(shape: Sequence[Dim]) -> str:
    return "(" + ", ".join(str(d) if d is not None else "?" for d in shape) + ")"
