"""edgetune.toml and the connection flags: what resolves to which board and files, and the
errors that name what is missing. No agent needed."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, List

import pytest

from edgetune.host.cli.common import add_connection_flags, parse_shape
from edgetune.host.target import resolve_target
from edgetune.host.errors import BadInputError, NotFoundError, UsageError
from edgetune.host.inventory import find_config, load_inventory, split_address


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def parse_flags(argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_connection_flags(parser)
    return parser.parse_args(argv)


@pytest.fixture()
def identity_files(tmp_path: Path) -> Path:
    for name in ("ca-cert.pem", "laptop-cert.pem", "laptop-key.pem", "pass"):
        write(tmp_path / "pki" / name, "x")
    return tmp_path / "pki"


def test_inventory_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    config = write(tmp_path / "conf" / "edgetune.toml", """
[host]
ca = "pki/ca-cert.pem"
cert = "/abs/laptop-cert.pem"
key = "pki/laptop-key.pem"

[devices.rk1]
address = "192.168.1.20:50051"
tags = ["arm", "lab"]
server_name = "rk1.local"

[devices.k1]
address = "[fe80::1]:50051"
tags = ["riscv", "lab"]
""")
    inv = load_inventory(config)
    assert inv.host is not None
    assert inv.host.ca == tmp_path / "conf" / "pki" / "ca-cert.pem"
    assert inv.host.cert == Path("/abs/laptop-cert.pem") and inv.host.passphrase_file is None
    rk1 = inv.device("rk1")
    assert rk1.address == "192.168.1.20:50051" and rk1.server_name == "rk1.local"
    assert [d.name for d in inv.devices] == ["rk1", "k1"]
    assert inv.device("k1").tags == ("riscv", "lab")
    with pytest.raises(NotFoundError, match=r"no device named 'x3'.*known devices: rk1, k1"):
        inv.device("x3")


@pytest.mark.parametrize("text, message", [
    ('[devices.a]\naddress = "1.2.3.4:5"\nadress = "typo"\n', "unknown key devices.a.adress"),
    ('[hosts]\nca = "x"\n', "unknown key hosts"),
    ('[devices.a]\ntags = []\n', "lacks address"),
    ('[devices.a]\naddress = "1.2.3.4"\n', "is not HOST:PORT"),
    ('[devices.a]\naddress = "1.2.3.4:99999"\n', "is not HOST:PORT"),
    ('[devices.a]\naddress = "1.2.3.4:5"\ntags = "lab"\n', "tags must be a list"),
    ('[host]\nca = "a"\n', "lacks cert, key"),
    ('[devices."../x"]\naddress = "1.2.3.4:5"\n', "a device name is letters"),
    ('[devices.a\n', "not valid TOML"),
])
def test_inventory_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(BadInputError, match=message.replace("(", r"\(")):
        load_inventory(write(tmp_path / "edgetune.toml", text))


def test_find_config_order(tmp_path: Path) -> None:
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    in_home = write(home / ".config" / "edgetune" / "edgetune.toml", "")
    assert find_config(None, env={}, cwd=cwd, home=home) == in_home
    in_cwd = write(cwd / "edgetune.toml", "")
    assert find_config(None, env={}, cwd=cwd, home=home) == in_cwd
    from_env = write(tmp_path / "env.toml", "")
    assert find_config(None, env={"EDGETUNE_CONFIG": str(from_env)}, cwd=cwd, home=home) == from_env
    explicit = write(tmp_path / "flag.toml", "")
    assert find_config(explicit, env={"EDGETUNE_CONFIG": str(from_env)}, cwd=cwd,
                       home=home) == explicit
    with pytest.raises(NotFoundError, match="from --inventory"):
        find_config(tmp_path / "missing.toml", env={})
    assert find_config(None, env={}, cwd=tmp_path / "empty", home=tmp_path / "nohome") is None


def test_split_address() -> None:
    assert split_address("10.0.0.2:50051") == ("10.0.0.2", 50051)
    assert split_address("[::1]:7") == ("::1", 7)
    for bad in ("10.0.0.2", ":50051", "host:port", "h:0"):
        with pytest.raises(BadInputError):
            split_address(bad)


def test_target_from_device_and_inventory_host(tmp_path: Path, identity_files: Path) -> None:
    config = write(tmp_path / "edgetune.toml", """
