"""An identity for mutual TLS (CA bundle, own certificate, decrypted key) and the checks that
make loading one fail early with a message, instead of a TLS handshake failing later."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID

from edgetune.certs.errors import CertVerifyError, KeyMismatchError
from edgetune.certs.files import parse_cert_pem, parse_certs_pem, read_file
from edgetune.certs.keys import PrivateKey, load_key_pem, plain_pkcs8_pem, public_key_der


@dataclass(frozen=True)
class Identity:
    """What grpc needs for one side of mutual TLS. ``key_pem`` is unencrypted PKCS#8 PEM:
    it lives in memory only (never write it; ``repr`` leaves it out)."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes = field(repr=False)
    common_name: str


def common_name_of(cert: x509.Certificate) -> str:
    """The certificate's CN ('' when it has none)."""
    values = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[0].value) if values else ""


def check_key_matches(key: PrivateKey, cert: x509.Certificate, *, key_source: str,
                      cert_source: str) -> None:
    if public_key_der(key) != public_key_der(cert.public_key()):
        raise KeyMismatchError(
            f"the key {key_source} does not belong to the certificate {cert_source}; "
            "pair each NAME-cert.pem with the NAME-key.pem issued with it")


def issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    """Whether ``ca`` signed ``cert`` (names match and the signature verifies)."""
    if cert.issuer != ca.subject:
        return False
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def check_issued_by(cert: x509.Certificate, cas: Sequence[x509.Certificate], *,
                    cert_source: str, ca_source: str) -> x509.Certificate:
    """The CA in ``cas`` that signed ``cert``; ``CertVerifyError`` when none did."""
    for ca in cas:
        if issued_by(cert, ca):
            return ca
    raise CertVerifyError(
        f"{cert_source} (issuer {cert.issuer.rfc4514_string()}) is not signed by the CA "
        f"{ca_source}; use the ca-cert.pem of the PKI that issued it, or re-issue it")


def load_identity(ca: Path, cert: Path, key: Path, passphrase: Optional[bytes], *,
                  verify_chain: bool = True) -> Identity:
    """Read and check CA, certificate and key files, decrypt the key (``passphrase`` may be
    None for an unencrypted key). Raises ``CertFileNotFoundError``, ``CertFormatError``,
    ``PassphraseError``, ``KeyMismatchError`` or (``verify_chain``) ``CertVerifyError``."""
    ca_pem = read_file(ca, "CA certificate")
    cert_pem = read_file(cert, "certificate")
    key_pem = read_file(key, "private key")
    cas = parse_certs_pem(ca_pem, str(ca))
    certificate = parse_cert_pem(cert_pem, str(cert))
    private_key = load_key_pem(key_pem, passphrase, source=str(key))
    check_key_matches(private_key, certificate, key_source=str(key), cert_source=str(cert))
    if verify_chain:
        check_issued_by(certificate, cas, cert_source=str(cert), ca_source=str(ca))
    return Identity(ca_pem=ca_pem, cert_pem=cert_pem, key_pem=plain_pkcs8_pem(private_key),
                    common_name=common_name_of(certificate))
