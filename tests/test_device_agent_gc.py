"""The agent freezes its long-lived objects once it is up (``edgetune.device.server``, ``gc.freeze``),
so the full ``gc.collect()`` the runner makes before each timed loop scans only what jobs
made. Checked in a fresh interpreter, since freezing is process-wide: an in-process agent
started from a script, as the device tests do."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SCRIPT = """
import gc, json, sys, time
from pathlib import Path
from tests.agent_fixtures import start_agent
from tests.pki_fixtures import build_pki

work = Path(sys.argv[1])
pki = build_pki(work / "pki")
before = gc.get_freeze_count()
agent = start_agent(pki, work / "store")
frozen = gc.get_freeze_count()
tracked = len(gc.get_objects())
agent.stop()
print(json.dumps({"before": before, "frozen": frozen, "tracked": tracked,
                  "after_stop": gc.get_freeze_count()}))
"""


def test_agent_freezes_its_long_lived_objects_once_up_and_thaws_them_at_stop(
        tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    counts = json.loads(out.stdout.strip().splitlines()[-1])
    assert counts["before"] == 0
    # onnxruntime, numpy, grpc and the agent's own objects: tens of thousands, out of sight
    # of the collector; what a full collection still scans is a small part of it.
    assert counts["frozen"] > 20_000, counts
    assert counts["tracked"] < counts["frozen"] / 4, counts
    assert counts["after_stop"] == 0, counts
