"""Fast checks of the riscv64 board's recipe and agent layer (tests/emulated/): the
distribution's packages go in with the board's apt-get, the arm64 board's cache keys do not
move for it, and the grpcio plug-ins are pinned to the distribution's grpcio."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from tests.emulated import layers, rootfs
from tests.emulated.__main__ import main as build_main

RISCV = rootfs.DEBIAN13_RISCV64
ARM = rootfs.DEBIAN11_ARM64


def test_the_riscv64_recipe_takes_the_distributions_packages() -> None:
    stamp = json.loads(RISCV.stamp())
    assert (stamp["arch"], stamp["qemu_arch"], stamp["suite"]) == ("riscv64", "riscv64", "trixie")
    assert {"python3-onnxruntime", "python3-grpcio", "python3-protobuf", "python3-cryptography",
            "python3-numpy"} <= set(stamp["apt_install"])
    # debootstrap's resolver cannot reach python3-onnxruntime's libre2 (a virtual package).
    assert not set(RISCV.include) & set(RISCV.apt_install)


def test_a_recipe_without_apt_packages_keeps_its_old_stamp() -> None:
    """The arm64 board's root file system cache (minutes to rebuild) is not invalidated by the
    field the riscv64 board added; giving it packages does change its stamp."""
    assert "apt_install" not in json.loads(ARM.stamp())
    assert dataclasses.replace(ARM, apt_install=("python3-numpy",)).stamp() != ARM.stamp()


def test_the_layers_differ_by_extra_and_system_packages(tmp_path: Path) -> None:
    assert layers.LAYERS[ARM.name] == layers.AgentLayer()
    assert layers.LAYERS[RISCV.name] == layers.AgentLayer(extra="agent", system_packages=True)
    names = {layers.requirement_name(r) for r in layers.agent_requirements("agent")}
    assert "onnxruntime" not in names and {"grpcio", "protobuf", "numpy"} <= names
    assert "onnxruntime" in {layers.requirement_name(r) for r in layers.agent_requirements()}
    (tmp_path / "built.json").write_text("{}")
    assert layers.layer_key(ARM, tmp_path) != layers.layer_key(RISCV, tmp_path)


def test_grpcio_plugins_are_pinned_to_the_boards_grpcio() -> None:
    """grpcio-health-checking 1.51.3 requires grpcio >= 1.51.3: against Debian's 1.51.1 pip
    would build grpcio from source, so the plug-ins take exactly the board's release."""
    pinned = layers.pinned_to_grpc(["grpcio>=1.46.5", "grpcio-health-checking>=1.46.5",
                                    "grpcio-reflection>=1.46.5",
                                    "tomli>=1.1; python_version < '3.11'"], "1.51.1")
    assert pinned == ["grpcio>=1.46.5", "grpcio-health-checking==1.51.1",
                      "grpcio-reflection==1.51.1", "tomli>=1.1; python_version < '3.11'"]


def test_build_refuses_an_unknown_arch() -> None:
    with pytest.raises(SystemExit) as exited:
        build_main(["build", "--arch", "mips"])
    assert exited.value.code == 2
    assert set(rootfs.RECIPES) == {"arm64", "riscv64"}
