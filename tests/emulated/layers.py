"""The agent's dependencies, installed once into an emulated board and cached as an overlay layer.

Installing onnxruntime, grpcio, numpy and cryptography with the board's own pip (Debian 11's
pip 20.3, which picks the aarch64/cp39 wheels for itself) takes minutes under QEMU. It is done
once, on an overlay over the cached root file system; the overlay's upper folder (a venv at
``AGENT_VENV`` with pyproject's base and ``device`` requirements, without edgetune itself) is
then kept in the cache and stacked under later boards. The key of the layer is the root
file system's build and those requirements, so a changed requirement or a rebuilt root file
system makes a new layer. Each test installs this checkout's edgetune wheel on top
(``install_edgetune``: a few seconds, no network).

The riscv64 board (Debian 13) has no PyPI wheels of onnxruntime or grpcio: its root file
system holds the distribution's packages, and its layer is a venv that sees them
(``--system-site-packages``) with the ``agent`` extra (no onnxruntime) and the grpcio
plug-ins pinned to the distribution's grpcio (``AgentLayer``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Iterator, List

from tests.emulated import rootfs
from tests.emulated.rootfs import Recipe

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent.parent
AGENT_VENV = "/opt/et"
LAYER_VERSION = 1
BOARD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HOST_CA_IN_BOARD = "/etc/edgetune-host-ca.pem"


@dataclass(frozen=True)
class AgentLayer:
    """How the agent's requirements go into a board's venv.

    ``extra``: pyproject's extra installed beside the base dependencies (``device`` brings
    PyPI's onnxruntime; ``agent`` is the one without it). ``system_packages``: the venv sees the
    distribution's Python packages (``--system-site-packages``), and pip installs only what
    they lack; the grpcio plug-ins (health checking, reflection) are then pinned to the
    system grpcio's release, as a board with its distribution's grpcio needs."""

    extra: str = "device"
    system_packages: bool = False


LAYERS = {
    rootfs.DEBIAN11_ARM64.name: AgentLayer(),
    rootfs.DEBIAN13_RISCV64.name: AgentLayer(extra="agent", system_packages=True),
}
GRPC_PLUGINS = ("grpcio-health-checking", "grpcio-reflection")


def agent_requirements(extra: str = "device") -> List[str]:
    """pyproject's base dependencies and ``extra``: what the agent needs on a board."""
    try:
        import tomllib
    except ImportError:  # pragma: no cover - Python < 3.11
        import tomli as tomllib
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return list(project["dependencies"]) + list(project["optional-dependencies"][extra])


def requirement_name(requirement: str) -> str:
    return re.split(r"[\s;<>=!~\[]", requirement, 1)[0].lower()


def pinned_to_grpc(requirements: List[str], grpc_version: str) -> List[str]:
    """``requirements`` with the grpcio plug-ins (pure Python) pinned to the board's grpcio
    release: each plug-in release requires grpcio at least its own version, so a newer one
    would make pip build grpcio from source over the distribution's."""
    out = []
    for requirement in requirements:
        name = requirement_name(requirement)
        out.append(f"{name}=={grpc_version}" if name in GRPC_PLUGINS else requirement)
    return out


def layer_key(recipe: Recipe, entry: Path) -> str:
    built = (entry / "built.json").read_text() if (entry / "built.json").exists() else ""
    spec = LAYERS[recipe.name]
    fields = {"layer": LAYER_VERSION, "rootfs": recipe.stamp(), "built": built,
              "requirements": agent_requirements(spec.extra)}
    if spec != AgentLayer():
        fields["spec"] = asdict(spec)      # the arm64 layer's key is as before the field
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def board_env(**extra: str) -> Dict[str, str]:
    """A clean environment for commands in the board (nothing of the host's Python or pip
    settings, which name host folders)."""
    env = {"PATH": BOARD_PATH, "HOME": "/root", "LANG": "C.UTF-8",
           "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_DEFAULT_TIMEOUT": "180"}
    env.update(extra)
    return env


