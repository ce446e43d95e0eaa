"""Calibration data: sources (image folders, list files, .npy/.npz, raw float32) -> model feeds.

``load_calibration(model, settings)`` checks every source against the model's inputs up
front (so a bad file fails before any calibration time is spent), chooses the samples
(``calib_count`` of them, at random with ``seed`` when more exist) and returns a
``CalibrationData`` that loads them lazily, one chunk at a time: images are decoded and
``.npy`` rows are read (memory-mapped) only when their chunk is requested, so memory stays
bounded by the chunk size. ``.npz`` members cannot be memory-mapped: a used member is read
once, when the data is loaded.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from edgetune.host.errors import BadInputError, NotFoundError, UsageError
from edgetune.host.quant.calibsources import (LABEL_KEYS, REFERENCE_KEYS, ArrayFeed, Feed, InputInfo,
                                     build_feed, read_model_inputs)
from edgetune.host.quant.settings import CalibSource, QuantizeSettings

log = logging.getLogger(__name__)

__all__ = ["CalibrationData", "CalibrationReader", "InputInfo", "load_calibration",
           "load_npz_feeds", "read_model_inputs"]


def _npz_keys(path: Path) -> List[str]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return list(npz.files)
    except (ValueError, OSError):
        return []


def _assign_sources(inputs: Sequence[InputInfo],
                    sources: Sequence[CalibSource]) -> Dict[str, CalibSource]:
    names = [i.name for i in inputs]
    if len(sources) == 1 and sources[0].input_name is None:
        source = sources[0]
        if len(inputs) == 1:
            return {names[0]: source}
        path = Path(source.path)
        if path.suffix.lower() == ".npz" and set(names) <= set(_npz_keys(path)):
            return {name: CalibSource(path=path, input_name=name, file_type="npz")
                    for name in names}
        raise UsageError(
            f"the model has {len(inputs)} inputs ({', '.join(names)}): give one source per "
            f"input", hint="--calib NAME=SOURCE for each input, or one .npz keyed by input name")
    assigned: Dict[str, CalibSource] = {}
    for source in sources:
        name = source.input_name
        if name is None:
            if len(inputs) == 1 and len(sources) == 1:
                name = names[0]
            else:
                raise UsageError(
                    f"calibration source {source.path} does not say which input it feeds "
                    f"(the model's inputs: {', '.join(names)})", hint="use --calib NAME=SOURCE")
        if name not in names:
            raise BadInputError(
                f"calibration source for {name!r}: the model has no such input (its inputs: "
                f"{', '.join(names)})", hint="use the model's input names in --calib NAME=SOURCE")
        if name in assigned:
            raise UsageError(f"input {name!r} is given two calibration sources",
                             hint="give one --calib per input")
        assigned[name] = source
    missing = [n for n in names if n not in assigned]
    if missing:
        raise UsageError(f"no calibration data for input(s) {', '.join(missing)} (the model "
                         f"has {len(names)} inputs: {', '.join(names)})",
                         hint="give --calib NAME=SOURCE for every input")
    return assigned


# --- the public object ---------------------------------------------------------------------

class CalibrationData:
    """The chosen calibration samples of every model input, loaded lazily chunk by chunk."""

    def __init__(self, inputs: Sequence[InputInfo], feeds: Mapping[str, Feed],
                 indices: np.ndarray, notes: Sequence[str] = (), seed: int = 0):
        self.inputs: Tuple[InputInfo, ...] = tuple(inputs)
        self.input_names: Tuple[str, ...] = tuple(i.name for i in self.inputs)
        self._feeds = dict(feeds)
        self.indices = np.asarray(indices, dtype=np.int64)
        self.notes: Tuple[str, ...] = tuple(notes)
        self.seed = seed

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray],
                    inputs: Optional[Sequence[InputInfo]] = None) -> "CalibrationData":
        """In-memory data (first axis = samples), e.g. an evaluation set's inputs."""
        if inputs is None:
            inputs = [InputInfo(k, (None,) + tuple(np.shape(v)[1:]), np.asarray(v).dtype)
                      for k, v in arrays.items()]
        feeds: Dict[str, Feed] = {}
        counts = set()
        for info in inputs:
            if info.name not in arrays:
                raise BadInputError(f"no array for input {info.name!r}")
            source = CalibSource(path=Path("<memory>"), input_name=info.name)
            feeds[info.name] = ArrayFeed(info, source, info.shape, np.asarray(arrays[info.name]),
                                          "memory", f"array {info.name!r}")
            counts.add(len(feeds[info.name]))
        if len(counts) > 1:
            raise BadInputError(f"arrays have different sample counts: {sorted(counts)}")
        return cls(inputs, feeds, np.arange(counts.pop() if counts else 0))

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def subset(self, count: int) -> "CalibrationData":
        """The first ``count`` chosen samples (the same ones every time)."""
        return CalibrationData(self.inputs, self._feeds, self.indices[:max(0, count)],
                               self.notes, self.seed)

    def chunks(self, size: int) -> Iterator[Dict[str, np.ndarray]]:
        """Feeds of at most ``size`` samples each (first axis = samples), read on demand."""
        if size < 1:
            raise ValueError("chunk size must be >= 1")
        for start in range(0, len(self), size):
            part = self.indices[start:start + size]
            yield {name: self._feeds[name].load(part) for name in self.input_names}

    def as_reader(self, batch: int = 1) -> "CalibrationReader":
        """An onnxruntime ``CalibrationDataReader`` (get_next / rewind) over the same samples.

        A model whose batch dimension is fixed (e.g. 1) is fed that batch size whatever
        ``batch`` says; a last partial batch that does not fit a fixed batch is dropped.
        """
        fixed = {i.fixed_batch for i in self.inputs if i.fixed_batch is not None}
        if fixed:
            return CalibrationReader(self, min(fixed), drop_partial=True)
        return CalibrationReader(self, max(1, batch))

    def describe(self) -> Dict[str, Any]:
        """What the record says about the data: sources, counts, preprocessing, notes."""
        return {"samples": len(self), "seed": self.seed,
                "inputs": [self._feeds[n].describe() for n in self.input_names],
                "notes": list(self.notes)}


