"""A certificate authority whose methods are verbs: create, load, write, issue.

Two leaf profiles: a *device* (the board's agent, a TLS server: serverAuth, SAN with the
board's IPs and names) and a *host* (the PC, a TLS client: clientAuth). Validity is always
timezone-aware UTC. Every certificate goes through ``_build``, the one place that knows what
CA and leaf certificates have in common.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple, Union

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgetune.certs.errors import CertOptionError, CertVerifyError
from edgetune.certs.files import (CA_NAME, CERT_MODE, KEY_MODE, cert_path, ensure_dir, key_path,
                         parse_cert_pem, read_file, refuse_existing, write_atomic)
from edgetune.certs.identity import Identity, check_issued_by, check_key_matches, common_name_of
from edgetune.certs.keys import (DEFAULT_CIPHER, DEFAULT_KEY_TYPE, PrivateKey, encrypt_key_pem,
                        generate_key, load_key_pem, plain_pkcs8_pem)
from edgetune.certs.names import IPAddress, check_leaf_name, parse_dns, parse_ips, parse_subject
from edgetune.certs.passphrase import Passphrase, as_bytes, check_new_passphrase

log = logging.getLogger(__name__)

DEFAULT_DAYS = 365
DEFAULT_CA_SUBJECT = "/CN=edgetune CA"
# New certificates start a little in the past so a board whose clock lags still accepts them.
BACKDATE = dt.timedelta(minutes=5)

PROFILES = {
    "device": (ExtendedKeyUsageOID.SERVER_AUTH,),
    "host": (ExtendedKeyUsageOID.CLIENT_AUTH,),
}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def not_valid_before(cert: x509.Certificate) -> dt.datetime:
    """Aware UTC start of validity (works with cryptography < 42 too)."""
    value = getattr(cert, "not_valid_before_utc", None)
    return value if value is not None else cert.not_valid_before.replace(tzinfo=dt.timezone.utc)


def not_valid_after(cert: x509.Certificate) -> dt.datetime:
    value = getattr(cert, "not_valid_after_utc", None)
    return value if value is not None else cert.not_valid_after.replace(tzinfo=dt.timezone.utc)


def _validity(days: int, not_before: Optional[dt.datetime], not_after: Optional[dt.datetime],
              ) -> Tuple[dt.datetime, dt.datetime]:
    for value in (not_before, not_after):
        if value is not None and value.utcoffset() is None:
            raise CertOptionError(f"{value!r} has no timezone; pass an aware datetime (UTC)")
    if not_after is None and not 1 <= int(days) <= 36500:
        raise CertOptionError(f"--days {days}: give a number of days from 1 to 36500")
    now = utcnow()
    start = not_before if not_before is not None else now - BACKDATE
    end = not_after if not_after is not None else (
        (not_before if not_before is not None else now) + dt.timedelta(days=int(days)))
    if end <= start:
        raise CertOptionError(f"not_after {end.isoformat()} is not after not_before {start.isoformat()}")
    return start.astimezone(dt.timezone.utc), end.astimezone(dt.timezone.utc)


def _build(*, subject: x509.Name, public_key: object, issuer: x509.Name,
           signing_key: PrivateKey, issuer_public_key: object, validity: Tuple[dt.datetime, dt.datetime],
           is_ca: bool, key_usage: x509.KeyUsage,
           extended_usage: Tuple[x509.ObjectIdentifier, ...] = (),
           sans: Sequence[x509.GeneralName] = ()) -> x509.Certificate:
    """The one certificate builder: what CA and leaves have in common, signed with SHA-256."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=0 if is_ca else None), critical=True)
        .add_extension(key_usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)  # type: ignore[arg-type]
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public_key),  # type: ignore[arg-type]
                       critical=False)
    )
    if extended_usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(extended_usage)), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(signing_key, hashes.SHA256())  # type: ignore[arg-type]


