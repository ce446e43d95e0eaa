"""edgetune results list/show/compare/export/rm, in-process, on a real SQLite file."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from pathlib import Path

import pytest

from edgetune.host.cli import main
from edgetune.host.cli.results_cmd import parse_since
from edgetune.host.results.records import ModelRef, Record
from edgetune.host.results.store import ResultsStore

FP32, INT8 = "a" * 64, "b" * 64


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple:
    monkeypatch.delenv("EDGETUNE_DB", raising=False)
    url = f"sqlite:///{tmp_path / 'results.db'}"
    with ResultsStore.open(url) as store:
        a = store.add(Record(kind="bench", model=ModelRef(FP32, "digits.onnx", 359662),
                             metrics={"latency_ms": {"p50": 0.0200, "p90": 0.03},
                                      "throughput_ips": 50000.0},
                             device={"name": "board1", "arch": "aarch64"}, label="fp32",
                             samples_ms=(0.02, 0.021)))
        b = store.add(Record(kind="bench", model=ModelRef(INT8, "digits.int8.onnx", 99840, FP32),
                             metrics={"latency_ms": {"p50": 0.0100, "p90": 0.015},
                                      "throughput_ips": 100000.0},
                             device={"name": "board2"}, label="int8 run"))
        c = store.add(Record(kind="eval", model=ModelRef(INT8, "digits.int8.onnx", 99840, FP32),
                             metrics={"top1": 0.99, "cosine": 0.9999}, device={"name": "board2"},
                             label="int8 run"))
    return url, a, b, c


def run_json(capsys: pytest.CaptureFixture, *argv: str) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_list_json_filters_and_keys(db: tuple, capsys: pytest.CaptureFixture) -> None:
    url, a, b, c = db
    doc = run_json(capsys, "results", "list", "--db", url)
    assert [r["id"] for r in doc["results"]] == [c.id, b.id, a.id]
    first = doc["results"][2]
    assert {"id", "kind", "created", "label", "model", "device", "options", "metrics"} <= set(first)
    assert first["model"] == {"sha256": FP32, "name": "digits.onnx", "size_bytes": 359662,
                              "parent_sha256": None}
    assert first["metrics"]["latency_ms"]["p50"] == 0.02 and "samples_ms" not in first
    only = run_json(capsys, "results", "list", "--db", url, "--kind", "bench",
                    "--device", "board2")
    assert [r["id"] for r in only["results"]] == [b.id]
    by_model = run_json(capsys, "results", "list", "--db", url, "--model", INT8[:6])
    assert {r["id"] for r in by_model["results"]} == {b.id, c.id}
    assert len(run_json(capsys, "results", "list", "--db", url, "--label", "int8*")["results"]) == 2
    assert len(run_json(capsys, "results", "list", "--db", url, "--limit", "1")["results"]) == 1


def test_model_filter_takes_a_file(db: tuple, tmp_path: Path, capsys) -> None:
    url, *_ = db
    model = tmp_path / "m.onnx"
    model.write_bytes(b"not really a model")
    assert run_json(capsys, "results", "list", "--db", url, "--model", str(model)) == \
        {"results": []}
    assert main(["results", "list", "--db", url, "--model", "zz-not-hex"]) == 2
    assert "neither a file nor a sha256" in capsys.readouterr().err


def test_show_by_prefix_prints_the_whole_record(db: tuple, capsys) -> None:
    url, a, *_ = db
    doc = run_json(capsys, "results", "show", a.id.lower(), "--db", url)
    assert doc["result"]["id"] == a.id
    assert doc["result"]["samples_ms"] == [0.02, 0.021]
    assert main(["results", "show", a.id, "--db", url]) == 0
    out = capsys.readouterr().out
    assert a.id in out and "aarch64" in out


def test_unknown_ambiguous_and_malformed_ids(db: tuple, capsys) -> None:
    url, a, *_ = db
    assert main(["results", "show", "7ZZZZZZZ", "--db", url]) == 4
    assert "no result" in capsys.readouterr().err
    assert main(["results", "show", a.id[:2], "--db", url]) == 2
    assert "ambiguous" in capsys.readouterr().err
    assert main(["results", "show", "not-an-id!", "--db", url]) == 2
    assert "not a result id" in capsys.readouterr().err


def test_compare_gives_ratios_and_points(db: tuple, capsys) -> None:
    url, a, b, c = db
    doc = run_json(capsys, "results", "compare", a.id, b.id, "--db", url)
    change = doc["changes"][0]
    assert change["a"] == a.id and change["b"] == b.id
    assert change["latency_p50_ratio"] == pytest.approx(0.5)
    assert change["size_ratio"] == pytest.approx(99840 / 359662)
    assert change["throughput_ratio"] == pytest.approx(2.0)
    assert change["top1_delta_pts"] is None
    assert main(["results", "compare", a.id, b.id, "--db", url]) == 0
    table = capsys.readouterr().out
    assert "0.50x (-50%)" in table and "2.00x (+100%)" in table and "0.28x (-72%)" in table
    assert main(["results", "compare", a.id, "--db", url]) == 2


def test_export_csv_json_md_to_files(db: tuple, tmp_path: Path, capsys) -> None:
    url, a, b, c = db
    out = tmp_path / "out" / "results.csv"
    assert main(["results", "export", "--db", url, "--format", "csv", "-o", str(out)]) == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [r["id"] for r in rows] == [a.id, b.id, c.id]         # oldest first
    assert rows[0]["metrics.latency_ms.p50"] == "0.02" and rows[2]["metrics.top1"] == "0.99"
    assert rows[1]["model.parent_sha256"] == FP32
    exported = tmp_path / "results.json"
    assert main(["results", "export", "--db", url, "--format", "json", "--kind", "bench",
                 "-o", str(exported)]) == 0
    doc = json.loads(exported.read_text())
    assert [r["id"] for r in doc["results"]] == [a.id, b.id]
    assert doc["results"][0]["samples_ms"] == [0.02, 0.021]
    assert Record.from_json(doc["results"][1]).model.parent_sha256 == FP32
    capsys.readouterr()
    assert main(["results", "export", "--db", url, "--format", "md", "--device", "board1"]) == 0
    md = capsys.readouterr().out
    assert md.startswith("| id") and a.id in md and b.id not in md
    assert not list(out.parent.glob(".*"))           # no temp file left beside the output


def test_rm_removes_only_what_it_names(db: tuple, capsys) -> None:
    url, a, b, c = db
    assert run_json(capsys, "results", "rm", b.id.lower(), "--db", url) == {"deleted": [b.id]}
    left = run_json(capsys, "results", "list", "--db", url)
    assert [r["id"] for r in left["results"]] == [c.id, a.id]


def test_since_accepts_dates_and_ages() -> None:
    now = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.timezone.utc)
    assert parse_since("3d", now) == now - dt.timedelta(days=3)
    assert parse_since("30m", now) == now - dt.timedelta(minutes=30)
    assert parse_since("2026-12-01T10:00+00:00") == dt.datetime(2026, 12, 1, 10,
                                                                tzinfo=dt.timezone.utc)
    assert parse_since("2026-12-01").tzinfo is not None


def test_since_filters(db: tuple, capsys) -> None:
    url, *_ = db
    assert len(run_json(capsys, "results", "list", "--db", url, "--since", "1h")["results"]) == 3
    future = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)).isoformat()
    assert run_json(capsys, "results", "list", "--db", url, "--since", future) == {"results": []}
    assert main(["results", "list", "--db", url, "--since", "yesterday"]) == 2


def test_db_from_env_and_inventory(db: tuple, tmp_path: Path, monkeypatch, capsys) -> None:
    url, *_ = db
    monkeypatch.setenv("EDGETUNE_DB", url)
    assert len(run_json(capsys, "results", "list")["results"]) == 3
    monkeypatch.delenv("EDGETUNE_DB")
    inventory = tmp_path / "edgetune.toml"
    inventory.write_text('[results]\ndb = "results.db"\n')
    assert len(run_json(capsys, "results", "list", "--inventory", str(inventory))["results"]) == 3
    other = tmp_path / "other" / "edgetune.toml"
    other.parent.mkdir()
    other.write_text("")
    assert run_json(capsys, "results", "list", "--inventory", str(other)) == {"results": []}
    assert (other.parent / ".edgetune" / "results.db").is_file()


def test_a_database_that_is_not_one_is_refused(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "x.db"
    bad.write_text("hello")
    assert main(["results", "list", "--db", str(bad)]) == 3
    assert "not a SQLite database" in capsys.readouterr().err
    assert bad.read_text() == "hello"