def chroot_argv(root: Path, argv: List[str], env: Dict[str, str]) -> List[str]:
    return ["chroot", str(root), "/usr/bin/env", "-i",
            *[f"{k}={v}" for k, v in sorted(env.items())], *argv]


@contextlib.contextmanager
def overlay(lowers: List[Path], upper: Path, work: Path, merged: Path) -> Iterator[Path]:
    """``merged`` as an overlay of ``lowers`` (first is topmost) with writes going to ``upper``."""
    for folder in (upper, work, merged):
        folder.mkdir(parents=True, exist_ok=True)
    options = (f"lowerdir={':'.join(str(p) for p in lowers)},upperdir={upper},workdir={work}")
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(merged)], check=True,
                   capture_output=True)
    try:
        yield merged
    finally:
        rootfs.unmount_under(merged)


@contextlib.contextmanager
def system_mounts(root: Path) -> Iterator[None]:
    """/proc, /sys and /dev of the host inside ``root`` (onnxruntime's cpuinfo reads
    /sys/devices/system/cpu/possible), as slaves so that unmounting them never propagates back."""
    try:
        for name in ("proc", "sys", "dev"):
            point = root / name
            point.mkdir(exist_ok=True)
            subprocess.run(["mount", "--rbind", f"/{name}", str(point)], check=True,
                           capture_output=True)
            subprocess.run(["mount", "--make-rslave", str(point)], check=True, capture_output=True)
        yield
    finally:
        for name in ("dev", "sys", "proc"):
            rootfs.unmount_under(root / name)


@contextlib.contextmanager
def online(root: Path) -> Iterator[Dict[str, str]]:
    """What pip in the board needs to reach the package index as the host does: DNS, the
    host's CA bundle (a proxy's CA too) and proxy settings. Removed again afterwards, so the
    cached layer keeps none of them. Yields the environment for pip."""
    placed = []
    try:
        for src, dst in (("/etc/resolv.conf", "etc/resolv.conf"),
                         (os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE")
                          or "/etc/ssl/certs/ca-certificates.crt", HOST_CA_IN_BOARD.lstrip("/"))):
            if Path(src).exists():
                shutil.copyfile(src, root / dst)
                placed.append(root / dst)
        env = board_env()
        if (root / HOST_CA_IN_BOARD.lstrip("/")).exists():
            env["PIP_CERT"] = HOST_CA_IN_BOARD
        for name in ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                     "NO_PROXY", "PIP_INDEX_URL"):
            if os.environ.get(name):
                env[name] = os.environ[name]
        yield env
    finally:
        for path in placed:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def run_in(root: Path, argv: List[str], env: Dict[str, str], log_file: Path,
           timeout: float = 1800) -> None:
    rootfs.run_logged(chroot_argv(root, argv, env), log_file, timeout=timeout)


def board_output(root: Path, argv: List[str], log_file: Path, timeout: float = 600) -> str:
    """What ``argv`` prints in the board (also appended to ``log_file``)."""
    proc = subprocess.run(chroot_argv(root, argv, board_env()), capture_output=True, text=True,
                          timeout=timeout)
    with open(log_file, "a") as out:
        out.write("$ " + " ".join(argv) + "\n" + proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} exited {proc.returncode} in the board: {proc.stderr}")
    return proc.stdout.strip()


def build_layer(entry: Path, target: Path, log_file: Path, spec: AgentLayer = AgentLayer()
                ) -> None:
    """Install the agent's requirements into a venv on an overlay of ``entry``'s tree; the
    overlay's upper folder becomes ``target/upper``."""
    scratch = target / "scratch"
    with overlay([entry / "root"], target / "upper", scratch / "work", scratch / "merged") as root:
        with system_mounts(root), online(root) as env:
            venv = ["python3", "-m", "venv", AGENT_VENV]
            requirements = agent_requirements(spec.extra)
            # PyPI's wheels only; pure-Python plug-ins pinned to an old grpcio may be sdists.
            binary = ["--only-binary=:all:"]
            if spec.system_packages:
                venv.insert(3, "--system-site-packages")
                grpc_version = board_output(
                    root, ["python3", "-c", "import grpc; print(grpc.__version__)"], log_file)
                requirements = pinned_to_grpc(requirements, grpc_version)
                binary = ["--prefer-binary"]
            run_in(root, venv, env, log_file, timeout=600)
            run_in(root, [f"{AGENT_VENV}/bin/pip", "install", "--no-cache-dir", "--no-compile",
                          *binary, *requirements], env, log_file)
            run_in(root, [f"{AGENT_VENV}/bin/pip", "check"], env, log_file, timeout=600)
    shutil.rmtree(scratch)


