"""``edgetune fleet status``: every selected board asked at once, each with its own deadline.

Why asyncio (grpc.aio) rather than one ``AgentClient`` per board in threads: a status round
is two short unary calls per board, and a lab may list a hundred boards of which some never
answer. One event loop holds a hundred channels and their deadlines in one thread, with no
thread pool to size, no thread left blocked on a dead board, and Ctrl-C handled in one place
(the loop is cancelled, every channel closed). The wire types and the error translation are
the synchronous client's (``edgetune.protos.messages``, ``edgetune.host.rpcerrors``).

A board gets ``CONNECT_SHARE`` of its deadline to connect (TCP and the TLS handshake: a
handful of round trips, milliseconds on a lab network) and the whole deadline for its
answers. An address that takes a connection and never speaks TLS (a hung agent, another
service on the port) is then reported unreachable after half the deadline, not the whole:
the round of a hundred boards takes about as long as its slowest live board, or half the
deadline. A connection that fails (refused, a certificate refused) fails at once, with its
reason, as before.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from edgetune.host.errors import AuthError, EdgetuneError, TimeoutError_, UnreachableError
from edgetune.host.inventory import Device

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
SERVING = "serving"
LEASED = "leased"             # serving, and leased to a host certificate (the reason says whose)
CERT_WARNING_DAYS = 30        # a board whose certificate expires sooner is flagged
CONNECT_SHARE = 0.5           # of a board's deadline, for TCP + TLS before it is unreachable


@dataclass(frozen=True)
class BoardStatus:
    """One board's answer (or why there was none)."""

    name: str
    address: str
    state: str                      # serving, busy, leased, starting, unreachable, refused, error,
                                    # skipped, quarantined (fleet_health_cmd.status_health)
    reason: str = ""
    info: Optional[Any] = None      # edgetune.protos.messages.AgentInfo when it answered
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.state in (SERVING, "busy", LEASED)

    @property
    def cert_days_left(self) -> Optional[float]:
        """Days until the board's certificate expires (None: the agent does not say)."""
        if self.info is None or not self.info.agent_cert_not_after_unix:
            return None
        return (self.info.agent_cert_not_after_unix - time.time()) / 86400.0

    @property
    def cert_warning(self) -> str:
        days = self.cert_days_left
        if days is None or days >= CERT_WARNING_DAYS:
            return ""
        if days < 0:
            return "its certificate has expired: issue a new one (edgetune certs issue device)"
        return (f"its certificate expires in {days:.0f} days: issue a new one "
                "(edgetune certs issue device)")

    @property
    def cn_warning(self) -> str:
        """"" unless the board's certificate names another board than its inventory name."""
        from edgetune.host.fleet.check import cn_warning
        return cn_warning(self.name, self.info.agent_name if self.info else "")

    def as_json(self) -> Dict[str, Any]:
        info = self.info
        days = self.cert_days_left
        return {
            "name": self.name, "address": self.address, "state": self.state,
            "reason": self.reason,
            "arch": info.arch if info else None, "cpu": info.cpu_model if info else None,
            "cores": info.cpu_cores if info else None,
            "onnxruntime": info.onnxruntime_version if info else None,
            "agent_version": info.agent_version if info else None,
            "agent_name": info.agent_name if info else None,
            "queue_length": info.queue_length if info else None,
            "running_job": (info.running_job_id or None) if info else None,
            "uptime_s": info.uptime_s if info else None,
            "cert_days_left": None if days is None else round(days, 1),
            "cert_warning": self.cert_warning or None,
            "cn_warning": self.cn_warning or None,
            "lease_holder": (info.lease_holder or None) if info else None,
            "lease_expires_unix": (info.lease_expires_unix or None) if info else None,
            "elapsed_s": round(self.elapsed_s, 3),
        }

    def reported(self) -> Dict[str, str]:
        """What selectors may match on (``arch=aarch64``)."""
        if self.info is None:
            return {}
        keys = ("arch", "os", "cpu_model", "onnxruntime_version", "python_version",
                "agent_version", "hostname", "agent_name")
        return {k: str(getattr(self.info, k)) for k in keys}


def leased_by(info: Any) -> str:
    """"leased by laptop until 2026-12-04 21:40:03 UTC" ("" for a free board)."""
    from edgetune.protos.leases import format_utc

    if not info.lease_holder:
        return ""
    ours = " (this PC)" if info.lease_holder == info.caller_name else ""
    return f"leased by {info.lease_holder}{ours} until {format_utc(info.lease_expires_unix)}"


