"""``edgetune demo`` end to end: throw-away PKI, local agent subprocess, bench and eval."""

from __future__ import annotations

import tempfile
from pathlib import Path

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
