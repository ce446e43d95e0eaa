"""edgetune tune on a real local agent (mutual TLS, a subprocess) with the digits sample model:
a study runs, every trial is a board job recorded in the results store with the study's run
id, the answer is measured again against the baselines, the output directory and the JSON
documents have the promised shape, a second run resumes (runs only the remainder), and every
bad input the issue names is refused with its own error."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any, Dict, Iterator, List

import numpy as np
import pytest

from edgetune.host.errors import ExitStatus
from edgetune.host.tune import space as spaces
from tests.host_fixtures import (DIGITS_MODEL, DIGITS_TEST, SAMPLES, CliResult, local_agent,  # noqa: F401
                                 run_cli)

CALIB = SAMPLES / "digits_calib.npz"
# A small space (12 int8 option sets x 2 sessions): the module's study stays a few seconds.
NARROW = ("--set", "method=minmax,percentile", "--set", "percentile=99.99",
          "--set", "calib_count=32,64", "--set", "keep_k=0,1", "--set", "keep_as=int16",
          "--set", "per_channel=true", "--set", "act_type=uint8", "--set", "weight_type=int8",
          "--set", "symmetric_act=false", "--set", "inter_op_threads=1",
          "--set", "execution_mode=sequential", "--set", "graph_optimization=basic,all",
          "--set", "intra_op_threads=1")
FAST = ("--iterations", "40", "--short-iterations", "10", "--warmup", "2")


def tune_args(agent: Any, work: Path, *extra: str) -> List[str]:
    return ["tune", str(DIGITS_MODEL), "--calib", str(CALIB), "--dataset", str(DIGITS_TEST),
            *agent.conn(), "--db", str(work / "results.db"), "--cache-dir", str(work / "cache"),
            *FAST, *extra]


@pytest.fixture(scope="module")
def study(local_agent: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dict[str, Any]]:
    """One study of 5 trials with --max-drop, -o and --json, shared by the tests below."""
    work = tmp_path_factory.mktemp("tune")
    capsys = _Capture()
    with capsys:
        result = run_cli(capsys, *tune_args(local_agent, work, *NARROW, "--trials", "5",
                                           "--max-drop", "1.5", "--final-rounds", "2",
                                           "--study", "digits", "-o", str(work / "out"),
                                           "--json"))
    yield {"result": result, "work": work, "doc": result.json if result.code == 0 else None}


class _Capture:
    """capsys for a module-scoped fixture: stdout/stderr redirected while the study runs."""

    def __enter__(self) -> "_Capture":
        import io
        import sys
        self._saved = (sys.stdout, sys.stderr)
        sys.stdout, sys.stderr = io.StringIO(), io.StringIO()
        return self

    def __exit__(self, *exc: object) -> None:
        import sys
        sys.stdout, sys.stderr = self._saved

    def readouterr(self) -> Any:
        import sys
        from types import SimpleNamespace
        out, err = sys.stdout.getvalue(), sys.stderr.getvalue()
        sys.stdout.seek(0), sys.stdout.truncate(0), sys.stderr.seek(0), sys.stderr.truncate(0)
        return SimpleNamespace(out=out, err=err)


def _records(work: Path, run_id: str) -> List[Any]:
    from edgetune.host.results.store import ResultFilter, ResultsStore
    with ResultsStore.open(f"sqlite:///{work / 'results.db'}") as store:
        return store.list(ResultFilter(run_id=run_id), limit=None)


def test_a_study_runs_and_records_every_trial(study: Dict[str, Any]) -> None:
    result: CliResult = study["result"]
    assert result.code == 0, result.err + result.out
    doc = study["doc"]
    counts = doc["trials"]
    assert sum(counts.values()) - counts["failed"] == 5
    records = _records(study["work"], doc["run_id"])
    tuned = [r for r in records if (r.options.get("tune") or {}).get("trial") is not None
             and not r.options["tune"].get("final")]
    trials = {r.options["tune"]["trial"] for r in tuned}
    # trials 0-4 (but one the sampler proposed again: it reuses the earlier measurement),
    # and a retry when a board failed one (counted in "failed", not in the 5)
    import optuna
    study_trials = optuna.load_study(study_name="digits", storage=f"sqlite:///"
                                     f"{study['work'] / 'results.db'}").get_trials()
    reused = {t.number: t.user_attrs["duplicate_of"] for t in study_trials
              if "duplicate_of" in t.user_attrs}
    assert set(range(5)) - set(reused) <= trials and len(trials) <= 5 + counts["failed"]
    assert not set(reused) & trials                      # a reused trial measured nothing
    for number, earlier in reused.items():
        same = {t.number: t for t in study_trials}
        assert same[number].params == same[earlier].params
        assert same[number].values == same[earlier].values
    for r in tuned:
        tune = r.options["tune"]
        assert tune["study"] == "digits" and tune["params"]["precision"] in ("fp32", "int8")
        assert tune["stage"] in ("eval", "short", "full")
    kinds = {r.kind for r in records}
    assert {"bench", "eval"} <= kinds, kinds
    # the accuracy of a variant is evaluated once: no model has two eval records
    evals = [r.model.sha256 for r in records if r.kind == "eval"]
    assert len(evals) == len(set(evals))
    # the answer was measured again in rounds, against both baselines, recorded too
    finals = [r for r in records if (r.options.get("tune") or {}).get("final")]
    roles = {r.options["tune"]["final"] for r in finals if "round" in r.options["tune"]}
    assert {"fp32", "int8_default"} <= roles and len(roles) >= 3
    assert "study digits" in study["result"].err or doc["study"] == "digits"


def test_the_json_document_has_the_promised_shape(study: Dict[str, Any]) -> None:
    doc = study["doc"]
    assert doc["study"] == "digits" and doc["target_met"] is True
    assert set(doc["trials"]) == {"complete", "pruned", "failed", "infeasible"}
    assert set(doc["baselines"]) == {"fp32", "int8_default"}
    for base in doc["baselines"].values():
        assert base["latency_ms"]["p50"] > 0 and 0 < base["accuracy"]["value"] <= 1
    best = doc["best"]
    assert {"model", "session", "params", "latency_ms", "accuracy", "improvement"} <= set(best)
    assert best["latency_ms"]["p50"] > 0 and best["accuracy"]["drop_pts"] <= 1.5
    imp = best["improvement"]
    assert {"vs_int8_default", "vs_fp32", "ci"} <= set(imp)
    assert imp["ci"] is not None and imp["ci"][0] <= imp["vs_int8_default"] <= imp["ci"][1]
    assert imp["vs_fp32"] > 0
    assert doc["pareto"] and all({"trial", "latency_ms", "accuracy", "params"} <= set(p)
                                 for p in doc["pareto"])
    lat = [p["latency_ms"] for p in doc["pareto"]]
    acc = [p["accuracy"] for p in doc["pareto"]]
    assert lat == sorted(lat) and acc == sorted(acc)          # a front: faster, less accurate
    assert re.search(r"(improved p50 by -?\d+% over default INT8 \(95% CI|within noise of "
                     r"default INT8|slower than default INT8).* over FP32; top-1 [+-]\d+\.\d "
                     r"pts", doc["summary"]), doc["summary"]


def test_the_output_directory(study: Dict[str, Any]) -> None:
    import onnxruntime as ort

    from edgetune.protos.messages import SessionOptions

    out = study["work"] / "out"
    doc = study["doc"]
    names = {p.name for p in out.iterdir()}
    assert {"model.onnx", "session.json", "report.md", "pareto.png", "trials.csv"} <= names
    model = out / "model.onnx"
    assert doc["best"]["model"] == str(model)
    ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    from edgetune.host.tune.variants import file_sha256
    assert file_sha256(model) == doc["best"]["model_sha256"]
    session = SessionOptions.from_dict(json.loads((out / "session.json").read_text()))
    assert session.as_dict() == doc["best"]["session"]
    if doc["best"]["params"]["precision"] == "int8":
        record = json.loads((out / "model.record.json").read_text())
        assert record["output_sha256"] == doc["best"]["model_sha256"]
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "## Pareto front" in report and doc["summary"] in report
    with open(out / "trials.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(int(r["number"]) for r in rows) == list(range(len(rows)))
    assert {r["state"] for r in rows} <= {"complete", "pruned", "failed", "infeasible"}


def test_show_and_list(study: Dict[str, Any], capsys: pytest.CaptureFixture) -> None:
    db = str(study["work"] / "results.db")
    shown = run_cli(capsys, "tune", "show", "digits", "--db", db, "--json")
    assert shown.code == 0, shown.err
    doc = shown.json
    written = study["doc"]["best"]                  # --json names the model as written (-o)
    assert doc["study"] == "digits" and doc["best"]["trial"] == written["trial"]
    assert {k: v for k, v in doc["best"].items() if k != "model"} == \
        {k: v for k, v in written.items() if k != "model"}
    assert doc["baselines"] == study["doc"]["baselines"]
    assert len(doc["trial_list"]) == sum(doc["trials"].values())
    for t in doc["trial_list"]:
        assert {"number", "state", "params", "values", "result_id"} <= set(t)
        if t["state"] in ("complete", "infeasible") and t["values"]:
            assert t["result_id"]
    text = run_cli(capsys, "tune", "show", "digits", "--db", db)
    assert text.code == 0 and "trial" in text.out and "digits" in text.out
    listed = run_cli(capsys, "tune", "list", "--db", db, "--json")
    assert listed.code == 0
    assert [s["study"] for s in listed.json["studies"]] == ["digits"]
    missing = run_cli(capsys, "tune", "show", "nope", "--db", db)
    assert missing.code == ExitStatus.NOT_FOUND and "tune list" in missing.err


def test_optuna_is_told_the_bound_for_feasible_trials_and_reports_keep_the_measure(
        study: Dict[str, Any], capsys: pytest.CaptureFixture) -> None:
    """With --max-drop 1.5 every feasible trial is told to Optuna with the same accuracy,
    FP32's minus 1.5 points (so the sampler ranks them by latency alone); `tune show` keeps
    each trial's measured accuracy."""
    import optuna

    from edgetune.host.tune.study import open_storage

    db = str(study["work"] / "results.db")
    trials = optuna.load_study(study_name="digits",
                               storage=open_storage(f"sqlite:///{db}")).get_trials()
    fp32 = [t for t in trials if t.params.get("precision") == "fp32" and t.values]
    feasible = [t for t in trials if t.values and t.user_attrs.get("drop_pts", 99) <= 1.5]
    assert fp32 and len(feasible) >= 2
    bound = fp32[0].user_attrs["accuracy"] - 0.015
    for t in feasible:
        assert t.values[1] == pytest.approx(bound, abs=1e-9)
        assert t.user_attrs["accuracy"] >= bound - 1e-9
    shown = run_cli(capsys, "tune", "show", "digits", "--db", db, "--json")
    docs = {d["number"]: d for d in shown.json["trial_list"]}
    for t in feasible:
        assert docs[t.number]["values"][1] == pytest.approx(t.user_attrs["accuracy"])