def _state_of(error: EdgetuneError) -> str:
    if isinstance(error, AuthError):
        return "refused"
    if isinstance(error, (UnreachableError, TimeoutError_)):
        return "unreachable"
    return "error"


async def _ask(device: Device, identity: Any, timeout_s: float) -> BoardStatus:
    import grpc
    from grpc_health.v1 import health_pb2

    from edgetune.certs.grpc_creds import channel_credentials
    from edgetune.host.client import CALL_METADATA
    from edgetune.host.rpcerrors import RpcContext, translate_rpc_error
    from edgetune.protos import agent_pb2 as pb
    from edgetune.protos import agent_pb2_grpc
    from edgetune.protos.messages import AgentInfo

    started = time.monotonic()
    options = [("grpc.ssl_target_name_override", device.server_name)] if device.server_name else []
    creds = channel_credentials(identity.ca_pem, identity.cert_pem, identity.key_pem)
    channel = grpc.aio.secure_channel(device.address, creds, options=options)
    try:
        connect_s = timeout_s * CONNECT_SHARE
        try:
            await asyncio.wait_for(_connected_or_failed(channel), connect_s)
        except asyncio.TimeoutError:
            return BoardStatus(
                device.name, device.address, "unreachable",
                f"the agent at {device.address} did not complete a connection (TCP and the "
                f"TLS handshake) within {connect_s:.2g} s: is edgetune-agent what listens there, "
                "and is it hung? (raise --timeout for a slow link)",
                elapsed_s=time.monotonic() - started)
        check = channel.unary_unary(HEALTH_CHECK,
                                    request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                                    response_deserializer=health_pb2.HealthCheckResponse.FromString)
        deadline = started + timeout_s
        health = await check(health_pb2.HealthCheckRequest(service=""),
                             timeout=timeout_s, metadata=CALL_METADATA)
        if health.status != health_pb2.HealthCheckResponse.SERVING:
            name = health_pb2.HealthCheckResponse.ServingStatus.Name(health.status)
            return BoardStatus(device.name, device.address, "starting",
                               f"health: {name} (the agent is not ready yet)",
                               elapsed_s=time.monotonic() - started)
        reply = await agent_pb2_grpc.AgentStub(channel).GetInfo(
            pb.GetInfoRequest(), timeout=max(0.1, deadline - time.monotonic()),
            metadata=CALL_METADATA)
        info = AgentInfo.from_pb2(reply)
        state = "busy" if info.running_job_id or info.queue_length else SERVING
        reason = (f"running job {info.running_job_id}, {info.queue_length} queued"
                  if state == "busy" else "")
        if info.lease_holder:
            state, reason = LEASED, "; ".join(x for x in (leased_by(info), reason) if x)
        return BoardStatus(device.name, device.address, state, reason, info,
                           time.monotonic() - started)
    except grpc.RpcError as err:
        context = RpcContext(address=device.address, our_name=identity.common_name,
                             ca_pem=identity.ca_pem, server_name=device.server_name,
                             probe_timeout_s=min(2.0, timeout_s))
        # The translation may fetch the agent's certificate to say why TLS failed (blocking).
        error = await asyncio.to_thread(translate_rpc_error, err, context)
        return BoardStatus(device.name, device.address, _state_of(error), error.message,
                           elapsed_s=time.monotonic() - started)
    except EdgetuneError as error:     # e.g. a reply this edgetune cannot read
        return BoardStatus(device.name, device.address, "error", error.message,
                           elapsed_s=time.monotonic() - started)
    finally:
        await channel.close()


async def _connected_or_failed(channel: Any) -> None:
    """Return once the channel is connected, or its connection attempt failed (the call made
    next then fails at once with the reason); a connection that hangs keeps it waiting."""
    import grpc

    done = (grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.TRANSIENT_FAILURE,
            grpc.ChannelConnectivity.SHUTDOWN)
    state = channel.get_state(try_to_connect=True)
    while state not in done:
        await channel.wait_for_state_change(state)
        state = channel.get_state(try_to_connect=True)


async def ask_all(devices: Sequence[Device], identity: Any,
                  timeout_s: float = 3.0) -> List[BoardStatus]:
    """Every board at once; the rows in the order of ``devices``."""
    return list(await asyncio.gather(*(_ask(d, identity, timeout_s) for d in devices)))


def fleet_status(devices: Sequence[Device], identity: Any,
                 timeout_s: float = 3.0) -> List[BoardStatus]:
    return asyncio.run(ask_all(devices, identity, timeout_s))
