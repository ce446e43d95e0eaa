"""Calibration sources -> per-input feeds: what each folder, list, array or raw file holds.

Used by ``edgetune.host.quant.calibdata`` (the public side: ``load_calibration``/``CalibrationData``).
A feed knows how many samples its source holds and loads chosen ones on demand; images are
decoded and ``.npy`` rows read (memory-mapped) only then.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edgetune.host.errors import BadInputError, NotFoundError, UsageError
from edgetune.host.quant import preprocess as pp
from edgetune.host.quant.settings import CalibSource

NPY_EXTENSIONS = (".npy",)
RAW_EXTENSIONS = (".raw", ".bin")
LIST_EXTENSIONS = (".txt", ".lst", ".list")
FOLDER_EXTENSIONS = pp.IMAGE_EXTENSIONS + NPY_EXTENSIONS + RAW_EXTENSIONS
LABEL_KEYS = ("labels", "label")
REFERENCE_KEYS = ("logits", "reference", "outputs", "output")


@dataclass(frozen=True)
class InputInfo:
    """One graph input of the model: name, shape (symbolic dims as str or None), dtype."""

    name: str
    shape: Tuple[pp.Dim, ...]
    dtype: np.dtype

    @property
    def fixed_batch(self) -> Optional[int]:
        """The batch size the model insists on, or None when the batch dim is symbolic."""
        return self.shape[0] if self.shape and isinstance(self.shape[0], int) else None


def read_model_inputs(model: Path) -> Tuple[InputInfo, ...]:
    """The model's real inputs (graph inputs that are not initializers), in graph order."""
    import onnx
    from onnx import helper

    model = Path(model)
    if not model.is_file():
        raise NotFoundError(f"model {model} does not exist", hint="check the path")
    try:
        proto = onnx.load(str(model), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types
        raise BadInputError(f"{model} is not an ONNX model ({type(exc).__name__}: {exc})",
                            hint="give a .onnx file exported by your framework") from None
    if not proto.HasField("graph"):
        raise BadInputError(f"{model} is not an ONNX model (it has no graph)",
                            hint="give a .onnx file exported by your framework")
    initializers = {init.name for init in proto.graph.initializer}
    inputs = []
    for value in proto.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        if not value.type.HasField("tensor_type"):
            raise BadInputError(f"input {value.name!r} of {model} is not a tensor",
                                hint="only tensor inputs can be calibrated")
        dims: List[pp.Dim] = []
        for dim in tensor.shape.dim:
            if dim.HasField("dim_value") and dim.dim_value > 0:
                dims.append(int(dim.dim_value))
            else:
                dims.append(dim.dim_param or None)
        inputs.append(InputInfo(value.name, tuple(dims),
                                np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type))))
    return tuple(inputs)


# --- per-input feeds -----------------------------------------------------------------------

class Feed:
    """All candidate samples of one input; ``load`` reads the chosen ones."""

    kind = "?"

    def __init__(self, info: InputInfo, source: CalibSource, shape: Tuple[pp.Dim, ...]):
        self.info = info
        self.source = source
        self.shape = shape

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, indices: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> Dict[str, Any]:
        return {"input": self.info.name, "source": str(self.source.path), "kind": self.kind,
                "items": len(self), "shape": [d if isinstance(d, int) else str(d)
                                              for d in self.shape]}

    def _cast(self, array: np.ndarray) -> np.ndarray:
        dtype = self.info.dtype
        if dtype.kind in "iu" and array.dtype.kind == "f":
            info = np.iinfo(dtype)
            array = np.clip(np.rint(array), info.min, info.max)
        return np.ascontiguousarray(array, dtype=dtype)


class ArrayFeed(Feed):
    """A .npy (memory-mapped), an .npz member, or an in-memory array: first axis = samples."""

    def __init__(self, info: InputInfo, source: CalibSource, shape: Tuple[pp.Dim, ...],
                 array: np.ndarray, kind: str, origin: str):
        super().__init__(info, source, shape)
        self.kind = kind
        if array.ndim == len(shape) - 1 and _fits(array.shape, shape[1:]):
            array = array[None]
        elif not (array.ndim == len(shape) and _fits(array.shape[1:], shape[1:])):
            raise BadInputError(
                f"{origin}: array shape {tuple(array.shape)} does not fit input "
                f"{info.name!r} of shape {pp._fmt_shape(shape)}",
                hint="the first axis holds the samples: (samples,) + "
                     f"{pp._fmt_shape(shape[1:])}, or one sample of that shape")
        if array.dtype.kind not in "fiub":
            raise BadInputError(f"{origin}: array dtype {array.dtype} cannot feed input "
                                f"{info.name!r} ({info.dtype.name})")
        self.array = array

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def load(self, indices: np.ndarray) -> np.ndarray:
        return self._cast(self.array[indices])


