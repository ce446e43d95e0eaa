"""A PKI made by the usual openssl recipe works unchanged: loading, verify, issue, handshake."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from edgetune.certs import (CertificateAuthority, PassphraseError, describe_certificate, has_client_auth,
                   has_server_auth, load_identity)
from edgetune.certs.verify import verify_pki
from edgetune.host.cli import main
from tests.test_certs_grpc import HealthServer

PW = "lab passphrase 1"

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl binary")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _leaf(directory: Path, name: str, *, traditional: bool) -> None:
    """genrsa, encrypt with ``openssl rsa -aes256`` (traditional or PKCS#8), CSR, sign with
    only subjectAltName=IP:127.0.0.1 (no extendedKeyUsage)."""
    _openssl("genrsa", "-out", f"{name}-plain.pem", "2048", cwd=directory)
    _openssl("rsa", "-in", f"{name}-plain.pem", "-aes256", "-passout", f"pass:{PW}",
             *(["-traditional"] if traditional else []), "-out", f"{name}-key.pem", cwd=directory)
    _openssl("req", "-new", "-key", f"{name}-plain.pem", "-subj", f"/CN={name}",
             "-out", f"{name}.csr", cwd=directory)
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca-cert.pem", "-CAkey", "ca-key.pem",
             "-passin", f"pass:{PW}", "-CAcreateserial", "-days", "365", "-extfile", "san.ext",
             "-out", f"{name}-cert.pem", cwd=directory)
    (directory / f"{name}-plain.pem").unlink()


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("openssl-pki")
    _openssl("req", "-x509", "-newkey", "rsa:3072", "-keyout", "ca-key.pem", "-out", "ca-cert.pem",
             "-days", "365", "-subj", "/C=CN/O=Lab/CN=Lab CA", "-passout", f"pass:{PW}",
             "-addext", "keyUsage=keyCertSign", cwd=directory)
    _leaf(directory, "board1", traditional=True)
    _leaf(directory, "laptop", traditional=False)
    for leftover in ("san.ext", "board1.csr", "laptop.csr", "ca-cert.srl"):
        (directory / leftover).unlink()
    return directory


def test_recipe_files_are_what_we_claim(recipe) -> None:
    board_key = (recipe / "board1-key.pem").read_text()
    assert "Proc-Type: 4,ENCRYPTED" in board_key and "DEK-Info: AES-256-CBC" in board_key
    assert (recipe / "laptop-key.pem").read_text().startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    board = describe_certificate((recipe / "board1-cert.pem").read_bytes())
    assert board.eku is None and board.sans == ("IP:127.0.0.1",)
    assert has_client_auth((recipe / "laptop-cert.pem").read_bytes())
    assert has_server_auth((recipe / "board1-cert.pem").read_bytes())


@pytest.mark.parametrize("name", ["board1", "laptop"])
def test_both_encrypted_key_forms_load(recipe, name) -> None:
    identity = load_identity(recipe / "ca-cert.pem", recipe / f"{name}-cert.pem",
                             recipe / f"{name}-key.pem", PW.encode())
    assert identity.common_name == name
    assert identity.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    with pytest.raises(PassphraseError, match=f"wrong passphrase for .*{name}-key.pem"):
        load_identity(recipe / "ca-cert.pem", recipe / f"{name}-cert.pem",
                      recipe / f"{name}-key.pem", b"wrong passphrase")


def test_recipe_ca_loads_and_issues(recipe, tmp_path) -> None:
    ca = CertificateAuthority.load(recipe, PW)
    assert ca.common_name == "Lab CA"
    leaf = ca.issue_host("pc2", key_type="ecdsa-p256")
    cert, _ = leaf.write(tmp_path, PW)
    shutil.copy(recipe / "ca-cert.pem", tmp_path / "ca-cert.pem")
    result = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "ca-cert.pem"),
                             "-purpose", "sslclient", str(cert)], capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_verify_and_issue_through_the_cli(recipe, tmp_path, monkeypatch, capsys) -> None:
    import edgetune.host.cli
    monkeypatch.setattr(edgetune.host.cli, "COMMAND_MODULES", ("edgetune.host.cli.certs_cmd",))
    monkeypatch.setenv("EDGETUNE_PASSPHRASE", PW)
    report = verify_pki(recipe, PW.encode())
    assert report.ok, [c.problems for c in report.checks]
    assert [c.name for c in report.checks] == ["ca", "board1", "laptop"]
    work = tmp_path / "pki"
    shutil.copytree(recipe, work)
    assert main(["certs", "issue", "device", "board2", "--ip", "10.1.2.3", "--dir", str(work),
                 "--key-type", "ecdsa-p256"]) == 0
    assert main(["certs", "verify", "--dir", str(work)]) == 0
    assert "4 certificates ok" in capsys.readouterr().out


def test_recipe_pki_handshakes(recipe, pki) -> None:
    board = load_identity(recipe / "ca-cert.pem", recipe / "board1-cert.pem",
                          recipe / "board1-key.pem", PW.encode())
    laptop = load_identity(recipe / "ca-cert.pem", recipe / "laptop-cert.pem",
                           recipe / "laptop-key.pem", PW.encode())
    server = HealthServer(board)
    try:
        assert server.check(laptop, laptop.ca_pem) == health_pb2.HealthCheckResponse.SERVING
        # Our own fixture's host certificate is from another CA: refused.
        with pytest.raises(grpc.RpcError) as caught:
            server.check(pki.host.identity, laptop.ca_pem)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.server.stop(None)
