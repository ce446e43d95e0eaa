"""VeriSilicon Pegasus (Acuity) hybrid quantize lists -> int16 node names.

A ``.quantize`` file's ``customized_quantize_layers:`` section lists layers as
``<OpType>_<NodeName>_<id>: dynamic_fixed_point-i16``; those become int16 islands once
``resolve_pegasus_layers`` has matched them to the ONNX graph's nodes. Other sections of the
file are skipped (and named in a note); other quantizer types are refused.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from edgetune.host.errors import BadInputError, NotFoundError

__all__ = ["PEGASUS_INT16", "parse_pegasus", "load_pegasus_layers",
           "load_pegasus_layers_with_notes", "resolve_pegasus_layers"]

PEGASUS_INT16 = "dynamic_fixed_point-i16"


def parse_pegasus(text: str, path: Path) -> Tuple[Tuple[str, ...], List[str]]:
    """The ``customized_quantize_layers`` names of a Pegasus file (other sections skipped,
    and named in the returned notes)."""
    lines = text.splitlines()
    names: List[str] = []
    others: List[str] = []
    bad: List[str] = []
    in_section = found = False
    for number, raw in enumerate(lines, start=1):
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        indented = line[:1] in (" ", "\t")
        if not indented:
            key = line.split(":", 1)[0].strip()
            in_section = key == "customized_quantize_layers"
            found = found or in_section
            if not in_section:
                others.append(key)
            continue
        if not in_section:
            continue
        if ":" not in line:
            raise BadInputError(f"{path} line {number}: {line.strip()!r} is not 'layer: type'")
        name, qtype = (part.strip().strip("'\"") for part in line.split(":", 1))
        if qtype != PEGASUS_INT16:
            bad.append(f"{name}: {qtype} (line {number})")
            continue
        names.append(name)
    if not found:
        raise BadInputError(f"{path} has no customized_quantize_layers section",
                            hint="a Pegasus hybrid list starts with 'customized_quantize_layers:'")
    if bad:
        raise BadInputError(
            f"{path}: unsupported quantizer type(s) in customized_quantize_layers: "
            f"{'; '.join(bad)}",
            hint=f"only {PEGASUS_INT16} (int16 islands) is supported; remove the other lines")
    notes = []
    if others:
        notes.append(f"pegasus file {path.name}: read customized_quantize_layers only; skipped "
                     f"section(s) {', '.join(others)}")
    return tuple(names), notes


def load_pegasus_layers_with_notes(path: Path) -> Tuple[Tuple[str, ...], List[str]]:
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"Pegasus list {path} does not exist", hint="check the path")
    return parse_pegasus(path.read_text(encoding="utf-8"), path)


def load_pegasus_layers(path: Path) -> Tuple[str, ...]:
    """Layer names (``<OpType>_<NodeName>_<id>``) forced to int16 by a Pegasus file."""
    return load_pegasus_layers_with_notes(path)[0]


def _sanitize(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_]", "_", name)


def resolve_pegasus_layers(names: Sequence[str], model: Any) -> Tuple[str, ...]:
    """Map Pegasus layer names to ONNX node names (``model``: a ModelProto or a path).

    ``Sigmoid_Sigmoid_202_21`` is op ``Sigmoid``, node ``Sigmoid_202``, Acuity id ``21``:
    the trailing ``_<id>`` is stripped and ``<OpType>_<name>`` compared with every node,
    first exactly, then with non-alphanumerics replaced by ``_`` as Acuity does.
    """
    if isinstance(model, (str, Path)):
        import onnx
        model = onnx.load(str(model), load_external_data=False)
    nodes = list(model.graph.node)
    exact = {f"{n.op_type}_{n.name}": n.name for n in nodes if n.name}
    loose: Dict[str, List[str]] = {}
    for n in nodes:
        if n.name:
            loose.setdefault(_sanitize(f"{n.op_type}_{n.name}"), []).append(n.name)
    resolved: List[str] = []
    unmatched: List[str] = []
    for name in names:
        stem = re.sub(r"_\d+$", "", name)
        candidates = [stem, name]
        hit = next((exact[c] for c in candidates if c in exact), None)
        if hit is None:
            for c in candidates:
                found = loose.get(_sanitize(c), [])
                if len(found) == 1:
                    hit = found[0]
                    break
        if hit is None:
            unmatched.append(name)
        elif hit not in resolved:
            resolved.append(hit)
    if unmatched:
        sample = ", ".join(f"{n.op_type}_{n.name}" for n in nodes[:6] if n.name)
        raise BadInputError(
            f"{len(unmatched)} Pegasus layer(s) match no node of the model: "
            f"{', '.join(unmatched)}",
            hint=f"names are <OpType>_<NodeName>_<id>; this model has e.g. {sample}")
    return tuple(resolved)
