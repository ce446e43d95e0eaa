"""Datasets on the board: ``.npz`` files of plain numeric arrays, loaded without pickle.

A dataset holds one array per model input, keyed by the input's name, whose first axis is
the sample axis: the array has the model input's rank and ``array[i:i+1]`` is a batch of one
sample. Optional extras:

- ``labels``: integers, shape ``[N]`` for classification (top-1/top-5) or ``[N, H, W]`` for
  segmentation (mIoU);
- reference outputs keyed by the model's output names, ``[N, ...]``, for fidelity metrics;
- ``boxes`` [N, M, 4], ``classes`` [N, M] and optionally ``image_ids`` [N]: detection ground
  truth for mAP (``edgetune.device.detection``).

``check_dataset_file`` runs at upload and reads only the npy headers (cheap, and safe
against compressed members that would unpack to huge arrays); ``load_dataset`` runs at job
time and loads every array into memory with ``allow_pickle=False``, from the stored file the
runner opened (``BlobStore.open``), never by its name again.
"""

from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.lib.format as npy_format

from edgetune.device.errors import InvalidArgument

log = logging.getLogger("edgetune.agent.datasets")

LABELS = "labels"
DETECTION_KEYS = ("boxes", "classes", "image_ids")   # ground truth of a detection set
NUMERIC_KINDS = "biuf"          # bool, signed, unsigned, float
SAVE_HINT = "save plain numeric arrays, e.g. np.savez(path, input=x.astype(np.float32), labels=y)"

# onnxruntime's NodeArg.type strings -> numpy dtypes
ORT_DTYPES: Dict[str, Any] = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(int16)": np.int16,
    "tensor(uint16)": np.uint16, "tensor(int32)": np.int32, "tensor(uint32)": np.uint32,
    "tensor(int64)": np.int64, "tensor(uint64)": np.uint64, "tensor(bool)": np.bool_,
}


@dataclass(frozen=True)
class ArrayHeader:
    name: str
    shape: Tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class DatasetSummary:
    samples: int
    arrays: Tuple[ArrayHeader, ...]
    unpacked_bytes: int


@dataclass(frozen=True)
class Dataset:
    """Every array of a dataset, in memory; ``samples`` is their common first-axis length."""

    arrays: Dict[str, np.ndarray]
    samples: int

    @property
    def labels(self) -> Optional[np.ndarray]:
        return self.arrays.get(LABELS)


@dataclass(frozen=True)
class MatchedDataset:
    """A dataset lined up with a model: what to feed, what to compare with, the labels."""

    inputs: Dict[str, np.ndarray]           # model input name -> [N, ...]
    references: Dict[str, np.ndarray]       # model output name -> [N, ...]
    labels: Optional[np.ndarray]
    samples: int
    fixed_batch: Optional[int]              # the model's fixed batch size (None: dynamic)
    detection: Dict[str, np.ndarray] = field(default_factory=dict)   # boxes, classes, image_ids


def _read_header(fp: Any) -> Tuple[Tuple[int, ...], bool, np.dtype]:
    version = npy_format.read_magic(fp)
    if version == (1, 0):
        return npy_format.read_array_header_1_0(fp)
    if version == (2, 0):
        return npy_format.read_array_header_2_0(fp)
    reader = getattr(npy_format, "_read_array_header", None)
    if reader is None:  # pragma: no cover - old numpy on a board
        raise ValueError(f"npy format version {version} is not supported by this numpy")
    return reader(fp, version)


def _refuse_dtype(name: str, dtype: np.dtype) -> None:
    if dtype.hasobject:
        raise InvalidArgument(f"dataset refused: array '{name}' holds pickled Python objects; "
                              + SAVE_HINT)
    if dtype.kind not in NUMERIC_KINDS or dtype.fields is not None:
        raise InvalidArgument(f"dataset refused: array '{name}' has dtype {dtype}, which is not a "
                              "plain number or bool type; " + SAVE_HINT)


def check_dataset_file(path: Path, *, max_bytes: int = 2 << 30,
                       max_samples: int = 1_000_000) -> DatasetSummary:
    """Upload-time check from the npy headers only: a zip of ``.npy`` members, plain
    numeric dtypes, one common first-axis length, and a bounded unpacked size."""
    try:
        zf = zipfile.ZipFile(str(path))
        return _check_members(zf, max_bytes, max_samples)
    except InvalidArgument:
        raise
    except Exception as exc:  # noqa: BLE001 - zipfile raises many kinds on a malformed archive
        # (BadZipFile, NotImplementedError for an unknown zip version, IndexError for an
        # empty member name, EOFError, zlib.error, ...): all mean the same to the sender.
        raise InvalidArgument(f"dataset refused: not an .npz file ({type(exc).__name__}: "
                              f"{exc}); save it with numpy.savez or numpy.savez_compressed") \
            from None


