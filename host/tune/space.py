"""The search space of ``edgetune tune``: quantization options x onnxruntime session options.

Every dimension is a list of choices (Optuna categorical parameters). The defaults below are
narrowed or widened by a ``tune.toml`` and by ``--set KEY=V1,V2`` flags (later wins); every
key is checked and an unknown key is refused with the list of known ones::

    [quantization]
    precision = ["fp32", "int8"]           # ["int8"]: the answer must be quantized
    method = ["minmax", "percentile", "entropy", "mse", "distribution"]
    percentile = [99.9, 99.99, 99.999]     # used when method = "percentile"
    per_channel = [true, false]
    act_type = ["uint8", "int8"]           # "int16" too
    weight_type = ["int8", "uint8"]
    symmetric_act = [false, true]
    calib_count = [32, 64, 128]            # calibration samples
    keep_k = [0, 1, 2, 4]                  # the first k layers of the `analyze` ranking ...
    keep_as = ["int16", "float"]           # ... kept in this precision

    [runtime]
    intra_op_threads = "cores"             # 1..the board's cores; or a list, or {min, max}
    inter_op_threads = [1, 2]
    execution_mode = ["sequential", "parallel"]
    graph_optimization = ["basic", "extended", "all"]
    providers = "board"                    # every provider the board reports; or a list

The FP32 model is a candidate (parameter ``precision`` = fp32 or int8; the quantization
parameters exist only for int8 trials: Optuna's define-by-run space), so the answer can be
"do not quantize"; ``precision = ["int8"]`` asks for a quantized answer (and then
``--max-drop`` may be unmet). What the board reports
(its cores, its providers) narrows the runtime dimensions when the study starts
(``Space.for_board``); a dimension left with no choice is an error naming it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from edgetune.host.errors import BadInputError
from edgetune.host.quant.settings import ACT_TYPES, METHODS, WEIGHT_TYPES
from edgetune.protos.messages import EXECUTION_MODES, GRAPH_OPT_LEVELS, SessionOptions

CPU = "CPUExecutionProvider"
# Reported by onnxruntime builds but not a place to run a model's kernels: never chosen by
# "board" (a tune.toml may still name them).
NOT_COMPUTE = ("AzureExecutionProvider",)
MAX_THREADS = 256

QUANT_DEFAULTS: Dict[str, Tuple[Any, ...]] = {
    "precision": ("fp32", "int8"),
    "method": METHODS,
    "percentile": (99.9, 99.99, 99.999),
    "per_channel": (True, False),
    "act_type": ("uint8", "int8"),
    "weight_type": ("int8", "uint8"),
    "symmetric_act": (False, True),
    "calib_count": (32, 64, 128),
    "keep_k": (0, 1, 2, 4),
    "keep_as": ("int16", "float"),
}
RUNTIME_DEFAULTS: Dict[str, Any] = {
    "intra_op_threads": "cores",
    "inter_op_threads": (1, 2),
    "execution_mode": EXECUTION_MODES,
    "graph_optimization": ("basic", "extended", "all"),
    "providers": "board",
}
SECTIONS = {"quantization": tuple(QUANT_DEFAULTS), "runtime": tuple(RUNTIME_DEFAULTS)}
KNOWN_KEYS = tuple(f"{s}.{k}" for s, keys in SECTIONS.items() for k in keys)

# edgetune quantize's defaults: the "default INT8" baseline and the second seeded trial.
DEFAULT_INT8 = {"method": "minmax", "percentile": 99.999, "per_channel": True,
                "act_type": "uint8", "weight_type": "int8", "symmetric_act": False,
                "calib_count": 100, "keep_k": 0, "keep_as": "int16"}


def _known_keys_text() -> str:
    return ", ".join(KNOWN_KEYS)


def _check_choices(key: str, values: Sequence[Any], where: str) -> Tuple[Any, ...]:
    """One dimension's choices, each checked (BadInputError naming the key and ``where``)."""
    section, name = key.split(".")
    allowed: Optional[Sequence[Any]] = {
        "precision": ("fp32", "int8"), "method": METHODS, "act_type": ACT_TYPES,
        "weight_type": WEIGHT_TYPES,
        "keep_as": ("int16", "float"), "execution_mode": EXECUTION_MODES,
        "graph_optimization": GRAPH_OPT_LEVELS}.get(name)
    out: List[Any] = []
    for value in values:
        if allowed is not None:
            ok = isinstance(value, str) and value in allowed
            want = f"one of {', '.join(allowed)}"
        elif name in ("per_channel", "symmetric_act"):
            ok, want = isinstance(value, bool), "true or false"
        elif name == "percentile":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) \
                and 50 < float(value) <= 100
            want = "a number in (50, 100]"
            value = float(value) if ok else value
        elif name in ("calib_count", "keep_k", "intra_op_threads", "inter_op_threads"):
            low = 1 if name in ("calib_count", "intra_op_threads") else 0
            ok = isinstance(value, int) and not isinstance(value, bool) \
                and low <= value <= (100_000 if name == "calib_count" else MAX_THREADS)
            want = f"a whole number >= {low}"
        else:                                                    # providers
            ok, want = isinstance(value, str) and value.endswith("ExecutionProvider"), \
                "an onnxruntime provider name such as CPUExecutionProvider"
        if not ok:
            raise BadInputError(f"{where}: {key} = {value!r} is not {want}")
        if value not in out:
            out.append(value)
    if not out:
        raise BadInputError(f"the search space is empty: {key} has no choice left ({where})",
                            hint="give at least one value")
    return tuple(out)


