"""The wheels a board installs from, offline: ``--wheelhouse DIR``, or made here with pip for
the board's platform and Python (``pip download --platform ... --python-version ...
--only-binary=:all:``) from the project's own wheel and its ``device`` extra.

Both are cached under ``~/.cache/edgetune/deploy``: the project's wheel by a fingerprint of
its source files, a wheelhouse by (project wheel, platform tags, Python, onnxruntime choice),
so deploying again, or to a second board of the same kind, builds nothing.
"""

from __future__ import annotations

import email.parser
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import edgetune
from edgetune.host.errors import BadInputError, EdgetuneError, NotFoundError

log = logging.getLogger(__name__)

PROJECT = "edgetune"
CACHE_ENV = "EDGETUNE_CACHE"
WHEELHOUSE_FORMAT = 2      # 2: dependencies of the board's Python added (markers evaluated for it)
_SOURCE_PARTS = ("pyproject.toml", "README.md", "src", "host", "device", "certs", "protos")
_NOT_COPIED = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__",
                                     "*.pyc", ".pytest_cache")
_NO_MATCH = re.compile(r"No matching distribution found for ([A-Za-z0-9_.\-]+)")
_NO_VERSION = re.compile(r"Could not find a version that satisfies the requirement "
                         r"([A-Za-z0-9_.\-]+)")


def cache_root() -> Path:
    base = os.environ.get(CACHE_ENV)
    return Path(base).expanduser() if base else Path.home() / ".cache" / "edgetune"


@dataclass(frozen=True)
class Wheel:
    name: str           # file name
    size: int
    sha256: str


@dataclass(frozen=True)
class Wheelhouse:
    directory: Path
    wheels: Tuple[Wheel, ...]
    project: Wheel                     # edgetune-*.whl

    @property
    def digest(self) -> str:
        """One hash of every file's name and content: what 'the same wheelhouse' means."""
        h = hashlib.sha256()
        for wheel in self.wheels:
            h.update(f"{wheel.name} {wheel.sha256}\n".encode())
        return h.hexdigest()

    @property
    def version(self) -> str:
        return self.project.name.split("-")[1]

    @property
    def total_bytes(self) -> int:
        return sum(w.size for w in self.wheels)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_HASHED: Dict[Tuple[str, int, int], str] = {}     # (path, size, mtime) -> sha256
_HASHED_LOCK = threading.Lock()


