"""Execution providers as the board has them (issue 14, section 1): provider options, where each
node ran, the onnxruntime distribution and build, and which providers really work.

The board side is checked directly (device/providers.py with the real onnxruntime) and through
a real agent over mutual TLS (``local_agent``). onnxruntime's PyPI build here lists
AzureExecutionProvider before the CPU: a session that asks for Azure first runs every node on
the CPU, a real partial fallback, which the results must show.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from edgetune.device import providers
from edgetune.device.errors import InvalidArgument
from edgetune.protos.messages import BenchmarkSpec, SessionOptions, pb
from tests.host_fixtures import (DIGITS_MODEL, DIGITS_TEST, ONE_DIGIT, RunningAgent,  # noqa: F401
                                 local_agent, run_cli)

CPU = "CPUExecutionProvider"
CPU_OPTION = f"{CPU}:arena_extend_strategy=kSameAsRequested"


def test_the_first_run_says_where_each_node_ran() -> None:
    import numpy as np

    placement = providers.Placement()
    session, _ = providers.create_session(DIGITS_MODEL, SessionOptions(), placement)
    session.run(None, {session.get_inputs()[0].name: np.zeros((1, 1, 8, 8), np.float32)})
    nodes = dict(placement.nodes(session))
    assert set(nodes) == {CPU} and nodes[CPU] >= 4
    assert not placement.folder                           # the trace is gone
    session.run(None, {session.get_inputs()[0].name: np.zeros((1, 1, 8, 8), np.float32)})


def test_counting_nodes_reads_kernel_events_only() -> None:
    events = [{"cat": "Session", "name": "model_run"},
              {"cat": "Node", "name": "conv1_kernel_time", "args": {"provider": "NpuEP"}},
              {"cat": "Node", "name": "conv1_fence_before", "args": {"provider": "NpuEP"}},
              {"cat": "Node", "name": "conv1_kernel_time", "args": {"provider": "NpuEP"}},
              {"cat": "Node", "name": "softmax_kernel_time", "args": {"provider": CPU}},
              "garbage", {"cat": "Node", "name": "x_kernel_time", "args": "not a dict"}]
    assert providers.count_nodes(events) == ((CPU, 1), ("NpuEP", 1))
    assert providers.count_nodes({"not": "a list"}) == ()


def test_options_for_a_provider_the_session_does_not_use_are_refused() -> None:
    options = SessionOptions(providers=(CPU,),
                             provider_options=(("CUDAExecutionProvider", (("device_id", "0"),)),))
    with pytest.raises(InvalidArgument, match="options for CUDAExecutionProvider.*does not use"):
        providers.session_providers(options, [CPU])
    with pytest.raises(InvalidArgument, match="NoSuchExecutionProvider not available"):
        providers.session_providers(SessionOptions(providers=("NoSuchExecutionProvider",)), [CPU])
    given = SessionOptions(provider_options=((CPU, (("a", "1"),)),))
    assert providers.session_providers(given, [CPU]) == [(CPU, {"a": "1"})]


def test_provider_checks_and_the_distribution() -> None:
    import onnxruntime

    works = providers.check_provider(CPU)
    assert works.usable and works.error == ""
    broken = providers.check_provider("NoSuchExecutionProvider")
    assert not broken.usable and broken.error
    assert providers.onnxruntime_distribution() == f"onnxruntime {onnxruntime.__version__}"
    assert providers.build_info()
    checks = providers.ProviderChecks().start()
    checks.wait(60)
    found = {c.provider: c for c in checks.results()}
    assert found[CPU].usable and set(found) == set(onnxruntime.get_available_providers())


def debian_system(root: Path, *, owned: bool = True, egg_info: bool = False) -> Path:
    """A Debian-like system under ``root``: an ``ortlike`` package in dist-packages (with an
    egg-info as Debian 13's python3-onnxruntime has, when ``egg_info``), and a dpkg database
    that lists its files under python3-ortlike when ``owned``, beside an unrelated package and
    another version of python3-ortlike for another architecture, not installed."""
    site = root / "usr/lib/python3/dist-packages"
    package = site / "ortlike"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    if egg_info:
        info = site / "ortlike-1.21.egg-info"
        info.mkdir()
        (info / "PKG-INFO").write_text("Metadata-Version: 2.2\nName: ortlike\nVersion: 1.21\n")
        (info / "top_level.txt").write_text("ortlike\n")
    admin = root / "var/lib/dpkg"
    (admin / "info").mkdir(parents=True)
    (admin / "info/coreutils.list").write_text("/.\n/usr/bin/ls\n")
    (admin / "info/libortlike1.21:riscv64.list").write_text("/.\n/usr/lib/libortlike.so.1\n")
    if owned:
        (admin / "info/python3-ortlike.list").write_text(
            f"/.\n/usr\n{package}\n{package / '__init__.py'}\n")
    (admin / "status").write_text(
        "Package: coreutils\nStatus: install ok installed\nArchitecture: riscv64\n"
        "Version: 9.7-3\n\n"
        "Package: python3-ortlike\nStatus: deinstall ok config-files\nArchitecture: arm64\n"
        "Version: 1.20.0-1\n\n"
        "Package: python3-ortlike\nStatus: install ok installed\nArchitecture: riscv64\n"
        "Version: 1.21.0+dfsg-1\nDescription: a runtime\n"
        " Version: 0.0 (a continuation line, not a field)\n")
    return package / "__init__.py"


def test_a_debian_package_is_named_from_dpkg(tmp_path: Path, monkeypatch: Any) -> None:
    """Debian's python3-onnxruntime: the Debian package owning the files is reported with its
    installed version (read from dpkg's database), beside the egg-info's plain name, which
    alone would read as PyPI's wheel; without Python metadata, the Debian package alone."""
    init_file = debian_system(tmp_path / "bare")
    admin = str(tmp_path / "bare/var/lib/dpkg")
    assert providers.dpkg_owner(str(init_file), admin) == ("python3-ortlike", "1.21.0+dfsg-1")
    assert providers.distribution_of(str(init_file), "ortlike", admin) == \
        "Debian package python3-ortlike 1.21.0+dfsg-1"

    init_file = debian_system(tmp_path / "egg", egg_info=True)
    monkeypatch.syspath_prepend(str(init_file.parent.parent))   # where metadata is searched
    assert providers.distribution_of(str(init_file), "ortlike",
                                     str(tmp_path / "egg/var/lib/dpkg")) == \
        "ortlike 1.21, Debian package python3-ortlike 1.21.0+dfsg-1"


def test_an_unowned_copy_or_no_dpkg_names_no_distribution(tmp_path: Path) -> None:
    """A copy no package owns, or a system without dpkg's database: nothing is guessed."""
    init_file = debian_system(tmp_path / "a", owned=False)
    assert providers.distribution_of(str(init_file), "ortlike",
                                     str(tmp_path / "a/var/lib/dpkg")) == ""
    init_file = debian_system(tmp_path / "b")
    assert providers.distribution_of(str(init_file), "ortlike", str(tmp_path / "none")) == ""


def test_a_pip_installed_onnxruntime_is_named_from_its_metadata_alone(tmp_path: Path) -> None:
    """PyPI's wheel, where a dpkg database exists but does not own it: just its name."""
    import onnxruntime

    debian_system(tmp_path)
    assert providers.onnxruntime_distribution(str(tmp_path / "var/lib/dpkg")) == \
        f"onnxruntime {onnxruntime.__version__}"


def test_info_reports_the_build_the_features_and_the_checks(capsys: Any,
                                                            local_agent: RunningAgent) -> None:
    deadline = time.monotonic() + 60
    while True:
        info = run_cli(capsys, "info", *local_agent.conn(), "--json")
        assert info.code == 0, info.err
        if info.json["provider_checks"] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    doc = info.json
    assert "provider_options" in doc["features"] and "provider_nodes" in doc["features"]
    assert doc["onnxruntime_distribution"] == f"onnxruntime {doc['onnxruntime_version']}"
    assert doc["onnxruntime_build_info"]
    checks = {c["provider"]: c for c in doc["provider_checks"]}
    assert checks[CPU]["usable"] is True
    table = run_cli(capsys, "info", *local_agent.conn())
    assert f"{CPU}: works" in table.out


def test_bench_and_eval_say_where_the_nodes_ran(capsys: Any, local_agent: RunningAgent) -> None:
    bench = run_cli(capsys, "bench", str(DIGITS_MODEL), "--shape", ONE_DIGIT, "--iterations",
                    "5", "--warmup", "1", "--provider-option", CPU_OPTION,
                    *local_agent.conn(), "--json", "--no-record")
    assert bench.code == 0, bench.err
    result = bench.json["results"][0]
    assert result["provider_nodes"][CPU] >= 4 and result["providers"] == [CPU]
    assert result["options"]["provider_options"] == {
        CPU: {"arena_extend_strategy": "kSameAsRequested"}}
    assert "note" not in result                           # everything ran where it was asked
    evaluation = run_cli(capsys, "eval", str(DIGITS_MODEL), "--dataset", str(DIGITS_TEST),
                         *local_agent.conn(), "--json", "--no-record")
    assert evaluation.code == 0, evaluation.err
    entry = evaluation.json["results"][0]
    assert entry["providers"] == [CPU] and entry["provider_nodes"][CPU] >= 4


def test_a_fallback_to_the_cpu_is_a_warning(capsys: Any, local_agent: RunningAgent) -> None:
    import onnxruntime

    first = "AzureExecutionProvider"
    if first not in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime build has no second provider to fall back from")
    bench = run_cli(capsys, "bench", str(DIGITS_MODEL), "--shape", ONE_DIGIT, "--iterations",
                    "5", "--warmup", "1", "--providers", f"{first},{CPU}",
                    *local_agent.conn(), "--no-record")
    assert bench.code == 0, bench.err
    assert f"nodes did not run on {first}" in bench.err and f"on {CPU}" in bench.err


def test_a_recorded_bench_keeps_where_the_nodes_ran(capsys: Any, local_agent: RunningAgent,
                                                    tmp_path: Path) -> None:
    db = str(tmp_path / "r.db")
    bench = run_cli(capsys, "bench", str(DIGITS_MODEL), "--shape", ONE_DIGIT, "--iterations",
                    "5", "--warmup", "1", "--provider-option", CPU_OPTION,
                    *local_agent.conn(), "--json", "--db", db)
    assert bench.code == 0, bench.err
    shown = run_cli(capsys, "results", "show", bench.json["results"][0]["result_id"],
                    "--db", db, "--json")
    record = shown.json["result"]
    assert record["metrics"]["provider_nodes"][CPU] >= 4
    assert record["options"]["provider_options"][CPU] == {
        "arena_extend_strategy": "kSameAsRequested"}


@pytest.mark.parametrize("flag,message", [
    ("arena_extend_strategy=x", "takes EP:KEY=VALUE"),
    (f"{CPU}:no_equals_sign", "takes EP:KEY=VALUE"),
    (":key=value", "takes EP:KEY=VALUE"),
    ("CUDAExecutionProvider:device_id=0", "which the session does not use"),
])
def test_bad_provider_options_are_usage_errors(capsys: Any, flag: str, message: str) -> None:
    r = run_cli(capsys, "bench", str(DIGITS_MODEL), "--address", "127.0.0.1:9",
                "--provider-option", flag)
    assert r.code == 2 and message in r.err


def test_a_provider_option_given_twice_is_refused(capsys: Any) -> None:
    r = run_cli(capsys, "bench", str(DIGITS_MODEL), "--address", "127.0.0.1:9",
                "--provider-option", f"{CPU}:a=1", "--provider-option", f"{CPU}:a=2")
    assert r.code == 2 and "twice" in r.err


def test_an_unknown_provider_fails_the_job_and_the_agent_serves_on(
        capsys: Any, local_agent: RunningAgent) -> None:
    r = run_cli(capsys, "bench", str(DIGITS_MODEL), "--shape", ONE_DIGIT, "--iterations", "3",
                "--providers", "NoSuchExecutionProvider", *local_agent.conn(), "--no-record")
    assert r.code != 0 and "NoSuchExecutionProvider not available" in r.err
    again = run_cli(capsys, "bench", str(DIGITS_MODEL), "--shape", ONE_DIGIT, "--iterations",
                    "3", *local_agent.conn(), "--no-record", "--json")
    assert again.code == 0, again.err


def test_the_agent_refuses_a_spec_with_fields_it_does_not_know(local_agent: RunningAgent) -> None:
    """A newer host's options must not be run without (the result would claim them)."""
    from edgetune.protos import agent_pb2_grpc
    from tests.agent_fixtures import channel

    spec = BenchmarkSpec(model_sha256="a" * 64, iterations=3).as_pb2()
    # Field 99 of the benchmark message, a varint: unknown to every version so far. Rebuild the
    # JobSpec by hand: tag of field 1 (benchmark), length, the benchmark's bytes + the field.
    inner = spec.SerializeToString() + bytes([0x98, 0x06, 0x01])       # (99 << 3) | 0, value 1
    raw = bytes([0x0A, len(inner)]) + inner
    request = pb.SubmitJobRequest(spec=pb.JobSpec.FromString(raw))
    identity = local_agent.pki.host.identity
    with channel(local_agent.address, identity) as ch:
        with pytest.raises(grpc.RpcError) as exc:
            agent_pb2_grpc.AgentStub(ch).SubmitJob(request, timeout=30)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "cannot read the request" in exc.value.details()
    assert "benchmark options it does not know" in exc.value.details()
    assert dict(exc.value.trailing_metadata() or ()).get("x-edgetune-incompatible")


def test_job_json_of_an_older_agent_still_reads() -> None:
    """Jobs recorded before these fields existed (no provider_nodes, no providers)."""
    from edgetune.protos.messages import BenchmarkResult, EvaluateResult, SessionOptions
    old = {"samples": 3, "metrics": {"top1": 1.0}, "load_ms": 1.0, "elapsed_s": 0.1}
    assert EvaluateResult.from_dict(old).provider_nodes == ()
    assert "providers" not in EvaluateResult.from_dict(old).as_dict()
    assert SessionOptions.from_dict(json.loads('{"providers": []}')).provider_options == ()
    assert "provider_options" not in SessionOptions().as_dict()
    assert "provider_nodes" not in BenchmarkResult.from_dict({
        "latency": dict.fromkeys(("min_ms", "mean_ms", "std_ms", "p50_ms", "p90_ms", "p95_ms",
                                  "p99_ms", "max_ms"), 1.0),
        "throughput_ips": 1.0, "load_ms": 1.0, "first_run_ms": 1.0, "peak_rss_mb": 1.0,
        "iterations": 1, "warmup": 1, "measured_s": 1.0}).as_dict()


# ---------------------------------------------------------------- per-operator profiles

def test_profile_counts_only_the_timed_runs() -> None:
    from edgetune.device.profile import node_times

    def run(ts: int) -> list:
        return [{"cat": "Session", "name": "model_run", "ts": ts, "dur": 100},
                {"cat": "Node", "name": "conv_kernel_time", "ts": ts + 10, "dur": 60,
                 "args": {"op_name": "Conv", "provider": CPU}},
                {"cat": "Node", "name": "relu_kernel_time", "ts": ts + 80, "dur": 20,
                 "args": {"op_name": "Relu", "provider": "NpuEP"}}]
    events = run(0) + run(1000) + run(2000) + [           # a warm-up run, then two timed
        {"cat": "Node", "name": "stray_kernel_time", "ts": 5000, "dur": 999,
         "args": {"op_name": "X", "provider": CPU}}]     # outside every run: not counted
    nodes = node_times(events, 2)
    assert [(n.name, n.calls, n.total_ms) for n in nodes] == [("conv", 2, 0.12),
                                                              ("relu", 2, 0.04)]
    assert nodes[1].provider == "NpuEP" and nodes[0].mean_ms == pytest.approx(0.06)
    assert node_times("garbage", 2) == () and node_times(events, 0) == ()


def test_bench_profile_on_the_board(capsys: Any, local_agent: RunningAgent) -> None:
    r = run_cli(capsys, "bench", str(DIGITS_MODEL), "--shape", ONE_DIGIT, "--iterations", "30",
                "--warmup", "2", "--profile", *local_agent.conn(), "--json", "--no-record")
    assert r.code == 0, r.err
    result = r.json["results"][0]
    profile = result["profile"]
    assert profile["iterations"] == 30 and profile["p50_ms"] == result["latency_ms"]["p50"]
    assert profile["profiled_p50_ms"] > 0 and profile["overhead"] is not None
    nodes = profile["nodes"]
    assert len(nodes) == result["provider_nodes"][CPU]             # every node, once
    assert all(n["calls"] == 30 and n["provider"] == CPU for n in nodes)
    assert [n["total_ms"] for n in nodes] == sorted((n["total_ms"] for n in nodes), reverse=True)
    assert {"Conv", "Gemm"} <= {n["op_type"] for n in nodes}
    assert sum(r["share"] for r in profile["by_op_type"]) == pytest.approx(1.0)
    assert profile["by_provider"] == [{"provider": CPU, "total_ms": pytest.approx(
        sum(n["total_ms"] for n in nodes)), "share": pytest.approx(1.0), "nodes": len(nodes)}]
    text = run_cli(capsys, "bench", str(DIGITS_MODEL), "--shape", ONE_DIGIT, "--iterations",
                   "10", "--profile", "--profile-top", "3", *local_agent.conn(), "--no-record")
    assert text.code == 0, text.err
    assert "slowest 3 of" in text.out and "time by op type" in text.out
    assert "profiled" in text.out and "measured" in text.out


def test_a_bench_without_profile_carries_none(capsys: Any, local_agent: RunningAgent) -> None:
    r = run_cli(capsys, "bench", str(DIGITS_MODEL), "--shape", ONE_DIGIT, "--iterations", "3",
                *local_agent.conn(), "--json", "--no-record")
    assert r.code == 0 and "profile" not in r.json["results"][0]
    bad = run_cli(capsys, "bench", str(DIGITS_MODEL), "--profile", "--profile-top", "0",
                  "--address", "127.0.0.1:9")
    assert bad.code == 2 and "--profile-top" in bad.err
