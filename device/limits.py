"""What the agent accepts: sizes, counts and durations, and the checks that enforce them.

``Limits`` is built once from the agent's config (the ``[limits]`` table of agent.toml, one
key per field) and handed to the store, the runner and the job queue. ``validate_benchmark``
and ``validate_evaluate`` check a spec's final values (after the servicer has turned wire
zeros into defaults) and raise ``InvalidArgument`` with a message that names the bad value
and the accepted range.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, Optional

from edgetune.device.errors import InvalidArgument
from edgetune.protos.messages import (EXECUTION_MODES, GRAPH_OPT_LEVELS, BenchmarkSpec, BlobKind,
                             CompareSpec, EvaluateSpec, SessionOptions, ThermalGate)
from edgetune.protos.shapes import format_dims

GiB = 1 << 30
SHA256_RE = re.compile(r"[0-9a-f]{64}")
HEX_RE = re.compile(r"[0-9a-f]+")
EVALUATE_METRICS = ("top1", "top5", "fidelity", "miou", "map")   # map: device.detection
MAX_INPUT_SHAPES = 64
MAX_DIM = 1 << 24
MAX_PROVIDERS = 16
MAX_ROUNDS = 100                        # rounds of a comparison
MAX_TEMP_C = 150.0                      # a --max-temp beyond this is a typo
MAX_TEMP_WAIT_S = 3600.0
MAX_DUMP_OUTPUTS = 4096                 # outputs one evaluation may write to its output file
MAX_OUTPUT_NAME = 1024
MIN_OUTPUT_CHUNK_BYTES = 4096
MAX_OUTPUT_CHUNK_BYTES = 4 << 20        # under the gRPC message limit of both sides


@dataclass(frozen=True)
class Limits:
    """Every bound the agent enforces on what a caller sends. Field name = config key."""

    max_model_bytes: int = 2 * GiB          # protobuf cannot parse a single-file model beyond 2 GiB
    max_dataset_bytes: int = 2 * GiB        # on disk and unpacked (compressed npz members count unpacked)
    max_iterations: int = 1_000_000
    max_warmup: int = 10_000
    max_duration_s: float = 3600.0
    queue_capacity: int = 16
    max_samples_returned: int = 100_000
    max_dataset_samples: int = 1_000_000
    max_batch_size: int = 4096
    max_threads: int = 256
    min_lease_ttl_s: float = 5.0            # the shortest lease a host may ask (device.leases)
    max_lease_ttl_s: float = 3600.0         # the longest: a dead host's lease ends by then
    # Connections and streams (device.streams, the upload loop in device.servicer):
    max_streams_per_client: int = 64       # calls open at once per certificate name
    max_streams_total: int = 256           # calls open at once from everyone
    upload_idle_timeout_s: float = 60.0    # an upload that sends nothing this long is closed
    max_upload_in_flight_bytes: int = 16 << 20  # received, not yet written, per upload
    max_job_spec_bytes: int = 64 << 10     # a SubmitJob request, as serialized
    # Job output files (EvaluateSpec.dump_outputs, device.joboutput; read with ReadJobOutput):
    max_job_output_bytes: int = 256 << 20  # one job's file; a job that would write more fails
    max_job_outputs: int = 8               # files kept at once: the oldest goes first
    job_output_ttl_s: float = 3600.0       # a file is removed this long after its job ended
    max_output_chunk_bytes: int = 1 << 20  # the largest chunk ReadJobOutput sends

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"limits.{f.name} must be a positive number (got {value!r})")
            if not math.isfinite(value):
                raise ValueError(f"limits.{f.name} must be finite (got {value!r})")
        if not MIN_OUTPUT_CHUNK_BYTES <= self.max_output_chunk_bytes <= MAX_OUTPUT_CHUNK_BYTES:
            raise ValueError(f"limits.max_output_chunk_bytes must be between "
                             f"{MIN_OUTPUT_CHUNK_BYTES} and {MAX_OUTPUT_CHUNK_BYTES} "
                             f"(got {self.max_output_chunk_bytes!r})")
        if self.min_lease_ttl_s > self.max_lease_ttl_s:
            raise ValueError(f"limits.min_lease_ttl_s ({self.min_lease_ttl_s:g}) is above "
                             f"limits.max_lease_ttl_s ({self.max_lease_ttl_s:g})")

    def max_bytes(self, kind: BlobKind) -> int:
        return self.max_model_bytes if BlobKind(kind) is BlobKind.MODEL else self.max_dataset_bytes

    @staticmethod
    def config_key(kind: BlobKind) -> str:
        """The agent.toml key that raises the size limit of ``kind``."""
        return "[limits] max_model_bytes" if BlobKind(kind) is BlobKind.MODEL \
            else "[limits] max_dataset_bytes"


def check_hex(value: Any, length: int, what: str, hint: str) -> str:
    """Return ``value`` if it is exactly ``length`` lowercase hex characters, else raise
    InvalidArgument naming ``what``, showing (at most 80 characters of) the value."""
    if not isinstance(value, str) or len(value) != length or not HEX_RE.fullmatch(value):
        shown = value if isinstance(value, str) and len(value) <= 80 else f"{str(value)[:80]}..."
        raise InvalidArgument(
            f"{what} must be {length} lowercase hexadecimal characters (got {shown!r}); {hint}")
    return value


def check_sha256(value: Any, what: str = "sha256") -> str:
    """Return ``value`` if it is 64 lowercase hex characters, else raise InvalidArgument."""
    return check_hex(value, 64, what,
                     "use the sha256 that `edgetune models upload` printed")


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _check_range(name: str, value: Any, low: float, high: float, hint: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        extra = f"; {hint}" if hint else ""
        raise InvalidArgument(f"{name} must be between {_num(low)} and {_num(high)} "
                              f"(got {value!r}){extra}")


def validate_session(options: SessionOptions, limits: Limits) -> None:
    """Check session options: thread counts, levels, providers, input shapes."""
    _check_range("intra_op_threads", options.intra_op_threads, 0, limits.max_threads,
                 "0 lets onnxruntime choose")
    _check_range("inter_op_threads", options.inter_op_threads, 0, limits.max_threads,
                 "0 lets onnxruntime choose")
    if options.graph_optimization not in GRAPH_OPT_LEVELS:
        raise InvalidArgument(f"graph_optimization must be one of {', '.join(GRAPH_OPT_LEVELS)} "
                              f"(got {options.graph_optimization!r})")
    if options.execution_mode not in EXECUTION_MODES:
        raise InvalidArgument(f"execution_mode must be one of {', '.join(EXECUTION_MODES)} "
                              f"(got {options.execution_mode!r})")
    if len(options.providers) > MAX_PROVIDERS:
        raise InvalidArgument(f"at most {MAX_PROVIDERS} execution providers may be requested "
                              f"(got {len(options.providers)})")
    for provider in options.providers:
        if not isinstance(provider, str) or not provider or len(provider) > 128:
            raise InvalidArgument(f"provider names must be non-empty strings such as "
                                  f"'CPUExecutionProvider' (got {provider!r})")
    if len(options.input_shapes) > MAX_INPUT_SHAPES:
        raise InvalidArgument(f"at most {MAX_INPUT_SHAPES} input shapes may be given "
                              f"(got {len(options.input_shapes)})")
    for name, dims in options.input_shapes:
        if not dims:
            raise InvalidArgument(f"shape of input '{name}' is empty; pass --shape {name}=1x3x224x224")
        for dim in dims:
            if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= MAX_DIM:
                shown = format_dims(dims)
                raise InvalidArgument(
                    f"shape of input '{name}' ({shown}) has a dimension outside 1..{MAX_DIM}; "
                    f"every dimension must be a positive size such as --shape {name}=1x3x224x224")


def validate_benchmark(spec: BenchmarkSpec, limits: Limits) -> None:
    """Raise InvalidArgument unless ``spec`` (with wire zeros already resolved) is runnable."""
    check_sha256(spec.model_sha256, "model_sha256")
    if spec.dataset_sha256:
        check_sha256(spec.dataset_sha256, "dataset_sha256")
    _check_range("warmup", spec.warmup, 0, limits.max_warmup)
    iterations, duration = spec.iterations, spec.min_duration_s
    if isinstance(duration, (int, float)) and not isinstance(duration, bool) \
            and not math.isfinite(duration):
        raise InvalidArgument(f"min_duration_s must be a finite number of seconds (got {duration!r})")
    if (iterations and duration) or (not iterations and not duration):
        raise InvalidArgument(
            "set exactly one of iterations (a fixed count) or min_duration_s (run until that "
            f"much time has passed); got iterations={iterations!r}, min_duration_s={duration!r}")
    if iterations:
        _check_range("iterations", iterations, 1, limits.max_iterations)
        if not isinstance(iterations, int):
            raise InvalidArgument(f"iterations must be a whole number (got {iterations!r})")
        if spec.return_samples and iterations > limits.max_samples_returned:
            raise InvalidArgument(
                f"return_samples is limited to {limits.max_samples_returned} samples but "
                f"iterations is {iterations}; lower the count or drop --samples")
    else:
        if isinstance(duration, bool) or not isinstance(duration, (int, float)) or duration <= 0 \
                or duration > limits.max_duration_s:
            raise InvalidArgument(f"min_duration_s must be more than 0 and at most "
                                  f"{_num(limits.max_duration_s)} seconds (got {duration!r})")
    if isinstance(spec.seed, bool) or not isinstance(spec.seed, int) or not 0 <= spec.seed < 2 ** 64:
        raise InvalidArgument(f"seed must be an integer between 0 and 2**64-1 (got {spec.seed!r})")
    validate_thermal(spec.thermal)
    validate_session(spec.session, limits)


def validate_thermal(gate: Optional[ThermalGate]) -> None:
    """A thermal gate's limit (degrees C) and longest wait (seconds) must be sane numbers."""
    if gate is None:
        return
    for name, value, high in (("max_temp_c", gate.max_temp_c, MAX_TEMP_C),
                              ("max_wait_s", gate.max_wait_s, MAX_TEMP_WAIT_S)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value):
            raise InvalidArgument(f"thermal {name} must be a finite number (got {value!r})")
        _check_range(f"thermal {name}", value, 0, high)


