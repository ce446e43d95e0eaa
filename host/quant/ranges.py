"""The calibration cache: ``OUT.ranges.json`` (the AMCT ``convert_model`` idea).

Calibrate once, then re-quantize with other options (per-tensor, int16 islands, exclusions)
from the saved ranges, with no calibration data: ``edgetune quantize ... --ranges FILE``.
FILE may also be an ``OUT.record.json`` (PTQ or QAT): its activation scales and zero points
give the ranges (``edgetune.host.quant.qat.ranges_from_record``).

The file holds the model's sha256, the method and its parameters, and per-tensor ranges as
JSON numbers (a float32 printed by Python round-trips exactly, so re-quantizing from the file
gives bit-identical scales). Loading it against a different model is refused unless every
tensor it names exists in that model (then it is used, and the record says so).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, Optional

from edgetune.host.errors import BadInputError, NotFoundError
from edgetune.host.quant.calibrate import Range, Ranges

FORMAT = "edgetune-ranges"
VERSION = 1


def _pairs(ranges: Dict[str, Range]) -> Dict[str, list]:
    return {name: [float(lo), float(hi)] for name, (lo, hi) in sorted(ranges.items())}


def ranges_to_dict(ranges: Ranges) -> Dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "model_sha256": ranges.model_sha256,
        "method": ranges.method,
        "params": ranges.params,
        "n_samples": ranges.n_samples,
        "tensors": _pairs(ranges.tensors),
        "observed": _pairs(ranges.observed),
        "alt": {label: _pairs(r) for label, r in sorted(ranges.alt.items())},
        "stats": ranges.stats,
    }


def atomic_write_text(path: Path, text: str) -> None:
    """Writes ``text`` to a temp file beside ``path`` and renames it into place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=str(path.parent), prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _read_pairs(raw: Any, where: str, path: Path) -> Dict[str, Range]:
    if not isinstance(raw, dict):
        raise BadInputError(f"ranges file {path}: '{where}' is not an object")
    out: Dict[str, Range] = {}
    for name, pair in raw.items():
        if (not isinstance(pair, list) or len(pair) != 2
                or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in pair)):
            raise BadInputError(f"ranges file {path}: '{where}.{name}' is not [min, max]")
        out[str(name)] = (float(pair[0]), float(pair[1]))
    return out


def ranges_from_dict(raw: Dict[str, Any], path: Path) -> Ranges:
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise BadInputError(f"{path} is not an edgetune ranges file (no \"format\": \"{FORMAT}\")",
                            hint="pass the OUT.ranges.json written beside a quantized model")
    if raw.get("version") != VERSION:
        raise BadInputError(f"ranges file {path} has version {raw.get('version')}; "
                            f"this edgetune reads version {VERSION}")
    tensors = _read_pairs(raw.get("tensors"), "tensors", path)
    observed = _read_pairs(raw.get("observed", {}), "observed", path)
    alt = {str(label): _read_pairs(r, f"alt.{label}", path)
           for label, r in _object(raw, "alt", path).items()}
    n_samples = raw.get("n_samples") or 0
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 0:
        raise BadInputError(f"ranges file {path}: 'n_samples' is not a count ({n_samples!r})")
    return Ranges(method=str(raw.get("method", "minmax")), tensors=tensors,
                  observed=observed or dict(tensors), alt=alt,
                  stats=_object(raw, "stats", path), params=_object(raw, "params", path),
                  n_samples=n_samples, model_sha256=str(raw.get("model_sha256") or ""))


def _object(raw: Dict[str, Any], key: str, path: Path) -> Dict[str, Any]:
    """``raw[key]`` when it is an object (absent or null: {}); BadInputError otherwise."""
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        raise BadInputError(f"ranges file {path}: '{key}' is not an object")
    return dict(value)


def load_ranges(path: Path, *, model_sha256: str = "",
                model_tensors: Optional[Iterable[str]] = None) -> Ranges:
    """Reads a ranges file; checks it belongs to the model (same sha256, or every tensor
    it names exists in ``model_tensors``), else BadInputError naming the missing tensors."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"ranges file {path} does not exist",
                            hint="quantize once with --calib; it writes OUT.ranges.json")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInputError(f"ranges file {path} is not valid JSON: {exc}") from None
    if isinstance(raw, dict) and raw.get("format") == "edgetune-quantize-record":
        from edgetune.host.quant.qat import ranges_from_record   # OUT.record.json works too
        raw = ranges_from_record(raw, path)
    ranges = ranges_from_dict(raw, path)
    if model_sha256 and ranges.model_sha256 and ranges.model_sha256 != model_sha256:
        if model_tensors is None:
            raise BadInputError(f"ranges file {path} was made for another model "
                                f"(sha256 {ranges.model_sha256[:12]}...)")
        known = set(model_tensors)
        missing = sorted(set(ranges.tensors) - known)
        if missing:
            shown = ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else "")
            raise BadInputError(
                f"ranges file {path} was made for another model (sha256 "
                f"{ranges.model_sha256[:12]}...) and names {len(missing)} tensor(s) this "
                f"model does not have: {shown}",
                hint="calibrate this model again (drop --ranges)")
    return ranges
