"""edgetune fleet check / release / status against real agents in separate processes, some of
them up but wrong:

- ``broken``: its onnxruntime is a broken build. The agent is the real one, unchanged; the
  Python it runs (a wrapper script setting PYTHONPATH) finds, first on its path, an
  ``onnxruntime`` package that loads the real one
  and scales every float output by 1.02 (as a miscompiled kernel or a wrongly calibrated
  accelerator would): the top-1 class still agrees, the logits do not.
- ``stalls``: the same kind of build, whose every third ``run`` stalls 20 ms (as a board that
  throttles or whose cores something else takes): the latency spread gives it away.
- ``hot``: an unchanged agent and onnxruntime, started with ``--sysfs-root`` (the agent's own
  option for where it reads /sys) on a tree whose thermal zone reads 97 C.
- ``misnamed``: a good board whose certificate is for "board1" while edgetune.toml calls it
  "misnamed": a warning, refused under --strict.

The faults live in this test file only; nothing in edgetune knows of them.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, Sequence

import pytest

from edgetune.host.fleet.check import (CheckSettings, build_canary, check_fleet, cn_warning,
                                       judge)
from edgetune.host.fleet.quarantine import QuarantineBook
from edgetune.host.inventory import load_inventory
from edgetune.host.localagent import AgentFiles, LocalAgent
from edgetune.host.results.store import ResultsStore
from tests.host_fixtures import run_cli, write_passphrase_file

BROKEN_ORT = '''"""A broken onnxruntime build (a test fixture): the real onnxruntime with its outputs or its
timing spoiled, as EDGETUNE_TEST_ORT_FAULT says (outputs, stalls)."""
import importlib
import os
import sys
import time

_here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
del sys.modules["onnxruntime"]
_real = importlib.import_module("onnxruntime")
_Session = _real.InferenceSession
_FAULT = os.environ.get("EDGETUNE_TEST_ORT_FAULT", "")


class InferenceSession(_Session):
    _calls = 0

    def run(self, output_names, input_feed, run_options=None):
        outputs = _Session.run(self, output_names, input_feed, run_options)
        if _FAULT == "outputs":
            return [o * 1.02 if o.dtype.kind == "f" else o for o in outputs]
        if _FAULT == "stalls":
            InferenceSession._calls += 1
            if InferenceSession._calls % 3 == 0:
                time.sleep(0.02)
        return outputs


_real.InferenceSession = InferenceSession
sys.modules["onnxruntime"] = _real
'''


def _broken_python(base: Path, fault: str) -> Path:
    """A ``python`` for the agent whose ``import onnxruntime`` finds the broken build."""
    package = base / "broken-ort" / "onnxruntime"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text(BROKEN_ORT)
    script = base / f"python-{fault}"
    script.write_text(f'#!/bin/sh\nPYTHONPATH="{package.parent}" '
                      f'EDGETUNE_TEST_ORT_FAULT={fault} exec "{sys.executable}" "$@"\n')
    script.chmod(0o755)
    return script


def _hot_sysfs(base: Path) -> Path:
    zone = base / "hot-sys" / "class" / "thermal" / "thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "temp").write_text("97000\n")
    return base / "hot-sys"


def _start(pki: Any, workdir: Path, cert: Path, key: Path, python: str = sys.executable,
           extra_args: Sequence[str] = ()) -> LocalAgent:
    workdir.mkdir(parents=True, exist_ok=True)
    files = AgentFiles(ca=pki.ca_cert, cert=cert, key=key,
                       passphrase_file=write_passphrase_file(workdir / "passphrase",
                                                             pki.passphrase))
    agent = LocalAgent(python=str(python), ready_timeout_s=90)
    try:
        agent.start(files, workdir / "store", extra_args)
    except BaseException:
        agent.stop()
        raise
    return agent


@pytest.fixture(scope="module")
def lab(pki: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An edgetune.toml of six real agents, started at once: two good, broken, stalls, hot,
    misnamed."""
    base = tmp_path_factory.mktemp("lab")
    certs: Dict[str, Any] = {"misnamed": (pki.device.cert, pki.device.key)}  # "board1"
    for name in ("good1", "good2", "broken", "stalls", "hot"):
        (base / f"{name}-pki").mkdir()
        issued = pki.ca.issue_device(name, ips=["127.0.0.1"])
        certs[name] = issued.write(base / f"{name}-pki", pki.passphrase)
    how: Dict[str, Dict[str, Any]] = {name: {} for name in certs}
    how["broken"] = {"python": _broken_python(base, "outputs")}
    how["stalls"] = {"python": _broken_python(base, "stalls")}
    how["hot"] = {"extra_args": ["--sysfs-root", str(_hot_sysfs(base))]}
    names = ["good1", "good2", "broken", "stalls", "hot", "misnamed"]
    with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
        futures = {name: pool.submit(_start, pki, base / name, *certs[name], **how[name])
                   for name in names}
        concurrent.futures.wait(futures.values())
    agents = {name: f.result() for name, f in futures.items() if f.exception() is None}
    try:
        for future in futures.values():
            future.result()                     # the first agent that failed to start
        host = pki.host
        lines = [f'[host]\nca = "{host.ca}"\ncert = "{host.cert}"\nkey = "{host.key}"\n'
                 f'passphrase_file = "{base / "good1" / "passphrase"}"\n',
                 f'[results]\ndb = "{base / "results.db"}"\n']
        for name in names:
            tag = "good" if name.startswith("good") else "bad"
            lines.append(f'[devices.{name}]\naddress = "{agents[name].address}"\n'
                         f'tags = ["{tag}"]\n')
        path = base / "edgetune.toml"
        path.write_text("\n".join(lines))
        yield path
    finally:
        for agent in agents.values():
            agent.stop()


