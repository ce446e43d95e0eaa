"""What a fleet run measures, fixed before any board is asked: the models and the dataset
(each local file hashed once here, for every board), the job options, the label.

A ``FleetRunSpec`` is stored with the run (``edgetune.host.fleet.runbook``), so that
``fleet bench ... --resume RUN`` can refuse a command that names other models or options than
the run it would complete (``FleetRunSpec.difference``).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from edgetune.host.errors import BadInputError, UsageError

FULL_SHA = re.compile(r"^[0-9a-f]{64}$")
KINDS = {"benchmark": "bench", "evaluate": "eval"}     # job kind -> record kind


@dataclass(frozen=True)
class FileRef:
    """A model or dataset of the run: its sha256 (the board's name for it), how the command
    line named it, and the local file when there is one (uploaded to every board that lacks
    it, by this hash: nothing is hashed again per board)."""

    text: str
    sha256: str
    path: Optional[Path] = None
    size: Optional[int] = None

    @property
    def display(self) -> str:
        return self.path.name if self.path is not None else self.sha256[:12]

    def as_json(self) -> Dict[str, Any]:
        return {"name": self.display, "text": self.text, "sha256": self.sha256,
                "size": self.size}


def file_ref(text: str, what: str, hasher: Any = None) -> FileRef:
    """``text`` as a local file (hashed now, once) or the full sha256 of a blob on the boards.
    A hash prefix is refused: each board would expand it on its own."""
    from edgetune.host.hashcache import file_sha256

    path = Path(text).expanduser()
    if path.is_file():
        sha256, size = (hasher or file_sha256)(path)
        if size == 0:
            raise BadInputError(f"{path} is empty")
        return FileRef(text=text, sha256=sha256, path=path, size=size)
    lowered = text.lower()
    if FULL_SHA.match(lowered):
        return FileRef(text=text, sha256=lowered)
    if re.match(r"^[0-9a-f]{6,63}$", lowered):
        raise UsageError(f"{text}: a fleet run names a {what} on the boards by its full sha256 "
                         "(64 hex digits), not a prefix",
                         hint=f"pass the local file, or the whole hash (`edgetune {what}s list`)")
    raise BadInputError(f"{text} is neither a file nor the sha256 of a {what}",
                        hint="check the path")


@dataclass(frozen=True)
class FleetRunSpec:
    """One fleet run's measurement: ``kind`` "benchmark" or "evaluate", ``template`` the
    BenchmarkSpec/EvaluateSpec with empty hashes, ``models`` in command-line order."""

    kind: str
    models: Tuple[FileRef, ...]
    template: Any
    dataset: Optional[FileRef] = None
    label: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fleet run kind {self.kind!r}")
        shas = [m.sha256 for m in self.models]
        if len(set(shas)) != len(shas):
            dup = next(m for m in self.models if shas.count(m.sha256) > 1)
            raise UsageError(f"{dup.text} is named twice (sha256 {dup.sha256[:12]}): each model "
                             "is measured once per board")

    @property
    def record_kind(self) -> str:
        return KINDS[self.kind]

    def job_spec(self, model: FileRef) -> Any:
        """The job for ``model`` (hashes filled in)."""
        changes: Dict[str, Any] = {"model_sha256": model.sha256}
        if self.dataset is not None:
            changes["dataset_sha256"] = self.dataset.sha256
        return dataclasses.replace(self.template, **changes)

    def options(self) -> Dict[str, Any]:
        """The job options as compared on --resume (the hashes aside)."""
        from edgetune.host.render import options_record

        options = options_record(self.template)
        options.pop("dataset_sha256", None)
        return options

    def as_json(self) -> Dict[str, Any]:
        return {"kind": self.kind, "models": [m.as_json() for m in self.models],
                "dataset": self.dataset.as_json() if self.dataset else None,
                "options": self.options(), "template": self.template.as_dict(),
                "label": self.label}

    def difference(self, stored: Mapping[str, Any], run_id: str) -> Optional[str]:
        """Why this command cannot resume the run stored as ``stored`` (``as_json``), or None."""
        if stored.get("kind") != self.kind:
            return (f"run {run_id} is a fleet {KINDS.get(stored.get('kind'), '?')}; this is a "
                    f"fleet {self.record_kind}")
        theirs = [m["sha256"] for m in stored.get("models") or ()]
        ours = [m.sha256 for m in self.models]
        if theirs != ours:
            named = {m["sha256"]: m.get("name") or m["sha256"][:12]
                     for m in stored.get("models") or ()}
            gone = [named[s] for s in theirs if s not in ours]
            new = [m.display for m in self.models if m.sha256 not in theirs]
            parts = []
            if gone:
                parts.append(f"it measured {', '.join(gone)}, not named now")
            if new:
                parts.append(f"{', '.join(new)} {'is' if len(new) == 1 else 'are'} not in it "
                             "(or changed since: the hash differs)")
            if not parts:
                parts.append("the models are named in another order")
            return f"run {run_id} has other models: " + "; ".join(parts)
        dataset = (stored.get("dataset") or {}).get("sha256")
        if dataset != (self.dataset.sha256 if self.dataset else None):
            return f"run {run_id} used another dataset (sha256 {str(dataset)[:12]})"
        changed = _changed_options(stored.get("options") or {}, self.options())
        if changed:
            return f"run {run_id} had other options: " + "; ".join(changed)
        if self.label and self.label != stored.get("label"):
            return f"run {run_id} has the label {stored.get('label')!r}, not {self.label!r}"
        return None


def _changed_options(theirs: Mapping[str, Any], ours: Mapping[str, Any]) -> List[str]:
    out = []
    for key in sorted(set(theirs) | set(ours)):
        a, b = theirs.get(key), ours.get(key)
        if _norm(a) != _norm(b):
            out.append(f"{key} was {_show(a)}, now {_show(b)}")
    return out


def _norm(value: Any) -> Any:
    """JSON round trips turn tuples into lists."""
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    if isinstance(value, dict):
        return {k: _norm(v) for k, v in value.items()}
    return value


def _show(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, (list, tuple)) and not value:
        return "none"
    return str(_norm(value))


def spec_from_settings(settings: Any, hasher: Any = None) -> FleetRunSpec:
    """The run's spec from ``bench``/``eval``'s own settings (``edgetune.host.cli.agent_cmds``'s
    JobSettings: the same flags mean the same job), each local file hashed once."""
    seen: Dict[str, FileRef] = {}
    models: List[FileRef] = []
    for ref in settings.models:
        key = ref.text
        if key not in seen:
            seen[key] = file_ref(ref.text, "model", hasher)
        models.append(seen[key])
    dataset = file_ref(settings.dataset.text, "dataset", hasher) if settings.dataset else None
    return FleetRunSpec(kind=settings.kind, models=tuple(models), template=settings.template,
                        dataset=dataset, label=settings.label)


def unique(items: Sequence[FileRef]) -> List[FileRef]:
    """The distinct files among ``items`` (by hash), in order."""
    out: Dict[str, FileRef] = {}
    for item in items:
        out.setdefault(item.sha256, item)
    return list(out.values())
