"""The board commands end to end, in-process through ``edgetune.host.cli.main``, against one real agent
subprocess (mutual TLS, real onnxruntime) shared by this module."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, List

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgetune.host.client import AgentClient
from edgetune.host.errors import ExitStatus
from edgetune.host.render import fmt_bytes
from edgetune.protos.messages import BenchmarkSpec, BlobKind, SessionOptions
from tests.host_fixtures import (DIGITS_MODEL, DIGITS_TEST, ONE_DIGIT, RunningAgent,  # noqa: F401
                                      local_agent, run_cli, write_passphrase_file)

LATENCY_KEYS = {"min", "mean", "std", "p50", "p90", "p95", "p99", "max"}
BENCH_KEYS = {"model", "sha256", "device", "latency_ms", "throughput_ips", "load_ms",
              "first_run_ms", "peak_rss_mb", "iterations", "options", "cpu_freq_mhz",
              "temperature_c", "job_id"}
CLOSED = "127.0.0.1:9"                     # the discard port: nobody listens here


def tiny_model(path: Path, seed: int) -> Path:
    """A fixed-shape MatMul model, different for every seed (a new sha256)."""
    w = np.random.default_rng(seed).standard_normal((16, 4)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="matmul")], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.save(model, path)
    return path


def submit_long_job(agent: RunningAgent, seconds: float) -> str:
    with AgentClient(agent.address, agent.pki.host.identity) as client:
        sha = client.upload(DIGITS_MODEL, BlobKind.MODEL).blob.sha256
        job, _ = client.submit(BenchmarkSpec(
            model_sha256=sha, iterations=0, min_duration_s=seconds,
            session=SessionOptions(input_shapes=(("input", (1, 1, 8, 8)),))))
    return job.id


def test_info_json(capsys: pytest.CaptureFixture, local_agent: RunningAgent) -> None:
    r = run_cli(capsys, "info", *local_agent.conn(), "--json")
    assert r.code == 0, r.err
    info = r.json
    assert info["device"] == info["address"] == local_agent.address
    assert info["agent_name"] == "board1" and info["caller_name"] == "laptop"
    from edgetune.certs.describe import describe_certificate
    expires = describe_certificate(local_agent.pki.device.cert.read_bytes()).not_after
    assert info["agent_cert_not_after_unix"] == pytest.approx(expires.timestamp())
    assert info["cpu_cores"] >= 1 and info["onnxruntime_version"]
    assert "CPUExecutionProvider" in info["available_providers"]


def test_info_table(capsys: pytest.CaptureFixture, local_agent: RunningAgent) -> None:
    r = run_cli(capsys, "info", *local_agent.conn())
    assert r.code == 0, r.err
    assert "onnxruntime_version" in r.out and "board1" in r.out


def test_bench_json_fixed_iterations_with_samples(capsys: pytest.CaptureFixture,
                                                  local_agent: RunningAgent) -> None:
    r = run_cli(capsys, "bench", str(DIGITS_MODEL), "--shape", ONE_DIGIT, "--iterations", "25",
                "--warmup", "2", "--threads", "1", "--samples", *local_agent.conn(), "--json")
    assert r.code == 0, r.err
    (result,) = r.json["results"]
    assert BENCH_KEYS <= set(result) and set(result["latency_ms"]) == LATENCY_KEYS
    lat = result["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert result["iterations"] == 25 and len(result["samples_ms"]) == 25
    assert min(result["samples_ms"]) == pytest.approx(lat["min"])
    assert result["options"]["input_shapes"] == {"input": [1, 1, 8, 8]}
    assert result["options"]["intra_op_threads"] == 1 and result["options"]["warmup"] == 2
    assert result["device"] == local_agent.address and len(result["sha256"]) == 64
    assert result["throughput_ips"] > 0 and result["load_ms"] > 0


def test_bench_duration(capsys: pytest.CaptureFixture, local_agent: RunningAgent) -> None:
    r = run_cli(capsys, "bench", str(DIGITS_MODEL), "--shape", ONE_DIGIT, "--duration", "0.5",
                *local_agent.conn(), "--json")
    assert r.code == 0, r.err
    (result,) = r.json["results"]
    assert result["measured_s"] >= 0.45 and result["iterations"] > 10
    assert result["options"]["min_duration_s"] == 0.5 and "samples_ms" not in result


def test_second_bench_of_a_model_sends_nothing(capsys: pytest.CaptureFixture,
                                               local_agent: RunningAgent, tmp_path: Path) -> None:
    model = tiny_model(tmp_path / "tiny.onnx", seed=int(time.time() * 1000) % 2**31)
    args = ["bench", str(model), "--iterations", "5", *local_agent.conn()]
    first = run_cli(capsys, *args)                 # stderr is not a terminal: plain lines
    assert first.code == 0, first.err
    assert f"tiny.onnx: sent {fmt_bytes(model.stat().st_size)}" in first.err
    second = run_cli(capsys, *args)
    assert second.code == 0, second.err
    assert "tiny.onnx: on the board already" in second.err and "nothing sent" in second.err
    upload = run_cli(capsys, "models", "upload", str(model), *local_agent.conn(), "--json")
    (entry,) = upload.json["uploads"]
    assert entry["already_present"] is True and entry["sent_bytes"] == 0


def test_models_list_and_rm_by_prefix(capsys: pytest.CaptureFixture, local_agent: RunningAgent,
                                      tmp_path: Path) -> None:
    model = tiny_model(tmp_path / "gone.onnx", seed=7)
    up = run_cli(capsys, "models", "upload", str(model), *local_agent.conn(), "--json")
    sha = up.json["uploads"][0]["sha256"]
    listed = run_cli(capsys, "models", "list", *local_agent.conn(), "--json")
    assert sha in [m["sha256"] for m in listed.json["models"]]
    rm = run_cli(capsys, "models", "rm", sha[:10], *local_agent.conn(), "--json")
    assert rm.code == 0 and rm.json == {"deleted": [sha]}
    listed = run_cli(capsys, "models", "list", *local_agent.conn(), "--json")
    assert sha not in [m["sha256"] for m in listed.json["models"]]


def test_eval_digits(capsys: pytest.CaptureFixture, local_agent: RunningAgent) -> None:
    r = run_cli(capsys, "eval", str(DIGITS_MODEL), "--dataset", str(DIGITS_TEST),
                "--metric", "top1,fidelity", "--batch", "50", *local_agent.conn(), "--json")
    assert r.code == 0, r.err
    (result,) = r.json["results"]
    assert set(result) >= {"model", "sha256", "device", "samples", "metrics", "job_id"}
    assert result["samples"] == len(np.load(DIGITS_TEST)["labels"])
    assert result["metrics"]["top1"] >= 0.97
    assert result["metrics"]["cosine"] == pytest.approx(1.0, abs=1e-5)
    table = run_cli(capsys, "eval", str(DIGITS_MODEL), "--dataset", str(DIGITS_TEST),
                    "--metric", "top1", *local_agent.conn())
    assert table.code == 0 and "top1" in table.out and "digits_cnn.onnx" in table.out


def test_jobs_list_watch_and_cancel(capsys: pytest.CaptureFixture,
                                    local_agent: RunningAgent) -> None:
    done = run_cli(capsys, "bench", str(DIGITS_MODEL), "--shape", ONE_DIGIT, "--iterations", "5",
                   *local_agent.conn(), "--json")
    done_id = done.json["results"][0]["job_id"]
    watched = run_cli(capsys, "jobs", "watch", done_id, *local_agent.conn(), "--json")
    assert watched.code == 0, watched.err
    assert watched.json["results"][0]["latency_ms"] == done.json["results"][0]["latency_ms"]

    long_id = submit_long_job(local_agent, 30)
    listed = run_cli(capsys, "jobs", "list", *local_agent.conn(), "--json")
    states = {j["id"]: j["state"] for j in listed.json["jobs"]}
    assert states[done_id] == "succeeded" and states[long_id] in ("queued", "running")
    cancelled = run_cli(capsys, "jobs", "cancel", long_id, *local_agent.conn(), "--json")
    assert cancelled.code == 0, cancelled.err
    assert cancelled.json["job"]["id"] == long_id
    final = run_cli(capsys, "jobs", "watch", long_id, *local_agent.conn(), "--json")
    assert final.code == ExitStatus.AGENT
    assert final.json["results"][0]["state"] == "cancelled"
    shown = run_cli(capsys, "jobs", "show", long_id, *local_agent.conn(), "--json")
    assert shown.json["job"]["state"] == "cancelled"


def test_jobs_watch_names_the_job_by_its_label(capsys: pytest.CaptureFixture,
                                              local_agent: RunningAgent) -> None:
    """Progress lines say ``job ID (LABEL): ...`` as bench's do, not ``job ID (ID)``; a job
    without a label is named by its model's short hash, as in its result."""
    with AgentClient(local_agent.address, local_agent.pki.host.identity) as client:
        sha = client.upload(DIGITS_MODEL, BlobKind.MODEL).blob.sha256
        spec = BenchmarkSpec(model_sha256=sha, iterations=5,
                             session=SessionOptions(input_shapes=(("input", (1, 1, 8, 8)),)))
        labelled, _ = client.submit(spec, label="night run")
        unlabelled, _ = client.submit(spec)
    for job, name in ((labelled, "night run"), (unlabelled, sha[:12])):
        r = run_cli(capsys, "jobs", "watch", job.id, *local_agent.conn())
        assert r.code == 0, r.err
        progress = [line for line in r.err.splitlines() if line.startswith(f"job {job.id} ")]
        assert progress and all(line.startswith(f"job {job.id} ({name}): ")
                                for line in progress), r.err
        assert f"({job.id})" not in r.err
        assert name in r.out                    # the result table names it the same way


