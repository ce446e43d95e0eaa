"""Where the key passphrase comes from: file, environment, prompt; and the length rule."""

from __future__ import annotations

import logging
from typing import List

import pytest

from edgetune.certs import CertFileNotFoundError, PassphrasePolicyError, resolve_passphrase


def _prompter(answers: List[str]):
    asked: List[str] = []

    def getpass(prompt: str) -> str:
        asked.append(prompt)
        return answers.pop(0)

    return getpass, asked


def test_file_wins_over_environment_and_only_first_line_counts(tmp_path) -> None:
    path = tmp_path / "pass.txt"
    path.write_bytes(b"from the file\r\nsecond line\n")
    path.chmod(0o600)
    value = resolve_passphrase(path, confirm=True, env={"EDGETUNE_PASSPHRASE": "from the env"},
                               interactive=False)
    assert value == b"from the file"


def test_environment_is_used_without_a_file() -> None:
    value = resolve_passphrase(None, confirm=False, env={"EDGETUNE_PASSPHRASE": "s3cret-pässphrase"},
                               interactive=False)
    assert value == "s3cret-pässphrase".encode("utf-8")


def test_prompt_asks_twice_when_creating() -> None:
    getpass, asked = _prompter(["long enough", "long enough"])
    assert resolve_passphrase(None, confirm=True, env={}, interactive=True,
                              getpass_func=getpass) == b"long enough"
    assert len(asked) == 2
    getpass, asked = _prompter(["long enough"])
    assert resolve_passphrase(None, confirm=False, env={}, interactive=True, getpass_func=getpass)
    assert len(asked) == 1


def test_prompt_mismatch_is_refused() -> None:
    getpass, _ = _prompter(["long enough", "long enougH"])
    with pytest.raises(PassphrasePolicyError, match="differ"):
        resolve_passphrase(None, confirm=True, env={}, interactive=True, getpass_func=getpass)


def test_no_source_without_a_terminal_says_what_to_do() -> None:
    with pytest.raises(PassphrasePolicyError, match="EDGETUNE_PASSPHRASE or --passphrase-file"):
        resolve_passphrase(None, confirm=False, env={}, interactive=False)


@pytest.mark.parametrize("source", ["env", "file", "prompt"])
def test_short_passphrase_refused_for_new_keys_from_every_source(tmp_path, source) -> None:
    path = tmp_path / "p"
    path.write_text("1234567\n")
    getpass, _ = _prompter(["1234567", "1234567"])
    with pytest.raises(PassphrasePolicyError, match="at least 8"):
        resolve_passphrase(path if source == "file" else None, confirm=True,
                           env={"EDGETUNE_PASSPHRASE": "1234567"} if source == "env" else {},
                           interactive=True, getpass_func=getpass)


def test_short_passphrase_accepted_for_loading_existing_keys() -> None:
    # openssl allows 4 characters; keys made that way must still load.
    assert resolve_passphrase(None, confirm=False, env={"EDGETUNE_PASSPHRASE": "abcd"},
                              interactive=False) == b"abcd"


def test_missing_and_empty_files(tmp_path, caplog) -> None:
    with pytest.raises(CertFileNotFoundError, match="does not exist"):
        resolve_passphrase(tmp_path / "missing", confirm=False, env={}, interactive=False)
    empty = tmp_path / "empty"
    empty.write_text("\nsecond\n")
    with pytest.raises(PassphrasePolicyError, match="empty"):
        resolve_passphrase(empty, confirm=False, env={}, interactive=False)
    loose = tmp_path / "loose"
    loose.write_text("a good passphrase\n")
    loose.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        assert resolve_passphrase(loose, confirm=False, env={}, interactive=False) == b"a good passphrase"
    assert "readable by other users" in caplog.text
