"""edgetune.device.runner, device.metrics, device.sysinfo, device.limits: real onnxruntime sessions."""

from __future__ import annotations

import hashlib
import io
import math
import threading
import time
from pathlib import Path
from typing import Any, List

import numpy as np
import pytest
from onnx import TensorProto, helper

from edgetune.device import metrics, sysinfo
from edgetune.device.errors import Cancelled, InvalidArgument, NotFound
from edgetune.device.limits import Limits, validate_benchmark, validate_evaluate
from edgetune.device.runner import Runner, latency_stats
from edgetune.device.store import BlobStore
from edgetune.protos.messages import (BenchmarkSpec, BlobKind, EvaluateSpec, Progress, SessionOptions)


def onnx_bytes(nodes, inputs, outputs, initializers=()) -> bytes:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    return model.SerializeToString()


def identity_model(batch="batch", classes: int = 10) -> bytes:
    """logits = input (an Identity), so the dataset decides every metric exactly."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, classes])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])
    return onnx_bytes([helper.make_node("Identity", ["input"], ["logits"])], [x], [y])


def matmul_model(size: int = 64) -> bytes:
    """A model slow enough (~50 us) for cancellation and duration tests."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, size])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, size])
    w = helper.make_tensor("w", TensorProto.FLOAT, [size, size],
                           np.random.default_rng(0).standard_normal((size, size), np.float32)
                           .tobytes(), raw=True)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h0"])]
    for i in range(1, 8):
        nodes.append(helper.make_node("MatMul", [f"h{i - 1}", "w"], [f"h{i}"]))
    nodes.append(helper.make_node("Identity", ["h7"], ["y"]))
    return onnx_bytes(nodes, [x], [y], [w])


def two_output_model() -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", 3])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, ["n", 3])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    return onnx_bytes([helper.make_node("Identity", ["x"], ["a"]),
                       helper.make_node("Mul", ["x", "two"], ["b"])], [x], [a, b], [two])


def npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def put(store: BlobStore, kind: BlobKind, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    writer = store.begin_upload(kind, digest, len(data), "t", 0)
    writer.write(data)
    writer.commit()
    return digest


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "store", Limits())


@pytest.fixture
def runner(store: BlobStore) -> Runner:
    return Runner(store, Limits())


def collect() -> "tuple[List[Progress], object]":
    seen: List[Progress] = []
    return seen, seen.append


SHAPE = SessionOptions(input_shapes=(("input", (2, 10)),))


# ------------------------------------------------------------------ benchmark

def test_benchmark_fixed_iterations(store: BlobStore, runner: Runner) -> None:
    model = put(store, BlobKind.MODEL, identity_model())
    seen, progress = collect()
    result = runner.run_benchmark(BenchmarkSpec(model, SHAPE, warmup=3, iterations=200),
                                  progress, threading.Event())
    lat = result.latency
    assert result.iterations == 200 and result.warmup == 3
    assert 0 < lat.min_ms <= lat.p50_ms <= lat.p90_ms <= lat.p95_ms <= lat.p99_ms <= lat.max_ms
    assert lat.min_ms <= lat.mean_ms <= lat.max_ms and lat.std_ms >= 0
    assert result.samples_ms == ()
    assert result.providers == ("CPUExecutionProvider",)
    assert result.load_ms > 0 and result.first_run_ms > 0 and result.peak_rss_mb > 10
    # throughput counts inferences: 200 iterations x batch 2 over the measured wall time
    assert result.throughput_ips == pytest.approx(400 / result.measured_s)
    assert result.measured_s >= sum([lat.mean_ms * 200 / 1000]) * 0.99
    phases = [p.phase for p in seen]
    assert phases[0] == "load" and "warmup" in phases and phases[-1] == "measure"
    assert seen[-1].done == seen[-1].total == 200
    assert len(seen) < 20  # throttled, not one per iteration


