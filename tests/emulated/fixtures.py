"""pytest helpers for the board tests (tests/test_board_*.py): skip or fail when this machine
cannot run an emulated board, a board with this checkout's agent installed, an agent started
in it, and the SSH key a test logs in with."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, NoReturn, Optional, Tuple

import pytest

from tests.emulated import layers, rootfs
from tests.emulated.board import EmulatedBoard, openssh_keypair, write_private

AGENT_ETC = "/etc/edgetune"


def cannot_run(reason: str) -> NoReturn:
    """Skip on a developer's machine; fail under CI (``CI`` set), where this must run."""
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


def require_board_host(recipe: rootfs.Recipe = rootfs.DEBIAN11_ARM64) -> None:
    problems = rootfs.host_problems(recipe)
    if problems:
        cannot_run("cannot run an emulated " + recipe.qemu_arch + " board here: "
                   + "; ".join(problems) + " (as root: apt-get install qemu-user-static "
                   "binfmt-support debootstrap iproute2, then `python -m tests.emulated build "
                   "--prepare-host`; see docs/boards.md)")


@dataclass(frozen=True)
class SshKey:
    private: Path
    public: str


def ssh_key(directory: Path) -> SshKey:
    """A new ed25519 key pair; the private key (OpenSSH format) is written 0600."""
    private, public = openssh_keypair()
    return SshKey(private=write_private(directory / "id_ed25519", private), public=public)


@contextlib.contextmanager
def started_board(workdir: Path, *, with_agent_layer: bool, authorized: Tuple[str, ...] = (),
                  recipe: rootfs.Recipe = rootfs.DEBIAN11_ARM64) -> Iterator[EmulatedBoard]:
    """A started board of ``recipe`` (sshd running when ``authorized`` keys are given); torn
    down at exit."""
    require_board_host(recipe)
    try:
        board = EmulatedBoard(workdir, recipe=recipe, with_agent_layer=with_agent_layer)
        with board:
            if authorized:
                board.start_sshd(authorized)
            yield board
    except rootfs.BoardUnavailable as exc:
        cannot_run(str(exc))


def agent_config(board: EmulatedBoard, pki: Any) -> None:
    """A device certificate for the board's address from the test CA, the CA certificate, the
    key's passphrase file (0600) and an agent.toml under /etc/edgetune in the board."""
    etc = board.path(AGENT_ETC)
    etc.mkdir(parents=True, exist_ok=True)
    leaf = pki.ca.issue_device("board1", ips=[board.address], key_type=pki.key_type)
    cert, key = leaf.write(etc, pki.passphrase)
    (etc / "ca-cert.pem").write_bytes(pki.ca.cert_pem)
    write_private(etc / "passphrase", pki.passphrase + b"\n")
    (etc / "agent.toml").write_text(
        f'listen = "{board.address}:0"\n'
        f'ca = "{AGENT_ETC}/ca-cert.pem"\ncert = "{AGENT_ETC}/{cert.name}"\n'
        f'key = "{AGENT_ETC}/{key.name}"\npassphrase_file = "{AGENT_ETC}/passphrase"\n'
        'store = "/var/lib/edgetune"\nready_file = "/run/edgetune/ready"\n')


@contextlib.contextmanager
def serving_agent(board: EmulatedBoard, timeout: float = 180,
                  env: Optional[Dict[str, str]] = None) -> Iterator[str]:
    """The board's agent (``AGENT_VENV``'s edgetune-agent with /etc/edgetune/agent.toml) until
    the block ends; yields the address from its ready file. At exit: SIGTERM, exit status 0,
    no traceback in its log (``board.workdir / "agent.log"``)."""
    ready = board.path("/run/edgetune/ready")
    log = board.workdir / "agent.log"
    agent = board.popen([f"{layers.AGENT_VENV}/bin/edgetune-agent", "serve", "--config",
                         f"{AGENT_ETC}/agent.toml"], log_file=log, env=env)
    try:
        deadline = time.monotonic() + timeout
        while not (ready.exists() and ready.read_text().strip()):
            if agent.poll() is not None:
                raise AssertionError(f"the board's agent exited with {agent.returncode}:\n"
                                     + log.read_text(errors="replace"))
            if time.monotonic() > deadline:
                raise AssertionError(f"the board's agent was not ready in {timeout} s:\n"
                                     + log.read_text(errors="replace"))
            time.sleep(0.2)
        yield ready.read_text().strip()
    finally:
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(60)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait(10)
    text = log.read_text(errors="replace")
    assert agent.returncode == 0, text
    assert "Traceback" not in text, text


def versions_in_board(board: EmulatedBoard) -> Dict[str, str]:
    code = ("import json, platform, sys, onnxruntime; print(json.dumps({'machine': "
            "platform.machine(), 'python': '%d.%d' % sys.version_info[:2], "
            "'onnxruntime': onnxruntime.__version__}))")
    proc = board.run([f"{layers.AGENT_VENV}/bin/python", "-c", code], timeout=300)
    assert proc.returncode == 0, proc.stderr
    import json
    return json.loads(proc.stdout)


def assert_same_top1_as_x86(board_eval: Any, local_agent: Any, capsys: Any) -> None:
    """The board's ``eval --json`` of the digits sample against an x86 agent's, computed now:
    the same 450 samples and the same top-1 (the emulated board runs the same kernels' math)."""
    from tests.host_fixtures import DIGITS_MODEL, DIGITS_TEST, run_cli

    x86_eval = run_cli(capsys, "eval", str(DIGITS_MODEL), "--dataset", str(DIGITS_TEST),
                       *local_agent.conn(), "--json")
    assert x86_eval.code == 0, x86_eval.err
    on_board, on_x86 = board_eval.json["results"][0], x86_eval.json["results"][0]
    assert on_board["samples"] == on_x86["samples"] == 450
    assert on_board["metrics"]["top1"] == on_x86["metrics"]["top1"]
    assert on_board["metrics"]["top1"] > 0.99
