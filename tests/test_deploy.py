"""``edgetune deploy``'s parts that need no board: the SSH target and config, host key lines,
platform tags, the wheel's requirements, the missing-wheel message, the inventory record, the
unit file (checked by ``systemd-analyze verify`` where it exists), and flag checks.
The end-to-end tests with a real sshd are in tests/test_deploy_sshd.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import shutil
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import pytest

from edgetune.host.deploy.hostkeys import find_lines, host_entry_name
from edgetune.host.deploy.probe import BoardFacts
from edgetune.host.deploy.record import upsert_device
from edgetune.host.deploy.service import Layout, boot_line, check_prefix, render_config, render_unit
from edgetune.host.deploy.settings import SshSpec, resolve_ssh
from edgetune.host.deploy.wheelhouse import device_requirements, open_wheelhouse
from edgetune.host.errors import BadInputError, NotFoundError, UsageError
from tests.host_fixtures import run_cli


def facts(**changes: object) -> BoardFacts:
    base = dict(arch="aarch64", os_name="Debian GNU/Linux 11 (bullseye)", libc="glibc",
                libc_version="2.31", python="3.9.2", python_executable="/usr/bin/python3",
                venv=True, free_bytes=1 << 34, user="root", home="/root", root=True, sudo=True,
                systemd=False, useradd=True, prefix="/opt/edgetune", state=None, ca_pem=None,
                cert_pem=None, onnxruntime=None, service_active=False)
    base.update(changes)
    return BoardFacts(**base)  # type: ignore[arg-type]


# ------------------------------------------------------------------------ SSH target

@pytest.mark.parametrize("text, host, user, port", [
    ("root@192.168.1.20", "192.168.1.20", "root", None),
    ("pi@board1.lab:2222", "board1.lab", "pi", 2222),
    ("board1", "board1", None, None),
    ("root@[fe80::1]:22", "fe80::1", "root", 22),
    ("root@fe80::1", "fe80::1", "root", None),
])
def test_ssh_targets_parse(text: str, host: str, user: object, port: object) -> None:
    spec = SshSpec.parse(text)
    assert (spec.host, spec.user, spec.port) == (host, user, port)


@pytest.mark.parametrize("text", ["", "root@", "@host", "root@host:abc", "root@host:70000",
                                  "root@[::1", "root@ho st"])
def test_bad_ssh_targets_are_refused(text: str) -> None:
    with pytest.raises(UsageError):
        SshSpec.parse(text)


def test_ssh_config_gives_hostname_port_user_identity_and_proxyjump(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("Host atlas\n  HostName 10.0.0.7\n  Port 2200\n  User hiai\n"
                      f"  IdentityFile {tmp_path}/lab_key\n  ProxyJump jump@gateway:2222\n")
    resolved = resolve_ssh(SshSpec.parse("atlas"), config_file=config)
    assert (resolved.hostname, resolved.port, resolved.user) == ("10.0.0.7", 2200, "hiai")
    assert resolved.identity_files == (tmp_path / "lab_key",)
    assert resolved.proxy_jump == "jump@gateway:2222"
    # what --ssh spells out wins over the file
    resolved = resolve_ssh(SshSpec.parse("root@atlas:22"), identity=tmp_path / "mine",
                           config_file=config)
    assert (resolved.user, resolved.port, resolved.identity_files) == ("root", 22,
                                                                       (tmp_path / "mine",))


# ------------------------------------------------------------------------ known_hosts

def test_known_hosts_lines_are_found_plain_and_hashed(tmp_path: Path) -> None:
    name = host_entry_name("10.0.0.7", 2200)
    assert name == "[10.0.0.7]:2200" and host_entry_name("10.0.0.7", 22) == "10.0.0.7"
    salt = os.urandom(20)
    digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    hashed = f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"
    file = tmp_path / "known_hosts"
    file.write_text(f"# comment\nother ssh-ed25519 AAAA\n{hashed} ssh-ed25519 AAAB\n"
                    f"a,{name} ecdsa-sha2-nistp256 AAAC\n")
    found = find_lines([file, tmp_path / "missing"], name)
    assert [(f.line, f.key_type) for f in found] == [(3, "ssh-ed25519"),
                                                    (4, "ecdsa-sha2-nistp256")]


# ------------------------------------------------------------------------ the board's platform

def test_platform_tags_of_an_aarch64_glibc_board() -> None:
    tags = facts().platform_tags()
    assert tags[0] == "manylinux_2_31_aarch64" and "manylinux2014_aarch64" in tags
    assert "manylinux_2_16_aarch64" not in tags and tags[-1] == "linux_aarch64"
    assert facts().platform_label == "manylinux_2_31_aarch64 / cp39"
    x86 = facts(arch="x86_64", libc_version="2.36").platform_tags()
    assert "manylinux2010_x86_64" in x86 and "manylinux1_x86_64" in x86
    musl = facts(libc="", libc_version="").platform_tags()
    assert musl == ["linux_aarch64"]


def test_systemd_is_usable_only_as_root_or_with_passwordless_sudo() -> None:
    assert facts(systemd=True, root=True, sudo=False).systemd_usable
    assert facts(systemd=True, root=False, sudo=True).systemd_usable
    assert not facts(systemd=True, root=False, sudo=False).systemd_usable
    assert not facts(systemd=False, root=True, sudo=True).systemd_usable


# ------------------------------------------------------------------------ wheels

def _fake_wheel(directory: Path, name: str, requires: list) -> Path:
    path = directory / name
    dist = "-".join(name.split("-")[:2]) + ".dist-info"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{dist}/METADATA", "Metadata-Version: 2.1\nName: edgetune\nVersion: 0.1.0\n"
                    + "".join(f"Requires-Dist: {r}\n" for r in requires))
    return path


def test_the_device_extra_is_read_from_the_wheel_and_the_boards_onnxruntime_is_left_out(
        tmp_path: Path) -> None:
    wheel = _fake_wheel(tmp_path, "edgetune-0.1.0-py3-none-any.whl", [
        "grpcio>=1.46.5", 'numpy>=1.21.6; extra == "device"',
        'onnxruntime>=1.12.1; extra == "device"',
        'tomli>=1.1; python_version < "3.11" and extra == "device"',
        'rich>=13; extra == "host"'])
    assert device_requirements(wheel, with_onnxruntime=True) == [
        "numpy>=1.21.6", "onnxruntime>=1.12.1", 'tomli>=1.1; python_version < "3.11"']
    assert device_requirements(wheel, with_onnxruntime=False) == [
        "numpy>=1.21.6", 'tomli>=1.1; python_version < "3.11"']


def test_a_wheelhouse_needs_exactly_one_edgetune_wheel(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="does not exist"):
        open_wheelhouse(tmp_path / "nope")
    (tmp_path / "numpy-2.0-cp39-cp39-manylinux_2_17_aarch64.whl").write_bytes(b"x")
    with pytest.raises(NotFoundError, match="no edgetune"):
        open_wheelhouse(tmp_path)
    _fake_wheel(tmp_path, "edgetune-0.1.0-py3-none-any.whl", [])
    house = open_wheelhouse(tmp_path)
    assert house.version == "0.1.0" and len(house.wheels) == 2
    _fake_wheel(tmp_path, "edgetune-0.2.0-py3-none-any.whl", [])
    with pytest.raises(BadInputError, match="2 edgetune wheels"):
        open_wheelhouse(tmp_path)


@pytest.mark.slow
def test_a_platform_without_a_wheel_is_named_with_the_package_and_the_tag(tmp_path: Path) -> None:
    """No PyPI onnxruntime for riscv64 (the SpacemiT K1): pip's refusal becomes a message
    naming the package and the board's platform tag."""
    from edgetune.host.deploy.wheelhouse import build_wheelhouse

    riscv = facts(arch="riscv64", libc_version="2.41", python="3.13.5")
    with pytest.raises(NotFoundError) as caught:
        build_wheelhouse(riscv.platform_tags(), riscv.python_tuple, with_onnxruntime=True,
                         cache=tmp_path)
    message = caught.value.message
    assert "manylinux_2_41_riscv64 / cp313" in message
    assert message.startswith("no wheel of ")
    package = message.split()[3]
    assert package.lower().startswith(("onnxruntime", "grpcio", "numpy", "cryptography",
                                       "protobuf"))
    assert "--onnxruntime board" in caught.value.hint