def test_the_closing_rounds_measure_each_configuration_once(study: Dict[str, Any]) -> None:
    """Trials that reused another's measurement (the same params proposed again) are not
    candidates beside it: the closing rounds never compare a configuration with itself."""
    doc = study["doc"]
    params = [tuple(sorted(c["params"].items())) for c in doc["candidates"]]
    assert params and len(params) == len(set(params)), doc["candidates"]
    pareto = [tuple(sorted(p["params"].items())) for p in doc["pareto"]]
    assert len(pareto) == len(set(pareto))


def test_one_point_per_configuration() -> None:
    from types import SimpleNamespace

    from edgetune.host.tune import objective as tune_obj
    from edgetune.host.tune.final import distinct

    trials = {0: SimpleNamespace(params={"precision": "fp32", "intra_op_threads": 2}),
              1: SimpleNamespace(params={"precision": "int8", "intra_op_threads": 2}),
              2: SimpleNamespace(params={"intra_op_threads": 2, "precision": "fp32"})}
    points = [tune_obj.Point(n, 1.0, 0.99, True) for n in (2, 1, 0)]
    assert [p.number for p in distinct(points, trials)] == [0, 1]


def test_the_same_command_resumes_and_runs_only_the_remainder(
        study: Dict[str, Any], local_agent: Any, capsys: pytest.CaptureFixture) -> None:
    import optuna

    work = study["work"]
    url = f"sqlite:///{work / 'results.db'}"
    before = {t.number: (t.state, t.values) for t in
              optuna.load_study(study_name="digits", storage=url).get_trials()}
    again = run_cli(capsys, *tune_args(local_agent, work, *NARROW, "--trials", "6",
                                       "--max-drop", "1.5", "--final-rounds", "0",
                                       "--study", "digits", "--json"))
    assert again.code == 0, again.err
    after = {t.number: (t.state, t.values) for t in
             optuna.load_study(study_name="digits", storage=url).get_trials()}
    assert {n: after[n] for n in before} == before            # nothing finished ran again
    finished = [n for n, (state, _) in after.items() if state.is_finished()]
    assert len(finished) - again.json["trials"]["failed"] == 6
    new = [r for r in _records(work, study["doc"]["run_id"])
           if (r.options.get("tune") or {}).get("trial") in before
           and not r.options["tune"].get("final")]
    per_stage = [(r.options["tune"]["trial"], r.options["tune"]["stage"]) for r in new]
    assert len(per_stage) == len(set(per_stage))              # one record per trial stage


