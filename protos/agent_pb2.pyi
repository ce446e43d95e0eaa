from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BlobKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BLOB_KIND_UNSPECIFIED: _ClassVar[BlobKind]
    BLOB_KIND_MODEL: _ClassVar[BlobKind]
    BLOB_KIND_DATASET: _ClassVar[BlobKind]

class UploadState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UPLOAD_STATE_UNSPECIFIED: _ClassVar[UploadState]
    UPLOAD_STATE_ABSENT: _ClassVar[UploadState]
    UPLOAD_STATE_PARTIAL: _ClassVar[UploadState]
    UPLOAD_STATE_COMPLETE: _ClassVar[UploadState]

class GraphOptimizationLevel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GRAPH_OPT_UNSPECIFIED: _ClassVar[GraphOptimizationLevel]
    GRAPH_OPT_DISABLE: _ClassVar[GraphOptimizationLevel]
    GRAPH_OPT_BASIC: _ClassVar[GraphOptimizationLevel]
    GRAPH_OPT_EXTENDED: _ClassVar[GraphOptimizationLevel]
    GRAPH_OPT_ALL: _ClassVar[GraphOptimizationLevel]

class ExecutionMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXECUTION_MODE_UNSPECIFIED: _ClassVar[ExecutionMode]
    EXECUTION_MODE_SEQUENTIAL: _ClassVar[ExecutionMode]
    EXECUTION_MODE_PARALLEL: _ClassVar[ExecutionMode]

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]
    JOB_STATE_INTERRUPTED: _ClassVar[JobState]
BLOB_KIND_UNSPECIFIED: BlobKind
BLOB_KIND_MODEL: BlobKind
BLOB_KIND_DATASET: BlobKind
UPLOAD_STATE_UNSPECIFIED: UploadState
UPLOAD_STATE_ABSENT: UploadState
UPLOAD_STATE_PARTIAL: UploadState
UPLOAD_STATE_COMPLETE: UploadState
GRAPH_OPT_UNSPECIFIED: GraphOptimizationLevel
GRAPH_OPT_DISABLE: GraphOptimizationLevel
GRAPH_OPT_BASIC: GraphOptimizationLevel
GRAPH_OPT_EXTENDED: GraphOptimizationLevel
GRAPH_OPT_ALL: GraphOptimizationLevel
EXECUTION_MODE_UNSPECIFIED: ExecutionMode
EXECUTION_MODE_SEQUENTIAL: ExecutionMode
EXECUTION_MODE_PARALLEL: ExecutionMode
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState
JOB_STATE_INTERRUPTED: JobState

class GetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetInfoResponse(_message.Message):
    __slots__ = ("hostname", "os", "arch", "cpu_model", "cpu_cores", "memory_total_bytes", "memory_available_bytes", "python_version", "onnxruntime_version", "available_providers", "agent_version", "store_used_bytes", "store_models", "store_datasets", "queue_length", "queue_capacity", "running_job_id", "uptime_s", "agent_name", "caller_name", "agent_cert_not_after_unix", "lease_holder", "lease_expires_unix", "features", "onnxruntime_distribution", "onnxruntime_build_info", "provider_checks", "runners", "max_job_output_bytes")
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    OS_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    CPU_MODEL_FIELD_NUMBER: _ClassVar[int]
    CPU_CORES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_AVAILABLE_BYTES_FIELD_NUMBER: _ClassVar[int]
    PYTHON_VERSION_FIELD_NUMBER: _ClassVar[int]
    ONNXRUNTIME_VERSION_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    STORE_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    STORE_MODELS_FIELD_NUMBER: _ClassVar[int]
    STORE_DATASETS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    QUEUE_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    RUNNING_JOB_ID_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    AGENT_NAME_FIELD_NUMBER: _ClassVar[int]
    CALLER_NAME_FIELD_NUMBER: _ClassVar[int]
    AGENT_CERT_NOT_AFTER_UNIX_FIELD_NUMBER: _ClassVar[int]
    LEASE_HOLDER_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRES_UNIX_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    ONNXRUNTIME_DISTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    ONNXRUNTIME_BUILD_INFO_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_CHECKS_FIELD_NUMBER: _ClassVar[int]
    RUNNERS_FIELD_NUMBER: _ClassVar[int]
    MAX_JOB_OUTPUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    hostname: str
    os: str
    arch: str
    cpu_model: str
    cpu_cores: int
    memory_total_bytes: int
    memory_available_bytes: int
    python_version: str
    onnxruntime_version: str
    available_providers: _containers.RepeatedScalarFieldContainer[str]
    agent_version: str
    store_used_bytes: int
    store_models: int
    store_datasets: int
    queue_length: int
    queue_capacity: int
    running_job_id: str
    uptime_s: float
    agent_name: str
    caller_name: str
    agent_cert_not_after_unix: float
    lease_holder: str
    lease_expires_unix: float
    features: _containers.RepeatedScalarFieldContainer[str]
    onnxruntime_distribution: str
    onnxruntime_build_info: str
    provider_checks: _containers.RepeatedCompositeFieldContainer[ProviderCheck]
    runners: _containers.RepeatedCompositeFieldContainer[RunnerInfo]
    max_job_output_bytes: int
    def __init__(self, hostname: _Optional[str] = ..., os: _Optional[str] = ..., arch: _Optional[str] = ..., cpu_model: _Optional[str] = ..., cpu_cores: _Optional[int] = ..., memory_total_bytes: _Optional[int] = ..., memory_available_bytes: _Optional[int] = ..., python_version: _Optional[str] = ..., onnxruntime_version: _Optional[str] = ..., available_providers: _Optional[_Iterable[str]] = ..., agent_version: _Optional[str] = ..., store_used_bytes: _Optional[int] = ..., store_models: _Optional[int] = ..., store_datasets: _Optional[int] = ..., queue_length: _Optional[int] = ..., queue_capacity: _Optional[int] = ..., running_job_id: _Optional[str] = ..., uptime_s: _Optional[float] = ..., agent_name: _Optional[str] = ..., caller_name: _Optional[str] = ..., agent_cert_not_after_unix: _Optional[float] = ..., lease_holder: _Optional[str] = ..., lease_expires_unix: _Optional[float] = ..., features: _Optional[_Iterable[str]] = ..., onnxruntime_distribution: _Optional[str] = ..., onnxruntime_build_info: _Optional[str] = ..., provider_checks: _Optional[_Iterable[_Union[ProviderCheck, _Mapping]]] = ..., runners: _Optional[_Iterable[_Union[RunnerInfo, _Mapping]]] = ..., max_job_output_bytes: _Optional[int] = ...) -> None: ...

class RunnerInfo(_message.Message):
    __slots__ = ("name", "formats", "can_profile")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FORMATS_FIELD_NUMBER: _ClassVar[int]
    CAN_PROFILE_FIELD_NUMBER: _ClassVar[int]
    name: str
    formats: _containers.RepeatedScalarFieldContainer[str]
    can_profile: bool
    def __init__(self, name: _Optional[str] = ..., formats: _Optional[_Iterable[str]] = ..., can_profile: bool = ...) -> None: ...

class BlobInfo(_message.Message):
    __slots__ = ("kind", "sha256", "size_bytes", "name", "created_unix", "format")
    KIND_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    kind: BlobKind
    sha256: str
    size_bytes: int
    name: str
    created_unix: float
    format: str
    def __init__(self, kind: _Optional[_Union[BlobKind, str]] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., name: _Optional[str] = ..., created_unix: _Optional[float] = ..., format: _Optional[str] = ...) -> None: ...

class GetUploadStatusRequest(_message.Message):
    __slots__ = ("kind", "sha256", "size_bytes", "upload_id")
    KIND_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    kind: BlobKind
    sha256: str
    size_bytes: int
    upload_id: str
    def __init__(self, kind: _Optional[_Union[BlobKind, str]] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., upload_id: _Optional[str] = ...) -> None: ...

