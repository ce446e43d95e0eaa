"""What ``pip install edgetune`` puts on a machine: one import package, ``edgetune``.

- the wheel built from the checkout holds only ``edgetune/...`` and its dist-info, every module
  and data file of the four parts (generated protos, .proto/.pyi, host/samples), and the two
  console scripts;
- pyproject.toml's explicit ``packages`` list names every package folder, so a new subpackage
  cannot be left out of the wheel silently;
- no module of the project imports a bare ``host``/``device``/``certs``/``protos`` (import
  statements, module names given to importlib/``-m``/``-c``/mock paths); a checkout on sys.path
  hides such an import, an installed wheel does not;
- (slow) the wheel installed without ``-e`` into a fresh venv, run from outside the checkout,
  runs ``edgetune demo --json`` and ``edgetune-agent --help``, and puts nothing but
  ``edgetune`` at the top of site-packages.

The wheel is built once per module, from a copy of the working tree (so no build/ or
*.egg-info lands in the checkout).
"""

from __future__ import annotations

import ast
import base64
import configparser
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Set, Tuple

import pytest

try:
    import tomllib
except ImportError:  # pragma: no cover - Python < 3.11
    import tomli as tomllib  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parent.parent
PARTS = ("host", "device", "certs", "protos")          # repository folder == edgetune.<part>
ROOT_DIR = Path("src") / "edgetune"                    # the package root, edgetune itself
SCANNED = PARTS + ("src", "tests", "bench", "tools", "fuzz")
SCRIPTS = {"edgetune": "edgetune.host.cli:entry", "edgetune-agent": "edgetune.device.cli:main"}
# What a copy of the tree for building leaves out: caches, earlier builds, VCS.
NOT_COPIED = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__",
                                    ".pytest_cache", ".benchmarks", ".venv", "*.pyc",
                                    "edgetune-demo*", "pki")


def version() -> str:
    tree = ast.parse((REPO / ROOT_DIR / "__init__.py").read_text())
    for node in tree.body:
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
                and any(isinstance(t, ast.Name) and t.id == "__version__" for t in node.targets)):
            return str(node.value.value)
    raise AssertionError("src/edgetune/__init__.py defines no __version__ = '...'")


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def package_dirs() -> Dict[str, Path]:
    """Every package of the checkout (a folder holding __init__.py) by its installed name."""
    found: Dict[str, Path] = {}
    for prefix, top in [("edgetune", REPO / ROOT_DIR)] + [(f"edgetune.{p}", REPO / p) for p in PARTS]:
        for init in top.rglob("__init__.py"):
            if "__pycache__" in init.parts:
                continue
            rel = init.parent.relative_to(top).parts
            found[".".join((prefix, *rel))] = init.parent
    return found


def installed_path(path: Path) -> str:
    """``host/cli/x.py`` -> ``edgetune/host/cli/x.py``; ``src/edgetune/x`` -> ``edgetune/x``."""
    rel = path.relative_to(REPO)
    if rel.parts[:2] == ROOT_DIR.parts:
        return "/".join(("edgetune", *rel.parts[2:]))
    assert rel.parts[0] in PARTS, rel
    return "/".join(("edgetune", *rel.parts))


# ---------------------------------------------------------------------------- the wheel

@dataclass(frozen=True)
class Wheel:
    path: Path
    names: Tuple[str, ...]

    def read(self, name: str) -> bytes:
        with zipfile.ZipFile(self.path) as zf:
            return zf.read(name)

    @property
    def dist_info(self) -> str:
        return f"edgetune-{version()}.dist-info"


