"""The committed generated code matches agent.proto, and the wire dataclasses round-trip."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from google.protobuf import descriptor_pb2

from edgetune.protos import agent_pb2 as pb
from edgetune.protos.messages import (BenchmarkResult, BenchmarkSpec, EvaluateResult, EvaluateSpec, Job,
                             JobEvent, JobState, LatencyStats, Progress, SessionOptions)

ROOT = Path(__file__).resolve().parent.parent


def test_codegen_check_passes_on_the_committed_code():
    proc = subprocess.run([sys.executable, "-m", "edgetune.protos.codegen", "--check"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "up to date" in proc.stdout


def test_codegen_check_fails_on_stale_code(tmp_path):
    # a copy of the protos package whose generated module differs from agent.proto
    import shutil

    shutil.copytree(ROOT / "protos", tmp_path / "protos")
    stale = tmp_path / "protos" / "agent_pb2.py"
    stale.write_text(stale.read_text() + "\n# edited by hand\n")
    # run the copy's own codegen: it checks the files beside it
    proc = subprocess.run([sys.executable, str(tmp_path / "protos" / "codegen.py"), "--check"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "agent_pb2.py" in proc.stderr


OLD_DESCRIPTOR = ROOT / "tests" / "data" / "agent-proto-0.1.0.desc"   # 0.1.0's agent_pb2, as it was


def _fields(message: descriptor_pb2.DescriptorProto, prefix: str = "") -> dict:
    out = {}
    for f in message.field:
        out[f"{prefix}{message.name}.{f.name}"] = (f.number, f.type, f.label, f.type_name,
                                                   f.oneof_index if f.HasField("oneof_index") else None)
    for nested in message.nested_type:
        out.update(_fields(nested, f"{prefix}{message.name}."))
    return out


def _wire(fd: descriptor_pb2.FileDescriptorProto) -> tuple:
    fields = {}
    for message in fd.message_type:
        fields.update(_fields(message))
    enums = {f"{e.name}.{v.name}": v.number for e in fd.enum_type for v in e.value}
    methods = {f"/{fd.package}.{s.name}/{m.name}": (m.input_type, m.output_type,
                                                    m.client_streaming, m.server_streaming)
               for s in fd.service for m in s.method}
    return fields, enums, methods


def test_descriptor_has_an_edgetune_file_name_and_the_old_wire_names():
    """Registered in protobuf's global pool under a name no other project takes, while every
    field, enum value and RPC of the previous release (0.1.0, registered as
    ``protos/agent.proto``) keeps its wire name, number and type: old agents and new hosts,
    and the other way round, still understand each other."""
    new = descriptor_pb2.FileDescriptorProto.FromString(pb.DESCRIPTOR.serialized_pb)
    old = descriptor_pb2.FileDescriptorProto.FromString(OLD_DESCRIPTOR.read_bytes())
    assert new.name == "edgetune/protos/agent.proto"
    assert old.name == "protos/agent.proto"
    assert new.package == old.package == "edgetune.agent.v1"
    old_fields, old_enums, old_methods = _wire(old)
    new_fields, new_enums, new_methods = _wire(new)
    assert len(old_methods) == 10 and len(old_fields) > 100
    for name, spec in old_fields.items():
        assert new_fields.get(name) == spec, f"wire field {name} changed or went away"
    for name, number in old_enums.items():
        assert new_enums.get(name) == number, f"enum value {name} changed or went away"
    for name, spec in old_methods.items():
        assert new_methods.get(name) == spec, f"RPC {name} changed or went away"


def test_onnx_subset_registers_under_an_edgetune_name():
    from edgetune.protos import onnx_subset_pb2
    assert onnx_subset_pb2.DESCRIPTOR.name == "edgetune/protos/onnx_subset.proto"
    assert onnx_subset_pb2.DESCRIPTOR.package == "edgetune.onnxsubset"


def _round_trip(job: Job) -> Job:
    wire = pb.Job.FromString(job.as_pb2().SerializeToString())
    return Job.from_pb2(wire)


def test_benchmark_job_round_trips_through_protobuf_and_json():
    spec = BenchmarkSpec(model_sha256="a" * 64,
                         session=SessionOptions(providers=("CPUExecutionProvider",),
                                                intra_op_threads=1, graph_optimization="basic",
                                                execution_mode="parallel",
                                                input_shapes=(("input", (1, 3, 8, 8)),)),
                         warmup=3, iterations=0, min_duration_s=2.5, seed=7, return_samples=True)
    result = BenchmarkResult(latency=LatencyStats(1, 2, 0.5, 1.9, 2.5, 2.7, 3.0, 3.1),
                             throughput_ips=500.0, load_ms=12.0, first_run_ms=4.0,
                             peak_rss_mb=80.0, iterations=10, warmup=3, measured_s=0.02,
                             samples_ms=(1.0, 2.0), cpu_freq_mhz=1800.0, providers=("CPUExecutionProvider",))
    job = Job(id="j1", state=JobState.SUCCEEDED, spec=spec, label="x", created_unix=1.0,
              started_unix=2.0, finished_unix=3.0, client="laptop", result=result)
    assert _round_trip(job) == job
    assert Job.from_dict(job.as_dict()) == job


def test_evaluate_job_and_event_round_trip():
    spec = EvaluateSpec(model_sha256="b" * 64, dataset_sha256="c" * 64, metrics=("top1",),
                        batch_size=4)
    job = Job(id="j2", state=JobState.FAILED, spec=spec, error="boom",
              result=EvaluateResult(samples=3, metrics=(("top1", 0.5),)))
    assert _round_trip(job) == job
    event = JobEvent(job_id="j2", state=JobState.RUNNING, queue_position=0,
                     progress=Progress(done=1, total=3, phase="evaluate"), job=job)
    assert JobEvent.from_pb2(pb.JobEvent.FromString(event.as_pb2().SerializeToString())) == event