def test_benchmark_returns_samples_on_request(store: BlobStore, runner: Runner) -> None:
    model = put(store, BlobKind.MODEL, identity_model())
    result = runner.run_benchmark(
        BenchmarkSpec(model, SHAPE, warmup=0, iterations=50, return_samples=True),
        lambda p: None, threading.Event())
    assert len(result.samples_ms) == 50
    assert min(result.samples_ms) == pytest.approx(result.latency.min_ms)
    assert float(np.median(result.samples_ms)) == pytest.approx(result.latency.p50_ms)


def test_benchmark_by_duration(store: BlobStore, runner: Runner) -> None:
    model = put(store, BlobKind.MODEL, matmul_model())
    seen, progress = collect()
    start = time.perf_counter()
    result = runner.run_benchmark(BenchmarkSpec(model, warmup=2, iterations=0, min_duration_s=0.5),
                                  progress, threading.Event())
    assert 0.5 <= result.measured_s < 2.0 and time.perf_counter() - start < 5
    assert result.iterations > 10
    measures = [p for p in seen if p.phase == "measure"]
    assert measures[-1].total == 500 and measures[-1].done >= 500  # elapsed ms of 500 ms
    assert 2 <= len(measures) <= 12


def test_benchmark_inputs_from_a_dataset(store: BlobStore, runner: Runner) -> None:
    model = put(store, BlobKind.MODEL, identity_model(batch=1))
    data = put(store, BlobKind.DATASET, npz(input=np.ones((7, 10), np.float32)))
    result = runner.run_benchmark(BenchmarkSpec(model, warmup=1, iterations=20,
                                                dataset_sha256=data),
                                  lambda p: None, threading.Event())
    assert result.iterations == 20 and result.throughput_ips == pytest.approx(
        20 / result.measured_s)
    wrong = put(store, BlobKind.DATASET, npz(x=np.ones((7, 10), np.float32)))
    with pytest.raises(InvalidArgument, match="name each array after a model input"):
        runner.run_benchmark(BenchmarkSpec(model, iterations=5, dataset_sha256=wrong),
                             lambda p: None, threading.Event())


def test_dynamic_dims_without_shape_are_refused(store: BlobStore, runner: Runner) -> None:
    model = put(store, BlobKind.MODEL, identity_model())
    with pytest.raises(InvalidArgument) as info:
        runner.run_benchmark(BenchmarkSpec(model), lambda p: None, threading.Event())
    assert str(info.value) == ("input 'input' has dynamic dimensions ['batch', 10]; "
                               "pass --shape input=1x10")
    bad = SessionOptions(input_shapes=(("input", (1, 11)),))
    with pytest.raises(InvalidArgument, match=r"does not fit the model's input 'input'"):
        runner.run_benchmark(BenchmarkSpec(model, bad), lambda p: None, threading.Event())
    other = SessionOptions(input_shapes=(("image", (1, 10)),))
    with pytest.raises(InvalidArgument, match=r"'image', which is not a model input"):
        runner.run_benchmark(BenchmarkSpec(model, other), lambda p: None, threading.Event())


def test_cancellation_stops_the_measurement(store: BlobStore, runner: Runner) -> None:
    model = put(store, BlobKind.MODEL, matmul_model())
    cancelled = threading.Event()

    def progress(p: Progress) -> None:
        if p.phase == "measure" and p.done > 0:
            cancelled.set()

    start = time.perf_counter()
    with pytest.raises(Cancelled, match="cancelled after"):
        runner.run_benchmark(BenchmarkSpec(model, warmup=0, iterations=1_000_000), progress,
                             cancelled)
    assert time.perf_counter() - start < 5
    cancelled.set()
    with pytest.raises(Cancelled):
        runner.run_evaluate(EvaluateSpec(model, "0" * 64), lambda p: None, cancelled)