class GetUploadStatusResponse(_message.Message):
    __slots__ = ("state", "committed_bytes", "max_size_bytes")
    STATE_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    state: UploadState
    committed_bytes: int
    max_size_bytes: int
    def __init__(self, state: _Optional[_Union[UploadState, str]] = ..., committed_bytes: _Optional[int] = ..., max_size_bytes: _Optional[int] = ...) -> None: ...

class UploadHeader(_message.Message):
    __slots__ = ("kind", "sha256", "size_bytes", "name", "offset", "upload_id", "format")
    KIND_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    kind: BlobKind
    sha256: str
    size_bytes: int
    name: str
    offset: int
    upload_id: str
    format: str
    def __init__(self, kind: _Optional[_Union[BlobKind, str]] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., name: _Optional[str] = ..., offset: _Optional[int] = ..., upload_id: _Optional[str] = ..., format: _Optional[str] = ...) -> None: ...

class UploadBlobRequest(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: UploadHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[UploadHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class UploadBlobResponse(_message.Message):
    __slots__ = ("blob", "received_bytes", "already_present")
    BLOB_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    ALREADY_PRESENT_FIELD_NUMBER: _ClassVar[int]
    blob: BlobInfo
    received_bytes: int
    already_present: bool
    def __init__(self, blob: _Optional[_Union[BlobInfo, _Mapping]] = ..., received_bytes: _Optional[int] = ..., already_present: bool = ...) -> None: ...

class ListBlobsRequest(_message.Message):
    __slots__ = ("kind",)
    KIND_FIELD_NUMBER: _ClassVar[int]
    kind: BlobKind
    def __init__(self, kind: _Optional[_Union[BlobKind, str]] = ...) -> None: ...

class ListBlobsResponse(_message.Message):
    __slots__ = ("blobs",)
    BLOBS_FIELD_NUMBER: _ClassVar[int]
    blobs: _containers.RepeatedCompositeFieldContainer[BlobInfo]
    def __init__(self, blobs: _Optional[_Iterable[_Union[BlobInfo, _Mapping]]] = ...) -> None: ...

class DeleteBlobRequest(_message.Message):
    __slots__ = ("kind", "sha256")
    KIND_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    kind: BlobKind
    sha256: str
    def __init__(self, kind: _Optional[_Union[BlobKind, str]] = ..., sha256: _Optional[str] = ...) -> None: ...

class DeleteBlobResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    def __init__(self, deleted: bool = ...) -> None: ...

class Shape(_message.Message):
    __slots__ = ("dims",)
    DIMS_FIELD_NUMBER: _ClassVar[int]
    dims: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, dims: _Optional[_Iterable[int]] = ...) -> None: ...

class OperatorProfile(_message.Message):
    __slots__ = ("nodes", "iterations", "profiled_p50_ms")
    NODES_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    PROFILED_P50_MS_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeTime]
    iterations: int
    profiled_p50_ms: float
    def __init__(self, nodes: _Optional[_Iterable[_Union[NodeTime, _Mapping]]] = ..., iterations: _Optional[int] = ..., profiled_p50_ms: _Optional[float] = ...) -> None: ...

class NodeTime(_message.Message):
    __slots__ = ("name", "op_type", "provider", "calls", "total_ms", "mean_ms")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OP_TYPE_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    MEAN_MS_FIELD_NUMBER: _ClassVar[int]
    name: str
    op_type: str
    provider: str
    calls: int
    total_ms: float
    mean_ms: float
    def __init__(self, name: _Optional[str] = ..., op_type: _Optional[str] = ..., provider: _Optional[str] = ..., calls: _Optional[int] = ..., total_ms: _Optional[float] = ..., mean_ms: _Optional[float] = ...) -> None: ...