def _clean_env() -> Dict[str, str]:
    """The environment minus anything that would put the checkout on sys.path."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PYTHON") and k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INPUT"] = "1"
    return env


def _run(argv: Sequence[str], *, timeout: float, cwd: Path, env: Optional[Dict[str, str]] = None,
         ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                          cwd=str(cwd), env=env if env is not None else _clean_env())
    if ok:
        assert proc.returncode == 0, (f"{' '.join(map(str, argv))} exited {proc.returncode}:\n"
                                      f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Wheel:
    tree = tmp_path_factory.mktemp("tree") / "edgetune"
    shutil.copytree(REPO, tree, ignore=NOT_COPIED)
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(tree)],
         timeout=300, cwd=out)
    built = sorted(out.glob("*.whl"))
    assert [w.name for w in built] == [f"edgetune-{version()}-py3-none-any.whl"], built
    with zipfile.ZipFile(built[0]) as zf:
        names = tuple(i.filename for i in zf.infolist() if not i.is_dir())
    return Wheel(built[0], names)


def test_wheel_holds_only_the_edgetune_package_and_its_dist_info(wheel: Wheel) -> None:
    outside = [n for n in wheel.names
               if not (n.startswith("edgetune/") or n.startswith(wheel.dist_info + "/"))]
    assert outside == []
    assert wheel.read(f"{wheel.dist_info}/top_level.txt").decode().split() == ["edgetune"]
    assert not [n for n in wheel.names if "__pycache__" in n or n.endswith(".pyc")]
    metadata = wheel.read(f"{wheel.dist_info}/METADATA").decode()
    assert f"\nVersion: {version()}\n" in metadata


def package_files() -> List[Path]:
    """Every file of every package folder (modules and data), caches aside, with the files of
    its data folders that are no package of their own (host/deploy/templates/)."""
    packages = set(package_dirs().values())
    files = []
    for d in packages:
        for f in d.rglob("*"):
            if not f.is_file() or f.suffix in (".pyc", ".pyo") or "__pycache__" in f.parts:
                continue
            between = f.parent
            while between != d and between not in packages:
                between = between.parent
            if between == d:                # the file's nearest package folder is d
                files.append(f)
    return sorted(files)


def test_wheel_holds_every_module_and_data_file_of_the_checkout(wheel: Wheel) -> None:
    shipped = {n for n in wheel.names if n.startswith("edgetune/")}
    files = {installed_path(f): f for f in package_files()}
    assert sorted(set(files) - shipped) == [], "files of the package folders left out of the wheel"
    assert sorted(shipped - set(files)) == [], "files in the wheel that the checkout does not have"
    for name, source in files.items():     # byte for byte: no stale copy from an earlier build
        assert wheel.read(name) == source.read_bytes(), name
    # What must never go missing: the generated wire code with its sources and stubs, and the
    # sample files the demo runs.
    for name in ("agent_pb2.py", "agent_pb2_grpc.py", "onnx_subset_pb2.py", "agent.proto",
                 "onnx_subset.proto", "agent_pb2.pyi", "onnx_subset_pb2.pyi"):
        assert f"edgetune/protos/{name}" in shipped, name
    for name in ("digits_cnn.onnx", "digits_test.npz", "digits_calib.npz", "README.md"):
        assert f"edgetune/host/samples/{name}" in shipped, name


def test_wheel_record_lists_every_file_with_its_hash(wheel: Wheel) -> None:
    record = f"{wheel.dist_info}/RECORD"
    rows = {}
    for line in wheel.read(record).decode().splitlines():
        name, digest, _size = line.rsplit(",", 2)
        rows[name] = digest
    assert set(rows) == set(wheel.names)
    for name, digest in rows.items():
        if name != record:
            raw = hashlib.sha256(wheel.read(name)).digest()
            assert digest == "sha256=" + base64.urlsafe_b64encode(raw).rstrip(b"=").decode(), name


def test_wheel_entry_points_are_the_two_commands(wheel: Wheel) -> None:
    parser = configparser.ConfigParser()
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(wheel.read(f"{wheel.dist_info}/entry_points.txt").decode())
    assert {s: dict(parser[s]) for s in parser.sections()} == {"console_scripts": SCRIPTS}
    assert pyproject()["project"]["scripts"] == SCRIPTS


# ---------------------------------------------------------------------------- pyproject

def test_pyproject_packages_list_names_every_package_folder() -> None:
    setuptools_cfg = pyproject()["tool"]["setuptools"]
    assert setuptools_cfg["package-dir"] == {"edgetune": str(ROOT_DIR.as_posix()),
                                             **{f"edgetune.{p}": p for p in PARTS}}
    listed = setuptools_cfg["packages"]
    assert len(listed) == len(set(listed)), "a package is listed twice"
    assert sorted(listed) == sorted(package_dirs()), (
        "pyproject.toml [tool.setuptools] packages must list exactly the folders holding an "
        "__init__.py under src/edgetune, host, device, certs, protos")


def test_every_folder_with_modules_is_a_package() -> None:
    """A folder of .py files without __init__.py would be a namespace package, which the
    explicit list (and so the wheel) leaves out without a word."""
    missing = []
    for top in [REPO / ROOT_DIR] + [REPO / p for p in PARTS]:
        for folder in [top, *(d for d in top.rglob("*") if d.is_dir())]:
            if "__pycache__" in folder.parts:
                continue
            if any(folder.glob("*.py")) and not (folder / "__init__.py").is_file():
                missing.append(str(folder.relative_to(REPO)))
    assert missing == []


# ---------------------------------------------------------------------------- bare imports

BARE = frozenset(PARTS)
# Calls whose first argument is a module (or module.attribute) path.
MODULE_ARG_CALLS = frozenset({
    "importlib.import_module", "import_module", "__import__", "importlib.__import__",
    "importlib.util.find_spec", "util.find_spec", "find_spec", "runpy.run_module", "run_module",
    "pytest.importorskip", "importorskip", "pkgutil.get_data", "get_data",
    "importlib.resources.files", "resources.files", "importlib.resources.path", "resources.path",
    "importlib.resources.read_text", "resources.read_text", "importlib.resources.read_binary",
    "resources.read_binary", "importlib.resources.open_binary", "resources.open_binary",
    "importlib.resources.open_text", "resources.open_text", "importlib.resources.contents",
    "resources.contents", "importlib.resources.is_resource", "resources.is_resource",
    "mock.patch", "patch", "unittest.mock.patch", "mock.patch.dict", "patch.dict",
    "monkeypatch.setattr", "monkeypatch.delattr", "monkeypatch.setitem",
})
# Names imported `from importlib.resources import files` etc. count as the dotted call.
RESOURCE_NAMES = frozenset({"files", "path", "read_text", "read_binary", "open_binary",
                            "open_text", "contents", "is_resource"})
PRAGMA = "# bare-import-ok"
SHELL_DASH_M = re.compile(r"(?:^|\s)-m\s+(host|device|certs|protos)(?=$|[\s.'\"`])")


def _root(module: str) -> str:
    return module.split(".", 1)[0]


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return f"{inner}.{node.attr}" if inner else ""
    return ""


def _string(node: ast.AST) -> Optional[str]:
    """A literal string, or the literal head of an f-string (``f"host.cli.{x}"`` -> host.cli.)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr) and node.values:
        return _string(node.values[0])
    return None


