"""An emulated riscv64 board as a SpacemiT K1's Bianbu image has it (Debian 13, QEMU user
emulation; tests/emulated/): PyPI has no riscv64 onnxruntime or grpcio, so the board's Python
3.13 brings the distribution's own python3-onnxruntime, python3-grpcio, python3-protobuf,
python3-cryptography and python3-numpy, and this checkout's agent is installed with the
`agent` extra (no onnxruntime) into a venv that sees them. The x86 host reaches it over mutual
TLS: info says riscv64 and the distribution's onnxruntime; bench runs; eval's top-1 equals an
x86 agent's on the same model and data.

The root file system and the agent's layer are cached between runs (``python -m
tests.emulated build --arch riscv64``; see docs/boards.md for how long the first build
takes). Without root, QEMU's riscv64 binfmt entry, debootstrap or ip the test skips, unless
``CI`` is set: then it fails.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, Iterator

import pytest

from tests.emulated import layers, rootfs
from tests.emulated.board import EmulatedBoard
from tests.emulated.fixtures import (agent_config, assert_same_top1_as_x86, serving_agent,
                                     started_board, versions_in_board)
from tests.host_fixtures import (DIGITS_MODEL, DIGITS_TEST, ONE_DIGIT, RunningAgent, local_agent,
                                 run_cli, write_passphrase_file)

__all__ = ["local_agent"]          # the x86 agent the board's results are compared with

RECIPE = rootfs.DEBIAN13_RISCV64
# The board is some 660 times slower than this host: few iterations, generous deadlines.
pytestmark = [pytest.mark.slow, pytest.mark.board, pytest.mark.timeout(3600)]

SYSTEM_PACKAGES = "/usr/lib/python3/dist-packages/"


@pytest.fixture(scope="module")
def riscv_board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatedBoard]:
    """The riscv64 board with the cached agent layer and this checkout's edgetune wheel."""
    wheel = layers.build_edgetune_wheel(tmp_path_factory.mktemp("wheel"))
    with started_board(tmp_path_factory.mktemp("board"), with_agent_layer=True,
                       recipe=RECIPE) as board:
        layers.install_edgetune(board.root, wheel, board.workdir / "install.log")
        yield board


def modules_in_board(board: EmulatedBoard) -> Dict[str, Any]:
    """Where the agent's Python finds each library the distribution provides, and its version."""
    code = ("import json, sys, grpc, numpy, onnxruntime, cryptography, google.protobuf as pb\n"
            "mods = {'grpc': grpc, 'numpy': numpy, 'onnxruntime': onnxruntime,\n"
            "        'cryptography': cryptography, 'protobuf': pb}\n"
            "from importlib.metadata import version\n"
            "found = {k: {'file': m.__file__, 'version': m.__version__} for k, m in mods.items()}\n"
            "found['onnxruntime']['metadata_version'] = version('onnxruntime')\n"
            "print(json.dumps(found))")
    proc = board.run([f"{layers.AGENT_VENV}/bin/python", "-c", code], timeout=600)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def dpkg_version(board: EmulatedBoard, package: str) -> str:
    proc = board.run(["dpkg-query", "-W", "-f=${Version}", package], timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_riscv64_board_serves_with_the_distributions_onnxruntime(
        riscv_board: EmulatedBoard, pki: Any, local_agent: RunningAgent, tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    board = riscv_board
    versions = versions_in_board(board)
    assert (versions["machine"], versions["python"]) == ("riscv64", "3.13")
    # The distribution's packages, not PyPI's: found in Debian's dist-packages, at the versions
    # of Debian 13 (the old grpcio and protobuf the board side has to work with).
    modules = modules_in_board(board)
    for name, module in modules.items():
        assert module["file"].startswith(SYSTEM_PACKAGES), (name, module)
    assert modules["grpc"]["version"].startswith("1.51."), modules
    assert modules["protobuf"]["version"].startswith("4.21."), modules
    assert not list(board.path(layers.AGENT_VENV).glob("lib/python3*/site-packages/onnxruntime*"))
    onnxruntime_deb = dpkg_version(board, "python3-onnxruntime")

    agent_config(board, pki)
    passphrase = write_passphrase_file(tmp_path / "passphrase", pki.passphrase)
    # Deprecation warnings shown: the board's Python 3.13 is the newest the agent meets.
    with serving_agent(board, timeout=900,
                       env=layers.board_env(PYTHONWARNINGS="default")) as address:
        assert address.startswith(board.address + ":")
        conn = ["--address", address, "--ca", str(pki.ca_cert), "--cert", str(pki.host.cert),
                "--key", str(pki.host.key), "--passphrase-file", str(passphrase)]
        deadline = time.monotonic() + 600
        while True:             # the provider checks run in a thread started with the agent
            info = run_cli(capsys, "info", *conn, "--json")
            assert info.code == 0, info.err
            if info.json["provider_checks"] or time.monotonic() > deadline:
                break
            time.sleep(2)
        doc = info.json
        assert doc["arch"] == "riscv64", doc
        assert doc["python_version"].startswith("3.13."), doc
        assert doc["onnxruntime_version"] == versions["onnxruntime"]
        # Debian's egg-info says plain "onnxruntime"; the Debian package is named beside it.
        assert doc["onnxruntime_distribution"] == (
            f"onnxruntime {modules['onnxruntime']['metadata_version']}, "
            f"Debian package python3-onnxruntime {onnxruntime_deb}"), doc
        assert "CPUExecutionProvider" in doc["available_providers"]
        checks = {c["provider"]: c for c in doc["provider_checks"]}
        assert checks["CPUExecutionProvider"]["usable"] is True, doc

        # With the per-operator profile: onnxruntime 1.21's trace read on the board.
        bench = run_cli(capsys, "bench", str(DIGITS_MODEL), "--shape", ONE_DIGIT,
                        "--iterations", "10", "--warmup", "2", "--profile", *conn, "--json")
        assert bench.code == 0, bench.err
        result = bench.json["results"][0]
        assert result["iterations"] == 10 and 0 < result["latency_ms"]["p50"] < 5000
        nodes = result["provider_nodes"].get("CPUExecutionProvider", 0)
        assert nodes > 0, result
        profile = result["profile"]
        assert len(profile["nodes"]) == nodes, profile
        assert all(n["calls"] == 10 and n["provider"] == "CPUExecutionProvider"
                   for n in profile["nodes"]), profile
        # The optimized graph is riscv64's own (Conv+Relu fused as FusedConv; no x86 NCHWc).
        ops = {n["op_type"] for n in profile["nodes"]}
        assert "Gemm" in ops and any("Conv" in op for op in ops), ops
        with capsys.disabled():
            print(f"\nriscv64 board: optimized graph ops {sorted(ops)}")
        with capsys.disabled():
            print(f"\nriscv64 board: digits CNN p50 {result['latency_ms']['p50']:.2f} ms")

        board_eval = run_cli(capsys, "eval", str(DIGITS_MODEL), "--dataset", str(DIGITS_TEST),
                             *conn, "--json")
        assert board_eval.code == 0, board_eval.err
    # No warning raised by the agent's own code (the venv's edgetune). Debian's protobuf 4.21
    # warns about itself on Python 3.13 (its C extension's map types, utcfromtimestamp).
    log = (board.workdir / "agent.log").read_text(errors="replace").splitlines()
    ours = [line for line in log if "/site-packages/edgetune/" in line and "Warning:" in line]
    assert ours == [], ours
    assert_same_top1_as_x86(board_eval, local_agent, capsys)