def test_session_errors(store: BlobStore, runner: Runner, tmp_path: Path) -> None:
    model = put(store, BlobKind.MODEL, identity_model())
    with pytest.raises(InvalidArgument, match=r"NoSuchProvider.*available: .*CPUExecutionProvider"):
        runner.run_benchmark(BenchmarkSpec(model, SessionOptions(
            providers=("NoSuchProvider",), input_shapes=SHAPE.input_shapes)),
            lambda p: None, threading.Event())
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    broken = put(store, BlobKind.MODEL, onnx_bytes(
        [helper.make_node("NoSuchOp", ["x"], ["y"])], [x],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]))
    with pytest.raises(InvalidArgument, match=r"onnxruntime cannot load the model: .*NoSuchOp"):
        runner.run_benchmark(BenchmarkSpec(broken), lambda p: None, threading.Event())
    with pytest.raises(NotFound, match="edgetune models upload"):
        runner.run_benchmark(BenchmarkSpec("a" * 64), lambda p: None, threading.Event())


def test_session_options_are_applied(store: BlobStore, runner: Runner) -> None:
    model = put(store, BlobKind.MODEL, identity_model())
    options = SessionOptions(intra_op_threads=1, inter_op_threads=1, graph_optimization="disable",
                             execution_mode="parallel", input_shapes=(("input", (4, 10)),))
    result = runner.run_benchmark(BenchmarkSpec(model, options, warmup=0, iterations=5),
                                  lambda p: None, threading.Event())
    assert result.iterations == 5
    assert result.throughput_ips == pytest.approx(20 / result.measured_s)


# ------------------------------------------------------------------ evaluate

def test_evaluate_top1_is_exactly_three_quarters(store: BlobStore, runner: Runner) -> None:
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((40, 10)).astype(np.float32)
    labels = logits.argmax(axis=1)
    labels[::4] = (labels[::4] + 1) % 10          # every 4th sample wrong: top1 = 0.75
    second = np.argsort(-logits, axis=1)[:, 1]
    labels[::8] = second[::8]                     # half of those are the runner-up: top5 hits
    model = put(store, BlobKind.MODEL, identity_model())
    data = put(store, BlobKind.DATASET, npz(input=logits, labels=labels))
    seen, progress = collect()
    result = runner.run_evaluate(EvaluateSpec(model, data, batch_size=16), progress,
                                 threading.Event())
    got = result.metric_dict()
    assert result.samples == 40 and got["top1"] == 0.75
    assert got["top5"] == pytest.approx(metrics.topk_accuracy(logits, labels, 5))
    assert set(got) == {"top1", "top5"}
    assert [p.done for p in seen if p.phase == "evaluate"][-1] == 40


def test_evaluate_fixed_batch_model_runs_per_sample(store: BlobStore, runner: Runner) -> None:
    logits = np.eye(10, dtype=np.float32)[[0, 1, 2, 3, 4]]
    labels = np.array([0, 1, 2, 3, 9])
    model = put(store, BlobKind.MODEL, identity_model(batch=1))
    data = put(store, BlobKind.DATASET, npz(input=logits, labels=labels))
    result = runner.run_evaluate(EvaluateSpec(model, data, metrics=("top1",), batch_size=4),
                                 lambda p: None, threading.Event())
    assert result.metric_dict() == {"top1": 0.8}


def test_fidelity_identical_and_known_error(store: BlobStore, runner: Runner) -> None:
    x = np.random.default_rng(2).standard_normal((6, 10)).astype(np.float32)
    model = put(store, BlobKind.MODEL, identity_model())
    same = put(store, BlobKind.DATASET, npz(input=x, logits=x))
    got = runner.run_evaluate(EvaluateSpec(model, same, batch_size=4), lambda p: None,
                              threading.Event()).metric_dict()
    assert got["cosine"] == pytest.approx(1.0) and got["cosine_global"] == pytest.approx(1.0)
    assert got["sqnr_db"] == metrics.SQNR_CAP_DB and got["max_abs_error"] == 0.0
    ref = x * 1.1  # out = ref / 1.1: error = ref * (0.1 / 1.1)
    off = put(store, BlobKind.DATASET, npz(input=x, logits=ref))
    got = runner.run_evaluate(EvaluateSpec(model, off, metrics=("fidelity",)), lambda p: None,
                              threading.Event()).metric_dict()
    assert got["sqnr_db"] == pytest.approx(20 * math.log10(11.0), abs=1e-3)
    assert got["max_abs_error"] == pytest.approx(float(np.abs(ref - x).max()), rel=1e-5)
    assert got["cosine"] == pytest.approx(1.0)


