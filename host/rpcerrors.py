"""grpc errors as host errors: the cause, which side refused what, and the fix.

grpc reports a failed connection as UNAVAILABLE with a text that differs by cause; this module
reads that text (details + debug string, as grpc 1.6x-1.85 word them) to tell apart:
nobody listening, a name that does not resolve, the agent refusing our certificate (TLS 1.3:
it closes the connection during the handshake), and us refusing the agent's certificate
(wrong SAN, another CA, expired), in which case the agent's certificate is fetched once more
without verification to say what it holds. Other status codes map one to one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional, Tuple

import grpc

from edgetune.host.errors import (AgentError, AuthError, BadInputError, BusyError,
                                  EdgetuneError, IncompatibleError, LeaseHeldError,
                                  NotFoundError, TimeoutError_, UnreachableError)
from edgetune.protos.leases import LEASE_EXPIRES_METADATA, LEASE_HOLDER_METADATA
from edgetune.protos.messages import INCOMPATIBLE_METADATA

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RpcContext:
    """What an error message needs to name: the address, our certificate, our trust roots."""

    address: str
    our_name: str
    ca_pem: bytes = b""
    server_name: Optional[str] = None
    probe_timeout_s: float = 5.0


# Markers in grpc's error text.
_CONNECT_FAILED = "failed to connect to all addresses"
_WE_REFUSED = ("Hostname Verification Check failed", "Peer name", "CERTIFICATE_VERIFY_FAILED")
_HOSTNAME = ("Hostname Verification Check failed", "Peer name")
_AGENT_CLOSED = ("Socket closed", "Connection reset", "ALERT", "Broken pipe", "end of file")
_NO_ROUTE = ("Connection refused", "No route to host", "Network is unreachable",
             "Failed to connect to remote host", "Connection timed out")
_NO_NAME = ("DNS resolution failed", "errors resolving", "Domain name not found",
            "lookup error")
_REFUSED_CALL = (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED,
                 grpc.StatusCode.DATA_LOSS, grpc.StatusCode.ALREADY_EXISTS,
                 grpc.StatusCode.ABORTED, grpc.StatusCode.OUT_OF_RANGE)


def translate_rpc_error(err: grpc.RpcError, ctx: RpcContext) -> EdgetuneError:
    """The ``edgetune.host.errors`` exception for a failed call: the cause, the side, the fix."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = (err.details() if hasattr(err, "details") else "") or ""
    debug = getattr(err, "debug_error_string", lambda: "")() or ""
    addr = ctx.address
    trailing = getattr(err, "trailing_metadata", lambda: None)() or ()
    incompatible = [value for key, value in trailing if key == INCOMPATIBLE_METADATA]
    if incompatible:  # the agent could not read what this (newer) edgetune sent
        return IncompatibleError(f"the agent at {addr} refused the request: {details}",
                                 hint="upgrade edgetune-agent on the board to this PC's "
                                      "edgetune (pip install -U edgetune there)")
    holder = [value for key, value in trailing if key == LEASE_HOLDER_METADATA]
    if holder and code is grpc.StatusCode.FAILED_PRECONDITION:  # someone else's lease
        return _lease_held(details, holder[0], trailing, ctx)
    if code is grpc.StatusCode.UNAVAILABLE:
        return _unavailable(f"{details} {debug}", details, ctx)
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return TimeoutError_(f"the agent at {addr} did not answer in time",
                             hint="raise --timeout, or check that the board is not overloaded")
    if code is grpc.StatusCode.NOT_FOUND:
        return NotFoundError(details or f"the agent at {addr} does not know that object")
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        return BadInputError(f"the agent at {addr} refused the request: {details}")
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED and "retry" in details.lower():
        return BusyError(f"the agent at {addr} refused the request for now: {details}")
    if code in _REFUSED_CALL:
        return AgentError(f"the agent at {addr} refused the request: {details}")
    if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
        return AuthError(f"the agent at {addr} refused our certificate {ctx.our_name!r}: {details}",
                         hint="use a host certificate the agent accepts (see its allowed_clients "
                              "and `edgetune certs issue host NAME`)")
    if code is grpc.StatusCode.UNIMPLEMENTED:
        return AgentError(f"the agent at {addr} does not implement this call ({details})",
                          hint="update edgetune-agent on the board to this edgetune's version")
    if code is grpc.StatusCode.CANCELLED:
        return AgentError(f"the call to {addr} was cancelled: {details}")
    return AgentError(f"the agent at {addr} failed: {details or code.name}",
                      hint="the agent's log on the board has the details")