[host]
ca = "pki/ca-cert.pem"
cert = "pki/laptop-cert.pem"
key = "pki/laptop-key.pem"
passphrase_file = "pki/pass"

[devices.b1]
address = "10.0.0.7:50051"
server_name = "b1"
""")
    target = resolve_target(parse_flags(["--device", "b1", "--inventory", str(config),
                                         "--timeout", "5"]), env={})
    assert (target.address, target.device, target.server_name) == ("10.0.0.7:50051", "b1", "b1")
    assert target.cert == identity_files / "laptop-cert.pem"
    assert target.passphrase_file == identity_files / "pass" and target.timeout_s == 5
    # Explicit certificate flags win over [host]; the inventory's passphrase file then does not apply.
    other = write(tmp_path / "other" / "me-cert.pem", "x")
    flags = ["--device", "b1", "--inventory", str(config), "--ca", str(other), "--cert", str(other),
             "--key", str(other)]
    target = resolve_target(parse_flags(flags), env={})
    assert target.cert == other and target.passphrase_file is None


def test_target_from_address_and_pki(identity_files: Path) -> None:
    args = parse_flags(["--address", "127.0.0.1:5000", "--pki", str(identity_files),
                        "--identity", "laptop", "--server-name", "board1"])
    target = resolve_target(args, env={})
    assert target.address == target.device == "127.0.0.1:5000"
    assert target.key == identity_files / "laptop-key.pem" and target.server_name == "board1"


@pytest.mark.parametrize("argv, error, message", [
    ([], UsageError, "pass --device NAME or --address HOST:PORT with --ca/--cert/--key"),
    (["--device", "a", "--address", "1.2.3.4:5"], UsageError, "not both"),
    (["--address", "1.2.3.4:5", "--ca", "x"], UsageError, "--cert, --key missing"),
    (["--address", "nope"], BadInputError, "is not HOST:PORT"),
    (["--address", "1.2.3.4:5", "--timeout", "0"], UsageError, "--timeout must be"),
    (["--device", "a"], NotFoundError, "there is no inventory"),
])
def test_target_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: List[str],
                       error: Any, message: str) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(error, match=message):
        resolve_target(parse_flags(argv), env={})


def test_missing_identity_file_is_named(identity_files: Path) -> None:
    (identity_files / "laptop-key.pem").unlink()
    args = parse_flags(["--address", "1.2.3.4:5", "--pki", str(identity_files),
                        "--identity", "laptop"])
    with pytest.raises(NotFoundError, match=r"key .*laptop-key.pem \(from --pki .*\) does not exist"):
        resolve_target(args, env={})


def test_pki_default_identity_is_the_only_host_certificate(pki: Any) -> None:
    # The test PKI holds "laptop" (clientAuth), "board1" (serverAuth) and the CA: laptop it is.
    args = parse_flags(["--address", "1.2.3.4:5", "--pki", str(pki.dir)])
    assert resolve_target(args, env={}).cert == pki.dir / "laptop-cert.pem"


def test_pki_with_two_host_identities_lists_them(pki: Any, tmp_path: Path) -> None:
    import shutil

    shutil.copy(pki.dir / "laptop-cert.pem", tmp_path / "a-cert.pem")
    shutil.copy(pki.dir / "laptop-cert.pem", tmp_path / "b-cert.pem")
    args = parse_flags(["--address", "1.2.3.4:5", "--pki", str(tmp_path)])
    with pytest.raises(UsageError, match="certificates there are: a, b"):
        resolve_target(args, env={})


def test_parse_shape() -> None:
    assert parse_shape("input=1x3x224x224") == ("input", (1, 3, 224, 224))
    assert parse_shape("a:0=2X4") == ("a:0", (2, 4))
    for bad in ("input", "=1x2", "x=", "x=1x-2", "x=1xx2"):
        with pytest.raises(UsageError):
            parse_shape(bad)