def _key_usage(*, ca: bool, rsa_key: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=rsa_key and not ca,
        data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
        encipher_only=False, decipher_only=False)


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write_pair(directory: Path, name: str, cert: x509.Certificate, key: PrivateKey,
                passphrase: Passphrase, cipher: str, force: bool) -> Tuple[Path, Path]:
    secret = check_new_passphrase(passphrase)
    directory = ensure_dir(directory)
    cert_file, key_file = cert_path(directory, name), key_path(directory, name)
    refuse_existing([cert_file, key_file], force)
    key_pem = encrypt_key_pem(key, secret, cipher)
    write_atomic(key_file, key_pem, mode=KEY_MODE, force=force)
    write_atomic(cert_file, _cert_pem(cert), mode=CERT_MODE, force=force)
    return cert_file, key_file


@dataclass(frozen=True)
class IssuedCert:
    """A leaf certificate with its (in-memory, unencrypted) key, as issued by a CA."""

    name: str
    profile: str                     # "device" or "host"
    certificate: x509.Certificate
    private_key: PrivateKey = field(repr=False)
    ca_pem: bytes = field(repr=False)

    @property
    def cert_pem(self) -> bytes:
        return _cert_pem(self.certificate)

    @property
    def key_pem(self) -> bytes:
        """Unencrypted PKCS#8 PEM, for grpc in memory. ``write`` stores it encrypted."""
        return plain_pkcs8_pem(self.private_key)

    def identity(self) -> Identity:
        return Identity(ca_pem=self.ca_pem, cert_pem=self.cert_pem, key_pem=self.key_pem,
                        common_name=self.name)

    def write(self, directory: Path, passphrase: Passphrase, cipher: str = DEFAULT_CIPHER,
              force: bool = False) -> Tuple[Path, Path]:
        """Write ``NAME-cert.pem`` and the encrypted ``NAME-key.pem`` (0600) into ``directory``."""
        return _write_pair(Path(directory), self.name, self.certificate, self.private_key,
                           passphrase, cipher, force)