# ------------------------------------------------------------------------ files on the board

def test_the_prefix_must_be_a_plain_absolute_path() -> None:
    assert check_prefix("/opt/edgetune/", "b") == "/opt/edgetune"
    for bad in ("opt/edgetune", "/", "/opt/edge tune", "/opt/$(reboot)", "/opt/../etc",
                "/opt/a;b"):
        with pytest.raises(BadInputError):
            check_prefix(bad, "b")


def test_agent_toml_is_what_the_agent_reads(tmp_path: Path) -> None:
    from edgetune.device.config import build_config

    layout = Layout("/opt/edgetune")
    text = render_config("b1", layout, "0.0.0.0:50051", ["laptop"])
    (tmp_path / "agent.toml").write_text(text)
    config = build_config(tmp_path / "agent.toml")
    assert config.listen == "0.0.0.0:50051" and config.allowed_clients == ("laptop",)
    assert str(config.key) == "/opt/edgetune/etc/pki/agent-key.pem"
    assert str(config.passphrase_file) == "/opt/edgetune/etc/pki/passphrase"
    assert str(config.store) == "/opt/edgetune/store"


def test_the_unit_is_hardened_and_verifies(tmp_path: Path) -> None:
    prefix = tmp_path / "edgetune"
    unit = render_unit(Layout(str(prefix)), "root", "root")
    for line in ("Restart=on-failure", "NoNewPrivileges=yes", "ProtectSystem=strict",
                 f"ReadWritePaths={prefix}/store {prefix}/log {prefix}/run", "User=root"):
        assert line in unit.splitlines()
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("no systemd-analyze here to verify the unit with")
    agent = prefix / "current" / "venv" / "bin" / "edgetune-agent"
    agent.parent.mkdir(parents=True)
    agent.write_text("#!/bin/sh\n")
    agent.chmod(0o755)
    for sub in ("store", "log", "run"):
        (prefix / sub).mkdir()
    path = tmp_path / "edgetune-agent.service"
    path.write_text(unit)
    done = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert str(path) not in done.stderr, done.stderr      # no warning about our file
    broken = tmp_path / "broken" / "edgetune-agent.service"
    broken.parent.mkdir()
    broken.write_text(unit.replace("Restart=on-failure", "Restart=sometimes"))
    done = subprocess.run([analyze, "verify", str(broken)], capture_output=True, text=True)
    assert "restart specifier" in done.stderr and "sometimes" in done.stderr   # it can fail


