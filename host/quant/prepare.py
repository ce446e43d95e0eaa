"""Model preparation before calibration and quantization.

``prepare_model(settings)`` loads the float model, gives every node a unique stable name,
runs onnxruntime's ``quant_pre_process`` (shape inference and basic fusion; retried without
symbolic shape inference when that fails), upgrades the opset when the chosen options need it
(per-channel weights need >= 13, 16-bit Q/DQ >= 21) and checks there is something to quantize.
Every change is returned as a ``Decision`` so the record can say what happened and why.

The prepared model lives in a private temporary folder owned by the ``PreparedModel``; call
``close()`` (or use it as a context manager) when done with it.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, FrozenSet, List, Optional, Sequence, Tuple

from edgetune.host.errors import BadInputError, NotFoundError
from edgetune.host.quant.settings import QuantizeSettings

log = logging.getLogger(__name__)

PER_CHANNEL_MIN_OPSET = 13   # DequantizeLinear gets its ``axis`` attribute in opset 13
INT16_MIN_OPSET = 21         # standard ONNX Q/DQ accept (u)int16 from opset 21
QDQ_MIN_OPSET = 11           # what onnxruntime's quantizer upgrades older models to
FLOAT_TYPES = (1, 10)        # TensorProto.FLOAT, FLOAT16
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


@dataclass(frozen=True)
class Decision:
    """Something the quantizer changed or chose on its own, and why (goes into the record)."""

    stage: str
    action: str
    reason: str

    def as_dict(self) -> Dict[str, str]:
        return {"stage": self.stage, "action": self.action, "reason": self.reason}


@dataclass
class PreparedModel:
    """The float model as calibration and quantization see it (a file in a private temp dir)."""

    path: Path
    source: Path
    source_sha256: str
    opset_before: int
    opset: int
    node_names: Tuple[str, ...]
    op_types: Dict[str, str]                    # node name -> op type
    decisions: List[Decision] = field(default_factory=list)
    workdir: Optional[Path] = None
    stage_times: Dict[str, float] = field(default_factory=dict)
    # The source model's nodes after naming (name -> (op type, outputs)) and tensor names:
    # overrides written against the original model still resolve after fusions.
    original_nodes: Dict[str, Tuple[str, Tuple[str, ...]]] = field(default_factory=dict)
    original_tensors: FrozenSet[str] = frozenset()

    def load(self):  # -> onnx.ModelProto
        import onnx

        return onnx.load(str(self.path))

    def close(self) -> None:
        if self.workdir is not None and self.workdir.exists():
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "PreparedModel":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_onnx(path: Path, what: str = "MODEL"):  # -> onnx.ModelProto
    """Loads ``path`` as ONNX or raises NotFoundError / BadInputError naming the cause."""
    return load_onnx_with_digest(path, what)[0]


def load_onnx_with_digest(path: Path, what: str = "MODEL"):  # -> (ModelProto, sha256 hex)
    """Like ``load_onnx``, and the file's sha256 from the same read."""
    import onnx
    from onnx import external_data_helper

    path = Path(path)
    if not path.exists():
        raise NotFoundError(f"{what} {path} does not exist", hint="check the path")
    if not path.is_file():
        raise BadInputError(f"{what} {path} is not a file")
    try:
        raw = path.read_bytes()
        model = onnx.load_model_from_string(raw)
        if any(external_data_helper.uses_external_data(t) for t in model.graph.initializer):
            external_data_helper.load_external_data_for_model(model, str(path.parent))
    except Exception as exc:  # protobuf DecodeError and friends
        raise BadInputError(f"{what} is not an ONNX model: {path} ({type(exc).__name__}: {exc})",
                            hint="pass a .onnx file exported from your framework") from None
    if not model.HasField("graph") or len(model.graph.node) == 0:
        raise BadInputError(f"{what} is not an ONNX model: {path} has no graph nodes",
                            hint="pass a .onnx file exported from your framework")
    return model, hashlib.sha256(raw).hexdigest()


def default_opset(model) -> int:
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            return int(opset.version)
    return 0


def name_nodes(model) -> List[Decision]:
    """Gives every node a unique, stable name, in place.

    Existing unique names are kept; unnamed nodes become ``<OpType>_<index>`` (index in the
    graph's node list); a repeated name gets ``__<n>`` appended from its second use on.
    ``nodes_to_exclude`` and the overrides match node names, so this runs before them.
    """
    decisions: List[Decision] = []
    taken = {node.name for node in model.graph.node if node.name}
    seen: set = set()
    unnamed = 0
    renamed: List[str] = []
    for index, node in enumerate(model.graph.node):
        if not node.name:
            candidate = f"{node.op_type}_{index}"
            n = 1
            while candidate in taken or candidate in seen:
                candidate = f"{node.op_type}_{index}__{n}"
                n += 1
            node.name = candidate
            unnamed += 1
        elif node.name in seen:
            base = node.name
            n = 1
            candidate = f"{base}__{n}"
            while candidate in taken or candidate in seen:
                n += 1
                candidate = f"{base}__{n}"
            node.name = candidate
            renamed.append(f"{base} -> {candidate}")
        seen.add(node.name)
        taken.add(node.name)
    if unnamed:
        decisions.append(Decision("prepare", f"named {unnamed} unnamed node(s) <OpType>_<index>",
                                  "exclusions and overrides match node names; unnamed nodes "
                                  "would silently escape them"))
    if renamed:
        shown = ", ".join(renamed[:5]) + (" ..." if len(renamed) > 5 else "")
        decisions.append(Decision("prepare", f"renamed {len(renamed)} duplicate node name(s): "
                                  f"{shown}", "node names must be unique to be matched"))
    return decisions