def _lease_held(details: str, holder: Any, trailing: Any, ctx: RpcContext) -> LeaseHeldError:
    name = holder.decode("utf-8", "replace") if isinstance(holder, bytes) else str(holder)
    expires = 0.0
    for key, value in trailing:
        if key == LEASE_EXPIRES_METADATA:
            try:
                expires = float(value)
            except (TypeError, ValueError):
                pass
    return LeaseHeldError(f"the agent at {ctx.address} refused the request: {details}",
                          holder=name, expires_unix=expires,
                          hint=f"wait until the lease ends (`edgetune lease show`), or ask the "
                               f"holder of {name!r} to release it (`edgetune lease release`)")


def _unavailable(text: str, details: str, ctx: RpcContext) -> EdgetuneError:
    addr = ctx.address
    if any(m in text for m in _NO_NAME):
        return UnreachableError(f"cannot resolve the host name of {addr}",
                                hint="check the spelling, or use the board's IP address")
    if any(m in text for m in _NO_ROUTE):
        return UnreachableError(f"no agent answers at {addr}: is edgetune-agent running there "
                                "and the port open?",
                                hint="start it on the board (`edgetune-agent serve`) and check "
                                     "the address, the port and any firewall in between")
    if any(m in text for m in _WE_REFUSED):
        return _we_refused(text, ctx)
    if _CONNECT_FAILED in text and any(m in text for m in _AGENT_CLOSED):
        return AuthError(
            f"the agent at {addr} refused our certificate {ctx.our_name!r} (it closed the "
            "connection during the TLS handshake)",
            hint="is it signed by the agent's CA, in date, and made with `edgetune certs issue "
                 "host` (a device certificate cannot act as a client)?")
    return UnreachableError(f"lost the connection to the agent at {addr}: {details}",
                            hint="was the agent restarted or the network interrupted? try again")


def _we_refused(text: str, ctx: RpcContext) -> AuthError:
    """We refused the agent's certificate: say what is wrong with it (we fetch it once more
    without verification to look at it) and how to fix it."""
    from edgetune.certs import describe_certificate
    from edgetune.certs.files import parse_certs_pem
    from edgetune.certs.identity import issued_by

    host = _split_host_port(ctx.address)[0]
    expected = ctx.server_name or host
    cert = _probe_agent_certificate(ctx.address, ctx.probe_timeout_s)
    info = describe_certificate(cert) if cert is not None else None
    name = f" {info.cn!r}" if info is not None else ""
    prefix = f"we refused the certificate{name} of the agent at {ctx.address}"
    if any(m in text for m in _HOSTNAME):
        have = ""
        if info is not None:
            have = f" (it has {', '.join(info.sans) or 'no SAN at all'})"
        flag = "--ip" if _is_ip(expected) else "--dns"
        return AuthError(f"{prefix}: its SAN does not include {expected}{have}",
                         hint=f"reissue it with `edgetune certs issue device NAME {flag} "
                              f"{expected}`, or pass --server-name with a name it does include")
    reason = text.split("CERTIFICATE_VERIFY_FAILED:", 1)[-1].split("\n")[0].strip(" :")
    if info is not None and info.status() == "expired":
        reason = f"it expired on {info.not_after:%Y-%m-%d %H:%M} UTC"
    elif cert is not None and ctx.ca_pem and not any(
            issued_by(cert, ca) for ca in parse_certs_pem(ctx.ca_pem, "our CA")):
        reason = f"it is not signed by our CA (its issuer is {info.issuer})"  # type: ignore[union-attr]
    return AuthError(f"{prefix}: {reason or 'verification failed'}",
                     hint="use the ca-cert.pem of the PKI that issued the board's certificate, "
                          "or reissue the board's certificate (`edgetune certs issue device`)")


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _split_host_port(address: str) -> Tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port) if port.isdigit() else 0


def _probe_agent_certificate(address: str, timeout: float) -> Optional[Any]:
    """The agent's certificate, fetched without verifying it (to explain a refusal), or None.
    TLS 1.3 hands the server certificate over before the client has to show its own."""
    import socket
    import ssl

    from cryptography import x509

    host, port = _split_host_port(address)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            with context.wrap_socket(sock) as tls:
                der = tls.getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der) if der else None
    except (OSError, ValueError) as exc:
        log.debug("could not fetch the agent certificate from %s: %s", address, exc)
        return None