class ProviderCheck(_message.Message):
    __slots__ = ("provider", "usable", "error")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    USABLE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    provider: str
    usable: bool
    error: str
    def __init__(self, provider: _Optional[str] = ..., usable: bool = ..., error: _Optional[str] = ...) -> None: ...

class ProviderOptions(_message.Message):
    __slots__ = ("options",)
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    options: _containers.ScalarMap[str, str]
    def __init__(self, options: _Optional[_Mapping[str, str]] = ...) -> None: ...

class SessionOptions(_message.Message):
    __slots__ = ("providers", "intra_op_threads", "inter_op_threads", "graph_optimization", "execution_mode", "input_shapes", "provider_options")
    class InputShapesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Shape
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Shape, _Mapping]] = ...) -> None: ...
    class ProviderOptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ProviderOptions
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ProviderOptions, _Mapping]] = ...) -> None: ...
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    INTRA_OP_THREADS_FIELD_NUMBER: _ClassVar[int]
    INTER_OP_THREADS_FIELD_NUMBER: _ClassVar[int]
    GRAPH_OPTIMIZATION_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_MODE_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPES_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    providers: _containers.RepeatedScalarFieldContainer[str]
    intra_op_threads: int
    inter_op_threads: int
    graph_optimization: GraphOptimizationLevel
    execution_mode: ExecutionMode
    input_shapes: _containers.MessageMap[str, Shape]
    provider_options: _containers.MessageMap[str, ProviderOptions]
    def __init__(self, providers: _Optional[_Iterable[str]] = ..., intra_op_threads: _Optional[int] = ..., inter_op_threads: _Optional[int] = ..., graph_optimization: _Optional[_Union[GraphOptimizationLevel, str]] = ..., execution_mode: _Optional[_Union[ExecutionMode, str]] = ..., input_shapes: _Optional[_Mapping[str, Shape]] = ..., provider_options: _Optional[_Mapping[str, ProviderOptions]] = ...) -> None: ...

class BenchmarkSpec(_message.Message):
    __slots__ = ("model_sha256", "session", "warmup", "iterations", "min_duration_s", "seed", "dataset_sha256", "return_samples", "free_batch_dims", "thermal", "profile", "runner")
    class FreeBatchDimsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    WARMUP_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    MIN_DURATION_S_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    DATASET_SHA256_FIELD_NUMBER: _ClassVar[int]
    RETURN_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    FREE_BATCH_DIMS_FIELD_NUMBER: _ClassVar[int]
    THERMAL_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    RUNNER_FIELD_NUMBER: _ClassVar[int]
    model_sha256: str
    session: SessionOptions
    warmup: int
    iterations: int
    min_duration_s: float
    seed: int
    dataset_sha256: str
    return_samples: bool
    free_batch_dims: _containers.ScalarMap[str, str]
    thermal: ThermalGate
    profile: bool
    runner: str
    def __init__(self, model_sha256: _Optional[str] = ..., session: _Optional[_Union[SessionOptions, _Mapping]] = ..., warmup: _Optional[int] = ..., iterations: _Optional[int] = ..., min_duration_s: _Optional[float] = ..., seed: _Optional[int] = ..., dataset_sha256: _Optional[str] = ..., return_samples: bool = ..., free_batch_dims: _Optional[_Mapping[str, str]] = ..., thermal: _Optional[_Union[ThermalGate, _Mapping]] = ..., profile: bool = ..., runner: _Optional[str] = ...) -> None: ...

class ThermalGate(_message.Message):
    __slots__ = ("max_temp_c", "max_wait_s")
    MAX_TEMP_C_FIELD_NUMBER: _ClassVar[int]
    MAX_WAIT_S_FIELD_NUMBER: _ClassVar[int]
    max_temp_c: float
    max_wait_s: float
    def __init__(self, max_temp_c: _Optional[float] = ..., max_wait_s: _Optional[float] = ...) -> None: ...

