"""``edgetune demo`` end to end: throw-away PKI, local agent subprocess, INT8 quantization;
``--quick``: bench and eval of both models, the FP32 vs INT8 comparison; the default: a tuning
study on the agent and the FP32 / default INT8 / tuned comparison in interleaved rounds;
Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from edgetune.host.errors import ExitStatus
from tests.host_fixtures import run_cli


SAMPLES = Path(__file__).resolve().parents[1] / "host" / "samples"


def test_demo_json(capsys: pytest.CaptureFixture, tmp_path: Path,
                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))     # where the throw-away dir goes
    r = run_cli(capsys, "demo", "--quick", "--json")
    assert r.code == 0, r.err
    doc = r.json
    assert doc["key_type"] == "ecdsa-p256" and doc["kept"] is None
    assert doc["info"]["agent_name"] == "demo-board" and doc["info"]["caller_name"] == "host"
    models = doc["models"]
    assert models["fp32"]["size_bytes"] == (SAMPLES / "digits_cnn.onnx").stat().st_size
    assert models["int8"]["file"] == "digits_cnn.int8.onnx"
    assert models["int8"]["sha256"] != models["fp32"]["sha256"]
    quant = models["int8"]["quantize"]
    assert (quant["method"], quant["act_type"], quant["weight_type"], quant["per_channel"]) == \
        ("minmax", "uint8", "int8", True)                       # edgetune quantize's defaults
    assert quant["calib"] == "digits_calib.npz" and quant["int8_nodes"] > 0

    fp32_bench, int8_bench = doc["bench"]["results"]
    fp32_eval, int8_eval = doc["eval"]["results"]
    for precision, bench, evaluation in (("fp32", fp32_bench, fp32_eval),
                                         ("int8", int8_bench, int8_eval)):
        assert bench["sha256"] == evaluation["sha256"] == models[precision]["sha256"]
        assert bench["iterations"] == 5000 and bench["latency_ms"]["p50"] > 0
        assert evaluation["samples"] == 450 and evaluation["metrics"]["top1"] >= 0.97
    assert fp32_bench["options"] == int8_bench["options"]       # the same benchmark for both
    assert fp32_bench["options"]["intra_op_threads"] == 1
    assert fp32_eval["metrics"]["cosine"] == pytest.approx(1.0, abs=1e-5)

    c = doc["comparison"]
    assert c["size_bytes"]["ratio"] <= 0.35
    assert c["cosine"]["int8"] >= 0.99
    # Every change is computed from the two records.
    sizes = (models["fp32"]["size_bytes"], models["int8"]["size_bytes"])
    assert (c["size_bytes"]["fp32"], c["size_bytes"]["int8"]) == sizes
    assert c["size_bytes"]["ratio"] == pytest.approx(sizes[1] / sizes[0])
    top1 = (fp32_eval["metrics"]["top1"], int8_eval["metrics"]["top1"])
    assert (c["top1"]["fp32"], c["top1"]["int8"]) == top1
    assert c["top1"]["points"] == pytest.approx(100 * (top1[1] - top1[0]))
    cosine = (fp32_eval["metrics"]["cosine"], int8_eval["metrics"]["cosine"])
    assert (c["cosine"]["fp32"], c["cosine"]["int8"]) == cosine
    assert c["cosine"]["delta"] == pytest.approx(cosine[1] - cosine[0])
    p50 = (fp32_bench["latency_ms"]["p50"], int8_bench["latency_ms"]["p50"])
    assert (c["p50_ms"]["fp32"], c["p50_ms"]["int8"]) == p50
    assert c["p50_ms"]["ratio"] == pytest.approx(p50[1] / p50[0])
    ips = (fp32_bench["throughput_ips"], int8_bench["throughput_ips"])
    assert (c["throughput_ips"]["fp32"], c["throughput_ips"]["int8"]) == ips
    assert c["throughput_ips"]["ratio"] == pytest.approx(ips[1] / ips[0])
    assert f"p50 {c['p50_ms']['ratio']:.2f}x" in c["note"] and "tiny" in c["note"]
    assert list(tmp_path.iterdir()) == []                       # the temp dir is gone

    # Every board result is kept in the results database, as one demo run.
    from edgetune.host.results.store import ResultsStore
    ids = [r["result_id"] for r in (fp32_bench, int8_bench, fp32_eval, int8_eval)]
    assert all(ids) and len(set(ids)) == 4 and doc["results_db"]
    with ResultsStore.open(os.environ["EDGETUNE_DB"]) as store:
        records = [store.get(i) for i in ids]
    assert {r.label for r in records} == {"demo"} and len({r.run_id for r in records}) == 1
    assert [r.kind for r in records] == ["bench", "bench", "eval", "eval"]
    assert records[1].model.parent_sha256 == models["fp32"]["sha256"]
    assert records[0].metrics["latency_ms"] == fp32_bench["latency_ms"]


def test_demo_no_record(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    db = tmp_path / "never.db"
    r = run_cli(capsys, "demo", "--quick", "--json", "--db", str(db), "--no-record")
    assert r.code == 0, r.err
    assert r.json["results_db"] is None and r.json["bench"]["results"][0]["result_id"] is None
    assert not db.exists()


def _table_rows(out: str) -> Dict[str, List[str]]:
    """The demo's Markdown table: its cells by the first one (the header under "")."""
    rows = {}
    for line in out.splitlines():
        if line.startswith("|") and not line.startswith("|-"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def test_demo_keep_prints_the_comparison_and_writes_a_usable_inventory(
        capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    keep = tmp_path / "demo"
    r = run_cli(capsys, "demo", "--quick", "--keep", str(keep))
    assert r.code == 0, r.err
    rows = _table_rows(r.out)
    assert rows[""] == ["FP32", "INT8", "change"]
    assert set(rows) == {"", "size (KiB)", "top-1 accuracy", "fidelity: cosine vs FP32 reference",
                         "p50 latency (ms)", "throughput (inf/s)"}
    assert all(len(cells) == 3 for cells in rows.values())
    fp32_kib, int8_kib, change = rows["size (KiB)"]
    assert fp32_kib == f"{(SAMPLES / 'digits_cnn.onnx').stat().st_size / 1024:.1f}"
    assert int8_kib == f"{(keep / 'digits_cnn.int8.onnx').stat().st_size / 1024:.1f}"
    assert re.fullmatch(r"0\.\d\dx \(-\d\d%\)", change), change
    assert re.fullmatch(r"[+-]\d+\.\d\d pts", rows["top-1 accuracy"][2])
    assert re.fullmatch(r"\d+\.\d\dx \([+-]\d+%\)", rows["p50 latency (ms)"][2])
    assert re.search(r"^\|-+\|-+:\|-+:\|-+:\|$", r.out, re.M)     # numbers right-aligned
    assert "Note: INT8 " in r.out and "quantize/dequantize" in r.out
    # The INT8 model and its record stay with the rest.
    assert (keep / "digits_cnn.int8.onnx").is_file()
    assert (keep / "digits_cnn.int8.record.json").is_file()
    assert (keep / "pki" / "host-key.pem").is_file() and (keep / "store").is_dir()
    assert (keep / "pki" / "passphrase").stat().st_mode & 0o077 == 0
    assert b"ENCRYPTED" in (keep / "pki" / "host-key.pem").read_bytes()
    from edgetune.host.inventory import load_inventory
    inventory = load_inventory(keep / "edgetune.toml")
    assert inventory.host is not None and inventory.host.cert.is_file()
    assert inventory.device("demo").address.startswith("127.0.0.1:")
    again = run_cli(capsys, "demo", "--quick", "--keep", str(keep))
    assert again.code == ExitStatus.USAGE and "new or empty directory" in again.err


def _records(p50: Tuple[float, float]) -> Tuple[List[Any], List[Any]]:
    """Typed bench and eval results (FP32, INT8) as BoardSession returns them."""
    from edgetune.host.board import BenchmarkRun, BoardInfo, EvaluationRun
    from edgetune.protos.messages import (BenchmarkResult, BenchmarkSpec, EvaluateResult,
                                          EvaluateSpec, JobState, LatencyStats)
    board = BoardInfo("b", "127.0.0.1:1")
    bench = [BenchmarkRun("j", "m", "", board, BenchmarkSpec(model_sha256=""), JobState.SUCCEEDED,
                          BenchmarkResult(latency=LatencyStats(v, v, 0, v, v, v, v, v),
                                          throughput_ips=1 / v, load_ms=0, first_run_ms=0,
                                          peak_rss_mb=0, iterations=1, warmup=0, measured_s=0))
             for v in p50]
    evaluation = [EvaluationRun("j", "m", "", board, EvaluateSpec(model_sha256="", dataset_sha256=""),
                                JobState.SUCCEEDED,
                                EvaluateResult(samples=1, metrics=(("cosine", c), ("top1", t))))
                  for t, c in ((0.99, 1.0), (0.98, 0.995))]
    return bench, evaluation


@pytest.mark.parametrize("p50, verdict", [
    ((0.010, 0.013), "INT8 is slower than FP32 here (p50 1.30x FP32's)"),
    ((0.010, 0.0098), "INT8 runs about as fast as FP32 here (p50 0.98x FP32's)"),
    ((0.010, 0.009999), "INT8 runs about as fast as FP32 here (p50 1.00x FP32's)"),
    ((0.010, 0.005), "INT8 is faster than FP32 here (p50 0.50x FP32's)"),
])
def test_comparison_rows_and_the_latency_note_follow_the_numbers(
        p50: Tuple[float, float], verdict: str) -> None:
    from edgetune.host.cli.demo_cmd import comparison, comparison_rows
    bench, evaluation = _records(p50)
    c = comparison((1000, 250), bench, evaluation)
    assert c["note"].startswith(verdict)
    rows = {row[0]: row[1:] for row in comparison_rows(c)}
    assert rows["size (KiB)"] == ("1.0", "0.2", "0.25x (-75%)")
    assert rows["top-1 accuracy"] == ("99.00%", "98.00%", "-1.00 pts")
    assert rows["fidelity: cosine vs FP32 reference"] == ("1.0000", "0.9950", "-0.0050")
    ratio = p50[1] / p50[0]
    percent = round(100 * (ratio - 1)) or 0       # a change that rounds to 0 shows as +0%
    assert rows["p50 latency (ms)"][2] == f"{ratio:.2f}x ({percent:+d}%)"
    percent = round(100 * (1 / ratio - 1)) or 0
    assert rows["throughput (inf/s)"][2] == f"{1 / ratio:.2f}x ({percent:+d}%)"


def test_markdown_table_aligns_numbers_right() -> None:
    from edgetune.host.render import markdown_table
    text = markdown_table(("", "FP32", "INT8"), [("size (KiB)", "351.2", "97.5")])
    assert text.splitlines() == ["|            |  FP32 | INT8 |",
                                 "|------------|------:|-----:|",
                                 "| size (KiB) | 351.2 | 97.5 |"]


# ---------------------------------------------------------------------- Ctrl-C

def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _processes_mentioning(text: str) -> List[int]:
    """PIDs of live processes whose command line contains ``text`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and _alive(int(entry.name)):
            found.append(int(entry.name))
    return found


class DemoProcess:
    """``python -m edgetune.host demo ARGS`` in its own session (so a test can signal its whole process
    group, as a terminal's Ctrl-C does), with TMPDIR in ``tmp``."""

    def __init__(self, tmp: Path, args: Tuple[str, ...] = ("--quick",)) -> None:
        self.tmp = tmp
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgetune.host", "demo", *args], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "TMPDIR": str(tmp)})
        self.agent_pid = 0

    def wait_for(self, moment: str) -> Path:
        """Read progress lines until one contains ``moment``; the demo's directory."""
        assert self.proc.stderr is not None
        seen: List[str] = []
        for line in self.proc.stderr:       # plain progress lines (stderr is not a terminal)
            seen.append(line)
            if moment in line:
                break
        agent_lines = [s for s in seen if s.startswith("demo: local agent (pid")]
        assert agent_lines and moment in seen[-1], "".join(seen) + self.proc.communicate()[1]
        match = re.search(r"\(pid (\d+)\)", agent_lines[0])
        assert match
        self.agent_pid = int(match.group(1))
        assert _alive(self.agent_pid)
        workdirs = list(self.tmp.glob("edgetune-demo-*"))
        assert len(workdirs) == 1 and (workdirs[0] / "pki").is_dir()
        return workdirs[0]

    def kill(self) -> None:
        """At the end of a test: whatever of its process group is left (a failed test's)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def assert_cleaned_up(self, workdir: Path, err: str) -> None:
        assert not _alive(self.agent_pid), f"the demo's agent (pid {self.agent_pid}) still runs"
        assert _processes_mentioning(str(self.tmp)) == []
        left = [p.name for p in self.tmp.iterdir() if p.name.startswith("edgetune-")]
        assert left == []                   # the demo's directory and the agent's are gone
        assert f"its local agent (pid {self.agent_pid}) was stopped" in err, err
        assert f"its throw-away PKI, store and INT8 model ({workdir}) were removed" in err, err
        assert "Traceback" not in err, err


@pytest.fixture()
def demo_tmp(tmp_path: Path) -> Path:
    if not Path("/proc/self/stat").is_file():
        pytest.skip("needs Linux /proc to look for left-over agent processes")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    return tmp


@pytest.mark.parametrize("moment, whole_group", [
    ("demo: local agent (pid", False),      # just after the agent started: SIGINT to the CLI
    ("demo: quantizing", True),             # while quantizing, as a terminal's Ctrl-C: the group
    ("(FP32 benchmark): running", True),    # mid-benchmark
])
def test_ctrl_c_stops_the_demo_agent_and_removes_its_directory(
        demo_tmp: Path, moment: str, whole_group: bool) -> None:
    demo = DemoProcess(demo_tmp)
    try:
        workdir = demo.wait_for(moment)
        if whole_group:
            os.killpg(demo.proc.pid, signal.SIGINT)
        else:
            demo.proc.send_signal(signal.SIGINT)
        _, err = demo.proc.communicate(timeout=30)
        assert demo.proc.returncode == ExitStatus.INTERRUPTED, err
        assert "edgetune: interrupted" in err, err
        if moment == "demo: quantizing":    # it did land while quantizing (~1 s of work)
            assert "nodes int8, in" not in err, err
        demo.assert_cleaned_up(workdir, err)
    finally:
        demo.kill()


def test_repeated_ctrl_c_still_stops_the_agent_and_removes_the_directory(demo_tmp: Path) -> None:
    """Ctrl-C pressed again and again (to the CLI only: the agent gets no SIGINT of its own)
    must not cut the clean-up short: the agent stopped, the directory gone."""
    demo = DemoProcess(demo_tmp)
    try:
        workdir = demo.wait_for("(FP32 benchmark): running")
        deadline = time.monotonic() + 30
        while demo.proc.poll() is None and time.monotonic() < deadline:
            demo.proc.send_signal(signal.SIGINT)
            time.sleep(0.01)
        _, err = demo.proc.communicate(timeout=30)
        # The last presses may land after the message, as the command exits: killed by SIGINT.
        assert demo.proc.returncode in (ExitStatus.INTERRUPTED, -signal.SIGINT), err
        demo.assert_cleaned_up(workdir, err.split("Traceback")[0])
    finally:
        demo.kill()


# --- the default demo: the loop with a tuning study ----------------------------------------

def test_trials_belong_to_the_tuning_demo(capsys: pytest.CaptureFixture) -> None:
    r = run_cli(capsys, "demo", "--quick", "--trials", "3")
    assert r.code == ExitStatus.USAGE and "--trials is for the tuning study" in r.err
    r = run_cli(capsys, "demo", "--trials", "0")
    assert r.code == ExitStatus.USAGE and "--trials must be between 1 and 1000" in r.err


@pytest.mark.slow
def test_demo_loop_json_tunes_compares_and_records(
        capsys: pytest.CaptureFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    db = tmp_path / "results.db"
    r = run_cli(capsys, "demo", "--json", "--trials", "3", "--db", str(db))
    assert r.code == 0, r.err
    doc = r.json
    study = doc["study"]
    assert study["study"].startswith("demo-") and sum(study["trials"].values()) == 3
    # the default INT8 the demo made is the study's baseline (made once, same file)
    int8 = doc["models"]["int8_default"]
    assert int8["quantize"]["method"] == "minmax" and int8["quantize"]["per_channel"] is True
    assert study["baselines"]["int8_default"]["model_sha256"] == int8["sha256"]
    assert doc["models"]["fp32"]["size_bytes"] == (SAMPLES / "digits32_cnn.onnx").stat().st_size
    c = doc["comparison"]
    assert c["rounds"] == {"fp32": 5, "int8_default": 5, "tuned": 5}
    # the sample exists because INT8 pays off on it: measured in the interleaved rounds
    assert c["speedup_vs_fp32"]["int8_default"]["speedup"] > 1.5
    assert c["speedup_vs_fp32"]["tuned"]["speedup"] > 1.5
    low, high = c["tuned_vs_int8_default"]["ci"]
    assert low <= c["tuned_vs_int8_default"]["speedup"] <= high
    assert all(v >= 0.97 for v in c["accuracy"].values())
    assert c["accuracy"]["tuned"] >= c["accuracy"]["fp32"] - 0.01      # --max-drop 1 pt
    assert doc["summary"] == study["summary"] and "FP32" in doc["summary"]
    assert doc["results_db"] and list(tmp_path.glob("edgetune-demo-*")) == []
    # every trial and every round is a record of the study's run; the study can be shown
    from edgetune.host.results.store import ResultsStore
    with ResultsStore.open(str(db)) as store:
        ids = study["baselines"]["fp32"]["result_ids"] + study["best"]["final_result_ids"]
        records = [store.get(i) for i in ids]
    assert all(rec is not None and rec.run_id == study["run_id"] for rec in records)
    shown = run_cli(capsys, "tune", "show", study["study"], "--db", str(db), "--json")
    assert shown.code == 0, shown.err
    assert shown.json["study"] == study["study"]


@pytest.mark.slow
def test_demo_loop_prints_the_closing_table(capsys: pytest.CaptureFixture,
                                            tmp_path: Path) -> None:
    keep = tmp_path / "loop"
    r = run_cli(capsys, "demo", "--trials", "2", "--keep", str(keep), "--no-record")
    assert r.code == 0, r.err
    rows = _table_rows(r.out)
    assert rows[""] == ["FP32", "default INT8", "tuned", "tuned vs default INT8"]
    assert rows["size (KiB)"][0] == \
        f"{(SAMPLES / 'digits32_cnn.onnx').stat().st_size / 1024:.1f}"
    speed = rows["speed-up (95% CI)"]
    assert speed[0] == "1.00x"
    for cell in speed[1:]:
        assert re.fullmatch(r"\d+\.\d\dx \(\d+\.\d\d-\d+\.\d\d\)", cell), cell
    assert re.fullmatch(r"\d+\.\d\d%", rows["top-1 accuracy"][2])
    assert "tuning" in r.out and "95% confidence interval" in r.out
    assert "results kept" not in r.out                       # --no-record
    assert list(keep.glob("variants/*.onnx")) and (keep / "pki" / "passphrase").is_file()
    assert not (keep / "demo-results.db").exists()            # the throw-away study database


@pytest.mark.slow
def test_ctrl_c_during_the_study_stops_the_agent_and_removes_its_directory(
        demo_tmp: Path) -> None:
    demo = DemoProcess(demo_tmp, ())
    try:
        workdir = demo.wait_for("demo: 2. tuning study")
        os.killpg(demo.proc.pid, signal.SIGINT)
        _, err = demo.proc.communicate(timeout=60)
        assert demo.proc.returncode == ExitStatus.INTERRUPTED, err
        assert "edgetune: interrupted" in err, err
        demo.assert_cleaned_up(workdir, err)
    finally:
        demo.kill()