def test_the_boot_line_runs_the_agent_as_the_service_user() -> None:
    layout = Layout("/opt/edgetune")
    assert boot_line(layout, "edgetune").startswith("runuser -u edgetune -- sh -c ")
    assert boot_line(layout, "root").startswith("/opt/edgetune/current/venv/bin/edgetune-agent")


# ------------------------------------------------------------------------ edgetune.toml

def test_the_inventory_entry_is_added_then_updated_keeping_comments(tmp_path: Path) -> None:
    path = tmp_path / "edgetune.toml"
    path.write_text("# my lab\n[devices.old]\naddress = \"10.0.0.1:50051\"  # the first one\n")
    record = {"ssh": "root@10.0.0.7", "prefix": "/opt/edgetune", "identity": "/k/id"}
    assert upsert_device(path, "b1", "10.0.0.7:50051", tags=["lab"], deploy=record)
    text = path.read_text()
    assert "# my lab" in text and "# the first one" in text
    assert not upsert_device(path, "b1", "10.0.0.7:50051", tags=["lab"], deploy=record)
    assert path.read_text() == text                    # nothing changed: not rewritten
    assert upsert_device(path, "b1", "10.0.0.7:50052", tags=["npu"], deploy=record)
    from edgetune.host.inventory import load_inventory
    device = load_inventory(path).device("b1")
    assert device.address == "10.0.0.7:50052" and device.tags == ("lab", "npu")
    assert dict(device.deploy) == record
    with pytest.raises(UsageError, match="already lists"):
        upsert_device(path, "b2", "10.0.0.1:50051", tags=[], deploy=record)
    with pytest.raises(ValueError):                    # only the known keys, never a secret
        upsert_device(path, "b1", "10.0.0.7:50052", tags=[], deploy={"password": "x"})