class ThermalReport(_message.Message):
    __slots__ = ("max_temp_c", "no_sensor", "waited_s", "start_temp_c")
    MAX_TEMP_C_FIELD_NUMBER: _ClassVar[int]
    NO_SENSOR_FIELD_NUMBER: _ClassVar[int]
    WAITED_S_FIELD_NUMBER: _ClassVar[int]
    START_TEMP_C_FIELD_NUMBER: _ClassVar[int]
    max_temp_c: float
    no_sensor: bool
    waited_s: float
    start_temp_c: float
    def __init__(self, max_temp_c: _Optional[float] = ..., no_sensor: bool = ..., waited_s: _Optional[float] = ..., start_temp_c: _Optional[float] = ...) -> None: ...

class CompareSpec(_message.Message):
    __slots__ = ("model_a_sha256", "model_b_sha256", "session", "rounds", "warmup", "iterations", "min_duration_s", "seed", "return_samples", "dataset_sha256", "metrics", "thermal", "free_batch_dims")
    class FreeBatchDimsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_A_SHA256_FIELD_NUMBER: _ClassVar[int]
    MODEL_B_SHA256_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    WARMUP_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    MIN_DURATION_S_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    RETURN_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    DATASET_SHA256_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    THERMAL_FIELD_NUMBER: _ClassVar[int]
    FREE_BATCH_DIMS_FIELD_NUMBER: _ClassVar[int]
    model_a_sha256: str
    model_b_sha256: str
    session: SessionOptions
    rounds: int
    warmup: int
    iterations: int
    min_duration_s: float
    seed: int
    return_samples: bool
    dataset_sha256: str
    metrics: _containers.RepeatedScalarFieldContainer[str]
    thermal: ThermalGate
    free_batch_dims: _containers.ScalarMap[str, str]
    def __init__(self, model_a_sha256: _Optional[str] = ..., model_b_sha256: _Optional[str] = ..., session: _Optional[_Union[SessionOptions, _Mapping]] = ..., rounds: _Optional[int] = ..., warmup: _Optional[int] = ..., iterations: _Optional[int] = ..., min_duration_s: _Optional[float] = ..., seed: _Optional[int] = ..., return_samples: bool = ..., dataset_sha256: _Optional[str] = ..., metrics: _Optional[_Iterable[str]] = ..., thermal: _Optional[_Union[ThermalGate, _Mapping]] = ..., free_batch_dims: _Optional[_Mapping[str, str]] = ...) -> None: ...

class CompareRound(_message.Message):
    __slots__ = ("a", "b", "b_first")
    A_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    B_FIRST_FIELD_NUMBER: _ClassVar[int]
    a: BenchmarkResult
    b: BenchmarkResult
    b_first: bool
    def __init__(self, a: _Optional[_Union[BenchmarkResult, _Mapping]] = ..., b: _Optional[_Union[BenchmarkResult, _Mapping]] = ..., b_first: bool = ...) -> None: ...

class CompareResult(_message.Message):
    __slots__ = ("rounds", "evaluate_a", "evaluate_b", "peak_rss_mb")
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    EVALUATE_A_FIELD_NUMBER: _ClassVar[int]
    EVALUATE_B_FIELD_NUMBER: _ClassVar[int]
    PEAK_RSS_MB_FIELD_NUMBER: _ClassVar[int]
    rounds: _containers.RepeatedCompositeFieldContainer[CompareRound]
    evaluate_a: EvaluateResult
    evaluate_b: EvaluateResult
    peak_rss_mb: float
    def __init__(self, rounds: _Optional[_Iterable[_Union[CompareRound, _Mapping]]] = ..., evaluate_a: _Optional[_Union[EvaluateResult, _Mapping]] = ..., evaluate_b: _Optional[_Union[EvaluateResult, _Mapping]] = ..., peak_rss_mb: _Optional[float] = ...) -> None: ...

