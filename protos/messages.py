"""Plain dataclasses for what crosses the wire, with their protobuf conversions.

The servicer (device) and the client (host) convert at the edge with ``from_pb2``/``as_pb2``;
the store, the job queue, the runner and the CLI only ever see these dataclasses. Every
dataclass also converts to and from JSON-friendly dicts (``as_dict``/``from_dict``), which is
how the agent persists jobs in SQLite and how ``--json`` output is built.

Kept importable on Python 3.9 (boards): no ``X | Y`` at runtime, no 3.10+ modules.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple



class _GeneratedCode:
    """``agent_pb2``, imported on first use: a command that only reads dataclasses (the host's
    results commands) does not pay for protobuf's generated code."""

    def __getattr__(self, name: str) -> Any:
        from edgetune.protos import agent_pb2
        globals()["pb"] = agent_pb2
        return getattr(agent_pb2, name)


pb: Any = _GeneratedCode()

# gRPC metadata naming the edgetune version of the side that sends it: the host sends it on
# every call (older hosts send none), the agent on an INCOMPATIBLE_METADATA refusal. A
# compatible addition: no .proto change.
VERSION_METADATA = "x-edgetune-version"
INCOMPATIBLE_METADATA = "x-edgetune-incompatible"


class UnknownToThisVersion(ValueError):
    """A message holds what this version of edgetune does not know: an enum value, a job
    kind or a job result that a newer (or other) peer added. ``what`` names it; the edges
    (servicer, client) turn it into an error naming both versions and what to upgrade."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what}, unknown to this version of edgetune")
        self.what = what


def has_unknown_fields(msg: Any) -> bool:
    """Whether ``msg`` (or a message inside it) carries fields this version's schema lacks."""
    known = type(msg)()
    known.CopyFrom(msg)
    known.DiscardUnknownFields()
    return known.ByteSize() != msg.ByteSize()


def _enum_name(enum_type: Any, value: int, what: str) -> str:
    try:
        return enum_type.Name(value)
    except ValueError:
        raise UnknownToThisVersion(f"{what} {value}") from None


class BlobKind(str, enum.Enum):
    MODEL = "model"
    DATASET = "dataset"

    def as_pb2(self) -> int:
        return {BlobKind.MODEL: pb.BLOB_KIND_MODEL, BlobKind.DATASET: pb.BLOB_KIND_DATASET}[self]

    @classmethod
    def from_pb2(cls, value: int) -> Optional["BlobKind"]:
        return {pb.BLOB_KIND_MODEL: cls.MODEL, pb.BLOB_KIND_DATASET: cls.DATASET}.get(value)


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"

    @property
    def finished(self) -> bool:
        return self not in (JobState.QUEUED, JobState.RUNNING)

    def as_pb2(self) -> int:
        return pb.JobState.Value("JOB_STATE_" + self.name)

    @classmethod
    def from_pb2(cls, value: int) -> "JobState":
        name = _enum_name(pb.JobState, value, "job state")
        if name == "JOB_STATE_UNSPECIFIED":
            raise ValueError("job state is unspecified")
        return cls[name[len("JOB_STATE_"):]]


GRAPH_OPT_LEVELS = ("disable", "basic", "extended", "all")
EXECUTION_MODES = ("sequential", "parallel")


@dataclass(frozen=True)
class SessionOptions:
    providers: Tuple[str, ...] = ()                 # empty: CPUExecutionProvider
    intra_op_threads: int = 0                       # 0: onnxruntime's default
    inter_op_threads: int = 0
    graph_optimization: str = "all"                 # one of GRAPH_OPT_LEVELS
    execution_mode: str = "sequential"              # one of EXECUTION_MODES
    input_shapes: Tuple[Tuple[str, Tuple[int, ...]], ...] = ()  # sorted (name, dims) pairs
    # sorted (provider, sorted (key, value) pairs): each provider's options for onnxruntime
    provider_options: Tuple[Tuple[str, Tuple[Tuple[str, str], ...]], ...] = ()

    def shapes(self) -> Dict[str, Tuple[int, ...]]:
        return dict(self.input_shapes)

    def options_of(self) -> Dict[str, Dict[str, str]]:
        """{provider: {key: value}} as onnxruntime takes them."""
        return {ep: dict(opts) for ep, opts in self.provider_options}

    def as_pb2(self) -> pb.SessionOptions:
        msg = pb.SessionOptions(
            providers=list(self.providers),
            intra_op_threads=self.intra_op_threads,
            inter_op_threads=self.inter_op_threads,
            graph_optimization=pb.GraphOptimizationLevel.Value(
                "GRAPH_OPT_" + self.graph_optimization.upper()),
            execution_mode=pb.ExecutionMode.Value(
                "EXECUTION_MODE_" + self.execution_mode.upper()),
        )
        for name, dims in self.input_shapes:
            msg.input_shapes[name].dims.extend(dims)
        for provider, opts in self.provider_options:
            msg.provider_options[provider].options.update(dict(opts))
        return msg

    @classmethod
    def from_pb2(cls, msg: pb.SessionOptions) -> "SessionOptions":
        opt = _enum_name(pb.GraphOptimizationLevel, msg.graph_optimization,
                         "graph optimization level")[len("GRAPH_OPT_"):].lower()
        mode = _enum_name(pb.ExecutionMode, msg.execution_mode,
                          "execution mode")[len("EXECUTION_MODE_"):].lower()
        return cls(
            providers=tuple(msg.providers),
            intra_op_threads=msg.intra_op_threads,
            inter_op_threads=msg.inter_op_threads,
            graph_optimization="all" if opt == "unspecified" else opt,
            execution_mode="sequential" if mode == "unspecified" else mode,
            input_shapes=tuple(sorted((k, tuple(v.dims)) for k, v in msg.input_shapes.items())),
            provider_options=tuple(sorted((k, tuple(sorted(v.options.items())))
                                          for k, v in msg.provider_options.items())),
        )

    def as_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["providers"] = list(self.providers)
        d["input_shapes"] = {k: list(v) for k, v in self.input_shapes}
        if self.provider_options:       # only when given: records made before it look the same
            d["provider_options"] = self.options_of()
        else:
            del d["provider_options"]
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "SessionOptions":
        d = dict(d)
        d["providers"] = tuple(d.get("providers", ()))
        d["input_shapes"] = tuple(sorted((k, tuple(v)) for k, v in d.get("input_shapes", {}).items()))
        d["provider_options"] = tuple(sorted((k, tuple(sorted(v.items())))
                                             for k, v in d.get("provider_options", {}).items()))
        return cls(**d)