def _parse_value(key: str, text: str) -> Any:
    """One ``--set`` value as the TOML would hold it."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text.strip()


@dataclass(frozen=True)
class Space:
    """The space as given (before the board narrows it): choices per ``section.key``;
    ``intra_op_threads`` may be "cores" and ``providers`` "board"."""

    choices: Tuple[Tuple[str, Any], ...]
    sources: Tuple[str, ...] = ()             # where it came from (defaults, FILE, --set)

    def get(self, key: str) -> Any:
        return dict(self.choices)[key]

    @classmethod
    def default(cls) -> "Space":
        items = [(f"quantization.{k}", tuple(v)) for k, v in QUANT_DEFAULTS.items()]
        items += [(f"runtime.{k}", v if isinstance(v, str) else tuple(v))
                  for k, v in RUNTIME_DEFAULTS.items()]
        return cls(tuple(items), ("defaults",))

    def updated(self, values: Mapping[str, Any], where: str) -> "Space":
        current = dict(self.choices)
        for key, value in values.items():
            current[key] = _dimension(key, value, where)
        return Space(tuple(current.items()), self.sources + (where,))

    def as_dict(self) -> Dict[str, Any]:
        return {k: (v if isinstance(v, str) else list(v)) for k, v in self.choices}

    def for_board(self, cores: int, providers: Sequence[str]) -> "BoardSpace":
        """The choices on a board with ``cores`` cores and these providers; BadInputError
        when a runtime dimension has nothing left."""
        dims = dict(self.choices)
        threads = dims["runtime.intra_op_threads"]
        cores = max(1, int(cores or 1))
        if threads == "cores":
            threads = tuple(range(1, cores + 1))
        else:
            kept = tuple(t for t in threads if t <= cores)
            if not kept:
                raise BadInputError(
                    f"the search space is empty: runtime.intra_op_threads {list(threads)} "
                    f"keeps nothing on a board with {cores} core(s)",
                    hint=f"choose values between 1 and {cores}")
            threads = kept
        inter = tuple(t for t in dims["runtime.inter_op_threads"] if t <= cores) or (1,)
        wanted = dims["runtime.providers"]
        if wanted == "board":
            chosen = tuple(p for p in providers if p not in NOT_COMPUTE) or (CPU,)
        else:
            chosen = tuple(p for p in wanted if p in providers)
            if not chosen:
                raise BadInputError(
                    f"the search space is empty: runtime.providers {list(wanted)} keeps none "
                    f"of the providers the board reports ({', '.join(providers) or 'none'})",
                    hint="choose among the providers the board reports (`edgetune info`)")
        dims["runtime.intra_op_threads"] = threads
        dims["runtime.inter_op_threads"] = inter
        dims["runtime.providers"] = chosen
        return BoardSpace(tuple(dims.items()))


def _dimension(key: str, value: Any, where: str) -> Any:
    if key == "runtime.intra_op_threads":
        if value == "cores":
            return value
        if isinstance(value, Mapping):
            extra = set(value) - {"min", "max"}
            if extra or not {"min", "max"} <= set(value):
                raise BadInputError(f"{where}: {key} as a table takes min and max (got "
                                    f"{', '.join(sorted(value))})")
            lo, hi = value["min"], value["max"]
            if not (isinstance(lo, int) and isinstance(hi, int)) or not 1 <= lo <= hi:
                raise BadInputError(f"{where}: {key} needs 1 <= min <= max (got {lo}, {hi})")
            return tuple(range(lo, min(hi, MAX_THREADS) + 1))
    if key == "runtime.providers" and value == "board":
        return value
    if isinstance(value, (str, int, float, bool)):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise BadInputError(f"{where}: {key} must be a list of choices (got {value!r})")
    return _check_choices(key, value, where)


def _full_key(key: str, where: str) -> str:
    if "." in key:
        if key in KNOWN_KEYS:
            return key
    else:
        matches = [k for k in KNOWN_KEYS if k.endswith("." + key)]
        if len(matches) == 1:
            return matches[0]
    raise BadInputError(f"{where}: unknown key {key!r}",
                        hint=f"the keys of the space are: {_known_keys_text()}")


def load_space_file(path: Path, base: Optional[Space] = None) -> Space:
    """``tune.toml`` over ``base`` (default: the defaults); every key checked."""
    try:
        import tomllib
    except ModuleNotFoundError:  # pragma: no cover - Python < 3.11
        import tomli as tomllib   # type: ignore[no-redef]

    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        from edgetune.host.errors import NotFoundError
        raise NotFoundError(f"space file {path} does not exist", hint="check --space") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BadInputError(f"{path} is not valid TOML: {exc}") from None
    values: Dict[str, Any] = {}
    for section, table in data.items():
        if section not in SECTIONS:
            raise BadInputError(f"{path}: unknown table [{section}]",
                                hint=f"the tables are [quantization] and [runtime]; the keys of "
                                     f"the space are: {_known_keys_text()}")
        if not isinstance(table, Mapping):
            raise BadInputError(f"{path}: {section} must be a table")
        for key, value in table.items():
            values[_full_key(f"{section}.{key}", str(path))] = value
    return (base or Space.default()).updated(values, str(path))


def apply_set_flags(space: Space, items: Sequence[str]) -> Space:
    """``--set KEY=V1,V2`` (KEY with or without its table: ``method`` or
    ``quantization.method``)."""
    values: Dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise BadInputError(f"--set {item!r} is not KEY=VALUE[,VALUE...]",
                                hint=f"e.g. --set method=minmax,percentile; keys: "
                                     f"{_known_keys_text()}")
        key, text = item.split("=", 1)
        full = _full_key(key.strip(), f"--set {item}")
        words = [w for w in text.split(",") if w.strip()]
        if full == "runtime.intra_op_threads" and text.strip() == "cores":
            values[full] = "cores"
        elif full == "runtime.providers" and text.strip() == "board":
            values[full] = "board"
        else:
            values[full] = [_parse_value(full, w) for w in words]
    return space.updated(values, "--set") if values else space


# ---------------------------------------------------------------------- candidates

@dataclass(frozen=True)
class QuantParams:
    """One set of quantization options (what a quantized variant is made from)."""

    method: str = "minmax"
    percentile: float = 99.999
    per_channel: bool = True
    act_type: str = "uint8"
    weight_type: str = "int8"
    symmetric_act: bool = False
    calib_count: int = 100
    keep_k: int = 0
    keep_as: str = "int16"

    def as_dict(self) -> Dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class Candidate:
    """One trial's configuration: a quantization (None: the FP32 model) and a session."""

    quant: Optional[QuantParams]
    session: SessionOptions = field(default_factory=SessionOptions)

    @property
    def precision(self) -> str:
        return "fp32" if self.quant is None else "int8"

    def describe(self) -> str:
        s = self.session
        runtime = (f"threads {s.intra_op_threads}/{s.inter_op_threads} {s.execution_mode} "
                   f"opt {s.graph_optimization} {(s.providers or (CPU,))[0]}")
        if self.quant is None:
            return f"fp32, {runtime}"
        q = self.quant
        method = f"percentile {q.percentile:g}" if q.method == "percentile" else q.method
        keep = f", keep {q.keep_k} {q.keep_as}" if q.keep_k else ""
        return (f"int8 {method} {'per-channel' if q.per_channel else 'per-tensor'} "
                f"{q.act_type}{'/sym' if q.symmetric_act else ''}/{q.weight_type} "
                f"calib {q.calib_count}{keep}, {runtime}")