class EvaluateSpec(_message.Message):
    __slots__ = ("model_sha256", "dataset_sha256", "session", "metrics", "batch_size", "decoder", "conf", "iou", "runner", "dump_outputs")
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    DATASET_SHA256_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    DECODER_FIELD_NUMBER: _ClassVar[int]
    CONF_FIELD_NUMBER: _ClassVar[int]
    IOU_FIELD_NUMBER: _ClassVar[int]
    RUNNER_FIELD_NUMBER: _ClassVar[int]
    DUMP_OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    model_sha256: str
    dataset_sha256: str
    session: SessionOptions
    metrics: _containers.RepeatedScalarFieldContainer[str]
    batch_size: int
    decoder: str
    conf: float
    iou: float
    runner: str
    dump_outputs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model_sha256: _Optional[str] = ..., dataset_sha256: _Optional[str] = ..., session: _Optional[_Union[SessionOptions, _Mapping]] = ..., metrics: _Optional[_Iterable[str]] = ..., batch_size: _Optional[int] = ..., decoder: _Optional[str] = ..., conf: _Optional[float] = ..., iou: _Optional[float] = ..., runner: _Optional[str] = ..., dump_outputs: _Optional[_Iterable[str]] = ...) -> None: ...

class JobSpec(_message.Message):
    __slots__ = ("benchmark", "evaluate", "compare", "label")
    BENCHMARK_FIELD_NUMBER: _ClassVar[int]
    EVALUATE_FIELD_NUMBER: _ClassVar[int]
    COMPARE_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    benchmark: BenchmarkSpec
    evaluate: EvaluateSpec
    compare: CompareSpec
    label: str
    def __init__(self, benchmark: _Optional[_Union[BenchmarkSpec, _Mapping]] = ..., evaluate: _Optional[_Union[EvaluateSpec, _Mapping]] = ..., compare: _Optional[_Union[CompareSpec, _Mapping]] = ..., label: _Optional[str] = ...) -> None: ...

class LatencyStats(_message.Message):
    __slots__ = ("min_ms", "mean_ms", "std_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms")
    MIN_MS_FIELD_NUMBER: _ClassVar[int]
    MEAN_MS_FIELD_NUMBER: _ClassVar[int]
    STD_MS_FIELD_NUMBER: _ClassVar[int]
    P50_MS_FIELD_NUMBER: _ClassVar[int]
    P90_MS_FIELD_NUMBER: _ClassVar[int]
    P95_MS_FIELD_NUMBER: _ClassVar[int]
    P99_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_MS_FIELD_NUMBER: _ClassVar[int]
    min_ms: float
    mean_ms: float
    std_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    def __init__(self, min_ms: _Optional[float] = ..., mean_ms: _Optional[float] = ..., std_ms: _Optional[float] = ..., p50_ms: _Optional[float] = ..., p90_ms: _Optional[float] = ..., p95_ms: _Optional[float] = ..., p99_ms: _Optional[float] = ..., max_ms: _Optional[float] = ...) -> None: ...