def _docstrings(tree: ast.AST) -> Set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and _string(body[0].value) is not None:
                ids.add(id(body[0].value))
    return ids


def bare_imports(source: str, filename: str = "<snippet>") -> List[str]:
    """``line: what`` for every bare host/device/certs/protos import in ``source``: import
    statements, module paths passed to importlib & co (and mock/monkeypatch targets),
    ``-m MODULE`` in argument lists or command strings, and Python code given as a string
    (``-c`` programs) when it parses. A line ending in ``# bare-import-ok`` is not reported
    (only this module's scanner examples and the previous release's agent in
    test_compat_py39.py carry it)."""
    tree = ast.parse(source, filename)
    allowed = {n for n, text in enumerate(source.splitlines(), 1)
               if text.rstrip().endswith(PRAGMA)}
    hits: List[Tuple[int, str]] = []
    docstrings = _docstrings(tree)
    resource_aliases = {a.asname or a.name for node in ast.walk(tree)
                        if isinstance(node, ast.ImportFrom) and node.module in (
                            "importlib.resources", "importlib_resources")
                        for a in node.names if a.name in RESOURCE_NAMES}
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Import):
            hits += [(line, f"import {a.name}") for a in node.names if _root(a.name) in BARE]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module and _root(node.module) in BARE:
                hits.append((line, f"from {node.module} import ..."))
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            if node.args and (name in MODULE_ARG_CALLS or name in resource_aliases):
                target = _string(node.args[0])
                if target is not None and _root(target) in BARE:
                    hits.append((line, f"{name}({target!r})"))
        if isinstance(node, (ast.List, ast.Tuple, ast.Call)):
            items = node.args if isinstance(node, ast.Call) else node.elts
            for flag, value in zip(items, items[1:]):
                if _string(flag) == "-m":
                    target = _string(value)
                    if target is not None and _root(target) in BARE:
                        hits.append((line, f"-m {target}"))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and id(node) not in docstrings:
            match = SHELL_DASH_M.search(node.value)
            if match:
                hits.append((line, f"'-m {match.group(1)}' in a string"))
            if "import" in node.value:
                try:
                    inner = bare_imports(node.value, filename)
                except (SyntaxError, ValueError, RecursionError, MemoryError):
                    inner = []
                hits += [(line, f"in a code string: {what}") for what in inner]
    return [f"{line}: {what}" for line, what in hits if line not in allowed]


