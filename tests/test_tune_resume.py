"""edgetune tune, the longer cases (marked slow), on real agents in separate processes:
a host process killed with SIGKILL mid-study and the same command run again repeats no
finished trial and re-attaches to the job the killed host left on the board; two boards run
trials in parallel; Ctrl-C stops after the running trials and says how to resume; a board
that stops answering mid-trial fails only that trial, which another board runs again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

from edgetune.host.errors import ExitStatus
from tests.host_fixtures import (DIGITS_MODEL, DIGITS_TEST, SAMPLES, RunningAgent, TcpProxy,
                                 local_agent, run_cli, start_agent)  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

CALIB = SAMPLES / "digits_calib.npz"
SMALL = ("--set", "method=minmax,percentile,mse", "--set", "calib_count=32",
         "--set", "keep_k=0", "--set", "per_channel=true", "--set", "act_type=uint8",
         "--set", "weight_type=int8", "--set", "symmetric_act=false",
         "--set", "inter_op_threads=1", "--set", "execution_mode=sequential",
         "--set", "graph_optimization=basic,extended,all")


def base_args(work: Path, *extra: str) -> List[str]:
    return ["tune", str(DIGITS_MODEL), "--calib", str(CALIB), "--dataset", str(DIGITS_TEST),
            "--db", str(work / "results.db"), "--cache-dir", str(work / "cache"), *SMALL,
            *extra]


def trials_of(work: Path, name: str) -> List[Any]:
    import optuna
    from edgetune.host.tune.study import quiet_optuna

    quiet_optuna()
    db = work / "results.db"
    if not db.is_file():
        return []
    import sqlite3
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        made = {"edgetune_alembic_version", "studies", "version_info"} <= names and \
            conn.execute("SELECT count(*) FROM studies").fetchone()[0] > 0
    if not made:
        return []           # not made yet: opening it here would race the tuner making it
    try:
        return optuna.load_study(study_name=name,
                                 storage=f"sqlite:///{work / 'results.db'}").get_trials()
    except KeyError:
        return []


def records(work: Path) -> List[Any]:
    from edgetune.host.results.store import ResultsStore
    with ResultsStore.open(f"sqlite:///{work / 'results.db'}") as store:
        return [r for r in store.list(limit=None)
                if (r.options.get("tune") or {}).get("trial") is not None
                and not r.options["tune"].get("final")]


def cli_process(args: List[str], work: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edgetune.host", *args],
                            stdout=open(work / "out.txt", "w"),
                            stderr=open(work / "err.txt", "w"), cwd=str(work),
                            start_new_session=True)


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_sigkill_then_the_same_command_repeats_no_finished_trial(
        local_agent: RunningAgent, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from optuna.trial import TrialState

    args = base_args(tmp_path, *local_agent.conn(), "--trials", "6", "--study", "killed",
                     "--iterations", "8000", "--short-iterations", "4000", "--warmup", "0",
                     "--final-rounds", "0")
    proc = cli_process(args, tmp_path)

    def running_with_job() -> Optional[Tuple[List[Any], Any]]:
        trials = trials_of(tmp_path, "killed")
        done = [t for t in trials if t.state.is_finished()]
        live = [t for t in trials if t.state == TrialState.RUNNING
                and "short" in (t.user_attrs.get("jobs") or {})]
        return (trials, live[0]) if len(done) >= 2 and live else None

    try:
        trials, victim = wait_for(running_with_job, 240, "two finished trials and one running")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    before = {t.number: (t.state, t.values) for t in trials_of(tmp_path, "killed")
              if t.state.is_finished()}
    victim_jobs: Dict[str, Dict[str, str]] = dict(victim.user_attrs["jobs"])
    records_before = {(r.options["tune"]["trial"], r.options["tune"]["stage"]): r.job_id
                      for r in records(tmp_path)}

    again = run_cli(capsys, *args, "--json")
    assert again.code == 0, again.err
    after = {t.number: t for t in trials_of(tmp_path, "killed")}
    assert {n: (after[n].state, after[n].values) for n in before} == before
    assert after[victim.number].state.is_finished()
    finished = [t for t in after.values() if t.state.is_finished()
                and not t.user_attrs.get("board_error")]
    assert len(finished) == 6
    recs = records(tmp_path)
    keys = [(r.options["tune"]["trial"], r.options["tune"]["stage"]) for r in recs]
    assert len(keys) == len(set(keys)), "a trial stage was measured twice"
    for key, job_id in records_before.items():          # what was recorded stays as it was
        assert dict((k, r.job_id) for k, r in zip(keys, recs))[key] == job_id
    by_key = dict(zip(keys, recs))
    assert "short" in victim_jobs
    for stage, job in victim_jobs.items():               # re-attached, not measured again
        if stage != "eval":
            assert by_key[(victim.number, stage)].job_id == job["job_id"]


def _inventory(path: Path, pki: Any, passphrase: Path, boards: Dict[str, str]) -> Path:
    text = (f'[host]\nca = "{pki.ca_cert}"\ncert = "{pki.host.cert}"\nkey = "{pki.host.key}"\n'
            f'passphrase_file = "{passphrase}"\n')
    for name, address in boards.items():
        text += f'[devices.{name}]\naddress = "{address}"\n'
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def second_agent(pki: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    running = start_agent(pki, tmp_path_factory.mktemp("agent2"))
    try:
        yield running
    finally:
        running.agent.stop()


def _job_spans(agent: RunningAgent) -> List[Tuple[float, float]]:
    from edgetune.host.client import AgentClient
    with AgentClient(agent.address, agent.pki.host.identity) as client:
        return [(j.started_unix, j.finished_unix) for j in client.list_jobs()
                if j.started_unix and j.finished_unix and j.label.startswith("tune par ")]


def test_two_boards_run_trials_in_parallel(pki: Any, local_agent: RunningAgent,
                                           second_agent: RunningAgent, tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    inventory = _inventory(tmp_path / "edgetune.toml", pki, local_agent.passphrase_file,
                           {"a": local_agent.address, "b": second_agent.address})
    r = run_cli(capsys, *base_args(tmp_path, "--devices", "a,b", "--inventory", str(inventory),
                                   "--trials", "8", "--study", "par", "--iterations", "5000",
                                   "--short-iterations", "2500", "--final-rounds", "0",
                                   "--json"))
    assert r.code == 0, r.err
    trials = trials_of(tmp_path, "par")
    boards = {t.user_attrs.get("board") for t in trials if t.state.is_finished()}
    assert boards == {"a", "b"}
    spans_a, spans_b = _job_spans(local_agent), _job_spans(second_agent)
    assert spans_a and spans_b
    overlap = sum(max(0.0, min(a1, b1) - max(a0, b0)) for a0, a1 in spans_a for b0, b1 in spans_b)
    assert overlap > 0, "no job on a ran while one on b ran"
    assert r.json["board_kind"]["onnxruntime_version"]


def test_ctrl_c_stops_after_the_running_trials_and_says_how_to_resume(
        local_agent: RunningAgent, tmp_path: Path) -> None:
    from optuna.trial import TrialState

    args = base_args(tmp_path, *local_agent.conn(), "--trials", "20", "--study", "stopped",
                     "--iterations", "20000", "--short-iterations", "10000", "--warmup", "0")
    proc = cli_process(args, tmp_path)
    try:
        wait_for(lambda: any(t.state == TrialState.RUNNING and t.user_attrs.get("jobs")
                             for t in trials_of(tmp_path, "stopped")), 240, "a running trial")
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    err = (tmp_path / "err.txt").read_text()
    assert code == ExitStatus.INTERRUPTED, err
    assert "interrupted: no new trials" in err and "--study stopped" in err
    trials = trials_of(tmp_path, "stopped")
    assert trials and all(t.state != TrialState.RUNNING for t in trials)   # finished, recorded
    assert len([t for t in trials if t.state.is_finished()]) < 20


def test_a_board_that_stops_answering_fails_only_its_trial(
        pki: Any, local_agent: RunningAgent, second_agent: RunningAgent, tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    from optuna.trial import TrialState

    proxy = TcpProxy(second_agent.address)
    inventory = _inventory(tmp_path / "edgetune.toml", pki, local_agent.passphrase_file,
                           {"a": local_agent.address, "b": proxy.address})
    box: Dict[str, Any] = {}

    def run() -> None:
        box["result"] = run_cli(capsys, *base_args(
            tmp_path, "--devices", "a,b", "--inventory", str(inventory), "--trials", "6",
            "--study", "faulty", "--iterations", "20000", "--short-iterations", "10000",
            "--warmup", "0", "--final-rounds", "0", "--call-timeout", "5", "--json"))

    worker = threading.Thread(target=run)
    worker.start()
    try:
        def running_on_b() -> bool:
            from edgetune.host.client import AgentClient
            with AgentClient(second_agent.address, pki.host.identity) as client:
                return any(j.state.value == "running" and "short" in j.label
                           for j in client.list_jobs())

        wait_for(lambda: running_on_b() or "result" in box, 120, "a trial measuring on b")
        assert "result" not in box, box["result"].out + box["result"].err
        proxy.refusing = True
        proxy.cut()
        worker.join(300)
    finally:
        proxy.close()
    result = box["result"]
    assert result.code == 0, result.err
    trials = {t.number: t for t in trials_of(tmp_path, "faulty")}
    victim = next(t for t in trials.values() if t.user_attrs.get("board_error"))
    failed = trials[victim.number]
    assert failed.state == TrialState.FAIL and failed.user_attrs.get("board_error")
    retry = [t for t in trials.values() if t.user_attrs.get("retry_of") == victim.number]
    assert retry and retry[0].state.is_finished() and retry[0].user_attrs["board"] == "a"
    assert retry[0].params == failed.params
    done = [t for t in trials.values() if t.state.is_finished()
            and not t.user_attrs.get("board_error")]
    assert len(done) == 6
    assert result.json["trials"]["failed"] >= 1


def test_a_dataset_without_labels_tunes_for_fidelity(local_agent: RunningAgent, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    """No labels: the accuracy objective is fidelity (cosine to the FP32 model's outputs,
    computed here once and uploaded as references); FP32 scores 1.0 and drops nothing."""
    import numpy as np

    with np.load(DIGITS_TEST) as npz:
        arrays = {"input": npz["input"]}
    dataset = tmp_path / "inputs.npz"
    np.savez(dataset, **arrays)
    args = base_args(tmp_path, *local_agent.conn(), "--trials", "4", "--study", "fid",
                     "--iterations", "200", "--final-rounds", "2", "--max-drop", "1", "--json")
    args[args.index("--dataset") + 1] = str(dataset)
    r = run_cli(capsys, *args)
    assert r.code == 0, r.err
    doc = r.json
    assert doc["metric"] == "fidelity"
    fp32 = doc["baselines"]["fp32"]["accuracy"]
    assert fp32["metric"] == "fidelity" and fp32["value"] > 0.9999
    assert 0.99 < doc["best"]["accuracy"]["value"] <= 1.0 + 1e-6
    assert "cosine" in doc["summary"]


def test_a_provider_that_cannot_load_the_model_is_infeasible(
        pki: Any, tmp_path: Path, capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A board whose onnxruntime reports a provider that cannot run (as a vendor build whose
    device is missing): its trials fail on the board, are recorded infeasible with the
    board's error and are not retried; the CPU trials carry the study."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(
        "import onnxruntime\n_real = onnxruntime.get_available_providers\n"
        "onnxruntime.get_available_providers = lambda: ['BrokenExecutionProvider', *_real()]\n")
    monkeypatch.setenv("PYTHONPATH", str(shim))
    agent = start_agent(pki, tmp_path / "agent")
    monkeypatch.delenv("PYTHONPATH")
    try:
        r = run_cli(capsys, *base_args(tmp_path, *agent.conn(), "--set", "precision=fp32",
                                       "--set", "intra_op_threads=1", "--set",
                                       "execution_mode=sequential", "--set",
                                       "graph_optimization=all", "--trials", "6",
                                       "--study", "broken", "--iterations", "50",
                                       "--final-rounds", "0", "--json"))
        assert r.code == 0, r.err
    finally:
        agent.agent.stop()
    trials = trials_of(tmp_path, "broken")
    broken = [t for t in trials if t.params.get("providers") == "BrokenExecutionProvider"]
    assert broken, "the sampler never tried the broken provider"
    for t in broken:
        assert "did not take the model" in t.user_attrs.get("infeasible", ""), t.user_attrs
        assert not t.user_attrs.get("board_error")
    again = [t for t in broken if t.user_attrs.get("duplicate_of") is not None]
    assert all("not run again" in t.user_attrs["infeasible"] for t in again)
    assert not [t for t in trials if t.user_attrs.get("retry_of") is not None]
    assert r.json["trials"]["infeasible"] >= 1 and r.json["best"]["session"]["providers"] == [
        "CPUExecutionProvider"]


def _agent_jobs(agent: RunningAgent) -> Dict[str, Any]:
    from edgetune.host.client import AgentClient
    with AgentClient(agent.address, agent.pki.host.identity) as client:
        return {j.id: j for j in client.list_jobs(500)}


def _queued_ahead(work: Path, name: str, agent: RunningAgent, finished: int,
                  stages: Tuple[str, ...] = ("eval", "short", "full")
                  ) -> Optional[Tuple[List[Any], Any, str, str]]:
    """(trials, a RUNNING trial, its stage, its job id) once ``finished`` trials are done and
    a running trial's job waits in the agent's queue behind another trial's job."""
    from optuna.trial import TrialState

    trials = trials_of(work, name)
    if len([t for t in trials if t.state.is_finished()]) < finished:
        return None
    jobs = _agent_jobs(agent)
    for t in trials:
        if t.state != TrialState.RUNNING:
            continue
        for stage, job in (t.user_attrs.get("jobs") or {}).items():
            found = jobs.get(job["job_id"])
            if stage in stages and found is not None and found.state.value == "queued":
                return trials, t, stage, job["job_id"]
    return None


