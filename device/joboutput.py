"""Job output files: the tensors an evaluation wrote for the host to read back.

An evaluation whose spec names ``dump_outputs`` writes those model outputs of every sample,
in sample order, to ``<store>/job-output/<job id>.out`` (``ReadJobOutput`` streams it to the
host that submitted the job). The file is::

    MAGIC                                     b"edgetune-job-output-v1\\n"
    record, record, ...                       one per sample and output, sample-major
    record := u32 LE header length | header (UTF-8 JSON) | the tensor's bytes
    header  = {"sample": i, "name": output, "dtype": "float32", "shape": [per-sample dims],
               "bytes": n}

A tensor is one sample's value (its batch axis dropped), little-endian, C order.

Bounds (``[limits]`` of agent.toml):

- ``max_job_output_bytes``: one job's file. After the first batch the size of every sample
  is known, so a job whose file would be larger fails before writing more, saying how many
  of the outputs asked for would fit; the disk's free space is checked the same way.
- ``max_job_outputs`` files are kept: writing a new one removes the oldest beyond that;
  a file is removed ``job_output_ttl_s`` after its job ended (the job's record stays).
  Disk use is at most ``max_job_outputs`` x ``max_job_output_bytes``.
- Memory: one batch's outputs, as the evaluation holds anyway; nothing is accumulated.

A file is written as ``<job id>.out.part`` and renamed when complete: a failed, cancelled
or interrupted job leaves nothing (``.part`` files are removed at start). Paths are built
from the job id the agent made (32 lowercase hex), never from anything a caller sent.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import struct
import time
from pathlib import Path
from typing import Any, BinaryIO, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edgetune.device.errors import InvalidArgument, NotFound, ResourceExhausted
from edgetune.device.limits import Limits
from edgetune.device.safefs import check_private_dir

log = logging.getLogger("edgetune.agent.joboutput")

FOLDER = "job-output"
MAGIC = b"edgetune-job-output-v1\n"
SUFFIX = ".out"
HEADER = struct.Struct("<I")
MAX_HEADER_BYTES = 64 << 10            # a record's JSON header (a name is at most 1 KiB)
JOB_ID = re.compile(r"^[0-9a-f]{32}$")


def record_header(sample: int, name: str, value: np.ndarray) -> bytes:
    """The framed header of one record: length, then the JSON."""
    text = json.dumps({"sample": sample, "name": name, "dtype": value.dtype.name,
                       "shape": list(value.shape), "bytes": int(value.nbytes)},
                      separators=(",", ":")).encode()
    return HEADER.pack(len(text)) + text


def _mib(n: float) -> str:
    """A size for people: bytes, KiB or MiB."""
    if n < 1024:
        return f"{int(n)} bytes"
    if n < 1 << 20:
        return f"{n / 1024:.1f} KiB"
    return f"{n / (1 << 20):.1f} MiB"


def fit_message(per_output: Dict[str, int], samples: int, budget: int, what: str,
                noun: str = "outputs") -> str:
    """'the N outputs asked for take ...; K of the N fit (smallest first)': ``per_output``
    holds each output's bytes a sample (header included)."""
    total = sum(per_output.values()) * samples
    fit, used = 0, 0
    for size in sorted(per_output.values()):
        if used + size * samples > budget:
            break
        used += size * samples
        fit += 1
    n = len(per_output)
    return (f"the {n} {noun} asked for take {_mib(total)} over {samples} samples "
            f"({_mib(sum(per_output.values()))} a sample), more than {what} ({_mib(budget)}); "
            f"{fit} of the {n} {noun} fit (smallest first)")


