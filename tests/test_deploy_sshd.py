"""``edgetune deploy`` against a real OpenSSH sshd on loopback (bench/sshd.py): the "board" is
this machine, reached over SSH as the test's own user with its own keys, installed into a temp
prefix from a wheelhouse built once per session for this machine's Python (cached under
$EDGETUNE_CACHE, else ~/.cache/edgetune). No systemd runs here: the agent is started detached.

One board is deployed once for the module; the tests after it run in order on that board:
the re-run no-op, status/logs, file modes, the upgrade whose new version is broken (rolled
back), then remove and remove --purge.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from bench.sshd import SshServer, find_sshd, local_sshd
from edgetune.host.cli import main

pytestmark = [pytest.mark.sshd, pytest.mark.slow,
              pytest.mark.skipif(find_sshd() is None, reason="needs OpenSSH's sshd")]

NAME = "b1"


def cli(*argv: str) -> Tuple[int, str, str]:
    """``edgetune ARGV`` in-process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def board_python() -> str:
    """The board's Python: Debian's python3 when it can make a venv, else this one."""
    candidate = "/usr/bin/python3"
    if os.access(candidate, os.X_OK) and subprocess.run(
            [candidate, "-c", "import venv, ensurepip"], capture_output=True).returncode == 0:
        return candidate
    return sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def board_wheelhouse() -> Path:
    """edgetune's wheel and the device extra for the board's Python on this platform, made
    once (pip download from the configured package index; cached between runs)."""
    from edgetune.host.deploy.probe import BoardFacts
    from edgetune.host.deploy.wheelhouse import build_wheelhouse

    python = board_python()
    doc = json.loads(subprocess.run(
        [python, "-", "probe", tempfile.gettempdir()], check=True, capture_output=True,
        input=(Path(__file__).parent.parent / "host" / "deploy" / "boardctl.py").read_bytes()
    ).stdout)
    facts = BoardFacts.from_json(doc)
    return build_wheelhouse(facts.platform_tags(), facts.python_tuple,
                            with_onnxruntime=True).directory


@dataclass
class Board:
    sshd: SshServer
    prefix: Path
    home: Path
    inventory: Path
    port: int
    wheelhouse: Path
    first: Tuple[int, str, str]          # the fresh deploy's (status, stdout, stderr)
    passphrase: bytes

    def flags(self) -> List[str]:
        return ["--inventory", str(self.inventory)]

    def agent_pid(self) -> int:
        return int((self.prefix / "run" / "agent.pid").read_text())

    def state(self) -> Dict[str, Any]:
        return json.loads((self.prefix / "deploy.json").read_text())


def deploy_flags(sshd: SshServer, prefix: Path, inventory: Path, port: int,
                 wheelhouse: Path, pki_dir: Path) -> List[str]:
    return ["deploy", NAME, "--ssh", f"{sshd.user}@{sshd.host}:{sshd.port}",
            "--identity", str(sshd.client_key), "--pki", str(pki_dir),
            "--prefix", str(prefix), "--listen", f"127.0.0.1:{port}",
            "--inventory", str(inventory), "--wheelhouse", str(wheelhouse),
            "--python", board_python(), "--onnxruntime", "pypi",
            "--service-user", "nobody", "--tag", "loopback"]


@pytest.fixture(scope="module")
def board(pki: Any, board_wheelhouse: Path,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Board]:
    home = tmp_path_factory.mktemp("home")
    # The prefix must be reachable by the service user (nobody): not under pytest's 0700 dir.
    prefix_parent = Path(tempfile.mkdtemp(prefix="edgetune-deploy-test-"))
    prefix_parent.chmod(0o755)
    prefix = prefix_parent / "edgetune"
    inventory = tmp_path_factory.mktemp("inv") / "edgetune.toml"
    inventory.write_text("# my lab\n[devices.other]\naddress = \"10.9.9.9:50051\"  # keep me\n")
    port = free_port()
    with pytest.MonkeyPatch.context() as mp, local_sshd() as sshd:
        mp.setenv("HOME", str(home))
        mp.setenv("EDGETUNE_PASSPHRASE", pki.passphrase.decode())
        mp.delenv("EDGETUNE_SSH_PASSWORD", raising=False)
        first = cli("-vv", *deploy_flags(sshd, prefix, inventory, port, board_wheelhouse,
                                         pki.dir), "--accept-new")
        board = Board(sshd, prefix, home, inventory, port, board_wheelhouse, first,
                      (prefix / "etc" / "pki" / "passphrase").read_bytes().strip()
                      if (prefix / "etc" / "pki" / "passphrase").exists() else b"")
        try:
            yield board
        finally:
            with contextlib.suppress(Exception):
                cli("deploy", "remove", NAME, "--purge", "--inventory", str(inventory))
            shutil.rmtree(prefix_parent, ignore_errors=True)


