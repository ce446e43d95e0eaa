"""One exit-code table for ``edgetune`` and ``edgetune-agent``: the same problem with the
certificates exits with the same code on both sides, and both ``--help``s print the table."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List

import pytest

from edgetune.device.cli import main as agent_main
from edgetune.exitcodes import ExitStatus, help_table
from edgetune.host.cli import main as host_main


def _host(pki: Any, ca: Path, cert: Path, key: Path) -> int:
    # The identity is loaded and checked before any connection: nothing listens on port 9.
    return host_main(["info", "--address", "127.0.0.1:9", "--ca", str(ca), "--cert", str(cert),
                      "--key", str(key), "--timeout", "2"])


def _agent(pki: Any, ca: Path, cert: Path, key: Path, tmp_path: Path) -> int:
    return agent_main(["check", "--listen", "127.0.0.1:0", "--ca", str(ca), "--cert", str(cert),
                       "--key", str(key), "--store", str(tmp_path / "store")])


@pytest.fixture
def quiet_env(pki: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGETUNE_PASSPHRASE", pki.passphrase.decode())
    monkeypatch.delenv("EDGETUNE_CONFIG", raising=False)
    monkeypatch.setattr("sys.stdin", open(os.devnull))           # never a prompt


def test_a_missing_certificate_file_exits_the_same_on_both_sides(
        pki: Any, tmp_path: Path, quiet_env: None) -> None:
    gone = tmp_path / "gone-cert.pem"
    host = _host(pki, pki.host.ca, gone, pki.host.key)
    agent = _agent(pki, pki.device.ca, gone, pki.device.key, tmp_path)
    assert host == agent == ExitStatus.NOT_FOUND


def test_a_wrong_passphrase_exits_the_same_on_both_sides(
        pki: Any, tmp_path: Path, quiet_env: None, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("EDGETUNE_PASSPHRASE", "not the passphrase")
    host = _host(pki, pki.host.ca, pki.host.cert, pki.host.key)
    agent = _agent(pki, pki.device.ca, pki.device.cert, pki.device.key, tmp_path)
    assert host == agent == ExitStatus.AUTH
    assert capsys.readouterr().err.count("wrong passphrase") == 2


def test_no_passphrase_source_exits_the_same_on_both_sides(
        pki: Any, tmp_path: Path, quiet_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGETUNE_PASSPHRASE")
    host = _host(pki, pki.host.ca, pki.host.cert, pki.host.key)
    agent = _agent(pki, pki.device.ca, pki.device.cert, pki.device.key, tmp_path)
    assert host == agent == ExitStatus.USAGE


def test_a_certificate_without_the_needed_usage_exits_the_same_on_both_sides(
        pki: Any, tmp_path: Path, quiet_env: None, capsys: pytest.CaptureFixture) -> None:
    # The board's serverAuth certificate as the PC's client certificate, and the PC's
    # clientAuth certificate as the agent's server certificate.
    host = _host(pki, pki.device.ca, pki.device.cert, pki.device.key)
    agent = _agent(pki, pki.host.ca, pki.host.cert, pki.host.key, tmp_path)
    err = capsys.readouterr().err
    assert "clientAuth" in err and "serverAuth" in err
    assert host == agent == ExitStatus.AUTH


def test_a_key_of_another_certificate_exits_the_same_on_both_sides(
        pki: Any, tmp_path: Path, quiet_env: None) -> None:
    host = _host(pki, pki.host.ca, pki.host.cert, pki.device.key)
    agent = _agent(pki, pki.device.ca, pki.device.cert, pki.host.key, tmp_path)
    assert host == agent == ExitStatus.AUTH


def _epilog(main: Any, capsys: pytest.CaptureFixture) -> str:
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    return out[out.index("exit codes"):]


def test_both_helps_print_the_same_table(capsys: pytest.CaptureFixture) -> None:
    host, agent = _epilog(host_main, capsys), _epilog(agent_main, capsys)
    assert host.strip() == agent.strip() == help_table().strip()
    for status in ExitStatus:
        assert f"  {int(status):<4} " in host, status


def test_the_table_is_documented() -> None:
    root = Path(__file__).resolve().parent.parent
    commands = (root / "docs" / "commands.md").read_text()
    section = commands[commands.index("## Exit codes"):]
    rows: List[str] = [line for line in section.splitlines() if line.startswith("| ")]
    documented = {int(line.split("|")[1]) for line in rows[1:] if line.split("|")[1].strip()
                  .isdigit()}
    assert documented == {int(s) for s in ExitStatus}
    agent = (root / "docs" / "agent.md").read_text()
    assert "docs/commands.md" in agent or "commands.md#exit-codes" in agent


def test_a_fleet_run_tells_some_failed_from_none_succeeded() -> None:
    from edgetune.exitcodes import MEANINGS, label

    fleet = (ExitStatus.SOME_FAILED, ExitStatus.NONE_SUCCEEDED)
    others = {int(s) for s in ExitStatus if s not in fleet}
    assert {int(s) for s in fleet}.isdisjoint(others) and len({int(s) for s in fleet}) == 2
    assert (label(fleet[0]), label(fleet[1])) == ("some failed", "none succeeded")
    assert "some boards failed" in MEANINGS[fleet[0]]
    assert "no board succeeded" in MEANINGS[fleet[1]]
