"""Boards run Python 3.9: the device extra installs there from PyPI, and an agent started by
Python 3.9 serves this (newer) host over mutual TLS: info, bench and eval of the shipped digits
model, health and reflection.

Board environments, each a fresh venv (built once per module):

- ``newest``: ``pip install 'SRC[device]'``, whatever PyPI resolves for Python 3.9 today;
- ``floors``: every ``>=`` floor of pyproject.toml's dependencies and device extra pinned with
  ``==`` (wheels only), then ``pip check``, so the declared floors are the versions that ran.

The agent is started with the venv's ``edgetune-agent`` script, from a directory outside the
checkout and without PYTHONPATH: the installed ``edgetune`` package is what runs.

Wire compatibility with the previous release: the 0.1.0 agent (``PREVIOUS_RELEASE``, the last
commit with the bare top-level packages, taken from git history with ``git archive``) is
installed with ``pip --target`` beside the ``newest`` venv's dependencies and answers this
host's info, bench and eval (the wire package ``edgetune.agent.v1`` did not change).

Needs a Python 3.9 interpreter ($EDGETUNE_PYTHON39, else ``python3.9`` on PATH, else pyenv's
3.9.x) and PyPI (or a pip cache) for the wheels. Without the interpreter (or, for the
previous-release test, without the git history) the tests skip, unless the ``CI`` environment
variable is set: then they fail, so CI cannot go green without running them. About a minute
with a warm pip cache.
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import re
import shutil
import signal
import subprocess
import tarfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, NoReturn, Optional, Sequence

import pytest

from tests.agent_fixtures import channel, wait_ready
from tests.host_fixtures import DIGITS_MODEL, DIGITS_TEST, ONE_DIGIT, run_cli, write_passphrase_file

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parent.parent
PIP_TIMEOUT = 600
# 0.1.0 as released: the parent of the namespace move (536ae98), whose wheel installed the bare
# top-level packages host/device/certs/protos. Its agent must keep answering newer hosts.
PREVIOUS_RELEASE = "8ad172614eea19edeac30a3162b6195bb6048f64"
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


def cannot_run(reason: str) -> NoReturn:
    """Skip on a developer's machine; fail under CI (``CI`` set), where this must run."""
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def python39() -> str:
    exe = find_python39()
    if exe is None:
        cannot_run("no Python 3.9 interpreter: set EDGETUNE_PYTHON39, put python3.9 on PATH, "
                   "or install 3.9 with pyenv (~/.pyenv/versions/3.9*)")
    return exe


@pytest.fixture(scope="module")
def source_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The working tree as ``pip install .`` sees it, copied so pip's build files never land
    in the checkout."""
    src = tmp_path_factory.mktemp("src") / "edgetune"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", "__pycache__", "*.egg-info", "build", "dist", ".pytest_cache", ".benchmarks",
        ".venv", "pki", "edgetune-demo*"))
    return src


@pytest.fixture(scope="module")
def board_python(python39: str, source_tree: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``board_python(deps)``: the python of that board venv, made on first use."""
    made: Dict[str, Path] = {}

    def get(deps: str) -> Path:
        if deps not in made:
            made[deps] = board_venv(python39, source_tree, tmp_path_factory.mktemp(deps) / "venv",
                                    deps)
        return made[deps]
    return get


def _env() -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _run(argv: List[str], timeout: float = PIP_TIMEOUT,
         env: Optional[Dict[str, str]] = None, **kwargs: Any) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          env=env if env is not None else _env(), **kwargs)
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


@contextlib.contextmanager
def serving_agent(argv: Sequence[str], pki: Any, board: Path,
                  env: Optional[Dict[str, str]] = None) -> Iterator[str]:
    """Run ``ARGV serve --config agent.toml`` in ``board`` (mutual TLS, port 0) until the
    block ends; yields its address. On exit: SIGTERM, status 0 and no traceback in its log."""
    board.mkdir(parents=True, exist_ok=True)
    ready = board / "ready"
    (board / "agent.toml").write_text(
        'listen = "127.0.0.1:0"\n'
        f'ca = "{pki.ca_cert}"\ncert = "{pki.device.cert}"\nkey = "{pki.device.key}"\n'
        f'store = "{board / "store"}"\nready_file = "{ready}"\n')
    log = board / "agent.log"
    env = dict(env if env is not None else _env())
    env["EDGETUNE_PASSPHRASE"] = pki.passphrase.decode()
    with open(log, "wb") as err:
        agent = subprocess.Popen([*argv, "serve", "--config", "agent.toml"], cwd=str(board),
                                 env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=err)
    try:
        yield wait_ready(agent, ready, log, timeout=60)
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(30)
        except subprocess.TimeoutExpired:  # pragma: no cover - a hung agent
            agent.kill()
            agent.wait(10)
    assert agent.returncode == 0, log.read_text(errors="replace")
    assert "Traceback" not in log.read_text(errors="replace")