@dataclass(frozen=True)
class ThermalGate:
    """Wait before each measured session until the hottest thermal zone is below
    ``max_temp_c``, for at most ``max_wait_s`` (0: the agent's default)."""

    max_temp_c: float = 0.0                         # 0: no gating
    max_wait_s: float = 0.0

    def as_pb2(self) -> pb.ThermalGate:
        return pb.ThermalGate(max_temp_c=self.max_temp_c, max_wait_s=self.max_wait_s)

    @classmethod
    def from_pb2(cls, msg: pb.ThermalGate) -> Optional["ThermalGate"]:
        """None when no limit is set (the wire's zero message)."""
        return cls(msg.max_temp_c, msg.max_wait_s) if msg.max_temp_c else None

    def as_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Optional[Dict[str, Any]]) -> Optional["ThermalGate"]:
        return cls(**d) if d else None


@dataclass(frozen=True)
class ThermalReport:
    """What thermal gating did before one measured session."""

    max_temp_c: float
    no_sensor: bool = False                         # no thermal zone: nothing was waited
    waited_s: float = 0.0
    start_temp_c: float = 0.0                       # the hottest zone when the session started

    def as_pb2(self) -> pb.ThermalReport:
        return pb.ThermalReport(**dataclasses.asdict(self))

    @classmethod
    def from_pb2(cls, msg: pb.ThermalReport) -> "ThermalReport":
        return cls(**{f.name: getattr(msg, f.name) for f in dataclasses.fields(cls)})

    def as_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Optional[Dict[str, Any]]) -> Optional["ThermalReport"]:
        return cls(**d) if d else None


@dataclass(frozen=True)
class BenchmarkSpec:
    model_sha256: str
    session: SessionOptions = field(default_factory=SessionOptions)
    warmup: int = 10
    iterations: int = 100                           # 0 when min_duration_s bounds the run
    min_duration_s: float = 0.0
    seed: int = 0
    dataset_sha256: str = ""
    return_samples: bool = False
    # set by the agent: sorted (input, the model's name for its free batch dimension) pairs
    # of the inputs it ran with batch 1 because no shape was given ("" when unnamed)
    free_batch_dims: Tuple[Tuple[str, str], ...] = ()
    thermal: Optional[ThermalGate] = None
    profile: bool = False                           # also a profiled session (OperatorProfile)
    runner: str = ""                                # a board's runner plug-in; "": onnxruntime

    def as_pb2(self) -> pb.BenchmarkSpec:
        msg = pb.BenchmarkSpec(
            model_sha256=self.model_sha256, session=self.session.as_pb2(), warmup=self.warmup,
            iterations=self.iterations, min_duration_s=self.min_duration_s, seed=self.seed,
            dataset_sha256=self.dataset_sha256, return_samples=self.return_samples,
            free_batch_dims=dict(self.free_batch_dims), profile=self.profile,
            runner=self.runner)
        if self.thermal is not None:
            msg.thermal.CopyFrom(self.thermal.as_pb2())
        return msg

    @classmethod
    def from_pb2(cls, msg: pb.BenchmarkSpec) -> "BenchmarkSpec":
        """Raw wire values; the agent validates ranges (device.limits) before queueing."""
        return cls(
            model_sha256=msg.model_sha256, session=SessionOptions.from_pb2(msg.session),
            warmup=msg.warmup, iterations=msg.iterations, min_duration_s=msg.min_duration_s,
            seed=msg.seed, dataset_sha256=msg.dataset_sha256, return_samples=msg.return_samples,
            free_batch_dims=tuple(sorted(msg.free_batch_dims.items())),
            thermal=ThermalGate.from_pb2(msg.thermal), profile=msg.profile, runner=msg.runner)

    def as_dict(self) -> Dict[str, Any]:
        """Plain JSON types; ``free_batch_dims`` ({input: dimension name}), ``thermal`` and
        ``profile`` only when set."""
        d = dataclasses.asdict(self)
        d["session"] = self.session.as_dict()
        if not self.profile:
            del d["profile"]
        if not self.runner:
            del d["runner"]
        if self.free_batch_dims:
            d["free_batch_dims"] = dict(self.free_batch_dims)
        else:
            del d["free_batch_dims"]
        if self.thermal is None:
            del d["thermal"]
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "BenchmarkSpec":
        d = dict(d)
        d["session"] = SessionOptions.from_dict(d.get("session", {}))
        d["free_batch_dims"] = tuple(sorted(d.get("free_batch_dims", {}).items()))
        d["thermal"] = ThermalGate.from_dict(d.get("thermal"))
        return cls(**d)


