"""Where the passphrase for the encrypted private keys comes from.

One passphrase protects the CA key and the leaf keys (like the usual openssl script). The
sources, in order: ``--passphrase-file FILE`` (or ``passphrase_file`` in agent.toml), the
``EDGETUNE_PASSPHRASE`` environment variable, then an interactive prompt (asked twice when a
new key is being written). Never a command-line argument: those leak into ``ps`` and shell
history. The agent and every host command resolve it through ``resolve_passphrase``.
"""

from __future__ import annotations

import getpass
import logging
import os
import stat
import sys
from pathlib import Path
from typing import Callable, Mapping, Optional, Union

from edgetune.certs.errors import (PASSPHRASE_HINT, CertFileError, CertFileNotFoundError,
                          PassphrasePolicyError)

ENV_VAR = "EDGETUNE_PASSPHRASE"
MIN_LENGTH = 8

log = logging.getLogger(__name__)

Passphrase = Union[str, bytes]


def as_bytes(passphrase: Passphrase) -> bytes:
    """The passphrase as UTF-8 bytes (what the key encryption uses)."""
    return passphrase.encode("utf-8") if isinstance(passphrase, str) else bytes(passphrase)


def check_new_passphrase(passphrase: Passphrase) -> bytes:
    """Refuse a passphrase too weak to protect a newly written key; return it as bytes."""
    data = as_bytes(passphrase)
    if len(data) < MIN_LENGTH:
        raise PassphrasePolicyError(
            f"the passphrase has {len(data)} characters; use at least {MIN_LENGTH}")
    return data


def read_passphrase_file(path: Path) -> bytes:
    """The first line of ``path`` without its line ending (what ``openssl -passin file:`` reads)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise CertFileNotFoundError(f"passphrase file {path} does not exist") from None
    except OSError as exc:
        raise CertFileError(f"cannot read passphrase file {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("passphrase file %s is readable by other users; chmod 600 it", path)
    line = raw.split(b"\n", 1)[0]
    if line.endswith(b"\r"):
        line = line[:-1]
    if not line:
        raise PassphrasePolicyError(f"passphrase file {path} is empty (its first line is the passphrase)")
    return line


def resolve_passphrase(
    passphrase_file: Optional[Path] = None,
    *,
    confirm: bool,
    env: Optional[Mapping[str, str]] = None,
    interactive: Optional[bool] = None,
    prompt: str = "Passphrase for the private keys: ",
    getpass_func: Callable[[str], str] = getpass.getpass,
) -> bytes:
    """The passphrase from the first available source.

    ``confirm=True`` when a new key will be written: the passphrase must then have at least
    ``MIN_LENGTH`` characters, and a prompted one is asked twice. When only loading, any length
    is accepted (keys made elsewhere, e.g. by openssl with its 4-character minimum, still load).
    ``interactive`` defaults to whether stdin is a terminal; without a terminal and without a
    file or environment variable this raises ``PassphrasePolicyError``.
    """
    env = os.environ if env is None else env
    if passphrase_file is not None:
        value = read_passphrase_file(Path(passphrase_file))
    elif env.get(ENV_VAR):
        value = as_bytes(env[ENV_VAR])
    else:
        if interactive is None:
            interactive = sys.stdin is not None and sys.stdin.isatty()
        if not interactive:
            raise PassphrasePolicyError(
                f"no passphrase for the private keys: {PASSPHRASE_HINT} "
                "(or run in a terminal to be asked)")
        value = as_bytes(getpass_func(prompt))
        if confirm:
            check_new_passphrase(value)
            if as_bytes(getpass_func("Repeat the passphrase: ")) != value:
                raise PassphrasePolicyError("the two passphrases differ; try again")
    if confirm:
        check_new_passphrase(value)
    elif not value:
        raise PassphrasePolicyError(f"the passphrase is empty; {PASSPHRASE_HINT}")
    return value
