"""Refuse hostile or unusable ONNX models without the onnx package.

An uploaded model is parsed with ``protos/onnx_subset.proto`` (the graph structure of
onnx.proto with the same field numbers) and every tensor is visited: graph initializers,
sparse initializers, node attributes (``Constant`` values, tensor lists), subgraphs of
``If``/``Loop``/``Scan`` at any depth, local functions and training graphs. A tensor that
keeps its data outside the file is refused: with a clear "points outside the model's bundle"
message when its location is absolute, has ``..`` components, a drive or UNC form, a NUL, or
resolves (through symlinks) outside the model's folder; otherwise because the agent accepts
single-file models only.

Decision: this is a cheap parse at upload (no onnxruntime); the real load happens at job
time, where an onnxruntime error becomes the job's error message (``edgetune.device.runner``).

Memory: a board may have less RAM than twice the model, so the file is not handed to protobuf
whole. It is memory-mapped and skimmed at the wire level (``skim``): only the fields that
``onnx_subset.proto`` declares are copied, so tensor payloads (raw_data, float_data, ...) never
leave the page cache, and the small remainder is parsed with the generated code.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import ntpath
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator, List, Optional, Tuple, Union

from edgetune.device.errors import InvalidArgument, ResourceExhausted
from edgetune.protos import onnx_subset_pb2 as onnx_pb

log = logging.getLogger("edgetune.agent.onnx_safety")

ONNX_DTYPES = {
    1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64",
    8: "string", 9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64",
    14: "complex64", 15: "complex128", 16: "bfloat16", 17: "float8e4m3fn", 18: "float8e4m3fnuz",
    19: "float8e5m2", 20: "float8e5m2fnuz", 21: "uint4", 22: "int4", 23: "float4e2m1",
}
_DRIVE = re.compile(r"^[A-Za-z]:")
SINGLE_FILE_HINT = ("the agent accepts single-file models only; save it with every tensor "
                    "inline: onnx.save(model, path, save_as_external_data=False)")

Dim = Union[int, str, None]


@dataclass(frozen=True)
class ValueSummary:
    """A graph input or output: its name, element type and shape (str: symbolic, None: unknown)."""

    name: str
    dtype: str
    shape: Optional[Tuple[Dim, ...]]        # None when the model does not declare a shape


@dataclass(frozen=True)
class ExternalRef:
    tensor: str                             # the tensor's name ("" when unnamed)
    location: str
    where: str                              # e.g. "initializer", "node 'c' attribute 'value'"


@dataclass(frozen=True)
class ModelSummary:
    ir_version: int
    opsets: Tuple[Tuple[str, int], ...]     # (domain, version); "" is the default ai.onnx domain
    inputs: Tuple[ValueSummary, ...]        # graph inputs that are not initializers
    outputs: Tuple[ValueSummary, ...]
    nodes: int                              # every node, subgraphs and functions included
    producer: str = ""
    external: Tuple[ExternalRef, ...] = ()

    @property
    def has_external_data(self) -> bool:
        return bool(self.external)


MAX_NESTING = 64                        # messages inside messages (subgraphs of subgraphs...)


class _Malformed(Exception):
    pass


def _varint(buf: Any, pos: int, end: int) -> Tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Malformed("truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def skim(buf: Any, descriptor: Any, start: int = 0, end: Optional[int] = None,
         depth: int = 0) -> bytes:
    """Copy of the protobuf message in ``buf[start:end]`` keeping only the fields that
    ``descriptor`` declares (recursively); everything else is skipped without being read."""
    end = len(buf) if end is None else end
    if depth > MAX_NESTING:
        raise _Malformed(f"messages nested more than {MAX_NESTING} deep")
    fields = descriptor.fields_by_number
    out: List[bytes] = []
    pos = start
    while pos < end:
        key_start = pos
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _Malformed("field number 0")
        body = pos
        if wire == 0:
            _, pos = _varint(buf, pos, end)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, body = _varint(buf, pos, end)
            pos = body + length
        else:
            raise _Malformed(f"unsupported wire type {wire}")
        if pos > end:
            raise _Malformed("a field runs past the end of its message")
        field = fields.get(number)
        if field is None:
            continue
        if wire == 2 and field.message_type is not None:
            inner = skim(buf, field.message_type, body, pos, depth + 1)
            out.append(_encode_varint(key) + _encode_varint(len(inner)) + inner)
        else:
            out.append(bytes(buf[key_start:pos]))
    return b"".join(out)


def location_problem(location: str, base_dir: Path) -> Optional[str]:
    """Why an external-data ``location`` escapes ``base_dir`` (None when it stays inside)."""
    if not location:
        return "is empty"
    if "\x00" in location:
        return "contains a NUL character"
    if location.startswith(("/", "\\")) or os.path.isabs(location) or _DRIVE.match(location) \
            or ntpath.splitdrive(location)[0]:
        return "is an absolute path"
    parts = re.split(r"[\\/]+", location)
    if ".." in parts:
        return "has '..' components"
    base = os.path.realpath(str(base_dir))
    target = os.path.realpath(os.path.join(base, location))
    if os.path.commonpath([base, target]) != base:
        return "resolves outside the model's folder"
    return None


def _value_summary(vi: "onnx_pb.ValueInfoProto") -> ValueSummary:
    tensor = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
    if tensor is None:
        return ValueSummary(vi.name, "non-tensor", None)
    dtype = ONNX_DTYPES.get(tensor.elem_type, f"onnx type {tensor.elem_type}")
    if not tensor.HasField("shape"):
        return ValueSummary(vi.name, dtype, None)
    dims: List[Dim] = []
    for d in tensor.shape.dim:
        which = d.WhichOneof("value")
        dims.append(d.dim_value if which == "dim_value" else d.dim_param if which else None)
    return ValueSummary(vi.name, dtype, tuple(dims))


def _tensors_in_attribute(attr: "onnx_pb.AttributeProto") -> Iterator["onnx_pb.TensorProto"]:
    if attr.HasField("t"):
        yield attr.t
    yield from attr.tensors
    sparse = list(attr.sparse_tensors)
    if attr.HasField("sparse_tensor"):
        sparse.append(attr.sparse_tensor)
    for s in sparse:
        yield s.values
        yield s.indices


def _walk(model: "onnx_pb.ModelProto") -> Tuple[int, List[Tuple["onnx_pb.TensorProto", str]]]:
    """(node count, every tensor with a description of where it sits)."""
    tensors: List[Tuple[onnx_pb.TensorProto, str]] = []
    graphs: List[Tuple[onnx_pb.GraphProto, str]] = [(model.graph, "graph")]
    node_lists: List[Tuple[object, str]] = []
    for i, fn in enumerate(model.functions):
        node_lists.append((fn.node, f"function '{fn.name or i}'"))
        for attr in fn.attribute_proto:
            for t in _tensors_in_attribute(attr):
                tensors.append((t, f"function '{fn.name or i}' attribute '{attr.name}'"))
            graphs.extend((g, f"function '{fn.name or i}' attribute '{attr.name}'")
                          for g in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs))
    for ti in model.training_info:
        for which in ("initialization", "algorithm"):
            if ti.HasField(which):
                graphs.append((getattr(ti, which), f"training {which} graph"))
    nodes = 0
    while graphs or node_lists:
        if graphs:
            graph, where = graphs.pop()
            for t in graph.initializer:
                tensors.append((t, f"{where} initializer"))
            for s in graph.sparse_initializer:
                tensors.append((s.values, f"{where} sparse initializer"))
                tensors.append((s.indices, f"{where} sparse initializer"))
            node_lists.append((graph.node, where))
            continue
        node_list, where = node_lists.pop()
        for node in node_list:  # type: ignore[attr-defined]
            nodes += 1
            label = f"{where} node '{node.name or node.op_type}'"
            for attr in node.attribute:
                for t in _tensors_in_attribute(attr):
                    tensors.append((t, f"{label} attribute '{attr.name}'"))
                if attr.HasField("g"):
                    graphs.append((attr.g, f"{label} subgraph '{attr.name}'"))
                graphs.extend((g, f"{label} subgraph '{attr.name}'") for g in attr.graphs)
    return nodes, tensors


def inspect_model(path: Path, max_bytes: int, file: Optional[BinaryIO] = None) -> ModelSummary:
    """Parse ``path`` as ONNX and summarise it; InvalidArgument when it is not ONNX or
    when external data points outside the model's folder. External data inside the folder
    is listed in ``ModelSummary.external``, not refused (``check_model_file`` does that).
    ``file``: the model opened already (the agent's ``BlobStore.open``): its bytes are read
    through it, and ``path`` only names its folder."""
    path = Path(path)
    size = os.fstat(file.fileno()).st_size if file is not None else path.stat().st_size
    if size > max_bytes:
        raise ResourceExhausted(f"model of {size} bytes exceeds this agent's limit of "
                                f"{max_bytes} bytes; raise [limits] max_model_bytes to accept it")
    if size == 0:
        raise InvalidArgument("not an ONNX model: the file is empty")
    opened = contextlib.nullcontext(file) if file is not None else open(path, "rb")
    with opened as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        try:
            data = skim(mm, onnx_pb.ModelProto.DESCRIPTOR)
        except _Malformed as exc:
            raise InvalidArgument(f"not an ONNX model: the bytes do not parse as an ONNX "
                                  f"protobuf ({exc})") from None
    model = onnx_pb.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # DecodeError
        raise InvalidArgument(f"not an ONNX model: the bytes do not parse as an ONNX "
                              f"protobuf ({exc or type(exc).__name__})") from None
    del data
    if model.ir_version < 1 or not model.HasField("graph"):
        raise InvalidArgument("not an ONNX model: no ir_version or graph found; export the model "
                              "to ONNX (e.g. torch.onnx.export) and upload the .onnx file")
    nodes, tensors = _walk(model)
    base_dir = path.resolve().parent
    external: List[ExternalRef] = []
    for tensor, where in tensors:
        entries = {e.key: e.value for e in tensor.external_data}
        if tensor.data_location != onnx_pb.TensorProto.EXTERNAL and not entries:
            continue
        location = entries.get("location", "")
        problem = location_problem(location, base_dir)
        if problem is not None:
            raise InvalidArgument(
                f"model refused: external data location {location!r} of tensor "
                f"'{tensor.name}' ({where}) points outside the model's bundle ({problem})")
        external.append(ExternalRef(tensor.name, location, where))
    initializers = {t.name for t in model.graph.initializer}
    return ModelSummary(
        ir_version=model.ir_version,
        opsets=tuple((o.domain, o.version) for o in model.opset_import),
        inputs=tuple(_value_summary(vi) for vi in model.graph.input if vi.name not in initializers),
        outputs=tuple(_value_summary(vi) for vi in model.graph.output),
        nodes=nodes, producer=model.producer_name, external=tuple(external))


def check_model_file(path: Path, max_bytes: int) -> ModelSummary:
    """The upload-time check: refuse non-ONNX bytes, escaping external data, and any external
    data at all (single-file models only). Returns the model's summary."""
    summary = inspect_model(path, max_bytes)
    if summary.external:
        ref = summary.external[0]
        raise InvalidArgument(
            f"model refused: tensor '{ref.tensor}' ({ref.where}) keeps its data in the external "
            f"file {ref.location!r} and {len(summary.external)} tensor(s) in all do; "
            + SINGLE_FILE_HINT)
    log.debug("model %s: ir %d, opsets %s, %d nodes", Path(path).name, summary.ir_version,
              summary.opsets, summary.nodes)
    return summary