class CalibrationReader:
    """onnxruntime's CalibrationDataReader protocol (its __subclasshook__ accepts this)."""

    def __init__(self, data: CalibrationData, batch: int, drop_partial: bool = False):
        self.data = data
        self.batch = batch
        self.drop_partial = drop_partial
        self._iter: Optional[Iterator[Dict[str, np.ndarray]]] = None

    def _batches(self) -> Iterator[Dict[str, np.ndarray]]:
        chunk = max(self.batch, (64 // self.batch) * self.batch)
        for feeds in self.data.chunks(chunk):
            count = len(next(iter(feeds.values())))
            for start in range(0, count, self.batch):
                if self.drop_partial and start + self.batch > count:
                    break
                yield {k: v[start:start + self.batch] for k, v in feeds.items()}

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        if self._iter is None:
            self._iter = self._batches()
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = None

    def __iter__(self) -> "CalibrationReader":
        return self

    def __next__(self) -> Dict[str, np.ndarray]:
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item

    def __len__(self) -> int:
        n = len(self.data)
        return n // self.batch if self.drop_partial else -(-n // self.batch)


def load_calibration(model: Path, settings: QuantizeSettings) -> CalibrationData:
    """Check the sources against ``model``'s inputs and choose the samples (lazily loaded)."""
    if not settings.calib:
        raise UsageError("no calibration data given",
                         hint="give --calib SOURCE (or --ranges FILE to reuse saved ranges)")
    if settings.calib_count < 1:
        raise UsageError(f"--calib-count must be at least 1, got {settings.calib_count}")
    inputs = read_model_inputs(Path(model))
    if not inputs:
        raise BadInputError(f"{model} has no inputs to calibrate")
    assigned = _assign_sources(inputs, settings.calib)
    feeds = {info.name: build_feed(info, assigned[info.name]) for info in inputs}
    notes: List[str] = []
    counts = {name: len(feed) for name, feed in feeds.items()}
    total = min(counts.values())
    if len(set(counts.values())) > 1:
        message = ("calibration inputs have different sample counts ("
                   + ", ".join(f"{k}: {v}" for k, v in counts.items())
                   + f"); using the first {total} of each")
        log.warning(message)
        notes.append(message)
    wanted = settings.calib_count
    if total > wanted:
        rng = np.random.default_rng(settings.seed)
        indices = np.sort(rng.choice(total, size=wanted, replace=False))
    else:
        indices = np.arange(total)
        if total < wanted:
            message = f"calibrating on all {total} samples (fewer than --calib-count {wanted})"
            log.info(message)
            notes.append(message)
    return CalibrationData(inputs, feeds, indices, notes, settings.seed)


def load_npz_feeds(path: Path, input_names: Sequence[str]
                   ) -> Tuple[Dict[str, np.ndarray], Optional[np.ndarray]]:
    """An evaluation set: arrays keyed by input name (or its only data array) and labels.

    Labels are the ``labels`` (or ``label``) array when present. Loaded with pickle disabled.
    """
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"dataset {path} does not exist", hint="check the path")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (ValueError, OSError) as exc:
        raise BadInputError(f"cannot read {path} as .npz: {exc}",
                            hint="save with numpy.savez (no pickled objects)") from None
    labels = next((arrays[k] for k in LABEL_KEYS if k in arrays), None)
    feeds: Dict[str, np.ndarray] = {}
    data_keys = [k for k in arrays if k not in LABEL_KEYS + REFERENCE_KEYS]
    for name in input_names:
        if name in arrays:
            feeds[name] = arrays[name]
        elif len(input_names) == 1 and len(data_keys) == 1:
            feeds[name] = arrays[data_keys[0]]
        else:
            raise BadInputError(
                f"{path} has no array for input {name!r} (keys: {', '.join(arrays)})",
                hint="save the dataset with one array per model input, named like the input")
    counts = {k: len(v) for k, v in feeds.items()}
    if labels is not None:
        counts["labels"] = len(labels)
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise BadInputError(f"{path}: labels must be a 1-D integer array, got "
                                f"{labels.dtype} {labels.shape}")
    if len(set(counts.values())) > 1:
        raise BadInputError(f"{path}: arrays have different sample counts: {counts}",
                            hint="every array's first axis is the sample index")
    return feeds, labels
