"""The host side of leases: ``AgentClient`` lease calls, ``BoardSession.lease`` (renewing in a
thread, releasing at the end, losing it as a warning) against a real agent process over
mutual TLS, two host certificates of one CA, and an agent without the lease RPCs."""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from edgetune.certs import Identity
from edgetune.host.board import BoardSession
from edgetune.host.client import AgentClient
from edgetune.host.errors import LeaseHeldError, LeasesUnsupportedError
from edgetune.protos import agent_pb2 as pb
from edgetune.protos.messages import BenchmarkSpec
from tests.host_fixtures import DIGITS_MODEL, RunningAgent, start_agent

LEASE_RPCS = ("AcquireLease", "RenewLease", "ReleaseLease")
SHORT_TTLS = "[limits]\nmin_lease_ttl_s = 0.2\nmax_lease_ttl_s = 120\n"


def second_host(pki: Any, name: str = "bench-pc") -> Identity:
    leaf = pki.ca.issue_host(name, key_type=pki.key_type)
    return Identity(ca_pem=pki.ca.cert_pem, cert_pem=leaf.cert_pem, key_pem=leaf.key_pem,
                    common_name=leaf.name)


@pytest.fixture(scope="module")
def agent(pki: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    work = tmp_path_factory.mktemp("lease-agent")
    config = work / "agent.toml"
    config.write_text(SHORT_TTLS)
    running = start_agent(pki, work, extra_args=["--config", str(config)])
    try:
        yield running
    finally:
        running.agent.stop()


@pytest.fixture
def clients(agent: RunningAgent, pki: Any) -> Iterator[Any]:
    """(ours as "laptop", a second "laptop" client, "bench-pc"); the board is free after."""
    made = [AgentClient(agent.address, pki.host.identity),
            AgentClient(agent.address, pki.host.identity),
            AgentClient(agent.address, second_host(pki))]
    try:
        yield made
    finally:
        for client in made:
            try:
                client.release_lease("")
            except LeaseHeldError:
                pass
            client.close()


def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition never came true"
        time.sleep(0.05)


def test_session_lease_renews_refuses_others_and_releases(clients: Any) -> None:
    mine, _, theirs = clients
    board = BoardSession(mine, "board1")
    with board.lease(2.4) as held:
        assert held.supported and held.holder == "laptop" and board.held_lease is held
        first = held.expires_unix
        time.sleep(3.2)                      # longer than the ttl: only renewals keep it
        assert not held.lost and held.expires_unix > first
        assert theirs.info().lease_holder == "laptop"
        with board.lease(2.4) as inner:      # nested: the outer lease, not a second claim
            assert inner is held
        with pytest.raises(LeaseHeldError) as refused:
            theirs.submit(BenchmarkSpec(model_sha256="0" * 64, iterations=3))
        assert refused.value.holder == "laptop"
        assert refused.value.expires_unix > time.time()
        assert "leased to 'laptop' until" in refused.value.message
        run = board.benchmark(DIGITS_MODEL, BenchmarkSpec(model_sha256="", iterations=5,
                                                          warmup=1))
        assert run.ok
    assert board.held_lease is None
    assert theirs.info().lease_holder == ""
    assert theirs.acquire_lease(5).holder == "bench-pc"         # free for others again


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_session_lease_is_released_on_ctrl_c_and_errors(clients: Any, error: type) -> None:
    mine, _, theirs = clients
    board = BoardSession(mine, "board1")
    with pytest.raises(error):
        with board.lease(30):
            assert theirs.info().lease_holder == "laptop"
            raise error()
    assert theirs.info().lease_holder == ""


def test_session_lease_refused_while_another_host_holds_the_board(clients: Any) -> None:
    mine, _, theirs = clients
    taken = theirs.acquire_lease(30)
    with pytest.raises(LeaseHeldError) as refused:
        with BoardSession(mine, "board1").lease(10):
            raise AssertionError("the block must not run")
    assert refused.value.holder == "bench-pc"
    assert abs(refused.value.expires_unix - taken.expires_unix) < 1e-3


def test_a_lost_lease_is_a_warning_and_taken_again(clients: Any,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    mine, same_host, theirs = clients
    caplog.set_level(logging.WARNING, logger="edgetune.host.leases")
    board = BoardSession(mine, "board1")
    with board.lease(0.9) as held:
        old = held.lease_id
        same_host.release_lease("")          # e.g. `edgetune lease release` in another shell
        _until(lambda: held.losses >= 1 and not held.lost)
        assert held.lease_id != old and theirs.info().lease_holder == "laptop"
    text = caplog.text
    assert "lost the lease on board1" in text and "not protected" in text
    assert "took the lease on board1 again" in text


def test_a_lease_taken_by_another_host_stays_lost(clients: Any,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    mine, same_host, theirs = clients
    caplog.set_level(logging.WARNING, logger="edgetune.host.leases")
    with BoardSession(mine, "board1").lease(0.9) as held:
        deadline = time.monotonic() + 10
        while True:                          # the keeper may take it back in between: again
            same_host.release_lease("")
            try:
                theirs.acquire_lease(30)
                break
            except LeaseHeldError:
                assert time.monotonic() < deadline
        _until(lambda: held.lost and "bench-pc" in held.lost_reason)
    assert "now leased to 'bench-pc'" in caplog.text
    assert theirs.info().lease_holder == "bench-pc"     # nobody released the other's lease


def test_client_lease_calls_round_trip(clients: Any) -> None:
    mine, same_host, _ = clients
    a = mine.acquire_lease(20)
    b = same_host.acquire_lease(20)
    assert b.claims == 2 and b.holder == "laptop"
    renewed = mine.renew_lease(a.lease_id, 40)
    assert renewed.lease_id == a.lease_id and renewed.expires_unix > b.expires_unix
    released, remaining = mine.release_lease(a.lease_id)
    assert released and remaining is not None and remaining.lease_id == b.lease_id
    assert mine.release_lease("") == (True, None)


# ---------------------------------------------------------------------- an older agent

@pytest.fixture
def old_agent(pki: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """An agent serving every RPC but the lease ones (they answer UNIMPLEMENTED, as from an
    agent of before leases)."""
    from edgetune.device import server, servicer
    from tests.agent_fixtures import start_agent as start_in_process

    older = [m.name for m in pb.DESCRIPTOR.services_by_name["Agent"].methods
             if m.name not in LEASE_RPCS]
    monkeypatch.setattr(server, "add_to_server",
                        functools.partial(servicer.add_to_server, methods=older))
    running = start_in_process(pki, tmp_path / "store")
    try:
        yield running
    finally:
        running.stop()


def test_an_agent_without_leases_says_so(old_agent: Any, pki: Any,
                                         caplog: pytest.LogCaptureFixture) -> None:
    from edgetune import __version__

    with AgentClient(old_agent.address, pki.host.identity) as client:
        with pytest.raises(LeasesUnsupportedError) as refused:
            client.acquire_lease(30)
        assert (f"this agent (version {__version__}, at {old_agent.address}) does not grant "
                "leases; upgrade it, or pass --no-lease") in refused.value.message
        assert refused.value.agent_version == __version__
        board = BoardSession(client, "old")
        with pytest.raises(LeasesUnsupportedError):
            with board.lease(30):
                raise AssertionError("required: the block must not run")
        caplog.set_level(logging.WARNING, logger="edgetune.host.leases")
        with board.lease(30, required=False) as held:
            assert not held.supported and held.lease is None
            assert board.benchmark(DIGITS_MODEL, BenchmarkSpec(model_sha256="", iterations=3,
                                                               warmup=1)).ok
    assert "does not grant leases" in caplog.text and "not protected" in caplog.text
