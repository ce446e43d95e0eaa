"""Time and evaluate stored models with onnxruntime: the measurement core of the agent.

``Runner.run_benchmark`` and ``Runner.run_evaluate`` are called by the job queue in a worker
thread, one job at a time. They take and return the dataclasses of ``edgetune.protos.messages``,
report ``Progress`` through a callback (at most ~10 times a second, and at every phase
change) and stop with ``edgetune.device.errors.Cancelled`` soon after ``cancelled`` is set (checked
between iterations and batches).

Benchmark: the session is created (``load_ms``), inputs are built before any timing (random
data from ``numpy.random.default_rng(seed)`` or consecutive samples of a dataset, cycled),
one first run (``first_run_ms``), ``warmup`` runs, then each measured iteration times
``session.run`` alone with ``time.perf_counter_ns`` (Python's cyclic GC is paused during the
loop, as ``timeit`` does). ``throughput_ips`` counts inferences, i.e. iterations x the batch
size (first dimension of the first input), per second of the measured loop's wall time
(``measured_s``). A duration-bound run also stops at ``limits.max_iterations``. ``peak_rss_mb`` is the agent's VmHWM after a
reset at the start of the job (process peak when the kernel cannot reset it).

Evaluate: the model and the dataset are loaded and the session created here; the batch loop
and the metrics are in ``edgetune.device.evaluate`` (``evaluate_session``).
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from array import array
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edgetune.device import sysinfo
from edgetune.device.datasets import ORT_DTYPES, MatchedDataset, load_dataset, match_to_model
from edgetune.device.errors import Cancelled, InvalidArgument, ResourceExhausted, StatusError
from edgetune.device.evaluate import evaluate_session
from edgetune.device.limits import Limits
from edgetune.device.store import BlobStore
from edgetune.protos.messages import (BenchmarkResult, BenchmarkSpec, BlobKind, EvaluateResult,
                             EvaluateSpec, LatencyStats, Progress, SessionOptions)
from edgetune.protos.shapes import shape_flag

log = logging.getLogger("edgetune.agent.runner")

ProgressFn = Callable[[Progress], None]
Feeds = Dict[str, np.ndarray]
PROGRESS_EVERY_NS = 100_000_000         # at most ~10 progress reports a second
MAX_DATASET_FEEDS = 64                  # distinct batches a dataset-fed benchmark cycles through
GRAPH_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
                "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}
EXEC_MODES = {"sequential": "ORT_SEQUENTIAL", "parallel": "ORT_PARALLEL"}


class _Reporter:
    """Throttles progress reports to one per PROGRESS_EVERY_NS, except forced ones."""

    def __init__(self, callback: ProgressFn, cancelled: threading.Event) -> None:
        self.callback = callback
        self.cancelled = cancelled
        self.next_ns = 0

    def check(self) -> None:
        if self.cancelled.is_set():
            raise Cancelled("the job was cancelled")

    def report(self, phase: str, done: int, total: int, message: str = "",
               now_ns: int = 0, force: bool = False) -> None:
        now_ns = now_ns or time.perf_counter_ns()
        if force or now_ns >= self.next_ns:
            self.next_ns = now_ns + PROGRESS_EVERY_NS
            self.callback(Progress(done=done, total=total, phase=phase, message=message))


def _ort() -> Any:
    import onnxruntime
    return onnxruntime


def create_session(model_path: Any, options: SessionOptions) -> Tuple[Any, float]:
    """(InferenceSession, load_ms). InvalidArgument for unavailable providers or a model
    onnxruntime cannot load (its message included)."""
    ort = _ort()
    available = list(ort.get_available_providers())
    providers = list(options.providers) or ["CPUExecutionProvider"]
    missing = [p for p in providers if p not in available]
    if missing:
        raise InvalidArgument(f"execution provider(s) {', '.join(missing)} not available in this "
                              f"board's onnxruntime; available: {', '.join(available)}")
    so = ort.SessionOptions()
    so.intra_op_num_threads = options.intra_op_threads
    so.inter_op_num_threads = options.inter_op_threads
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel,
                                          GRAPH_LEVELS[options.graph_optimization])
    so.execution_mode = getattr(ort.ExecutionMode, EXEC_MODES[options.execution_mode])
    so.log_severity_level = 3
    start = time.perf_counter_ns()
    try:
        session = ort.InferenceSession(str(model_path), sess_options=so, providers=providers)
    except Exception as exc:
        raise InvalidArgument(f"onnxruntime cannot load the model: {exc}".strip()) from None
    return session, (time.perf_counter_ns() - start) / 1e6


def _shape_hint(name: str, shape: Sequence[Any]) -> str:
    return shape_flag(name, [d if isinstance(d, int) and d > 0 else 1 for d in shape])


def resolve_shapes(inputs: Sequence[Any], options: SessionOptions) -> Dict[str, Tuple[int, ...]]:
    """Concrete shapes for every model input, from the model and ``options.input_shapes``."""
    given = options.shapes()
    names = [i.name for i in inputs]
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise InvalidArgument(f"--shape names {', '.join(repr(u) for u in unknown)}, which is not "
                              f"a model input; the inputs are [{', '.join(names)}]")
    shapes: Dict[str, Tuple[int, ...]] = {}
    for node in inputs:
        model_shape = list(node.shape or [])
        if node.name in given:
            dims = tuple(given[node.name])
            conflict = len(dims) != len(model_shape) or any(
                isinstance(m, int) and m > 0 and m != d for m, d in zip(model_shape, dims))
            if conflict and model_shape:
                raise InvalidArgument(
                    f"{shape_flag(node.name, dims)} does not fit the model's input "
                    f"'{node.name}' of shape {model_shape}; e.g. {_shape_hint(node.name, model_shape)}")
            shapes[node.name] = dims
        elif all(isinstance(d, int) and d > 0 for d in model_shape):
            shapes[node.name] = tuple(model_shape)
        else:
            raise InvalidArgument(f"input '{node.name}' has dynamic dimensions {model_shape}; "
                                  f"pass {_shape_hint(node.name, model_shape)}")
    return shapes


def random_feeds(inputs: Sequence[Any], shapes: Dict[str, Tuple[int, ...]], seed: int) -> Feeds:
    """Random inputs: floats ~ N(0, 1); uint8/int8 over their full range; other integers in
    0..9 (safe as indices); bools 50/50."""
    rng = np.random.default_rng(seed)
    total = sum(int(np.prod(s, dtype=np.float64)) * np.dtype(ORT_DTYPES.get(i.type, np.float32))
                .itemsize for i, s in ((i, shapes[i.name]) for i in inputs))
    available = sysinfo.memory_available_bytes()
    if available and total > available:
        raise ResourceExhausted(f"the inputs would take {total} bytes but the board has {available} "
                                "bytes of memory available; pass smaller --shape values")
    feeds: Feeds = {}
    for node in inputs:
        dtype = ORT_DTYPES.get(node.type)
        if dtype is None:
            raise InvalidArgument(f"input '{node.name}' has type {node.type}, for which random data "
                                  "cannot be made; benchmark it with a dataset")
        shape = shapes[node.name]
        dt = np.dtype(dtype)
        if dt.kind == "f":
            value = rng.standard_normal(shape).astype(dt)
        elif dt.kind == "b":
            value = rng.random(shape) < 0.5
        elif dt == np.uint8 or dt == np.int8:
            info = np.iinfo(dt)
            value = rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dt)
        else:
            value = rng.integers(0, 10, size=shape, dtype=dt)
        feeds[node.name] = np.ascontiguousarray(value)
    return feeds


def dataset_feeds(matched: MatchedDataset, batch: int) -> List[Feeds]:
    """Up to MAX_DATASET_FEEDS consecutive batches of the dataset, as contiguous arrays."""
    if matched.samples < batch:
        raise InvalidArgument(f"the dataset holds {matched.samples} samples, fewer than one batch "
                              f"of {batch}")
    count = min(matched.samples // batch, MAX_DATASET_FEEDS)
    return [{name: np.ascontiguousarray(arr[k * batch:(k + 1) * batch])
             for name, arr in matched.inputs.items()} for k in range(count)]


def latency_stats(samples_ns: Sequence[int]) -> LatencyStats:
    ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
    p50, p90, p95, p99 = np.percentile(ms, [50, 90, 95, 99])
    return LatencyStats(min_ms=float(ms.min()), mean_ms=float(ms.mean()), std_ms=float(ms.std()),
                        p50_ms=float(p50), p90_ms=float(p90), p95_ms=float(p95),
                        p99_ms=float(p99), max_ms=float(ms.max()))


def _run(session: Any, names: List[str], feeds: Feeds) -> List[np.ndarray]:
    try:
        return session.run(names, feeds)
    except Exception as exc:
        raise StatusError(f"onnxruntime failed while running the model: {exc}") from None


class Runner:
    """Benchmarks and evaluations of blobs from ``store``, within ``limits``."""

    def __init__(self, store: BlobStore, limits: Limits) -> None:
        self.store = store
        self.limits = limits

    # ------------------------------------------------------------------ benchmark
    def run_benchmark(self, spec: BenchmarkSpec, progress: ProgressFn,
                      cancelled: threading.Event) -> BenchmarkResult:
        rep = _Reporter(progress, cancelled)
        rep.check()
        model_path = self.store.path(BlobKind.MODEL, spec.model_sha256)
        dataset = load_dataset(self.store.path(BlobKind.DATASET, spec.dataset_sha256)) \
            if spec.dataset_sha256 else None
        sysinfo.reset_peak_rss()
        rep.report("load", 0, 0, "creating the onnxruntime session", force=True)
        session, load_ms = create_session(model_path, spec.session)
        inputs, names = session.get_inputs(), [o.name for o in session.get_outputs()]
        if dataset is not None:
            matched = match_to_model(dataset, inputs, session.get_outputs())
            batch = matched.fixed_batch or _given_batch(spec.session, inputs) or 1
            feeds = dataset_feeds(matched, batch)
        else:
            feeds = [random_feeds(inputs, resolve_shapes(inputs, spec.session), spec.seed)]
        first = next(iter(feeds[0].values()), None)
        batch = int(first.shape[0]) if first is not None and first.ndim else 1
        rep.check()

        start = time.perf_counter_ns()
        _run(session, names, feeds[0])
        first_run_ms = (time.perf_counter_ns() - start) / 1e6
        rep.report("warmup", 0, spec.warmup, force=True)
        nf = len(feeds)
        for i in range(spec.warmup):
            rep.check()
            _run(session, names, feeds[i % nf])
            rep.report("warmup", i + 1, spec.warmup)

        samples, measured_ns = self._measure(session, names, feeds, spec, rep)
        iterations = len(samples)
        measured_s = measured_ns / 1e9
        rep.report("measure", iterations if spec.iterations else measured_ns // 1_000_000,
                   spec.iterations or int(spec.min_duration_s * 1000), "done", force=True)
        returned: Tuple[float, ...] = ()
        if spec.return_samples:
            keep = samples[:self.limits.max_samples_returned]
            if len(keep) < iterations:
                log.warning("returning the first %d of %d samples (max_samples_returned)",
                            len(keep), iterations)
            returned = tuple(v / 1e6 for v in keep)
        return BenchmarkResult(
            latency=latency_stats(samples),
            throughput_ips=iterations * batch / measured_s if measured_s > 0 else 0.0,
            load_ms=load_ms, first_run_ms=first_run_ms, peak_rss_mb=sysinfo.peak_rss_mb(),
            iterations=iterations, warmup=spec.warmup, measured_s=measured_s,
            samples_ms=returned, cpu_freq_mhz=sysinfo.cpu_freq_mhz(),
            temperature_c=sysinfo.temperature_c(), providers=tuple(session.get_providers()))

    def _measure(self, session: Any, names: List[str], feeds: List[Feeds], spec: BenchmarkSpec,
                 rep: _Reporter) -> Tuple["array[int]", int]:
        """The timed loop: only ``session.run`` sits between the two clock reads."""
        run = session.run
        clock = time.perf_counter_ns
        is_cancelled = rep.cancelled.is_set
        samples = array("q")
        append = samples.append
        nf = len(feeds)
        fixed = spec.iterations > 0
        limit = spec.iterations if fixed else self.limits.max_iterations
        total = spec.iterations if fixed else int(spec.min_duration_s * 1000)
        duration_ns = int(spec.min_duration_s * 1e9)
        rep.report("measure", 0, total, force=True)
        gc_was_enabled = gc.isenabled()
        gc.collect()
        gc.disable()  # no collector pauses inside the timed loop (as timeit does)
        begin = clock()
        next_report = begin + PROGRESS_EVERY_NS
        i = 0
        try:
            while i < limit:
                if is_cancelled():
                    raise Cancelled(f"the job was cancelled after {i} measured iterations")
                feed = feeds[i % nf]
                t0 = clock()
                try:
                    run(names, feed)
                except Exception as exc:
                    raise StatusError(f"onnxruntime failed while running the model: {exc}") \
                        from None
                t1 = clock()
                append(t1 - t0)
                i += 1
                if t1 >= next_report:
                    next_report = t1 + PROGRESS_EVERY_NS
                    rep.report("measure", i if fixed else (t1 - begin) // 1_000_000, total,
                               now_ns=t1, force=True)
                if not fixed and t1 - begin >= duration_ns:
                    break
        finally:
            end = clock()
            if gc_was_enabled:
                gc.enable()
        return samples, end - begin

    # ------------------------------------------------------------------ evaluate
    def run_evaluate(self, spec: EvaluateSpec, progress: ProgressFn,
                     cancelled: threading.Event) -> EvaluateResult:
        rep = _Reporter(progress, cancelled)
        rep.check()
        model_path = self.store.path(BlobKind.MODEL, spec.model_sha256)
        dataset = load_dataset(self.store.path(BlobKind.DATASET, spec.dataset_sha256))
        rep.report("load", 0, 0, "creating the onnxruntime session", force=True)
        session, load_ms = create_session(model_path, spec.session)
        return evaluate_session(session, load_ms, dataset, spec, rep, _run)


def _given_batch(options: SessionOptions, inputs: Sequence[Any]) -> Optional[int]:
    shapes = options.shapes()
    for node in inputs:
        if node.name in shapes and shapes[node.name]:
            return int(shapes[node.name][0])
    return None