def test_cancel_unknown_job_is_not_found(capsys: pytest.CaptureFixture,
                                         local_agent: RunningAgent) -> None:
    r = run_cli(capsys, "jobs", "cancel", "nosuchjob", *local_agent.conn(), "--json")
    assert r.code == ExitStatus.NOT_FOUND
    assert r.json["error"]["type"] == "NotFoundError" and "nosuchjob" in r.json["error"]["message"]


def test_unknown_model_sha_is_not_found(capsys: pytest.CaptureFixture,
                                        local_agent: RunningAgent) -> None:
    r = run_cli(capsys, "bench", "0" * 64, *local_agent.conn(), "--json")
    assert r.code == ExitStatus.NOT_FOUND
    assert "upload it first" in r.json["error"]["message"]
    missing = run_cli(capsys, "bench", "no/such/model.onnx", *local_agent.conn())
    assert missing.code == ExitStatus.NOT_FOUND and "neither a file nor" in missing.err


BATCH_NOTE = "input: free batch dimension 'batch' set to 1 (--shape input=1x1x8x8 to choose)"


def test_free_batch_dimension_is_1_and_said(capsys: pytest.CaptureFixture,
                                            local_agent: RunningAgent) -> None:
    # the digits CNN's only free dimension is its batch: benched as batch 1, with a note
    r = run_cli(capsys, "bench", str(DIGITS_MODEL), "--iterations", "5", *local_agent.conn(),
                "--json")
    assert r.code == 0, r.err
    (result,) = r.json["results"]
    assert result["options"]["input_shapes"] == {"input": [1, 1, 8, 8]}
    assert result["options"]["free_batch_dims"] == {"input": "batch"}
    assert result["note"] == BATCH_NOTE and result["iterations"] == 5
    shown = run_cli(capsys, "jobs", "show", result["job_id"], *local_agent.conn(), "--json")
    assert shown.json["job"]["spec"]["free_batch_dims"] == {"input": "batch"}
    shown = run_cli(capsys, "jobs", "show", result["job_id"], *local_agent.conn())
    assert BATCH_NOTE in shown.err                   # the job's record says it later too
    table = run_cli(capsys, "bench", str(DIGITS_MODEL), "--iterations", "5", *local_agent.conn())
    assert table.code == 0 and "p50 ms" in table.out
    assert [line for line in table.err.splitlines() if "free batch" in line] == [
        f"edgetune: warning: {DIGITS_MODEL}: {BATCH_NOTE}"]
    # a shape given is used as it is, and nothing is said
    given = run_cli(capsys, "bench", str(DIGITS_MODEL), "--iterations", "5", "--shape",
                    "input=2x1x8x8", *local_agent.conn(), "--json")
    (result,) = given.json["results"]
    assert result["options"]["input_shapes"] == {"input": [2, 1, 8, 8]}
    assert "free_batch_dims" not in result["options"] and "note" not in result