def test_the_inventory_refuses_a_deploy_table_that_is_not_strings(tmp_path: Path) -> None:
    from edgetune.host.inventory import load_inventory

    path = tmp_path / "edgetune.toml"
    path.write_text("[devices.b1]\naddress = \"10.0.0.7:50051\"\ndeploy = { port = 22 }\n")
    with pytest.raises(BadInputError, match="deploy must be a table of strings"):
        load_inventory(path)


# ------------------------------------------------------------------------ flags

@pytest.mark.parametrize("argv, message", [
    (["deploy"], "which board?"),
    (["deploy", "b1", "b2"], "one NAME at a time"),
    (["deploy", "b1", "--purge"], "--purge goes with"),
    (["deploy", "status", "b1", "-n", "3"], "-n/--lines goes with"),
    (["deploy", "logs", "b1", "-n", "0"], "positive number of lines"),
    (["deploy", "b1", "--devices", "all"], "not both"),
    (["deploy", "b1", "--timeout", "0"], "--timeout"),
])
def test_bad_flags_are_refused_before_any_board_is_reached(
        capsys: pytest.CaptureFixture, tmp_path: Path, argv: list, message: str) -> None:
    result = run_cli(capsys, *argv, "--inventory", str(tmp_path / "none.toml"))
    assert result.code == 2 and message in result.err


