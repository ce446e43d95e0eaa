"""Debian root file systems for emulated boards, built once with debootstrap and cached.

A root file system is built in a temporary folder beside the cache entry and renamed into place
only when complete, with ``recipe.json`` (the recipe that made it) inside. A cache entry whose
recipe differs from the current one is rebuilt. Builders and users of one entry take a file
lock: users hold it shared for as long as they run a board on it, a (re)build holds it
exclusively, so nobody replaces a root file system under a running board.

The cache lives in ``$EDGETUNE_BOARD_CACHE``, else ``~/.cache/edgetune/boards``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

log = logging.getLogger(__name__)

DEFAULT_MIRROR = "http://deb.debian.org/debian"
BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
# What the host needs, as Debian packages (root installs them with apt-get; CI's apt stage does).
HOST_PACKAGES = ("qemu-user-static", "binfmt-support", "debootstrap", "iproute2")


@dataclass(frozen=True)
class Recipe:
    """How one board's root file system is made. Change ``version`` (or any field) and every
    cache built from the old recipe is rebuilt on next use."""

    name: str
    arch: str                      # Debian's name: arm64
    qemu_arch: str                 # QEMU's and the kernel's: aarch64
    suite: str
    include: Tuple[str, ...]
    version: int = 1
    variant: str = "minbase"
    components: Tuple[str, ...] = field(default=("main",))
    # Installed with the board's own apt-get after debootstrap (inside, under QEMU): what
    # debootstrap's simple resolver cannot install itself (Debian 13's python3-onnxruntime
    # reaches libre2 through a virtual package, which debootstrap does not follow).
    apt_install: Tuple[str, ...] = ()

    def stamp(self) -> str:
        fields = asdict(self)
        if not fields["apt_install"]:
            # Left out while empty, so that the caches built before the field existed (the
            # arm64 board's) keep their stamp and are not rebuilt for nothing.
            del fields["apt_install"]
        return json.dumps(fields, sort_keys=True)


# Debian 11 with its Python 3.9, as on many vendor images; sshd for deploy; no systemd (minbase).
DEBIAN11_ARM64 = Recipe(
    name="debian11-arm64", arch="arm64", qemu_arch="aarch64", suite="bullseye",
    include=("python3", "python3-venv", "python3-pip", "ca-certificates", "openssh-server"),
)

# Debian 13 riscv64 with the distribution's own onnxruntime, grpcio, protobuf, cryptography and
# numpy (PyPI has no riscv64 wheels of onnxruntime or grpcio), as SpacemiT's Bianbu image
# provides them; Python 3.13. No sshd: nothing logs in to it.
DEBIAN13_RISCV64 = Recipe(
    name="debian13-riscv64", arch="riscv64", qemu_arch="riscv64", suite="trixie",
    include=("python3", "python3-venv", "ca-certificates"),
    apt_install=("python3-onnxruntime", "python3-numpy", "python3-grpcio", "python3-protobuf",
                 "python3-cryptography"),
)

RECIPES = {"arm64": DEBIAN11_ARM64, "riscv64": DEBIAN13_RISCV64}


class BoardUnavailable(Exception):
    """This machine cannot run an emulated board (the message says what is missing)."""


def cache_root() -> Path:
    configured = os.environ.get("EDGETUNE_BOARD_CACHE", "").strip()
    root = Path(configured) if configured else Path.home() / ".cache" / "edgetune" / "boards"
    return root.expanduser()


def mirror() -> str:
    return os.environ.get("EDGETUNE_DEBIAN_MIRROR", "").strip() or DEFAULT_MIRROR


def binfmt_enabled(qemu_arch: str) -> bool:
    entry = BINFMT_DIR / f"qemu-{qemu_arch}"
    try:
        return entry.read_text().splitlines()[0].strip() == "enabled"
    except (OSError, IndexError):
        return False


def host_problems(recipe: Recipe = DEBIAN11_ARM64) -> List[str]:
    """What stops this machine from building or running the recipe's board (empty: nothing)."""
    problems = []
    if os.geteuid() != 0:
        problems.append("not root (a board needs mounts, chroot and a network namespace)")
    for tool in ("debootstrap", f"qemu-{recipe.qemu_arch}-static", "ip", "chroot", "mount"):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            problems.append(f"no {tool} on PATH")
    if not binfmt_enabled(recipe.qemu_arch):
        problems.append(f"binfmt_misc has no enabled qemu-{recipe.qemu_arch} entry "
                        f"({BINFMT_DIR}/qemu-{recipe.qemu_arch})")
    return problems


def prepare_host(recipe: Recipe = DEBIAN11_ARM64, *, install: bool = True) -> None:
    """Install the host packages (apt-get) when missing and enable binfmt for the recipe's
    architecture. Needs root; CI runs it before building the cache."""
    if os.geteuid() != 0:
        raise BoardUnavailable("preparing the host needs root")
    if install and (shutil.which("debootstrap") is None
                    or shutil.which(f"qemu-{recipe.qemu_arch}-static") is None
                    or shutil.which("update-binfmts") is None or shutil.which("ip") is None):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", *HOST_PACKAGES], check=True, env=env)
    if not (BINFMT_DIR / "register").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_DIR)], check=True)
    if not binfmt_enabled(recipe.qemu_arch):
        subprocess.run(["update-binfmts", "--enable", f"qemu-{recipe.qemu_arch}"], check=True)
    if not binfmt_enabled(recipe.qemu_arch):
        raise BoardUnavailable(f"update-binfmts did not enable qemu-{recipe.qemu_arch}")