def project_modules() -> Iterator[Path]:
    for top in SCANNED:
        for path in sorted((REPO / top).rglob("*.py")):
            if "__pycache__" not in path.parts:
                yield path


@pytest.mark.parametrize("snippet, expected", [
    ("import host", ["1: import host"]),  # bare-import-ok
    ("import os, protos.agent_pb2 as pb", ["1: import protos.agent_pb2"]),  # bare-import-ok
    ("from device.cli import main", ["1: from device.cli import ..."]),  # bare-import-ok
    ("from certs import pki", ["1: from certs import ..."]),  # bare-import-ok
    ("import importlib\nimportlib.import_module('host.cli.demo_cmd')",  # bare-import-ok
     ["2: importlib.import_module('host.cli.demo_cmd')"]),  # bare-import-ok
    ("from importlib import import_module\nimport_module(f'host.cli.{name}')",  # bare-import-ok
     ["2: import_module('host.cli.')"]),  # bare-import-ok
    ("import importlib.resources\nimportlib.resources.files('host') / 'samples'",  # bare-import-ok
     ["2: importlib.resources.files('host')"]),  # bare-import-ok
    ("from importlib.resources import files as f\nf('device')", ["2: f('device')"]),  # bare-import-ok
    ("monkeypatch.setattr('device.runner.run', None)",  # bare-import-ok
     ["1: monkeypatch.setattr('device.runner.run')"]),  # bare-import-ok
    ("subprocess.run([sys.executable, '-m', 'device', 'serve'])", ["1: -m device"]),  # bare-import-ok
    ("cmd = (python, '-m', 'host.cli', 'demo')", ["1: -m host.cli"]),  # bare-import-ok
    ("os.system('python3 -m protos.codegen --check')", ["1: '-m protos' in a string"]),  # bare-import-ok
    ("CODE = 'import sys; import protos.agent_pb2_grpc'",  # bare-import-ok
     ["1: in a code string: 1: import protos.agent_pb2_grpc"]),  # bare-import-ok
    # Not bare: the edgetune package, relative imports, look-alike names, prose, docstrings.
    ("import edgetune.host\nfrom edgetune.protos import agent_pb2\nfrom . import device", []),  # bare-import-ok
    ("import hostname, devices, certifi, protoslib\nfrom .certs import x", []),  # bare-import-ok
    ("subprocess.run([py, '-m', 'edgetune.device', 'serve'])", []),  # bare-import-ok
    ('"""``python -m device serve`` once started the agent."""\nx = {"device": 1}', []),  # bare-import-ok
    ("help = 'the device to import models to'\nsetattr(obj, 'host', 1)", []),  # bare-import-ok
])
def test_bare_import_scanner(snippet: str, expected: List[str]) -> None:
    """The scanner itself: it finds each way a bare part can be imported, and only those."""
    assert bare_imports(snippet) == expected


def test_no_module_imports_a_bare_part() -> None:
    offenders = [f"{path.relative_to(REPO)}:{hit}"
                 for path in project_modules()
                 for hit in bare_imports(path.read_text(encoding="utf-8"), str(path))]
    assert offenders == [], ("import edgetune.<part>, never a bare host/device/certs/protos "
                             "(a checkout on sys.path hides it; an installed wheel does not):\n"
                             + "\n".join(offenders))


