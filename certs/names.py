"""Subjects, leaf names and subjectAltNames: parsed and validated once, at the edge."""

from __future__ import annotations

import ipaddress
import re
from typing import Iterable, List, Tuple, Union

from cryptography import x509
from cryptography.x509.oid import NameOID

from edgetune.certs.errors import CertOptionError

# A leaf name is the certificate's CN and the stem of its files (NAME-cert.pem, NAME-key.pem).
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
RESERVED_NAMES = ("ca",)

_SUBJECT_KEYS = {
    "C": NameOID.COUNTRY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "L": NameOID.LOCALITY_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "CN": NameOID.COMMON_NAME,
    "EMAILADDRESS": NameOID.EMAIL_ADDRESS,
    "SERIALNUMBER": NameOID.SERIAL_NUMBER,
    "DC": NameOID.DOMAIN_COMPONENT,
}

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


def check_leaf_name(name: str) -> str:
    """``name`` if it is a plain name usable as a CN and a file stem; else ``CertOptionError``."""
    if not isinstance(name, str) or not _NAME_RE.match(name) or ".." in name:
        raise CertOptionError(
            f"bad certificate name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (a name, not a path)")
    if name.lower() in RESERVED_NAMES:
        raise CertOptionError(f"the name {name!r} is reserved for the CA's own files; pick another")
    return name


def parse_subject(subject: Union[str, x509.Name]) -> x509.Name:
    """An openssl-style subject ``/C=CN/O=Acme/CN=edgetune CA`` (``\\/`` escapes a slash)."""
    if isinstance(subject, x509.Name):
        return subject
    text = subject.strip()
    if not text.startswith("/"):
        raise CertOptionError(f"bad subject {subject!r}: write it like /C=CN/O=Acme/CN=edgetune CA")
    attributes: List[x509.NameAttribute] = []
    for part in re.split(r"(?<!\\)/", text[1:]):
        if not part:
            continue
        key, sep, value = part.partition("=")
        oid = _SUBJECT_KEYS.get(key.strip().upper())
        value = value.replace("\\/", "/").strip()
        if not sep or oid is None or not value:
            raise CertOptionError(
                f"bad subject part {part!r} in {subject!r}: use KEY=VALUE with KEY one of "
                f"{', '.join(k for k in _SUBJECT_KEYS if k.isupper() and len(k) <= 2)}")
        if oid == NameOID.COUNTRY_NAME and not re.match(r"^[A-Za-z]{2}$", value):
            raise CertOptionError(f"bad subject part {part!r}: the country (C) is a two-letter "
                                  "code, e.g. C=CN or C=DE")
        try:
            attributes.append(x509.NameAttribute(oid, value))
        except ValueError as exc:  # e.g. a country that is not two letters
            raise CertOptionError(f"bad subject part {part!r}: {exc}") from None
    if not attributes:
        raise CertOptionError(f"empty subject {subject!r}; give at least /CN=NAME")
    return x509.Name(attributes)


def parse_ips(ips: Iterable[Union[str, IPAddress]]) -> Tuple[IPAddress, ...]:
    out = []
    for ip in ips:
        try:
            out.append(ipaddress.ip_address(ip.strip() if isinstance(ip, str) else ip))
        except ValueError:
            raise CertOptionError(f"bad IP address {ip!r}: write it like 192.168.1.20 or fe80::1") from None
    return tuple(out)


_DNS_RE = re.compile(r"^(\*\.)?([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)*"
                     r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.?$")


def parse_dns(names: Iterable[str]) -> Tuple[str, ...]:
    out = []
    for name in names:
        name = name.strip()
        if not name or len(name) > 253 or not _DNS_RE.match(name):
            raise CertOptionError(f"bad DNS name {name!r}: write it like board1.local")
        out.append(name)
    return tuple(out)