class OutputWriter:
    """Writes one job's records; ``commit`` makes the file visible, ``discard`` removes it."""

    def __init__(self, path: Path, names: Sequence[str], samples: int, limits: Limits) -> None:
        self.path = path
        self.part = path.with_name(path.name + ".part")
        self.names = list(names)
        self.samples = samples
        self.limits = limits
        self.written = 0
        self._file: Optional[BinaryIO] = None
        self._index: List[int] = []

    def _start(self, model_outputs: Sequence[str], values: Sequence[np.ndarray]) -> None:
        missing = [n for n in self.names if n not in model_outputs]
        if missing:
            shown = ", ".join(repr(n) for n in missing[:5])
            raise InvalidArgument(
                f"dump_outputs names {shown}, which the model does not output; its outputs "
                f"are {', '.join(list(model_outputs)[:20])}")
        self._index = [list(model_outputs).index(n) for n in self.names]
        for name, i in zip(self.names, self._index):
            if np.asarray(values[i]).dtype.kind not in "fiub":
                raise InvalidArgument(f"output {name!r} holds {np.asarray(values[i]).dtype} "
                                      "values; only numeric tensors can be written")
        per_output = {}
        for name, i in zip(self.names, self._index):
            one = values[i][:1]
            per_output[name] = int(one.nbytes) + len(record_header(self.samples, name, one[0]))
        needed = len(MAGIC) + sum(per_output.values()) * self.samples
        if needed > self.limits.max_job_output_bytes:
            raise ResourceExhausted(
                fit_message(per_output, self.samples, self.limits.max_job_output_bytes,
                            "this agent's limit for a job's output file ([limits] "
                            "max_job_output_bytes in agent.toml)")
                + "; ask for fewer outputs or samples, or raise the limit")
        free = shutil.disk_usage(str(self.path.parent)).free
        if needed > free:
            raise ResourceExhausted(
                fit_message(per_output, self.samples, free, "the board's free disk")
                + "; ask for fewer outputs or samples, or free the board's disk")
        self._file = open(self.part, "wb")
        os.chmod(str(self.part), 0o600)
        self._file.write(MAGIC)
        self.written = len(MAGIC)

    def write_batch(self, begin: int, real: int, model_outputs: Sequence[str],
                    values: Sequence[np.ndarray]) -> None:
        """Append samples ``begin .. begin + real - 1`` of a batch's outputs."""
        if self._file is None:
            self._start(model_outputs, values)
        assert self._file is not None
        for k in range(real):
            for name, i in zip(self.names, self._index):
                value = np.ascontiguousarray(values[i][k])
                if value.dtype.byteorder == ">":
                    value = value.astype(value.dtype.newbyteorder("<"))
                head = record_header(begin + k, name, value)
                if self.written + len(head) + value.nbytes > self.limits.max_job_output_bytes:
                    raise ResourceExhausted(   # shapes that change from batch to batch
                        f"the job's output file would pass [limits] max_job_output_bytes "
                        f"({_mib(self.limits.max_job_output_bytes)}) at sample {begin + k}")
                self._file.write(head)
                self._file.write(memoryview(value.reshape(-1)).cast("B"))
                self.written += len(head) + value.nbytes

    def commit(self) -> int:
        """Flush, fsync, rename into place; the file's size."""
        if self._file is None:                 # no sample at all: an empty file
            self._file = open(self.part, "wb")
            os.chmod(str(self.part), 0o600)
            self._file.write(MAGIC)
            self.written = len(MAGIC)
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(str(self.part), str(self.path))
        return self.written

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
        try:
            self.part.unlink()
        except FileNotFoundError:
            pass


class JobOutputs:
    """The folder of job output files under the store's root."""

    def __init__(self, store_root: Path, limits: Limits) -> None:
        self.folder = Path(store_root) / FOLDER
        self.limits = limits

    def _ensure(self) -> None:
        check_private_dir(self.folder)

    def path(self, job_id: str) -> Path:
        if not isinstance(job_id, str) or not JOB_ID.match(job_id):
            raise InvalidArgument(f"job_id must be 32 lowercase hexadecimal characters (got "
                                  f"{str(job_id)[:80]!r}); list jobs with `edgetune jobs list`")
        return self.folder / f"{job_id}{SUFFIX}"

    def writer(self, job_id: str, names: Sequence[str], samples: int) -> OutputWriter:
        """A writer for ``job_id``'s file, after making room: expired files and the oldest
        beyond ``max_job_outputs - 1`` go."""
        self._ensure()
        self.sweep(keep=self.limits.max_job_outputs - 1)
        return OutputWriter(self.path(job_id), names, samples, self.limits)

    def open(self, job_id: str) -> Tuple[BinaryIO, int]:
        """The file of ``job_id`` opened for reading, and its size; NotFound when it is gone."""
        path = self.path(job_id)
        self.sweep()
        try:
            handle = open(path, "rb")
        except FileNotFoundError:
            raise NotFound(
                f"the output of job {job_id} is no longer on the board: output files are kept "
                f"{self.limits.job_output_ttl_s:g} s after their job and at most "
                f"{self.limits.max_job_outputs} at once ([limits] job_output_ttl_s, "
                "max_job_outputs); run the job again") from None
        return handle, os.fstat(handle.fileno()).st_size

    def files(self) -> List[Path]:
        try:
            return sorted((p for p in self.folder.iterdir() if p.name.endswith(SUFFIX)),
                          key=lambda p: p.stat().st_mtime)
        except FileNotFoundError:
            return []

    def sweep(self, keep: Optional[int] = None, now: Optional[float] = None) -> int:
        """Remove expired files, then the oldest beyond ``keep`` (default max_job_outputs);
        how many were removed."""
        now = time.time() if now is None else now
        keep = self.limits.max_job_outputs if keep is None else max(keep, 0)
        removed = 0
        files = self.files()
        for i, path in enumerate(files):
            try:
                expired = now - path.stat().st_mtime > self.limits.job_output_ttl_s
                if expired or len(files) - i > keep:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
        if removed:
            log.info("removed %d job output file(s) (expired or beyond max_job_outputs)",
                     removed)
        return removed

    def remove_partial(self) -> None:
        """At start: what a killed agent was writing."""
        try:
            for path in self.folder.glob("*.part"):
                path.unlink()
        except FileNotFoundError:
            pass


def read_at(handle: BinaryIO, offset: int, size: int) -> bytes:
    handle.seek(offset)
    return handle.read(size)


def parse_header(raw: bytes) -> Dict[str, Any]:
    """A record's JSON header, checked (the host's reader uses it too)."""
    head = json.loads(raw.decode("utf-8"))
    if not (isinstance(head, dict) and isinstance(head.get("name"), str)
            and isinstance(head.get("sample"), int) and isinstance(head.get("bytes"), int)
            and isinstance(head.get("shape"), list) and isinstance(head.get("dtype"), str)):
        raise ValueError(f"a malformed record header: {raw[:200]!r}")
    return head


__all__ = ["FOLDER", "MAGIC", "JobOutputs", "OutputWriter", "fit_message", "parse_header",
           "read_at", "record_header"]