def _check_members(zf: zipfile.ZipFile, max_bytes: int, max_samples: int) -> DatasetSummary:
    headers: List[ArrayHeader] = []
    total = 0
    with zf:
        names = zf.namelist()
        if len(set(names)) != len(names):
            raise InvalidArgument("dataset refused: the .npz holds two members with the same name")
        for info in zf.infolist():
            if info.is_dir():
                continue
            if not info.filename.endswith(".npy"):
                raise InvalidArgument(f"dataset refused: member {info.filename!r} is not a .npy "
                                      "array; " + SAVE_HINT)
            name = info.filename[:-len(".npy")]
            try:
                with zf.open(info) as fp:
                    shape, _fortran, dtype = _read_header(fp)
            except InvalidArgument:
                raise
            except Exception as exc:
                raise InvalidArgument(f"dataset refused: array '{name}' is not a valid .npy "
                                      f"array ({exc})") from None
            _refuse_dtype(name, dtype)
            if len(shape) == 0:
                raise InvalidArgument(f"dataset refused: array '{name}' is a scalar; every array "
                                      "needs a first axis over the samples")
            nbytes = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
            total += max(nbytes, info.file_size)
            headers.append(ArrayHeader(name, tuple(int(d) for d in shape), str(dtype)))
    if not headers:
        raise InvalidArgument("dataset refused: the .npz holds no arrays; " + SAVE_HINT)
    if total > max_bytes:
        raise InvalidArgument(f"dataset refused: its arrays take {total} bytes unpacked, more than "
                              f"this agent's limit of {max_bytes} bytes ([limits] "
                              "max_dataset_bytes); split it or use fewer samples")
    samples = _common_length({h.name: h.shape for h in headers})
    if samples > max_samples:
        raise InvalidArgument(f"dataset refused: {samples} samples is more than this agent's limit "
                              f"of {max_samples} ([limits] max_dataset_samples); split it")
    return DatasetSummary(samples=samples, arrays=tuple(headers), unpacked_bytes=total)


def _common_length(shapes: Dict[str, Tuple[int, ...]]) -> int:
    lengths = {name: shape[0] for name, shape in shapes.items()}
    if len(set(lengths.values())) != 1:
        shown = ", ".join(f"{n}: {l}" for n, l in sorted(lengths.items()))
        raise InvalidArgument(f"dataset refused: arrays disagree on the number of samples "
                              f"(first axis) ({shown}); every array needs the same first axis")
    samples = next(iter(lengths.values()))
    if samples < 1:
        raise InvalidArgument("dataset refused: it holds 0 samples")
    return samples


def load_dataset(source: Union[Path, str, BinaryIO]) -> Dataset:
    """Load every array (pickle disabled); InvalidArgument for object arrays or a bad file.

    ``source``: a path, or a binary file object open on the ``.npz`` (the agent passes the
    stored file it opened and checked, ``BlobStore.open``, so the name is not resolved again);
    a file object is read from its start and left open."""
    try:
        if hasattr(source, "read"):
            source.seek(0)                  # type: ignore[union-attr]
            npz = np.load(source, allow_pickle=False)
        else:
            npz = np.load(str(source), allow_pickle=False)
    except Exception as exc:
        raise InvalidArgument(f"dataset refused: not an .npz file ({exc}); save it with "
                              "numpy.savez") from None
    if not hasattr(npz, "files"):
        raise InvalidArgument("dataset refused: a single .npy array, not an .npz; save it with "
                              "numpy.savez(path, input_name=array, labels=labels)")
    arrays: Dict[str, np.ndarray] = {}
    with npz:
        for name in npz.files:
            try:
                value = npz[name]
            except ValueError as exc:
                if "pickle" in str(exc).lower() or "object" in str(exc).lower():
                    raise InvalidArgument(f"dataset refused: array '{name}' holds pickled Python "
                                          "objects; " + SAVE_HINT) from None
                raise InvalidArgument(f"dataset refused: array '{name}' cannot be read "
                                      f"({exc})") from None
            except Exception as exc:  # noqa: BLE001 - a malformed member (see check_dataset_file)
                raise InvalidArgument(f"dataset refused: array '{name}' cannot be read "
                                      f"({type(exc).__name__}: {exc})") from None
            if not isinstance(value, np.ndarray):
                raise InvalidArgument(f"dataset refused: member '{name}' is not a .npy array; "
                                      + SAVE_HINT)
            _refuse_dtype(name, value.dtype)
            if value.ndim == 0:
                raise InvalidArgument(f"dataset refused: array '{name}' is a scalar; every array "
                                      "needs a first axis over the samples")
            arrays[name] = value
    if not arrays:
        raise InvalidArgument("dataset refused: the .npz holds no arrays; " + SAVE_HINT)
    samples = _common_length({n: a.shape for n, a in arrays.items()})
    return Dataset(arrays=arrays, samples=samples)


