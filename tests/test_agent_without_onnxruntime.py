"""The agent where PyPI has no onnxruntime for the board (issue 14, section 3): the `agent`
extra installs it without onnxruntime (for a vendor's or the distribution's build), and an
agent whose Python cannot import any onnxruntime refuses to start, naming what to install."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from edgetune.exitcodes import ExitStatus
from tests.host_fixtures import write_passphrase_file

REPO = Path(__file__).resolve().parent.parent


def test_the_agent_extra_is_the_device_extra_without_onnxruntime() -> None:
    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    device = [r for r in extras["device"] if not r.startswith("onnxruntime")]
    assert len(device) == len(extras["device"]) - 1
    assert [r.split("#")[0].strip() for r in extras["agent"]] == device
    assert not any("onnxruntime" in r for r in extras["agent"])


def test_an_agent_without_onnxruntime_refuses_to_start(tmp_path: Path, pki: Any) -> None:
    shadow = tmp_path / "shadow" / "onnxruntime"
    shadow.mkdir(parents=True)
    # What a board without onnxruntime (or with a broken vendor build) shows the agent.
    (shadow / "__init__.py").write_text(
        "raise ImportError('libonnxruntime.so.1: cannot open shared object file')\n")
    env = {**os.environ, "PYTHONPATH": str(shadow.parent), "PYTHONUNBUFFERED": "1"}
    env.pop("EDGETUNE_PASSPHRASE", None)
    passphrase = write_passphrase_file(tmp_path / "passphrase", pki.passphrase)
    proc = subprocess.run(
        [sys.executable, "-m", "edgetune.device", "serve", "--listen", "127.0.0.1:0",
         "--ca", str(pki.ca_cert), "--cert", str(pki.device.cert), "--key", str(pki.device.key),
         "--passphrase-file", str(passphrase), "--store", str(tmp_path / "store")],
        capture_output=True, text=True, timeout=120, env=env, stdin=subprocess.DEVNULL)
    assert proc.returncode == int(ExitStatus.ERROR), proc.stdout + proc.stderr
    assert "no onnxruntime can be imported" in proc.stderr
    assert "libonnxruntime.so.1" in proc.stderr                 # the import's own reason
    assert "onnxruntime-cann" in proc.stderr and "python3-onnxruntime" in proc.stderr
    assert "edgetune[agent]" in proc.stderr
