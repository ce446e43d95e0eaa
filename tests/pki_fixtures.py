"""A ready-made PKI for tests, built once per session (enabled in tests/conftest.py).

``pki`` (ECDSA P-256, fast) and ``rsa_pki`` (RSA 3072, what users get by default) are
``PkiFixture`` objects. The files are shared by every test in the session: treat them as
read-only (``shutil.copytree(pki.dir, tmp_path / "pki")`` to change something).

Layout of ``pki.dir`` (all keys encrypted with ``pki.passphrase``):
    ca-cert.pem, ca-key.pem             the CA
    board1-cert.pem, board1-key.pem     device: serverAuth, SAN IP:127.0.0.1, DNS:localhost
    laptop-cert.pem, laptop-key.pem     host: clientAuth
    expired/old-laptop-*.pem            host cert of this CA that expired yesterday
    foreign/ca-*.pem, foreign/intruder-*.pem   another CA and a host cert it issued
``pki.dir`` itself passes ``edgetune certs verify``; the sub-directories hold the bad ones.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from edgetune.certs import CertificateAuthority, Identity, IssuedCert

PASSPHRASE = b"edgetune-test-passphrase"
DEVICE_NAME = "board1"
HOST_NAME = "laptop"


@dataclass(frozen=True)
class IdentityFiles:
    """A certificate/key pair on disk plus the CA file a peer using it trusts, and the same
    identity already in memory (built without checks, so bad ones are usable too)."""

    ca: Path
    cert: Path
    key: Path
    identity: Identity = field(repr=False)

    @property
    def name(self) -> str:
        return self.identity.common_name


@dataclass(frozen=True)
class PkiFixture:
    dir: Path
    passphrase: bytes
    key_type: str
    ca: CertificateAuthority
    foreign_ca: CertificateAuthority
    device: IdentityFiles            # "board1", the agent's server identity
    host: IdentityFiles              # "laptop", a good client identity
    expired_host: IdentityFiles      # "old-laptop": signed by ca, expired yesterday
    foreign_host: IdentityFiles      # "intruder": signed by foreign_ca; .ca is the real CA

    @property
    def device_as_client(self) -> IdentityFiles:
        """The board's serverAuth-only certificate presented as a client certificate."""
        return self.device

    @property
    def ca_cert(self) -> Path:
        return self.dir / "ca-cert.pem"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca-key.pem"


def _files(leaf: IssuedCert, directory: Path, passphrase: bytes, trusted_ca: Path,
           trusted_ca_pem: bytes) -> IdentityFiles:
    cert, key = leaf.write(directory, passphrase)
    identity = Identity(ca_pem=trusted_ca_pem, cert_pem=leaf.cert_pem, key_pem=leaf.key_pem,
                        common_name=leaf.name)
    return IdentityFiles(ca=trusted_ca, cert=cert, key=key, identity=identity)


def build_pki(directory: Path, *, key_type: str = "ecdsa-p256",
              passphrase: bytes = PASSPHRASE) -> PkiFixture:
    """Build the PKI described in the module docstring under ``directory``."""
    directory = Path(directory)
    ca = CertificateAuthority.create("/O=edgetune tests/CN=edgetune test CA", key_type=key_type)
    ca_cert, _ = ca.write(directory, passphrase)
    ca_pem = ca.cert_pem
    device = _files(ca.issue_device(DEVICE_NAME, ips=["127.0.0.1"], dns=["localhost"],
                                    key_type=key_type), directory, passphrase, ca_cert, ca_pem)
    host = _files(ca.issue_host(HOST_NAME, key_type=key_type), directory, passphrase, ca_cert, ca_pem)
    now = dt.datetime.now(dt.timezone.utc)
    expired = _files(ca.issue_host("old-laptop", key_type=key_type,
                                   not_before=now - dt.timedelta(days=31),
                                   not_after=now - dt.timedelta(days=1)),
                     directory / "expired", passphrase, ca_cert, ca_pem)
    foreign_ca = CertificateAuthority.create("/O=someone else/CN=foreign CA", key_type=key_type)
    foreign_ca.write(directory / "foreign", passphrase)
    foreign = _files(foreign_ca.issue_host("intruder", key_type=key_type),
                     directory / "foreign", passphrase, ca_cert, ca_pem)
    return PkiFixture(dir=directory, passphrase=passphrase, key_type=key_type, ca=ca,
                      foreign_ca=foreign_ca, device=device, host=host, expired_host=expired,
                      foreign_host=foreign)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiFixture:
    """ECDSA P-256 PKI (fast). Read-only: copy it to change anything."""
    return build_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def rsa_pki(tmp_path_factory: pytest.TempPathFactory) -> PkiFixture:
    """RSA 3072 PKI, the user's default key type. Read-only."""
    return build_pki(tmp_path_factory.mktemp("rsa-pki"), key_type="rsa3072")