@contextlib.contextmanager
def cache_lock(path: Path, exclusive: bool) -> Iterator[int]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield fd
    finally:
        os.close(fd)


def read_stamp(entry: Path) -> Optional[str]:
    try:
        return (entry / "recipe.json").read_text()
    except OSError:
        return None


def mounts_under(path: Path) -> List[Path]:
    """Mount points at or below ``path``, deepest first (from /proc/self/mountinfo)."""
    root = os.path.realpath(path)
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == root or point.startswith(root + "/"):
            found.append(Path(point))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def unmount_under(path: Path) -> None:
    """Unmount everything at or below ``path`` (lazily when busy), so that removing the tree
    can never reach into the host's /proc, /sys or /dev."""
    for point in mounts_under(path):
        if subprocess.run(["umount", str(point)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(point)], capture_output=True)
    left = mounts_under(path)
    if left:
        raise RuntimeError(f"still mounted under {path}: {left}")


def remove_tree(path: Path) -> None:
    """rmtree after unmounting anything below (never follows a mount into the host)."""
    if path.exists():
        unmount_under(path)
        shutil.rmtree(path, ignore_errors=True)


def replace_entry(built: Path, entry: Path) -> None:
    """Rename a complete build into place (the old entry, if any, is moved aside and removed)."""
    old = None
    if entry.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{entry.name}.old.", dir=entry.parent))
        os.rename(entry, old / "entry")
    os.rename(built, entry)
    if old is not None:
        remove_tree(old)


def run_logged(argv: List[str], log_file: Path, *, env: Optional[dict] = None,
               timeout: float = 3600) -> None:
    with open(log_file, "ab") as out:
        out.write(("$ " + " ".join(argv) + "\n").encode())
        out.flush()
        proc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=timeout)
    if proc.returncode != 0:
        tail = log_file.read_text(errors="replace").splitlines()[-25:]
        raise RuntimeError(f"{argv[0]} exited {proc.returncode}; last lines of {log_file}:\n"
                           + "\n".join(tail))


def build_rootfs(recipe: Recipe, target: Path, log_file: Path) -> None:
    """debootstrap the recipe into ``target`` (QEMU runs the second stage), then make it a board:
    Debian's sources.list for later installs, no baked-in SSH host keys (each board run makes
    its own), no package caches."""
    run_logged(["debootstrap", f"--arch={recipe.arch}", f"--variant={recipe.variant}",
                f"--components={','.join(recipe.components)}",
                f"--include={','.join(recipe.include)}", recipe.suite, str(target), mirror()],
               log_file)
    if recipe.apt_install:
        apt_install(recipe, target, log_file)
    (target / "etc/apt/sources.list").write_text(
        f"deb {DEFAULT_MIRROR} {recipe.suite} {' '.join(recipe.components)}\n")
    for key in (target / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    shutil.rmtree(target / "var/cache/apt/archives", ignore_errors=True)
    (target / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
    for leftover in ("etc/resolv.conf", "etc/hostname"):
        with contextlib.suppress(FileNotFoundError):
            (target / leftover).unlink()


def apt_install(recipe: Recipe, target: Path, log_file: Path) -> None:
    """``recipe.apt_install`` with the board's own apt-get (its dpkg runs under QEMU), with the
    host's /proc, /sys, /dev, DNS and proxy settings lent for the time of the install; the
    package lists and downloaded archives are removed afterwards."""
    from tests.emulated import layers          # layers imports this module

    (target / "etc/apt/sources.list").write_text(
        f"deb {mirror()} {recipe.suite} {' '.join(recipe.components)}\n")
    with layers.system_mounts(target), layers.online(target) as env:
        env = dict(env, DEBIAN_FRONTEND="noninteractive")
        layers.run_in(target, ["apt-get", "update", "-q"], env, log_file)
        layers.run_in(target, ["apt-get", "install", "-y", "-q", "--no-install-recommends",
                               *recipe.apt_install], env, log_file)
        layers.run_in(target, ["apt-get", "clean"], env, log_file, timeout=600)
    shutil.rmtree(target / "var/lib/apt/lists", ignore_errors=True)
    (target / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)


def ensure_built(recipe: Recipe = DEBIAN11_ARM64) -> Path:
    """The cache entry of ``recipe`` (its tree is ``entry/root``), built when missing or stale."""
    entry = cache_root() / recipe.name
    lock = cache_root() / f"{recipe.name}.lock"
    with cache_lock(lock, exclusive=False):
        if read_stamp(entry) == recipe.stamp():
            return entry
    with cache_lock(lock, exclusive=True):
        if read_stamp(entry) == recipe.stamp():
            return entry
        problems = host_problems(recipe)
        if problems:
            raise BoardUnavailable("cannot build the board: " + "; ".join(problems))
        building = Path(tempfile.mkdtemp(prefix=f".{recipe.name}.build.", dir=cache_root()))
        log_file = cache_root() / f"{recipe.name}.build.log"
        log_file.write_text("")
        began = time.monotonic()
        log.info("building %s with debootstrap (log: %s)", recipe.name, log_file)
        try:
            build_rootfs(recipe, building / "root", log_file)
            (building / "recipe.json").write_text(recipe.stamp())
            (building / "built.json").write_text(json.dumps(
                {"seconds": round(time.monotonic() - began, 1), "mirror": mirror(),
                 "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}))
            replace_entry(building, entry)
        except BaseException:
            remove_tree(building)
            raise
        log.info("built %s in %.0f s", recipe.name, time.monotonic() - began)
        return entry
