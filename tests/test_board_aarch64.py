"""An emulated aarch64 board (Debian 11, Python 3.9, QEMU user emulation; tests/emulated/):
the board itself (its address, its sshd, its teardown) and this checkout's agent installed in
it, answering this x86 host's info, bench and eval over mutual TLS with the same top-1 as an
x86 agent.

The root file system and the agent's dependency layer are cached between runs
(``python -m tests.emulated build``; ~10 min and ~3 min the first time, see docs/boards.md).
Without root, QEMU's binfmt entry, debootstrap or ip the tests skip, unless ``CI`` is set: then
they fail.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import paramiko
import pytest

from tests.emulated import layers, rootfs
from tests.emulated.board import EmulatedBoard
from tests.emulated.fixtures import (agent_config, assert_same_top1_as_x86, serving_agent, ssh_key,
                                     SshKey, started_board, versions_in_board)
from tests.host_fixtures import (DIGITS_MODEL, DIGITS_TEST, ONE_DIGIT, RunningAgent, local_agent,
                                 run_cli, write_passphrase_file)

__all__ = ["local_agent"]          # the x86 agent the board's results are compared with

# The first run on a machine builds the cache (~15 min); later runs take about a minute.
pytestmark = [pytest.mark.slow, pytest.mark.board, pytest.mark.timeout(2400)]


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> SshKey:
    return ssh_key(tmp_path_factory.mktemp("ssh"))


@pytest.fixture(scope="module")
def agent_board(key: SshKey, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatedBoard]:
    """A board with the agent's dependencies (the cached layer) and this checkout's edgetune
    wheel installed in its venv, and its sshd accepting ``key``."""
    wheel = layers.build_edgetune_wheel(tmp_path_factory.mktemp("wheel"))
    with started_board(tmp_path_factory.mktemp("board"), with_agent_layer=True,
                       authorized=(key.public,)) as board:
        layers.install_edgetune(board.root, wheel, board.workdir / "install.log")
        yield board


def ssh_client(board: EmulatedBoard, key_file: Path, known_hosts: Path) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(board.address, port=board.ssh_port, username="root",
                   key_filename=str(key_file), allow_agent=False, look_for_keys=False,
                   timeout=30, banner_timeout=60, auth_timeout=60)
    return client


def ssh_run(client: paramiko.SSHClient, command: str) -> str:
    _, stdout, stderr = client.exec_command(command, timeout=120)
    status = stdout.channel.recv_exit_status()
    out = stdout.read().decode()
    assert status == 0, f"{command!r} exited {status}: {stderr.read().decode()}"
    return out


def test_board_is_aarch64_debian11_over_ssh(agent_board: EmulatedBoard, key: SshKey,
                                            tmp_path: Path) -> None:
    """Its own address (not the host's), key login as root, aarch64, Python 3.9, SFTP."""
    board = agent_board
    assert board.address != board.host_address and board.address.startswith("10.77.")
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(board.known_hosts_line() + "\n")
    with ssh_client(board, key.private, known_hosts) as client:
        assert ssh_run(client, "uname -m").strip() == "aarch64"
        assert ssh_run(client, "python3 -c 'import sys; print(sys.version_info[:2])'").strip() \
            == "(3, 9)"
        assert 'VERSION_ID="11"' in ssh_run(client, "cat /etc/os-release")
        # The board's address is its own: from inside, the host is the other end of the veth.
        assert board.address in ssh_run(client, "cat /proc/net/fib_trie")
        with client.open_sftp() as sftp:
            payload = bytes(range(256)) * 64
            with sftp.open("/tmp/sftp-probe", "wb") as out:
                out.write(payload)
            assert sftp.stat("/tmp/sftp-probe").st_size == len(payload)
        assert ssh_run(client, "sha256sum /tmp/sftp-probe").split()[0] == \
            __import__("hashlib").sha256(payload).hexdigest()


def test_board_sshd_refuses_other_keys_and_passwords(agent_board: EmulatedBoard,
                                                     tmp_path: Path) -> None:
    """Only the authorized key gets in: another key and a password are refused."""
    board = agent_board
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(board.known_hosts_line() + "\n")
    stranger = ssh_key(tmp_path)
    with pytest.raises(paramiko.AuthenticationException):
        ssh_client(board, stranger.private, known_hosts)
    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    with pytest.raises(paramiko.AuthenticationException):
        client.connect(board.address, port=board.ssh_port, username="root", password="root",
                       allow_agent=False, look_for_keys=False, timeout=30, banner_timeout=60)
    client.close()


def test_board_presents_its_own_host_key(agent_board: EmulatedBoard, key: SshKey,
                                         tmp_path: Path) -> None:
    """A known_hosts line with another key for the board's address is refused: the host key
    a test trusts is the one this board run made."""
    other = paramiko.Ed25519Key.from_private_key_file(str(ssh_key(tmp_path).private))
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"{agent_board.address} ssh-ed25519 {other.get_base64()}\n")
    with pytest.raises(paramiko.BadHostKeyException):
        ssh_client(agent_board, key.private, known_hosts)