class CertificateAuthority:
    """A CA: a self-signed certificate (basicConstraints CA, pathlen 0) and its private key."""

    def __init__(self, certificate: x509.Certificate, private_key: PrivateKey,
                 *, source: str = "the CA") -> None:
        check_key_matches(private_key, certificate, key_source=f"{source} key",
                          cert_source=f"{source} certificate")
        try:
            constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise CertVerifyError(f"{source} certificate is not a CA certificate "
                                  "(basicConstraints CA:TRUE is missing)")
        self.certificate = certificate
        self.private_key = private_key

    @classmethod
    def create(cls, subject: Union[str, x509.Name] = DEFAULT_CA_SUBJECT,
               key_type: str = DEFAULT_KEY_TYPE, days: int = DEFAULT_DAYS,
               not_before: Optional[dt.datetime] = None,
               not_after: Optional[dt.datetime] = None) -> "CertificateAuthority":
        name = parse_subject(subject)
        key = generate_key(key_type)
        cert = _build(subject=name, public_key=key.public_key(), issuer=name, signing_key=key,
                      issuer_public_key=key.public_key(),
                      validity=_validity(days, not_before, not_after), is_ca=True,
                      key_usage=_key_usage(ca=True, rsa_key=isinstance(key, rsa.RSAPrivateKey)))
        return cls(cert, key)

    @classmethod
    def from_pem(cls, cert_pem: bytes, key_pem: bytes, passphrase: Optional[Passphrase] = None,
                 *, source: str = "the CA") -> "CertificateAuthority":
        cert = parse_cert_pem(cert_pem, f"{source} certificate")
        key = load_key_pem(key_pem, as_bytes(passphrase) if passphrase is not None else None,
                           source=f"{source} key")
        return cls(cert, key, source=source)

    @classmethod
    def load(cls, directory: Path, passphrase: Optional[Passphrase]) -> "CertificateAuthority":
        """The CA of a PKI directory (``ca-cert.pem``, ``ca-key.pem``, also openssl-made)."""
        cert_file, key_file = cert_path(directory, CA_NAME), key_path(directory, CA_NAME)
        cert = parse_cert_pem(read_file(cert_file, "CA certificate"), str(cert_file))
        key = load_key_pem(read_file(key_file, "CA key"),
                           as_bytes(passphrase) if passphrase is not None else None,
                           source=str(key_file))
        return cls(cert, key, source=str(cert_file.parent / "ca"))

    @property
    def cert_pem(self) -> bytes:
        return _cert_pem(self.certificate)

    @property
    def common_name(self) -> str:
        return common_name_of(self.certificate)

    def write(self, directory: Path, passphrase: Passphrase, cipher: str = DEFAULT_CIPHER,
              force: bool = False) -> Tuple[Path, Path]:
        """Write ``ca-cert.pem`` and the encrypted ``ca-key.pem`` (0600) into ``directory``."""
        return _write_pair(Path(directory), CA_NAME, self.certificate, self.private_key,
                           passphrase, cipher, force)

    def issue(self, name: str, profile: str, *, ips: Iterable[Union[str, IPAddress]] = (),
              dns: Iterable[str] = (), days: int = DEFAULT_DAYS, key_type: str = DEFAULT_KEY_TYPE,
              not_before: Optional[dt.datetime] = None, not_after: Optional[dt.datetime] = None,
              extended_usage: Optional[Tuple[x509.ObjectIdentifier, ...]] = None) -> IssuedCert:
        """A leaf certificate for ``profile`` ("device" or "host"). ``extended_usage``
        overrides the profile's EKU (``()`` for none, like the openssl recipe) for tests."""
        check_leaf_name(name)
        if profile not in PROFILES:
            raise CertOptionError(f"unknown profile {profile!r}; use one of {', '.join(PROFILES)}")
        ip_list, dns_list = parse_ips(ips), parse_dns(dns)
        start, end = _validity(days, not_before, not_after)
        ca_end = not_valid_after(self.certificate)
        if not_after is None and end > ca_end:   # a leaf never outlives its CA
            if end - ca_end > dt.timedelta(days=1):
                log.warning("%s would outlive the CA; it ends with the CA on %s",
                            name, ca_end.isoformat())
            end = ca_end
        key = generate_key(key_type)
        sans: List[x509.GeneralName] = [x509.IPAddress(ip) for ip in ip_list]
        sans += [x509.DNSName(host) for host in dns_list]
        cert = _build(subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]),
                      public_key=key.public_key(), issuer=self.certificate.subject,
                      signing_key=self.private_key,
                      issuer_public_key=self.certificate.public_key(), validity=(start, end),
                      is_ca=False,
                      key_usage=_key_usage(ca=False, rsa_key=isinstance(key, rsa.RSAPrivateKey)),
                      extended_usage=PROFILES[profile] if extended_usage is None else extended_usage,
                      sans=sans)
        return IssuedCert(name=name, profile=profile, certificate=cert, private_key=key,
                          ca_pem=self.cert_pem)

    def issue_device(self, name: str, ips: Iterable[Union[str, IPAddress]] = (),
                     dns: Iterable[str] = (), **kwargs: object) -> IssuedCert:
        """A board's server certificate: serverAuth, SAN with its IPs and DNS names (>= 1)."""
        ips, dns = tuple(ips), tuple(dns)
        if not ips and not dns:
            raise CertOptionError(
                f"a device certificate needs at least one --ip or --dns for {name!r}: "
                "the host checks the board's address against them")
        return self.issue(name, "device", ips=ips, dns=dns, **kwargs)  # type: ignore[arg-type]

    def issue_host(self, name: str, ips: Iterable[Union[str, IPAddress]] = (),
                   dns: Iterable[str] = (), **kwargs: object) -> IssuedCert:
        """A PC's client certificate: clientAuth."""
        return self.issue(name, "host", ips=ips, dns=dns, **kwargs)  # type: ignore[arg-type]

    def verify_issued(self, certificate: x509.Certificate, source: str = "the certificate") -> None:
        """``CertVerifyError`` unless this CA signed ``certificate``."""
        check_issued_by(certificate, [self.certificate], cert_source=source, ca_source="this CA")
