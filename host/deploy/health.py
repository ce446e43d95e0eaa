"""Is the deployed agent serving? ``grpc.health.v1`` over mutual TLS from this PC, polled until
a deadline; while waiting, the board is asked now and then whether the agent still runs, so a
crash is reported at once (with the last lines of its log) instead of at the deadline.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

HEALTH_CHECK = "/grpc.health.v1.Health/Check"


def check_once(address: str, identity: Any, timeout_s: float,
               server_name: Optional[str] = None) -> str:
    """"SERVING", another health state's name, or the gRPC error's code and message."""
    import grpc
    from grpc_health.v1 import health_pb2

    from edgetune.certs.grpc_creds import channel_credentials
    from edgetune.host.client import CALL_METADATA

    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    creds = channel_credentials(identity.ca_pem, identity.cert_pem, identity.key_pem)
    with grpc.secure_channel(address, creds, options=options) as channel:
        check = channel.unary_unary(
            HEALTH_CHECK, request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString)
        try:
            reply = check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s,
                          metadata=CALL_METADATA, wait_for_ready=True)
        except grpc.RpcError as err:
            return f"{err.code().name}: {err.details()}"  # type: ignore[attr-defined]
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def wait_serving(address: str, identity: Any, deadline_s: float, *,
                 still_running: Callable[[], bool], server_name: Optional[str] = None,
                 poll_s: float = 1.0, ask_board_every_s: float = 3.0) -> tuple:
    """(True, "SERVING") once it serves; (False, last state) at the deadline or when
    ``still_running`` says the agent is gone."""
    end = time.monotonic() + deadline_s
    next_board_check = time.monotonic() + ask_board_every_s
    state = "not asked"
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return False, state
        state = check_once(address, identity, min(poll_s, left), server_name)
        if state == "SERVING":
            return True, state
        if time.monotonic() >= next_board_check:
            if not still_running():
                return False, f"the agent exited ({state})"
            next_board_check = time.monotonic() + ask_board_every_s
        time.sleep(min(0.2, max(0.0, end - time.monotonic())))