def _shape_text(shape: Sequence[Any]) -> str:
    return "[" + ", ".join(str(d) if d is not None else "?" for d in shape) + "]"


def _fixed(dim: Any) -> bool:
    return isinstance(dim, int) and dim > 0


def match_to_model(dataset: Dataset, session_inputs: Sequence[Any],
                   session_outputs: Sequence[Any]) -> MatchedDataset:
    """Line the dataset's arrays up with a session's inputs and outputs.

    ``session_inputs``/``session_outputs`` are onnxruntime NodeArgs (anything with ``name``,
    ``shape`` and ``type``). InvalidArgument names every mismatch and the expected shape.
    """
    input_names = [i.name for i in session_inputs]
    output_names = [o.name for o in session_outputs]
    arrays = dataset.arrays
    missing = [n for n in input_names if n not in arrays]
    if missing:
        have = sorted(n for n in arrays if n != LABELS and n not in output_names)
        raise InvalidArgument(
            f"dataset has arrays {_list(have)} but the model's inputs are {_list(input_names)}; "
            "name each array after a model input")
    unknown = sorted(n for n in arrays if n not in input_names and n not in output_names
                     and n != LABELS and n not in DETECTION_KEYS)
    if unknown:
        raise InvalidArgument(
            f"dataset arrays {_list(unknown)} match no model input {_list(input_names)} or "
            f"output {_list(output_names)} and are not '{LABELS}' (or a detection set's "
            f"{', '.join(DETECTION_KEYS)}); rename or drop them")
    fixed_batch: Optional[int] = None
    inputs: Dict[str, np.ndarray] = {}
    for node in session_inputs:
        array = arrays[node.name]
        want = ORT_DTYPES.get(node.type)
        if want is None:
            raise InvalidArgument(f"model input '{node.name}' has type {node.type}, which "
                                  "datasets cannot feed; only numeric tensor inputs are supported")
        if array.dtype != np.dtype(want):
            raise InvalidArgument(
                f"dataset array '{node.name}' is {array.dtype} but the model's input "
                f"'{node.name}' takes {np.dtype(want)}; save it with .astype(np.{np.dtype(want)})")
        shape = list(node.shape)
        expected = ["N"] + [d if _fixed(d) else "?" for d in shape[1:]]
        if array.ndim != len(shape) or any(
                _fixed(d) and d != a for d, a in zip(shape[1:], array.shape[1:])):
            raise InvalidArgument(
                f"dataset array '{node.name}' has shape {_shape_text(array.shape)} but the "
                f"model's input '{node.name}' is {_shape_text(shape)}, so the array must be "
                f"{_shape_text(expected)} (N samples along the first axis)")
        if shape and _fixed(shape[0]):
            if fixed_batch is not None and fixed_batch != shape[0]:
                raise InvalidArgument("the model's inputs have different fixed batch sizes "
                                      f"({fixed_batch} and {shape[0]}); they cannot be fed together")
            fixed_batch = shape[0]
        inputs[node.name] = array
    references: Dict[str, np.ndarray] = {}
    for node in session_outputs:
        if node.name in arrays:
            ref = arrays[node.name]
            shape = list(node.shape or [])
            if shape and ref.ndim != len(shape):
                raise InvalidArgument(
                    f"reference output '{node.name}' has shape {_shape_text(ref.shape)} but the "
                    f"model's output is {_shape_text(shape)}; store the outputs of all N samples "
                    "stacked along the first axis")
            references[node.name] = ref
    labels = arrays.get(LABELS) if LABELS not in output_names else None
    if labels is not None and labels.dtype.kind not in "iu":
        raise InvalidArgument(f"dataset array '{LABELS}' is {labels.dtype}; labels must be "
                              "integer class indices (e.g. .astype(np.int64))")
    detection = {k: arrays[k] for k in DETECTION_KEYS
                 if k in arrays and k not in input_names and k not in output_names}
    return MatchedDataset(inputs=inputs, references=references, labels=labels,
                          samples=dataset.samples, fixed_batch=fixed_batch, detection=detection)


def _list(names: Sequence[str]) -> str:
    return "[" + ", ".join(names) + "]"
