"""``edgetune certs ...`` end to end, in-process through edgetune.host.cli.main."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import pytest

from edgetune.certs import describe_certificate, load_identity
from edgetune.host.cli import main
from edgetune.host.target import load_host_identity as identity_from_args
from edgetune.host.errors import AuthError, ExitStatus, NotFoundError

PASS = "cli test passphrase"
EC = ["--key-type", "ecdsa-p256"]


@pytest.fixture(autouse=True)
def only_certs_command(monkeypatch) -> None:
    """Parse with only the certs command registered: these tests stay about it (and fast)
    while the other command modules change."""
    import edgetune.host.cli
    monkeypatch.setattr(edgetune.host.cli, "COMMAND_MODULES", ("edgetune.host.cli.certs_cmd",))


@pytest.fixture
def env_pass(monkeypatch) -> str:
    monkeypatch.setenv("EDGETUNE_PASSPHRASE", PASS)
    return PASS


@pytest.fixture
def made_pki(tmp_path, env_pass) -> Path:
    directory = tmp_path / "pki"
    assert main(["certs", "init", "--dir", str(directory), *EC]) == 0
    assert main(["certs", "issue", "device", "board1", "--ip", "127.0.0.1", "--ip", "10.0.0.7",
                 "--dns", "localhost", "--dir", str(directory), *EC]) == 0
    assert main(["certs", "issue", "host", "laptop", "--dir", str(directory), *EC]) == 0
    return directory


def test_init_issue_verify(made_pki, capsys) -> None:
    names = sorted(p.name for p in made_pki.iterdir())
    assert names == ["board1-cert.pem", "board1-key.pem", "ca-cert.pem", "ca-key.pem",
                     "laptop-cert.pem", "laptop-key.pem"]
    for key in made_pki.glob("*-key.pem"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert key.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    board = describe_certificate((made_pki / "board1-cert.pem").read_bytes())
    assert board.sans == ("IP:127.0.0.1", "IP:10.0.0.7", "DNS:localhost")
    assert board.eku == ("serverAuth",)
    assert describe_certificate((made_pki / "laptop-cert.pem").read_bytes()).eku == ("clientAuth",)
    capsys.readouterr()
    assert main(["certs", "verify", "--dir", str(made_pki)]) == 0
    out = capsys.readouterr().out
    assert "3 certificates ok" in out and "FAILED" not in out
    load_identity(made_pki / "ca-cert.pem", made_pki / "laptop-cert.pem",
                  made_pki / "laptop-key.pem", PASS.encode())


def test_defaults_rsa3072_aes256_365_days_and_subject(tmp_path, env_pass, capsys) -> None:
    directory = tmp_path / "pki"
    subject = "/C=CN/ST=Guangdong/L=Shenzhen/O=Acme/OU=AI/CN=Acme edge CA"
    assert main(["certs", "init", "--dir", str(directory), "--subject", subject, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["cipher"] == "aes256" and doc["certificate"]["key_type"] == "rsa3072"
    assert 364.9 < doc["certificate"]["days_left"] <= 365.01
    assert doc["certificate"]["subject"] == "CN=Acme edge CA,OU=AI,O=Acme,L=Shenzhen,ST=Guangdong,C=CN"
    assert doc["certificate"]["is_ca"] is True


def test_aes128_and_passphrase_file(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("EDGETUNE_PASSPHRASE", raising=False)
    secret = tmp_path / "secret"
    secret.write_text("from a file 123\n")
    secret.chmod(0o600)
    directory = tmp_path / "pki"
    common = ["--dir", str(directory), "--passphrase-file", str(secret), *EC]
    assert main(["certs", "init", "--cipher", "aes128", *common]) == 0
    assert main(["certs", "issue", "host", "pc1", "--cipher", "aes128", *common]) == 0
    identity = identity_from_args(directory / "ca-cert.pem", directory / "pc1-cert.pem",
                                  directory / "pc1-key.pem", secret)
    assert identity.common_name == "pc1"


def test_existing_files_need_force(made_pki, capsys) -> None:
    before = (made_pki / "ca-key.pem").read_bytes()
    assert main(["certs", "init", "--dir", str(made_pki), *EC]) == ExitStatus.USAGE
    assert "--force" in capsys.readouterr().err
    assert (made_pki / "ca-key.pem").read_bytes() == before
    assert main(["certs", "issue", "host", "laptop", "--dir", str(made_pki), *EC]) == ExitStatus.USAGE
    assert main(["certs", "issue", "host", "laptop", "--dir", str(made_pki), "--force", *EC]) == 0
    assert main(["certs", "init", "--dir", str(made_pki), "--force", *EC]) == 0
    assert (made_pki / "ca-key.pem").read_bytes() != before


def test_short_passphrase_is_a_usage_error(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("EDGETUNE_PASSPHRASE", "short")
    assert main(["certs", "init", "--dir", str(tmp_path / "pki"), *EC]) == ExitStatus.USAGE
    assert "at least 8" in capsys.readouterr().err
    assert not (tmp_path / "pki" / "ca-key.pem").exists()


def test_no_passphrase_source_is_a_usage_error(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.delenv("EDGETUNE_PASSPHRASE", raising=False)
    assert main(["certs", "init", "--dir", str(tmp_path / "pki"), *EC]) == ExitStatus.USAGE
    assert "EDGETUNE_PASSPHRASE" in capsys.readouterr().err


def test_wrong_passphrase_is_an_auth_error(made_pki, monkeypatch, capsys) -> None:
    monkeypatch.setenv("EDGETUNE_PASSPHRASE", "not the passphrase")
    assert main(["certs", "issue", "host", "pc2", "--dir", str(made_pki), *EC]) == ExitStatus.AUTH
    err = capsys.readouterr().err
    assert "wrong passphrase for" in err and "ca-key.pem" in err
    assert not (made_pki / "pc2-cert.pem").exists()
    with pytest.raises(AuthError, match="wrong passphrase"):
        identity_from_args(made_pki / "ca-cert.pem", made_pki / "laptop-cert.pem",
                           made_pki / "laptop-key.pem")
    with pytest.raises(NotFoundError):
        identity_from_args(made_pki / "ca-cert.pem", made_pki / "laptop-cert.pem",
                           made_pki / "nope-key.pem")


def test_bad_arguments(tmp_path, made_pki, capsys) -> None:
    assert main(["certs", "issue", "host", "../evil", "--dir", str(made_pki), *EC]) == ExitStatus.USAGE
    assert "a name, not a path" in capsys.readouterr().err
    assert main(["certs", "issue", "device", "b2", "--dir", str(made_pki), *EC]) == ExitStatus.USAGE
    assert main(["certs", "issue", "device", "b2", "--ip", "1.2.3", "--dir", str(made_pki), *EC]) == ExitStatus.USAGE
    assert main(["certs", "issue", "host", "pc", "--dir", str(tmp_path / "none"), *EC]) == ExitStatus.NOT_FOUND
    with pytest.raises(SystemExit) as caught:
        main(["certs", "init", "--dir", str(tmp_path), "--key-type", "rsa1024"])
    assert caught.value.code == 2


def test_show_text_and_json(made_pki, capsys) -> None:
    capsys.readouterr()
    assert main(["certs", "show", str(made_pki / "board1-cert.pem")]) == 0
    out = capsys.readouterr().out
    for expected in ("CN=board1", "IP:127.0.0.1", "DNS:localhost", "serverAuth",
                     "digitalSignature", "sha256", "days left"):
        assert expected in out
    assert "WARNING" not in out and "EXPIRED" not in out
    assert main(["certs", "show", str(made_pki / "ca-cert.pem"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    cert = doc["certificates"][0]
    assert cert["is_ca"] is True and "keyCertSign" in cert["key_usage"] and cert["status"] == "valid"
    assert len(cert["fingerprint_sha256"].split(":")) == 32


def test_show_warns_within_30_days(made_pki, capsys) -> None:
    assert main(["certs", "issue", "host", "soon", "--days", "12", "--dir", str(made_pki), *EC]) == 0
    capsys.readouterr()
    assert main(["certs", "show", str(made_pki / "soon-cert.pem")]) == 0
    out = capsys.readouterr().out
    assert "WARNING: expires in 12 days" in out
    assert main(["certs", "show", str(made_pki / "soon-cert.pem"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["certificates"][0]["status"] == "expiring"


def test_show_says_expired(pki, capsys) -> None:
    assert main(["certs", "show", str(pki.expired_host.cert)]) == 0
    assert "EXPIRED on" in capsys.readouterr().out


def test_show_refuses_what_is_not_a_certificate(pki, tmp_path, capsys) -> None:
    assert main(["certs", "show", str(pki.host.key)]) == ExitStatus.BAD_INPUT
    assert "not a PEM certificate" in capsys.readouterr().err
    assert main(["certs", "show", str(tmp_path / "missing.pem"), "--json"]) == ExitStatus.NOT_FOUND
    assert json.loads(capsys.readouterr().out)["error"]["type"] == "NotFoundError"


def test_verify_lists_foreign_expired_and_mismatched(made_pki, pki, capsys) -> None:
    shutil.copy(pki.foreign_host.cert, made_pki / "intruder-cert.pem")
    shutil.copy(pki.expired_host.cert, made_pki / "old-cert.pem")
    shutil.copy(made_pki / "laptop-key.pem", made_pki / "board1-key.pem")   # wrong key
    capsys.readouterr()
    assert main(["certs", "verify", "--dir", str(made_pki)]) == ExitStatus.AUTH
    captured = capsys.readouterr()
    lines = captured.out.splitlines()

    def status(name: str) -> str:
        return next(line.split()[0] for line in lines if line.split()[1:2] == [name])

    assert status("ca") == "ok" and status("laptop") == "ok"
    assert status("board1") == status("intruder") == status("old") == "FAILED"
    assert "not signed by this PKI's CA" in captured.out
    assert "does not belong to the certificate" in captured.out
    assert "EXPIRED" in captured.out
    assert "3 of 5 certificates" in captured.err
    assert main(["certs", "verify", "--dir", str(made_pki), "--json"]) == ExitStatus.AUTH
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False
    assert sorted(c["name"] for c in doc["checks"] if not c["ok"]) == ["board1", "intruder", "old"]


def test_verify_with_wrong_passphrase_and_missing_ca(made_pki, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("EDGETUNE_PASSPHRASE", "not the passphrase")
    assert main(["certs", "verify", "--dir", str(made_pki)]) == ExitStatus.AUTH
    assert "wrong passphrase" in capsys.readouterr().out
    assert main(["certs", "verify", "--dir", str(tmp_path)]) == ExitStatus.NOT_FOUND
