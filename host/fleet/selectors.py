"""Which boards a fleet command means: ``--devices SEL``.

    all                     every board in edgetune.toml
    board1,board2           names (a term with * ? [ is a glob: 'atlas-*')
    tag:atlas               boards carrying a tag
    arch=aarch64            an attribute: edgetune.toml's [devices.NAME] attributes, else
                            what the board reports about itself (arch, os, cpu_model,
                            onnxruntime_version, python_version, agent_version, hostname, ...)
    tag:lab2+tag:r329       '+' joins conditions a board must all meet

Terms separated by ',' add up: a board is selected when it meets any term.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple

from edgetune.host.errors import BadInputError, UsageError
from edgetune.host.inventory import Device, Inventory

Reported = Mapping[str, Mapping[str, str]]     # device name -> what the board said about itself


@dataclass(frozen=True)
class Condition:
    kind: str               # "name", "tag" or "attr"
    key: str                # the name/glob, the tag, or the attribute's key
    value: str = ""         # the attribute's value (a glob too)

    def __str__(self) -> str:
        return {"name": self.key, "tag": f"tag:{self.key}"}.get(self.kind, f"{self.key}={self.value}")


@dataclass(frozen=True)
class Selector:
    text: str
    terms: Tuple[Tuple[Condition, ...], ...]      # OR of ANDs; () means all

    @classmethod
    def parse(cls, text: str) -> "Selector":
        text = (text or "").strip()
        if not text:
            raise UsageError("--devices is empty",
                             hint="e.g. --devices all, --devices board1,board2, "
                                  "--devices tag:lab, --devices arch=aarch64")
        if text == "all":
            return cls(text, ())
        terms = []
        for term in text.split(","):
            conditions = tuple(_condition(part.strip(), text) for part in term.split("+"))
            terms.append(conditions)
        return cls(text, tuple(terms))

    def reported_keys(self, inventory: Inventory) -> Set[str]:
        """Attribute keys no board of the inventory defines: they must come from the boards."""
        defined = {k for d in inventory.devices for k, _ in d.attributes}
        return {c.key for term in self.terms for c in term
                if c.kind == "attr" and c.key not in defined}

    def matches(self, device: Device, reported: Optional[Mapping[str, str]] = None) -> bool:
        if not self.terms:
            return True
        return any(all(_meets(c, device, reported) for c in term) for term in self.terms)


def _condition(part: str, text: str) -> Condition:
    if not part:
        raise UsageError(f"--devices {text!r} has an empty term",
                         hint="terms are separated by ',' (any) and '+' (all)")
    if part.startswith("tag:"):
        tag = part[4:]
        if not tag:
            raise UsageError(f"--devices {text!r}: 'tag:' names no tag")
        return Condition("tag", tag)
    if "=" in part:
        key, _, value = part.partition("=")
        if not key.strip() or not value.strip():
            raise UsageError(f"--devices {text!r}: {part!r} is not KEY=VALUE")
        return Condition("attr", key.strip(), value.strip())
    return Condition("name", part)


def _meets(condition: Condition, device: Device,
           reported: Optional[Mapping[str, str]]) -> bool:
    if condition.kind == "name":
        return fnmatch.fnmatchcase(device.name, condition.key)
    if condition.kind == "tag":
        return condition.key in device.tags
    value = device.attribute(condition.key)
    if value is None and reported is not None:
        value = reported.get(condition.key)
    return value is not None and fnmatch.fnmatchcase(str(value), condition.value)


def select(inventory: Inventory, selector: Selector, reported: Optional[Reported] = None,
           skip: Callable[[Device], Optional[str]] = lambda d: None
           ) -> Tuple[List[Device], List[Tuple[Device, str]]]:
    """(the boards selected, the selected boards left out with the reason, e.g. quarantine).
    BadInputError, saying what exists, when the selector matches no board at all."""
    if not inventory.devices:
        where = f" in {inventory.path}" if inventory.path else ""
        raise BadInputError(f"no boards are listed{where}",
                            hint="add one: edgetune fleet add NAME HOST:PORT [--tag T]")
    chosen: List[Device] = []
    skipped: List[Tuple[Device, str]] = []
    for device in inventory.devices:
        if not selector.matches(device, (reported or {}).get(device.name)):
            continue
        reason = skip(device)
        if reason:
            skipped.append((device, reason))
        else:
            chosen.append(device)
    if not chosen and not skipped:
        raise BadInputError(f"--devices {selector.text!r} matches no board",
                            hint=describe_inventory(inventory.devices))
    if not chosen:          # it matched boards, but every one of them is left out: say why
        raise BadInputError(f"--devices {selector.text!r} leaves no board to use: "
                            + "; ".join(reason for _, reason in skipped),
                            hint="a board under quarantine comes back with `edgetune fleet "
                                 "release NAME` or a passing `edgetune fleet check`")
    return chosen, skipped


def describe_inventory(devices: Sequence[Device]) -> str:
    """What a selector can name: the boards, their tags and their attributes."""
    names = ", ".join(d.name for d in devices) or "none"
    tags = sorted({t for d in devices for t in d.tags})
    attributes: Dict[str, Set[str]] = {}
    for device in devices:
        for key, value in device.attributes:
            attributes.setdefault(key, set()).add(value)
    parts = [f"boards: {names}", f"tags: {', '.join(tags) or 'none'}"]
    if attributes:
        parts.append("attributes: " + "; ".join(f"{k}={'|'.join(sorted(v))}"
                                                 for k, v in sorted(attributes.items())))
    parts.append("reported attributes: arch, os, cpu_model, onnxruntime_version, "
                 "python_version, agent_version, hostname")
    return "; ".join(parts)