def this_host_uses(address: str, pki: Any, tmp_path: Path, capsys: pytest.CaptureFixture,
                   onnxruntime_version: str, signs: bool = True,
                   quantized: Optional[Path] = None) -> None:
    """This checkout's host (in-process, Python 3.11) against the agent at ``address``: info,
    bench (its record's signature verified: ``signs``, else unsigned) and eval of the shipped
    digits model, and a health check."""
    conn = ["--address", address, "--ca", str(pki.ca_cert), "--cert", str(pki.host.cert),
            "--key", str(pki.host.key), "--passphrase-file",
            str(write_passphrase_file(tmp_path / "passphrase", pki.passphrase))]

    info = run_cli(capsys, "info", *conn, "--json")
    assert info.code == 0, info.err
    assert info.json["python_version"].startswith("3.9.")
    assert info.json["onnxruntime_version"] == onnxruntime_version
    assert (info.json["agent_name"], info.json["caller_name"]) == ("board1", "laptop")

    bench = run_cli(capsys, "bench", str(DIGITS_MODEL), "--shape", ONE_DIGIT,
                    "--iterations", "20", "--warmup", "2", *conn, "--json")
    assert bench.code == 0, bench.err
    result = bench.json["results"][0]
    assert result["iterations"] == 20 and 0 < result["latency_ms"]["p50"] < 1000
    verified = run_cli(capsys, "results", "verify", result["result_id"], "--ca",
                       str(pki.ca_cert), "--json")
    assert verified.code == 0, verified.out + verified.err
    assert verified.json["results"][0]["status"] == ("valid" if signs else "unsigned")

    # Provider options: this release's agent takes them and says where the nodes ran; the
    # previous release would run without them, so the host refuses to send them there.
    option = run_cli(capsys, "bench", str(DIGITS_MODEL), "--shape", ONE_DIGIT, "--iterations",
                     "5", "--warmup", "1", "--provider-option",
                     "CPUExecutionProvider:arena_extend_strategy=kSameAsRequested", *conn, "--json")
    if signs:
        assert option.code == 0, option.err
        assert option.json["results"][0]["provider_nodes"]["CPUExecutionProvider"] > 0
    else:
        assert option.code == 10                        # --json: the error is on stdout
        assert "does not take execution-provider options" in option.out + option.err
        profiled = run_cli(capsys, "bench", str(DIGITS_MODEL), "--shape", ONE_DIGIT,
                           "--iterations", "5", "--profile", *conn, "--json")
        assert profiled.code == 10 and "cannot profile operators" in profiled.out + profiled.err

    evaluation = run_cli(capsys, "eval", str(DIGITS_MODEL), "--dataset", str(DIGITS_TEST),
                         *conn, "--json")
    assert evaluation.code == 0, evaluation.err
    metrics = evaluation.json["results"][0]["metrics"]
    assert evaluation.json["results"][0]["samples"] == 450
    assert metrics["top1"] > 0.99 and metrics["cosine"] > 0.9999   # 448/450, as on 3.11

    if quantized is not None:    # the board's tensors written and streamed back by a 3.9 agent
        analysed = run_cli(capsys, "analyze", str(DIGITS_MODEL), str(quantized), "--calib",
                           str(DIGITS_MODEL.parent / "digits_calib.npz"), "--calib-count", "4",
                           *conn, "--json")
        if onnxruntime_version.startswith("1.12."):
            # onnxruntime 1.12 returns no value for outputs whose nodes its QDQ fusion folded
            # away: a clear refusal that names them (it crashed the job with a TypeError)
            assert analysed.code == 3, analysed.out + analysed.err
            assert "returned no value for" in analysed.out and "fused away" in analysed.out
            assert "relu1_out_DequantizeLinear_Output" in analysed.out
            quantized = None
    if quantized is not None:
        assert analysed.code == 0, analysed.out + analysed.err
        board = analysed.json["board"]
        assert board["stream"]["chunks"] >= 1 and board["samples"] == 4
        for t in board["tensors"]:      # another onnxruntime build on the board: close, not exact
            assert t["board_vs_host_int8"]["cosine"] > 0.999, t

    from grpc_health.v1 import health_pb2, health_pb2_grpc
    with channel(address, pki.host.identity) as ch:
        status = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service="edgetune.agent.v1.Agent"), timeout=30)
    assert status.status == health_pb2.HealthCheckResponse.SERVING