def test_fidelity_per_output_prefix(store: BlobStore, runner: Runner) -> None:
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    model = put(store, BlobKind.MODEL, two_output_model())
    data = put(store, BlobKind.DATASET, npz(x=x, a=x, b=x * 2 + 1))
    got = runner.run_evaluate(EvaluateSpec(model, data, batch_size=3), lambda p: None,
                              threading.Event()).metric_dict()
    assert got["a/sqnr_db"] == metrics.SQNR_CAP_DB and got["a/max_abs_error"] == 0.0
    assert got["b/max_abs_error"] == 1.0 and got["b/sqnr_db"] < 40
    assert "sqnr_db" not in got


def test_requested_metric_that_cannot_be_computed(store: BlobStore, runner: Runner) -> None:
    x = np.zeros((4, 10), np.float32)
    model = put(store, BlobKind.MODEL, identity_model())
    plain = put(store, BlobKind.DATASET, npz(input=x))
    with pytest.raises(InvalidArgument, match="no metric applies"):
        runner.run_evaluate(EvaluateSpec(model, plain), lambda p: None, threading.Event())
    with pytest.raises(InvalidArgument, match=r"'top1' cannot be computed: it needs a 'labels'"):
        runner.run_evaluate(EvaluateSpec(model, plain, metrics=("top1",)), lambda p: None,
                            threading.Event())
    small = put(store, BlobKind.MODEL, identity_model(classes=3))
    data = put(store, BlobKind.DATASET, npz(input=np.zeros((4, 3), np.float32),
                                            labels=np.zeros(4, np.int64)))
    with pytest.raises(InvalidArgument, match="'top5' cannot be computed: the output has only 3"):
        runner.run_evaluate(EvaluateSpec(small, data, metrics=("top5",)), lambda p: None,
                            threading.Event())
    assert set(runner.run_evaluate(EvaluateSpec(small, data), lambda p: None, threading.Event())
               .metric_dict()) == {"top1"}


def test_segmentation_miou(store: BlobStore, runner: Runner) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2, 2, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2, 2, 2])
    model = put(store, BlobKind.MODEL, onnx_bytes([helper.make_node("Identity", ["x"], ["y"])],
                                                  [x], [y]))
    labels = np.array([[[0, 0], [1, 1]]])
    scores = np.zeros((1, 2, 2, 2), np.float32)
    scores[0, 1, 1, :] = 1.0           # predicts class 1 on the bottom row
    scores[0, 1, 0, 0] = 1.0           # and one wrong pixel on the top row
    data = put(store, BlobKind.DATASET, npz(x=scores, labels=labels))
    got = runner.run_evaluate(EvaluateSpec(model, data), lambda p: None,
                              threading.Event()).metric_dict()
    # class 0: tp 1, union 2 -> 0.5; class 1: tp 2, union 3 -> 2/3
    assert got == {"miou": pytest.approx((0.5 + 2 / 3) / 2)}


# ------------------------------------------------------------------ pure parts