def needed_opset(settings: QuantizeSettings) -> Tuple[int, str]:
    """The minimum opset the options need, and which option needs it."""
    needs_int16 = (settings.act_type == "int16" or bool(settings.int16)
                   or any(sg.precision == "int16" for sg in settings.subgraphs))
    if needs_int16:
        return INT16_MIN_OPSET, "16-bit QuantizeLinear/DequantizeLinear are standard ONNX " \
                                "from opset 21 (older opsets would need the com.microsoft " \
                                "domain, which only onnxruntime runs)"
    if settings.per_channel:
        return PER_CHANNEL_MIN_OPSET, "per-channel weights need DequantizeLinear's axis " \
                                      "attribute (opset >= 13); an older model fails to load"
    return QDQ_MIN_OPSET, "QuantizeLinear/DequantizeLinear need opset >= 10 and onnxruntime's " \
                          "quantizer fuses from 11"


def effective_op_types(settings: QuantizeSettings) -> FrozenSet[str]:
    """The op types the quantizer may quantize (settings.op_types or onnxruntime's registry)."""
    if settings.op_types:
        return frozenset(settings.op_types)
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return frozenset(QLinearOpsRegistry) | frozenset(QDQRegistry)


def float_tensor_names(model) -> FrozenSet[str]:
    """Tensors known (from value_info, inputs, outputs, initializers) to be float32/float16."""
    names = set()
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type in FLOAT_TYPES:
            names.add(vi.name)
    for init in model.graph.initializer:
        if init.data_type in FLOAT_TYPES:
            names.add(init.name)
    return frozenset(names)


def quantizable_nodes(model, op_types: FrozenSet[str]) -> Tuple[str, ...]:
    """Nodes of a quantizable op type that read at least one float tensor."""
    floats = float_tensor_names(model)
    return tuple(node.name for node in model.graph.node
                 if node.op_type in op_types and node.op_type not in QDQ_OPS
                 and any(name in floats for name in node.input if name))


def _used_domains(graph: Any, found: set) -> set:
    for node in graph.node:
        found.add(node.domain or "")
        for attr in node.attribute:                 # If/Loop/Scan bodies
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                _used_domains(sub, found)
    return found


def drop_unused_opsets(model: Any, decisions: List[Decision]) -> None:
    """Remove the opset imports of domains no node uses. onnxruntime's optimizer (in
    ``quant_pre_process``) writes its whole list (``ai.onnx.ml`` 5, ``com.microsoft.nchwc``,
    training domains ...): a board's older onnxruntime refuses to load a model that merely
    *declares* an ``ai.onnx.ml`` opset newer than it knows, although nothing uses it."""
    used = _used_domains(model.graph, {""})
    for function in model.functions:
        used.add(function.domain)
        for node in function.node:
            used.add(node.domain or "")
    keep = [o for o in model.opset_import if (o.domain or "") in used or o.domain == "ai.onnx"]
    dropped = [f"{o.domain} {o.version}" for o in model.opset_import
               if (o.domain or "") not in used and o.domain != "ai.onnx"]
    if not dropped:
        return
    del model.opset_import[:]
    model.opset_import.extend(keep)
    decisions.append(Decision(
        "write", f"dropped unused opset imports ({', '.join(dropped)})",
        "no node uses those domains; a board's older onnxruntime refuses a model that declares "
        "an ai.onnx.ml opset newer than it knows"))


def _pre_process(src: Path, dst: Path, decisions: List[Decision]) -> None:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # When symbolic shape inference fails, onnxruntime dumps "sym_shape_infer_temp.onnx" (and
    # its external data) into the current directory; remove what it left there.
    before = set(Path.cwd().glob("sym_shape_infer_temp*"))
    try:
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=False)
        return
    except Exception as first:  # symbolic shape inference is the usual culprit
        reason = f"{type(first).__name__}: {first}".strip()
        log.warning("symbolic shape inference failed (%s); retrying without it", reason)
    finally:
        for leftover in set(Path.cwd().glob("sym_shape_infer_temp*")) - before:
            leftover.unlink(missing_ok=True)
    try:
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
    except Exception as second:
        raise BadInputError(
            f"model pre-processing (shape inference and fusion) failed: "
            f"{type(second).__name__}: {second}",
            hint="check that the model runs in onnxruntime, or pass --skip-model-prep") from None
    decisions.append(Decision("prepare", "pre-processed without symbolic shape inference",
                              f"symbolic shape inference failed ({reason[:300]}); "
                              "ONNX shape inference and fusion still ran"))


