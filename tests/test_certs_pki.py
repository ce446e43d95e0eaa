"""Certificate structure, key files and loading errors of the certs package."""

from __future__ import annotations

import datetime as dt
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgetune.certs import (CertFileExistsError, CertFileNotFoundError, CertFormatError,
                   CertificateAuthority, CertOptionError, CertVerifyError, KeyMismatchError,
                   PassphraseError, PassphrasePolicyError, describe_certificate, has_client_auth,
                   has_server_auth, load_identity)
from edgetune.certs.keys import encrypt_key_pem, generate_key, is_encrypted_pem, load_key_pem

PASS = b"correct horse battery"


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("/C=CN/O=Acme/CN=Acme CA", key_type="ecdsa-p256")


def _ext(cert: x509.Certificate, kind: type):
    return cert.extensions.get_extension_for_class(kind)


def test_ca_structure(ca) -> None:
    cert = ca.certificate
    basic = _ext(cert, x509.BasicConstraints)
    assert basic.critical and basic.value.ca and basic.value.path_length == 0
    usage = _ext(cert, x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COUNTRY_NAME)[0].value == "CN"
    assert ca.common_name == "Acme CA"
    with pytest.raises(x509.ExtensionNotFound):
        _ext(cert, x509.ExtendedKeyUsage)


