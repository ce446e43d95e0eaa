"""A running emulated board: its own root file system, address and sshd.

``EmulatedBoard`` stacks an overlay over the cached root file system (and, optionally, the
cached agent layer), so each board starts clean and writes nothing into the cache; mounts the
host's /proc, /sys and /dev into it; creates a network namespace joined to the host by a veth
pair (host 10.77.N.1, board 10.77.N.2); and can start the board's own sshd there, with fresh
host keys, root login by key only and SFTP. Every process of the board runs as
``ip netns exec NS chroot ROOT ...``, so ``ip netns pids NS`` finds all of them (also what a
deploy starts detached) and ``stop()`` ends them before it unmounts and deletes the namespace.
``stop()`` runs whatever happened before, and also undoes a half-finished ``start()``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from tests.emulated import layers, rootfs
from tests.emulated.rootfs import Recipe

log = logging.getLogger(__name__)

SUBNET_PREFIX = "10.77"
BOARD_ETC = "/etc/edgetune-board"        # the board run's own files (sshd config, host key)


def openssh_keypair() -> tuple:
    """(private key in OpenSSH PEM, public key line) of a new ed25519 key."""
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH)
    return private, public.decode()


def write_private(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    return path


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


class EmulatedBoard:
    """One board run under ``workdir`` (its overlay's upper folder, logs). Use as a context
    manager, or call ``start()`` and, always, ``stop()``."""

    def __init__(self, workdir: Path, *, recipe: Recipe = rootfs.DEBIAN11_ARM64,
                 with_agent_layer: bool = False, ssh_port: int = 22) -> None:
        self.workdir = Path(workdir)
        self.recipe = recipe
        self.with_agent_layer = with_agent_layer
        self.ssh_port = ssh_port
        self.root = self.workdir / "merged"
        self.subnet: Optional[int] = None
        self.netns = ""
        self.sshd: Optional[subprocess.Popen] = None
        self.sshd_log = self.workdir / "sshd.log"
        self.host_key_public = ""
        self._locks = contextlib.ExitStack()
        self._mounted = False

    # ------------------------------------------------------------------ addresses
    @property
    def address(self) -> str:
        return f"{SUBNET_PREFIX}.{self.subnet}.2"

    @property
    def host_address(self) -> str:
        return f"{SUBNET_PREFIX}.{self.subnet}.1"

    def _veth(self, side: str) -> str:
        return f"edb{self.subnet}{side}"            # at most 15 characters

    # ------------------------------------------------------------------ life cycle
    def __enter__(self) -> "EmulatedBoard":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        problems = rootfs.host_problems(self.recipe)
        if problems:
            raise rootfs.BoardUnavailable("; ".join(problems))
        entry = rootfs.ensure_built(self.recipe)
        lowers = [entry / "root"]
        if self.with_agent_layer:
            lowers.insert(0, layers.ensure_agent_layer(self.recipe))
        cache = rootfs.cache_root()
        # Shared: nobody rebuilds the cache under this running board.
        self._locks.enter_context(rootfs.cache_lock(cache / f"{self.recipe.name}.lock", False))
        if self.with_agent_layer:
            self._locks.enter_context(
                rootfs.cache_lock(cache / f"{self.recipe.name}-agent.lock", False))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._mounted = True
        self._overlay = layers.overlay(lowers, self.workdir / "upper", self.workdir / "work",
                                       self.root)
        self._overlay.__enter__()
        self._system = layers.system_mounts(self.root)
        self._system.__enter__()
        (self.root / "etc/hostname").write_text("board\n")
        self._make_netns()

    def _make_netns(self) -> None:
        used = _ip("-o", "-4", "addr", "show").stdout
        candidates = [n for n in range(1, 255) if f" {SUBNET_PREFIX}.{n}." not in used]
        random.shuffle(candidates)
        for n in candidates[:20]:
            self.subnet = n
            name = f"edgetune-board-{n}"
            if _ip("netns", "add", name, check=False).returncode != 0:
                continue                              # another run has this number
            self.netns = name
            if _ip("link", "add", self._veth("h"), "type", "veth", "peer", "name",
                   self._veth("b"), check=False).returncode != 0:
                _ip("netns", "del", name, check=False)
                self.netns = ""
                continue
            _ip("link", "set", self._veth("b"), "netns", name)
            _ip("addr", "add", f"{self.host_address}/24", "dev", self._veth("h"))
            _ip("link", "set", self._veth("h"), "up")
            for args in (("addr", "add", f"{self.address}/24", "dev", self._veth("b")),
                         ("link", "set", self._veth("b"), "up"), ("link", "set", "lo", "up")):
                _ip("netns", "exec", name, "ip", *args)
            return
        raise RuntimeError("no free 10.77.N.0/24 subnet for an emulated board")

    def stop(self) -> None:
        """End every process of the board, unmount everything, delete the namespace and veth.
        Safe to call more than once and after a failed start."""
        errors: List[str] = []
        if self.netns:
            self._kill_netns_processes()
        if self.sshd is not None and self.sshd.poll() is None:
            self.sshd.kill()
        if self.sshd is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.sshd.wait(10)
        if self._mounted:
            for manager in (getattr(self, "_system", None), getattr(self, "_overlay", None)):
                if manager is not None:
                    try:
                        manager.__exit__(None, None, None)
                    except Exception as exc:  # keep tearing down; report at the end
                        errors.append(f"unmount: {exc}")
            self._mounted = False
        if self.netns:
            _ip("netns", "del", self.netns, check=False)
            _ip("link", "del", self._veth("h"), check=False)
            self.netns = ""
        self._locks.close()
        if errors:
            raise RuntimeError("; ".join(errors))

    def _kill_netns_processes(self) -> None:
        for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline and self.pids():
                time.sleep(0.1)

    def pids(self) -> List[int]:
        """Every process in the board's network namespace."""
        out = _ip("netns", "pids", self.netns, check=False).stdout
        return [int(p) for p in out.split()]

    # ------------------------------------------------------------------ running things
    def argv(self, argv: Sequence[str], env: Optional[Dict[str, str]] = None) -> List[str]:
        """``argv`` as run inside the board: its namespace, its root, a clean environment."""
        return ["ip", "netns", "exec", self.netns,
                *layers.chroot_argv(self.root, list(argv), env or layers.board_env())]

    def run(self, argv: Sequence[str], *, timeout: float = 300,
            env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(argv, env), capture_output=True, text=True,
                              timeout=timeout)

    def popen(self, argv: Sequence[str], *, log_file: Path,
              env: Optional[Dict[str, str]] = None) -> subprocess.Popen:
        with open(log_file, "ab") as out:
            return subprocess.Popen(self.argv(argv, env), stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)

    def path(self, board_path: str) -> Path:
        """Where a board path lies on the host (inside the overlay)."""
        return self.root / board_path.lstrip("/")

    # ------------------------------------------------------------------ sshd
    def start_sshd(self, authorized_keys: Sequence[str], timeout: float = 60) -> None:
        """The board's own sshd on ``address:ssh_port``: a fresh ed25519 host key, root login
        with the given public keys only, no PAM, SFTP in-process."""
        etc = self.path(BOARD_ETC)
        etc.mkdir(mode=0o755, parents=True, exist_ok=True)
        private, public = openssh_keypair()
        write_private(etc / "ssh_host_ed25519_key", private)
        (etc / "ssh_host_ed25519_key.pub").write_text(public + "\n")
        self.host_key_public = public
        ssh_dir = self.path("/root/.ssh")
        ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        ssh_dir.chmod(0o700)
        write_private(ssh_dir / "authorized_keys", ("\n".join(authorized_keys) + "\n").encode())
        self.path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
        (etc / "sshd_config").write_text(
            f"Port {self.ssh_port}\nListenAddress {self.address}\n"
            f"HostKey {BOARD_ETC}/ssh_host_ed25519_key\nPidFile /run/sshd-board.pid\n"
            "UsePAM no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
            "AuthorizedKeysFile .ssh/authorized_keys\nStrictModes yes\n"
            "Subsystem sftp internal-sftp\nLogLevel INFO\n")
        check = self.run(["/usr/sbin/sshd", "-t", "-f", f"{BOARD_ETC}/sshd_config"], timeout=120)
        if check.returncode != 0:
            raise RuntimeError(f"sshd -t refused the board's config: {check.stderr}")
        self.sshd = self.popen(["/usr/sbin/sshd", "-D", "-e", "-f", f"{BOARD_ETC}/sshd_config"],
                               log_file=self.sshd_log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sshd.poll() is not None:
                raise RuntimeError(f"the board's sshd exited with {self.sshd.returncode}:\n"
                                   + self.sshd_log.read_text(errors="replace"))
            with contextlib.suppress(OSError):
                with socket.create_connection((self.address, self.ssh_port), timeout=5) as sock:
                    sock.settimeout(10)
                    if sock.recv(64).startswith(b"SSH-2.0-"):
                        return
            time.sleep(0.2)
        raise RuntimeError(f"the board's sshd did not answer within {timeout} s:\n"
                           + self.sshd_log.read_text(errors="replace"))

    def known_hosts_line(self) -> str:
        host = self.address if self.ssh_port == 22 else f"[{self.address}]:{self.ssh_port}"
        return f"{host} {self.host_key_public}"