def test_metric_functions() -> None:
    scores = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.3, 0.3, 0.4], [0.2, 0.5, 0.3]])
    labels = np.array([1, 0, 0, 2])
    assert metrics.topk_accuracy(scores, labels, 1) == 0.5
    assert metrics.topk_accuracy(scores, labels, 2) == 1.0
    ref = np.array([[1.0, 0.0], [0.0, 2.0]])
    assert metrics.cosine_similarity(ref, ref) == 1.0
    assert metrics.cosine_similarity(ref, -ref) == -1.0
    assert metrics.cosine_similarity(np.zeros((1, 3)), np.zeros((1, 3))) == 1.0
    assert metrics.sqnr_db(ref, ref) == 200.0
    assert metrics.sqnr_db(ref, ref * 0.9) == pytest.approx(20.0)
    assert metrics.sqnr_db(np.zeros(2), np.ones(2)) == -200.0
    assert metrics.max_abs_error(ref, ref + 0.25) == 0.25
    assert metrics.as_class_scores(np.zeros((2, 5, 1, 1))).shape == (2, 5)
    assert metrics.as_class_scores(np.zeros((2, 5, 3))) is None


def test_latency_stats_percentiles() -> None:
    stats = latency_stats([i * 1_000_000 for i in range(1, 101)])  # 1..100 ms
    assert (stats.min_ms, stats.max_ms, stats.mean_ms) == (1.0, 100.0, 50.5)
    assert stats.p50_ms == pytest.approx(50.5) and stats.p90_ms == pytest.approx(90.1)
    assert stats.p99_ms == pytest.approx(99.01)


def test_sysinfo_parsers_and_readers() -> None:
    x86 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n"
    arm = "processor\t: 0\nBogoMIPS\t: 48.00\nCPU part\t: 0xd08\n\nHardware\t: Allwinner sun50iw10\n"
    riscv = "processor\t: 0\nhart\t\t: 0\nisa\t\t: rv64imafdcv\nmmu\t\t: sv39\nuarch\t\t: spacemit,x60\n"
    assert sysinfo.parse_cpu_model(x86) == "AMD EPYC 7B13"
    assert sysinfo.parse_cpu_model(arm) == "Allwinner sun50iw10"
    assert sysinfo.parse_cpu_model(riscv) == "spacemit,x60"
    assert sysinfo.parse_meminfo("MemTotal:  2048 kB\nMemFree: 100 kB\nMemAvailable: 1024 kB\n") \
        == (2048 * 1024, 1024 * 1024)
    assert sysinfo.parse_meminfo("MemTotal: 10 kB\nMemFree: 2 kB\nCached: 3 kB\n") == (10240, 5120)
    assert sysinfo.parse_os_release('NAME="Debian"\nPRETTY_NAME="Debian GNU/Linux 12"\n') \
        == "Debian GNU/Linux 12"
    info = sysinfo.system_info()
    assert info.cpu_cores >= 1 and info.memory_total_bytes >= info.memory_available_bytes > 0
    assert "CPUExecutionProvider" in info.available_providers and info.onnxruntime_version
    assert info.os.startswith("Linux")
    assert sysinfo.cpu_freq_mhz("/nonexistent") == 0.0 and sysinfo.temperature_c("/nonexistent") == 0.0
    assert sysinfo.peak_rss_mb() >= sysinfo.rss_mb() * 0.9 > 0
    if sysinfo.reset_peak_rss():          # the peak starts again from the current RSS
        assert sysinfo.peak_rss_mb() <= sysinfo.rss_mb() + 8


def test_sysinfo_reads_sys_trees(tmp_path: Path) -> None:
    for cpu, khz in (("cpu0", "1200000"), ("cpu1", "1800000")):
        (tmp_path / "cpu" / cpu / "cpufreq").mkdir(parents=True)
        (tmp_path / "cpu" / cpu / "cpufreq" / "scaling_cur_freq").write_text(khz + "\n")
    for zone, milli in (("thermal_zone0", "45000"), ("thermal_zone1", "61500")):
        (tmp_path / "thermal" / zone).mkdir(parents=True)
        (tmp_path / "thermal" / zone / "temp").write_text(milli + "\n")
    assert sysinfo.cpu_freq_mhz(str(tmp_path / "cpu")) == 1500.0
    assert sysinfo.temperature_c(str(tmp_path / "thermal")) == 61.5


