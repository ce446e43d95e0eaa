"""Boards run Python 3.9: the device extra installs there from PyPI, and an agent started by
Python 3.9 serves this (newer) host over mutual TLS: info, bench and eval of the shipped digits
model, health and reflection.

Two board environments, each a fresh venv under tmp_path:

- ``newest``: ``pip install 'SRC[device]'``, whatever PyPI resolves for Python 3.9 today;
- ``floors``: every ``>=`` floor of pyproject.toml's dependencies and device extra pinned with
  ``==`` (wheels only), then ``pip check``, so the declared floors are the versions that ran.

Needs a Python 3.9 interpreter ($EDGETUNE_PYTHON39, else ``python3.9`` on PATH, else pyenv's
3.9.x) and PyPI (or a pip cache) for the wheels; skipped without the interpreter. About a
minute with a warm pip cache.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from tests.agent_fixtures import channel, wait_ready
from tests.host_fixtures import DIGITS_MODEL, DIGITS_TEST, ONE_DIGIT, run_cli, write_passphrase_file

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parent.parent
PIP_TIMEOUT = 600
VERSIONS = """\
import json, sys
import cryptography, grpc, google.protobuf, numpy, onnxruntime
from google.protobuf.internal import api_implementation
print(json.dumps({"python": list(sys.version_info[:2]), "grpcio": grpc.__version__,
                  "protobuf": google.protobuf.__version__, "upb": api_implementation.Type(),
                  "onnxruntime": onnxruntime.__version__, "numpy": numpy.__version__,
                  "cryptography": cryptography.__version__}))
"""


def _is_python39(exe: str) -> bool:
    try:
        out = subprocess.run([exe, "-c", "import sys; print(sys.version_info[:2] == (3, 9))"],
                             capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return out.strip() == "True"


def find_python39() -> Optional[str]:
    candidates: List[str] = []
    if os.environ.get("EDGETUNE_PYTHON39"):
        candidates.append(os.environ["EDGETUNE_PYTHON39"])
    if shutil.which("python3.9"):
        candidates.append(shutil.which("python3.9") or "")
    pyenv_root = os.environ.get("PYENV_ROOT") or str(Path.home() / ".pyenv")
    candidates += sorted(glob.glob(os.path.join(pyenv_root, "versions", "3.9*", "bin", "python3.9")),
                         reverse=True)
    return next((exe for exe in candidates if exe and _is_python39(exe)), None)


def declared_floors() -> List[str]:
    """``name==floor[; marker]`` for every base and device requirement of pyproject.toml."""
    try:
        import tomllib
    except ImportError:  # pragma: no cover - Python < 3.11
        import tomli as tomllib
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = []
    for req in project["dependencies"] + project["optional-dependencies"]["device"]:
        spec, _, marker = req.partition(";")
        match = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*>=\s*([0-9][0-9.]*)", spec)
        assert match, f"{req!r} in pyproject.toml has no >= floor"
        pins.append(f"{match.group(1)}=={match.group(2)}" + (f";{marker}" if marker else ""))
    return pins


@pytest.fixture(scope="module")
def python39() -> str:
    exe = find_python39()
    if exe is None:
        pytest.skip("no Python 3.9 interpreter: set EDGETUNE_PYTHON39, or put python3.9 on PATH")
    return exe


@pytest.fixture(scope="module")
def source_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What ``pip install .`` needs, copied so pip's build files never land in the checkout."""
    src = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in ("protos", "certs", "device", "host"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    return src


def _env() -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _run(argv: List[str], timeout: float = PIP_TIMEOUT, **kwargs: Any) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=_env(),
                          **kwargs)
    assert proc.returncode == 0, f"{' '.join(argv)} failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    return proc.stdout