def fleet(capsys: Any, lab: Path, action: str, *argv: str) -> Any:
    """``edgetune fleet ACTION`` on the lab's inventory and results database (the tests'
    session-wide $EDGETUNE_DB is not this module's)."""
    return run_cli(capsys, "fleet", action, *argv, "--inventory", str(lab), "--db",
                   str(load_inventory(lab).results_db))


def _book(lab: Path) -> Any:
    store = ResultsStore.open(str(load_inventory(lab).results_db))
    return store, QuarantineBook.open(store)


def _rows(result: Any) -> Dict[str, Dict[str, Any]]:
    return {row["name"]: row for row in result.json["devices"]}


def test_the_canary_compares_board_outputs_with_this_pc(tmp_path: Path, lab: Path, pki: Any) -> None:
    """The check's parts on real outputs: the good board agrees to float32 rounding, the
    broken build's scaled logits keep top-1 and are caught by the tolerance."""
    from edgetune.host.target import load_host_identity

    canary = build_canary(tmp_path)
    again = build_canary(tmp_path / "..")
    assert canary.samples == 64
    assert canary.dataset.read_bytes() == again.dataset.read_bytes()   # dedup on the board
    inventory = load_inventory(lab)
    identity = load_host_identity(pki.host.ca, pki.host.cert, pki.host.key,
                                  Path(str(inventory.host.passphrase_file)))
    devices = [inventory.device("good1"), inventory.device("broken")]
    good, broken = check_fleet(devices, identity, canary, CheckSettings(max_spread=1e9))
    assert good.state == "passed", good.reasons
    metrics = dict(good.metrics)
    assert metrics["top1"] == 1.0 and metrics["max_abs_error"] <= 1e-5
    assert broken.state == "failed"
    broken_metrics = dict(broken.metrics)
    assert broken_metrics["top1"] == 1.0                     # top-1 alone would not see it
    assert broken_metrics["max_abs_error"] > 0.05
    assert broken.reasons == (
        judge(broken_metrics, broken.p50_ms, broken.p90_ms, None,
              CheckSettings(max_spread=1e9))[0],)
    assert "max abs error" in broken.reason and "> 0.001" in broken.reason
    # The same real outputs against a looser tolerance: the broken board would pass.
    assert judge(broken_metrics, 1.0, 1.0, None, CheckSettings(tolerance=1.0)) == []
    assert judge({"top1": 0.98, "max_abs_error": 0.0}, 1.0, 1.0, None, CheckSettings())
    assert judge({}, None, None, None, CheckSettings())        # nothing measured: not a pass
    assert judge({"top1": 1.0, "max_abs_error": float("nan")}, 1.0, 1.0, None, CheckSettings())