@dataclass(frozen=True)
class EvaluateSpec:
    model_sha256: str
    dataset_sha256: str
    session: SessionOptions = field(default_factory=SessionOptions)
    metrics: Tuple[str, ...] = ()                   # top1, top5, fidelity, miou, map; empty:
                                                    # all that apply (map only when asked)
    batch_size: int = 1
    decoder: str = ""                               # map: "yolov5" or "boxes"
    conf: float = 0.0                               # map: score threshold (0: the default)
    iou: float = 0.0                                # map: NMS IoU threshold (0: the default)
    runner: str = ""                                # a board's runner plug-in; "": onnxruntime
    dump_outputs: Tuple[str, ...] = ()              # outputs written to the job's output file

    def as_pb2(self) -> pb.EvaluateSpec:
        return pb.EvaluateSpec(
            model_sha256=self.model_sha256, dataset_sha256=self.dataset_sha256,
            session=self.session.as_pb2(), metrics=list(self.metrics), batch_size=self.batch_size,
            decoder=self.decoder, conf=self.conf, iou=self.iou, runner=self.runner,
            dump_outputs=list(self.dump_outputs))

    @classmethod
    def from_pb2(cls, msg: pb.EvaluateSpec) -> "EvaluateSpec":
        return cls(
            model_sha256=msg.model_sha256, dataset_sha256=msg.dataset_sha256,
            session=SessionOptions.from_pb2(msg.session), metrics=tuple(msg.metrics),
            batch_size=msg.batch_size, decoder=msg.decoder, conf=msg.conf, iou=msg.iou,
            runner=msg.runner, dump_outputs=tuple(msg.dump_outputs))

    def as_dict(self) -> Dict[str, Any]:
        """Plain JSON types; ``runner`` and ``dump_outputs`` only when set."""
        d = dataclasses.asdict(self)
        d["session"] = self.session.as_dict()
        d["metrics"] = list(self.metrics)
        d["dump_outputs"] = list(self.dump_outputs)
        for key in ("runner", "dump_outputs"):
            if not d[key]:
                del d[key]
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "EvaluateSpec":
        d = dict(d)
        d["session"] = SessionOptions.from_dict(d.get("session", {}))
        d["metrics"] = tuple(d.get("metrics", ()))
        d["dump_outputs"] = tuple(d.get("dump_outputs", ()))
        return cls(**d)


