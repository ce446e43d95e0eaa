"""``analyze FLOAT QUANT --device B``: per-layer error of the board's own int8 kernels.

The host builds a copy of the quantized model that also outputs every analysed tensor (each
activation's DequantizeLinear output: what the next layer receives). The board runs that
copy on the samples as an evaluation that writes those outputs of every sample to the job's
output file (``EvaluateSpec.dump_outputs``, ``edgetune.device.joboutput``); the host then
reads the file back over ``ReadJobOutput`` in chunks (resumed by offset after a dropped
stream) and compares each tensor as its bytes arrive with

- the host's own INT8 run of the same copy (onnxruntime's default session options, as the
  agent uses): "board vs host INT8";
- the FP32 model's matching tensor: "board vs FP32".

Memory stays bounded on both sides. The board holds one batch's outputs while it writes
them, and one chunk per stream while it sends. The host holds the inputs of the samples sent
(uploaded as the job's dataset), its own INT8 and FP32 tensors of one sample at a time (the
sample whose records are arriving: the file is sample-major), one chunk (at most the agent's
``max_output_chunk_bytes``, 1 MiB by default) and one record header (at most 64 KiB); a
board tensor is never assembled: cosine and SQNR are sums over its elements, taken slice by
slice. ``BoardAnalysis.host_buffer_bytes`` is that bound for the run.

A board too small for the tensors asked for: before anything is sent, the file's size (every
tensor of every sample, with its record header) is checked against the board's
``[limits] max_job_output_bytes`` (``GetInfo``), and the error says how many of the tensors
would fit; the agent checks it again (and its free disk) when the job starts. An agent
without the ``job_output`` feature (an older release) is refused before anything is sent.

A tensor whose board output departs from the host's INT8 run by more than the stated
thresholds (SQNR below ``BOARD_SQNR_DB``, or cosine below ``BOARD_COSINE``) is flagged: the
board's kernels compute something other than the host's simulation there.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edgetune.host.errors import AgentError, BadInputError

BOARD_SQNR_DB = 40.0          # board vs host INT8: below this, flagged
BOARD_COSINE = 0.9999         # board vs host INT8: below this, flagged
NUMERIC_KINDS = "fiub"        # dtypes a board tensor may have


@dataclass(frozen=True)
class BoardTensor:
    tensor: str                         # the float model's name (what analyze reports)
    output: str                         # the quantized copy's output read on the board
    vs_fp32: Dict[str, float]           # board vs the host's FP32 tensor: cosine, sqnr_db
    vs_host_int8: Dict[str, float]      # board vs the host's own INT8 run
    flagged: bool

    def as_dict(self) -> Dict[str, Any]:
        return {"tensor": self.tensor, "output": self.output, "board_vs_fp32": self.vs_fp32,
                "board_vs_host_int8": self.vs_host_int8, "flagged": self.flagged}


@dataclass(frozen=True)
class StreamStats:
    """How the board's tensors came back."""

    job_id: str
    output_bytes: int                   # the job's output file
    chunks: int                         # ReadJobOutput messages received
    resumes: int                        # streams opened again after a drop
    host_buffer_bytes: int              # the host's bound: one sample's references + a chunk

    def as_dict(self) -> Dict[str, Any]:
        return {"job_id": self.job_id, "output_bytes": self.output_bytes,
                "chunks": self.chunks, "resumes": self.resumes,
                "host_buffer_bytes": self.host_buffer_bytes}


@dataclass(frozen=True)
class BoardAnalysis:
    device: str
    samples: int
    tensors: Tuple[BoardTensor, ...]
    dataset_bytes: int                  # the inputs sent to the board
    thresholds: Dict[str, float]
    stream: Optional[StreamStats] = None

    def flagged(self) -> List[BoardTensor]:
        return [t for t in self.tensors if t.flagged]

    def as_dict(self) -> Dict[str, Any]:
        d = {"device": self.device, "samples": self.samples,
             "dataset_bytes": self.dataset_bytes, "thresholds": self.thresholds,
             "tensors": [t.as_dict() for t in self.tensors],
             "flagged": [t.tensor for t in self.flagged()]}
        if self.stream is not None:
            d["stream"] = self.stream.as_dict()
        return d