def test_other_free_dimensions_need_shape(capsys: pytest.CaptureFixture, tmp_path: Path,
                                          local_agent: RunningAgent) -> None:
    from tests.agent_fixtures import relu_model

    model = tmp_path / "images.onnx"
    model.write_bytes(relu_model(["batch", 3, "height", "width"]))   # image size: no guess
    r = run_cli(capsys, "bench", str(model), "--iterations", "5", *local_agent.conn())
    assert r.code == ExitStatus.BAD_INPUT
    assert "dynamic dimensions ['batch', 3, 'height', 'width']" in r.err
    assert "--shape x=1x3x1x1" in r.err
    ok = run_cli(capsys, "bench", str(model), "--iterations", "5", "--shape", "x=1x3x4x4",
                 *local_agent.conn())
    assert ok.code == 0 and "images.onnx" in ok.out and "p50 ms" in ok.out


@pytest.mark.parametrize("flags, message", [
    (["--iterations", "0"], "--iterations must be between 1"),
    (["--iterations", "-1"], "--iterations must be between 1"),
    (["--iterations", str(10 ** 12)], "--iterations must be between 1"),
    (["--warmup", "-3"], "--warmup must be between 0"),
    (["--threads", "-1"], "--threads must be between 0"),
    (["--duration", "0"], "--duration must be between"),
    (["--shape", "input:1x1x8x8"], "is not NAME=DIMS"),
    (["--shape", "input=1xAx8"], "whole numbers"),
    (["--shape", "input=1x0x8"], "at least 1"),
])
def test_bad_flags_are_usage_errors_before_connecting(capsys: pytest.CaptureFixture,
                                                      pki: Any, flags: List[str],
                                                      message: str) -> None:
    # The address is closed: reaching it would end in UNREACHABLE, not USAGE.
    r = run_cli(capsys, "bench", str(DIGITS_MODEL), *flags, "--address", CLOSED,
                "--pki", str(pki.dir))
    assert r.code == ExitStatus.USAGE, r.err
    assert message in r.err


