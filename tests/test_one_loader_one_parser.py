"""One identity loader (``edgetune.certs.open_identity``) that the agent and the host both call,
and one parser of ``NAME=1x3x224x224`` (``edgetune.protos.shapes``) that both sides use."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import pytest

from edgetune.certs import CertVerifyError, PassphraseError, PassphrasePolicyError, open_identity
from edgetune.host.errors import AuthError, UsageError
from edgetune.protos.shapes import ShapeError, format_dims, parse_dims, parse_shape, shape_flag

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------- identity

def test_open_identity_asks_only_for_an_encrypted_key(pki: Any, tmp_path: Path) -> None:
    files = pki.host
    with pytest.raises(PassphrasePolicyError, match="EDGETUNE_PASSPHRASE"):
        open_identity(files.ca, files.cert, files.key, env={}, interactive=False)
    with pytest.raises(PassphraseError):
        open_identity(files.ca, files.cert, files.key, env={"EDGETUNE_PASSPHRASE": "wrong!!!"})
    env = {"EDGETUNE_PASSPHRASE": pki.passphrase.decode()}
    identity = open_identity(files.ca, files.cert, files.key, env=env, usage="clientAuth")
    assert identity.common_name == "laptop"
    plain = tmp_path / "plain-key.pem"                     # unencrypted: no source needed
    plain.write_bytes(identity.key_pem)
    again = open_identity(files.ca, files.cert, plain, env={}, interactive=False)
    assert again.key_pem == identity.key_pem


def test_the_usage_check_is_a_parameter(pki: Any) -> None:
    env = {"EDGETUNE_PASSPHRASE": pki.passphrase.decode()}
    with pytest.raises(CertVerifyError, match="lacks the serverAuth usage"):
        open_identity(pki.host.ca, pki.host.cert, pki.host.key, env=env, usage="serverAuth")
    with pytest.raises(CertVerifyError, match="'board1' lacks the clientAuth usage") as err:
        open_identity(pki.device.ca, pki.device.cert, pki.device.key, env=env,
                      usage="clientAuth")
    assert "edgetune certs issue host" in err.value.hint            # type: ignore[attr-defined]
    assert open_identity(pki.device.ca, pki.device.cert, pki.device.key, env=env,
                         usage="serverAuth").common_name == "board1"
    with pytest.raises(ValueError):
        open_identity(pki.device.ca, pki.device.cert, pki.device.key, env=env, usage="both")


def test_agent_and_host_load_through_it(pki: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import edgetune.certs.identity as identity_module
    from edgetune.device.cli import load_identity as agent_load
    from edgetune.host.target import load_host_identity

    monkeypatch.setenv("EDGETUNE_PASSPHRASE", pki.passphrase.decode())
    calls = []
    real = identity_module.open_identity

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs.get("usage"))
        return real(*args, **kwargs)

    monkeypatch.setattr(identity_module, "open_identity", spy)
    config = argparse.Namespace(ca=pki.device.ca, cert=pki.device.cert, key=pki.device.key,
                                passphrase_file=None)
    assert agent_load(config).common_name == "board1"
    assert load_host_identity(pki.host.ca, pki.host.cert, pki.host.key).common_name == "laptop"
    assert calls == ["serverAuth", "clientAuth"]
    # The host refuses a device certificate when loading it, with the client's message.
    with pytest.raises(AuthError, match="'board1' lacks the clientAuth usage") as err:
        load_host_identity(pki.device.ca, pki.device.cert, pki.device.key)
    assert "edgetune certs issue host" in err.value.hint


# ---------------------------------------------------------------------- shapes

def test_parse_shape_and_format_round_trip() -> None:
    assert parse_shape("input=1x3x224x224") == ("input", (1, 3, 224, 224))
    assert parse_shape("a:0=2X4") == ("a:0", (2, 4))
    assert shape_flag("input", (1, 3, 8, 8)) == "--shape input=1x3x8x8"
    assert parse_shape(shape_flag("x", (2, 5))[len("--shape "):]) == ("x", (2, 5))
    assert parse_dims("1,3x8", separators="x,") == (1, 3, 8) and format_dims((7,)) == "7"
    for bad, reason in (("input", "form"), ("=1x2", "form"), ("a=1xb", "whole"),
                        ("a=0x3", "size"), ("a=1x-2", "size")):
        with pytest.raises(ShapeError) as err:
            parse_shape(bad)
        assert err.value.reason == reason and "NAME=1x3x224x224" in err.value.hint


def test_host_flags_use_the_shared_parser() -> None:
    from edgetune.host.cli.common import parse_shape as flag_parse

    assert flag_parse("input=1x1x8x8") == ("input", (1, 1, 8, 8))
    with pytest.raises(UsageError, match="every size must be at least 1"):
        flag_parse("input=0x1")


def test_no_second_parser_of_the_syntax() -> None:
    """Splitting sizes on "x" happens in edgetune.protos.shapes only (on both sides)."""
    split_x = re.compile(r"""split\(\s*["']x["']\s*\)""")
    offenders = []
    for folder in ("host", "device", "protos", "certs"):
        for path in (ROOT / folder).rglob("*.py"):
            if path == ROOT / "protos" / "shapes.py":
                continue
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if split_x.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == [], offenders
    assert split_x.search('dims = text.lower().split("x")')          # the scan can fail