def _targets(fmodel: Any, qmodel: Any) -> List[Tuple[str, str]]:
    """(float tensor, quantized copy's tensor) for every activation Q/DQ pair whose float
    tensor exists in the float model, plus the model outputs."""
    from edgetune.host.quant.graphwalk import Graph, find_qdq
    pairs, _ = find_qdq(Graph(qmodel))
    float_names = {o for n in fmodel.graph.node for o in n.output} | \
        {i.name for i in fmodel.graph.input}
    out: List[Tuple[str, str]] = []
    seen = set()
    for pair in pairs:
        if pair.pre in float_names and pair.post not in seen:
            out.append((pair.pre, pair.post))
            seen.add(pair.post)
    for o in qmodel.graph.output:
        if o.name in float_names and o.name not in seen:
            out.append((o.name, o.name))
            seen.add(o.name)
    return out


def _augmented(model: Any, names: Sequence[str]) -> bytes:
    from edgetune.host.quant.analysis import _with_outputs
    return _with_outputs(model, names)


class HostReference:
    """The host's INT8 and FP32 tensors of one sample at a time (the one asked last), from
    two onnxruntime sessions made once."""

    def __init__(self, copy: bytes, fmodel: Any, targets: Sequence[Tuple[str, str]],
                 feeds: Dict[str, np.ndarray]) -> None:
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.feeds = feeds
        self.targets = list(targets)
        self.qnames = [q for _, q in targets]
        self.fnames = [f for f, _ in targets if f not in feeds]
        self.qsession = ort.InferenceSession(copy, sess_options=options,
                                             providers=["CPUExecutionProvider"])
        self.fsession = (ort.InferenceSession(_augmented(fmodel, self.fnames),
                                              sess_options=options,
                                              providers=["CPUExecutionProvider"])
                         if self.fnames else None)
        self.index = -1
        self.int8: Dict[str, np.ndarray] = {}
        self.fp32: Dict[str, np.ndarray] = {}

    def sample(self, i: int) -> "HostReference":
        if i != self.index:
            self.int8, self.fp32 = {}, {}           # the previous sample's go first
            one = {k: v[i:i + 1] for k, v in self.feeds.items()}
            for name, value in zip(self.qnames, self.qsession.run(self.qnames, one)):
                self.int8[name] = _one(value)
            if self.fsession is not None:
                for name, value in zip(self.fnames, self.fsession.run(self.fnames, one)):
                    self.fp32[name] = _one(value)
            for f, _ in self.targets:
                if f in self.feeds:
                    self.fp32[f] = _one(self.feeds[f][i:i + 1])
            self.index = i
        return self

    def nbytes(self) -> int:
        return sum(int(v.nbytes) for v in self.int8.values()) + \
            sum(int(v.nbytes) for v in self.fp32.values())


def _one(value: Any) -> np.ndarray:
    """One sample's tensor, as the board writes it: the batch axis dropped."""
    arr = np.asarray(value)
    return np.ascontiguousarray(arr[0] if arr.ndim else arr)