# ------------------------------------------------------------------------ host keys

def test_an_unknown_host_key_is_refused_without_accept_new(tmp_path: Path, pki: Any,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("EDGETUNE_PASSPHRASE", pki.passphrase.decode())
    with local_sshd() as sshd:
        code, out, err = cli("deploy", "b9", "--ssh", f"{sshd.user}@{sshd.host}:{sshd.port}",
                             "--identity", str(sshd.client_key), "--pki", str(pki.dir),
                             "--prefix", str(tmp_path / "prefix"),
                             "--inventory", str(tmp_path / "edgetune.toml"))
        offered = subprocess.run(["ssh-keygen", "-lf", str(sshd.host_key_pub)],
                                 capture_output=True, text=True, check=True).stdout.split()[1]
    assert code == 6, err
    assert "is not known" in err and offered in err and "--accept-new" in err
    assert not (tmp_path / "home" / ".ssh" / "known_hosts").exists()   # nothing recorded
    assert not (tmp_path / "prefix").exists()                           # nothing done
    assert not (tmp_path / "edgetune.toml").exists()


def test_a_changed_host_key_is_refused_even_with_accept_new(tmp_path: Path, pki: Any,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("EDGETUNE_PASSPHRASE", pki.passphrase.decode())
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    known = tmp_path / "known_hosts"
    with local_sshd() as sshd:
        entry = f"[{sshd.host}]:{sshd.port}"
        known.write_text(f"# lab boards\n{entry} {other.with_suffix('.pub').read_text()}")
        before = known.read_text()
        code, out, err = cli("deploy", "b9", "--ssh", f"{sshd.user}@{sshd.host}:{sshd.port}",
                             "--identity", str(sshd.client_key), "--pki", str(pki.dir),
                             "--known-hosts", str(known), "--accept-new",
                             "--prefix", str(tmp_path / "prefix"),
                             "--inventory", str(tmp_path / "edgetune.toml"))
        offered = subprocess.run(["ssh-keygen", "-lf", str(sshd.host_key_pub)],
                                 capture_output=True, text=True, check=True).stdout.split()[1]
    expected = subprocess.run(["ssh-keygen", "-lf", str(other.with_suffix(".pub"))],
                              capture_output=True, text=True, check=True).stdout.split()[1]
    assert code == 6, err
    assert "CHANGED" in err and offered in err and expected in err
    assert f"{known}:2" in err                       # the line to remove
    assert f"ssh-keygen -R '{entry}'" in err
    assert known.read_text() == before               # --accept-new did not overwrite it
    assert not (tmp_path / "prefix").exists()


# ------------------------------------------------------------------------ the deployed board

def test_a_fresh_deploy_ends_with_a_serving_agent_that_info_reaches(board: Board) -> None:
    code, out, err = board.first
    assert code == 0, out + err
    assert "accepted the new host key" in out and "SHA256:" in out
    assert f"{NAME}: installed (edgetune" in out and "detached" in out
    assert "caller_name" in out                     # the `edgetune info` summary
    known = (board.home / ".ssh" / "known_hosts").read_text()
    assert f"[{board.sshd.host}]:{board.sshd.port} ssh-ed25519 " in known
    code, out, err = cli("info", "--device", NAME, "--json", *board.flags())
    assert code == 0, err
    doc = json.loads(out)
    assert doc["agent_name"] == NAME and doc["caller_name"] == "laptop"
    assert doc["address"] == f"127.0.0.1:{board.port}"


def test_without_systemd_the_agent_runs_detached_and_deploy_says_it_will_not_survive_a_reboot(
        board: Board) -> None:
    out = board.first[1]
    assert "will NOT start again after a reboot" in out
    assert f"{board.prefix}/current/venv/bin/edgetune-agent serve --config " \
           f"{board.prefix}/etc/agent.toml" in out
    assert "runuser -u nobody" in out                 # the boot line runs it as the service user
    pid = board.agent_pid()
    assert Path(f"/proc/{pid}").exists()
    assert os.stat(f"/proc/{pid}").st_uid == 65534    # nobody, not root
    assert board.state()["mode"] == "detached"
    assert (board.prefix / "log" / "agent.log").read_text().count("SERVING on") >= 1


def test_the_inventory_remembers_how_the_board_was_reached_and_no_secret(board: Board,
                                                                         pki: Any) -> None:
    text = board.inventory.read_text()
    assert "# my lab" in text and "# keep me" in text          # comments kept
    from edgetune.host.inventory import load_inventory
    inventory = load_inventory(board.inventory)
    device = inventory.device(NAME)
    deploy = dict(device.deploy)
    assert deploy["ssh"] == f"{board.sshd.user}@{board.sshd.host}:{board.sshd.port}"
    assert deploy["identity"] == str(board.sshd.client_key.resolve())
    assert deploy["prefix"] == str(board.prefix)
    assert device.address == f"127.0.0.1:{board.port}" and "loopback" in device.tags
    assert inventory.host is not None and inventory.host.cert.name == "laptop-cert.pem"
    assert pki.passphrase.decode() not in text
    assert board.passphrase and board.passphrase.decode() not in text
    assert "PRIVATE KEY" not in text


def test_secrets_on_the_board_are_0600_in_a_0700_folder_owned_by_the_service_user(
        board: Board, pki: Any) -> None:
    pki_dir = board.prefix / "etc" / "pki"
    assert stat.S_IMODE(pki_dir.stat().st_mode) == 0o700
    for name in ("agent-key.pem", "passphrase"):
        st = (pki_dir / name).stat()
        assert stat.S_IMODE(st.st_mode) == 0o600, name
        assert st.st_uid == 65534, name
    assert stat.S_IMODE((board.prefix / "store").stat().st_mode) == 0o700
    assert b"ENCRYPTED PRIVATE KEY" in (pki_dir / "agent-key.pem").read_bytes()
    # the board's key passphrase is its own: not the CA's, and never printed
    assert board.passphrase != pki.passphrase and len(board.passphrase) >= 32
    code, out, err = board.first
    assert board.passphrase.decode() not in out + err


def test_running_deploy_again_with_nothing_changed_is_up_to_date_and_changes_nothing(
        board: Board) -> None:
    def snapshot() -> Dict[str, Tuple[int, int]]:
        return {str(p): (p.lstat().st_mtime_ns, p.lstat().st_size)
                for p in board.prefix.rglob("*") if "store" not in p.parts
                and "log" not in p.parts}
    before = snapshot()
    inventory_before = board.inventory.read_text()
    pid = board.agent_pid()
    code, out, err = cli("deploy", NAME, *board.flags())     # SSH etc. from edgetune.toml
    assert code == 0, out + err
    assert "up to date" in out
    assert snapshot() == before
    assert board.inventory.read_text() == inventory_before
    assert board.agent_pid() == pid


def test_status_and_logs(board: Board) -> None:
    code, out, err = cli("deploy", "status", NAME, "--json", *board.flags())
    assert code == 0, err
    doc = json.loads(out)["devices"][0]
    assert doc["health"] == "SERVING" and doc["mode"] == "detached" and doc["running"]
    assert doc["board"]["python"] and doc["installed"] == board.state()["version"]
    code, out, err = cli("deploy", "logs", NAME, "-n", "3", *board.flags())
    assert code == 0, err
    assert 1 <= len(out.strip().splitlines()) <= 3


def test_one_line_per_board_and_a_failing_board_does_not_stop_the_others(board: Board) -> None:
    from edgetune.host.deploy.record import upsert_device

    upsert_device(board.inventory, "ghost", "127.0.0.1:9",
                  tags=["loopback"], deploy={"ssh": f"root@127.0.0.1:{free_port()}"})
    try:
        code, out, err = cli("deploy", "status", "--devices", "tag:loopback", *board.flags())
        lines = out.strip().splitlines()
        assert len(lines) == 2, out
        assert lines[0].startswith(NAME) and "SERVING" in lines[0]
        assert lines[1].startswith("ghost") and "FAILED" in lines[1]
        assert code == 5                                 # unreachable
        # deploy itself, the same way: b1 is up to date, ghost fails on its own line
        pid = board.agent_pid()
        code, out, err = cli("deploy", "--devices", "tag:loopback", "--json", *board.flags())
        rows = {row["device"]: row for row in json.loads(out)["devices"]}
        assert rows[NAME]["action"] == "up to date" and board.agent_pid() == pid
        assert rows["ghost"]["error"]["exit_status"] == 5 and code == 5
    finally:
        from edgetune.host.fleet.inventory_edit import remove_device
        remove_device(board.inventory, "ghost")


def _broken_wheelhouse(good: Path, out: Path) -> Path:
    """The same wheelhouse with an edgetune wheel whose agent exits at start."""
    out.mkdir()
    for wheel in good.glob("*.whl"):
        if not wheel.name.startswith("edgetune-"):
            os.symlink(wheel, out / wheel.name)
            continue
        with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(out / wheel.name, "w") as dst:
            for item in src.infolist():
                data = src.read(item)
                if item.filename == "edgetune/device/cli.py":
                    data = data.replace(b"def main(", b"def _real_main(") + (
                        b"\n\ndef main(argv=None):\n"
                        b"    if argv is None and sys.argv[1:2] == ['serve']:\n"
                        b"        raise SystemExit('forced failure: this agent never serves')\n"
                        b"    return _real_main(argv)\n")
                dst.writestr(item, data)
    return out


def test_an_upgrade_that_does_not_come_up_is_rolled_back(board: Board, tmp_path: Path) -> None:
    old = board.state()
    broken = _broken_wheelhouse(board.wheelhouse, tmp_path / "broken")
    code, out, err = cli("deploy", "upgrade", NAME, "--wheelhouse", str(broken),
                         "--timeout", "30", *board.flags())
    assert code != 0
    assert "rolled back to " + old["vid"] in err and "forced failure" in err
    assert board.state()["vid"] == old["vid"]
    assert os.readlink(board.prefix / "current") == f"versions/{old['vid']}"
    code, out, err = cli("info", "--device", NAME, "--json", *board.flags())
    assert code == 0, err                            # the old version serves again


def _house_with_extra(good: Path, out: Path, extra: str) -> Path:
    """The same wheelhouse plus one small wheel nothing requires: another version id."""
    out.mkdir()
    for wheel in good.glob("*.whl"):
        os.symlink(wheel, out / wheel.name)
    with zipfile.ZipFile(out / f"{extra}-1.0-py3-none-any.whl", "w") as whl:
        whl.writestr(f"{extra}/__init__.py", "")
        whl.writestr(f"{extra}-1.0.dist-info/METADATA",
                     f"Metadata-Version: 2.1\nName: {extra}\nVersion: 1.0\n")
    return out


def test_upgrades_keep_two_versions_and_only_the_wheels_they_installed_from(
        board: Board, tmp_path: Path) -> None:
    original = board.state()["vid"]
    wheels = board.prefix / "wheels"
    vids = []
    for extra in ("etextraone", "etextratwo"):
        house = _house_with_extra(board.wheelhouse, tmp_path / extra, extra)
        code, out, err = cli("deploy", "upgrade", NAME, "--wheelhouse", str(house),
                             *board.flags())
        assert code == 0, err
        vids.append(board.state()["vid"])
    assert len({original, *vids}) == 3
    assert sorted(os.listdir(board.prefix / "versions")) == sorted(vids)   # original pruned
    assert (wheels / "etextraone-1.0-py3-none-any.whl").exists()    # the previous one's
    (wheels / "stale.whl.part").write_bytes(b"left by an interrupted upload")
    code, out, err = cli("deploy", "upgrade", NAME, "--wheelhouse", str(board.wheelhouse),
                         *board.flags())
    assert code == 0, err
    assert board.state()["vid"] == original
    assert sorted(os.listdir(board.prefix / "versions")) == sorted([original, vids[1]])
    left = set(os.listdir(wheels))
    assert "etextraone-1.0-py3-none-any.whl" not in left and "stale.whl.part" not in left
    assert "etextratwo-1.0-py3-none-any.whl" in left                 # the kept previous's
    assert {w.name for w in board.wheelhouse.glob("*.whl")} <= left
    code, out, err = cli("info", "--device", NAME, "--json", *board.flags())
    assert code == 0, err


def test_a_wheelhouse_without_a_wheel_the_board_needs_names_the_package_and_the_tag(
        board: Board, tmp_path: Path) -> None:
    from edgetune.host.deploy.probe import BoardFacts

    old = board.state()
    lacking = tmp_path / "lacking"
    lacking.mkdir()
    for wheel in board.wheelhouse.glob("*.whl"):
        if not wheel.name.startswith("numpy-"):
            os.symlink(wheel, lacking / wheel.name)
    code, out, err = cli("deploy", "upgrade", NAME, "--wheelhouse", str(lacking),
                         *board.flags())
    helper = Path(__file__).parent.parent / "host" / "deploy" / "boardctl.py"
    facts = BoardFacts.from_json(json.loads(subprocess.run(
        [board_python(), "-", "probe", str(board.prefix), "skip-ort"], input=helper.read_bytes(),
        capture_output=True, check=True).stdout))
    assert code == 4, err
    assert "no wheel of numpy" in err and facts.platform_label in err
    assert board.state()["vid"] == old["vid"]                  # nothing was switched
    assert os.readlink(board.prefix / "current") == f"versions/{old['vid']}"


def test_remove_keeps_the_store_and_certificates_and_purge_removes_everything(
        board: Board) -> None:
    pid = board.agent_pid()
    (board.prefix / "store" / "keep-me").write_text("x")
    code, out, err = cli("deploy", "remove", NAME, *board.flags())
    assert code == 0, err
    assert not Path(f"/proc/{pid}").exists() or b"edgetune" not in Path(
        f"/proc/{pid}/cmdline").read_bytes()
    assert not (board.prefix / "versions").exists() and not (board.prefix / "current").exists()
    assert (board.prefix / "store" / "keep-me").exists()
    assert (board.prefix / "etc" / "pki" / "agent-key.pem").exists()
    assert NAME in board.inventory.read_text()
    code, out, err = cli("deploy", "remove", NAME, *board.flags())
    assert code == 3 and "no edgetune install" in err
    code, out, err = cli("deploy", "remove", NAME, "--purge", *board.flags())
    assert code == 0, err
    assert not board.prefix.exists()
    assert f"[devices.{NAME}]" not in board.inventory.read_text()
    assert "[devices.other]" in board.inventory.read_text()


# ------------------------------------------------------------------------ logging in

def _known(sshd: SshServer) -> str:
    kind, key = sshd.host_key_pub.read_text().split()[:2]
    return f"[{sshd.host}]:{sshd.port} {kind} {key}\n"


def test_a_board_behind_a_jump_host_is_reached_through_proxyjump_each_hop_checked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgetune.host.deploy.settings import SshSpec, resolve_ssh
    from edgetune.host.deploy.ssh import SshSession
    from edgetune.host.errors import AuthError

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with local_sshd() as jump, local_sshd() as target:
        # the jump host's login key is the one its own authorized_keys holds
        (target.client_key.parent / "authorized_keys").write_text(
            jump.client_key.with_suffix(".pub").read_text())
        config = tmp_path / "ssh_config"
        config.write_text(f"Host lab-board\n  HostName {target.host}\n  Port {target.port}\n"
                          f"  User {target.user}\n  ProxyJump {jump.user}@{jump.host}:{jump.port}\n"
                          f"  IdentityFile {jump.client_key}\n")
        known = tmp_path / "known_hosts"
        known.write_text(_known(target))                    # the board known, the hop not
        settings = resolve_ssh(SshSpec.parse("lab-board"), known_hosts=known,
                               config_file=config)
        assert settings.proxy_jump == f"{jump.user}@{jump.host}:{jump.port}"
        with pytest.raises(AuthError, match="is not known"):
            SshSession.connect(settings)
        known.write_text(_known(target) + _known(jump))
        with SshSession.connect(settings) as session:
            assert session.run("echo $SSH_CONNECTION").out.split()[2] == target.host
            assert session.run("echo $SSH_CONNECTION").out.split()[3] == str(target.port)


def test_an_encrypted_key_is_opened_with_the_passphrase_from_the_environment_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgetune.host.deploy.settings import SshSpec, resolve_ssh
    from edgetune.host.deploy.ssh import PASSWORD_ENV, SshSession
    from edgetune.host.errors import AuthError

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    key = tmp_path / "locked"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "correct horse", "-f", str(key)],
                   check=True)
    with local_sshd() as sshd:
        (sshd.client_key.parent / "authorized_keys").write_text(
            key.with_suffix(".pub").read_text())
        known = tmp_path / "known_hosts"
        known.write_text(_known(sshd))
        settings = resolve_ssh(SshSpec.parse(f"{sshd.user}@{sshd.host}:{sshd.port}"),
                               identity=key, known_hosts=known)
        monkeypatch.delenv(PASSWORD_ENV, raising=False)
        with pytest.raises(AuthError, match=PASSWORD_ENV):      # no terminal, no variable
            SshSession.connect(settings)
        monkeypatch.setenv(PASSWORD_ENV, "wrong horse")
        with pytest.raises(AuthError):
            SshSession.connect(settings)
        monkeypatch.setenv(PASSWORD_ENV, "correct horse")
        with SshSession.connect(settings) as session:
            assert session.run("echo ok").out.strip() == "ok"