def ensure_agent_layer(recipe: Recipe = rootfs.DEBIAN11_ARM64) -> Path:
    """The cached layer (an overlay upper folder) with the agent's requirements in a venv at
    ``AGENT_VENV``, built when missing. Other layers of the same recipe are removed."""
    entry = rootfs.ensure_built(recipe)
    key = layer_key(recipe, entry)
    cache = rootfs.cache_root()
    name = f"{recipe.name}-agent-{key}"
    layer = cache / name
    if (layer / "layer.json").exists():
        return layer / "upper"
    with rootfs.cache_lock(cache / f"{recipe.name}.lock", exclusive=False), \
            rootfs.cache_lock(cache / f"{recipe.name}-agent.lock", exclusive=True):
        if (layer / "layer.json").exists():
            return layer / "upper"
        problems = rootfs.host_problems(recipe)
        if problems:
            raise rootfs.BoardUnavailable("cannot build the agent layer: " + "; ".join(problems))
        building = Path(tempfile.mkdtemp(prefix=f".{name}.build.", dir=cache))
        log_file = cache / f"{recipe.name}-agent.build.log"
        log_file.write_text("")
        began = time.monotonic()
        log.info("installing the agent's requirements into %s (log: %s)", recipe.name, log_file)
        try:
            build_layer(entry, building, log_file, LAYERS[recipe.name])
            (building / "layer.json").write_text(json.dumps(
                {"seconds": round(time.monotonic() - began, 1), "key": key,
                 "requirements": agent_requirements(LAYERS[recipe.name].extra),
                 "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}))
            rootfs.replace_entry(building, layer)
        except BaseException:
            rootfs.remove_tree(building)
            raise
        for stale in cache.glob(f"{recipe.name}-agent-*"):
            if stale.is_dir() and stale.name != name:
                rootfs.remove_tree(stale)
        log.info("agent layer built in %.0f s", time.monotonic() - began)
        return layer / "upper"


def build_edgetune_wheel(out: Path) -> Path:
    """This checkout's edgetune wheel (pure Python), built on the host from a copy of the
    tree so no build files land in the checkout."""
    src = out / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", "__pycache__", "*.egg-info", "build", "dist", ".pytest_cache", ".benchmarks",
        ".venv", "pki", "edgetune-demo*"))
    wheels = out / "wheels"
    # Without build isolation first; a venv whose setuptools cannot make wheels by itself
    # (before 70.1, no `wheel` package) builds in pip's isolated environment instead.
    for isolation in (["--no-build-isolation"], []):
        proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation,
                               "--quiet", "-w", str(wheels), str(src)],
                              capture_output=True, text=True, timeout=300)
        if proc.returncode == 0:
            break
    if proc.returncode != 0:
        raise RuntimeError(f"building the edgetune wheel failed:\n{proc.stdout}{proc.stderr}")
    shutil.rmtree(src)
    (wheel,) = wheels.glob("edgetune-*.whl")
    return wheel


def install_edgetune(root: Path, wheel: Path, log_file: Path) -> None:
    """Install ``wheel`` into the board's agent venv (no dependencies, no network)."""
    staged = root / "tmp" / wheel.name
    shutil.copyfile(wheel, staged)
    try:
        run_in(root, [f"{AGENT_VENV}/bin/pip", "install", "--no-deps", "--no-index",
                      "--no-compile", f"/tmp/{wheel.name}"], board_env(), log_file, timeout=600)
    finally:
        staged.unlink()
