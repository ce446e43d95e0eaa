"""Every bench/ script runs end to end (tiny sizes) and prints the JSON document its write-up
in docs/benchmarks.md is made from: the proof of a target must not rot unseen.

The sizes here are far too small for the ratios to mean anything, so the targets are not
judged (exit 0 or 1 are both fine: 1 only says a target was missed); a crash, a usage error
or a malformed report fails. The heavier scripts are marked slow.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest

REPO = Path(__file__).resolve().parent.parent


def run_bench(script: str, *args: str, timeout: float = 300) -> Dict[str, Any]:
    proc = subprocess.run([sys.executable, str(REPO / "bench" / script), *args, "--json"],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert proc.returncode in (0, 1), (
        f"{script} exited {proc.returncode}\nstdout:\n{proc.stdout[-2000:]}\n"
        f"stderr:\n{proc.stderr[-4000:]}")
    report = json.loads(proc.stdout)
    checks: List[Dict[str, Any]] = report.get("checks", [])
    for check in checks:
        assert set(check) >= {"name", "value", "target", "met"}, check
        assert isinstance(check["met"], bool)
        assert isinstance(check["value"], (int, float)), check
    assert (proc.returncode == 0) == all(c["met"] for c in checks), (proc.returncode, checks)
    assert report["machine"]["nproc"] >= 1
    return report


def test_upload_throughput_without_sftp() -> None:
    report = run_bench("upload_throughput.py", "--mib", "2", "--repeat", "2", "--no-sftp")
    assert set(report["mib_per_s"]) == {"edgetune", "tls_socket", "tls_socket_sha256",
                                        "tls_socket_sha256_thread"}
    assert all(v > 0 for v in report["mib_per_s"].values())
    assert report["ratio_vs_sftp"] is None
    assert [c["name"] for c in report["checks"]] == ["edgetune / TLS socket"]


def test_upload_throughput_with_sftp() -> None:
    from bench.sshd import find_sshd

    if find_sshd() is None:
        pytest.skip("no OpenSSH sshd here (.ci/run installs openssh-server)")
    report = run_bench("upload_throughput.py", "--mib", "1", "--repeat", "1")
    assert report["mib_per_s"]["sftp"] > 0
    assert [c["name"] for c in report["checks"]] == ["edgetune / TLS socket",
                                                     "edgetune / SFTP"]


def test_upload_pipeline() -> None:
    report = run_bench("upload_pipeline.py", "--mib", "4", "--repeat", "1")
    assert set(report["mib_per_s"]) == {"background_hash", "inline_hash"}
    assert report["ratio_background_vs_inline"] > 0


def test_request_overhead() -> None:
    report = run_bench("request_overhead.py", "--requests", "3", "--iterations", "2",
                       "--warmup", "1")
    assert report["checks"] and report["checks"][0]["value"] > 0


def test_timing_fidelity() -> None:
    report = run_bench("timing_fidelity.py", "--model", "tiny_cnn", "--rounds", "2",
                       "--iterations", "5", "--warmup", "1")
    assert report["checks"] and report["checks"][0]["value"] > 0


def test_agent_footprint() -> None:
    report = run_bench("agent_footprint.py", "--starts", "1", "--idle-s", "0.2")
    assert report["checks"] == []          # report only: no target


def test_digits_accuracy() -> None:
    report = run_bench("digits_accuracy.py")
    assert len(report["checks"]) >= 2


@pytest.mark.slow
@pytest.mark.parametrize("script,args", [
    ("fallback_strategies.py", ["--repeat", "1"]),
    ("int8_latency.py", ["--models", "mobilenetv2", "--iters", "5", "--calib", "2"]),
    ("quantize_speed.py", ["--model", "mobilenetv2", "--samples", "2", "--repeat", "1"]),
    ("calib_memory.py", ["--model", "mobilenetv2", "--samples", "4", "--methods", "percentile"]),
])
def test_quantization_benches(script: str, args: List[str]) -> None:
    assert run_bench(script, *args, timeout=600)["checks"]