class BenchmarkResult(_message.Message):
    __slots__ = ("latency", "throughput_ips", "load_ms", "first_run_ms", "peak_rss_mb", "iterations", "warmup", "samples_ms", "cpu_freq_mhz", "temperature_c", "providers", "measured_s", "thermal", "load_avg", "provider_nodes", "profile")
    class ProviderNodesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    THROUGHPUT_IPS_FIELD_NUMBER: _ClassVar[int]
    LOAD_MS_FIELD_NUMBER: _ClassVar[int]
    FIRST_RUN_MS_FIELD_NUMBER: _ClassVar[int]
    PEAK_RSS_MB_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    WARMUP_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_MS_FIELD_NUMBER: _ClassVar[int]
    CPU_FREQ_MHZ_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_C_FIELD_NUMBER: _ClassVar[int]
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    MEASURED_S_FIELD_NUMBER: _ClassVar[int]
    THERMAL_FIELD_NUMBER: _ClassVar[int]
    LOAD_AVG_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_NODES_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    latency: LatencyStats
    throughput_ips: float
    load_ms: float
    first_run_ms: float
    peak_rss_mb: float
    iterations: int
    warmup: int
    samples_ms: _containers.RepeatedScalarFieldContainer[float]
    cpu_freq_mhz: float
    temperature_c: float
    providers: _containers.RepeatedScalarFieldContainer[str]
    measured_s: float
    thermal: ThermalReport
    load_avg: _containers.RepeatedScalarFieldContainer[float]
    provider_nodes: _containers.ScalarMap[str, int]
    profile: OperatorProfile
    def __init__(self, latency: _Optional[_Union[LatencyStats, _Mapping]] = ..., throughput_ips: _Optional[float] = ..., load_ms: _Optional[float] = ..., first_run_ms: _Optional[float] = ..., peak_rss_mb: _Optional[float] = ..., iterations: _Optional[int] = ..., warmup: _Optional[int] = ..., samples_ms: _Optional[_Iterable[float]] = ..., cpu_freq_mhz: _Optional[float] = ..., temperature_c: _Optional[float] = ..., providers: _Optional[_Iterable[str]] = ..., measured_s: _Optional[float] = ..., thermal: _Optional[_Union[ThermalReport, _Mapping]] = ..., load_avg: _Optional[_Iterable[float]] = ..., provider_nodes: _Optional[_Mapping[str, int]] = ..., profile: _Optional[_Union[OperatorProfile, _Mapping]] = ...) -> None: ...

