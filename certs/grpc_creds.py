"""grpc credentials for mutual TLS, used by the agent (server) and the host client.

There is deliberately no insecure variant: the server always requires a client certificate
that chains to the CA. The usage check (clientAuth) and the allow-list are the agent's job, on
top, with ``edgetune.certs.describe.has_client_auth`` on the peer's certificate.
"""

from __future__ import annotations

import grpc

from edgetune.certs.identity import Identity


def server_credentials(ca_pem: bytes, cert_pem: bytes, key_pem_decrypted: bytes) -> grpc.ServerCredentials:
    """A TLS server that demands a client certificate signed by ``ca_pem``."""
    return grpc.ssl_server_credentials([(key_pem_decrypted, cert_pem)], root_certificates=ca_pem,
                                       require_client_auth=True)


def channel_credentials(ca_pem: bytes, cert_pem: bytes, key_pem_decrypted: bytes) -> grpc.ChannelCredentials:
    """A TLS client that trusts only ``ca_pem`` and presents ``cert_pem``."""
    return grpc.ssl_channel_credentials(root_certificates=ca_pem, private_key=key_pem_decrypted,
                                        certificate_chain=cert_pem)


def identity_server_credentials(identity: Identity) -> grpc.ServerCredentials:
    return server_credentials(identity.ca_pem, identity.cert_pem, identity.key_pem)
