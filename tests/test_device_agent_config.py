"""agent.toml + flags -> AgentConfig, and the ``edgetune-agent`` command line in-process."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from edgetune.device.cli import ExitStatus, main
from edgetune.device.config import DEFAULT_LISTEN, ConfigError, build_config
from edgetune.device.limits import Limits


def write_toml(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_file_paths_are_relative_to_the_file_and_flags_override(tmp_path: Path) -> None:
    cfg_file = write_toml(tmp_path / "etc" / "agent.toml", """
listen = "0.0.0.0:7000"
ca = "pki/ca-cert.pem"
cert = "pki/board1-cert.pem"
key = "pki/board1-key.pem"
passphrase_file = "pki/pass"
store = "/var/lib/edgetune"
allowed_clients = ["laptop", "ci"]
log_level = "WARNING"

[limits]
max_model_mb = 64
max_dataset_bytes = 1000
queue_capacity = 4
max_duration_s = 60
""")
    config = build_config(cfg_file)
    base = (tmp_path / "etc").resolve()
    assert config.ca == base / "pki/ca-cert.pem" and config.key == base / "pki/board1-key.pem"
    assert config.passphrase_file == base / "pki/pass"
    assert config.store == Path("/var/lib/edgetune")
    assert config.allowed_clients == ("laptop", "ci") and config.log_level == "warning"
    assert config.limits == Limits(max_model_bytes=64 << 20, max_dataset_bytes=1000,
                                   queue_capacity=4, max_duration_s=60.0)
    assert (config.host, config.port) == ("0.0.0.0", 7000)

    flags = build_config(cfg_file, {"listen": "127.0.0.1:0", "store": "here",
                                    "allowed_clients": ["other"], "ca": None})
    assert flags.listen == "127.0.0.1:0" and flags.store == Path("here")
    assert flags.allowed_clients == ("other",) and flags.ca == base / "pki/ca-cert.pem"


def test_flags_alone_are_enough(tmp_path: Path) -> None:
    config = build_config(None, {"ca": "a", "cert": "b", "key": "c"})
    assert config.listen == DEFAULT_LISTEN and config.limits == Limits()
    assert config.ready_file is None and config.allowed_clients == ()


@pytest.mark.parametrize("text, words", [
    ('ca = "a"\ncert = "b"\nkey = "c"\nlisten_port = 1\n', "unknown key 'listen_port'"),
    ('ca = "a"\ncert = "b"\nkey = "c"\n[limits]\nmax_models_mb = 1\n',
     "unknown key 'max_models_mb' in [limits]"),
    ('ca = "a"\ncert = "b"\nkey = "c"\n[limits]\nqueue_capacity = 0\n', "must be positive"),
    ('ca = "a"\ncert = "b"\nkey = "c"\n[limits]\nqueue_capacity = "many"\n', "must be a number"),
    ('ca = "a"\ncert = "b"\nkey = "c"\n[limits]\nmax_model_bytes = 1e486\n', "finite number"),
    ('ca = "a"\ncert = "b"\nkey = "c"\n[limits]\nupload_idle_timeout_s = nan\n', "finite number"),
    ('ca = "a"\ncert = "b"\nkey = "c"\n[limits]\nmax_duration_s = inf\n', "finite number"),
    ('ca = "a"\ncert = "b"\nkey = "c"\n[limits]\nmax_model_mb = 1\nmax_model_bytes = 5\n',
     "twice"),
    ('ca = "a"\ncert = "b"\nkey = "c"\nlisten = "nohost"\n', "not HOST:PORT"),
    ('ca = "a"\ncert = "b"\nkey = "c"\nlog_level = "loud"\n', "log_level 'loud'"),
    ('ca = "a"\ncert = "b"\nkey = "c"\nallowed_clients = "laptop"\n', "list of certificate names"),
    ('cert = "b"\nkey = "c"\n', "missing ca"),
    ('ca = "a"\ncert = [\n', "not valid TOML"),
])
def test_bad_config_names_the_problem(tmp_path: Path, text: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(write_toml(tmp_path / "agent.toml", text))
    assert words in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        build_config(tmp_path / "nope.toml")


# ------------------------------------------------------------------ CLI

def _agent_toml(pki: Any, tmp_path: Path, **extra: str) -> Path:
    lines = [f'ca = "{pki.ca_cert}"', f'cert = "{pki.device.cert}"', f'key = "{pki.device.key}"',
             'listen = "127.0.0.1:0"', f'store = "{tmp_path / "store"}"']
    lines += [f'{k} = "{v}"' for k, v in extra.items()]
    return write_toml(tmp_path / "agent.toml", "\n".join(lines) + "\n")


def test_version(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("edgetune-agent 0.1")


def test_check_loads_the_credentials_and_prints_the_plan(
        pki: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("EDGETUNE_PASSPHRASE", pki.passphrase.decode())
    cfg = _agent_toml(pki, tmp_path)
    assert main(["check", "--config", str(cfg), "--json", "--allowed-client", "laptop"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["identity"]["common_name"] == "board1" and plan["listen"] == "127.0.0.1:0"
    assert plan["allowed_clients"] == ["laptop"] and plan["limits"]["queue_capacity"] == 16


def test_check_with_flags_only_says_there_is_no_config_file(
        pki: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("EDGETUNE_PASSPHRASE", pki.passphrase.decode())
    assert main(["check", "--ca", str(pki.ca_cert), "--cert", str(pki.device.cert),
                 "--key", str(pki.device.key)]) == 0
    out = capsys.readouterr().out
    assert "  config: (none, flags only)" in out
    assert "None" not in out
    assert "  ready_file: (none)" in out


def test_check_reads_passphrase_file_from_the_config(pki: Any, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    monkeypatch.delenv("EDGETUNE_PASSPHRASE", raising=False)
    secret = tmp_path / "pass"
    secret.write_bytes(pki.passphrase + b"\n")
    os.chmod(secret, 0o600)
    cfg = _agent_toml(pki, tmp_path, passphrase_file=str(secret))
    assert main(["check", "--config", str(cfg)]) == 0
    assert "would serve 'board1'" in capsys.readouterr().out


def test_check_refuses_wrong_or_missing_passphrase_and_a_client_cert(
        pki: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    cfg = _agent_toml(pki, tmp_path)
    monkeypatch.delenv("EDGETUNE_PASSPHRASE", raising=False)
    monkeypatch.setattr("sys.stdin", open(os.devnull))           # not a terminal
    assert main(["check", "--config", str(cfg)]) == ExitStatus.USAGE  # no passphrase source
    assert "EDGETUNE_PASSPHRASE" in capsys.readouterr().err

    monkeypatch.setenv("EDGETUNE_PASSPHRASE", "not the passphrase")
    assert main(["check", "--config", str(cfg)]) == ExitStatus.AUTH
    assert "wrong passphrase" in capsys.readouterr().err

    monkeypatch.setenv("EDGETUNE_PASSPHRASE", pki.passphrase.decode())
    assert main(["check", "--config", str(cfg), "--cert", str(pki.host.cert),
                 "--key", str(pki.host.key)]) == ExitStatus.AUTH
    assert "serverAuth" in capsys.readouterr().err

    assert main(["check", "--config", str(tmp_path / "missing.toml")]) == ExitStatus.NOT_FOUND
    assert main(["check", "--ca", "x"]) == ExitStatus.BAD_INPUT
    assert "--ca/--cert/--key" in capsys.readouterr().err


def test_port_in_use_is_a_clear_error(pki: Any, tmp_path: Path) -> None:
    from edgetune.device.server import ServerError
    from tests.agent_fixtures import InProcessAgent, agent_config
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with pytest.raises(ServerError, match="cannot listen on 127.0.0.1:"):
            InProcessAgent(agent_config(pki, tmp_path / "s", listen=f"127.0.0.1:{port}"),
                           pki.device.identity)