@dataclass(frozen=True)
class BoardSpace:
    """The space on one kind of board: every dimension a tuple of choices."""

    choices: Tuple[Tuple[str, Tuple[Any, ...]], ...]

    def dims(self) -> Dict[str, Tuple[Any, ...]]:
        return dict(self.choices)

    def fingerprint(self) -> str:
        text = json.dumps([[k, list(v)] for k, v in self.choices], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def size(self, keep_max: int) -> int:
        """How many distinct configurations (with ``keep_max`` layers ranked)."""
        d = self.dims()
        runtime = 1
        for key in ("intra_op_threads", "inter_op_threads", "execution_mode",
                    "graph_optimization", "providers"):
            runtime *= len(d[f"runtime.{key}"])
        methods = sum(len(d["quantization.percentile"]) if m == "percentile" else 1
                      for m in d["quantization.method"])
        keeps = sum(len(d["quantization.keep_as"]) if k else 1
                    for k in self.keep_choices(keep_max))
        quant = methods * keeps
        for key in ("per_channel", "act_type", "weight_type", "symmetric_act", "calib_count"):
            quant *= len(d[f"quantization.{key}"])
        precisions = d["quantization.precision"]
        return runtime * (("fp32" in precisions) + ("int8" in precisions) * quant)

    def keep_choices(self, ranked: int) -> Tuple[int, ...]:
        kept = tuple(k for k in self.dims()["quantization.keep_k"] if k <= ranked)
        return kept or (0,)

    def suggest(self, trial: Any, ranked: int) -> Dict[str, Any]:
        """Ask ``trial`` (an optuna Trial) for one configuration: its params."""
        d = self.dims()
        params: Dict[str, Any] = {}

        def pick(name: str, choices: Sequence[Any]) -> Any:
            params[name] = trial.suggest_categorical(name, list(choices))
            return params[name]

        if pick("precision", d["quantization.precision"]) == "int8":
            if pick("method", d["quantization.method"]) == "percentile":
                pick("percentile", d["quantization.percentile"])
            pick("per_channel", d["quantization.per_channel"])
            weights = d["quantization.weight_type"]
            # int8 activations run with int8 weights only (the quantizer refuses uint8)
            if pick("act_type", d["quantization.act_type"]) != "int8" or "int8" not in weights:
                pick("weight_type", weights)
            for key in ("symmetric_act", "calib_count"):
                pick(key, d[f"quantization.{key}"])
            if pick("keep_k", self.keep_choices(ranked)):
                pick("keep_as", d["quantization.keep_as"])
        for key in ("intra_op_threads", "inter_op_threads", "execution_mode",
                    "graph_optimization", "providers"):
            pick(key, d[f"runtime.{key}"])
        return params

    def seeds(self, ranked: int) -> List[Dict[str, Any]]:
        """The trials every study starts with, each with the session closest to onnxruntime's
        defaults that the space holds: FP32, edgetune's default INT8, and that INT8 with
        per-tensor weight scales, the hand alternative docs/quantization.md gives (faster on
        some CPUs, e.g. 1.7 % on a ResNet-18 shape here, which a short study's noisy trials
        need not find). So the answer is never slower than those by hand."""
        d = self.dims()

        def near(key: str, want: Any) -> Any:
            values = d[key]
            if want in values:
                return values[0] if want is None else want
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                return min(values, key=lambda v: abs(v - want))
            return values[0]

        runtime = {"intra_op_threads": max(d["runtime.intra_op_threads"]),
                   "inter_op_threads": near("runtime.inter_op_threads", 1),
                   "execution_mode": near("runtime.execution_mode", "sequential"),
                   "graph_optimization": near("runtime.graph_optimization", "all"),
                   "providers": d["runtime.providers"][0]}
        quant: Dict[str, Any] = {"precision": "int8"}
        for key, want in DEFAULT_INT8.items():
            if key == "percentile" or key == "keep_as":
                continue
            choices = self.keep_choices(ranked) if key == "keep_k" else d[f"quantization.{key}"]
            quant[key] = want if want in choices else (
                min(choices, key=lambda v: abs(v - want)) if isinstance(want, int)
                and not isinstance(want, bool) else choices[0])
        if quant["method"] == "percentile":
            quant["percentile"] = near("quantization.percentile", 99.999)
        if quant["keep_k"]:
            quant["keep_as"] = d["quantization.keep_as"][0]
        precisions = d["quantization.precision"]
        int8 = [{**quant, **runtime}] if "int8" in precisions else []
        if int8 and quant["per_channel"] and False in d["quantization.per_channel"]:
            int8.append({**quant, "per_channel": False, **runtime})
        return ([{"precision": "fp32", **runtime}] if "fp32" in precisions else []) + int8


def candidate(params: Mapping[str, Any]) -> Candidate:
    """The configuration a trial's params describe."""
    provider = params.get("providers", CPU)
    session = SessionOptions(
        providers=(provider,) if provider == CPU else (provider, CPU),
        intra_op_threads=int(params.get("intra_op_threads", 0)),
        inter_op_threads=int(params.get("inter_op_threads", 0)),
        execution_mode=params.get("execution_mode", "sequential"),
        graph_optimization=params.get("graph_optimization", "all"))
    if params.get("precision", "fp32") == "fp32":
        return Candidate(None, session)
    base = QuantParams()
    quant = replace(base, **{k: params[k] for k in base.__dataclass_fields__ if k in params})
    if quant.method != "percentile":
        quant = replace(quant, percentile=base.percentile)
    if not quant.keep_k:
        quant = replace(quant, keep_as=base.keep_as)
    return Candidate(quant, session)


def with_shapes(session: SessionOptions, shapes: Sequence[Tuple[str, Tuple[int, ...]]]
                ) -> SessionOptions:
    return replace(session, input_shapes=tuple(sorted(shapes)))


__all__ = ["BoardSpace", "CPU", "Candidate", "DEFAULT_INT8", "KNOWN_KEYS", "QuantParams",
           "Space", "apply_set_flags", "candidate", "load_space_file", "with_shapes"]