def test_a_key_held_only_by_ssh_agent_logs_in(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """No --identity, no key file in ~/.ssh: the key comes from a real ssh-agent (as a
    developer's usually does); without the agent the same login is refused."""
    from edgetune.host.deploy.settings import SshSpec, resolve_ssh
    from edgetune.host.deploy.ssh import PASSWORD_ENV, SshSession
    from edgetune.host.errors import AuthError

    if shutil.which("ssh-agent") is None or shutil.which("ssh-add") is None:
        pytest.skip("needs OpenSSH's ssh-agent and ssh-add")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    key = tmp_path / "agent_only"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        env = dict(os.environ, SSH_AUTH_SOCK=str(sock))
        subprocess.run(["ssh-add", "-q", str(key)], check=True, env=env,
                       stderr=subprocess.DEVNULL)
        key.unlink()                                  # from now on only the agent has it
        with local_sshd() as sshd:
            (sshd.client_key.parent / "authorized_keys").write_text(
                key.with_suffix(".pub").read_text())
            known = tmp_path / "known_hosts"
            known.write_text(_known(sshd))
            settings = resolve_ssh(SshSpec.parse(f"{sshd.user}@{sshd.host}:{sshd.port}"),
                                   known_hosts=known)
            monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
            with pytest.raises(AuthError, match=r"no key \(file or ssh-agent\) or password"):
                SshSession.connect(settings)        # reached, but nothing to log in with
            monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
            with SshSession.connect(settings) as session:
                assert session.run("echo via-agent").out.strip() == "via-agent"
    finally:
        agent.terminate()
        agent.wait(10)


def test_a_password_login_uses_the_password_from_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A board user with a password and no key (a fresh vendor image often has only that):
    a real sshd that checks the system's password file, a throw-away user made for the test."""
    from edgetune.host.deploy.settings import SshSpec, resolve_ssh
    from edgetune.host.deploy.ssh import PASSWORD_ENV, SshSession
    from edgetune.host.errors import AuthError

    if os.geteuid() != 0 or not shutil.which("useradd") or not shutil.which("chpasswd"):
        pytest.skip("needs root and useradd/chpasswd to make a throw-away user")
    user = f"etpw{os.getpid() % 100000}"
    home = tmp_path / user
    subprocess.run(["useradd", "--home-dir", str(home), "--create-home", "--shell", "/bin/sh",
                    user], check=True, capture_output=True)
    try:
        subprocess.run(["chpasswd"], input=f"{user}:board pass 1\n", text=True, check=True)
        monkeypatch.setenv("HOME", str(tmp_path / "pc-home"))
        monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
        with local_sshd(passwords=True) as sshd:
            known = tmp_path / "known_hosts"
            known.write_text(_known(sshd))
            settings = resolve_ssh(SshSpec.parse(f"{user}@{sshd.host}:{sshd.port}"),
                                   known_hosts=known)
            monkeypatch.delenv(PASSWORD_ENV, raising=False)
            with pytest.raises(AuthError, match=PASSWORD_ENV):   # no terminal, no variable
                SshSession.connect(settings)
            monkeypatch.setenv(PASSWORD_ENV, "wrong pass")
            with pytest.raises(AuthError, match="refused"):
                SshSession.connect(settings)
            monkeypatch.setenv(PASSWORD_ENV, "board pass 1")
            with SshSession.connect(settings) as session:
                assert session.run("id -un").out.strip() == user
    finally:
        subprocess.run(["userdel", "--remove", user], capture_output=True)


# ------------------------------------------------------------------------ the board's onnxruntime

def test_the_boards_own_onnxruntime_is_kept_and_used(pki: Any, board_wheelhouse: Path,
                                                     tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A board whose Python imports an onnxruntime (here: this test's own Python, as a vendor
    image's would): the venv sees it, PyPI's is not installed, deploy says which it uses."""
    import onnxruntime

    python = sys.executable
    if subprocess.run([python, "-c", "import sys; sys.exit(sys.version_info[:2] != (%d, %d))"
                       % tuple(map(int, board_python_version().split(".")))]).returncode:
        pytest.skip("this Python is not the version the session's wheelhouse was made for")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("EDGETUNE_PASSPHRASE", pki.passphrase.decode())
    prefix = tmp_path / "vendor"
    inventory = tmp_path / "edgetune.toml"
    with local_sshd() as sshd:
        code, out, err = cli("deploy", "vendor", "--ssh", f"{sshd.user}@{sshd.host}:{sshd.port}",
                             "--identity", str(sshd.client_key), "--pki", str(pki.dir),
                             "--prefix", str(prefix), "--listen", f"127.0.0.1:{free_port()}",
                             "--inventory", str(inventory), "--wheelhouse", str(board_wheelhouse),
                             "--python", python, "--service-user", "root", "--accept-new")
        try:
            assert code == 0, out + err
            assert f"keeping the board's onnxruntime {onnxruntime.__version__}" in out
            assert "CPUExecutionProvider" in out
            venv_site = list(prefix.glob("versions/*/venv/lib/python3*/site-packages"))
            assert venv_site and not (venv_site[0] / "onnxruntime").exists()
            assert (venv_site[0] / "edgetune").is_dir()      # edgetune itself is the venv's
            code, out, err = cli("info", "--device", "vendor", "--json",
                                 "--inventory", str(inventory))
            assert code == 0, err
            assert json.loads(out)["onnxruntime_version"] == onnxruntime.__version__
        finally:
            cli("deploy", "remove", "vendor", "--purge", "--inventory", str(inventory))
    assert not prefix.exists()


def board_python_version() -> str:
    return subprocess.run([board_python(), "-c", "import platform; "
                           "print('.'.join(platform.python_version_tuple()[:2]))"],
                          capture_output=True, text=True, check=True).stdout.strip()


# ------------------------------------------------------------------------ uploads

def test_uploads_resume_a_partial_file_and_replace_a_wrong_one(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from edgetune.host.deploy.settings import SshSpec, resolve_ssh
    from edgetune.host.deploy.ssh import SshSession
    from edgetune.host.deploy.transfer import upload_wheelhouse
    from edgetune.host.deploy.wheelhouse import open_wheelhouse

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    house_dir = tmp_path / "house"
    house_dir.mkdir()
    blobs = {"edgetune-0.1.0-py3-none-any.whl": os.urandom(3 << 20) + b"end",
             "a-1.0-py3-none-any.whl": os.urandom(100_000),
             "b-1.0-py3-none-any.whl": os.urandom(5_000)}
    for name, data in blobs.items():
        (house_dir / name).write_bytes(data)
    house = open_wheelhouse(house_dir)
    remote = tmp_path / "board" / "wheels"
    remote.mkdir(parents=True)
    big = "edgetune-0.1.0-py3-none-any.whl"
    (remote / f"{big}.part").write_bytes(blobs[big][:1 << 20])                # interrupted
    (remote / "a-1.0-py3-none-any.whl").write_bytes(b"not the wheel")          # wrong content
    (remote / "b-1.0-py3-none-any.whl").write_bytes(blobs["b-1.0-py3-none-any.whl"])  # fine
    with local_sshd() as sshd:
        known = tmp_path / "known_hosts"
        known.write_text(_known(sshd))
        settings = resolve_ssh(SshSpec.parse(f"{sshd.user}@{sshd.host}:{sshd.port}"),
                               identity=sshd.client_key, known_hosts=known)
        with SshSession.connect(settings) as session:
            report = upload_wheelhouse(session, house, str(remote))
            assert (report.sent_files, report.resumed_files, report.kept_files) == (2, 1, 1)
            assert report.sent_bytes == len(blobs[big]) - (1 << 20) + 100_000
            for name, data in blobs.items():
                assert (remote / name).read_bytes() == data
            assert not list(remote.glob("*.part"))
            # a .part that is not a prefix of the file is not trusted: sent again whole
            (remote / big).unlink()
            (remote / f"{big}.part").write_bytes(b"x" * 1000)
            report = upload_wheelhouse(session, house, str(remote))
            assert (report.sent_files, report.resumed_files, report.kept_files) == (1, 0, 2)
            assert (remote / big).read_bytes() == blobs[big]
            report = upload_wheelhouse(session, house, str(remote))
            assert (report.sent_files, report.sent_bytes, report.kept_files) == (0, 0, 3)


# ------------------------------------------------------------------------ an old Python board

def test_a_python39_board_gets_a_wheelhouse_made_here_for_cp39(pki: Any, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A board with Python 3.9 (vendor images): no --wheelhouse, so deploy builds edgetune's
    wheel and fetches the device extra for cp39 here, including what only 3.9 needs (tomli),
    which pip download alone leaves out on a newer PC."""
    from tests.test_compat_py39 import find_python39

    python39 = find_python39()
    if python39 is None:
        pytest.skip("no Python 3.9 here (EDGETUNE_PYTHON39, python3.9 on PATH, or pyenv)")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("EDGETUNE_PASSPHRASE", pki.passphrase.decode())
    prefix = tmp_path / "py39"
    inventory = tmp_path / "edgetune.toml"
    with local_sshd() as sshd:
        code, out, err = cli("deploy", "old", "--ssh", f"{sshd.user}@{sshd.host}:{sshd.port}",
                             "--identity", str(sshd.client_key), "--pki", str(pki.dir),
                             "--prefix", str(prefix), "--listen", f"127.0.0.1:{free_port()}",
                             "--inventory", str(inventory), "--python", python39,
                             "--onnxruntime", "pypi", "--service-user", "root", "--accept-new",
                             "--json")
        try:
            assert code == 0, out + err
            assert json.loads(out)["vid"].endswith("-pypi-py39")
            assert "Python 3.9." in err
            wheels = [p.name for p in (prefix / "wheels").iterdir()]
            assert any(w.startswith("tomli-") for w in wheels), wheels
            assert any(w.startswith("onnxruntime-") and "cp39" in w for w in wheels), wheels
            code, out, err = cli("info", "--device", "old", "--json", "--inventory", str(inventory))
            assert code == 0, err
            assert json.loads(out)["python_version"].startswith("3.9.")
        finally:
            cli("deploy", "remove", "old", "--purge", "--inventory", str(inventory))