def test_peak_rss_reset_tracks_a_job() -> None:
    if not sysinfo.reset_peak_rss():
        pytest.skip("this kernel does not allow resetting VmHWM")
    big = np.ones(64 << 20, np.uint8)  # 64 MB touched
    peak = sysinfo.peak_rss_mb()
    del big
    assert sysinfo.reset_peak_rss()
    assert sysinfo.peak_rss_mb() < peak - 32


def test_peak_rss_reset_refused_says_false(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel (or sandbox) that refuses /proc/self/clear_refs: False, not an exception, and
    the peak still reads (counted from process start)."""
    def refuse(path: str, *args: Any, **kwargs: Any) -> Any:
        assert path == "/proc/self/clear_refs"
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(sysinfo, "open", refuse, raising=False)
    assert sysinfo.reset_peak_rss() is False
    monkeypatch.undo()
    assert sysinfo.peak_rss_mb() >= sysinfo.rss_mb() * 0.9 > 0


def test_limits_validation() -> None:
    limits = Limits()
    ok = BenchmarkSpec("a" * 64)
    validate_benchmark(ok, limits)
    with pytest.raises(InvalidArgument, match=r"iterations must be between 1 and 1000000 \(got -5\)"):
        validate_benchmark(BenchmarkSpec("a" * 64, iterations=-5), limits)
    with pytest.raises(InvalidArgument, match="exactly one of iterations"):
        validate_benchmark(BenchmarkSpec("a" * 64, iterations=10, min_duration_s=1.0), limits)
    with pytest.raises(InvalidArgument, match="exactly one of iterations"):
        validate_benchmark(BenchmarkSpec("a" * 64, iterations=0), limits)
    with pytest.raises(InvalidArgument, match="min_duration_s must be more than 0 and at most 3600"):
        validate_benchmark(BenchmarkSpec("a" * 64, iterations=0, min_duration_s=7200.0), limits)
    with pytest.raises(InvalidArgument, match="warmup must be between 0 and 10000"):
        validate_benchmark(BenchmarkSpec("a" * 64, warmup=10**6), limits)
    with pytest.raises(InvalidArgument, match="64 lowercase hexadecimal"):
        validate_benchmark(BenchmarkSpec("A" * 64), limits)
    with pytest.raises(InvalidArgument, match="return_samples is limited to 100000"):
        validate_benchmark(BenchmarkSpec("a" * 64, iterations=200_000, return_samples=True), limits)
    with pytest.raises(InvalidArgument, match="--shape x=1x3x224x224"):
        validate_benchmark(BenchmarkSpec("a" * 64, SessionOptions(input_shapes=(("x", (1, 0)),))),
                           limits)
    with pytest.raises(InvalidArgument, match="intra_op_threads must be between 0 and 256"):
        validate_benchmark(BenchmarkSpec("a" * 64, SessionOptions(intra_op_threads=-1)), limits)
    validate_evaluate(EvaluateSpec("a" * 64, "b" * 64, metrics=("top1", "fidelity")), limits)
    with pytest.raises(InvalidArgument, match="unknown metric 'top3'"):
        validate_evaluate(EvaluateSpec("a" * 64, "b" * 64, metrics=("top3",)), limits)
    with pytest.raises(InvalidArgument, match="batch_size must be between 1 and 4096"):
        validate_evaluate(EvaluateSpec("a" * 64, "b" * 64, batch_size=0), limits)
    with pytest.raises(InvalidArgument, match="needs a dataset"):
        validate_evaluate(EvaluateSpec("a" * 64, ""), limits)
    with pytest.raises(ValueError, match="limits.max_iterations must be a positive number"):
        Limits(max_iterations=0)