class _Sums:
    """cosine (mean over samples) and SQNR of a board tensor against one reference, from
    sums taken slice by slice as the tensor's bytes arrive."""

    def __init__(self) -> None:
        self.cos_sum = 0.0
        self.samples = 0
        self.ref_sq = 0.0
        self.err_sq = 0.0
        self._part = [0.0, 0.0, 0.0, 0.0]            # dot, ref_sq, out_sq, err_sq of a sample

    def add(self, ref: np.ndarray, out: np.ndarray) -> None:
        r = ref.astype(np.float64)
        o = out.astype(np.float64)
        e = r - o
        self._part[0] += float(np.dot(r, o))
        self._part[1] += float(np.dot(r, r))
        self._part[2] += float(np.dot(o, o))
        self._part[3] += float(np.dot(e, e))

    def end_sample(self) -> None:
        from edgetune.device.metrics import cosine_from_sums
        dot, rsq, osq, esq = self._part
        self.cos_sum += cosine_from_sums(dot, rsq, osq)
        self.samples += 1
        self.ref_sq += rsq
        self.err_sq += esq
        self._part = [0.0, 0.0, 0.0, 0.0]

    def result(self) -> Dict[str, float]:
        from edgetune.device.metrics import sqnr_from_sums
        if not self.samples:
            return {}
        return {"cosine": self.cos_sum / self.samples,
                "sqnr_db": sqnr_from_sums(self.ref_sq, self.err_sq)}


@dataclass
class _Record:
    """The board tensor being received: where its elements go."""

    sample: int
    name: str
    dtype: np.dtype
    size: int                           # elements
    refs: List[Tuple[np.ndarray, _Sums]] = field(default_factory=list)  # flat references
    done: int = 0                       # elements received
    left: bytes = b""                   # a partial element carried to the next slice