def test_sigkill_with_a_job_queued_ahead_repeats_and_loses_nothing(
        local_agent: RunningAgent, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The board's next trial has its job waiting in the agent's queue (pipelining) when the
    host is killed: the resumed study re-attaches to that very job (it runs once, recorded
    once) and to the running one, and counts every trial once."""
    args = base_args(tmp_path, *local_agent.conn(), "--trials", "6", "--study", "ahead",
                     "--iterations", "100000", "--short-iterations", "50000", "--warmup", "0",
                     "--final-rounds", "0")
    proc = cli_process(args, tmp_path)
    try:
        trials, victim, stage, job_id = wait_for(
            lambda: _queued_ahead(tmp_path, "ahead", local_agent, 1, ("short", "full")), 240,
            "a trial finished and another one's job queued ahead")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    from optuna.trial import TrialState

    at_kill = {t.number: dict(t.user_attrs.get("jobs") or {}) for t in trials_of(tmp_path, "ahead")
               if t.state == TrialState.RUNNING}
    before = {t.number: (t.state, t.values) for t in trials_of(tmp_path, "ahead")
              if t.state.is_finished()}
    assert victim.number in at_kill and len(at_kill) >= 2

    again = run_cli(capsys, *args, "--json")
    assert again.code == 0, again.err
    after = {t.number: t for t in trials_of(tmp_path, "ahead")}
    assert {n: (after[n].state, after[n].values) for n in before} == before
    finished = [t for t in after.values() if t.state.is_finished()
                and not t.user_attrs.get("board_error")]
    assert len(finished) == 6
    recs = records(tmp_path)
    keys = [(r.options["tune"]["trial"], r.options["tune"]["stage"]) for r in recs]
    assert len(keys) == len(set(keys)), "a trial stage was measured twice"
    by_key = dict(zip(keys, recs))
    assert by_key[(victim.number, stage)].job_id == job_id       # the queued job, re-attached
    for number, jobs in at_kill.items():
        assert after[number].state.is_finished()
        for st, job in jobs.items():
            if st != "eval" and (number, st) in by_key:
                assert by_key[(number, st)].job_id == job["job_id"]
    label = f"tune ahead #{victim.number} {stage}"
    ran = [j for j in _agent_jobs(local_agent).values() if j.label == label]
    assert [j.id for j in ran] == [job_id], "the queued trial's stage ran again"


def test_ctrl_c_cancels_a_job_queued_ahead_and_the_resume_runs_its_trial(
        local_agent: RunningAgent, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Ctrl-C while a trial's first job waits in the board's queue: that job is cancelled,
    the trial is failed as withdrawn (nothing measured, not counted) with its configuration
    enqueued, the trial that was measuring finishes and is recorded; the same command then
    runs the withdrawn configuration first."""
    from optuna.trial import TrialState

    args = base_args(tmp_path, *local_agent.conn(), "--trials", "4", "--study", "withdrawn",
                     "--iterations", "100000", "--short-iterations", "50000", "--warmup", "0",
                     "--final-rounds", "0")
    proc = cli_process(args, tmp_path)
    try:
        def first_job_queued() -> Optional[Tuple[Any, str]]:
            found = _queued_ahead(tmp_path, "withdrawn", local_agent, 0)
            if found is None:
                return None
            _, trial, stage, job_id = found
            return (trial, job_id) if len(trial.user_attrs.get("jobs") or {}) == 1 else None

        victim, job_id = wait_for(first_job_queued, 240, "a trial's first job queued ahead")
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    err = (tmp_path / "err.txt").read_text()
    assert code == ExitStatus.INTERRUPTED, err
    assert "withdrawn" in err, err
    assert _agent_jobs(local_agent)[job_id].state.value == "cancelled"
    trials = {t.number: t for t in trials_of(tmp_path, "withdrawn")}
    failed = trials[victim.number]
    assert failed.state == TrialState.FAIL and "Ctrl-C" in failed.user_attrs["withdrawn"]
    assert not failed.user_attrs.get("board_error")
    waiting = [t for t in trials.values() if t.state == TrialState.WAITING]
    assert [(t.system_attrs.get("fixed_params"), t.user_attrs.get("retry_of"))
            for t in waiting] == [(failed.params, victim.number)]
    assert all(t.state != TrialState.RUNNING for t in trials.values())
    assert not [r for r in records(tmp_path) if r.job_id == job_id]

    again = run_cli(capsys, *args, "--json")
    assert again.code == 0, again.err
    after = {t.number: t for t in trials_of(tmp_path, "withdrawn")}
    retry = [t for t in after.values() if t.user_attrs.get("retry_of") == victim.number]
    assert len(retry) == 1 and retry[0].state.is_finished() and retry[0].params == failed.params
    done = [t for t in after.values() if t.state.is_finished()
            and not t.user_attrs.get("withdrawn") and not t.user_attrs.get("board_error")]
    assert len(done) == 4
