"""Board leases on the agent: a real agent (grpc.aio, mutual TLS, port 0) called by two host
certificates of one CA ("laptop" and "bench-pc"), and the lease book's file on its own."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterator, Tuple

import grpc
import pytest

from edgetune.certs import Identity
from edgetune.device.errors import FailedPrecondition, InvalidArgument
from edgetune.device.leases import FILE_NAME, LeaseBook, LeaseHeld
from edgetune.device.limits import Limits
from edgetune.protos import agent_pb2 as pb
from edgetune.protos.leases import LEASE_EXPIRES_METADATA, LEASE_HOLDER_METADATA
from tests.agent_fixtures import (TIMEOUT, mlp_model, start_agent, stub, submit_benchmark,
                                  upload_model, wait_job)

OTHER = "bench-pc"
SHORT = Limits(min_lease_ttl_s=0.2, max_lease_ttl_s=60.0)


def other_identity(pki: Any, name: str = OTHER) -> Identity:
    """A second host certificate of the same CA, with another common name."""
    leaf = pki.ca.issue_host(name, key_type=pki.key_type)
    return Identity(ca_pem=pki.ca.cert_pem, cert_pem=leaf.cert_pem, key_pem=leaf.key_pem,
                    common_name=leaf.name)


@pytest.fixture(scope="module")
def other(pki: Any) -> Identity:
    return other_identity(pki)


@pytest.fixture
def agent(pki: Any, tmp_path: Path) -> Iterator[Any]:
    running = start_agent(pki, tmp_path / "store", limits=SHORT)
    try:
        yield running
    finally:
        running.stop()


def _refusal(call: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def _acquire(s: Any, ttl: float) -> pb.Lease:
    return s.AcquireLease(pb.AcquireLeaseRequest(ttl_s=ttl), timeout=TIMEOUT).lease


def _stubs(agent: Any, pki: Any, other: Identity) -> Tuple[Any, Any]:
    return stub(agent.address, pki.host.identity), stub(agent.address, other)


def test_other_names_jobs_are_refused_naming_holder_and_expiry(agent: Any, pki: Any,
                                                               other: Identity) -> None:
    mine, theirs = _stubs(agent, pki, other)
    sha = upload_model(mine, mlp_model())
    lease = _acquire(mine, 30)
    assert lease.holder == "laptop" and len(lease.lease_id) == 32 and lease.claims == 1
    assert 29 < lease.expires_unix - time.time() <= 30.5

    err = _refusal(lambda: submit_benchmark(theirs, sha, iterations=3, warmup=1))
    assert err.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "leased to 'laptop' until" in err.details() and OTHER in err.details()
    stamp = time.strftime("%Y-%m-%d %H:%M", time.gmtime(lease.expires_unix))
    assert stamp in err.details()
    trailing = dict(err.trailing_metadata())
    assert trailing[LEASE_HOLDER_METADATA] == "laptop"
    assert abs(float(trailing[LEASE_EXPIRES_METADATA]) - lease.expires_unix) < 1e-3

    # Read-only calls, and uploads, still work for the other name; deleting does not.
    info = theirs.GetInfo(pb.GetInfoRequest(), timeout=TIMEOUT)
    assert info.lease_holder == "laptop"
    assert abs(info.lease_expires_unix - lease.expires_unix) < 1e-3
    assert theirs.ListBlobs(pb.ListBlobsRequest(), timeout=TIMEOUT).blobs
    assert theirs.ListJobs(pb.ListJobsRequest(), timeout=TIMEOUT) is not None
    other_sha = upload_model(theirs, mlp_model(hidden=32), name="theirs")
    err = _refusal(lambda: theirs.DeleteBlob(pb.DeleteBlobRequest(
        kind=pb.BLOB_KIND_MODEL, sha256=other_sha), timeout=TIMEOUT))
    assert err.code() is grpc.StatusCode.FAILED_PRECONDITION and "delete blobs" in err.details()

    # The holder measures; the other name cannot cancel its job.
    job = submit_benchmark(mine, sha, iterations=200, warmup=1).job
    err = _refusal(lambda: theirs.CancelJob(pb.CancelJobRequest(job_id=job.id), timeout=TIMEOUT))
    assert err.code() is grpc.StatusCode.FAILED_PRECONDITION and "laptop" in err.details()
    assert wait_job(mine, job.id).state == pb.JOB_STATE_SUCCEEDED

    # Released: the other name may submit again.
    released = mine.ReleaseLease(pb.ReleaseLeaseRequest(lease_id=lease.lease_id), timeout=TIMEOUT)
    assert released.released and not released.HasField("remaining")
    assert theirs.GetInfo(pb.GetInfoRequest(), timeout=TIMEOUT).lease_holder == ""
    done = wait_job(theirs, submit_benchmark(theirs, sha, iterations=3, warmup=1).job.id)
    assert done.state == pb.JOB_STATE_SUCCEEDED and done.client == OTHER


def test_own_jobs_from_before_the_lease_may_still_be_cancelled(agent: Any, pki: Any,
                                                               other: Identity) -> None:
    mine, theirs = _stubs(agent, pki, other)
    sha = upload_model(theirs, mlp_model(layers=4))
    queued = [submit_benchmark(theirs, sha, iterations=1, min_duration_s=0.0, warmup=1,
                               label=f"theirs {n}").job for n in range(2)]
    long_job = submit_benchmark(theirs, sha, iterations=1_000_000, warmup=1).job
    _acquire(mine, 30)
    reply = theirs.CancelJob(pb.CancelJobRequest(job_id=long_job.id), timeout=TIMEOUT)
    assert reply.job.state == pb.JOB_STATE_CANCELLED            # its own: allowed
    for job in queued:                                          # queued before: they ran
        assert wait_job(theirs, job.id).state == pb.JOB_STATE_SUCCEEDED


def test_acquire_renew_release_by_another_name_are_refused(agent: Any, pki: Any,
                                                           other: Identity) -> None:
    mine, theirs = _stubs(agent, pki, other)
    lease = _acquire(mine, 30)
    for call in (lambda: _acquire(theirs, 30),
                 lambda: theirs.RenewLease(pb.RenewLeaseRequest(lease_id=lease.lease_id),
                                           timeout=TIMEOUT),
                 lambda: theirs.RenewLease(pb.RenewLeaseRequest(), timeout=TIMEOUT),
                 lambda: theirs.ReleaseLease(pb.ReleaseLeaseRequest(lease_id=lease.lease_id),
                                             timeout=TIMEOUT),
                 lambda: theirs.ReleaseLease(pb.ReleaseLeaseRequest(), timeout=TIMEOUT)):
        err = _refusal(call)
        assert err.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert "leased to 'laptop'" in err.details()
    info = mine.GetInfo(pb.GetInfoRequest(), timeout=TIMEOUT)
    assert info.lease_holder == "laptop"                       # nothing of it changed
    assert abs(info.lease_expires_unix - lease.expires_unix) < 1e-3


def test_holder_acquires_again_and_renews_its_claims(agent: Any, pki: Any) -> None:
    mine = stub(agent.address, pki.host.identity)
    first = _acquire(mine, 5)
    second = _acquire(mine, 20)                  # a second process of the same host
    assert second.lease_id != first.lease_id and second.claims == 2
    assert second.board_expires_unix == second.expires_unix
    renewed = mine.RenewLease(pb.RenewLeaseRequest(lease_id=first.lease_id, ttl_s=40),
                              timeout=TIMEOUT).lease
    assert renewed.lease_id == first.lease_id and renewed.ttl_s == 40
    assert renewed.expires_unix > second.expires_unix + 15
    same = mine.RenewLease(pb.RenewLeaseRequest(lease_id=second.lease_id), timeout=TIMEOUT).lease
    assert same.ttl_s == 20                      # 0: the ttl the claim was granted with
    # Releasing one claim keeps the board leased to the other.
    reply = mine.ReleaseLease(pb.ReleaseLeaseRequest(lease_id=first.lease_id), timeout=TIMEOUT)
    assert reply.released and reply.remaining.lease_id == second.lease_id
    assert mine.GetInfo(pb.GetInfoRequest(), timeout=TIMEOUT).lease_holder == "laptop"
    again = mine.ReleaseLease(pb.ReleaseLeaseRequest(lease_id=first.lease_id), timeout=TIMEOUT)
    assert not again.released                    # gone already: said, not an error
    err = _refusal(lambda: mine.RenewLease(pb.RenewLeaseRequest(lease_id=first.lease_id),
                                           timeout=TIMEOUT))
    assert err.code() is grpc.StatusCode.FAILED_PRECONDITION and "expired or was released" \
        in err.details()
    assert mine.ReleaseLease(pb.ReleaseLeaseRequest(), timeout=TIMEOUT).released   # all of them
    assert mine.GetInfo(pb.GetInfoRequest(), timeout=TIMEOUT).lease_holder == ""


@pytest.mark.parametrize("ttl", [0.0, -5.0, 0.1, 61.0, float("inf"), float("nan")])
def test_ttl_outside_the_bounds_is_refused(agent: Any, pki: Any, ttl: float) -> None:
    mine = stub(agent.address, pki.host.identity)
    err = _refusal(lambda: _acquire(mine, ttl))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "between 0.2 and 60 seconds" in err.details() and "max_lease_ttl_s" in err.details()
    assert mine.GetInfo(pb.GetInfoRequest(), timeout=TIMEOUT).lease_holder == ""
    lease = _acquire(mine, 10)
    err = _refusal(lambda: mine.RenewLease(pb.RenewLeaseRequest(lease_id=lease.lease_id,
                                                                ttl_s=61.0), timeout=TIMEOUT))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_a_lease_expires_by_itself(agent: Any, pki: Any, other: Identity) -> None:
    mine, theirs = _stubs(agent, pki, other)
    sha = upload_model(mine, mlp_model())
    lease = _acquire(mine, 1.0)
    err = _refusal(lambda: submit_benchmark(theirs, sha, iterations=3, warmup=1))
    assert err.code() is grpc.StatusCode.FAILED_PRECONDITION
    time.sleep(max(0.0, lease.expires_unix - time.time()) + 0.2)   # the holder "died"
    assert theirs.GetInfo(pb.GetInfoRequest(), timeout=TIMEOUT).lease_holder == ""
    job = submit_benchmark(theirs, sha, iterations=3, warmup=1).job
    assert wait_job(theirs, job.id).state == pb.JOB_STATE_SUCCEEDED
    # and now the other name may lease it
    assert _acquire(theirs, 5).holder == OTHER


def test_a_lease_survives_an_agent_restart_until_its_expiry(pki: Any, other: Identity,
                                                            tmp_path: Path) -> None:
    store = tmp_path / "store"
    first = start_agent(pki, store, limits=SHORT)
    try:
        lease = _acquire(stub(first.address, pki.host.identity), 30.0)
    finally:
        first.stop()
    kept = json.loads((store / FILE_NAME).read_text())
    assert kept["holder"] == "laptop" and kept["claims"][0]["lease_id"] == lease.lease_id

    second = start_agent(pki, store, limits=SHORT)      # the same store, a new process state
    try:
        theirs = stub(second.address, other)
        info = theirs.GetInfo(pb.GetInfoRequest(), timeout=TIMEOUT)
        assert info.lease_holder == "laptop"
        assert abs(info.lease_expires_unix - lease.expires_unix) < 1e-3
        err = _refusal(lambda: _acquire(theirs, 5))
        assert err.code() is grpc.StatusCode.FAILED_PRECONDITION
        # The holder's claim is still its own after the restart.
        mine = stub(second.address, pki.host.identity)
        renewed = mine.RenewLease(pb.RenewLeaseRequest(lease_id=lease.lease_id, ttl_s=1.0),
                                  timeout=TIMEOUT).lease
        time.sleep(max(0.0, renewed.expires_unix - time.time()) + 0.2)
        assert theirs.GetInfo(pb.GetInfoRequest(), timeout=TIMEOUT).lease_holder == ""
        assert _acquire(theirs, 5).holder == OTHER
    finally:
        second.stop()


# ---------------------------------------------------------------------- the book on its own

class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_book_file_is_written_atomically_and_read_back(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / FILE_NAME
    book = LeaseBook(path, 5, 3600, clock=clock)
    lease = book.acquire("laptop", 100)
    assert not list(tmp_path.glob("*.tmp"))
    again = LeaseBook(path, 5, 3600, clock=clock)
    assert again.current() == ("laptop", lease.expires_unix)
    clock.now += 101
    assert again.current() == ("", 0.0)
    assert LeaseBook(path, 5, 3600, clock=clock).current() == ("", 0.0)   # read back: expired
    assert again.acquire("bench-pc", 10).holder == "bench-pc"
    assert json.loads(path.read_text())["holder"] == "bench-pc"


def test_book_cuts_a_lease_the_clock_stretched_to_the_longest_allowed(tmp_path: Path) -> None:
    """A board whose clock went back (no RTC before NTP) must not stay leased for years."""
    clock = Clock()
    path = tmp_path / FILE_NAME
    LeaseBook(path, 5, 600, clock=clock).acquire("laptop", 600)
    clock.now -= 10 * 365 * 86400                             # the clock jumped back ten years
    book = LeaseBook(path, 5, 600, clock=clock)
    holder, until = book.current()
    assert holder == "laptop" and until == clock.now + 600
    clock.now += 601
    assert book.current() == ("", 0.0)


@pytest.mark.parametrize("content", ["not json", '{"holder": 3, "claims": []}',
                                     '{"holder": "x", "claims": [{"lease_id": "../x"}]}', "[]"])
def test_book_starts_free_from_an_unreadable_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / FILE_NAME
    path.write_text(content)
    book = LeaseBook(path, 5, 600, clock=Clock())
    assert book.current() == ("", 0.0)
    assert book.acquire("laptop", 10).holder == "laptop"


def test_book_refuses_a_caller_without_a_name_and_checks_holders(tmp_path: Path) -> None:
    book = LeaseBook(None, 5, 600, clock=Clock())
    with pytest.raises(FailedPrecondition, match="certificate has none"):
        book.acquire("", 10)
    book.acquire("laptop", 10)
    book.check("laptop", "submit jobs")                       # the holder passes
    with pytest.raises(LeaseHeld) as info:
        book.check("bench-pc", "submit jobs")
    assert info.value.holder == "laptop" and "bench-pc may not submit jobs" in str(info.value)
    with pytest.raises(InvalidArgument):
        book.acquire("laptop", True)                          # not a number


def test_agent_toml_lease_bounds(tmp_path: Path) -> None:
    from edgetune.device.config import ConfigError, build_config

    flags = {"ca": "ca.pem", "cert": "c.pem", "key": "k.pem"}
    good = tmp_path / "good.toml"
    good.write_text("[limits]\nmin_lease_ttl_s = 1\nmax_lease_ttl_s = 600\n")
    limits = build_config(good, flags).limits
    assert (limits.min_lease_ttl_s, limits.max_lease_ttl_s) == (1.0, 600.0)
    assert (Limits().min_lease_ttl_s, Limits().max_lease_ttl_s) == (5.0, 3600.0)
    for text, message in (("min_lease_ttl_s = 100\nmax_lease_ttl_s = 10\n", "is above"),
                          ("max_lease_ttl_s = 0\n", "must be positive"),
                          ("max_lease_ttl_s = inf\n", "must be a finite number")):
        bad = tmp_path / "bad.toml"
        bad.write_text("[limits]\n" + text)
        with pytest.raises(ConfigError, match=message):
            build_config(bad, flags)


def test_lease_and_info_fields_round_trip_through_protobuf() -> None:
    from edgetune.protos.leases import Lease
    from edgetune.protos.messages import AgentInfo

    lease = Lease(holder="laptop", lease_id="ab" * 16, expires_unix=1_800_000_060.5, ttl_s=60.0,
                  remaining_s=59.5, board_expires_unix=1_800_000_090.0, claims=2)
    wire = lease.as_pb2().SerializeToString()
    assert Lease.from_pb2(pb.Lease.FromString(wire)) == lease
    assert lease.as_dict()["expires"] == "2027-01-15 08:01:00 UTC"
    reply = pb.GetInfoResponse(agent_version="x", lease_holder="laptop", lease_expires_unix=2.5)
    info = AgentInfo.from_pb2(pb.GetInfoResponse.FromString(reply.SerializeToString()))
    assert (info.lease_holder, info.lease_expires_unix) == ("laptop", 2.5)
    # The new fields are new numbers: an older reader's fields keep theirs.
    fields = pb.GetInfoResponse.DESCRIPTOR.fields_by_name
    assert fields["lease_holder"].number == 22 and fields["lease_expires_unix"].number == 23
    assert fields["agent_cert_not_after_unix"].number == 21
