"""edgetune.host.render: JSON documents (exact keys, no NaN), tables, and progress on stderr."""

from __future__ import annotations

import io
import json

from edgetune.host.client import UploadOutcome
from edgetune.host.render import (ProgressView, bench_table, describe_event, job_record, json_text)
from edgetune.protos.messages import (BenchmarkResult, BenchmarkSpec, BlobInfo, BlobKind, EvaluateResult,
                             EvaluateSpec, Job, JobEvent, JobState, LatencyStats, Progress,
                             SessionOptions)

SHA = "ab" * 32


def bench_job(samples: bool = True) -> Job:
    latency = LatencyStats(1.0, 1.5, 0.2, 1.4, 1.9, 2.0, 2.5, 3.0)
    result = BenchmarkResult(latency=latency, throughput_ips=666.0, load_ms=5.0, first_run_ms=4.0,
                             peak_rss_mb=100.0, iterations=3, warmup=1, measured_s=0.005,
                             samples_ms=(1.0, 1.4, 3.0), providers=("CPUExecutionProvider",))
    spec = BenchmarkSpec(model_sha256=SHA, iterations=3, warmup=1, return_samples=samples,
                         session=SessionOptions(intra_op_threads=2,
                                                input_shapes=(("x", (1, 3)),)))
    return Job(id="j1", state=JobState.SUCCEEDED, spec=spec, result=result)


def test_bench_record_keys_and_options() -> None:
    record = job_record(bench_job(), "m.onnx", "board", samples=True)
    assert record["latency_ms"] == {"min": 1.0, "mean": 1.5, "std": 0.2, "p50": 1.4, "p90": 1.9,
                                    "p95": 2.0, "p99": 2.5, "max": 3.0}
    assert record["samples_ms"] == [1.0, 1.4, 3.0] and record["job_id"] == "j1"
    assert record["options"]["intra_op_threads"] == 2
    assert record["options"]["input_shapes"] == {"x": [1, 3]} and record["options"]["iterations"] == 3
    assert "model_sha256" not in record["options"]
    assert "samples_ms" not in job_record(bench_job(), "m.onnx", "board", samples=False)


def test_failed_job_record_and_nan_free_json() -> None:
    failed = Job(id="j2", state=JobState.FAILED, spec=BenchmarkSpec(model_sha256=SHA),
                 error="boom")
    record = job_record(failed, "m.onnx", "board")
    assert record["state"] == "failed" and record["error"] == "boom"
    result = EvaluateResult(samples=2, metrics=(("sqnr_db", float("inf")), ("top1", 0.5)))
    evaluated = Job(id="j3", state=JobState.SUCCEEDED, result=result,
                    spec=EvaluateSpec(model_sha256=SHA, dataset_sha256=SHA))
    text = json_text({"results": [job_record(evaluated, "m", "b")]})
    doc = json.loads(text)                                   # strict JSON: no Infinity
    assert doc["results"][0]["metrics"] == {"sqnr_db": None, "top1": 0.5}


def test_bench_table_has_one_row_per_model() -> None:
    from rich.console import Console

    records = [job_record(bench_job(), "a.onnx", "b"), job_record(bench_job(), "b.onnx", "b")]
    console = Console(file=io.StringIO(), width=200)
    console.print(bench_table(records, console.width))
    out = console.file.getvalue()
    assert "a.onnx" in out and "b.onnx" in out and "1.400" in out and "RSS MB" in out
    narrow = Console(file=io.StringIO(), width=80)
    narrow.print(bench_table(records, narrow.width))
    out = narrow.file.getvalue()
    assert "a.onnx" in out and "1.400" in out and "2.500" in out and "RSS MB" not in out
    assert max(len(line) for line in out.splitlines()) <= 80


def test_describe_event() -> None:
    assert describe_event(JobEvent("j", JobState.QUEUED, queue_position=2)) == "queued (position 2)"
    running = JobEvent("j", JobState.RUNNING, progress=Progress(5, 10, "measure"))
    assert describe_event(running) == "running: measure 5/10"


def test_plain_progress_prints_changes_only() -> None:
    stream = io.StringIO()
    view = ProgressView("plain", stream)
    on_event = view.job_callback("m.onnx")
    for done in range(5):
        on_event(JobEvent("j", JobState.RUNNING, progress=Progress(done, 5, "measure")))
    on_event(JobEvent("j", JobState.SUCCEEDED))
    lines = stream.getvalue().splitlines()
    assert lines == ["job j (m.onnx): running: measure 0/5", "job j (m.onnx): succeeded"]


def test_rich_progress_draws_upload_and_job() -> None:
    stream = io.StringIO()
    blob = BlobInfo(kind=BlobKind.MODEL, sha256=SHA, size_bytes=100)
    with ProgressView("rich", stream) as view:
        update = view.upload_callback("m.onnx", 100)
        update(50, 100)
        view.upload_done("m.onnx", UploadOutcome(blob, 100, False, 0))
        on_event = view.job_callback("m.onnx")
        on_event(JobEvent("j1234567890", JobState.RUNNING, progress=Progress(3, 10, "measure")))
        on_event(JobEvent("j1234567890", JobState.SUCCEEDED))
    out = stream.getvalue()
    assert "upload m.onnx" in out and "m.onnx (j1234567)" in out and "succeeded" in out


def test_upload_lines_tell_sent_nothing_from_sent_and_discarded() -> None:
    blob = BlobInfo(kind=BlobKind.MODEL, sha256=SHA, size_bytes=100)
    stream = io.StringIO()
    view = ProgressView("plain", stream)
    view.upload_done("a.onnx", UploadOutcome(blob, 0, True, 0))      # dedup before sending
    view.upload_done("b.onnx", UploadOutcome(blob, 100, True, 0))    # streamed, then found stored
    first, second = stream.getvalue().splitlines()
    assert "nothing sent" in first
    assert "nothing sent" not in second and "discarded" in second and "100" in second