def test_unreachable_address(capsys: pytest.CaptureFixture, local_agent: RunningAgent) -> None:
    args = local_agent.conn()
    args[args.index("--address") + 1] = CLOSED
    r = run_cli(capsys, "info", *args)
    assert r.code == ExitStatus.UNREACHABLE
    assert f"no agent answers at {CLOSED}: is edgetune-agent running there" in r.err


def test_wrong_passphrase_is_auth(capsys: pytest.CaptureFixture, local_agent: RunningAgent,
                                  tmp_path: Path) -> None:
    args = local_agent.conn()
    wrong = write_passphrase_file(tmp_path / "wrong", b"not-the-passphrase")
    args[args.index("--passphrase-file") + 1] = str(wrong)
    r = run_cli(capsys, "info", *args, "--json")
    assert r.code == ExitStatus.AUTH
    assert "wrong passphrase" in r.json["error"]["message"]


def test_agent_refuses_foreign_ca_host_certificate(capsys: pytest.CaptureFixture,
                                                   local_agent: RunningAgent,
                                                   tmp_path: Path) -> None:
    pki = local_agent.pki
    # We trust the board's CA and our own (foreign) one: the local check passes, the agent refuses.
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(pki.ca.cert_pem + pki.foreign_ca.cert_pem)
    r = run_cli(capsys, "info", *local_agent.conn(host=pki.foreign_host, ca=bundle))
    assert r.code == ExitStatus.AUTH
    assert f"the agent at {local_agent.address} refused our certificate 'intruder'" in r.err