def test_a_board_never_deployed_needs_ssh(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    result = run_cli(capsys, "deploy", "status", "b1", "--inventory", str(tmp_path / "x.toml"),
                     "--pki", str(tmp_path))
    assert result.code in (2, 4)


def test_no_password_flag_exists(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        run_cli(capsys, "deploy", "b1", "--password", "secret")
    assert "unrecognized arguments" in capsys.readouterr().err


def test_the_package_ships_the_templates_and_the_board_helper_runs_on_python39_syntax() -> None:
    from importlib import resources
    import ast

    root = resources.files("edgetune.host.deploy")
    assert root.joinpath("templates", "edgetune-agent.service").is_file()
    assert root.joinpath("templates", "agent.toml").is_file()
    source = root.joinpath("boardctl.py").read_text()
    ast.parse(source, feature_version=(3, 9))
    assert "edgetune" not in [n.names[0].name.split(".")[0] for n in ast.walk(ast.parse(source))
                              if isinstance(n, ast.Import)]


# ------------------------------------------------------------------------ the board's certificate

def test_a_certificate_is_issued_for_the_address_as_given_ip_or_dns(pki: Any,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from cryptography import x509

    from edgetune.certs.keys import load_key_pem
    from edgetune.host.deploy.device_certs import board_cert_still_good, issue_from_pki

    monkeypatch.setenv("EDGETUNE_PASSPHRASE", pki.passphrase.decode())
    ca_pem = pki.ca_cert.read_bytes()
    by_ip = issue_from_pki(pki.dir, "b1", "10.0.0.7", None, ca_pem)
    sans = x509.load_pem_x509_certificate(by_ip.cert_pem).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["10.0.0.7"]
    assert sans.get_values_for_type(x509.DNSName) == []
    by_name = issue_from_pki(pki.dir, "b1", "board1.lab", None, ca_pem)
    sans = x509.load_pem_x509_certificate(by_name.cert_pem).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["board1.lab"]
    # the key travels encrypted with the board's own passphrase, not the CA's
    assert by_ip.passphrase != pki.passphrase
    load_key_pem(by_ip.key_pem, by_ip.passphrase)
    with pytest.raises(Exception):
        load_key_pem(by_ip.key_pem, pki.passphrase)
    # kept on the next run only for the same CA and address
    assert board_cert_still_good(ca_pem, ca_pem.decode(), by_ip.cert_pem.decode(), "10.0.0.7")
    assert not board_cert_still_good(ca_pem, ca_pem.decode(), by_ip.cert_pem.decode(), "10.0.0.8")
    foreign = pki.foreign_ca.cert_pem
    assert not board_cert_still_good(ca_pem, foreign.decode(), by_ip.cert_pem.decode(), "10.0.0.7")


def test_a_ca_that_is_not_this_pcs_is_refused(pki: Any, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from edgetune.host.deploy.device_certs import issue_from_pki
    from edgetune.host.errors import AuthError

    monkeypatch.setenv("EDGETUNE_PASSPHRASE", pki.passphrase.decode())
    with pytest.raises(AuthError, match="not the CA"):
        issue_from_pki(pki.dir / "foreign", "b1", "10.0.0.7", None,
                       pki.ca_cert.read_bytes())
    with pytest.raises(NotFoundError, match="ca-key.pem"):
        issue_from_pki(tmp_path, "b1", "10.0.0.7", None,
                       pki.ca_cert.read_bytes())


def test_cert_and_key_given_are_checked_and_the_key_re_encrypted(pki: Any,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from edgetune.certs.keys import load_key_pem
    from edgetune.host.deploy.device_certs import from_files
    from edgetune.host.errors import AuthError

    monkeypatch.setenv("EDGETUNE_PASSPHRASE", pki.passphrase.decode())
    ca_pem = pki.ca_cert.read_bytes()
    device = pki.device
    creds = from_files(device.cert, device.key, "127.0.0.1", None, ca_pem)
    assert creds.cert_pem == device.cert.read_bytes() and creds.passphrase != pki.passphrase
    load_key_pem(creds.key_pem, creds.passphrase)
    with pytest.raises(BadInputError, match="does not name 10.0.0.7"):
        from_files(device.cert, device.key, "10.0.0.7", None, ca_pem)
    host = pki.host
    with pytest.raises(BadInputError, match="serverAuth"):
        from_files(host.cert, host.key, "127.0.0.1", None, ca_pem)
    with pytest.raises(AuthError, match="not issued by"):
        from_files(device.cert, device.key, "127.0.0.1", None, pki.foreign_ca.cert_pem)


# ------------------------------------------------------------------------ markers for the board

def test_markers_are_evaluated_for_the_boards_python_not_this_one(tmp_path: Path) -> None:
    """pip download evaluates markers against the Python running it: tomli (Python < 3.11)
    would be left out of a 3.9 board's wheelhouse made on a 3.11 PC."""
    from edgetune.host.deploy.wheelhouse import (for_target, missing_requirements,
                                                 target_environment)

    tags = facts().platform_tags()
    py39 = target_environment(tags, (3, 9))
    py311 = target_environment(tags, (3, 11))
    assert py39["platform_machine"] == "aarch64"
    wanted = ['tomli>=1.1; python_version < "3.11"', "numpy>=1.21.6",
              'cffi>=1.12; platform_python_implementation != "PyPy"']
    assert for_target(wanted, py39) == ["tomli>=1.1", "numpy>=1.21.6", "cffi>=1.12"]
    assert for_target(wanted, py311) == ["numpy>=1.21.6", "cffi>=1.12"]
    _fake_wheel(tmp_path, "edgetune-0.1.0-py3-none-any.whl", [
        "grpcio>=1.46.5", 'tomli>=1.1; python_version < "3.11" and extra == "device"'])
    _fake_wheel(tmp_path, "grpcio-1.60.0-cp39-cp39-manylinux_2_17_aarch64.whl", [])
    _fake_wheel(tmp_path, "cryptography-42.0-cp39-abi3-manylinux_2_28_aarch64.whl", [
        'cffi>=1.12; platform_python_implementation != "PyPy"',
        'exceptiongroup>=1; python_version < "3.11"', 'pytest; extra == "test"'])
    assert missing_requirements(tmp_path, py39) == ["cffi>=1.12", "exceptiongroup>=1"]
    assert missing_requirements(tmp_path, py311) == ["cffi>=1.12"]


@pytest.mark.slow
def test_a_wheelhouse_for_an_aarch64_python39_board_holds_what_3_9_needs() -> None:
    from edgetune.host.deploy.wheelhouse import build_wheelhouse, missing_requirements, target_environment

    board = facts()                                   # Debian 11 aarch64, Python 3.9
    house = build_wheelhouse(board.platform_tags(), board.python_tuple, with_onnxruntime=True)
    names = [w.name for w in house.wheels]
    assert any(n.startswith("tomli-") for n in names), names
    assert any(n.startswith("onnxruntime-") and "cp39" in n and "aarch64" in n for n in names)
    assert not [n for n in names if "x86_64" in n], names
    assert missing_requirements(house.directory,
                                target_environment(board.platform_tags(), (3, 9))) == []
