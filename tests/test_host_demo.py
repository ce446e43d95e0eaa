"""``edgetune demo`` end to end: throw-away PKI, local agent subprocess, bench and eval."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List

import pytest

from host.errors import ExitStatus
from tests.host_fixtures import run_cli


def test_demo_json(capsys: pytest.CaptureFixture, tmp_path: Path,
                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))     # where the throw-away dir goes
    r = run_cli(capsys, "demo", "--json")
    assert r.code == 0, r.err
    doc = r.json
    assert doc["key_type"] == "ecdsa-p256" and doc["kept"] is None
    assert doc["info"]["agent_name"] == "demo-board" and doc["info"]["caller_name"] == "host"
    (bench,) = doc["bench"]["results"]
    assert bench["iterations"] == 200 and bench["latency_ms"]["p50"] > 0
    (evaluation,) = doc["eval"]["results"]
    assert evaluation["metrics"]["top1"] >= 0.97
    assert evaluation["metrics"]["cosine"] == pytest.approx(1.0, abs=1e-5)
    assert list(tmp_path.iterdir()) == []                       # the temp dir is gone


def test_demo_keep_writes_a_usable_inventory(capsys: pytest.CaptureFixture,
                                             tmp_path: Path) -> None:
    keep = tmp_path / "demo"
    r = run_cli(capsys, "demo", "--keep", str(keep))
    assert r.code == 0, r.err
    assert "benchmark" in r.out and "top1" in r.out
    assert (keep / "pki" / "host-key.pem").is_file() and (keep / "store").is_dir()
    assert (keep / "pki" / "passphrase").stat().st_mode & 0o077 == 0
    assert b"ENCRYPTED" in (keep / "pki" / "host-key.pem").read_bytes()
    from host.inventory import load_inventory
    inventory = load_inventory(keep / "edgetune.toml")
    assert inventory.host is not None and inventory.host.cert.is_file()
    assert inventory.device("demo").address.startswith("127.0.0.1:")
    again = run_cli(capsys, "demo", "--keep", str(keep))
    assert again.code == ExitStatus.USAGE and "new or empty directory" in again.err


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
    """``python -m host demo`` in its own session (so a test can signal its whole process
    group, as a terminal's Ctrl-C does), with TMPDIR in ``tmp``."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "host", "demo"], stdout=subprocess.PIPE,
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
        assert f"its throw-away PKI and store ({workdir}) were removed" in err, err
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
    ("(benchmark): running", True),         # mid-benchmark, as a terminal's Ctrl-C: the group
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
        demo.assert_cleaned_up(workdir, err)
    finally:
        demo.kill()


def test_repeated_ctrl_c_still_stops_the_agent_and_removes_the_directory(demo_tmp: Path) -> None:
    """Ctrl-C pressed again and again (to the CLI only: the agent gets no SIGINT of its own)
    must not cut the clean-up short: the agent stopped, the directory gone."""
    demo = DemoProcess(demo_tmp)
    try:
        workdir = demo.wait_for("(benchmark): running")
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
