"""A message from a newer (or older) peer that this side cannot read gives an error naming
both versions and what to upgrade, never a traceback: a real agent refusing a newer host's
job kind, and the host reading a newer agent's job state or result."""

from __future__ import annotations

from typing import Any, Iterator, Optional

import grpc
import pytest

from edgetune import __version__
from edgetune.exitcodes import ExitStatus
from edgetune.protos import agent_pb2 as pb
from edgetune.protos.messages import (INCOMPATIBLE_METADATA, VERSION_METADATA, Job, JobEvent,
                                      SessionOptions, UnknownToThisVersion, job_spec_from_pb2)

SERVICE = "/edgetune.agent.v1.Agent"


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2), built by hand."""
    def varint(n: int) -> bytes:
        out = bytearray()
        while n >= 0x80:
            out.append(n & 0x7F | 0x80)
            n >>= 7
        out.append(n)
        return bytes(out)
    return varint(number << 3 | 2) + varint(len(payload)) + payload


# A JobSpec of a kind this version does not know: a newer host's oneof member, field 7.
NEW_KIND_SPEC = _field(3, b"from a newer host") + _field(7, _field(1, b"some new spec"))


@pytest.fixture(scope="module")
def agent(pki: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.agent_fixtures import start_agent
    running = start_agent(pki, tmp_path_factory.mktemp("skew") / "store")
    yield running
    running.stop()


def _raw_call(agent: Any, pki: Any, method: str, request: bytes, response: Any,
              version: Optional[str]) -> grpc.RpcError:
    from tests.agent_fixtures import channel
    metadata = ((VERSION_METADATA, version),) if version else ()
    with channel(agent.address, pki.host.identity) as ch:
        call = ch.unary_unary(f"{SERVICE}/{method}", request_serializer=lambda b: b,
                              response_deserializer=response.FromString)
        with pytest.raises(grpc.RpcError) as err:
            call(request, timeout=30, metadata=metadata)
    return err.value


def test_agent_refuses_a_newer_hosts_job_kind_naming_both_versions(agent: Any, pki: Any) -> None:
    err = _raw_call(agent, pki, "SubmitJob", _field(1, NEW_KIND_SPEC), pb.SubmitJobResponse,
                    "0.2.0")
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    details = err.details()
    assert f"this agent (edgetune {__version__})" in details
    assert "the host runs edgetune 0.2.0" in details
    assert "a new kind of job" in details and "upgrade the agent on the board" in details
    assert "Traceback" not in details
    assert dict(err.trailing_metadata())[INCOMPATIBLE_METADATA] == __version__


def test_agent_says_when_the_host_sent_no_version(agent: Any, pki: Any) -> None:
    err = _raw_call(agent, pki, "SubmitJob", _field(1, NEW_KIND_SPEC), pb.SubmitJobResponse,
                    None)
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "the host did not say its version" in err.details()


def test_agent_refuses_an_unknown_enum_value_in_a_request(agent: Any, pki: Any) -> None:
    request = pb.ListBlobsRequest(kind=7).SerializeToString()       # a blob kind of 0.2
    err = _raw_call(agent, pki, "ListBlobs", request, pb.ListBlobsResponse, "0.2.0")
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "blob kind 7" in err.details() and "edgetune 0.2.0" in err.details()


def test_an_empty_job_spec_is_still_plain_bad_input(agent: Any, pki: Any) -> None:
    err = _raw_call(agent, pki, "SubmitJob", _field(1, _field(3, b"nothing")),
                    pb.SubmitJobResponse, "0.2.0")
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "set spec.benchmark or spec.evaluate" in err.details()
    assert INCOMPATIBLE_METADATA not in dict(err.trailing_metadata())


def test_the_host_turns_the_refusal_into_exit_code_incompatible(agent: Any, pki: Any) -> None:
    from edgetune.host.errors import IncompatibleError
    from edgetune.host.rpcerrors import RpcContext, translate_rpc_error
    err = _raw_call(agent, pki, "SubmitJob", _field(1, NEW_KIND_SPEC), pb.SubmitJobResponse,
                    "0.2.0")
    error = translate_rpc_error(err, RpcContext(address=agent.address, our_name="laptop"))
    assert isinstance(error, IncompatibleError)
    assert error.exit_status == ExitStatus.INCOMPATIBLE == 10
    assert "upgrade edgetune-agent on the board" in error.hint


def test_the_host_sends_its_version_on_every_call(agent: Any, pki: Any,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from edgetune.device import servicer
    from edgetune.host.client import AgentClient
    from edgetune.host.errors import IncompatibleError
    seen = []
    real = servicer.peer_version
    monkeypatch.setattr(servicer, "peer_version", lambda ctx: seen.append(real(ctx)) or real(ctx))
    # A newer host's unknown blob kind through the real client: the agent names our version.
    with AgentClient(agent.address, pki.host.identity) as client:
        with pytest.raises(IncompatibleError) as err:
            client._call("ListBlobs", pb.ListBlobsRequest(kind=7))
    assert seen == [__version__]
    assert f"the host runs edgetune {__version__}" in str(err.value)


# ------------------------------------------------------------------ the host reading replies

def _job_bytes(state: int, extra: bytes = b"") -> bytes:
    job = pb.Job(id="j1", state=state, spec=pb.JobSpec(evaluate=pb.EvaluateSpec(
        model_sha256="a" * 64, dataset_sha256="b" * 64)))
    return job.SerializeToString() + extra


def test_messages_name_what_this_version_cannot_read() -> None:
    with pytest.raises(UnknownToThisVersion, match="job state 9"):
        Job.from_pb2(pb.Job.FromString(_job_bytes(9)))
    with pytest.raises(UnknownToThisVersion, match="job state 9"):
        JobEvent.from_pb2(pb.JobEvent(job_id="j1", state=9))
    newer_result = _field(20, _field(1, b"a result of 0.2"))  # a kind 0.2 adds
    with pytest.raises(UnknownToThisVersion, match="a job result of a new kind"):
        Job.from_pb2(pb.Job.FromString(_job_bytes(pb.JOB_STATE_SUCCEEDED, newer_result)))
    with pytest.raises(UnknownToThisVersion, match="a new kind of job"):
        job_spec_from_pb2(pb.JobSpec.FromString(NEW_KIND_SPEC))
    with pytest.raises(UnknownToThisVersion, match="graph optimization level 9"):
        SessionOptions.from_pb2(pb.SessionOptions(graph_optimization=9))
    # A compatible addition (a new field beside a known result) is still read.
    known = Job.from_pb2(pb.Job.FromString(_job_bytes(pb.JOB_STATE_FAILED, newer_result)))
    assert known.state.value == "failed" and known.result is None


@pytest.mark.parametrize("ours, hint", [("0.0.1", "upgrade edgetune on this PC"),
                                        (None, "upgrade edgetune-agent on the board")])
def test_the_host_reading_a_newer_agents_job_gets_a_clear_error(
        agent: Any, pki: Any, monkeypatch: pytest.MonkeyPatch, ours: Optional[str],
        hint: str) -> None:
    import edgetune.host.client as client_module
    from edgetune.host.client import AgentClient
    from edgetune.host.errors import IncompatibleError
    if ours is not None:                       # this PC runs an older edgetune than the agent
        monkeypatch.setattr(client_module, "__version__", ours)
    shown = ours or __version__
    with AgentClient(agent.address, pki.host.identity) as client:
        for message in (pb.Job.FromString(_job_bytes(9)),
                        pb.Job.FromString(_job_bytes(pb.JOB_STATE_SUCCEEDED,
                                                     _field(20, b"\x0a\x00")))):
            with pytest.raises(IncompatibleError) as err:
                client._read(Job.from_pb2, message)
            text = str(err.value)
            assert f"the agent at {agent.address} (edgetune {__version__})" in text
            assert f"this edgetune ({shown}) cannot read" in text and hint in text
            assert err.value.exit_status == ExitStatus.INCOMPATIBLE
