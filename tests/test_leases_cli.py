"""``edgetune lease ...`` and ``edgetune bench``'s lease, in-process CLI against a real agent
process over mutual TLS; a second host certificate ("bench-pc") of the same CA."""

from __future__ import annotations

import functools
import json
import logging
import time
from pathlib import Path
from typing import Any, Iterator, List

import pytest

from edgetune.certs import Identity
from edgetune.device.leases import FILE_NAME
from edgetune.exitcodes import ExitStatus
from edgetune.protos import agent_pb2 as pb
from tests.host_fixtures import (DIGITS_MODEL, RunningAgent, run_cli, start_agent,
                                 write_passphrase_file)
from tests.pki_fixtures import IdentityFiles

SHORT_TTLS = "[limits]\nmin_lease_ttl_s = 0.2\nmax_lease_ttl_s = 120\n"


@pytest.fixture(scope="module")
def agent(pki: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    work = tmp_path_factory.mktemp("lease-cli-agent")
    config = work / "agent.toml"
    config.write_text(SHORT_TTLS)
    running = start_agent(pki, work, extra_args=["--config", str(config)])
    try:
        yield running
    finally:
        running.agent.stop()


@pytest.fixture(scope="module")
def other(pki: Any, tmp_path_factory: pytest.TempPathFactory) -> IdentityFiles:
    """A second host certificate of the same CA, on disk (encrypted key)."""
    leaf = pki.ca.issue_host("bench-pc", key_type=pki.key_type)
    cert, key = leaf.write(tmp_path_factory.mktemp("bench-pc"), pki.passphrase)
    identity = Identity(ca_pem=pki.ca.cert_pem, cert_pem=leaf.cert_pem, key_pem=leaf.key_pem,
                        common_name=leaf.name)
    return IdentityFiles(ca=pki.ca_cert, cert=cert, key=key, identity=identity)


@pytest.fixture
def free_board(agent: RunningAgent, other: IdentityFiles,
               capsys: pytest.CaptureFixture) -> Iterator[RunningAgent]:
    yield agent
    for who in (None, other):                # whatever a test left held: released
        run_cli(capsys, "lease", "release", *agent.conn(who))


def lease(capsys: Any, agent: RunningAgent, *argv: str, who: Any = None) -> Any:
    return run_cli(capsys, "lease", *argv, *agent.conn(who))


def test_acquire_show_renew_release_json(free_board: RunningAgent, other: IdentityFiles,
                                         capsys: pytest.CaptureFixture) -> None:
    agent = free_board
    got = lease(capsys, agent, "acquire", "--ttl", "30", "--json")
    assert got.code == 0, got.err
    held = got.json["lease"]
    assert held["holder"] == "laptop" and len(held["lease_id"]) == 32
    assert 25 < held["remaining_s"] <= 30 and held["expires"].endswith(" UTC")
    assert got.json["address"] == agent.address

    shown = lease(capsys, agent, "show", "--json")
    assert shown.code == 0
    assert shown.json["holder"] == "laptop" and shown.json["ours"] is True
    assert abs(shown.json["expires_unix"] - held["expires_unix"]) < 1e-3
    theirs = lease(capsys, agent, "show", "--json", who=other)
    assert theirs.json["holder"] == "laptop" and theirs.json["ours"] is False
    text = lease(capsys, agent, "show", who=other)
    assert f"leased by laptop until {held['expires']}" in text.out

    for action in (["acquire", "--ttl", "30"], ["renew"], ["release"]):  # the other host may not
        refused = lease(capsys, agent, *action, "--json", who=other)
        assert refused.code == ExitStatus.AGENT, refused.out
        error = refused.json["error"]
        assert error["type"] == "LeaseHeldError" and "leased to 'laptop' until" in error["message"]

    renewed = lease(capsys, agent, "renew", "--ttl", "60", "--lease-id", held["lease_id"],
                    "--json")
    assert renewed.code == 0 and renewed.json["lease"]["expires_unix"] > held["expires_unix"] + 20

    released = lease(capsys, agent, "release", "--json")
    assert released.code == 0
    assert released.json["released"] is True and released.json["remaining"] is None
    assert lease(capsys, agent, "show", "--json").json["holder"] is None
    again = lease(capsys, agent, "release")
    assert again.code == 0 and "no such lease" in again.out


@pytest.mark.parametrize("ttl", ["0", "-3", "nan", "inf"])
def test_bad_ttl_is_refused_before_connecting(capsys: pytest.CaptureFixture, ttl: str) -> None:
    got = run_cli(capsys, "lease", "acquire", "--ttl", ttl, "--address", "127.0.0.1:9",
                  "--pki", "nowhere", "--json")
    assert got.code == ExitStatus.USAGE
    assert "--ttl must be a positive number of seconds" in got.json["error"]["message"]


def test_ttl_beyond_the_agents_bounds_is_refused(free_board: RunningAgent,
                                                 capsys: pytest.CaptureFixture) -> None:
    got = lease(capsys, free_board, "acquire", "--ttl", "100000")
    assert got.code == ExitStatus.BAD_INPUT
    assert "between 0.2 and 120 seconds" in got.err and "max_lease_ttl_s" in got.err
    bad_id = lease(capsys, free_board, "renew", "--lease-id", "../etc")
    assert bad_id.code == ExitStatus.USAGE and "--lease-id" in bad_id.err


def _lease_file(agent: RunningAgent) -> Path:
    return agent.store / FILE_NAME


def test_bench_takes_the_lease_and_releases_it(free_board: RunningAgent,
                                               capsys: pytest.CaptureFixture) -> None:
    agent = free_board
    path = _lease_file(agent)
    before = path.stat().st_mtime_ns if path.exists() else 0
    got = run_cli(capsys, "bench", str(DIGITS_MODEL), "--iterations", "5", "--warmup", "1",
                  "--json", *agent.conn())
    assert got.code == 0, got.err
    assert path.stat().st_mtime_ns > before              # the agent wrote a lease down ...
    kept = json.loads(path.read_text())
    assert kept["holder"] == "" and kept["claims"] == []  # ... and bench released it
    assert "leased to laptop" in agent.agent.output(200)
    assert "laptop released claim" in agent.agent.output(200)


def test_bench_no_lease_leaves_the_lease_alone(free_board: RunningAgent,
                                               capsys: pytest.CaptureFixture) -> None:
    agent = free_board
    run_cli(capsys, "lease", "release", *agent.conn())   # the file exists from here on
    path = _lease_file(agent)
    before = path.stat().st_mtime_ns
    time.sleep(0.05)
    got = run_cli(capsys, "bench", str(DIGITS_MODEL), "--iterations", "5", "--warmup", "1",
                  "--no-lease", "--json", *agent.conn())
    assert got.code == 0, got.err
    assert path.stat().st_mtime_ns == before              # no lease was taken


def test_bench_is_refused_while_another_host_holds_the_board(
        free_board: RunningAgent, other: IdentityFiles, capsys: pytest.CaptureFixture) -> None:
    agent = free_board
    assert lease(capsys, agent, "acquire", "--ttl", "30", who=other).code == 0
    for extra in ([], ["--no-lease"]):                    # the agent refuses the job either way
        got = run_cli(capsys, "bench", str(DIGITS_MODEL), "--iterations", "3", *extra,
                      *agent.conn())
        assert got.code == ExitStatus.AGENT
        assert "leased to 'bench-pc' until" in got.err


# ---------------------------------------------------------------------- an older agent

@pytest.fixture
def old_agent(pki: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """An agent without the lease RPCs (UNIMPLEMENTED, as from one of before leases)."""
    from edgetune.device import server, servicer
    from tests.agent_fixtures import start_agent as start_in_process

    older = [m.name for m in pb.DESCRIPTOR.services_by_name["Agent"].methods
             if m.name not in ("AcquireLease", "RenewLease", "ReleaseLease")]
    monkeypatch.setattr(server, "add_to_server",
                        functools.partial(servicer.add_to_server, methods=older))
    running = start_in_process(pki, tmp_path / "store")
    running.passphrase_file = write_passphrase_file(tmp_path / "passphrase", pki.passphrase)
    try:
        yield running
    finally:
        running.stop()


def _conn(old_agent: Any, pki: Any) -> List[str]:
    return ["--address", old_agent.address, "--ca", str(pki.ca_cert), "--cert",
            str(pki.host.cert), "--key", str(pki.host.key), "--passphrase-file",
            str(old_agent.passphrase_file)]


def test_old_agent_lease_command_says_to_upgrade(old_agent: Any, pki: Any,
                                                 capsys: pytest.CaptureFixture) -> None:
    got = run_cli(capsys, "lease", "acquire", *_conn(old_agent, pki))
    assert got.code == ExitStatus.INCOMPATIBLE
    assert "does not grant leases; upgrade it, or pass --no-lease" in got.err


def test_old_agent_bench_proceeds_with_a_warning(old_agent: Any, pki: Any,
                                                 capsys: pytest.CaptureFixture,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="edgetune.host.leases")
    got = run_cli(capsys, "bench", str(DIGITS_MODEL), "--iterations", "3", "--warmup", "1",
                  "--json", *_conn(old_agent, pki))
    assert got.code == 0, got.err                         # 0: the job succeeded
    assert len(got.json["results"]) == 1
    assert "does not grant leases; upgrade it, or pass --no-lease" in caplog.text
    assert "not protected" in caplog.text


def test_fleet_status_shows_who_leases_a_board(free_board: RunningAgent, other: IdentityFiles,
                                               pki: Any, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    agent = free_board
    inventory = tmp_path / "edgetune.toml"
    host = pki.host
    inventory.write_text(f'[host]\nca = "{host.ca}"\ncert = "{host.cert}"\nkey = "{host.key}"\n'
                         f'passphrase_file = "{agent.passphrase_file}"\n\n'
                         f'[devices.board1]\naddress = "{agent.address}"\n')
    status = ["fleet", "status", "--inventory", str(inventory)]
    free = run_cli(capsys, *status, "--json").json["devices"][0]
    assert free["state"] == "serving" and free["lease_holder"] is None
    taken = lease(capsys, agent, "acquire", "--ttl", "30", "--json", who=other).json["lease"]
    got = run_cli(capsys, *status, "--json")
    assert got.code == 0                                 # a leased board is serving
    row = got.json["devices"][0]
    assert row["state"] == "leased" and row["lease_holder"] == "bench-pc"
    assert abs(row["lease_expires_unix"] - taken["expires_unix"]) < 1e-3
    assert row["reason"] == f"leased by bench-pc until {taken['expires']}"
    table = run_cli(capsys, *status)
    assert f"leased by bench-pc until {taken['expires']}" in " ".join(table.out.split())