# ---------------------------------------------------------------------- bad input

def test_an_empty_space_is_refused(local_agent: Any, tmp_path: Path,
                                   capsys: pytest.CaptureFixture) -> None:
    r = run_cli(capsys, *tune_args(local_agent, tmp_path, "--set",
                                   "providers=NoSuchExecutionProvider"))
    assert r.code == ExitStatus.BAD_INPUT
    assert "search space is empty" in r.err and "CPUExecutionProvider" in r.err
    r = run_cli(capsys, *tune_args(local_agent, tmp_path, "--set", "intra_op_threads=64,128"))
    assert r.code == ExitStatus.BAD_INPUT and "intra_op_threads" in r.err
    r = run_cli(capsys, *tune_args(local_agent, tmp_path, "--set", "method="))
    assert r.code == ExitStatus.BAD_INPUT and "method has no choice left" in r.err
    assert not (tmp_path / "results.db").exists() or _no_study(tmp_path)


def _no_study(work: Path) -> bool:
    import optuna
    return not optuna.study.get_all_study_summaries(f"sqlite:///{work / 'results.db'}")


def test_a_space_file_is_checked_key_by_key(tmp_path: Path) -> None:
    from edgetune.host.errors import BadInputError

    path = tmp_path / "tune.toml"
    path.write_text('[quantization]\nmethod = ["minmax"]\nmethods = ["x"]\n')
    with pytest.raises(BadInputError, match="unknown key 'quantization.methods'") as err:
        spaces.load_space_file(path)
    assert "quantization.method" in err.value.hint and "runtime.providers" in err.value.hint
    path.write_text('[runtime]\nexecution_mode = ["fast"]\n')
    with pytest.raises(BadInputError, match="one of sequential, parallel"):
        spaces.load_space_file(path)
    path.write_text('[tuning]\nx = 1\n')
    with pytest.raises(BadInputError, match=r"unknown table \[tuning\]"):
        spaces.load_space_file(path)
    path.write_text('[quantization]\nmethod = ["entropy"]\n[runtime]\n'
                    'intra_op_threads = {min = 2, max = 3}\nproviders = ["CPUExecutionProvider"]\n')
    space = spaces.load_space_file(path)
    board = space.for_board(4, ["CPUExecutionProvider", "AzureExecutionProvider"])
    assert board.dims()["quantization.method"] == ("entropy",)
    assert board.dims()["runtime.intra_op_threads"] == (2, 3)
    default = spaces.Space.default().for_board(2, ["AzureExecutionProvider", "CPUExecutionProvider"])
    assert default.dims()["runtime.providers"] == ("CPUExecutionProvider",)
    assert default.dims()["runtime.intra_op_threads"] == (1, 2)