class OutputReader:
    """Parses a job output file (``edgetune.device.joboutput``) as chunks arrive and hands
    each tensor's elements, slice by slice, to ``_Sums`` against the host's references.

    ``expected``: the board outputs asked for; ``reference(sample)``: the host's references
    of that sample (``HostReference``); ``pairs``: (float name, board output name)."""

    def __init__(self, samples: int, pairs: Sequence[Tuple[str, str]],
                 reference: Callable[[int], HostReference]) -> None:
        from edgetune.device.joboutput import MAGIC, MAX_HEADER_BYTES
        self.samples = samples
        self.float_of = {q: f for f, q in pairs}
        self.order = [q for _, q in pairs]
        self.reference = reference
        self.vs_int8 = {q: _Sums() for q in self.order}
        self.vs_fp32 = {q: _Sums() for q in self.order}
        self._magic = MAGIC
        self._max_header = MAX_HEADER_BYTES
        self._buffer = bytearray()
        self._state = "magic"
        self._need = len(MAGIC)
        self._record: Optional[_Record] = None
        self._next = (0, 0)                 # (sample, index in order) expected next
        self.peak_buffer = 0

    # ------------------------------------------------------------------ parsing
    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while len(view):
            if self._state == "data":
                view = self._data(view)
                continue
            take = min(self._need - len(self._buffer), len(view))
            self._buffer += view[:take]
            view = view[take:]
            self.peak_buffer = max(self.peak_buffer, len(self._buffer))
            if len(self._buffer) < self._need:
                return
            raw, self._buffer = bytes(self._buffer), bytearray()
            if self._state == "magic":
                if raw != self._magic:
                    raise AgentError(f"the board's output file does not start with "
                                     f"{self._magic!r} (got {raw[:40]!r})")
                self._state, self._need = "length", 4
            elif self._state == "length":
                length = int.from_bytes(raw, "little")
                if not 0 < length <= self._max_header:
                    raise AgentError(f"the board's output file has a record header of "
                                     f"{length} bytes (at most {self._max_header})")
                self._state, self._need = "header", length
            else:
                self._begin(raw)

    def _begin(self, raw: bytes) -> None:
        from edgetune.device.joboutput import parse_header
        try:
            head = parse_header(raw)
            dtype = np.dtype(head["dtype"])
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            raise AgentError(f"the board's output file has a malformed record: {exc}") from None
        sample, name = head["sample"], head["name"]
        want_sample, want_index = self._next
        if want_sample >= self.samples:
            raise AgentError(f"the board's output file holds more than the {self.samples} "
                             "samples sent")
        want = self.order[want_index]
        if (sample, name) != (want_sample, want):
            raise AgentError(f"the board's output file holds {name!r} of sample {sample} where "
                             f"{want!r} of sample {want_sample} was expected")
        size = int(np.prod(head["shape"], dtype=np.int64))
        if dtype.kind not in NUMERIC_KINDS or size * dtype.itemsize != head["bytes"]:
            raise AgentError(f"the board's record of {name!r} (sample {sample}) says "
                             f"{head['bytes']} bytes of {dtype} shaped {head['shape']}")
        ref = self.reference(sample)
        host = ref.int8[name]
        if host.size != size:
            raise AgentError(f"the board's {name!r} has shape {head['shape']}, the host's "
                             f"{list(host.shape)}: the board ran another model")
        record = _Record(sample=sample, name=name, dtype=dtype.newbyteorder("<"), size=size)
        record.refs.append((host.reshape(-1), self.vs_int8[name]))
        fp32 = ref.fp32.get(self.float_of[name])
        if fp32 is not None and fp32.size == size:
            record.refs.append((fp32.reshape(-1), self.vs_fp32[name]))
        self._record = record
        self._state = "data"
        self._advance()
        if size == 0:
            self._end()

    def _data(self, view: memoryview) -> memoryview:
        record = self._record
        assert record is not None
        itemsize = record.dtype.itemsize
        remaining = (record.size - record.done) * itemsize - len(record.left)
        take = min(remaining, len(view))
        part, view = view[:take], view[take:]
        if record.left:
            need = itemsize - len(record.left)
            record.left += bytes(part[:need])
            part = part[need:]
            if len(record.left) == itemsize:
                self._elements(record, np.frombuffer(record.left, record.dtype))
                record.left = b""
        whole = len(part) // itemsize * itemsize
        if whole:
            self._elements(record, np.frombuffer(part[:whole], record.dtype))
        record.left += bytes(part[whole:])
        if record.done == record.size:
            self._end()
        return view

    def _elements(self, record: _Record, values: np.ndarray) -> None:
        begin, end = record.done, record.done + len(values)
        for flat, sums in record.refs:
            sums.add(flat[begin:end], values)
        record.done = end

    def _end(self) -> None:
        record = self._record
        assert record is not None
        for _, sums in record.refs:
            sums.end_sample()
        self._record = None
        self._state, self._need = "length", 4

    def _advance(self) -> None:
        sample, index = self._next
        index += 1
        if index == len(self.order):
            sample, index = sample + 1, 0
        self._next = (sample, index)

    def finish(self) -> None:
        """The file ended: every sample's every tensor must have come."""
        if self._record is not None:
            raise AgentError(f"the board's output file ended early: {self._record.name!r} of "
                             f"sample {self._record.sample} is cut short")
        if self._state != "length" or self._buffer or self._next != (self.samples, 0):
            sample, index = self._next
            raise AgentError(f"the board's output file ended early: {self.order[index]!r} of "
                             f"sample {sample} and after it are missing")


def check_fits(per_tensor: Dict[str, int], samples: int, limit: int, device: str) -> None:
    """BadInputError naming how many of the tensors fit when the job's output file (every
    tensor of every sample, ``per_tensor`` bytes a sample each, headers included) would pass
    the board's ``max_job_output_bytes`` (``limit``; 0: the board did not say)."""
    from edgetune.device.joboutput import MAGIC, fit_message
    if limit <= 0:
        return
    if len(MAGIC) + sum(per_tensor.values()) * samples <= limit:
        return
    raise BadInputError(
        fit_message(per_tensor, samples, limit - len(MAGIC),
                    f"{device} keeps for a job's output ([limits] max_job_output_bytes in its "
                    "agent.toml)", noun="tensors"),
        hint="run fewer samples on the board (--board-samples) or fewer tensors "
             "(--board-tensors N), or raise the board's limit")