class EvaluateResult(_message.Message):
    __slots__ = ("samples", "metrics", "load_ms", "elapsed_s", "providers", "provider_nodes", "output_bytes")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class ProviderNodesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    LOAD_MS_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_S_FIELD_NUMBER: _ClassVar[int]
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_NODES_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    samples: int
    metrics: _containers.ScalarMap[str, float]
    load_ms: float
    elapsed_s: float
    providers: _containers.RepeatedScalarFieldContainer[str]
    provider_nodes: _containers.ScalarMap[str, int]
    output_bytes: int
    def __init__(self, samples: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., load_ms: _Optional[float] = ..., elapsed_s: _Optional[float] = ..., providers: _Optional[_Iterable[str]] = ..., provider_nodes: _Optional[_Mapping[str, int]] = ..., output_bytes: _Optional[int] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("id", "state", "spec", "created_unix", "started_unix", "finished_unix", "error", "client", "benchmark", "evaluate", "compare", "signed")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    STARTED_UNIX_FIELD_NUMBER: _ClassVar[int]
    FINISHED_UNIX_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    BENCHMARK_FIELD_NUMBER: _ClassVar[int]
    EVALUATE_FIELD_NUMBER: _ClassVar[int]
    COMPARE_FIELD_NUMBER: _ClassVar[int]
    SIGNED_FIELD_NUMBER: _ClassVar[int]
    id: str
    state: JobState
    spec: JobSpec
    created_unix: float
    started_unix: float
    finished_unix: float
    error: str
    client: str
    benchmark: BenchmarkResult
    evaluate: EvaluateResult
    compare: CompareResult
    signed: SignedResult
    def __init__(self, id: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., spec: _Optional[_Union[JobSpec, _Mapping]] = ..., created_unix: _Optional[float] = ..., started_unix: _Optional[float] = ..., finished_unix: _Optional[float] = ..., error: _Optional[str] = ..., client: _Optional[str] = ..., benchmark: _Optional[_Union[BenchmarkResult, _Mapping]] = ..., evaluate: _Optional[_Union[EvaluateResult, _Mapping]] = ..., compare: _Optional[_Union[CompareResult, _Mapping]] = ..., signed: _Optional[_Union[SignedResult, _Mapping]] = ...) -> None: ...

class SignedResult(_message.Message):
    __slots__ = ("payload", "signature", "algorithm", "agent_cert_pem")
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    AGENT_CERT_PEM_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    signature: bytes
    algorithm: str
    agent_cert_pem: str
    def __init__(self, payload: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., algorithm: _Optional[str] = ..., agent_cert_pem: _Optional[str] = ...) -> None: ...

class SubmitJobRequest(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: JobSpec
    def __init__(self, spec: _Optional[_Union[JobSpec, _Mapping]] = ...) -> None: ...

class SubmitJobResponse(_message.Message):
    __slots__ = ("job", "queue_position")
    JOB_FIELD_NUMBER: _ClassVar[int]
    QUEUE_POSITION_FIELD_NUMBER: _ClassVar[int]
    job: Job
    queue_position: int
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ..., queue_position: _Optional[int] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("done", "total", "phase", "message")
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    done: int
    total: int
    phase: str
    message: str
    def __init__(self, done: _Optional[int] = ..., total: _Optional[int] = ..., phase: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("job_id", "state", "queue_position", "progress", "job")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_POSITION_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    state: JobState
    queue_position: int
    progress: Progress
    job: Job
    def __init__(self, job_id: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., queue_position: _Optional[int] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class GetJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class CancelJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class ReadJobOutputRequest(_message.Message):
    __slots__ = ("job_id", "offset", "chunk_bytes")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    offset: int
    chunk_bytes: int
    def __init__(self, job_id: _Optional[str] = ..., offset: _Optional[int] = ..., chunk_bytes: _Optional[int] = ...) -> None: ...

class JobOutputChunk(_message.Message):
    __slots__ = ("offset", "data", "total_bytes")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    total_bytes: int
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ..., total_bytes: _Optional[int] = ...) -> None: ...

class Lease(_message.Message):
    __slots__ = ("holder", "lease_id", "expires_unix", "ttl_s", "remaining_s", "board_expires_unix", "claims")
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_UNIX_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    REMAINING_S_FIELD_NUMBER: _ClassVar[int]
    BOARD_EXPIRES_UNIX_FIELD_NUMBER: _ClassVar[int]
    CLAIMS_FIELD_NUMBER: _ClassVar[int]
    holder: str
    lease_id: str
    expires_unix: float
    ttl_s: float
    remaining_s: float
    board_expires_unix: float
    claims: int
    def __init__(self, holder: _Optional[str] = ..., lease_id: _Optional[str] = ..., expires_unix: _Optional[float] = ..., ttl_s: _Optional[float] = ..., remaining_s: _Optional[float] = ..., board_expires_unix: _Optional[float] = ..., claims: _Optional[int] = ...) -> None: ...

class AcquireLeaseRequest(_message.Message):
    __slots__ = ("ttl_s",)
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    ttl_s: float
    def __init__(self, ttl_s: _Optional[float] = ...) -> None: ...

class AcquireLeaseResponse(_message.Message):
    __slots__ = ("lease",)
    LEASE_FIELD_NUMBER: _ClassVar[int]
    lease: Lease
    def __init__(self, lease: _Optional[_Union[Lease, _Mapping]] = ...) -> None: ...

class RenewLeaseRequest(_message.Message):
    __slots__ = ("lease_id", "ttl_s")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    ttl_s: float
    def __init__(self, lease_id: _Optional[str] = ..., ttl_s: _Optional[float] = ...) -> None: ...

class RenewLeaseResponse(_message.Message):
    __slots__ = ("lease",)
    LEASE_FIELD_NUMBER: _ClassVar[int]
    lease: Lease
    def __init__(self, lease: _Optional[_Union[Lease, _Mapping]] = ...) -> None: ...

class ReleaseLeaseRequest(_message.Message):
    __slots__ = ("lease_id",)
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    def __init__(self, lease_id: _Optional[str] = ...) -> None: ...

class ReleaseLeaseResponse(_message.Message):
    __slots__ = ("released", "remaining")
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    released: bool
    remaining: Lease
    def __init__(self, released: bool = ..., remaining: _Optional[_Union[Lease, _Mapping]] = ...) -> None: ...
