"""``edgetune deploy`` against a fresh emulated aarch64 board (Debian 11, Python 3.9, its own
address and sshd; tests/emulated/): the probe finds aarch64 and Python 3.9, the wheelhouse is
made here for manylinux aarch64 / cp39, the agent ends up serving over mutual TLS, and this x86
host's info, bench and eval through the inventory name give the same top-1 as an x86 agent.
Then the re-run with the same wheelhouse changes nothing ("up to date").

The board starts from the cached root file system only (no agent layer): what deploy installs
is all there is. Skips (fails under ``CI``) where an emulated board cannot run; see
docs/boards.md.
"""

from __future__ import annotations

import shutil
import stat
from pathlib import Path
from typing import Any

import pytest

from tests.emulated.board import EmulatedBoard
from tests.emulated.fixtures import ssh_key, started_board
from tests.host_fixtures import (DIGITS_MODEL, DIGITS_TEST, ONE_DIGIT, RunningAgent, local_agent,
                                 run_cli, write_passphrase_file)

__all__ = ["local_agent"]          # the x86 agent the board's results are compared with

pytestmark = [pytest.mark.slow, pytest.mark.board, pytest.mark.timeout(2400)]


def service_uid(board: EmulatedBoard, user: str) -> int:
    for line in board.path("/etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return int(fields[2])
    raise AssertionError(f"no user {user} on the board")


def process_uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for {pid}")


def test_deploy_to_emulated_aarch64_board(pki: Any, local_agent: RunningAgent, tmp_path: Path,
                                          capsys: pytest.CaptureFixture,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # deploy's own cache (project wheel, wheelhouses) for this test alone, so the wheelhouse
    # it makes for the board can be named afterwards; pip's download cache stays shared.
    monkeypatch.setenv("EDGETUNE_CACHE", str(tmp_path / "cache"))
    key = ssh_key(tmp_path)
    pki_dir = tmp_path / "pki"
    shutil.copytree(pki.dir, pki_dir)
    passphrase = write_passphrase_file(tmp_path / "passphrase", pki.passphrase)
    inventory = tmp_path / "edgetune.toml"
    known_hosts = tmp_path / "known_hosts"
    with started_board(tmp_path / "board", with_agent_layer=False,
                       authorized=(key.public,)) as board:
        deploy = ["deploy", "arm1", "--ssh", f"root@{board.address}", "--identity",
                  str(key.private), "--known-hosts", str(known_hosts), "--pki", str(pki_dir),
                  "--passphrase-file", str(passphrase), "--inventory", str(inventory),
                  "--tag", "emulated", "--timeout", "600"]
        # A host nobody has seen yet is refused without --accept-new; nothing is recorded.
        refused = run_cli(capsys, *deploy, "--json")
        assert refused.code != 0, refused.out
        error = refused.json["error"]
        assert error["type"] == "AuthError" and "not known" in error["message"], error
        assert not known_hosts.exists() or board.host_key_public.split()[1] \
            not in known_hosts.read_text()

        first = run_cli(capsys, *deploy, "--accept-new", "--json")
        assert first.code == 0, first.out + first.err
        result = first.json
        assert (result["device"], result["action"], result["mode"]) == \
            ("arm1", "installed", "detached"), result        # minbase: no systemd
        assert result["address"].startswith(board.address + ":")
        assert result["vid"].endswith("-pypi-py39"), result
        # The probe's findings as the user saw them: aarch64, Debian 11's glibc, Python 3.9.
        assert "arm1: aarch64, Debian GNU/Linux 11 (bullseye), glibc 2.31, Python 3.9." \
            in first.err, first.err
        # The host key deploy accepted is the one this board run made.
        assert board.host_key_public.split()[1] in known_hosts.read_text()
        # The wheelhouse was made here for the board: aarch64 / cp39 wheels, nothing else.
        (house,) = [d for d in (tmp_path / "cache" / "deploy" / "wheelhouses").iterdir()
                    if (d / "complete").is_file()]
        assert (house / "complete").read_text().strip() == "manylinux_2_31_aarch64 / cp39"
        wheels = sorted(p.name for p in house.glob("*.whl"))
        on_board = board.run(["ls", "/opt/edgetune/wheels"], timeout=60).stdout.split()
        assert set(wheels) <= set(on_board), (wheels, on_board)
        assert any(w.startswith("tomli-") for w in wheels), wheels     # Python 3.9 needs it
        assert any(w.startswith("onnxruntime-") and "cp39" in w and "aarch64" in w
                   for w in wheels), wheels
        assert not [w for w in wheels if "x86_64" in w], wheels

        # On the board: the key and its passphrase 0600 and the folder 0700, owned by the
        # service user; the agent runs as that user, not root.
        uid = service_uid(board, "edgetune")
        pki_dir_on_board = board.path("/opt/edgetune/etc/pki")
        assert stat.S_IMODE(pki_dir_on_board.stat().st_mode) == 0o700
        for name in ("agent-key.pem", "passphrase"):
            st = (pki_dir_on_board / name).stat()
            assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o600, uid), name
        agents = [pid for pid in board.pids()
                  if b"edgetune-agent" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert agents, "no agent process in the board"
        for pid in agents:
            assert process_uid(pid) == uid

        conn = ["--device", "arm1", "--inventory", str(inventory), "--passphrase-file",
                str(passphrase)]
        info = run_cli(capsys, "info", *conn, "--json")
        assert info.code == 0, info.err
        assert info.json["arch"] == "aarch64", info.json
        assert info.json["python_version"].startswith("3.9."), info.json

        bench = run_cli(capsys, "bench", str(DIGITS_MODEL), "--shape", ONE_DIGIT,
                        "--iterations", "20", "--warmup", "2", *conn, "--json")
        assert bench.code == 0, bench.err
        assert bench.json["results"][0]["iterations"] == 20

        board_eval = run_cli(capsys, "eval", str(DIGITS_MODEL), "--dataset", str(DIGITS_TEST),
                             *conn, "--json")
        assert board_eval.code == 0, board_eval.err

        # Nothing changed: the same wheelhouse (given by name, as this shared checkout's files
        # may change meanwhile and deploy would rightly build a new edgetune wheel then).
        again = run_cli(capsys, *deploy, "--wheelhouse", str(house), "--json")
        assert again.code == 0, again.out + again.err
        assert again.json["action"] == "up to date", again.json

    x86_eval = run_cli(capsys, "eval", str(DIGITS_MODEL), "--dataset", str(DIGITS_TEST),
                       *local_agent.conn(), "--json")
    assert x86_eval.code == 0, x86_eval.err
    on_board, on_x86 = board_eval.json["results"][0], x86_eval.json["results"][0]
    assert on_board["samples"] == on_x86["samples"] == 450
    assert on_board["metrics"]["top1"] == on_x86["metrics"]["top1"] > 0.99
