"""Fleet runs without boards: the summary's arithmetic on known numbers, the exit status of
a run, what --resume refuses (and says), the retry back-off, and the run book on SQLite and
PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edgetune.exitcodes import ExitStatus
from edgetune.host.errors import NotFoundError, UsageError
from edgetune.host.fleet import runbook as rb
from edgetune.host.fleet.policy import FleetSettings, backoff_delays, reason
from edgetune.host.fleet.runspec import FileRef, FleetRunSpec, file_ref
from edgetune.host.fleet.summary import RowResult, document, exit_status, summarize
from edgetune.host.errors import AuthError, LeaseHeldError, UnreachableError
from edgetune.protos.messages import BenchmarkSpec, EvaluateSpec
from tests.host_fixtures import DIGITS_MODEL

A = {"arch": "aarch64", "cpu_model": "Cortex-A55", "onnxruntime_version": "1.16.0"}
B = {"arch": "riscv64", "cpu_model": "SpacemiT X60", "onnxruntime_version": "1.16.0"}
SHA = "ab" * 32
OTHER = "cd" * 32


def bench_row(device: str, p50: float, kind: Any = A, state: str = "done",
              sha: str = SHA) -> RowResult:
    return RowResult(device=device, model="m.onnx", sha256=sha, state=state,
                     result_id="R" + device if state == "done" else None,
                     latency_ms=p50 if state == "done" else None, kind=kind,
                     metrics={"latency_ms": {"p50": p50}} if state == "done" else None,
                     error="" if state == "done" else "unreachable: gone")


def test_the_summary_per_board_kind_on_known_numbers() -> None:
    rows = [bench_row("a1", 1.0), bench_row("a2", 2.0), bench_row("a3", 3.0),
            bench_row("a4", 10.0), bench_row("b1", 5.0, B),
            bench_row("a5", 0.0, state="failed"),          # not counted
            bench_row("a6", 7.0, sha=OTHER)]               # another model: its own entry
    summary = {(s["sha256"], s["arch"]): s for s in summarize(rows)}
    assert len(summary) == 3
    a = summary[(SHA, "aarch64")]
    assert (a["boards"], a["median"], a["min"], a["max"]) == (4, 2.5, 1.0, 10.0)
    assert a["spread"] == 9.0 and a["spread_pct"] == pytest.approx(360.0)
    assert a["devices"] == ["a1", "a2", "a3", "a4"] and a["metric"] == "latency_p50_ms"
    assert a["cpu_model"] == "Cortex-A55" and a["onnxruntime_version"] == "1.16.0"
    b = summary[(SHA, "riscv64")]
    assert (b["boards"], b["median"], b["min"], b["max"], b["spread_pct"]) == (1, 5, 5, 5, 0)
    odd = summarize([bench_row("a1", 1.0), bench_row("a2", 4.0), bench_row("a3", 2.0)])[0]
    assert odd["median"] == 2.0 and odd["spread_pct"] == pytest.approx(150.0)


def test_an_evaluation_is_summarised_per_metric() -> None:
    rows = [RowResult(device=d, model="m.onnx", sha256=SHA, state="done", kind=A,
                      metrics={"top1": t, "cosine": c, "samples": 450})
            for d, t, c in (("a1", 0.9, 0.99), ("a2", 0.8, 0.97), ("a3", 0.85, 0.98))]
    by_metric = {s["metric"]: s for s in summarize(rows)}
    assert set(by_metric) == {"top1", "cosine"}                 # samples is a count, not a metric
    top1 = by_metric["top1"]
    assert (top1["median"], top1["min"], top1["max"]) == (0.85, 0.8, 0.9)
    assert top1["spread_pct"] == pytest.approx(100 * 0.1 / 0.85)


def test_the_exit_status_tells_all_some_and_none() -> None:
    ok, bad = bench_row("a1", 1.0), bench_row("a2", 1.0, state="failed")
    assert exit_status([ok, ok]) == ExitStatus.OK == 0
    assert exit_status([ok, bad]) == ExitStatus.SOME_FAILED == 11
    assert exit_status([bad, bad]) == ExitStatus.NONE_SUCCEEDED == 12
    interrupted = RowResult("a3", "m.onnx", SHA, "interrupted")
    assert exit_status([ok, interrupted]) == ExitStatus.SOME_FAILED


def test_the_json_document_has_the_promised_shape() -> None:
    doc = document("RUN1", [bench_row("a1", 1.5), bench_row("a2", 0, state="failed")])
    assert set(doc) == {"run", "rows", "summary"} and doc["run"] == "RUN1"
    for row in doc["rows"]:
        assert {"device", "model", "state", "result_id", "latency_ms", "metrics",
                "error"} <= set(row)
    assert doc["rows"][0]["latency_ms"] == 1.5 and doc["rows"][0]["error"] is None
    assert doc["rows"][1]["error"] == "unreachable: gone" and doc["rows"][1]["metrics"] is None


def test_reasons_name_the_kind_of_failure() -> None:
    assert reason(UnreachableError("no answer"), mid_run=False) == "unreachable: no answer"
    assert reason(UnreachableError("dropped"), mid_run=True) == "lost mid-run: dropped"
    assert reason(AuthError("foreign CA"), mid_run=False) == "refused: foreign CA"
    held = LeaseHeldError("leased to pc2 until 10:00", holder="pc2", expires_unix=0.0)
    assert reason(held, mid_run=False) == "leased: leased to pc2 until 10:00"
    assert backoff_delays(FleetSettings(retries=5, backoff_s=1.0, backoff_max_s=5.0)) == \
        [1.0, 2.0, 4.0, 5.0, 5.0]
    with pytest.raises(ValueError):
        FleetSettings(retries=-1)


# ---------------------------------------------------------------------- resume refusals

def spec(models: Any = (SHA,), **options: Any) -> FleetRunSpec:
    return FleetRunSpec(kind="benchmark", models=tuple(FileRef(m, m) for m in models),
                        template=BenchmarkSpec(model_sha256="", **options))


def test_resume_refuses_other_models_and_options_naming_the_difference() -> None:
    stored = spec(iterations=20).as_json()
    assert spec(iterations=20).difference(stored, "R1") is None
    text = spec(iterations=30).difference(stored, "R1")
    assert text == "run R1 had other options: iterations was 20, now 30"
    text = spec((SHA, OTHER), iterations=20).difference(stored, "R1")
    assert text is not None and "other models" in text and OTHER[:12] in text
    text = spec((OTHER,), iterations=20).difference(stored, "R1")
    assert text is not None and SHA[:12] in text and "not named now" in text
    evaluation = FleetRunSpec(kind="evaluate", models=(FileRef(SHA, SHA),),
                              template=EvaluateSpec(model_sha256="", dataset_sha256=""))
    assert "fleet bench; this is a fleet eval" in str(evaluation.difference(stored, "R1"))


def test_a_model_named_twice_or_by_a_hash_prefix_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="named twice"):
        spec((SHA, SHA))
    with pytest.raises(UsageError, match="full sha256"):
        file_ref("abcdef12", "model")
    with pytest.raises(Exception, match="neither a file"):
        file_ref(str(tmp_path / "nope.onnx"), "model")
    ref = file_ref(str(DIGITS_MODEL), "model")
    assert len(ref.sha256) == 64 and ref.size == DIGITS_MODEL.stat().st_size


def test_the_run_book_keeps_runs_and_rows(db_url: str) -> None:
    from edgetune.host.results.store import ResultsStore

    with ResultsStore.open(db_url) as store:
        book = rb.RunBook(store)
        run = spec((SHA, OTHER), iterations=5)
        book.create("01JRUN0000000000000000000A", run, "tag:lab", ["b1", "b2"], {"hostname": "h"})
        book.update("01JRUN0000000000000000000A", "b1", SHA, state=rb.SUBMITTED, job_id="j1")
        book.update("01JRUN0000000000000000000A", "b1", SHA, state=rb.DONE, result_id="R1")
        book.update("01JRUN0000000000000000000A", "b2", OTHER, state=rb.FAILED, error="gone")
        info = book.get("01jrun")                                  # a prefix, any case
        assert info.devices == ("b1", "b2") and info.selector == "tag:lab"
        assert spec((SHA, OTHER), iterations=5).difference(info.spec, info.id) is None
        rows = {(r.device, r.model_sha256): r for r in book.rows(info.id)}
        assert len(rows) == 4
        assert (rows[("b1", SHA)].state, rows[("b1", SHA)].job_id,
                rows[("b1", SHA)].result_id) == ("done", "j1", "R1")
        assert rows[("b2", OTHER)].error == "gone" and rows[("b2", SHA)].state == "pending"
        assert book.counts([info.id]) == {info.id: {"done": 1, "failed": 1, "pending": 2}}
        assert [r.id for r in book.runs()] == [info.id]
        with pytest.raises(NotFoundError, match="no fleet run"):
            book.get("01JZZZ")
        with pytest.raises(UsageError):
            book.get("not an id!")


def test_the_live_view_has_one_line_per_board_and_plain_lines_otherwise(capsys: Any) -> None:
    import io

    from rich.console import Console

    from edgetune.host.fleet.progress import LiveProgress, PlainProgress, auto

    screen = io.StringIO()
    view = LiveProgress(["b1", "b2", "b3"],
                        console=Console(file=screen, force_terminal=True, width=120))
    with view:
        view.note("warning: b1: its certificate is for 'x', not 'b1'")
        view.board("b1", "uploading m.onnx 40%")
        view.finished(bench_row("b2", 1.25))
        view.finished(bench_row("b3", 0, state="failed"))
    assert "edgetune: warning: b1: its certificate is for 'x'" in capsys.readouterr().err
    out = io.StringIO()
    Console(file=out, width=120).print(view._render())
    lines = out.getvalue().splitlines()
    assert [line.split()[0] for line in lines] == ["b1", "b2", "b3", "warning:"]
    assert "uploading m.onnx 40%" in lines[0] and "done m.onnx p50 1.250 ms" in lines[1]
    assert "failed m.onnx: unreachable: gone" in lines[2]
    assert isinstance(auto(["b1"], as_json=False), PlainProgress)   # pytest's stdout: no tty
    plain = io.StringIO()
    PlainProgress(plain).finished(bench_row("b2", 1.25))
    assert plain.getvalue() == "fleet: b2 m.onnx: done p50 1.250 ms\n"