def test_board_agent_serves_this_host_like_x86(agent_board: EmulatedBoard, pki: Any,
                                               local_agent: RunningAgent, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    """This checkout's agent in the aarch64 board, reached at the board's own address over
    mutual TLS: info says aarch64 and Python 3.9; bench runs; eval's top-1 equals the x86
    agent's on the same model and data."""
    board = agent_board
    versions = versions_in_board(board)
    assert (versions["machine"], versions["python"]) == ("aarch64", "3.9")
    agent_config(board, pki)
    passphrase = write_passphrase_file(tmp_path / "passphrase", pki.passphrase)
    with serving_agent(board) as address:
        assert address.startswith(board.address + ":")
        conn = ["--address", address, "--ca", str(pki.ca_cert), "--cert", str(pki.host.cert),
                "--key", str(pki.host.key), "--passphrase-file", str(passphrase)]
        info = run_cli(capsys, "info", *conn, "--json")
        assert info.code == 0, info.err
        assert info.json["arch"] == "aarch64", info.json
        assert info.json["python_version"].startswith("3.9."), info.json
        assert info.json["onnxruntime_version"] == versions["onnxruntime"]

        bench = run_cli(capsys, "bench", str(DIGITS_MODEL), "--shape", ONE_DIGIT,
                        "--iterations", "20", "--warmup", "2", *conn, "--json")
        assert bench.code == 0, bench.err
        result = bench.json["results"][0]
        assert result["iterations"] == 20 and 0 < result["latency_ms"]["p50"] < 1000

        board_eval = run_cli(capsys, "eval", str(DIGITS_MODEL), "--dataset", str(DIGITS_TEST),
                             *conn, "--json")
        assert board_eval.code == 0, board_eval.err
    assert_same_top1_as_x86(board_eval, local_agent, capsys)


def sleeping(board: EmulatedBoard) -> bool:
    """Whether the board's detached ``sleep 600`` runs (in its namespace)."""
    for pid in board.pids():
        try:
            if b"sleep\x00600" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return True
        except OSError:
            pass
    return False


def _runs(pid: int) -> bool:
    """The process exists and has not ended: a zombie (ended, waiting for whoever adopted it,
    PID 1 here, to reap it, which this machine's init does when it gets to it) does not run."""
    deadline = time.monotonic() + 5
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return False
        if state in ("Z", "X"):
            return False
        if time.monotonic() > deadline:
            return True
        time.sleep(0.1)


def test_board_teardown_after_a_failure(tmp_path: Path) -> None:
    """A board whose test fails mid-way still ends every process it started (also one that
    detached into its own session), unmounts everything and deletes its namespace and veth."""
    with pytest.raises(RuntimeError, match="the test failed here"):
        with started_board(tmp_path / "board", with_agent_layer=False) as board:
            detached = board.popen(["setsid", "sleep", "600"], log_file=tmp_path / "sleep.log")
            deadline = time.monotonic() + 60
            while not sleeping(board) and time.monotonic() < deadline:
                time.sleep(0.1)
            pids, netns, veth = board.pids(), board.netns, board._veth("h")
            assert sleeping(board) and rootfs.mounts_under(board.root)
            raise RuntimeError("the test failed here")
    detached.wait(10)
    for pid in pids:
        assert not _runs(pid), f"board process {pid} still runs"
    assert rootfs.mounts_under(tmp_path / "board") == []
    assert netns not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                       text=True).stdout
    assert subprocess.run(["ip", "link", "show", veth], capture_output=True).returncode != 0
    assert board.host_address not in subprocess.run(["ip", "-o", "-4", "addr", "show"],
                                                    capture_output=True, text=True).stdout
