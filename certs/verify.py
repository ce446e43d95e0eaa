"""``edgetune certs verify``: check every certificate of a PKI directory against its CA.

For each ``*-cert.pem``: signed by ``ca-cert.pem``, in date, and paired with a ``*-key.pem``
that decrypts and matches. Problems fail the check; warnings (expiring within 30 days, a
certificate whose key lives elsewhere) do not.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from cryptography import x509

from edgetune.certs.describe import CertInfo, describe_certificate
from edgetune.certs.errors import CertError, CertFileNotFoundError
from edgetune.certs.files import CA_NAME, CERT_SUFFIX, KEY_SUFFIX, cert_path, parse_cert_pem, read_file
from edgetune.certs.identity import check_key_matches, issued_by
from edgetune.certs.keys import is_encrypted_pem, load_key_pem
from edgetune.certs.pki import utcnow


@dataclass(frozen=True)
class CertCheck:
    name: str
    cert: Path
    key: Optional[Path]
    info: Optional[CertInfo]
    problems: Tuple[str, ...]
    warnings: Tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self, now: Optional[dt.datetime] = None) -> Dict[str, Any]:
        return {"name": self.name, "cert": str(self.cert),
                "key": None if self.key is None else str(self.key), "ok": self.ok,
                "problems": list(self.problems), "warnings": list(self.warnings),
                "certificate": None if self.info is None else self.info.as_dict(now)}


@dataclass(frozen=True)
class PkiReport:
    directory: Path
    checks: Tuple[CertCheck, ...]
    warnings: Tuple[str, ...] = ()       # about the directory, e.g. keys without a certificate

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    @property
    def failed(self) -> Tuple[CertCheck, ...]:
        return tuple(check for check in self.checks if not check.ok)

    def as_dict(self, now: Optional[dt.datetime] = None) -> Dict[str, Any]:
        return {"directory": str(self.directory), "ok": self.ok,
                "checks": [check.as_dict(now) for check in self.checks],
                "warnings": list(self.warnings)}


def encrypted_keys(directory: Path) -> List[Path]:
    """The encrypted ``*-key.pem`` files of a PKI directory (to know if a passphrase is needed)."""
    out = []
    for path in sorted(Path(directory).glob(f"*{KEY_SUFFIX}")):
        try:
            if is_encrypted_pem(path.read_bytes()):
                out.append(path)
        except OSError:
            continue
    return out


def _date_findings(info: CertInfo, now: dt.datetime, problems: List[str], warnings: List[str]) -> None:
    status = info.status(now)
    if status == "expired":
        problems.append(f"EXPIRED on {info.not_after.isoformat()}")
    elif status == "not yet valid":
        problems.append(f"not valid before {info.not_before.isoformat()} "
                        "(check this machine's clock)")
    elif status == "expiring":
        warnings.append(f"expires in {info.days_left(now):.0f} days, on {info.not_after.isoformat()}")


def _check_key(name: str, cert: x509.Certificate, key_file: Path, passphrase: Optional[bytes],
               problems: List[str], warnings: List[str]) -> Optional[Path]:
    if not key_file.exists():
        warnings.append(f"no {key_file.name} here (fine if that key lives on its own machine)")
        return None
    try:
        key_pem = read_file(key_file, "private key")
        if is_encrypted_pem(key_pem) and passphrase is None:
            problems.append(f"{key_file.name} is encrypted and no passphrase was given")
            return key_file
        key = load_key_pem(key_pem, passphrase, source=str(key_file))
        check_key_matches(key, cert, key_source=key_file.name, cert_source=f"{name}{CERT_SUFFIX}")
    except CertError as exc:
        problems.append(str(exc))
    return key_file


def _check_one(name: str, cert_file: Path, ca: Optional[x509.Certificate],
               passphrase: Optional[bytes], now: dt.datetime) -> CertCheck:
    problems: List[str] = []
    warnings: List[str] = []
    try:
        cert = parse_cert_pem(read_file(cert_file, "certificate"), str(cert_file))
    except CertError as exc:
        return CertCheck(name, cert_file, None, None, (str(exc),), ())
    info = describe_certificate(cert)
    if name == CA_NAME:
        if not info.is_ca:
            problems.append("not a CA certificate (basicConstraints CA:TRUE is missing)")
        if not issued_by(cert, cert):
            problems.append("not self-signed")
    elif ca is not None and not issued_by(cert, ca):
        problems.append(f"not signed by this PKI's CA (its issuer is {info.issuer})")
    if name != CA_NAME and info.is_ca:
        warnings.append("a CA certificate, not a device or host certificate")
    if name != CA_NAME and info.eku is not None and "serverAuth" in info.eku and not info.sans:
        problems.append("a server certificate without subjectAltName: no host can check the "
                        "board's address against it; re-issue it with --ip/--dns")
    _date_findings(info, now, problems, warnings)
    key_file = _check_key(name, cert, cert_file.with_name(f"{name}{KEY_SUFFIX}"), passphrase,
                          problems, warnings)
    return CertCheck(name, cert_file, key_file, info, tuple(problems), tuple(warnings))


def verify_pki(directory: Path, passphrase: Optional[bytes], *,
               now: Optional[dt.datetime] = None) -> PkiReport:
    """Check ``ca-cert.pem`` and every ``NAME-cert.pem`` of ``directory``.

    ``passphrase`` may be None when no key is encrypted; encrypted keys then count as problems.
    Raises ``CertFileNotFoundError`` only when there is no ``ca-cert.pem`` at all.
    """
    directory = Path(directory)
    now = now or utcnow()
    ca_file = cert_path(directory, CA_NAME)
    if not ca_file.exists():
        raise CertFileNotFoundError(
            f"{ca_file} does not exist: is {directory} a PKI directory? "
            "(make one with edgetune certs init --dir DIR)")
    ca_check = _check_one(CA_NAME, ca_file, None, passphrase, now)
    ca_cert: Optional[x509.Certificate] = None
    if ca_check.info is not None:
        ca_cert = parse_cert_pem(ca_file.read_bytes(), str(ca_file))
    checks = [ca_check]
    names = sorted(p.name[:-len(CERT_SUFFIX)] for p in directory.glob(f"*{CERT_SUFFIX}"))
    for name in names:
        if name == CA_NAME:
            continue
        check = _check_one(name, directory / f"{name}{CERT_SUFFIX}", ca_cert, passphrase, now)
        if ca_cert is None:
            check = CertCheck(check.name, check.cert, check.key, check.info,
                              check.problems + ("cannot check the signature: the CA certificate is unreadable",),
                              check.warnings)
        checks.append(check)
    orphans = [p.name for p in sorted(directory.glob(f"*{KEY_SUFFIX}"))
               if not p.with_name(p.name[:-len(KEY_SUFFIX)] + CERT_SUFFIX).exists()]
    warnings = tuple(f"{name} has no matching certificate" for name in orphans)
    return PkiReport(directory=directory, checks=tuple(checks), warnings=warnings)