class ItemFeed(Feed):
    """Files, one or more samples each: images, .npy files, raw float32 files."""

    def __init__(self, info: InputInfo, source: CalibSource, shape: Tuple[pp.Dim, ...],
                 files: Sequence[Tuple[Path, str]], kind: str):
        super().__init__(info, source, shape)
        self.kind = kind
        self.items: List[Tuple[Path, str, Optional[int]]] = []
        self.image_spec: Optional[pp.ImageSpec] = None
        self.function = None
        sample_shape = shape[1:]
        if source.preprocess.function and source.preprocess.function not in pp.PRESETS:
            self.function = pp.load_preprocess_function(source.preprocess.function)
            self.kind = "files+function"
            self.items = [(path, "file", None) for path, _ in files]
            return
        for path, file_kind in files:
            if file_kind == "img":
                if self.image_spec is None:
                    self.image_spec = pp.resolve_image_spec(info.name, shape, source.preprocess)
                    _check_image_size(info, shape, self.image_spec)
                self.items.append((path, "img", None))
            elif file_kind == "npy":
                array = _open_npy(path)
                if array.ndim == len(shape) - 1 and _fits(array.shape, sample_shape):
                    self.items.append((path, "npy", None))
                elif array.ndim == len(shape) and _fits(array.shape[1:], sample_shape):
                    self.items.extend((path, "npy", i) for i in range(array.shape[0]))
                else:
                    raise BadInputError(
                        f"{path}: array shape {tuple(array.shape)} does not fit input "
                        f"{info.name!r} of shape {pp._fmt_shape(shape)}",
                        hint=f"save one sample {pp._fmt_shape(sample_shape)} or a batch "
                             f"(n,) + that per file")
            else:  # raw float32
                concrete = _concrete_sample_shape(info, shape, path)
                expected = int(np.prod(concrete)) * 4
                size = path.stat().st_size if path.exists() else -1
                if size < 0:
                    raise NotFoundError(f"calibration file {path} does not exist")
                if size != expected:
                    raise BadInputError(
                        f"raw file {path} has {size} bytes; input {info.name!r} needs "
                        f"{expected} bytes (float32 x {pp._fmt_shape(concrete)})",
                        hint="raw files hold exactly one float32 sample, no header")
                self.items.append((path, "raw", None))

    def __len__(self) -> int:
        return len(self.items)

    def load(self, indices: np.ndarray) -> np.ndarray:
        chosen = [self.items[int(i)] for i in indices]
        if self.function is not None:
            info = _function_info(self.info, self.shape, self.source)
            return pp.call_preprocess_function(
                self.function, str(self.source.preprocess.function),
                [str(path) for path, _, _ in chosen], info, self.shape[1:], self.info.dtype)
        samples = []
        for path, kind, index in chosen:
            if kind == "img":
                assert self.image_spec is not None
                samples.append(pp.load_image(path, self.image_spec))
            elif kind == "npy":
                array = _open_npy(path)
                samples.append(np.asarray(array if index is None else array[index]))
            else:
                data = np.fromfile(path, dtype=np.float32)
                samples.append(data.reshape(_concrete_sample_shape(self.info, self.shape, path)))
        return self._cast(np.stack(samples))

    def describe(self) -> Dict[str, Any]:
        out = super().describe()
        if self.image_spec is not None:
            out["image"] = asdict(self.image_spec)
        if self.function is not None:
            out["function"] = self.source.preprocess.function
        return out


def _fits(got: Sequence[int], expected: Sequence[pp.Dim]) -> bool:
    return len(got) == len(expected) and all(
        not isinstance(e, int) or g == e for g, e in zip(got, expected))


def _open_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise NotFoundError(f"calibration file {path} does not exist") from None
    except (ValueError, OSError) as exc:
        raise BadInputError(f"cannot read {path} as .npy: {exc}",
                            hint="save arrays with numpy.save (no pickled objects)") from None


def _concrete_sample_shape(info: InputInfo, shape: Tuple[pp.Dim, ...],
                           path: Path) -> Tuple[int, ...]:
    sample = shape[1:]
    if not all(isinstance(d, int) for d in sample):
        raise BadInputError(
            f"raw file {path}: input {info.name!r} has symbolic dimensions "
            f"{pp._fmt_shape(shape)}, so the sample size is unknown",
            hint="give the full input shape (--input-shape NAME=1x3x224x224, or input_shape "
                 "in the config file)")
    return tuple(int(d) for d in sample)  # type: ignore[arg-type]


def _check_image_size(info: InputInfo, shape: Tuple[pp.Dim, ...], spec: pp.ImageSpec) -> None:
    model_dims = shape[1:]
    if not _fits(spec.sample_shape, model_dims):
        raise UsageError(
            f"images for input {info.name!r} would have shape {spec.sample_shape} "
            f"({spec.layout}) but the model expects {pp._fmt_shape(model_dims)}",
            hint="drop --input-size (the model's size is used) or fix --layout")


def _function_info(info: InputInfo, shape: Tuple[pp.Dim, ...],
                   source: CalibSource) -> Dict[str, Any]:
    """What a preprocess function receives; XQuant's input_parametres keys plus ours."""
    pre = source.preprocess
    return {
        "input_name": info.name,
        "input_shape": [d if isinstance(d, int) else 1 if i == 0 else d
                        for i, d in enumerate(shape)],
        "dtype": info.dtype.name,
        "file_type": source.file_type,
        "color_format": pre.color,
        "mean_value": list(pre.mean),
        "std_value": list(pre.std),
        "preprocess_file": pre.function,
        "data_list_path": str(source.path),
        "layout": pre.layout or (pp.infer_layout(shape) if len(shape) == 4 else None),
        "input_size": list(pre.input_size) if pre.input_size else None,
        "interpolation": pre.interpolation,
    }