def test_a_top1_objective_needs_labels(local_agent: Any, tmp_path: Path,
                                       capsys: pytest.CaptureFixture) -> None:
    with np.load(DIGITS_TEST) as npz:
        unlabelled = {k: npz[k] for k in npz.files if k not in ("labels", "label")}
    dataset = tmp_path / "nolabels.npz"
    np.savez(dataset, **unlabelled)
    args = tune_args(local_agent, tmp_path, "--accuracy", "top1")
    args[args.index("--dataset") + 1] = str(dataset)
    r = run_cli(capsys, *args)
    assert r.code == ExitStatus.BAD_INPUT
    assert "needs labels" in r.err and "--accuracy fidelity" in r.err


def test_a_study_name_with_another_space_is_refused(study: Dict[str, Any], local_agent: Any,
                                                    capsys: pytest.CaptureFixture) -> None:
    work = study["work"]
    other = [a if a != "calib_count=32,64" else "calib_count=32" for a in NARROW]
    r = run_cli(capsys, *tune_args(local_agent, work, *other, "--trials", "5",
                                   "--study", "digits"))
    assert r.code == ExitStatus.BAD_INPUT
    assert "a study named 'digits' exists with a different space" in r.err
    assert "--new-study" in r.err


def test_no_candidate_meets_max_drop(local_agent: Any, tmp_path: Path,
                                     capsys: pytest.CaptureFixture) -> None:
    """Only INT8 asked for (precision = int8), with a percentile that clips most of every
    range: no trial stays within 0 points; the best found is reported, exit TARGET_NOT_MET."""
    r = run_cli(capsys, *tune_args(local_agent, tmp_path, "--set", "precision=int8",
                                   "--set", "method=percentile", "--set", "percentile=51",
                                   "--set", "calib_count=32", "--set", "keep_k=0",
                                   "--set", "per_channel=true", "--set", "act_type=uint8",
                                   "--set", "weight_type=int8", "--set", "symmetric_act=false",
                                   "--set", "intra_op_threads=1", "--set", "inter_op_threads=1",
                                   "--set", "execution_mode=sequential",
                                   "--set", "graph_optimization=all", "--trials", "1",
                                   "--max-drop", "0", "-o", str(tmp_path / "out")))
    assert r.code == ExitStatus.TARGET_NOT_MET, r.err
    assert "no trial met --max-drop 0 pts: the best found, trial 0, loses" in r.err
    assert "infeasible" in r.out                  # the report lists the trial and its state
    assert (tmp_path / "out" / "model.onnx").is_file()
    assert "no feasible trial" in (tmp_path / "out" / "report.md").read_text()