def board_analysis(float_model: Path, quant_model: Path, feeds: Dict[str, np.ndarray],
                   board: Any, *, max_tensors: int = 0, sent_model: Optional[bytes] = None,
                   workdir: Optional[Path] = None, chunk_bytes: int = 0,
                   runner: str = "") -> BoardAnalysis:
    """Run the analysed tensors on ``board`` (a BoardSession) with ``feeds`` ([N, ...] per
    input), read them back in chunks and compare them on the host with its FP32 and INT8
    tensors.

    ``sent_model``: what the board runs instead of the host's copy (for tests: a model
    change that makes one layer differ on the "board"; same tensor names). ``chunk_bytes``:
    the stream's chunk size (0: the agent's default). ``runner``: the board's runner plug-in
    that runs the copy (one that takes ONNX) instead of the agent's onnxruntime."""
    import onnx

    from edgetune.device.joboutput import record_header
    from edgetune.protos.messages import EvaluateSpec
    fmodel = onnx.load(str(float_model))
    qmodel = onnx.load(str(quant_model))
    targets = _targets(fmodel, qmodel)
    if max_tensors:
        targets = targets[:max_tensors]
    if not targets:
        raise BadInputError(f"{quant_model} has no activation Q/DQ pair whose tensor the float "
                            "model has: nothing to compare on the board")
    samples = len(next(iter(feeds.values())))
    qnames = [q for _, q in targets]
    spec = EvaluateSpec(model_sha256="", dataset_sha256="", batch_size=1,
                        dump_outputs=tuple(qnames), runner=runner)
    board.check_features(spec)              # an agent that cannot send tensors back: refused
    copy = _augmented(qmodel, qnames)
    host = HostReference(copy, fmodel, targets, feeds)
    first = host.sample(0)
    per_tensor = {q: int(first.int8[q].nbytes) + len(record_header(samples, q, first.int8[q]))
                  for q in qnames}
    check_fits(per_tensor, samples, int(getattr(board.board.agent, "max_job_output_bytes", 0)
                                        or 0), board.name)
    input_bytes = sum(int(v.nbytes) for v in feeds.values())
    tmp = Path(tempfile.mkdtemp(prefix="edgetune-board-analysis-", dir=workdir))
    try:
        model_path = tmp / "analysed.onnx"
        model_path.write_bytes(sent_model if sent_model is not None else copy)
        data_path = tmp / "inputs.npz"
        np.savez(str(data_path), **feeds)
        run = board.evaluate(model_path, data_path, spec,
                             label="analyze: the board's tensors")
    finally:
        for leftover in tmp.iterdir():
            leftover.unlink()
        tmp.rmdir()
    if not run.ok:
        raise BadInputError(f"the board could not run the analysed model: "
                            f"{run.error or 'the job failed'}")
    reader = OutputReader(samples, targets, host.sample)
    stream = board.read_output(run, chunk_bytes=chunk_bytes)
    largest_chunk, largest_refs = 0, 0
    for chunk in stream:
        reader.feed(chunk.data)
        largest_chunk = max(largest_chunk, len(chunk.data))
        largest_refs = max(largest_refs, host.nbytes())
    reader.finish()
    tensors = []
    for f, q in targets:
        vs_host = reader.vs_int8[q].result()
        flagged = bool(vs_host) and (vs_host.get("sqnr_db", 200.0) < BOARD_SQNR_DB
                                     or vs_host.get("cosine", 1.0) < BOARD_COSINE)
        tensors.append(BoardTensor(tensor=f, output=q, vs_fp32=reader.vs_fp32[q].result(),
                                   vs_host_int8=vs_host, flagged=flagged))
    stats = StreamStats(job_id=run.job_id, output_bytes=run.result.output_bytes,
                        chunks=stream.chunks, resumes=stream.resumes,
                        host_buffer_bytes=largest_refs + largest_chunk + reader.peak_buffer)
    return BoardAnalysis(device=board.name, samples=samples, tensors=tuple(tensors),
                         dataset_bytes=input_bytes,
                         thresholds={"board_sqnr_db": BOARD_SQNR_DB,
                                     "board_cosine": BOARD_COSINE},
                         stream=stats)
