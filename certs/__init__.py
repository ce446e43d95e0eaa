"""edgetune's PKI, shared by the board agent and the host: create a CA, issue device (server)
and host (client) certificates, load identities for mutual TLS.

Light and portable (boards run Python 3.9+): it needs only ``cryptography``, and ``grpc`` for
``edgetune.certs.grpc_creds``, which is therefore not imported here.
"""

from __future__ import annotations

from edgetune.certs.describe import CertInfo, describe_certificate, has_client_auth, has_server_auth
from edgetune.certs.errors import (CertError, CertFileError, CertFileExistsError, CertFileNotFoundError,
                          CertFormatError, CertOptionError, CertVerifyError, KeyMismatchError,
                          PassphraseError, PassphrasePolicyError)
from edgetune.certs.identity import Identity, load_identity, open_identity
from edgetune.certs.keys import CIPHERS, DEFAULT_CIPHER, DEFAULT_KEY_TYPE, KEY_TYPES, is_encrypted_pem
from edgetune.certs.passphrase import ENV_VAR, MIN_LENGTH, resolve_passphrase
from edgetune.certs.pki import DEFAULT_DAYS, CertificateAuthority, IssuedCert

__all__ = [
    "CIPHERS", "DEFAULT_CIPHER", "DEFAULT_DAYS", "DEFAULT_KEY_TYPE", "ENV_VAR", "KEY_TYPES",
    "MIN_LENGTH", "CertError", "CertFileError", "CertFileExistsError", "CertFileNotFoundError",
    "CertFormatError", "CertInfo", "CertOptionError", "CertVerifyError", "CertificateAuthority",
    "Identity", "IssuedCert", "KeyMismatchError", "PassphraseError", "PassphrasePolicyError",
    "describe_certificate", "has_client_auth", "has_server_auth", "is_encrypted_pem",
    "load_identity", "open_identity", "resolve_passphrase",
]