def validate_compare(spec: CompareSpec, limits: Limits) -> None:
    """Raise InvalidArgument unless ``spec`` (with wire zeros already resolved) is runnable:
    two models, 1..MAX_ROUNDS rounds, each session as a benchmark's, and (with a dataset) the
    metrics an evaluation takes."""
    check_sha256(spec.model_a_sha256, "model_a_sha256")
    check_sha256(spec.model_b_sha256, "model_b_sha256")
    _check_range("rounds", spec.rounds, 1, MAX_ROUNDS)
    validate_benchmark(spec.benchmark(spec.model_a_sha256), limits)
    if spec.dataset_sha256:
        validate_evaluate(spec.evaluation(spec.model_a_sha256), limits)
    elif spec.metrics:
        raise InvalidArgument("metrics are evaluated on a dataset: set dataset_sha256 too")


def validate_evaluate(spec: EvaluateSpec, limits: Limits) -> None:
    """Raise InvalidArgument unless ``spec`` (with wire zeros already resolved) is runnable."""
    check_sha256(spec.model_sha256, "model_sha256")
    if not spec.dataset_sha256:
        raise InvalidArgument("an evaluation needs a dataset: upload one with "
                              "`edgetune datasets upload` and pass its sha256")
    check_sha256(spec.dataset_sha256, "dataset_sha256")
    _check_range("batch_size", spec.batch_size, 1, limits.max_batch_size)
    for metric in spec.metrics:
        if metric not in EVALUATE_METRICS:
            raise InvalidArgument(f"unknown metric {metric!r}; choose from "
                                  f"{', '.join(EVALUATE_METRICS)} (or none for all that apply)")
    _validate_detection(spec)
    _validate_dump(spec)
    validate_session(spec.session, limits)