# --- sources -> feeds ----------------------------------------------------------------------

def _file_kind(path: Path, forced: str) -> str:
    if forced in ("img", "npy", "raw"):
        return forced
    suffix = path.suffix.lower()
    if suffix in pp.IMAGE_EXTENSIONS:
        return "img"
    if suffix in NPY_EXTENSIONS:
        return "npy"
    if suffix in RAW_EXTENSIONS:
        return "raw"
    raise BadInputError(
        f"calibration file {path} has an unknown kind ({suffix or 'no extension'})",
        hint="use .jpg/.jpeg/.png/.bmp images, .npy arrays or .raw/.bin float32 files, or set "
             "the file type (file_type img/npy/raw)")


def _read_list(path: Path, name: str) -> List[Path]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise BadInputError(f"{path} is not a text list of files",
                            hint="a list file holds one path per line") from None
    base = path.parent
    files = []
    for number, line in enumerate(lines, start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        file = Path(os.path.expanduser(entry))
        file = file if file.is_absolute() else base / file
        if not file.is_file():
            raise NotFoundError(
                f"{path} line {number}: {entry} does not exist (looked for {file})",
                hint="paths in a list file are relative to the list file's folder")
        files.append(file)
    if not files:
        raise BadInputError(f"Calibration input {name} finds 0 items: the list {path} "
                            f"names no files", hint="put one calibration file per line")
    return files


def _scan_folder(folder: Path, any_file: bool) -> List[Path]:
    found = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if any_file or path.suffix.lower() in FOLDER_EXTENSIONS:
            found.append(path)
    if not found:
        raise BadInputError(
            f"found 0 items in {folder} (looked for "
            f"{', '.join(FOLDER_EXTENSIONS) if not any_file else 'any file'})",
            hint="point --calib at a folder of images or arrays, a list file, or an .npy/.npz")
    return found


def build_feed(info: InputInfo, source: CalibSource) -> Feed:
    shape = _resolved_shape(info, source)
    path = Path(os.path.expanduser(source.path))
    uses_function = bool(source.preprocess.function) and \
        source.preprocess.function not in pp.PRESETS
    if path.is_dir():
        files = _scan_folder(path, any_file=uses_function)
        kinds = [(f, "file" if uses_function else _file_kind(f, source.file_type))
                 for f in files]
        return ItemFeed(info, source, shape, kinds, kind="folder")
    if not path.exists():
        raise NotFoundError(f"calibration source {path} does not exist",
                            hint="give a folder, a list file, an .npy/.npz or a raw file")
    suffix = path.suffix.lower()
    if source.file_type == "npz" or (source.file_type == "auto" and suffix == ".npz"):
        array = _npz_member(path, info.name)
        return ArrayFeed(info, source, shape, array, "npz", f"{path}")
    if suffix in LIST_EXTENSIONS:
        files = _read_list(path, info.name)
        kinds = [(f, "file" if uses_function else _file_kind(f, source.file_type))
                 for f in files]
        return ItemFeed(info, source, shape, kinds, kind="list")
    if uses_function:
        return ItemFeed(info, source, shape, [(path, "file")], kind="file")
    kind = _file_kind(path, source.file_type)
    if kind == "npy":
        return ArrayFeed(info, source, shape, _open_npy(path), "npy", f"{path}")
    return ItemFeed(info, source, shape, [(path, kind)], kind=kind)


def _resolved_shape(info: InputInfo, source: CalibSource) -> Tuple[pp.Dim, ...]:
    if source.shape is None:
        return info.shape
    given = tuple(int(d) for d in source.shape)
    if len(given) != len(info.shape) or not _fits(given[1:], info.shape[1:]):
        raise BadInputError(
            f"input shape {list(given)} given for {info.name!r} does not fit the model's "
            f"{pp._fmt_shape(info.shape)}",
            hint="give the full shape including the batch, e.g. 1x3x224x224")
    return (info.shape[0],) + given[1:]


def _npz_member(path: Path, name: str) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = list(npz.files)
            if name in keys:
                return npz[name]
            candidates = [k for k in keys if k not in LABEL_KEYS + REFERENCE_KEYS]
            if len(keys) == 1:
                return npz[keys[0]]
            if len(candidates) == 1:
                return npz[candidates[0]]
    except FileNotFoundError:
        raise NotFoundError(f"{path} does not exist") from None
    except (ValueError, OSError) as exc:
        raise BadInputError(f"cannot read {path} as .npz: {exc}",
                            hint="save with numpy.savez (no pickled objects)") from None
    raise BadInputError(f"{path} has no array for input {name!r} (keys: {', '.join(keys)})",
                        hint=f"name the array {name!r} when saving the .npz")