def test_we_refuse_agent_certificate_for_another_name(capsys: pytest.CaptureFixture,
                                                      local_agent: RunningAgent) -> None:
    r = run_cli(capsys, "info", *local_agent.conn(), "--server-name", "10.9.9.9")
    assert r.code == ExitStatus.AUTH
    assert "we refused the certificate 'board1'" in r.err
    assert "SAN does not include 10.9.9.9" in r.err and "--ip 10.9.9.9" in r.err


def test_interrupted_watch_keeps_the_job_and_reattaches(capsys: pytest.CaptureFixture,
                                                        local_agent: RunningAgent) -> None:
    cmd = [sys.executable, "-m", "edgetune.host", "bench", str(DIGITS_MODEL), "--shape", ONE_DIGIT,
           "--duration", "2", *local_agent.conn()]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    job_id = ""
    try:
        for line in proc.stderr:                       # plain progress lines (not a terminal)
            if line.startswith("job ") and "running" in line:
                job_id = line.split()[1]
                break
        assert job_id, "the CLI never reported a running job"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == ExitStatus.INTERRUPTED
    assert f"keeps running on the board" in err and f"edgetune jobs watch {job_id}" in err
    r = run_cli(capsys, "jobs", "watch", job_id, *local_agent.conn(), "--json")
    assert r.code == 0, r.err
    (result,) = r.json["results"]
    assert result["job_id"] == job_id and result["measured_s"] >= 1.9


def test_device_from_inventory(capsys: pytest.CaptureFixture, local_agent: RunningAgent,
                               tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pki = local_agent.pki
    (tmp_path / "pki").symlink_to(pki.dir, target_is_directory=True)
    write_passphrase_file(tmp_path / "pass", pki.passphrase)
    config = tmp_path / "edgetune.toml"
    config.write_text(
        '[host]\nca = "pki/ca-cert.pem"\ncert = "pki/laptop-cert.pem"\n'
        'key = "pki/laptop-key.pem"\npassphrase_file = "pass"\n\n'
        f'[devices.bench1]\naddress = "{local_agent.address}"\ntags = ["x86"]\n')
    monkeypatch.delenv("EDGETUNE_PASSPHRASE", raising=False)
    monkeypatch.delenv("EDGETUNE_CONFIG", raising=False)
    r = run_cli(capsys, "info", "--device", "bench1", "--inventory", str(config), "--json")
    assert r.code == 0, r.err
    assert r.json["device"] == "bench1" and r.json["caller_name"] == "laptop"
    monkeypatch.chdir(tmp_path)                        # found as ./edgetune.toml
    bench = run_cli(capsys, "bench", str(DIGITS_MODEL), "--shape", ONE_DIGIT, "--iterations",
                    "3", "--device", "bench1", "--json")
    assert bench.code == 0 and bench.json["results"][0]["device"] == "bench1"
    unknown = run_cli(capsys, "info", "--device", "nope")
    assert unknown.code == ExitStatus.NOT_FOUND and "known devices: bench1" in unknown.err


def test_pki_directory_picks_the_only_host_identity(capsys: pytest.CaptureFixture,
                                                    local_agent: RunningAgent) -> None:
    r = run_cli(capsys, "info", "--address", local_agent.address, "--pki",
                str(local_agent.pki.dir), "--passphrase-file",
                str(local_agent.passphrase_file), "--json")
    assert r.code == 0, r.err
    assert r.json["caller_name"] == "laptop"
