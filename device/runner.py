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

Compare (``run_compare``): ``rounds`` rounds of one fresh session per model, A then B in even
rounds, B then A in odd ones (A B B A A B ...), every session a benchmark of the same length
on the same inputs, nothing else in between (one job); then, with a dataset, an evaluation of
each model. Each session's numbers are kept (``CompareRound``).

Thermal gating (a spec's ``thermal``): before each measured session the runner reads the
hottest thermal zone under ``<sysfs_root>/class/thermal`` and waits, polling, until it is below
the limit, for at most ``max_wait_s`` (then the job fails saying so); the wait and the
temperature go into the session's ``ThermalReport``. A board without a readable zone gets a
report with ``no_sensor`` set, and nothing is waited.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import os
import threading
import time
from array import array
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edgetune.device import plugins, sysinfo
from edgetune.device.datasets import ORT_DTYPES, MatchedDataset, load_dataset, match_to_model
from edgetune.device.errors import (Cancelled, FailedPrecondition, InvalidArgument,
                                    ResourceExhausted, StatusError)
from edgetune.device.evaluate import evaluate_session
from edgetune.device.joboutput import JobOutputs
from edgetune.device.limits import Limits
from edgetune.device.profile import profile_model
from edgetune.device.providers import Placement, create_session
from edgetune.device.safefs import OpenedFile
from edgetune.device.store import BlobStore
from edgetune.protos.messages import (BenchmarkResult, BenchmarkSpec, BlobKind, CompareResult,
                                      CompareRound, CompareSpec, EvaluateResult, EvaluateSpec,
                                      LatencyStats, Progress, SessionOptions, ThermalGate,
                                      ThermalReport)
from edgetune.protos.shapes import shape_flag

log = logging.getLogger("edgetune.agent.runner")

ProgressFn = Callable[[Progress], None]
Feeds = Dict[str, np.ndarray]
PROGRESS_EVERY_NS = 100_000_000         # at most ~10 progress reports a second
MAX_DATASET_FEEDS = 64                  # distinct batches a dataset-fed benchmark cycles through
DEFAULT_THERMAL_WAIT_S = 300.0          # a gate's longest wait when the spec gives none
THERMAL_POLL_S = 0.25
PLUGIN_WORK = "plugin-work"             # under the store: one folder per plug-in run


class _Reporter:
    """Throttles progress reports to one per PROGRESS_EVERY_NS, except forced ones."""

    def __init__(self, callback: ProgressFn, cancelled: threading.Event) -> None:
        self.callback = callback
        self.cancelled = cancelled
        self.next_ns = 0
        self.prefix = ""                # e.g. "round 2/5 B": put before every message

    def check(self) -> None:
        if self.cancelled.is_set():
            raise Cancelled("the job was cancelled")

    def report(self, phase: str, done: int, total: int, message: str = "",
               now_ns: int = 0, force: bool = False) -> None:
        now_ns = now_ns or time.perf_counter_ns()
        if force or now_ns >= self.next_ns:
            self.next_ns = now_ns + PROGRESS_EVERY_NS
            if self.prefix:
                message = f"{self.prefix}: {message}" if message else self.prefix
            self.callback(Progress(done=done, total=total, phase=phase, message=message))


def _ort() -> Any:
    import onnxruntime
    return onnxruntime


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

    def __init__(self, store: BlobStore, limits: Limits, sysfs_root: str = "/sys",
                 runners: Sequence[Any] = ()) -> None:
        self.store = store
        self.limits = limits
        self.plugins = {r.name: r for r in runners}  # config.RunnerConfig by name
        self.plugin_work = Path(store.root) / PLUGIN_WORK
        if self.plugins:
            plugins.remove_work(self.plugin_work)  # what a killed agent's plug-ins left
        self.thermal_root = os.path.join(sysfs_root, "class", "thermal")
        self.outputs = JobOutputs(store.root, limits)   # EvaluateSpec.dump_outputs files
        self.outputs.remove_partial()                   # what a killed agent was writing
        self.cpu_root = os.path.join(sysfs_root, "devices", "system", "cpu")

    # ------------------------------------------------------------------ benchmark
    def run_benchmark(self, spec: BenchmarkSpec, progress: ProgressFn,
                      cancelled: threading.Event) -> BenchmarkResult:
        rep = _Reporter(progress, cancelled)
        rep.check()
        with self.store.open(BlobKind.MODEL, spec.model_sha256) as model:
            dataset = self._dataset(spec.dataset_sha256) if spec.dataset_sha256 else None
            sysinfo.reset_peak_rss()
            if spec.runner:
                return self._plugin_benchmark(spec, model, dataset, rep)
            self._refuse_opaque(spec.model_sha256)
            return self._session(spec, model, dataset, rep)

    def _dataset(self, sha256: str) -> Any:
        """The stored dataset, loaded from the file opened and checked (``BlobStore.open``)."""
        with self.store.open(BlobKind.DATASET, sha256) as blob:
            return load_dataset(blob.file)

    def _session(self, spec: BenchmarkSpec, model: OpenedFile, dataset: Any,
                 rep: _Reporter) -> BenchmarkResult:
        """One measured session: wait for the board to cool (``spec.thermal``), create the
        session, build the inputs, first run, warm-up, the timed loop. ``model``: the stored
        model, opened (onnxruntime reads that file, never the store's name for it)."""
        thermal = self._thermal_gate(spec.thermal, rep)
        rep.report("load", 0, 0, "creating the onnxruntime session", force=True)
        placement = Placement()
        session, load_ms = create_session(model, spec.session, placement)
        try:
            return self._measured(spec, model, session, load_ms, dataset, thermal,
                                  placement, rep)
        finally:
            placement.close()

    def _measured(self, spec: BenchmarkSpec, model: OpenedFile, session: Any, load_ms: float,
                  dataset: Any, thermal: Optional[ThermalReport], placement: Placement,
                  rep: _Reporter) -> BenchmarkResult:
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
        try:
            _run(session, names, feeds[0])
        finally:
            first_run_ms = (time.perf_counter_ns() - start) / 1e6
            # The profiler saw the first run only: where each node ran (and it stops here,
            # so the warm-up and the timed loop are not profiled).
            provider_nodes = placement.nodes(session)
        rep.report("warmup", 0, spec.warmup, force=True)
        nf = len(feeds)
        for i in range(spec.warmup):
            rep.check()
            _run(session, names, feeds[i % nf])
            rep.report("warmup", i + 1, spec.warmup)

        samples, measured_ns = self._measure(session, names, feeds, spec, rep)
        iterations = len(samples)
        profile = None
        if spec.profile:                   # a second, profiled session: the times above stay clean
            rep.report("profile", 0, 0, "profiling the operators", force=True)
            profile = profile_model(model, spec.session, names, feeds, iterations,
                                    _run, rep.check)
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
            samples_ms=returned, cpu_freq_mhz=sysinfo.cpu_freq_mhz(self.cpu_root),
            temperature_c=sysinfo.temperature_c(self.thermal_root),
            providers=tuple(session.get_providers()), thermal=thermal,
            load_avg=sysinfo.load_average(), provider_nodes=provider_nodes, profile=profile)

    def _thermal_gate(self, gate: Optional[ThermalGate],
                      rep: _Reporter) -> Optional[ThermalReport]:
        """Wait until the hottest thermal zone is below ``gate.max_temp_c`` (None: no gate).
        FailedPrecondition when it is still not after ``gate.max_wait_s``."""
        if gate is None or not gate.max_temp_c:
            return None
        limit = gate.max_temp_c
        temp = sysinfo.hottest_zone_c(self.thermal_root)
        if temp is None:
            log.warning("thermal gating asked (%g °C) but %s has no readable thermal zone",
                        limit, self.thermal_root)
            return ThermalReport(max_temp_c=limit, no_sensor=True)
        max_wait = gate.max_wait_s or DEFAULT_THERMAL_WAIT_S
        start = time.monotonic()
        waited = 0.0
        while temp >= limit:
            waited = time.monotonic() - start
            if waited >= max_wait:
                raise FailedPrecondition(
                    f"the board stayed at or above {limit:g} °C for {waited:.0f} s "
                    f"(hottest thermal zone {temp:.1f} °C), the longest wait asked; let it "
                    "cool, or raise --max-temp-wait or --max-temp")
            rep.report("cool", int(waited * 1000), int(max_wait * 1000),
                       f"waiting for the board to cool: {temp:.1f} °C, below {limit:g} "
                       "wanted")
            if rep.cancelled.wait(THERMAL_POLL_S):
                rep.check()
            reading = sysinfo.hottest_zone_c(self.thermal_root)
            if reading is None:     # the zone went away: nothing more to wait for
                return ThermalReport(max_temp_c=limit, no_sensor=True, waited_s=waited)
            temp = reading
        if waited:
            waited = time.monotonic() - start
            log.info("waited %.1f s for the board to cool below %g °C", waited, limit)
        return ThermalReport(max_temp_c=limit, waited_s=waited, start_temp_c=temp)

    # ------------------------------------------------------------------ compare
    def run_compare(self, spec: CompareSpec, progress: ProgressFn,
                    cancelled: threading.Event) -> CompareResult:
        """Interleaved rounds (A B, B A, A B, ...), then the evaluation of both with a
        dataset; see the module's docstring."""
        rep = _Reporter(progress, cancelled)
        rep.check()
        with contextlib.ExitStack() as stack:
            models = {sha: stack.enter_context(self.store.open(BlobKind.MODEL, sha))
                      for sha in spec.models}
            dataset = self._dataset(spec.dataset_sha256) if spec.dataset_sha256 else None
            return self._compare(spec, models, dataset, rep)

    def _compare(self, spec: CompareSpec, models: Dict[str, OpenedFile], dataset: Any,
                 rep: _Reporter) -> CompareResult:
        sysinfo.reset_peak_rss()
        shas = {"a": spec.model_a_sha256, "b": spec.model_b_sha256}
        rounds: List[CompareRound] = []
        for index in range(spec.rounds):
            b_first = index % 2 == 1
            done: Dict[str, BenchmarkResult] = {}
            for which in ("b", "a") if b_first else ("a", "b"):
                rep.prefix = f"round {index + 1}/{spec.rounds} {which.upper()}"
                done[which] = self._session(spec.benchmark(shas[which]), models[shas[which]],
                                            None, rep)
            rounds.append(CompareRound(a=done["a"], b=done["b"], b_first=b_first))
        evaluations: Dict[str, Optional[EvaluateResult]] = {"a": None, "b": None}
        if dataset is not None:
            for which in ("a", "b"):
                rep.prefix = f"evaluate {which.upper()}"
                rep.report("load", 0, 0, "creating the onnxruntime session", force=True)
                session, load_ms = create_session(models[shas[which]], spec.session)
                evaluations[which] = evaluate_session(
                    session, load_ms, dataset, spec.evaluation(shas[which]), rep, _run)
                del session
        rep.prefix = ""
        return CompareResult(rounds=tuple(rounds), evaluate_a=evaluations["a"],
                             evaluate_b=evaluations["b"], peak_rss_mb=sysinfo.peak_rss_mb())

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
                     cancelled: threading.Event, job_id: str = "") -> EvaluateResult:
        """``job_id``: names the job's output file when ``spec.dump_outputs`` asks for one
        (``edgetune.device.joboutput``); it is complete, or absent, when this returns."""
        rep = _Reporter(progress, cancelled)
        rep.check()
        with self.store.open(BlobKind.MODEL, spec.model_sha256) as model:
            return self._evaluate_dumping(spec, model, self._dataset(spec.dataset_sha256), rep,
                                          job_id)

    def _evaluate_dumping(self, spec: EvaluateSpec, model: OpenedFile, dataset: Any,
                          rep: _Reporter, job_id: str) -> EvaluateResult:
        if not spec.dump_outputs:
            return self._evaluate(spec, model, dataset, rep)
        writer = self.outputs.writer(job_id, spec.dump_outputs, dataset.samples)
        try:
            result = self._evaluate(spec, model, dataset, rep, writer.write_batch)
            size = writer.commit()
        except BaseException:
            writer.discard()
            raise
        return dataclasses.replace(result, output_bytes=size)

    def _evaluate(self, spec: EvaluateSpec, model: OpenedFile, dataset: Any, rep: _Reporter,
                  sink: Any = None) -> EvaluateResult:
        if spec.runner:
            return self._plugin_evaluate(spec, model, dataset, rep, sink)
        self._refuse_opaque(spec.model_sha256)
        rep.report("load", 0, 0, "creating the onnxruntime session", force=True)
        placement = Placement()
        session, load_ms = create_session(model, spec.session, placement)
        nodes: List[Tuple[Tuple[str, int], ...]] = []

        def run(session: Any, names: List[str], feeds: Feeds) -> List[np.ndarray]:
            try:
                return _run(session, names, feeds)
            finally:
                if not nodes:                 # the first batch: where each node ran
                    nodes.append(placement.nodes(session))

        try:
            result = evaluate_session(session, load_ms, dataset, spec, rep, run, sink)
        finally:
            placement.close()
        return dataclasses.replace(result, providers=tuple(session.get_providers()),
                                   provider_nodes=nodes[0] if nodes else ())


    # ------------------------------------------------------------------ runner plug-ins
    def _refuse_opaque(self, sha256: str) -> None:
        """An opaque model (refused at submit already) never reaches onnxruntime."""
        fmt = self.store.info(BlobKind.MODEL, sha256).format
        if fmt != plugins.ONNX:
            plugins.check_runner(BenchmarkSpec(model_sha256=sha256), self.plugins, fmt)

    def _plugin_model(self, spec: Any, model: OpenedFile,
                      dataset: Any) -> Tuple[Any, str, List[Any], List[Any]]:
        """The runner's config, the model's format, its inputs and (ONNX) outputs."""
        config = self.plugins.get(spec.runner)
        fmt = self.store.info(BlobKind.MODEL, spec.model_sha256).format
        if config is None or fmt not in config.formats:   # the board's config changed since
            plugins.check_runner(spec, self.plugins, fmt)
        if fmt == plugins.ONNX:
            from edgetune.device.onnx_safety import inspect_model
            summary = inspect_model(Path(model.path), self.limits.max_model_bytes,
                                    file=model.file)
            return (config, fmt, plugins.onnx_values(summary.inputs),
                    plugins.onnx_values(summary.outputs))
        return config, fmt, plugins.opaque_inputs(spec.session, dataset), []

    def _plugin_run(self, config: Any, fmt: str, model: OpenedFile, feeds: Feeds, mode: str,
                    warmup: int, iterations: int, rep: _Reporter,
                    after: Callable[..., Any]) -> Any:
        """Run the plug-in in a fresh work folder (removed after), then ``after(process)``."""
        work = plugins.work_folder(self.plugin_work)
        try:
            proc = plugins.PluginProcess(config, work, model, fmt)
            proc.write_inputs(feeds)
            begin = time.monotonic()
            phase = "measure" if mode == "benchmark" else "evaluate"

            def progress() -> None:
                rep.report(phase, 0, iterations, f"runner {config.name} running "
                           f"({time.monotonic() - begin:.0f} s)")

            rep.report(phase, 0, iterations, f"runner {config.name} started", force=True)
            stdout = proc.run(mode, warmup, iterations, rep, progress)
            return after(proc, stdout)
        finally:
            plugins.remove_work(work)

    def _plugin_benchmark(self, spec: BenchmarkSpec, model: OpenedFile, dataset: Any,
                          rep: _Reporter) -> BenchmarkResult:
        config, fmt, inputs, outputs = self._plugin_model(spec, model, dataset)
        thermal = self._thermal_gate(spec.thermal, rep)
        if dataset is not None:
            matched = match_to_model(dataset, inputs, outputs)
            feeds = dataset_feeds(matched, matched.fixed_batch
                                  or _given_batch(spec.session, inputs) or 1)[0]
        else:
            feeds = random_feeds(inputs, resolve_shapes(inputs, spec.session), spec.seed)
        first = next(iter(feeds.values()), None)
        batch = int(first.shape[0]) if first is not None and first.ndim else 1
        timings = self._plugin_run(
            config, fmt, model, feeds, "benchmark", spec.warmup, spec.iterations, rep,
            lambda proc, out: plugins.parse_timings(out, proc, spec.iterations))
        samples_ms = timings["samples_ms"]
        measured_s = sum(samples_ms) / 1000
        returned: Tuple[float, ...] = ()
        if spec.return_samples:
            returned = tuple(samples_ms[:self.limits.max_samples_returned])
        rep.report("measure", spec.iterations, spec.iterations, "done", force=True)
        return BenchmarkResult(
            latency=latency_stats([int(round(v * 1e6)) for v in samples_ms]),
            throughput_ips=len(samples_ms) * batch / measured_s if measured_s > 0 else 0.0,
            load_ms=timings.get("load_ms", 0.0), first_run_ms=timings.get("first_run_ms", 0.0),
            peak_rss_mb=sysinfo.peak_rss_mb(), iterations=len(samples_ms), warmup=spec.warmup,
            measured_s=measured_s, samples_ms=returned,
            cpu_freq_mhz=sysinfo.cpu_freq_mhz(self.cpu_root),
            temperature_c=sysinfo.temperature_c(self.thermal_root), providers=(),
            thermal=thermal, load_avg=sysinfo.load_average())

    def _plugin_evaluate(self, spec: EvaluateSpec, model: OpenedFile, dataset: Any,
                         rep: _Reporter, sink: Any = None) -> EvaluateResult:
        config, fmt, inputs, outputs = self._plugin_model(spec, model, dataset)
        if outputs:                          # ONNX: the dataset is checked before it runs
            feeds = match_to_model(dataset, inputs, outputs).inputs
        else:                                # opaque: its outputs are known once written
            feeds = {v.name: dataset.arrays[v.name] for v in inputs}
        start = time.perf_counter()

        def evaluate(proc: Any, stdout: str) -> EvaluateResult:
            if stdout.strip():
                plugins.parse_timings(stdout, proc, None)      # garbage is an error here too
            values, arrays = plugins.read_outputs(proc, outputs, dataset.samples)
            session = plugins.Outputs(inputs, values, arrays)
            return evaluate_session(session, 0.0, dataset, spec, rep, _run, sink)

        result = self._plugin_run(config, fmt, model, feeds, "evaluate", 0,
                                  dataset.samples, rep, evaluate)
        return dataclasses.replace(result, elapsed_s=time.perf_counter() - start)


def _given_batch(options: SessionOptions, inputs: Sequence[Any]) -> Optional[int]:
    shapes = options.shapes()
    for node in inputs:
        if node.name in shapes and shapes[node.name]:
            return int(shapes[node.name][0])
    return None
