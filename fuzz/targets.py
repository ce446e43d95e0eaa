"""The fuzz targets: what each one feeds, from which seeds, and which errors it may raise.

Each ``Target`` has a ``run(data)`` that feeds ``data`` (bytes from the fuzzer) to one parser of
untrusted input, and the exception types that parser documents. Anything else it raises is a
crash; so is a broken invariant (``Broken``), a hang past ``fuzz/run.py``'s per-input timeout,
or memory past its RSS bound. ``seeds()`` makes the starting corpus in code: valid inputs of
each kind, so the fuzzer starts from the shapes real users send.

The board-side targets (ONNX checker, datasets, uploads, job specs, agent.toml) use only
what a board has; the host-side ones (ranges files, quantization configs in TOML, XQuant JSON
and Pegasus form, edgetune.toml) the host's packages. Import this module inside
``atheris.instrument_imports()`` so the code under test is instrumented.
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, List, Tuple, Type

import numpy as np

from edgetune.device.config import ConfigError, build_config
from edgetune.device.datasets import check_dataset_file, load_dataset
from edgetune.device.errors import StatusError
from edgetune.device.limits import Limits, validate_benchmark, validate_compare, validate_evaluate
from edgetune.device.onnx_safety import check_model_file
from edgetune.device.servicer import parse_upload_request, with_defaults
from edgetune.device.store import BlobStore
from edgetune.host.errors import EdgetuneError
from edgetune.host.inventory import load_inventory
from edgetune.host.quant import aipu, pegasus, xquant  # noqa: F401 - imported here so the
from edgetune.host.quant.config import load_config     # harness instruments them (load_config
                                                        # imports them lazily)
from edgetune.host.quant.ranges import Ranges, load_ranges, ranges_to_dict
from edgetune.protos.messages import (BenchmarkSpec, BlobKind, CompareSpec, EvaluateSpec,
                                      SessionOptions, UnknownToThisVersion, job_spec_from_pb2, pb)

SAMPLES = Path(__file__).resolve().parent.parent / "host" / "samples"
SMALL = Limits(max_model_bytes=1 << 20, max_dataset_bytes=8 << 20, max_dataset_samples=10_000)


class Broken(AssertionError):
    """An invariant the code promises did not hold (a crash, whatever else was raised)."""


@dataclass(frozen=True)
class Target:
    name: str
    what: str
    run: Callable[[bytes], None]
    allowed: Tuple[Type[BaseException], ...]
    seeds: Callable[[], List[bytes]]

    def one_input(self, data: bytes) -> None:
        """What the fuzzer calls: documented errors are fine, anything else propagates."""
        try:
            self.run(data)
        except self.allowed:
            pass


# Inputs become files (the parsers under test read files, as the agent and the CLI do); on
# /dev/shm where there is one, so the store's fsyncs cost nothing and the fuzzer runs fast.
_WORK = Path(tempfile.mkdtemp(prefix="edgetune-fuzz-",
                              dir="/dev/shm" if Path("/dev/shm").is_dir() else None))


def _as_file(data: bytes, suffix: str) -> Path:
    path = _WORK / f"input{suffix}"
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------- board side
def _onnx(data: bytes) -> None:
    check_model_file(_as_file(data, ".onnx"), SMALL.max_model_bytes)


def _onnx_seeds() -> List[bytes]:
    model = (SAMPLES / "digits_cnn.onnx").read_bytes()
    return [model, model[: len(model) // 2], model[:64]]


def _dataset(data: bytes) -> None:
    path = _as_file(data, ".npz")
    summary = check_dataset_file(path, max_bytes=SMALL.max_dataset_bytes,
                                 max_samples=SMALL.max_dataset_samples)
    dataset = load_dataset(path)
    # What the check promised must hold for what is loaded.
    for name, array in dataset.arrays.items():
        if array.nbytes > SMALL.max_dataset_bytes:
            raise Broken(f"{name}: {array.nbytes} bytes loaded past the checked bound")
    if summary.samples != dataset.samples or any(len(a) != dataset.samples for a in dataset.arrays.values()
                               if a.ndim):
        raise Broken("loaded arrays disagree with the checked sample count")


def _npz(compressed: bool, **arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


def _dataset_seeds() -> List[bytes]:
    x = np.linspace(0, 1, 4 * 64, dtype=np.float32).reshape(4, 1, 8, 8)
    y = np.arange(4, dtype=np.int64)
    return [_npz(False, input=x, labels=y), _npz(True, input=x, labels=y),
            _npz(False, input=x), (SAMPLES / "digits_test.npz").read_bytes()[:4096]]


_STORE: List[BlobStore] = []


def _store() -> BlobStore:
    if not _STORE:
        _STORE.append(BlobStore(_WORK / "store", SMALL))
    return _STORE[0]


def _upload(data: bytes) -> None:
    """A whole upload as the agent receives it: a header, then chunks (each through the
    stream's deserializer), then the commit. The input chooses the header and how the bytes
    are cut: byte 0 holds flags (bit 0: announce the right sha256, else the next 64 bytes are
    the announced one; bit 1: an upload by id, the id in the next byte's count of bytes; bit 2:
    announce the wrong size; bit 3: start at a fuzzed offset; bit 4: a dataset), byte 1 the
    chunk size; the rest is the content. A committed blob must hash to its name and hold
    exactly what was sent."""
    if len(data) < 2:
        return
    flags, cut, rest = data[0], max(1, data[1]), data[2:]
    sha = ""
    if not flags & 1:
        sha, rest = rest[:64].decode("latin-1"), rest[64:]
    upload_id = ""
    if flags & 2:
        n = rest[0] if rest else 0
        upload_id, rest = rest[1:1 + n].decode("latin-1"), rest[1 + n:]
        sha = "" if flags & 1 else sha
    content = bytes(rest)
    if flags & 1 and not flags & 2:
        sha = hashlib.sha256(content).hexdigest()
    size = len(content) + (cut - 128 if flags & 4 else 0)
    offset = cut * 3 if flags & 8 else 0
    kind = BlobKind.DATASET if flags & 16 else BlobKind.MODEL
    store = _store()
    writer = store.begin_upload(kind, sha, size, "fuzz", offset, upload_id)
    if writer.already_present:
        return
    try:
        position = writer.committed
        for start in range(0, len(content), cut):
            chunk = content[start:start + cut]
            framed = pb.UploadBlobRequest(data=chunk).SerializeToString()
            message = parse_upload_request(framed)
            payload = message if isinstance(message, memoryview) else message.data
            if bytes(payload) != chunk:
                raise Broken("the upload deserializer changed a chunk's bytes")
            writer.write(payload, position)
            position += len(payload)
        info = writer.commit()
    except BaseException:
        writer.close_incomplete()
        raise
    stored = store.path(kind, info.sha256).read_bytes()
    if hashlib.sha256(stored).hexdigest() != info.sha256:
        raise Broken("a committed blob does not hash to its name")
    if writer.start_offset == 0 and stored != content:
        raise Broken("a committed blob differs from the bytes sent")
    store.delete(kind, info.sha256)


def _upload_seeds() -> List[bytes]:
    model = (SAMPLES / "digits_cnn.onnx").read_bytes()
    values = np.arange(64, dtype=np.float32).reshape(4, 16)
    return [bytes([1, 200]) + model, bytes([17, 100]) + _npz(False, input=values),
            bytes([3, 50, 32]) + b"0123456789abcdef" * 2 + model, bytes([5, 9]) + model[:500],
            bytes([0, 7]) + b"a" * 64 + b"content"]


def _frames(data: bytes) -> None:
    """The zero-copy upload deserializer against protobuf's own parser: same bytes."""
    try:
        reference = pb.UploadBlobRequest.FromString(data)
    except Exception:  # noqa: BLE001 - protobuf's DecodeError: ours must refuse too
        reference = None
    try:
        ours = parse_upload_request(data)
    except Exception:  # noqa: BLE001
        if reference is not None:
            raise Broken("the upload deserializer refused what protobuf reads") from None
        return
    if reference is None:
        raise Broken("the upload deserializer read what protobuf refuses")
    if isinstance(ours, memoryview):
        if reference.WhichOneof("part") != "data" or bytes(ours) != reference.data:
            raise Broken("the zero-copy chunk differs from protobuf's reading")
    elif ours != reference:
        raise Broken("the upload header differs from protobuf's reading")


def _frames_seeds() -> List[bytes]:
    header = pb.UploadBlobRequest(header=pb.UploadHeader(kind=pb.BLOB_KIND_MODEL, sha256="a" * 64,
                                                         size_bytes=10, name="m.onnx"))
    return [pb.UploadBlobRequest(data=b"x" * 40).SerializeToString(),
            pb.UploadBlobRequest(data=b"").SerializeToString(), header.SerializeToString(),
            b"\x12\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01"]


def _jobspec(data: bytes) -> None:
    request = pb.SubmitJobRequest.FromString(data)
    try:
        spec = with_defaults(job_spec_from_pb2(request.spec))
    except UnknownToThisVersion:
        return
    except ValueError as exc:                 # the empty oneof: the servicer's InvalidArgument
        if "neither" not in str(exc):
            raise
        return
    if isinstance(spec, BenchmarkSpec):
        validate_benchmark(spec, SMALL)
    elif isinstance(spec, CompareSpec):
        validate_compare(spec, SMALL)
    else:
        validate_evaluate(spec, SMALL)
    again = job_spec_from_pb2(pb.JobSpec(**{_kind(spec): spec.as_pb2()}))
    if with_defaults(again) != spec:
        raise Broken("a validated job spec does not survive the wire round trip")


def _kind(spec: object) -> str:
    return {BenchmarkSpec: "benchmark", EvaluateSpec: "evaluate",
            CompareSpec: "compare"}[type(spec)]


def _jobspec_seeds() -> List[bytes]:
    session = SessionOptions(intra_op_threads=1, input_shapes=(("input", (1, 1, 8, 8)),))
    specs = [BenchmarkSpec(model_sha256="a" * 64, session=session, iterations=5, warmup=1),
             EvaluateSpec(model_sha256="a" * 64, dataset_sha256="b" * 64, session=session,
                          metrics=("top1",)),
             CompareSpec(model_a_sha256="a" * 64, model_b_sha256="c" * 64, session=session,
                         rounds=3)]
    return [pb.SubmitJobRequest(spec=pb.JobSpec(**{_kind(s): s.as_pb2()}, label="seed"))
            .SerializeToString() for s in specs]


def _agent_toml(data: bytes) -> None:
    build_config(_as_file(data, ".toml"))


def _agent_toml_seeds() -> List[bytes]:
    return [b'listen = "127.0.0.1:50051"\nstore = "store"\nca = "ca.pem"\ncert = "d.pem"\n'
            b'key = "d.key"\npassphrase_file = "pass"\nallowed_clients = ["laptop"]\n'
            b'log_level = "info"\n\n[limits]\nmax_iterations = 1000\nqueue_capacity = 4\n',
            b'ca = "ca.pem"\ncert = "d.pem"\nkey = "d.key"\n[limits]\nmax_model_bytes = 1048576\n'
            b'min_lease_ttl_s = 10.0\n', b""]


# --------------------------------------------------------------------------- host side
def _host_errors() -> Tuple[Type[BaseException], ...]:
    return (EdgetuneError,)


def _ranges(data: bytes) -> None:
    load_ranges(_as_file(data, ".ranges.json"), model_sha256="a" * 64,
                model_tensors=("input", "conv1", "relu1"))


def _ranges_seeds() -> List[bytes]:
    tensors = {"input": (0.0, 1.0), "relu1": (0.0, 6.5)}
    doc = ranges_to_dict(Ranges(method="percentile", tensors=tensors, observed=tensors,
                                alt={"minmax": tensors}, stats={}, params={"percentile": 99.9},
                                n_samples=8, model_sha256="a" * 64))
    return [json.dumps(doc).encode(), b"{}", b"[]"]


def _quant_config(suffix: str) -> Callable[[bytes], None]:
    def run(data: bytes) -> None:
        load_config(_as_file(data, suffix))
    return run


def _xquant_seeds() -> List[bytes]:
    shipped = Path(__file__).resolve().parent.parent / "tests" / "data" / "xquant-style.json"
    return [shipped.read_bytes(), b'{"model_parameters": {"onnx_model": "m.onnx"}}', b"{}"]


def _pegasus_seeds() -> List[bytes]:
    return [b"quantize_parameters:\n  x: 1\ncustomized_quantize_layers:\n"
            b"  Add_Add_213_17: dynamic_fixed_point-i16\n  Conv_1: dynamic_fixed_point-i16\n",
            b"customized_quantize_layers: {}\n"]


def _quant_toml_seeds() -> List[bytes]:
    return [b'model = "m.onnx"\nmethod = "percentile"\npercentile = 99.9\nper_channel = true\n'
            b'act = "uint8"\nweight = "int8"\nexclude = ["fc"]\ninput_size = [8, 8]\n'
            b'[[calib]]\npath = "calib.npz"\n[[subgraph]]\ninputs = ["a"]\noutputs = ["b"]\n'
            b'precision = "int16"\n[fallback]\nmax_drop = 1.0\nstrategy = "greedy"\n', b""]


def _aipu_seeds() -> List[bytes]:
    """The R329 guide's builder config, pointing at a model and arrays that exist (so the
    fuzzer starts past the file checks)."""
    model = _WORK / "aipu_model.onnx"
    model.write_bytes((SAMPLES / "digits_cnn.onnx").read_bytes())
    np.save(_WORK / "aipu_data.npy", np.zeros((4, 1, 8, 8), np.float32))
    np.save(_WORK / "aipu_label.npy", np.arange(4, dtype=np.int64))
    cfg = (f"[Common]\nmode = build\n\n[Parser]\nmodel_type = onnx\nmodel_name = digits\n"
           f"input_model = {model}\ninput = input\ninput_shape = [1, 1, 8, 8]\n"
           f"output = logits\noutput_dir = ./out\n\n[AutoQuantizationTool]\n"
           f"quantize_method = SYMMETRIC\nops_per_channel = DepthwiseConv\n"
           f"calibration_data = {_WORK / 'aipu_data.npy'}\n"
           f"calibration_label = {_WORK / 'aipu_label.npy'}\npreprocess_mode = normalize\n"
           f"quant_precision = int8\nreverse_rgb = False\n\n[GBuilder]\n"
           f"simulator = aipu_simulator_z1\ntarget = Z1_0701\n")
    return [cfg.encode(), b"[Parser]\ninput_model = missing.onnx\n"]


def _inventory(data: bytes) -> None:
    load_inventory(_as_file(data, ".toml"))


def _inventory_seeds() -> List[bytes]:
    return [b'[host]\ncert = "laptop.pem"\nkey = "laptop.key"\nca = "ca.pem"\n\n'
            b'[devices.board1]\naddress = "10.0.0.5:50051"\ntags = ["atlas", "lab2"]\n'
            b'attributes = { arch = "aarch64" }\n\n[devices.board2]\naddress = "b2:50051"\n'
            b'\n[results]\ndb = "results.db"\n', b"[devices]\n"]


def _board_errors() -> Tuple[Type[BaseException], ...]:
    return (StatusError,)


def _decode_errors() -> Tuple[Type[BaseException], ...]:
    from google.protobuf.message import DecodeError
    return (DecodeError, StatusError)


TARGETS = {t.name: t for t in (
    Target("onnx", "the agent's ONNX safety checker and its subset parser", _onnx,
           _board_errors(), _onnx_seeds),
    Target("dataset", "the agent's .npz dataset check and loader", _dataset, _board_errors(),
           _dataset_seeds),
    Target("upload", "a whole upload: header, chunks through the stream deserializer, commit",
           _upload, _board_errors(), _upload_seeds),
    Target("frames", "the zero-copy upload deserializer against protobuf's parser", _frames,
           (), _frames_seeds),
    Target("jobspec", "job specs from the wire: conversion, defaults, validation", _jobspec,
           _decode_errors(), _jobspec_seeds),
    Target("agent_toml", "agent.toml", _agent_toml, (ConfigError,), _agent_toml_seeds),
    Target("ranges", "a quantization ranges file (--ranges)", _ranges, _host_errors(),
           _ranges_seeds),
    Target("xquant", "an XQuant-style JSON quantization config", _quant_config(".json"),
           _host_errors(), _xquant_seeds),
    Target("pegasus", "a Pegasus hybrid-quantization list", _quant_config(".quantize"),
           _host_errors(), _pegasus_seeds),
    Target("quant_toml", "an edgetune quantization config in TOML", _quant_config(".toml"),
           _host_errors(), _quant_toml_seeds),
    Target("aipu_cfg", "a Zhouyi AIPU builder config (.cfg INI)", _quant_config(".cfg"),
           _host_errors(), _aipu_seeds),
    Target("inventory", "edgetune.toml", _inventory, _host_errors(), _inventory_seeds),
)}


def write_seeds(target: Target, folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    seeds = target.seeds()
    for i, seed in enumerate(seeds):
        (folder / f"seed-{i}").write_bytes(seed)
    return len(seeds)


def regressions(target: Target) -> Iterator[Path]:
    """Inputs that once crashed this target (fuzz/regressions/NAME/), replayed by the tests."""
    folder = Path(__file__).resolve().parent / "regressions" / target.name
    if folder.is_dir():
        yield from sorted(p for p in folder.iterdir() if p.is_file())