@dataclass(frozen=True)
class LatencyStats:
    min_ms: float
    mean_ms: float
    std_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float

    def as_pb2(self) -> pb.LatencyStats:
        return pb.LatencyStats(**dataclasses.asdict(self))

    @classmethod
    def from_pb2(cls, msg: pb.LatencyStats) -> "LatencyStats":
        return cls(**{f.name: getattr(msg, f.name) for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class NodeTime:
    name: str
    op_type: str
    provider: str
    calls: int
    total_ms: float
    mean_ms: float

    def as_pb2(self) -> pb.NodeTime:
        return pb.NodeTime(**dataclasses.asdict(self))

    @classmethod
    def from_pb2(cls, msg: pb.NodeTime) -> "NodeTime":
        return cls(**{f.name: getattr(msg, f.name) for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class OperatorProfile:
    """Per-node times from onnxruntime's profiler over a profiled session's timed runs."""

    nodes: Tuple[NodeTime, ...]                     # slowest first
    iterations: int
    profiled_p50_ms: float

    def as_pb2(self) -> pb.OperatorProfile:
        return pb.OperatorProfile(nodes=[n.as_pb2() for n in self.nodes],
                                  iterations=self.iterations,
                                  profiled_p50_ms=self.profiled_p50_ms)

    @classmethod
    def from_pb2(cls, msg: pb.OperatorProfile) -> "OperatorProfile":
        return cls(nodes=tuple(NodeTime.from_pb2(n) for n in msg.nodes),
                   iterations=msg.iterations, profiled_p50_ms=msg.profiled_p50_ms)

    def as_dict(self) -> Dict[str, Any]:
        return {"nodes": [dataclasses.asdict(n) for n in self.nodes],
                "iterations": self.iterations, "profiled_p50_ms": self.profiled_p50_ms}

    @classmethod
    def from_dict(cls, d: Optional[Dict[str, Any]]) -> Optional["OperatorProfile"]:
        if not d:
            return None
        return cls(nodes=tuple(NodeTime(**n) for n in d.get("nodes", ())),
                   iterations=d.get("iterations", 0),
                   profiled_p50_ms=d.get("profiled_p50_ms", 0.0))


@dataclass(frozen=True)
class BenchmarkResult:
    latency: LatencyStats
    throughput_ips: float
    load_ms: float
    first_run_ms: float
    peak_rss_mb: float
    iterations: int
    warmup: int
    measured_s: float
    samples_ms: Tuple[float, ...] = ()
    cpu_freq_mhz: float = 0.0                       # 0: not exposed by the board
    temperature_c: float = 0.0                      # 0: not exposed by the board
    providers: Tuple[str, ...] = ()
    thermal: Optional[ThermalReport] = None         # set when thermal gating was asked
    load_avg: Tuple[float, ...] = ()                # 1, 5, 15 min load at the end; (): unknown
    provider_nodes: Tuple[Tuple[str, int], ...] = ()  # sorted (provider, nodes it ran); (): unknown
    profile: Optional[OperatorProfile] = None        # set when the spec asked for it

    def as_pb2(self) -> pb.BenchmarkResult:
        msg = pb.BenchmarkResult(
            latency=self.latency.as_pb2(), throughput_ips=self.throughput_ips,
            load_ms=self.load_ms, first_run_ms=self.first_run_ms, peak_rss_mb=self.peak_rss_mb,
            iterations=self.iterations, warmup=self.warmup, samples_ms=list(self.samples_ms),
            cpu_freq_mhz=self.cpu_freq_mhz, temperature_c=self.temperature_c,
            providers=list(self.providers), measured_s=self.measured_s,
            load_avg=list(self.load_avg), provider_nodes=dict(self.provider_nodes))
        if self.thermal is not None:
            msg.thermal.CopyFrom(self.thermal.as_pb2())
        if self.profile is not None:
            msg.profile.CopyFrom(self.profile.as_pb2())
        return msg

    @classmethod
    def from_pb2(cls, msg: pb.BenchmarkResult) -> "BenchmarkResult":
        return cls(
            latency=LatencyStats.from_pb2(msg.latency), throughput_ips=msg.throughput_ips,
            load_ms=msg.load_ms, first_run_ms=msg.first_run_ms, peak_rss_mb=msg.peak_rss_mb,
            iterations=msg.iterations, warmup=msg.warmup, measured_s=msg.measured_s,
            samples_ms=tuple(msg.samples_ms), cpu_freq_mhz=msg.cpu_freq_mhz,
            temperature_c=msg.temperature_c, providers=tuple(msg.providers),
            thermal=ThermalReport.from_pb2(msg.thermal) if msg.HasField("thermal") else None,
            load_avg=tuple(msg.load_avg),
            provider_nodes=tuple(sorted(msg.provider_nodes.items())),
            profile=OperatorProfile.from_pb2(msg.profile) if msg.HasField("profile") else None)

    def as_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["samples_ms"] = list(self.samples_ms)
        d["providers"] = list(self.providers)
        if self.thermal is None:
            del d["thermal"]
        if self.load_avg:
            d["load_avg"] = list(self.load_avg)
        else:                  # as jobs recorded before the field existed: nothing
            del d["load_avg"]
        if self.provider_nodes:
            d["provider_nodes"] = dict(self.provider_nodes)
        else:
            del d["provider_nodes"]
        if self.profile is not None:
            d["profile"] = self.profile.as_dict()
        else:
            del d["profile"]
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "BenchmarkResult":
        d = dict(d)
        d["latency"] = LatencyStats(**d["latency"])
        d["samples_ms"] = tuple(d.get("samples_ms", ()))
        d["providers"] = tuple(d.get("providers", ()))
        d["thermal"] = ThermalReport.from_dict(d.get("thermal"))
        d["load_avg"] = tuple(d.get("load_avg", ()))
        d["provider_nodes"] = tuple(sorted(d.get("provider_nodes", {}).items()))
        d["profile"] = OperatorProfile.from_dict(d.get("profile"))
        return cls(**d)


@dataclass(frozen=True)
class EvaluateResult:
    samples: int
    metrics: Tuple[Tuple[str, float], ...]          # sorted (name, value) pairs
    load_ms: float = 0.0
    elapsed_s: float = 0.0
    providers: Tuple[str, ...] = ()                  # (): not said (an older agent)
    provider_nodes: Tuple[Tuple[str, int], ...] = ()  # as BenchmarkResult's
    output_bytes: int = 0                            # the job's output file (dump_outputs)

    def metric_dict(self) -> Dict[str, float]:
        return dict(self.metrics)

    def as_pb2(self) -> pb.EvaluateResult:
        return pb.EvaluateResult(samples=self.samples, metrics=dict(self.metrics),
                                 load_ms=self.load_ms, elapsed_s=self.elapsed_s,
                                 providers=list(self.providers),
                                 provider_nodes=dict(self.provider_nodes),
                                 output_bytes=self.output_bytes)

    @classmethod
    def from_pb2(cls, msg: pb.EvaluateResult) -> "EvaluateResult":
        return cls(samples=msg.samples, metrics=tuple(sorted(msg.metrics.items())),
                   load_ms=msg.load_ms, elapsed_s=msg.elapsed_s, providers=tuple(msg.providers),
                   provider_nodes=tuple(sorted(msg.provider_nodes.items())),
                   output_bytes=msg.output_bytes)

    def as_dict(self) -> Dict[str, Any]:
        d = {"samples": self.samples, "metrics": dict(self.metrics),
             "load_ms": self.load_ms, "elapsed_s": self.elapsed_s}
        if self.providers:             # only when said: records made before look the same
            d["providers"] = list(self.providers)
        if self.provider_nodes:
            d["provider_nodes"] = dict(self.provider_nodes)
        if self.output_bytes:
            d["output_bytes"] = self.output_bytes
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "EvaluateResult":
        return cls(samples=d["samples"], metrics=tuple(sorted(d["metrics"].items())),
                   load_ms=d.get("load_ms", 0.0), elapsed_s=d.get("elapsed_s", 0.0),
                   providers=tuple(d.get("providers", ())),
                   provider_nodes=tuple(sorted(d.get("provider_nodes", {}).items())),
                   output_bytes=int(d.get("output_bytes", 0)))


@dataclass(frozen=True)
class SignedResult:
    """A finished job's signature by the agent (``edgetune.certs.signing``): ``payload`` is the
    exact bytes signed, ``agent_cert_pem`` the certificate whose key signed them."""

    payload: bytes
    signature: bytes
    algorithm: str
    agent_cert_pem: str

    def as_pb2(self) -> pb.SignedResult:
        return pb.SignedResult(payload=self.payload, signature=self.signature,
                               algorithm=self.algorithm, agent_cert_pem=self.agent_cert_pem)

    @classmethod
    def from_pb2(cls, msg: pb.SignedResult) -> "SignedResult":
        return cls(payload=bytes(msg.payload), signature=bytes(msg.signature),
                   algorithm=msg.algorithm, agent_cert_pem=msg.agent_cert_pem)

    def as_dict(self) -> Dict[str, Any]:
        """Bytes as base64."""
        return {"payload": base64.b64encode(self.payload).decode("ascii"),
                "signature": base64.b64encode(self.signature).decode("ascii"),
                "algorithm": self.algorithm, "agent_cert_pem": self.agent_cert_pem}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "SignedResult":
        return cls(payload=base64.b64decode(d["payload"]),
                   signature=base64.b64decode(d["signature"]), algorithm=d["algorithm"],
                   agent_cert_pem=d["agent_cert_pem"])


@dataclass(frozen=True)
class Job:
    id: str
    state: JobState
    spec: Any                                       # BenchmarkSpec | EvaluateSpec | CompareSpec
    label: str = ""
    created_unix: float = 0.0
    started_unix: float = 0.0
    finished_unix: float = 0.0
    error: str = ""
    client: str = ""
    result: Any = None                              # the spec kind's result, or None
    signed: Optional[SignedResult] = None           # the agent's signature of a succeeded job

    @property
    def kind(self) -> str:
        return next(k for k, (spec, _) in JOB_KINDS.items() if isinstance(self.spec, spec))

    def as_pb2(self) -> pb.Job:
        spec = pb.JobSpec(label=self.label)
        getattr(spec, self.kind).CopyFrom(self.spec.as_pb2())
        msg = pb.Job(id=self.id, state=self.state.as_pb2(), spec=spec,
                     created_unix=self.created_unix, started_unix=self.started_unix,
                     finished_unix=self.finished_unix, error=self.error, client=self.client)
        if isinstance(self.result, JOB_KINDS[self.kind][1]):
            getattr(msg, self.kind).CopyFrom(self.result.as_pb2())
        if self.signed is not None:
            msg.signed.CopyFrom(self.signed.as_pb2())
        return msg

    @classmethod
    def from_pb2(cls, msg: pb.Job) -> "Job":
        spec = job_spec_from_pb2(msg.spec)
        which = msg.WhichOneof("result")
        result: Any = None
        if which in JOB_KINDS:
            result = JOB_KINDS[which][1].from_pb2(getattr(msg, which))
        elif msg.state == pb.JOB_STATE_SUCCEEDED and has_unknown_fields(msg):
            raise UnknownToThisVersion(f"a job result of a new kind (job {msg.id})")
        return cls(id=msg.id, state=JobState.from_pb2(msg.state), spec=spec, label=msg.spec.label,
                   created_unix=msg.created_unix, started_unix=msg.started_unix,
                   finished_unix=msg.finished_unix, error=msg.error, client=msg.client,
                   result=result,
                   signed=SignedResult.from_pb2(msg.signed) if msg.HasField("signed") else None)

    def as_dict(self) -> Dict[str, Any]:
        return {
            "id": self.id, "kind": self.kind, "state": self.state.value, "label": self.label,
            "spec": self.spec.as_dict(), "created_unix": self.created_unix,
            "started_unix": self.started_unix, "finished_unix": self.finished_unix,
            "error": self.error, "client": self.client,
            "result": None if self.result is None else self.result.as_dict(),
            "signed": None if self.signed is None else self.signed.as_dict(),
        }

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Job":
        spec_type, result_type = JOB_KINDS[d["kind"]]
        spec = spec_type.from_dict(d["spec"])
        result = None
        if d.get("result") is not None:
            result = result_type.from_dict(d["result"])
        return cls(id=d["id"], state=JobState(d["state"]), spec=spec, label=d.get("label", ""),
                   created_unix=d.get("created_unix", 0.0), started_unix=d.get("started_unix", 0.0),
                   finished_unix=d.get("finished_unix", 0.0), error=d.get("error", ""),
                   client=d.get("client", ""), result=result,
                   signed=SignedResult.from_dict(d["signed"]) if d.get("signed") else None)


def job_spec_from_pb2(msg: pb.JobSpec) -> Any:
    """BenchmarkSpec, EvaluateSpec or CompareSpec; ValueError when the oneof is empty,
    UnknownToThisVersion when it holds a kind of job this version does not know."""
    which = msg.WhichOneof("kind")
    if which in JOB_KINDS:
        return JOB_KINDS[which][0].from_pb2(getattr(msg, which))
    if has_unknown_fields(msg):
        raise UnknownToThisVersion("a new kind of job")
    raise ValueError("job spec names neither a benchmark nor an evaluation")


@dataclass(frozen=True)
class Progress:
    done: int = 0
    total: int = 0
    phase: str = ""
    message: str = ""

    def as_pb2(self) -> pb.Progress:
        return pb.Progress(done=self.done, total=self.total, phase=self.phase, message=self.message)

    @classmethod
    def from_pb2(cls, msg: pb.Progress) -> "Progress":
        return cls(done=msg.done, total=msg.total, phase=msg.phase, message=msg.message)


@dataclass(frozen=True)
class JobEvent:
    job_id: str
    state: JobState
    queue_position: int = 0
    progress: Optional[Progress] = None
    job: Optional[Job] = None                       # set on the first and the final event

    def as_pb2(self) -> pb.JobEvent:
        msg = pb.JobEvent(job_id=self.job_id, state=self.state.as_pb2(),
                          queue_position=self.queue_position)
        if self.progress is not None:
            msg.progress.CopyFrom(self.progress.as_pb2())
        if self.job is not None:
            msg.job.CopyFrom(self.job.as_pb2())
        return msg

    @classmethod
    def from_pb2(cls, msg: pb.JobEvent) -> "JobEvent":
        return cls(job_id=msg.job_id, state=JobState.from_pb2(msg.state),
                   queue_position=msg.queue_position,
                   progress=Progress.from_pb2(msg.progress) if msg.HasField("progress") else None,
                   job=Job.from_pb2(msg.job) if msg.HasField("job") else None)


@dataclass(frozen=True)
class OutputChunk:
    """One piece of a job's output file (``ReadJobOutput``): ``data`` starts at ``offset``
    of a file of ``total_bytes``."""

    offset: int
    data: bytes
    total_bytes: int

    def as_pb2(self) -> pb.JobOutputChunk:
        return pb.JobOutputChunk(offset=self.offset, data=self.data, total_bytes=self.total_bytes)

    @classmethod
    def from_pb2(cls, msg: pb.JobOutputChunk) -> "OutputChunk":
        return cls(offset=msg.offset, data=msg.data, total_bytes=msg.total_bytes)


@dataclass(frozen=True)
class BlobInfo:
    kind: BlobKind
    sha256: str
    size_bytes: int
    name: str = ""
    created_unix: float = 0.0
    format: str = ""                                # models: "onnx" or an opaque format ("om")

    def as_pb2(self) -> pb.BlobInfo:
        return pb.BlobInfo(kind=self.kind.as_pb2(), sha256=self.sha256, size_bytes=self.size_bytes,
                           name=self.name, created_unix=self.created_unix, format=self.format)

    @classmethod
    def from_pb2(cls, msg: pb.BlobInfo) -> "BlobInfo":
        kind = BlobKind.from_pb2(msg.kind)
        if kind is None and msg.kind != pb.BLOB_KIND_UNSPECIFIED:
            raise UnknownToThisVersion(f"blob kind {msg.kind}")
        if kind is None:
            raise ValueError("blob kind is unspecified")
        return cls(kind=kind, sha256=msg.sha256, size_bytes=msg.size_bytes, name=msg.name,
                   created_unix=msg.created_unix,
                   format=msg.format or ("onnx" if kind is BlobKind.MODEL else ""))

    def as_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["kind"] = self.kind.value
        return d


# What an agent understands beyond 0.1.0's wire (GetInfoResponse.features): a host sends a
# field an older agent would silently ignore only to an agent that names it here.
FEATURES = ("provider_options", "provider_nodes", "unknown_fields_refused", "profile",
            "detection",                            # EvaluateSpec decoder/conf/iou, "map"
            "runners",                              # runner plug-ins, UploadHeader.format
            "job_output")                           # EvaluateSpec.dump_outputs, ReadJobOutput


@dataclass(frozen=True)
class RunnerInfo:
    """A runner plug-in the board registers (agent.toml ``[runners.NAME]``)."""

    name: str
    formats: Tuple[str, ...] = ()
    can_profile: bool = False

    def as_pb2(self) -> pb.RunnerInfo:
        return pb.RunnerInfo(name=self.name, formats=list(self.formats),
                             can_profile=self.can_profile)

    @classmethod
    def from_pb2(cls, msg: pb.RunnerInfo) -> "RunnerInfo":
        return cls(name=msg.name, formats=tuple(msg.formats), can_profile=msg.can_profile)

    def as_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "formats": list(self.formats), "can_profile": self.can_profile}


@dataclass(frozen=True)
class ProviderCheck:
    """Whether one execution provider really creates a session on this board."""

    provider: str
    usable: bool
    error: str = ""

    def as_pb2(self) -> pb.ProviderCheck:
        return pb.ProviderCheck(provider=self.provider, usable=self.usable, error=self.error)

    @classmethod
    def from_pb2(cls, msg: pb.ProviderCheck) -> "ProviderCheck":
        return cls(provider=msg.provider, usable=msg.usable, error=msg.error)

    def as_dict(self) -> Dict[str, Any]:
        return {"provider": self.provider, "usable": self.usable, "error": self.error}


@dataclass(frozen=True)
class AgentInfo:
    hostname: str
    os: str
    arch: str
    cpu_model: str
    cpu_cores: int
    memory_total_bytes: int
    memory_available_bytes: int
    python_version: str
    onnxruntime_version: str
    available_providers: Tuple[str, ...]
    agent_version: str
    store_used_bytes: int
    store_models: int
    store_datasets: int
    queue_length: int
    queue_capacity: int
    running_job_id: str
    uptime_s: float
    agent_name: str = ""
    caller_name: str = ""
    agent_cert_not_after_unix: float = 0.0          # 0: an agent that does not say
    lease_holder: str = ""                          # who holds the board's lease; "": free
    lease_expires_unix: float = 0.0                 # when that lease ends unless renewed
    features: Tuple[str, ...] = ()                  # see FEATURES; (): an agent of 0.1.0's wire
    onnxruntime_distribution: str = ""              # e.g. onnxruntime, onnxruntime-cann
    onnxruntime_build_info: str = ""
    provider_checks: Tuple[ProviderCheck, ...] = ()  # (): not checked (yet, or an older agent)
    runners: Tuple[RunnerInfo, ...] = ()            # the board's runner plug-ins
    max_job_output_bytes: int = 0                   # [limits] of the board; 0: not said

    def as_pb2(self) -> pb.GetInfoResponse:
        d = dataclasses.asdict(self)
        d["available_providers"] = list(self.available_providers)
        d["features"] = list(self.features)
        d["provider_checks"] = [c.as_pb2() for c in self.provider_checks]
        d["runners"] = [r.as_pb2() for r in self.runners]
        return pb.GetInfoResponse(**d)

    @classmethod
    def from_pb2(cls, msg: pb.GetInfoResponse) -> "AgentInfo":
        d = {f.name: getattr(msg, f.name) for f in dataclasses.fields(cls)}
        d["available_providers"] = tuple(d["available_providers"])
        d["features"] = tuple(d["features"])
        d["provider_checks"] = tuple(ProviderCheck.from_pb2(c) for c in msg.provider_checks)
        d["runners"] = tuple(RunnerInfo.from_pb2(r) for r in msg.runners)
        return cls(**d)

    def as_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["available_providers"] = list(self.available_providers)
        d["features"] = list(self.features)
        d["provider_checks"] = [c.as_dict() for c in self.provider_checks]
        d["runners"] = [r.as_dict() for r in self.runners]
        return d

    def has(self, feature: str) -> bool:
        return feature in self.features


# ---------------------------------------------------------------- comparisons

@dataclass(frozen=True)
class CompareSpec:
    """An interleaved A/B comparison run as one job: ``rounds`` rounds, A then B in even
    rounds and B then A in odd ones (A B B A A B ...), each session fresh and of the same
    length (``iterations`` or ``min_duration_s``) for both, on the same inputs; then, with a
    dataset, an evaluation of both."""

    model_a_sha256: str
    model_b_sha256: str
    session: SessionOptions = field(default_factory=SessionOptions)
    rounds: int = 5
    warmup: int = 10
    iterations: int = 100                           # per session; 0 when min_duration_s is set
    min_duration_s: float = 0.0
    seed: int = 0
    return_samples: bool = False
    dataset_sha256: str = ""
    metrics: Tuple[str, ...] = ()
    thermal: Optional[ThermalGate] = None
    free_batch_dims: Tuple[Tuple[str, str], ...] = ()   # set by the agent (BenchmarkSpec's)

    @property
    def model_sha256(self) -> str:
        """Model A, the baseline: how listings name the job."""
        return self.model_a_sha256

    @property
    def models(self) -> Tuple[str, str]:
        return (self.model_a_sha256, self.model_b_sha256)

    def benchmark(self, model_sha256: str) -> BenchmarkSpec:
        """One measured session of ``model_sha256`` as this comparison runs it."""
        return BenchmarkSpec(
            model_sha256=model_sha256, session=self.session, warmup=self.warmup,
            iterations=self.iterations, min_duration_s=self.min_duration_s, seed=self.seed,
            return_samples=self.return_samples, free_batch_dims=self.free_batch_dims,
            thermal=self.thermal)

    def evaluation(self, model_sha256: str) -> EvaluateSpec:
        return EvaluateSpec(model_sha256=model_sha256, dataset_sha256=self.dataset_sha256,
                            session=self.session, metrics=self.metrics, batch_size=1)

    def as_pb2(self) -> pb.CompareSpec:
        msg = pb.CompareSpec(
            model_a_sha256=self.model_a_sha256, model_b_sha256=self.model_b_sha256,
            session=self.session.as_pb2(), rounds=self.rounds, warmup=self.warmup,
            iterations=self.iterations, min_duration_s=self.min_duration_s, seed=self.seed,
            return_samples=self.return_samples, dataset_sha256=self.dataset_sha256,
            metrics=list(self.metrics), free_batch_dims=dict(self.free_batch_dims))
        if self.thermal is not None:
            msg.thermal.CopyFrom(self.thermal.as_pb2())
        return msg

    @classmethod
    def from_pb2(cls, msg: pb.CompareSpec) -> "CompareSpec":
        """Raw wire values; the agent fills in defaults and validates (device.limits)."""
        return cls(
            model_a_sha256=msg.model_a_sha256, model_b_sha256=msg.model_b_sha256,
            session=SessionOptions.from_pb2(msg.session), rounds=msg.rounds, warmup=msg.warmup,
            iterations=msg.iterations, min_duration_s=msg.min_duration_s, seed=msg.seed,
            return_samples=msg.return_samples, dataset_sha256=msg.dataset_sha256,
            metrics=tuple(msg.metrics), thermal=ThermalGate.from_pb2(msg.thermal),
            free_batch_dims=tuple(sorted(msg.free_batch_dims.items())))

    def as_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["session"] = self.session.as_dict()
        d["metrics"] = list(self.metrics)
        d["free_batch_dims"] = dict(self.free_batch_dims)
        d["thermal"] = None if self.thermal is None else self.thermal.as_dict()
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "CompareSpec":
        d = dict(d)
        d["session"] = SessionOptions.from_dict(d.get("session", {}))
        d["metrics"] = tuple(d.get("metrics", ()))
        d["free_batch_dims"] = tuple(sorted(d.get("free_batch_dims", {}).items()))
        d["thermal"] = ThermalGate.from_dict(d.get("thermal"))
        return cls(**d)


@dataclass(frozen=True)
class CompareRound:
    """One round: a fresh session of each model, ``b_first`` when B's ran first."""

    a: BenchmarkResult
    b: BenchmarkResult
    b_first: bool = False

    def as_pb2(self) -> pb.CompareRound:
        return pb.CompareRound(a=self.a.as_pb2(), b=self.b.as_pb2(), b_first=self.b_first)

    @classmethod
    def from_pb2(cls, msg: pb.CompareRound) -> "CompareRound":
        return cls(a=BenchmarkResult.from_pb2(msg.a), b=BenchmarkResult.from_pb2(msg.b),
                   b_first=msg.b_first)

    def as_dict(self) -> Dict[str, Any]:
        return {"a": self.a.as_dict(), "b": self.b.as_dict(), "b_first": self.b_first}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "CompareRound":
        return cls(a=BenchmarkResult.from_dict(d["a"]), b=BenchmarkResult.from_dict(d["b"]),
                   b_first=bool(d.get("b_first", False)))


@dataclass(frozen=True)
class CompareResult:
    rounds: Tuple[CompareRound, ...]
    evaluate_a: Optional[EvaluateResult] = None     # set when a dataset was given
    evaluate_b: Optional[EvaluateResult] = None
    peak_rss_mb: float = 0.0

    def as_pb2(self) -> pb.CompareResult:
        msg = pb.CompareResult(rounds=[r.as_pb2() for r in self.rounds],
                               peak_rss_mb=self.peak_rss_mb)
        if self.evaluate_a is not None:
            msg.evaluate_a.CopyFrom(self.evaluate_a.as_pb2())
        if self.evaluate_b is not None:
            msg.evaluate_b.CopyFrom(self.evaluate_b.as_pb2())
        return msg

    @classmethod
    def from_pb2(cls, msg: pb.CompareResult) -> "CompareResult":
        return cls(rounds=tuple(CompareRound.from_pb2(r) for r in msg.rounds),
                   evaluate_a=EvaluateResult.from_pb2(msg.evaluate_a)
                   if msg.HasField("evaluate_a") else None,
                   evaluate_b=EvaluateResult.from_pb2(msg.evaluate_b)
                   if msg.HasField("evaluate_b") else None,
                   peak_rss_mb=msg.peak_rss_mb)

    def as_dict(self) -> Dict[str, Any]:
        return {"rounds": [r.as_dict() for r in self.rounds],
                "evaluate_a": None if self.evaluate_a is None else self.evaluate_a.as_dict(),
                "evaluate_b": None if self.evaluate_b is None else self.evaluate_b.as_dict(),
                "peak_rss_mb": self.peak_rss_mb}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "CompareResult":
        def evaluation(doc: Any) -> Optional[EvaluateResult]:
            return EvaluateResult.from_dict(doc) if doc else None
        return cls(rounds=tuple(CompareRound.from_dict(r) for r in d.get("rounds", ())),
                   evaluate_a=evaluation(d.get("evaluate_a")),
                   evaluate_b=evaluation(d.get("evaluate_b")),
                   peak_rss_mb=d.get("peak_rss_mb", 0.0))


# Each kind of job: its JobSpec oneof name (the same name in Job's result oneof), its spec and
# its result dataclass.
JOB_KINDS: Dict[str, Tuple[Any, Any]] = {
    "benchmark": (BenchmarkSpec, BenchmarkResult),
    "evaluate": (EvaluateSpec, EvaluateResult),
    "compare": (CompareSpec, CompareResult),
}