def test_device_certificate_is_a_server_with_sans(ca) -> None:
    leaf = ca.issue_device("board1", ips=["192.168.1.20", "fe80::1"], dns=["board1.local"],
                           key_type="ecdsa-p256")
    cert = leaf.certificate
    assert _ext(cert, x509.BasicConstraints).value.ca is False
    assert list(_ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    usage = _ext(cert, x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_cert_sign
    sans = _ext(cert, x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["192.168.1.20", "fe80::1"]
    assert sans.get_values_for_type(x509.DNSName) == ["board1.local"]
    assert cert.issuer == ca.certificate.subject
    ca.verify_issued(cert)
    info = describe_certificate(leaf.cert_pem)
    assert info.cn == "board1" and info.ips == ("192.168.1.20", "fe80::1")
    assert info.eku == ("serverAuth",) and not info.is_ca
    assert has_server_auth(leaf.cert_pem) and not has_client_auth(leaf.cert_pem)


def test_host_certificate_is_a_client(ca) -> None:
    leaf = ca.issue_host("laptop", key_type="rsa3072")
    cert = leaf.certificate
    assert list(_ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert _ext(cert, x509.KeyUsage).value.key_encipherment      # RSA key
    with pytest.raises(x509.ExtensionNotFound):
        _ext(cert, x509.SubjectAlternativeName)
    assert has_client_auth(leaf.cert_pem) and not has_server_auth(leaf.cert_pem)
    assert describe_certificate(cert).key_type == "rsa3072"


def test_no_eku_means_any_usage(ca) -> None:
    leaf = ca.issue("recipe", "device", ips=["10.0.0.1"], key_type="ecdsa-p256", extended_usage=())
    assert describe_certificate(leaf.cert_pem).eku is None
    assert has_client_auth(leaf.cert_pem) and has_server_auth(leaf.cert_pem)


def test_validity_is_timezone_aware_and_follows_days(ca) -> None:
    before = dt.datetime.now(dt.timezone.utc)
    leaf = ca.issue_host("short", days=10, key_type="ecdsa-p256")
    info = describe_certificate(leaf.certificate)
    assert info.not_before.tzinfo is not None and info.not_after.utcoffset() == dt.timedelta(0)
    assert info.not_before <= before
    assert abs((info.not_after - before) - dt.timedelta(days=10)) < dt.timedelta(minutes=1)
    assert info.status() == "expiring" and 9 < info.days_left() <= 10


def test_leaf_never_outlives_its_ca(ca) -> None:
    leaf = ca.issue_host("long", days=3650, key_type="ecdsa-p256")
    assert describe_certificate(leaf.certificate).not_after == describe_certificate(ca.certificate).not_after


def test_explicit_dates_make_an_expired_certificate(ca) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    leaf = ca.issue_host("old", key_type="ecdsa-p256", not_before=now - dt.timedelta(days=10),
                         not_after=now - dt.timedelta(days=1))
    assert describe_certificate(leaf.cert_pem).status() == "expired"
    with pytest.raises(CertOptionError, match="timezone"):
        ca.issue_host("naive", key_type="ecdsa-p256", not_before=dt.datetime(2020, 1, 1))


@pytest.mark.parametrize("name", ["../etc", "a/b", "", ".hidden", "ca", "CA", "x" * 65, "a b"])
def test_leaf_names_are_names_not_paths(ca, name) -> None:
    with pytest.raises(CertOptionError):
        ca.issue_host(name, key_type="ecdsa-p256")


def test_bad_options_are_refused(ca) -> None:
    with pytest.raises(CertOptionError, match="IP address"):
        ca.issue_device("b", ips=["300.1.1.1"], key_type="ecdsa-p256")
    with pytest.raises(CertOptionError, match="at least one"):
        ca.issue_device("b", key_type="ecdsa-p256")
    with pytest.raises(CertOptionError, match="key type"):
        ca.issue_host("b", key_type="rsa1024")
    with pytest.raises(CertOptionError, match="subject"):
        CertificateAuthority.create("CN=no slash", key_type="ecdsa-p256")
    with pytest.raises(CertOptionError, match="country"):
        CertificateAuthority.create("/C=China/CN=x", key_type="ecdsa-p256")


def test_written_keys_are_encrypted_0600_and_load_back(ca, tmp_path) -> None:
    cert_file, key_file = ca.write(tmp_path / "pki", PASS)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(cert_file.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "pki").stat().st_mode) == 0o700
    pem = key_file.read_bytes()
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----") and is_encrypted_pem(pem)
    assert [p.name for p in (tmp_path / "pki").iterdir() if p.name.startswith(".")] == []
    again = CertificateAuthority.load(tmp_path / "pki", PASS.decode())
    assert again.certificate == ca.certificate
    with pytest.raises(PassphraseError) as caught:
        CertificateAuthority.load(tmp_path / "pki", b"not the passphrase")
    assert str(caught.value) == (f"wrong passphrase for {key_file} "
                                 "(set EDGETUNE_PASSPHRASE or --passphrase-file)")


def test_short_passphrase_is_refused_for_new_keys(ca, tmp_path) -> None:
    with pytest.raises(PassphrasePolicyError, match="at least 8"):
        ca.write(tmp_path, "short")
    assert list(tmp_path.iterdir()) == []


def test_existing_files_need_force(ca, tmp_path) -> None:
    leaf = ca.issue_host("laptop", key_type="ecdsa-p256")
    cert_file, key_file = leaf.write(tmp_path, PASS)
    first_key = key_file.read_bytes()
    other = ca.issue_host("laptop", key_type="ecdsa-p256")
    with pytest.raises(CertFileExistsError, match="--force"):
        other.write(tmp_path, PASS)
    assert key_file.read_bytes() == first_key
    other.write(tmp_path, PASS, force=True)
    assert key_file.read_bytes() != first_key
    assert cert_file.read_bytes() == other.cert_pem
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


@pytest.mark.parametrize("cipher,oid_name", [("aes256", b"aes-256-cbc"), ("aes128", b"aes-128-cbc")])
def test_key_ciphers_are_readable_by_openssl(tmp_path, cipher, oid_name) -> None:
    key = generate_key("ecdsa-p256")
    path = tmp_path / "key.pem"
    path.write_bytes(encrypt_key_pem(key, PASS, cipher))
    parsed = subprocess.run(["openssl", "asn1parse", "-in", str(path)], capture_output=True, check=True)
    assert oid_name in parsed.stdout
    subprocess.run(["openssl", "pkey", "-in", str(path), "-passin", f"pass:{PASS.decode()}", "-noout"],
                   check=True, capture_output=True)
    loaded = load_key_pem(path.read_bytes(), PASS)
    assert loaded.private_numbers() == key.private_numbers()
    with pytest.raises(PassphraseError):
        load_key_pem(path.read_bytes(), b"wrong passphrase")
    with pytest.raises(PassphraseError, match="no passphrase"):
        load_key_pem(path.read_bytes(), None)


def test_openssl_verifies_our_chain_and_purposes(pki) -> None:
    def verify(purpose: str, cert: Path) -> int:
        return subprocess.run(["openssl", "verify", "-CAfile", str(pki.ca_cert), "-purpose", purpose,
                               str(cert)], capture_output=True).returncode
    assert verify("sslserver", pki.device.cert) == 0
    assert verify("sslclient", pki.host.cert) == 0
    assert verify("sslclient", pki.device.cert) != 0
    assert verify("sslclient", pki.foreign_host.cert) != 0


def test_load_identity(pki) -> None:
    identity = load_identity(pki.host.ca, pki.host.cert, pki.host.key, pki.passphrase)
    assert identity.common_name == "laptop"
    assert identity.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert b"PRIVATE KEY" not in repr(identity).encode()
    assert identity.ca_pem == pki.ca_cert.read_bytes()


def test_load_identity_errors(pki, tmp_path) -> None:
    with pytest.raises(PassphraseError, match="wrong passphrase for .*laptop-key.pem"):
        load_identity(pki.host.ca, pki.host.cert, pki.host.key, b"wrong passphrase")
    with pytest.raises(CertFileNotFoundError, match="does not exist"):
        load_identity(pki.host.ca, tmp_path / "nope-cert.pem", pki.host.key, pki.passphrase)
    with pytest.raises(KeyMismatchError, match="does not belong"):
        load_identity(pki.host.ca, pki.host.cert, pki.device.key, pki.passphrase)
    with pytest.raises(CertVerifyError, match="not signed by the CA"):
        load_identity(pki.ca_cert, pki.foreign_host.cert, pki.foreign_host.key, pki.passphrase)
    not_pem = tmp_path / "garbage-cert.pem"
    not_pem.write_bytes(b"hello")
    with pytest.raises(CertFormatError, match="not a PEM certificate"):
        load_identity(pki.host.ca, not_pem, pki.host.key, pki.passphrase)
    with pytest.raises(CertFormatError, match="swap"):
        load_identity(pki.host.ca, pki.host.key, pki.host.key, pki.passphrase)


def test_unencrypted_key_loads_with_a_warning(pki, tmp_path, caplog) -> None:
    plain = tmp_path / "laptop-key.pem"
    plain.write_bytes(pki.host.identity.key_pem)
    identity = load_identity(pki.host.ca, pki.host.cert, plain, None)
    assert identity.key_pem == pki.host.identity.key_pem
    assert "not encrypted" in caplog.text


def test_fixture_pki_layout(pki) -> None:
    names = sorted(p.name for p in pki.dir.iterdir())
    assert names == ["board1-cert.pem", "board1-key.pem", "ca-cert.pem", "ca-key.pem", "expired",
                     "foreign", "laptop-cert.pem", "laptop-key.pem"]
    assert describe_certificate(pki.expired_host.identity.cert_pem).status() == "expired"
    assert pki.foreign_host.ca == pki.ca_cert
    for path in pki.dir.rglob("*-key.pem"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