def installed_versions(py: Path, cwd: Path, env: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    return json.loads(_run([str(py), "-c", VERSIONS], timeout=120, cwd=str(cwd), env=env))


@pytest.mark.parametrize("deps", ["newest", "floors"])
def test_python39_agent_serves_this_host(deps: str, board_python: Callable[[str], Path],
                                         pki: Any, tmp_path: Path,
                                         capsys: pytest.CaptureFixture, digits_q: Path) -> None:
    py = board_python(deps)
    versions = installed_versions(py, tmp_path)
    assert versions["python"] == [3, 9]
    if deps == "floors":                  # the floors, not something newer, are what runs
        for pin in declared_floors():
            name, _, floor = pin.split(";")[0].partition("==")
            if name in versions:
                wanted = _base_version(floor)
                assert _base_version(versions[name])[:len(wanted)] == wanted, (name, versions)

    # The agent reads a TOML config on 3.9 (tomllib's fallback, tomli) and runs the installed
    # package: the venv's console script, cwd outside the checkout, no PYTHONPATH.
    with serving_agent([str(py.parent / "edgetune-agent")], pki, tmp_path / "board") as address:
        # analyze --device on both: `edgetune quantize` drops the opset imports no node uses
        # (onnxruntime's optimizer declares ai.onnx.ml 5, which the floors' onnxruntime refused
        # to load); the floors' onnxruntime then loads the model but cannot give the tensors
        this_host_uses(address, pki, tmp_path, capsys, versions["onnxruntime"],
                       quantized=digits_q)


@pytest.fixture(scope="module")
def previous_release(python39: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """0.1.0 from git history, installed (``pip --target``, no dependencies) into a folder."""
    try:
        proc = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", PREVIOUS_RELEASE],
                              capture_output=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as exc:
        cannot_run(f"git archive of the previous release failed: {exc}")
    if proc.returncode != 0:
        cannot_run(f"the previous release {PREVIOUS_RELEASE[:12]} is not in this clone's history "
                   f"(a shallow clone?): {proc.stderr.decode(errors='replace').strip()}")
    tree = tmp_path_factory.mktemp("previous") / "edgetune-0.1.0"
    with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as tar:
        # The "data" filter where this Python has it (3.11.4+): plain files under tree only.
        tar.extractall(tree, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    target = tree.parent / "site"
    _run([python39, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
          str(tree)])
    return target


def test_previous_release_agent_serves_this_host(board_python: Callable[[str], Path],
                                                 previous_release: Path, pki: Any,
                                                 tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    """Wire compatibility across the namespace move: the 0.1.0 agent (bare ``device``
    package, descriptor registered as protos/agent.proto) answers this host."""
    py = board_python("newest")          # the same dependencies, the old agent code first
    env = _env()
    env["PYTHONPATH"] = str(previous_release)
    # 0.1.0's bare packages, on purpose (tests/test_packaging.py's scan lets these two lines be):
    code = "import device, protos.agent_pb2 as pb; print(device.__file__); "  # bare-import-ok
    code += "print(pb.DESCRIPTOR.name, pb.DESCRIPTOR.package)"
    where = _run([str(py), "-c", code], timeout=60, cwd=str(tmp_path), env=env).split("\n")
    assert Path(where[0]).is_relative_to(previous_release), where
    assert where[1] == "protos/agent.proto edgetune.agent.v1"      # the 0.1.0 registration
    versions = installed_versions(py, tmp_path, env)
    agent = [str(py), "-m", "device"]  # bare-import-ok
    with serving_agent(agent, pki, tmp_path / "board", env) as address:
        this_host_uses(address, pki, tmp_path, capsys, versions["onnxruntime"], signs=False)


def test_previous_release_agent_is_refused_for_analyze_on_the_board(
        board_python: Callable[[str], Path], previous_release: Path, pki: Any, tmp_path: Path,
        capsys: pytest.CaptureFixture, digits_q: Path) -> None:
    """``analyze --device`` needs the board's tensors back (ReadJobOutput, the ``job_output``
    feature); the 0.1.0 agent has neither, so the host refuses before sending anything, with
    the incompatible exit code and both versions named."""
    from edgetune import __version__
    py = board_python("newest")
    env = _env()
    env["PYTHONPATH"] = str(previous_release)
    agent = [str(py), "-m", "device"]  # bare-import-ok
    with serving_agent(agent, pki, tmp_path / "board", env) as address:
        conn = ["--address", address, "--ca", str(pki.ca_cert), "--cert", str(pki.host.cert),
                "--key", str(pki.host.key), "--passphrase-file",
                str(write_passphrase_file(tmp_path / "passphrase", pki.passphrase))]
        r = run_cli(capsys, "analyze", str(DIGITS_MODEL), str(digits_q), "--calib", str(DIGITS_MODEL.parent / "digits_calib.npz"),
                    "--calib-count", "4", *conn)
    assert r.code == 10, (r.code, r.err)
    assert "runs edgetune 0.1.0" in r.err and f"this PC runs edgetune {__version__}" in r.err
    assert "cannot send a job's output tensors back" in r.err
    assert not (tmp_path / "board" / "store" / "models").exists() or \
        not list((tmp_path / "board" / "store" / "models").iterdir())