def _wheel(path: Path) -> Wheel:
    """A wheel's size and sha256, hashed once per process while the file stays the same
    (boards deployed at once share their wheelhouse)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    with _HASHED_LOCK:
        digest = _HASHED.get(key)
        if digest is None:
            digest = _HASHED[key] = _sha256(path)
    return Wheel(path.name, st.st_size, digest)


def open_wheelhouse(directory: Path) -> Wheelhouse:
    """A folder of wheels; NotFoundError when it holds no edgetune wheel."""
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise NotFoundError(f"wheelhouse {directory} does not exist")
    wheels = tuple(_wheel(p) for p in sorted(directory.glob("*.whl")))
    projects = [w for w in wheels if w.name.split("-")[0].lower() == PROJECT]
    if not projects:
        raise NotFoundError(f"wheelhouse {directory} holds no {PROJECT}-*.whl",
                            hint="build one with `pip wheel --no-deps .` in the checkout, or "
                                 "leave out --wheelhouse to let deploy make the wheelhouse")
    if len(projects) > 1:
        raise BadInputError(f"wheelhouse {directory} holds {len(projects)} edgetune wheels: "
                            + ", ".join(w.name for w in projects),
                            hint="keep the one to deploy")
    return Wheelhouse(directory, wheels, projects[0])


# ------------------------------------------------------------------ the project's own wheel

def source_tree() -> Optional[Path]:
    """The checkout edgetune runs from (an editable install), or None for an installed wheel."""
    root = Path(edgetune.__file__).resolve().parent.parent.parent
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and f'name = "{PROJECT}"' in pyproject.read_text(encoding="utf-8"):
        return root
    return None


def _fingerprint(root: Path) -> str:
    h = hashlib.sha256()
    for part in _SOURCE_PARTS:
        base = root / part
        paths = [base] if base.is_file() else sorted(
            p for p in base.rglob("*") if p.is_file() and "__pycache__" not in p.parts
            and not p.name.endswith((".pyc", ".egg-info")))
        for path in paths:
            st = path.stat()
            h.update(f"{path.relative_to(root)} {st.st_size} {st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def project_wheel(cache: Optional[Path] = None) -> Path:
    """edgetune's wheel for this checkout (built once per change of its files), or for an
    installed edgetune the release wheel from the package index."""
    cache = (cache or cache_root()) / "deploy" / "project"
    root = source_tree()
    if root is None:
        out = cache / f"release-{edgetune.__version__}"
        found = sorted(out.glob(f"{PROJECT}-*.whl"))
        if found:
            return found[0]
        _pip(["download", "--no-deps", "--only-binary=:all:", "--dest", str(out),
              f"{PROJECT}=={edgetune.__version__}"], "the edgetune wheel", "any")
        return sorted(out.glob(f"{PROJECT}-*.whl"))[0]
    out = cache / _fingerprint(root)
    found = sorted(out.glob(f"{PROJECT}-*.whl"))
    if found:
        return found[0]
    with tempfile.TemporaryDirectory(prefix="edgetune-wheel-") as tmp:
        tree = Path(tmp) / "tree"
        tree.mkdir()
        for part in _SOURCE_PARTS:
            source = root / part
            if source.is_dir():
                shutil.copytree(source, tree / part, ignore=_NOT_COPIED)
            elif source.is_file():
                shutil.copy2(source, tree / part)
        built = Path(tmp) / "dist"
        # Without build isolation first (fast, offline); a Python whose setuptools cannot
        # make wheels by itself (before 70.1, without the `wheel` package: a fresh venv)
        # then builds in pip's isolated environment, as pyproject's build-system asks.
        for isolation in (["--no-build-isolation"], []):
            done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                                   *isolation, "--wheel-dir", str(built), str(tree)],
                                  capture_output=True, text=True)
            if done.returncode == 0:
                break
        else:
            raise EdgetuneError(f"building the edgetune wheel failed:\n{done.stderr[-2000:]}")
        out.mkdir(parents=True, exist_ok=True)
        wheel = sorted(built.glob(f"{PROJECT}-*.whl"))[0]
        shutil.copy2(wheel, out / wheel.name)
    return out / wheel.name


def device_requirements(wheel: Path, *, with_onnxruntime: bool) -> List[str]:
    """The ``device`` extra of a wheel's METADATA as plain requirements (markers kept, the
    extra dropped); without onnxruntime when the board's own is used."""
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        meta = email.parser.Parser().parsestr(zf.read(name).decode("utf-8"))
    out = []
    for line in meta.get_all("Requires-Dist") or []:
        requirement, _, marker = line.partition(";")
        if not re.search(r"""extra\s*==\s*["']device["']""", marker):
            continue
        rest = re.sub(r"""\s*(and\s+)?extra\s*==\s*["']device["']\s*(and\s+)?""", " ", marker)
        rest = re.sub(r"^\s*\(?\s*\)?\s*$", "", rest).strip()
        req = requirement.strip()
        package = re.split(r"[<>=!~\[ (]", req, 1)[0].lower()
        if package == "onnxruntime" and not with_onnxruntime:
            continue
        out.append(f"{req}; {rest}" if rest else req)
    return out


# ------------------------------------------------------------------ a wheelhouse for a board

def _pip(args: Sequence[str], what: str, platform_label: str) -> str:
    done = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        text = done.stderr + done.stdout
        missing = _NO_MATCH.search(text) or _NO_VERSION.search(text)
        if missing:
            raise NotFoundError(
                f"no wheel of {missing.group(1)} for {platform_label} on the package index "
                f"(needed for {what})",
                hint=f"{missing.group(1)} publishes no binary wheel for this board's platform: "
                     "use the board's own build (--onnxruntime board, for onnxruntime), or put "
                     "a wheel built for it in a folder and pass --wheelhouse DIR")
        raise EdgetuneError(f"pip could not fetch {what} for {platform_label}:\n{text[-2000:]}")
    return done.stdout