def test_fleet_check_quarantines_the_wrong_boards_and_release_brings_one_back(
        lab: Path, capsys: Any) -> None:
    r = fleet(capsys, lab, "check", "--max-spread", "8",
                "--json")
    assert r.code == 11, r.err                      # some boards failed
    rows = _rows(r)
    assert [n for n, row in rows.items() if row["state"] == "passed"] == \
        ["good1", "good2", "misnamed"]
    assert rows["broken"]["state"] == "failed" and "max abs error" in rows["broken"]["reason"]
    assert rows["stalls"]["state"] == "failed" and "spread" in rows["stalls"]["reason"]
    assert rows["stalls"]["spread"] > 8 and rows["stalls"]["max_abs_error"] <= 1e-5
    assert rows["hot"]["state"] == "failed" and rows["hot"]["temperature_c"] == 97.0
    assert "temperature 97 C > 85 C" in rows["hot"]["reason"]
    assert rows["good1"]["temperature_c"] is None or rows["good1"]["temperature_c"] < 85
    assert "certificate is for 'board1'" in rows["misnamed"]["cn_warning"]
    check_id = r.json["check"]
    store, book = _book(lab)
    try:
        active = book.active()
        assert sorted(active) == ["broken", "hot", "stalls"]
        assert active["hot"].source == "check" and active["hot"].run_id == check_id
        assert "temperature 97 C" in active["hot"].reason
    finally:
        store.close()

    # fleet status shows them quarantined, with the reason and since when.
    status = fleet(capsys, lab, "status", "--json")
    states = {d["name"]: d for d in status.json["devices"]}
    assert states["broken"]["state"] == "quarantined"
    assert states["broken"]["reason"].startswith("quarantined since ")
    assert "max abs error" in states["broken"]["reason"]
    assert states["good1"]["state"] == "serving" and status.code != 0
    table = fleet(capsys, lab, "status", "--devices", "hot")
    assert "quarantined" in table.out and "warning: misnamed" not in table.err

    # Released by hand, the hot board is back; checked again, it goes straight back in.
    released = fleet(capsys, lab, "release", "hot", "--json")
    assert released.code == 0 and released.json["released"] is True
    assert released.json["entry"]["reason"].startswith("temperature 97 C")
    again = fleet(capsys, lab, "release", "hot")
    assert again.code == 0 and "hot is not quarantined" in again.out
    unknown = fleet(capsys, lab, "release", "nosuch")
    assert unknown.code == 4 and "broken, stalls" in unknown.err
    status = fleet(capsys, lab, "status", "--devices", "hot",
                     "--json")
    assert status.json["devices"][0]["state"] == "serving"

    # Only the broken board: the exit code says none passed.
    only = fleet(capsys, lab, "check", "--devices", "broken",
                   "--json")
    assert only.code == 12 and _rows(only)["broken"]["quarantined"]["run_id"] == check_id