def test_scan_covers_the_project() -> None:
    modules = list(project_modules())
    assert {p.relative_to(REPO).parts[0] for p in modules} >= set(PARTS) | {"src", "tests", "bench"}
    assert Path(__file__).resolve() in modules
    pragmas = {str(p.relative_to(REPO)) for p in modules
               if any(line.rstrip().endswith(PRAGMA) for line in p.read_text().splitlines())}
    # The scanner's own examples, and the 0.1.0 agent run by the wire-compatibility test.
    assert pragmas <= {"tests/test_packaging.py", "tests/test_compat_py39.py"}, pragmas


# ---------------------------------------------------------------------------- installed

def _site_packages(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python3*/site-packages"))
    assert len(found) == 1, found
    return found[0]


def _make_venv(where: Path, cwd: Path) -> Path:
    """A fresh venv; without its own pip when this pip can install into another interpreter
    (``pip --python``, pip >= 22.3): skips ensurepip, seconds per run."""
    from importlib.metadata import version as dist_version
    pip_version = tuple(int(p) for p in re.findall(r"\d+", dist_version("pip"))[:2])
    own_pip = pip_version < (22, 3)
    _run([sys.executable, "-m", "venv", *([] if own_pip else ["--without-pip"]), str(where)],
         timeout=120, cwd=cwd)
    return where / "bin" / "python"


@pytest.mark.slow
def test_wheel_installed_without_e_runs_the_demo_and_the_agent(
        wheel: Wheel, tmp_path_factory: pytest.TempPathFactory) -> None:
    outside = tmp_path_factory.mktemp("outside")          # cwd: no checkout anywhere near
    venv = outside / "venv"
    py = _make_venv(venv, outside)
    pip = ([str(py), "-m", "pip"] if (venv / "bin" / "pip").exists()
           else [sys.executable, "-m", "pip", "--python", str(py)])
    _run([*pip, "install", "--quiet", "--no-compile", f"{wheel.path}[host,device]"],
         timeout=600, cwd=outside)
    bin_dir = venv / "bin"
    site = _site_packages(venv)

    # The package comes from the venv, not from a checkout (no PYTHONPATH, cwd outside).
    where = _run([str(py), "-c", "import edgetune, sys; print(edgetune.__file__); "
                  "print(edgetune.__version__); print(sys.path)"], timeout=60, cwd=outside)
    location, installed_version, path = where.stdout.splitlines()
    assert Path(location).parent == site / "edgetune"
    assert installed_version == version()
    assert str(REPO) not in path
    for part in PARTS:
        proc = _run([str(py), "-c", f"import {part}"], timeout=60, cwd=outside, ok=False)
        assert proc.returncode == 1 and f"No module named '{part}'" in proc.stderr, proc.stderr

    # Only edgetune (and its dist-info, and the two scripts) from our dist's RECORD.
    record = site / f"edgetune-{version()}.dist-info" / "RECORD"
    tops = {line.split(",")[0].split("/")[0] for line in record.read_text().splitlines()}
    scripts = {line.split(",")[0] for line in record.read_text().splitlines()
               if line.startswith("..")}
    assert tops - {".."} == {"edgetune", f"edgetune-{version()}.dist-info"}
    assert {Path(s).name for s in scripts} == set(SCRIPTS)
    assert {p.name for p in site.iterdir() if p.name.split("-")[0] in BARE} == set()

    agent_help = _run([str(bin_dir / "edgetune-agent"), "--help"], timeout=60, cwd=outside)
    assert "serve" in agent_help.stdout

    # The whole loop from the wheel alone: shipped samples, a local agent started as
    # `python -m edgetune.device`, quantize, bench and eval of both models.
    env = _clean_env()
    env["TMPDIR"] = str(outside)                           # the demo's throw-away directory
    demo = _run([str(bin_dir / "edgetune"), "demo", "--quick", "--json"], timeout=300,
                cwd=outside, env=env)                      # the few-second demo
    doc = json.loads(demo.stdout)
    assert doc["info"]["agent_version"] == version()
    assert [r["model"] for r in doc["bench"]["results"]] == ["digits_cnn.onnx",
                                                             "digits_cnn.int8.onnx"]
    assert all(r["latency_ms"]["p50"] > 0 for r in doc["bench"]["results"])
    assert [r["samples"] for r in doc["eval"]["results"]] == [450, 450]
    assert all(r["metrics"]["top1"] >= 0.97 for r in doc["eval"]["results"])
