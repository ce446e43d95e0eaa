"""Quantized variants, made once per distinct set of quantization options.

A variant's file name is the sha256 of what made it (the float model's hash, the chosen
calibration samples' bytes, the options, the layers kept in higher precision), so a trial
that asks for options seen before -- in this process, an earlier run of the study, or another
study on the same model -- reuses the file (``VariantCache``). The layers a trial may keep in
higher precision are the first k of the ``analyze`` ranking of the default INT8 model
(``sensitivity_ranking``), computed once per study and kept with it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from edgetune.host.quant.settings import CalibSource, QuantizeSettings, output_paths
from edgetune.host.tune.space import QuantParams

log = logging.getLogger(__name__)
FORMAT = "1"                      # bump when a variant made from the same key would differ
RANKING_SAMPLES = 16


def default_cache_dir() -> Path:
    import platformdirs
    return Path(platformdirs.user_cache_dir("edgetune", appauthor=False)) / "tune"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_digest(data: Any) -> str:
    """The sha256 of the calibration samples' bytes (in their chosen order)."""
    digest = hashlib.sha256()
    for chunk in data.chunks(64):
        for name in sorted(chunk):
            digest.update(name.encode())
            digest.update(chunk[name].tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Variant:
    """A model a trial measures: the FP32 model itself, or a quantized file."""

    path: Path
    sha256: str
    quant: Optional[QuantParams]
    record_path: Optional[Path] = None      # OUT.record.json of a quantized one
    kept: Tuple[str, ...] = ()              # layers kept in higher precision
    made: bool = False                      # made by this call (False: from the cache)


class VariantCache:
    """Makes (or finds) quantized variants of ``model`` from ``data``; thread-safe (one
    quantization at a time, the same key never made twice)."""

    def __init__(self, model: Path, calib: Sequence[CalibSource], data: Any,
                 cache_dir: Optional[Path] = None, seed: int = 0) -> None:
        self.model = Path(model)
        self.calib = tuple(calib)
        self.data = data
        self.seed = seed
        self.dir = Path(cache_dir or default_cache_dir())
        self.dir.mkdir(parents=True, exist_ok=True)
        self.model_sha256 = file_sha256(self.model)
        self._digests: Dict[int, str] = {}
        self._lock = threading.Lock()
        self.made = 0

    def fp32(self) -> Variant:
        return Variant(self.model, self.model_sha256, None)

    def _digest(self, count: int) -> str:
        count = min(count, len(self.data))
        if count not in self._digests:
            self._digests[count] = data_digest(self.data.subset(count))
        return self._digests[count]

    def key(self, quant: QuantParams, kept: Sequence[str]) -> str:
        doc = {"format": FORMAT, "model": self.model_sha256,
               "data": self._digest(quant.calib_count), "quant": quant.as_dict(),
               "kept": list(kept)}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()

    def settings(self, quant: QuantParams, kept: Sequence[str], output: Path) -> QuantizeSettings:
        kept = tuple(kept)
        return QuantizeSettings(
            model=self.model, output=output, calib=self.calib, calib_count=quant.calib_count,
            seed=self.seed, method=quant.method, percentile=quant.percentile,
            per_channel=quant.per_channel, act_type=quant.act_type,
            weight_type=quant.weight_type, symmetric_act=quant.symmetric_act,
            int16=kept if quant.keep_as == "int16" else (),
            exclude=kept if quant.keep_as == "float" else (), force=True, source="tune")

    def get(self, quant: QuantParams, ranking: Sequence[str]) -> Variant:
        """The variant for ``quant`` (the first ``quant.keep_k`` layers of ``ranking`` kept in
        ``quant.keep_as``); BadInputError when the quantizer refuses the options."""
        from edgetune.host.quant.pipeline import quantize

        kept = tuple(ranking[:quant.keep_k])
        with self._lock:
            key = self.key(quant, kept)
            path = self.dir / f"{key}.onnx"
            record = output_paths(path)[1]
            sha_file = path.with_suffix(".sha256")
            if path.is_file() and record.is_file() and sha_file.is_file():
                return Variant(path, sha_file.read_text().strip(), quant, record, kept)
            report = quantize(self.settings(quant, kept, path),
                              data=self.data.subset(min(quant.calib_count, len(self.data))))
            _write_atomic(sha_file, report.output_sha256 + "\n")
            self.made += 1
            log.info("made variant %s (%s) in %.2f s", key[:12], quant, report.elapsed_s)
            return Variant(path, report.output_sha256, quant, record, kept, made=True)


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=str(path.parent), prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def sensitivity_ranking(cache: VariantCache) -> List[str]:
    """The quantizable layers, most sensitive first: ``analyze`` of edgetune's default INT8
    model against the float model on a few calibration samples (``layer_scores``, the
    ranking the accuracy fallback uses)."""
    from edgetune.host.quant.analysis import analyze

    default = cache.get(QuantParams(calib_count=min(100, len(cache.data))), ())
    data = cache.data.subset(min(RANKING_SAMPLES, len(cache.data)))
    report = analyze(cache.model, default.path, data, max_samples=RANKING_SAMPLES)
    record = json.loads(Path(default.record_path or "").read_text(encoding="utf-8")) \
        if default.record_path else {}
    quantizable = record.get("quantizable_nodes") or None
    ranked = [s.node for s in report.layer_scores(quantizable)]
    return ranked


def replace_quant(quant: QuantParams, **changes: Any) -> QuantParams:
    return dataclasses.replace(quant, **changes)