def test_a_passing_check_releases_a_quarantined_board(lab: Path, capsys: Any) -> None:
    store, book = _book(lab)
    try:
        book.quarantine("good2", "3 fleet jobs failed in a row; the last: unreachable", "jobs")
    finally:
        store.close()
    r = fleet(capsys, lab, "check", "--devices", "agent_name=good2",   # what the board says
              "--max-spread", "8")
    assert r.code == 0, r.err
    assert "good2 passed and is released from quarantine" in r.err
    assert "1 of 1 boards passed the check" in r.err
    store, book = _book(lab)
    try:
        assert "good2" not in book.active()
        assert book.history("good2")[0].released_by.startswith("check ")
    finally:
        store.close()


def test_a_board_whose_certificate_names_another_board(lab: Path, capsys: Any) -> None:
    assert cn_warning("good1", "good1") == "" and cn_warning("good1", "") == ""
    status = fleet(capsys, lab, "status", "--devices",
                     "misnamed,good1")
    assert status.code == 0, status.err
    assert ("warning: misnamed: its certificate is for 'board1', not 'misnamed'" in status.err)
    assert "warning: good1" not in status.err
    strict = fleet(capsys, lab, "status", "--devices",
                     "misnamed,good1", "--strict", "--json")
    assert strict.code != 0
    rows = _rows(strict)
    assert rows["misnamed"]["state"] == "refused" and "--strict" in rows["misnamed"]["reason"]
    assert "certificate is for 'board1'" in rows["misnamed"]["cn_warning"]
    assert rows["good1"]["cn_warning"] is None
    # A results database that cannot be opened does not stop status (a warning says so).
    broken_db = lab.parent / "not-a-database.db"
    broken_db.write_bytes(b"not sqlite" * 100)
    down = run_cli(capsys, "fleet", "status", "--inventory", str(lab), "--db", str(broken_db),
                   "--devices", "good1")
    assert down.code == 0 and "warning: quarantine not shown" in down.err
    assert rows["good1"]["state"] == "serving"

    check = fleet(capsys, lab, "check", "--devices",
                    "misnamed", "--max-spread", "8")
    assert check.code == 0 and "warning: misnamed: its certificate is for 'board1'" in check.err
    strict = fleet(capsys, lab, "check", "--devices",
                     "misnamed", "--strict", "--json")
    assert strict.code == 12
    row = _rows(strict)["misnamed"]
    assert row["state"] == "refused" and row["top1_agreement"] is None   # not checked
    assert row["quarantined"] is None                    # refused is not quarantined


def test_ctrl_c_stops_a_check_at_once_and_changes_nothing(lab: Path, pki: Any) -> None:
    """Ctrl-C while the stalling board runs a long canary benchmark: exit 130 within 5 s, no
    quarantine written or released (the board's job goes on; the test cancels it)."""
    from edgetune.host.client import AgentClient
    from edgetune.host.target import load_host_identity
    from edgetune.protos.messages import BenchmarkSpec

    inventory = load_inventory(lab)
    db = str(inventory.results_db)
    store, book = _book(lab)
    try:
        before = [e.as_json() for e in book.history()]
    finally:
        store.close()
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgetune.host", "fleet", "check", "--inventory", str(lab),
         "--db", db, "--devices", "stalls,good1", "--iterations", "3000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    identity = load_host_identity(pki.host.ca, pki.host.cert, pki.host.key,
                                  Path(str(inventory.host.passphrase_file)))
    with AgentClient(inventory.device("stalls").address, identity) as client:
        deadline = time.monotonic() + 60
        job = ""
        while not job:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the canary benchmark never started"
            running = client.info().running_job_id
            if running and isinstance(client.get_job(running).spec, BenchmarkSpec):
                job = running
            else:
                time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        try:
            _, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError(f"fleet check hung after Ctrl-C: {proc.communicate()[1]}")
        assert proc.returncode == 130, err
        assert time.monotonic() - sent < 5
        assert "nothing was quarantined or released" in err
        client.cancel_job(job)
    store, book = _book(lab)
    try:
        assert [e.as_json() for e in book.history()] == before
    finally:
        store.close()