def board_venv(python39: str, src: Path, where: Path, deps: str) -> Path:
    """A Python 3.9 venv with this checkout's device extra; returns its python."""
    _run([python39, "-m", "venv", str(where)], timeout=120)
    py = where / "bin" / "python"
    pip = [str(py), "-m", "pip", "install", "--quiet"]
    if deps == "newest":
        _run(pip + [f"{src}[device]"])
    else:
        _run(pip + ["--only-binary=:all:", *declared_floors()])
        _run(pip + ["--no-deps", str(src)])
        _run([str(py), "-m", "pip", "check"], timeout=120)
    return py


def _base_version(version: str) -> List[int]:
    return [int(part) for part in re.findall(r"\d+", version)[:3]]


@pytest.mark.parametrize("deps", ["newest", "floors"])
def test_python39_agent_serves_this_host(deps: str, python39: str, source_tree: Path,
                                         pki: Any, tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    py = board_venv(python39, source_tree, tmp_path / "venv", deps)
    versions = json.loads(_run([str(py), "-c", VERSIONS], timeout=120, cwd=str(tmp_path)))
    assert versions["python"] == [3, 9]
    if deps == "floors":                  # the floors, not something newer, are what runs
        for pin in declared_floors():
            name, _, floor = pin.split(";")[0].partition("==")
            if name in versions:
                wanted = _base_version(floor)
                assert _base_version(versions[name])[:len(wanted)] == wanted, (name, versions)

    # The agent reads a TOML config on 3.9 (tomllib's fallback, tomli) and imports the
    # installed package: cwd is outside the checkout and no PYTHONPATH is passed on.
    board = tmp_path / "board"
    board.mkdir()
    ready = board / "ready"
    (board / "agent.toml").write_text(
        'listen = "127.0.0.1:0"\n'
        f'ca = "{pki.ca_cert}"\ncert = "{pki.device.cert}"\nkey = "{pki.device.key}"\n'
        f'store = "{board / "store"}"\nready_file = "{ready}"\n')
    log = board / "agent.log"
    env = _env()
    env["EDGETUNE_PASSPHRASE"] = pki.passphrase.decode()
    with open(log, "wb") as err:
        agent = subprocess.Popen([str(py), "-m", "device", "serve", "--config", "agent.toml"],
                                 cwd=str(board), env=env, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=err)
    try:
        address = wait_ready(agent, ready, log, timeout=60)
        conn = ["--address", address, "--ca", str(pki.ca_cert), "--cert", str(pki.host.cert),
                "--key", str(pki.host.key), "--passphrase-file",
                str(write_passphrase_file(tmp_path / "passphrase", pki.passphrase))]

        info = run_cli(capsys, "info", *conn, "--json")
        assert info.code == 0, info.err
        assert info.json["python_version"].startswith("3.9.")
        assert info.json["onnxruntime_version"] == versions["onnxruntime"]
        assert (info.json["agent_name"], info.json["caller_name"]) == ("board1", "laptop")

        bench = run_cli(capsys, "bench", str(DIGITS_MODEL), "--shape", ONE_DIGIT,
                        "--iterations", "20", "--warmup", "2", *conn, "--json")
        assert bench.code == 0, bench.err
        result = bench.json["results"][0]
        assert result["iterations"] == 20 and 0 < result["latency_ms"]["p50"] < 1000

        evaluation = run_cli(capsys, "eval", str(DIGITS_MODEL), "--dataset", str(DIGITS_TEST),
                             *conn, "--json")
        assert evaluation.code == 0, evaluation.err
        metrics = evaluation.json["results"][0]["metrics"]
        assert evaluation.json["results"][0]["samples"] == 450
        assert metrics["top1"] > 0.99 and metrics["cosine"] > 0.9999   # 448/450, as on 3.11

        from grpc_health.v1 import health_pb2, health_pb2_grpc
        with channel(address, pki.host.identity) as ch:
            status = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service="edgetune.agent.v1.Agent"), timeout=30)
        assert status.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(30)
        except subprocess.TimeoutExpired:  # pragma: no cover - a hung agent
            agent.kill()
            agent.wait(10)
    assert agent.returncode == 0, log.read_text(errors="replace")
    assert "Traceback" not in log.read_text(errors="replace")