def build_wheelhouse(platform_tags: Sequence[str], python: Tuple[int, int], *,
                     with_onnxruntime: bool, cache: Optional[Path] = None) -> Wheelhouse:
    """The wheelhouse for a board (cached): edgetune's wheel and every dependency of the
    ``device`` extra, binary wheels only, for ``platform_tags`` and CPython ``python``."""
    project = project_wheel(cache)
    label = f"{platform_tags[0]} / cp{python[0]}{python[1]}"
    key = hashlib.sha256(json.dumps([WHEELHOUSE_FORMAT, _sha256(project), list(platform_tags),
                                     list(python), with_onnxruntime]).encode()).hexdigest()[:24]
    out = (cache or cache_root()) / "deploy" / "wheelhouses" / key
    if (out / "complete").is_file():
        return open_wheelhouse(out)
    env = target_environment(platform_tags, python)
    requirements = for_target(device_requirements(project, with_onnxruntime=with_onnxruntime),
                              env)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=str(out.parent)))
    try:
        shutil.copy2(project, tmp / project.name)
        args = ["download", "--dest", str(tmp), "--only-binary=:all:",
                "--python-version", f"{python[0]}.{python[1]}", "--implementation", "cp",
                "--abi", f"cp{python[0]}{python[1]}", "--abi", "abi3", "--abi", "none"]
        for tag in platform_tags:
            args += ["--platform", tag]
        log.info("pip %s", " ".join(args))
        _pip([*args, str(tmp / project.name), *requirements], "the agent's dependencies", label)
        # pip evaluates environment markers against this PC's Python, not the board's: a
        # dependency only the board's Python needs (tomli on 3.9) is fetched in further rounds
        for _ in range(8):
            missing = missing_requirements(tmp, env)
            if not missing:
                break
            log.info("for the board's Python also: %s", ", ".join(missing))
            _pip([*args, *missing], "the agent's dependencies", label)
        else:
            raise EdgetuneError(f"the wheelhouse for {label} did not settle: still missing "
                                + ", ".join(missing_requirements(tmp, env)))
        (tmp / "complete").write_text(label + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return open_wheelhouse(out)


def _packaging() -> Any:
    """``packaging`` (markers, requirements, utils loaded), else pip's own copy of it."""
    import importlib

    for base in ("packaging", "pip._vendor.packaging"):
        try:
            for part in ("markers", "requirements", "utils"):
                importlib.import_module(f"{base}.{part}")
            return importlib.import_module(base)
        except ImportError:  # pragma: no cover - pip always carries a copy
            continue
    raise EdgetuneError("neither packaging nor pip's copy of it can be imported")


def target_environment(platform_tags: Sequence[str], python: Tuple[int, int]) -> Dict[str, str]:
    """PEP 508 marker variables of the board (CPython ``python`` on Linux, its machine)."""
    machine = platform_tags[-1].split("_", 1)[1] if "_" in platform_tags[-1] else ""
    version = f"{python[0]}.{python[1]}"
    return {"python_version": version, "python_full_version": f"{version}.0",
            "implementation_version": f"{version}.0", "implementation_name": "cpython",
            "platform_python_implementation": "CPython", "platform_machine": machine,
            "platform_system": "Linux", "sys_platform": "linux", "os_name": "posix",
            "platform_release": "", "platform_version": "", "extra": ""}


def for_target(requirements: Sequence[str], env: Mapping[str, str]) -> List[str]:
    """The requirements whose markers hold on the board, without their markers."""
    pkg = _packaging()
    out = []
    for text in requirements:
        req = pkg.requirements.Requirement(text)
        if req.marker is None or req.marker.evaluate(dict(env)):
            out.append(f"{req.name}{req.specifier}")
    return out


def missing_requirements(directory: Path, env: Mapping[str, str]) -> List[str]:
    """What the wheels in ``directory`` require on the board (markers evaluated for it) that
    no wheel there provides."""
    pkg = _packaging()
    wheels = sorted(directory.glob("*.whl"))
    present = {pkg.utils.canonicalize_name(w.name.split("-")[0]) for w in wheels}
    missing: Dict[str, str] = {}
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as zf:
            name = next((n for n in zf.namelist() if n.endswith(".dist-info/METADATA")), None)
            if name is None:
                continue
            meta = email.parser.Parser().parsestr(zf.read(name).decode("utf-8", "replace"))
        for line in meta.get_all("Requires-Dist") or []:
            req = pkg.requirements.Requirement(line)
            if req.marker is not None and not req.marker.evaluate(dict(env)):
                continue          # another Python's, or an extra not asked for
            key = pkg.utils.canonicalize_name(req.name)
            if key not in present:
                missing.setdefault(key, f"{req.name}{req.specifier}")
    return sorted(missing.values())


def requirements_for(house: Wheelhouse, *, with_onnxruntime: bool) -> List[str]:
    """What the board's pip installs: edgetune at the wheelhouse's version and the extra."""
    return [f"{PROJECT}=={house.version}",
            *device_requirements(house.directory / house.project.name,
                                 with_onnxruntime=with_onnxruntime)]


def hashes(house: Wheelhouse) -> Dict[str, str]:
    return {w.name: w.sha256 for w in house.wheels}