def test_boards_of_different_kinds_are_refused(pki: Any, local_agent: Any, tmp_path: Path,
                                               capsys: pytest.CaptureFixture,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A second real agent whose onnxruntime reports another version (as a board with a
    vendor build would): one latency study refuses the pair, naming both kinds."""
    from tests.host_fixtures import start_agent

    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(
        "import onnxruntime\nonnxruntime.__version__ = '1.19.2'\n")
    monkeypatch.setenv("PYTHONPATH", str(shim))
    other = start_agent(pki, tmp_path / "agent2")
    monkeypatch.delenv("PYTHONPATH")
    try:
        inventory = tmp_path / "edgetune.toml"
        inventory.write_text(
            f'[host]\nca = "{pki.ca_cert}"\ncert = "{pki.host.cert}"\nkey = "{pki.host.key}"\n'
            f'passphrase_file = "{local_agent.passphrase_file}"\n'
            f'[devices.a]\naddress = "{local_agent.address}"\n'
            f'[devices.b]\naddress = "{other.address}"\n')
        r = run_cli(capsys, "tune", str(DIGITS_MODEL), "--calib", str(CALIB), "--dataset",
                    str(DIGITS_TEST), "--devices", "a,b", "--inventory", str(inventory),
                    "--db", str(tmp_path / "results.db"), "--cache-dir", str(tmp_path / "c"))
        assert r.code == ExitStatus.BAD_INPUT, r.err
        assert "different kinds" in r.err and "onnxruntime 1.19.2" in r.err
        assert f"onnxruntime {_ort_version()}" in r.err
    finally:
        other.agent.stop()


def _ort_version() -> str:
    import onnxruntime
    return onnxruntime.__version__


def test_bench_takes_the_session_json(study: Dict[str, Any], local_agent: Any,
                                      capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    """`edgetune bench --session DIR/session.json` measures with the tuned session options;
    a flag given beside it replaces the file's value."""
    out = study["work"] / "out"
    session = json.loads((out / "session.json").read_text())
    r = run_cli(capsys, "bench", str(out / "model.onnx"), "--session", str(out / "session.json"),
                "--iterations", "5", "--threads", "1", *local_agent.conn(), "--no-record",
                "--json")
    assert r.code == 0, r.err
    used = r.json["results"][0]["options"]        # the session's keys, flat (input_shapes:
    keys = [k for k in session if k != "input_shapes"]     # the agent fixes a free batch dim)
    assert {k: used[k] for k in keys} == {**{k: session[k] for k in keys}, "intra_op_threads": 1}
    assert session["intra_op_threads"] >= 1 and session["graph_optimization"] in (
        "basic", "all")
    bad = tmp_path / "session.json"
    bad.write_text(json.dumps({**session, "threads": 2}))
    r = run_cli(capsys, "bench", str(out / "model.onnx"), "--session", str(bad),
                *local_agent.conn(), "--no-record")
    assert r.code == ExitStatus.BAD_INPUT and "unknown keys threads" in r.err


def test_a_configuration_that_cannot_run_is_infeasible_and_not_retried(
        local_agent: Any, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """int8 activations with uint8 weights: the quantizer refuses them. The trial is recorded
    infeasible with that error; nothing retries it."""
    r = run_cli(capsys, *tune_args(local_agent, tmp_path, "--set", "precision=int8",
                                   "--set", "act_type=int8", "--set", "weight_type=uint8",
                                   "--set", "method=minmax", "--set", "calib_count=32",
                                   "--set", "keep_k=0", "--set", "intra_op_threads=1",
                                   "--trials", "2", "--study", "bad", "--json"))
    assert r.code == ExitStatus.TARGET_NOT_MET, r.err
    doc = r.json
    assert doc["trials"] == {"complete": 0, "pruned": 0, "failed": 0, "infeasible": 2}
    shown = run_cli(capsys, "tune", "show", "bad", "--db", str(tmp_path / "results.db"),
                    "--json").json
    assert len(shown["trial_list"]) == 2
    for t in shown["trial_list"]:
        assert t["state"] == "infeasible"
        assert "int8 activations with uint8 weights" in t["error"]


def test_the_study_lives_beside_the_results_on_one_database(db_url: str) -> None:
    """Optuna's tables and the results store share one URL (SQLite and PostgreSQL); a study
    is found again by name, and another identity under that name is refused."""
    import sqlalchemy as sa

    from edgetune.host.errors import BadInputError
    from edgetune.host.results.store import ResultsStore
    from edgetune.host.tune import study as studies

    with ResultsStore.open(db_url) as store:
        storage = studies.open_storage(store.url)
        ident = studies.identity("ab" * 32, "f" * 64, "p50", "top1",
                                 {"arch": "x86_64", "cpu_model": "c", "onnxruntime_version": "1"})
        sampler = studies.make_sampler("tpe", 0)
        study, meta, created = studies.create_or_load(
            storage, "s1", ident, new_study=False, sampler=sampler,
            make_meta=lambda: {"run_id": "R1", "ranking": ["conv1"]})
        assert created and meta["run_id"] == "R1"
        again, meta2, created2 = studies.create_or_load(
            storage, "s1", ident, new_study=False, sampler=sampler,
            make_meta=lambda: pytest.fail("a study that exists is not made again"))
        assert not created2 and meta2["ranking"] == ["conv1"]
        other = dict(ident, objective="p90")
        with pytest.raises(BadInputError, match="exists with a different objective"):
            studies.create_or_load(storage, "s1", other, new_study=False, sampler=sampler,
                                   make_meta=dict)
        _, meta3, created3 = studies.create_or_load(storage, "s1", other, new_study=True,
                                                    sampler=sampler, make_meta=lambda: {"run_id": "R2"})
        assert created3 and meta3["run_id"] == "R2"
        tables = set(sa.inspect(store.engine).get_table_names())
        assert {"results", "edgetune_alembic_version", "studies", "trials",
                "alembic_version"} <= tables
        assert [s["study"] for s in studies.summaries(storage)] == ["s1"]
        assert store.count() == 0


def test_a_configuration_proposed_again_reuses_its_measurement(
        local_agent: Any, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A space of one configuration: trial 0 measures it, trials 1 and 2 reuse its numbers
    (no board job, said in the log)."""
    r = run_cli(capsys, *tune_args(local_agent, tmp_path, "--set", "precision=fp32",
                                   "--set", "intra_op_threads=1", "--set", "inter_op_threads=1",
                                   "--set", "execution_mode=sequential",
                                   "--set", "graph_optimization=all", "--trials", "3",
                                   "--study", "one", "--final-rounds", "0"))
    assert r.code == 0, r.err
    assert r.err.count("its measurement reused") == 2
    from edgetune.host.results.store import ResultsStore
    with ResultsStore.open(f"sqlite:///{tmp_path / 'results.db'}") as store:
        stages = sorted((rec.options["tune"]["trial"], rec.options["tune"]["stage"])
                        for rec in store.list(limit=None))
    assert stages == [(0, "eval"), (0, "full"), (0, "short")]
