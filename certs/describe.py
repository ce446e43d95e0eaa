"""What a certificate says, for ``edgetune certs show`` and for the agent's peer check."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple, Union

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID

from edgetune.certs.files import parse_cert_pem
from edgetune.certs.identity import common_name_of
from edgetune.certs.keys import key_type_name
from edgetune.certs.pki import not_valid_after, not_valid_before, utcnow

EXPIRY_WARNING_DAYS = 30

_EKU_NAMES = {
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
    ExtendedKeyUsageOID.CODE_SIGNING: "codeSigning",
    ExtendedKeyUsageOID.EMAIL_PROTECTION: "emailProtection",
    ExtendedKeyUsageOID.TIME_STAMPING: "timeStamping",
    ExtendedKeyUsageOID.OCSP_SIGNING: "OCSPSigning",
}
_ANY_EKU = x509.ObjectIdentifier("2.5.29.37.0")
_KEY_USAGES = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
               "key_agreement", "key_cert_sign", "crl_sign")
_KU_NAMES = {"digital_signature": "digitalSignature", "content_commitment": "nonRepudiation",
             "key_encipherment": "keyEncipherment", "data_encipherment": "dataEncipherment",
             "key_agreement": "keyAgreement", "key_cert_sign": "keyCertSign", "crl_sign": "cRLSign"}

CertInput = Union[bytes, str, x509.Certificate]


@dataclass(frozen=True)
class CertInfo:
    cn: str
    subject: str                     # RFC 4514, e.g. "CN=board1"
    issuer: str
    sans: Tuple[str, ...]            # "IP:10.0.0.2", "DNS:board1.local"
    key_usage: Tuple[str, ...]       # "digitalSignature", "keyCertSign", ...
    eku: Optional[Tuple[str, ...]]   # None: no extendedKeyUsage extension (any usage)
    not_before: dt.datetime          # aware, UTC
    not_after: dt.datetime
    is_ca: bool
    serial: int
    fingerprint_sha256: str          # "AB:CD:..."
    key_type: str                    # "rsa3072", "ecdsa-p256", ...

    @property
    def ips(self) -> Tuple[str, ...]:
        return tuple(s[3:] for s in self.sans if s.startswith("IP:"))

    @property
    def dns_names(self) -> Tuple[str, ...]:
        return tuple(s[4:] for s in self.sans if s.startswith("DNS:"))

    def days_left(self, now: Optional[dt.datetime] = None) -> float:
        return (self.not_after - (now or utcnow())).total_seconds() / 86400.0

    def status(self, now: Optional[dt.datetime] = None) -> str:
        """"valid", "expiring" (within 30 days), "expired" or "not yet valid"."""
        now = now or utcnow()
        if now < self.not_before:
            return "not yet valid"
        if now >= self.not_after:
            return "expired"
        if self.days_left(now) <= EXPIRY_WARNING_DAYS:
            return "expiring"
        return "valid"

    def as_dict(self, now: Optional[dt.datetime] = None) -> Dict[str, Any]:
        return {
            "cn": self.cn, "subject": self.subject, "issuer": self.issuer, "sans": list(self.sans),
            "key_usage": list(self.key_usage),
            "extended_key_usage": None if self.eku is None else list(self.eku),
            "not_before": self.not_before.isoformat(), "not_after": self.not_after.isoformat(),
            "days_left": round(self.days_left(now), 2), "status": self.status(now),
            "is_ca": self.is_ca, "serial": format(self.serial, "x"),
            "fingerprint_sha256": self.fingerprint_sha256, "key_type": self.key_type,
        }


def _as_cert(cert: CertInput) -> x509.Certificate:
    if isinstance(cert, x509.Certificate):
        return cert
    return parse_cert_pem(cert.encode("ascii") if isinstance(cert, str) else bytes(cert), "the certificate")


def _extension(cert: x509.Certificate, kind: type) -> Any:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _eku(cert: x509.Certificate) -> Optional[Tuple[x509.ObjectIdentifier, ...]]:
    value = _extension(cert, x509.ExtendedKeyUsage)
    return None if value is None else tuple(value)


def describe_certificate(cert: CertInput) -> CertInfo:
    """Subject, SANs, usages, validity and fingerprint of a PEM (bytes/str) or certificate."""
    cert = _as_cert(cert)
    sans = []
    san_ext = _extension(cert, x509.SubjectAlternativeName)
    if san_ext is not None:
        sans += [f"IP:{ip}" for ip in san_ext.get_values_for_type(x509.IPAddress)]
        sans += [f"DNS:{name}" for name in san_ext.get_values_for_type(x509.DNSName)]
    ku = _extension(cert, x509.KeyUsage)
    usages = []
    if ku is not None:
        usages = [_KU_NAMES[u] for u in _KEY_USAGES if getattr(ku, u)]
    eku = _eku(cert)
    basic = _extension(cert, x509.BasicConstraints)
    digest = cert.fingerprint(hashes.SHA256()).hex().upper()
    return CertInfo(
        cn=common_name_of(cert), subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(), sans=tuple(sans), key_usage=tuple(usages),
        eku=None if eku is None else tuple(_EKU_NAMES.get(o, o.dotted_string) for o in eku),
        not_before=not_valid_before(cert), not_after=not_valid_after(cert),
        is_ca=bool(basic is not None and basic.ca), serial=cert.serial_number,
        fingerprint_sha256=":".join(digest[i:i + 2] for i in range(0, len(digest), 2)),
        key_type=key_type_name(cert.public_key()),
    )


def has_client_auth(cert: CertInput) -> bool:
    """May this certificate act as a TLS client? True without an EKU extension (the openssl
    recipe) or when the EKU lists clientAuth (or anyExtendedKeyUsage). The agent refuses the rest."""
    eku = _eku(_as_cert(cert))
    return eku is None or ExtendedKeyUsageOID.CLIENT_AUTH in eku or _ANY_EKU in eku


def has_server_auth(cert: CertInput) -> bool:
    """May this certificate act as a TLS server (same rule, for serverAuth)?"""
    eku = _eku(_as_cert(cert))
    return eku is None or ExtendedKeyUsageOID.SERVER_AUTH in eku or _ANY_EKU in eku
