"""Every bench/ script runs end to end (tiny sizes) and prints the JSON document its write-up
in docs/benchmarks.md is made from: the proof of a target must not rot unseen.

The sizes here are far too small for the ratios to mean anything, so whether a target is met
is not judged; what is: each script reports the targets it is meant to check (by name), and
exits 0 exactly when all of them are met, 1 when one is missed (agent_footprint is run with
one target it cannot meet to prove the 1). A crash, a usage error or a malformed report
fails. The heavier scripts are marked slow.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
import os
from typing import Any, Dict, List, Optional, Sequence

import pytest

REPO = Path(__file__).resolve().parent.parent


def run_bench(script: str, *args: str, timeout: float = 300,
              checks: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run ``script --json``; ``checks``: the names of the targets it must report, in order
    (None: at least one). Its exit status must say whether all were met."""
    proc = subprocess.run([sys.executable, str(REPO / "bench" / script), *args, "--json"],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert proc.returncode in (0, 1), (
        f"{script} exited {proc.returncode}\nstdout:\n{proc.stdout[-2000:]}\n"
        f"stderr:\n{proc.stderr[-4000:]}")
    report = json.loads(proc.stdout)
    reported: List[Dict[str, Any]] = report["checks"]
    names = [check["name"] for check in reported]
    if checks is None:
        assert names, f"{script} reported no target"
    else:
        assert names == list(checks), names
    for check in reported:
        assert set(check) >= {"name", "value", "target", "met"}, check
        assert isinstance(check["met"], bool)
        assert isinstance(check["value"], (int, float)), check
    assert proc.returncode == (0 if all(c["met"] for c in reported) else 1), (proc.returncode,
                                                                             reported)
    assert report["machine"]["nproc"] >= 1
    return report


def test_upload_throughput_without_sftp() -> None:
    report = run_bench("upload_throughput.py", "--mib", "2", "--repeat", "2", "--no-sftp",
                       checks=["edgetune / TLS socket", "edgetune / TLS socket + sha256"])
    assert set(report["mib_per_s"]) == {"edgetune", "tls_socket", "tls_socket_sha256",
                                        "tls_socket_sha256_thread"}
    assert all(v > 0 for v in report["mib_per_s"].values())
    assert report["ratio_vs_sftp"] is None


def test_upload_throughput_with_sftp() -> None:
    from bench.sshd import find_sshd

    if find_sshd() is None:
        pytest.skip("no OpenSSH sshd here (.ci/run installs openssh-server)")
    report = run_bench("upload_throughput.py", "--mib", "1", "--repeat", "1",
                       checks=["edgetune / TLS socket", "edgetune / TLS socket + sha256",
                               "edgetune / SFTP"])
    assert report["mib_per_s"]["sftp"] > 0


def test_upload_pipeline() -> None:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    # one core has nothing to overlap: the script then reports the numbers and no target
    expected = ["background / inline hash"] if (cores or 1) >= 2 else []
    report = run_bench("upload_pipeline.py", "--mib", "4", "--repeat", "1", checks=expected)
    assert set(report["mib_per_s"]) == {"background_hash", "inline_hash"}
    assert report["ratio_background_vs_inline"] > 0


def test_request_overhead() -> None:
    report = run_bench("request_overhead.py", "--requests", "3", "--iterations", "2",
                       "--warmup", "1", checks=["median overhead ms"])
    assert report["checks"][0]["value"] > 0


def test_timing_fidelity() -> None:
    report = run_bench("timing_fidelity.py", "--model", "tiny_cnn", "--rounds", "2",
                       "--iterations", "5", "--warmup", "1",
                       checks=["|agent/in-process p50 - 1| (median of rounds)"])
    assert report["checks"][0]["value"] > 0


@pytest.mark.slow
def test_plugin_overhead() -> None:
    report = run_bench("plugin_overhead.py", "--model", "tiny_cnn", "--rounds", "2",
                       "--iterations", "5", "--warmup", "1",
                       checks=["plug-in p50 / in-process p50 (median of rounds)"])
    assert report["checks"][0]["value"] > 0 and len(report["rounds"]) == 2
    assert [r["plugin_first"] for r in report["rounds"]] == [False, True]


def test_agent_footprint() -> None:
    # report only unless given targets: here one no agent can meet and one any agent meets,
    # so the script must report both and exit 1 for the missed one
    report = run_bench("agent_footprint.py", "--starts", "1", "--idle-s", "0.2",
                       "--max-rss-mb", "0.001", "--max-start-s", "600",
                       checks=["agent idle RSS MiB", "agent start to SERVING s"])
    assert [c["met"] for c in report["checks"]] == [False, True]
    assert report["median"]["agent"]["idle_rss_mb"] > 0


def test_digits_accuracy() -> None:
    run_bench("digits_accuracy.py", checks=["held-out samples lost", "size ratio int8/fp32"])


@pytest.mark.slow
@pytest.mark.parametrize("script,args", [
    ("fallback_strategies.py", ["--repeat", "1"]),
    ("int8_latency.py", ["--models", "mobilenetv2", "--iters", "5", "--calib", "2"]),
    ("quantize_speed.py", ["--model", "mobilenetv2", "--samples", "2", "--repeat", "1"]),
    ("calib_memory.py", ["--model", "mobilenetv2", "--samples", "4", "--methods", "percentile"]),
])
def test_quantization_benches(script: str, args: List[str]) -> None:
    assert run_bench(script, *args, timeout=600)["checks"]


def test_compare_targets() -> None:
    report = run_bench("compare_targets.py", "--runs", "2", "--rounds", "2", "--iterations", "20",
                       "--repeat", "1",
                       checks=["compare time / (two benches + rounds' measured time)",
                               "self-comparisons within noise (of runs)",
                               "20%-slower copy significant and slower (of runs)"])
    assert report["cost"]["ratio"] > 0 and len(report["self"]["ratios"]) == 2


def test_recording_overhead() -> None:
    report = run_bench("recording_overhead.py", "--rounds", "2", "--iterations", "3",
                       checks=["recording overhead ms per result (median)"])
    assert report["records_kept"] == 3                # the warm-up run and one per round
    assert report["median_ms"]["in_recording_code"] > 0


def test_results_scale() -> None:
    report = run_bench("results_scale.py", "--records", "400", "--rounds", "1",
                       checks=["results list --limit 50 s (subprocess)",
                               "filtered results export csv s (subprocess)"])
    assert report["exported_rows"] == 100             # --device board1: one in four
    assert report["median_s"]["list_raw_sql"] > 0


@pytest.mark.slow
def test_fleet_status_scale() -> None:
    # 4 live agents in one process, one black hole and one closed port: every row checked
    report = run_bench("fleet_status_scale.py", "--boards", "6", "--unreachable", "2",
                       "--processes", "1", "--runs", "1",
                       checks=["fleet status wall s (median of runs)", "wrong rows over all runs"])
    assert report["checks"][1]["value"] == 0, report["problems"]
    assert report["unreachable"] == {"black_holes": ["board001"], "closed_ports": ["board004"]}
    assert report["wall_s_per_run"][0] > 0


@pytest.mark.slow
def test_upload_links() -> None:
    from bench.netlab import cgroup_unavailable, netns_unavailable
    from bench.sshd import find_sshd

    reason = netns_unavailable() or cgroup_unavailable()
    if reason:
        # the script must say why and skip, not fail
        report = run_bench("upload_links.py", "--no-sftp", checks=[])
        assert report["skipped"]
        pytest.skip(reason)
    sftp = find_sshd() is not None
    report = run_bench("upload_links.py", "--mib", "2", "--mib-slow", "1", "--repeat", "1",
                       *([] if sftp else ["--no-sftp"]), timeout=600,
                       checks=["100mbit: edgetune / TLS socket"]
                       + (["100mbit: edgetune / SFTP"] if sftp else [])
                       + ["1gbit: edgetune / TLS socket"]
                       + (["1gbit: edgetune / SFTP"] if sftp else [])
                       + ["1gbit-weak: edgetune / TLS socket + sha256"])
    weak = report["links"]["1gbit-weak"]
    assert weak["weak_board"]["cpu_max"] == "25000 100000"
    assert report["links"]["100mbit"]["weak_board"] is None
    for link in report["links"].values():
        assert all(v > 0 for v in link["mib_per_s"].values())


def test_sample_int8_speed() -> None:
    report = run_bench("sample_int8_speed.py", "--iters", "10", "--rounds", "2",
                       checks=["FP32 p50 / INT8 p50 (1 thread)", "held-out samples lost"])
    assert report["fp32_p50_ms"] > 0 and report["int8_p50_ms"] > 0
    assert report["top1"]["samples"] == 450


@pytest.mark.slow
def test_fleet_bench_scale() -> None:
    report = run_bench("fleet_bench_scale.py", "--boards", "3", "--processes", "1",
                       "--job-s", "0.5", "--runs", "1",
                       checks=["control-plane s (wall - slowest board's job, median of runs)",
                               "wrong rows over all runs"])
    run = report["runs"][0]
    assert run["problems"] == [], run
    assert run["slowest_job_s"] >= 0.5 and run["host_rss_mb"] > 0 and run["host_cpu_s"] > 0


@pytest.mark.slow
def test_fleet_upload() -> None:
    from bench.netlab import netns_unavailable

    if netns_unavailable():
        report = run_bench("fleet_upload.py", checks=[])
        assert report["skipped"]
        pytest.skip(report["skipped"])
    report = run_bench("fleet_upload.py", "--boards", "2", "--mib", "2", "--rounds", "1",
                       "--processes", "1", timeout=600,
                       checks=["fleet upload / one connection (median of rounds)",
                               "wrong rows over all rounds"])
    r = report["rounds"][0]
    assert r["problems"] == [], r
    assert r["one_connection_s"] > 0 and r["host_file_passes"] > 0


@pytest.mark.slow
def test_demo_time() -> None:
    report = run_bench("demo_time.py", "--repeat", "1", "--trials", "2", timeout=900,
                       checks=["edgetune demo wall time s (worst run)"])
    assert report["demo"]["runs"][0]["int8_speedup"] > 0 and report["quick"]["max_s"] > 0


@pytest.mark.slow
def test_tune_efficiency() -> None:
    report = run_bench("tune_efficiency.py", "--seeds", "1", "--size", "32", "--budget", "0.1",
                       timeout=1200,
                       checks=["tuner gap to exhaustive best (median of seeds)",
                               "evaluations per study / configurations (most)",
                               "tuner gap - random search gap (medians)",
                               "host overhead per trial s (median)"])
    assert report["configurations"] >= 48 and report["host_overhead_s"]["trials"] > 0


@pytest.mark.slow
def test_tune_busy() -> None:
    report = run_bench("tune_busy.py", "--agents", "2", "--trials", "4", "--size", "32",
                       timeout=900, checks=["mean busy share of the boards after the first trial"])
    assert set(report["busy_share"]) == {"board0", "board1"}
    assert set(report["gap_between_jobs_s"]) >= {"median", "p90", "count"}
