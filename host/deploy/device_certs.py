"""The board's certificate: kept when the one on the board is still good, else issued from this
PC's CA (``--pki DIR`` or ``[host] pki``) for the board's address, else taken from
``--cert/--key``.

The key goes to the board encrypted with a fresh random passphrase that only the board's
passphrase file holds (never the CA's passphrase); both exist only in memory on this PC.
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from edgetune.host.errors import AuthError, BadInputError, NotFoundError, UsageError, cert_errors

RENEW_DAYS = 30


@dataclass(frozen=True)
class DeviceCredentials:
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes = field(repr=False)         # encrypted with ``passphrase``
    passphrase: bytes = field(repr=False)
    issued: str                                # "kept", "issued from DIR", "from --cert"

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.cert_pem).hexdigest()


def _covers(cert: object, host: str) -> bool:
    from cryptography import x509

    try:
        sans = cert.extensions.get_extension_for_class(  # type: ignore[attr-defined]
            x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host.lower() in [n.lower() for n in sans.get_values_for_type(x509.DNSName)]
    return ip in sans.get_values_for_type(x509.IPAddress)


def board_cert_still_good(ca_pem: bytes, board_ca: Optional[str], board_cert: Optional[str],
                          host: str) -> bool:
    """The board holds our CA and a certificate of it for ``host`` with > 30 days left."""
    if not board_ca or not board_cert or board_ca.encode() != ca_pem:
        return False
    from edgetune.certs.describe import describe_certificate
    from edgetune.certs.files import parse_cert_pem
    from edgetune.certs.identity import issued_by

    try:
        cert = parse_cert_pem(board_cert.encode())
        ca = parse_cert_pem(ca_pem)
        info = describe_certificate(cert)
    except Exception:
        return False
    return issued_by(cert, ca) and _covers(cert, host) and info.days_left() > RENEW_DAYS


def _interactive() -> bool:
    return sys.stdin is not None and sys.stdin.isatty()


def issue_from_pki(pki: Path, name: str, host: str, passphrase_file: Optional[Path],
                   ca_pem: bytes) -> DeviceCredentials:
    """A device certificate for ``host`` (SAN IP or DNS, as given) from DIR's CA."""
    from edgetune.certs.keys import encrypt_key_pem
    from edgetune.certs.passphrase import resolve_passphrase
    from edgetune.certs.pki import CertificateAuthority

    if not (pki / "ca-key.pem").is_file():
        raise NotFoundError(f"the CA key {pki / 'ca-key.pem'} does not exist",
                            hint="pass --pki DIR (the folder `edgetune certs init` made), or "
                                 "--cert/--key of a certificate issued for the board")
    with cert_errors():
        passphrase = resolve_passphrase(passphrase_file, confirm=False,
                                        interactive=_interactive())
        ca = CertificateAuthority.load(pki, passphrase)
        if ca.cert_pem != ca_pem:
            raise AuthError(f"the CA in {pki} is not the CA this PC's certificate chains to",
                            hint="use the same PKI folder for [host] and --pki")
        is_ip = _is_ip(host)
        leaf = ca.issue_device(name, ips=(host,) if is_ip else (),
                               dns=() if is_ip else (host,))
    board_passphrase = secrets.token_urlsafe(32).encode()
    return DeviceCredentials(ca_pem=ca_pem, cert_pem=leaf.cert_pem,
                             key_pem=encrypt_key_pem(leaf.private_key, board_passphrase),
                             passphrase=board_passphrase, issued=f"issued from {pki}")


def from_files(cert: Path, key: Path, host: str, passphrase_file: Optional[Path],
               ca_pem: bytes) -> DeviceCredentials:
    """``--cert/--key``: checked (chains to our CA, serverAuth, covers ``host``), the key
    re-encrypted with a passphrase of the board's own."""
    from edgetune.certs.describe import describe_certificate
    from edgetune.certs.files import parse_cert_pem, read_file
    from edgetune.certs.identity import check_key_matches, issued_by
    from edgetune.certs.keys import encrypt_key_pem, is_encrypted_pem, load_key_pem
    from edgetune.certs.passphrase import resolve_passphrase

    with cert_errors():
        cert_pem = read_file(cert, "device certificate")
        key_pem = read_file(key, "device key")
        certificate = parse_cert_pem(cert_pem, str(cert))
        passphrase = (resolve_passphrase(passphrase_file, confirm=False,
                                         interactive=_interactive())
                      if is_encrypted_pem(key_pem) else None)
        private_key = load_key_pem(key_pem, passphrase, source=str(key))
        check_key_matches(private_key, certificate, key_source=str(key), cert_source=str(cert))
        if not issued_by(certificate, parse_cert_pem(ca_pem)):
            raise AuthError(f"{cert} is not issued by this PC's CA",
                            hint="the agent must present a certificate of the CA this PC trusts")
        info = describe_certificate(certificate)
    if info.eku is not None and "serverAuth" not in info.eku:
        raise BadInputError(f"{cert} lacks serverAuth: it is not a board certificate",
                            hint="issue one with `edgetune certs issue device NAME --ip IP`")
    if not _covers(certificate, host):
        raise BadInputError(f"{cert} does not name {host} in its subjectAltName "
                            f"({', '.join(info.sans) or 'none'}): this PC could not check the "
                            "board it dials",
                            hint=f"issue it with --ip/--dns {host}, or pass --address")
    board_passphrase = secrets.token_urlsafe(32).encode()
    return DeviceCredentials(ca_pem=ca_pem, cert_pem=cert_pem,
                             key_pem=encrypt_key_pem(private_key, board_passphrase),
                             passphrase=board_passphrase, issued=f"from {cert}")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def need_source(pki: Optional[Path], cert: Optional[Path], key: Optional[Path]) -> None:
    if (cert is None) != (key is None):
        raise UsageError("pass both --cert and --key (the board's certificate and its key)")
    if pki is None and cert is None:
        raise UsageError("no CA to issue the board's certificate from",
                         hint="pass --pki DIR (the folder `edgetune certs init` made), set "
                              "[host] pki in edgetune.toml, or pass --cert/--key")