def _mark_inferred(model) -> None:
    from onnxruntime.quantization.quant_utils import add_infer_metadata

    add_infer_metadata(model)


def _infer_shapes(model):
    import onnx

    try:
        return onnx.shape_inference.infer_shapes(model)
    except Exception as exc:
        raise BadInputError(f"ONNX shape inference failed on the model: {exc}",
                            hint="check the model with onnx.checker") from None


def convert_opset(model, target: int, why: str, decisions: List[Decision]):
    import onnx
    from onnx import version_converter

    before = default_opset(model)
    try:
        converted = version_converter.convert_version(model, target)
        onnx.checker.check_model(converted)
    except Exception as exc:
        raise BadInputError(
            f"upgrading the model from opset {before} to {target} failed: {exc}",
            hint="export the model with a newer opset, or choose options that do not need "
                 f"opset {target} (--per-tensor instead of per-channel, no int16)") from None
    decisions.append(Decision("prepare", f"upgraded opset {before} -> {target}", why))
    return converted


def prepare_model(settings: QuantizeSettings) -> PreparedModel:
    """Loads, names, pre-processes and (when needed) upgrades ``settings.model``."""
    import time

    import onnx

    t0 = time.perf_counter()
    source = Path(settings.model)
    model, digest = load_onnx_with_digest(source)
    opset_before = default_opset(model)
    decisions = name_nodes(model)
    original_nodes = {node.name: (node.op_type, tuple(o for o in node.output if o))
                      for node in model.graph.node}
    original_tensors = graph_tensor_names(model)
    workdir = Path(tempfile.mkdtemp(prefix="edgetune-quant-"))
    try:
        prepared_path = workdir / "prepared.onnx"
        times: Dict[str, float] = {}
        already = any(p.key == "onnx.quant.pre_process" and p.value == "onnxruntime.quant"
                      for p in model.metadata_props)
        inferred = False                 # does the model hold complete shape information?
        if already:
            inferred = True              # quant_pre_process ends with ONNX shape inference
            decisions.append(Decision("prepare", "skipped quant_pre_process",
                                      "the model was pre-processed already (its metadata says "
                                      "so); its shape information is reused"))
        elif settings.skip_preprocess:
            decisions.append(Decision("prepare", "skipped quant_pre_process",
                                      "asked for (skip_preprocess); ONNX shape inference ran"))
        else:
            named = workdir / "named.onnx"
            onnx.save(model, str(named))
            t1 = time.perf_counter()
            _pre_process(named, prepared_path, decisions)
            times["pre_process"] = time.perf_counter() - t1
            named.unlink()
            model = onnx.load(str(prepared_path))
            after = default_opset(model)
            if after != opset_before:
                decisions.append(Decision(
                    "prepare", f"upgraded opset {opset_before} -> {after}",
                    "onnxruntime's quant_pre_process converts opset <= 10 models (Upsample "
                    "becomes Resize) before optimizing"))
            # The optimizer may add nodes of its own (fusions) without names.
            decisions += name_nodes(model)
            inferred = True
        target, why = needed_opset(settings)
        if target and default_opset(model) < target:
            model = convert_opset(model, target, why, decisions)
            decisions += name_nodes(model)
            inferred = False
        # At most one shape inference, marked the way onnxruntime's quantizer checks, so
        # neither it nor the pipeline infers again.
        if not inferred:
            model = _infer_shapes(model)
        _mark_inferred(model)
        op_types = effective_op_types(settings)
        if not quantizable_nodes(model, op_types):
            present = sorted({node.op_type for node in model.graph.node})
            raise BadInputError(
                f"the model has nothing to quantize: none of its op types ({', '.join(present)}) "
                f"is one the quantizer handles with float inputs",
                hint="quantizable types include Conv, MatMul, Gemm, Add, Mul ..."
                     + (" (check --op-types)" if settings.op_types else ""))
        onnx.save(model, str(prepared_path))
        times["prepare"] = time.perf_counter() - t0
        return PreparedModel(
            path=prepared_path, source=source, source_sha256=digest,
            opset_before=opset_before, opset=default_opset(model),
            node_names=tuple(node.name for node in model.graph.node),
            op_types={node.name: node.op_type for node in model.graph.node},
            decisions=decisions, workdir=workdir, stage_times=times,
            original_nodes=original_nodes, original_tensors=original_tensors)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise


def graph_tensor_names(model) -> FrozenSet[str]:
    """Every tensor name the graph knows: inputs, outputs, initializers, node outputs."""
    names = {vi.name for vi in model.graph.input} | {vi.name for vi in model.graph.output}
    names |= {init.name for init in model.graph.initializer}
    for node in model.graph.node:
        names.update(name for name in node.output if name)
    return frozenset(names)


def close_matches(name: str, candidates: Sequence[str], n: int = 3) -> str:
    """' (did you mean: a, b?)' or '' — for error messages."""
    import difflib

    found = difflib.get_close_matches(name, list(dict.fromkeys(candidates)), n=n, cutoff=0.5)
    return f" (did you mean: {', '.join(found)}?)" if found else ""
