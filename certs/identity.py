"""An identity for mutual TLS (CA bundle, own certificate, decrypted key) and the checks that
make loading one fail early with a message, instead of a TLS handshake failing later."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID

from edgetune.certs.errors import CertFileError, CertVerifyError, KeyMismatchError
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


# The usage a side's own certificate must carry, and what to say when it does not.
_USAGE_ERRORS = {
    "serverAuth": ("{cert} lacks the serverAuth usage (a host certificate?); the agent needs a "
                   "device certificate: `edgetune certs issue device NAME --ip BOARD_IP`", ""),
    "clientAuth": ("our certificate {name!r} lacks the clientAuth usage (a device certificate "
                   "used as a client?); agents refuse it",
                   "use a host certificate: `edgetune certs issue host NAME`"),
}


def open_identity(ca: Path, cert: Path, key: Path, passphrase_file: Optional[Path] = None, *,
                  usage: Optional[str] = None, require_name: bool = False,
                  env: Optional[Mapping[str, str]] = None,
                  interactive: Optional[bool] = None) -> Identity:
    """The one loader both sides use: read CA, certificate and key, ask for the passphrase
    only when the key is encrypted (``passphrase_file``, else ``$EDGETUNE_PASSPHRASE``, else
    a prompt on a terminal: ``resolve_passphrase``), decrypt and check them.

    ``usage``: "serverAuth" (the agent) or "clientAuth" (a host) that the certificate must
    carry; ``require_name``: refuse a certificate without a common name. Raises the
    ``load_identity`` errors, ``PassphrasePolicyError``, or ``CertVerifyError`` /
    ``CertFileError`` for a missing usage or name (with a ``hint`` attribute, maybe "")."""
    from edgetune.certs.describe import has_client_auth, has_server_auth
    from edgetune.certs.keys import is_encrypted_pem
    from edgetune.certs.passphrase import resolve_passphrase

    if usage is not None and usage not in _USAGE_ERRORS:
        raise ValueError(f"usage must be one of {', '.join(_USAGE_ERRORS)} (got {usage!r})")
    key_pem = read_file(Path(key), "private key")
    passphrase: Optional[bytes] = None
    if is_encrypted_pem(key_pem):
        passphrase = resolve_passphrase(passphrase_file, confirm=False, env=env,
                                        interactive=interactive)
    identity = load_identity(Path(ca), Path(cert), Path(key), passphrase)
    if usage is not None:
        check = has_server_auth if usage == "serverAuth" else has_client_auth
        if not check(identity.cert_pem):
            message, hint = _USAGE_ERRORS[usage]
            error = CertVerifyError(message.format(cert=cert, name=identity.common_name))
            error.hint = hint                               # type: ignore[attr-defined]
            raise error
    if require_name and not identity.common_name:
        raise CertFileError(f"{cert} has no common name; issue it with a NAME")
    return identity