def _validate_dump(spec: EvaluateSpec) -> None:
    """``dump_outputs``: at most MAX_DUMP_OUTPUTS distinct, non-empty names. Whether the
    model has them is checked when the job runs (its outputs are known then)."""
    names = spec.dump_outputs
    if len(names) > MAX_DUMP_OUTPUTS:
        raise InvalidArgument(f"at most {MAX_DUMP_OUTPUTS} outputs may be written to a job's "
                              f"output file (got {len(names)})")
    for name in names:
        if not isinstance(name, str) or not name or len(name) > MAX_OUTPUT_NAME:
            raise InvalidArgument(f"dump_outputs holds {str(name)[:80]!r}: output names are "
                                  f"1 to {MAX_OUTPUT_NAME} characters")
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise InvalidArgument(f"dump_outputs names {', '.join(map(repr, twice[:5]))} more "
                              "than once")


def _validate_detection(spec: EvaluateSpec) -> None:
    """``map`` needs a decoder; thresholds in [0, 1]; detection options only with ``map``."""
    from edgetune.device.detection import DECODERS
    if "map" in spec.metrics:
        if spec.decoder not in DECODERS:
            raise InvalidArgument(f"metric 'map' needs a decoder for the model's output, one of "
                                  f"{', '.join(DECODERS)} (got {spec.decoder!r})")
    elif spec.metrics and (spec.decoder or spec.conf or spec.iou):
        raise InvalidArgument("decoder, conf and iou apply to the metric 'map' only; ask for it")
    elif spec.decoder and spec.decoder not in DECODERS:
        raise InvalidArgument(f"unknown decoder {spec.decoder!r}; choose one of "
                              f"{', '.join(DECODERS)}")
    for name in ("conf", "iou"):
        value = getattr(spec, name)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and 0.0 <= value <= 1.0):
            raise InvalidArgument(f"{name} {value!r} is out of range: give a number in [0, 1]")
