"""Real mutual-TLS handshakes: a grpc server with the standard health service on port 0."""

from __future__ import annotations

from concurrent import futures
from typing import Iterator, Optional

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from edgetune.certs import Identity, has_client_auth, load_identity
from edgetune.certs.grpc_creds import channel_credentials, server_credentials

TIMEOUT = 10.0


class HealthServer:
    """A grpc server with only grpc.health.v1, serving mutual TLS on 127.0.0.1:0."""

    def __init__(self, identity: Identity) -> None:
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), self.server)
        creds = server_credentials(identity.ca_pem, identity.cert_pem, identity.key_pem)
        self.port = self.server.add_secure_port("127.0.0.1:0", creds)
        assert self.port, "could not bind a port"
        self.server.start()

    def check(self, client: Optional[Identity], ca_pem: bytes) -> int:
        """The health status a client with ``client`` (None: no certificate) gets."""
        if client is None:
            creds = grpc.ssl_channel_credentials(root_certificates=ca_pem)
        else:
            creds = channel_credentials(ca_pem, client.cert_pem, client.key_pem)
        with grpc.secure_channel(f"127.0.0.1:{self.port}", creds) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
        return reply.status


def _refused(server: HealthServer, client: Optional[Identity], ca_pem: bytes) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        server.check(client, ca_pem)
    return caught.value.code()


@pytest.fixture(scope="module")
def server(pki) -> Iterator[HealthServer]:
    device = load_identity(pki.device.ca, pki.device.cert, pki.device.key, pki.passphrase)
    running = HealthServer(device)
    yield running
    running.server.stop(None)


def test_host_certificate_from_files_is_served(server, pki) -> None:
    host = load_identity(pki.host.ca, pki.host.cert, pki.host.key, pki.passphrase)
    assert server.check(host, host.ca_pem) == health_pb2.HealthCheckResponse.SERVING


def test_client_without_certificate_is_refused(server, pki) -> None:
    assert _refused(server, None, pki.ca.cert_pem) == grpc.StatusCode.UNAVAILABLE


def test_client_from_foreign_ca_is_refused(server, pki) -> None:
    assert _refused(server, pki.foreign_host.identity, pki.ca.cert_pem) == grpc.StatusCode.UNAVAILABLE


def test_expired_client_is_refused(server, pki) -> None:
    assert _refused(server, pki.expired_host.identity, pki.ca.cert_pem) == grpc.StatusCode.UNAVAILABLE


def test_client_that_does_not_trust_the_board_ca_is_refused(server, pki) -> None:
    # The client trusts only the foreign CA: the board's certificate must not satisfy it.
    client = pki.host.identity
    assert _refused(server, client, pki.foreign_ca.cert_pem) == grpc.StatusCode.UNAVAILABLE


def test_boringssl_refuses_a_server_only_certificate_as_client(server, pki) -> None:
    """Observed with grpcio 1.85: BoringSSL checks the client certificate's EKU itself
    ("unsupported certificate purpose"); the agent's has_client_auth check is a second line."""
    device = pki.device_as_client.identity
    assert not has_client_auth(device.cert_pem)
    assert _refused(server, device, device.ca_pem) == grpc.StatusCode.UNAVAILABLE


def test_rsa3072_handshake(rsa_pki) -> None:
    device = load_identity(rsa_pki.device.ca, rsa_pki.device.cert, rsa_pki.device.key,
                           rsa_pki.passphrase)
    host = load_identity(rsa_pki.host.ca, rsa_pki.host.cert, rsa_pki.host.key, rsa_pki.passphrase)
    running = HealthServer(device)
    try:
        assert running.check(host, host.ca_pem) == health_pb2.HealthCheckResponse.SERVING
        assert _refused(running, rsa_pki.foreign_host.identity, host.ca_pem) == grpc.StatusCode.UNAVAILABLE
    finally:
        running.server.stop(None)
