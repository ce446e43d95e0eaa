"""Fast checks of the emulated board's host check and cache bookkeeping (tests/emulated/): a
machine that cannot run a board skips with the reason locally and fails under CI; a cache
entry is replaced whole and nothing mounted below a removed tree is followed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tests.emulated import rootfs
from tests.emulated.fixtures import require_board_host

# An architecture no QEMU on any machine emulates: its board can never run here.
NO_SUCH_BOARD = dataclasses.replace(rootfs.DEBIAN11_ARM64, name="nowhere", qemu_arch="nowhere64")


def test_missing_emulation_skips_with_the_reason_locally(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception) as skipped:
        require_board_host(NO_SUCH_BOARD)
    assert "qemu-nowhere64-static" in str(skipped.value)
    assert "binfmt_misc has no enabled qemu-nowhere64 entry" in str(skipped.value)
    assert "docs/boards.md" in str(skipped.value)


@pytest.mark.parametrize("ci", ["1", "true"])
def test_missing_emulation_fails_under_ci(monkeypatch: pytest.MonkeyPatch, ci: str) -> None:
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception) as failed:
        require_board_host(NO_SUCH_BOARD)
    assert "CI is set, so this is a failure" in str(failed.value)


def test_a_recipe_change_changes_the_stamp() -> None:
    bumped = dataclasses.replace(rootfs.DEBIAN11_ARM64, version=rootfs.DEBIAN11_ARM64.version + 1)
    fewer = dataclasses.replace(rootfs.DEBIAN11_ARM64, include=("python3",))
    stamps = {r.stamp() for r in (rootfs.DEBIAN11_ARM64, bumped, fewer)}
    assert len(stamps) == 3


def test_cache_dir_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EDGETUNE_BOARD_CACHE", str(tmp_path / "boards"))
    assert rootfs.cache_root() == tmp_path / "boards"
    monkeypatch.delenv("EDGETUNE_BOARD_CACHE")
    assert rootfs.cache_root() == Path.home() / ".cache" / "edgetune" / "boards"


def test_replace_entry_swaps_a_complete_build_in(tmp_path: Path) -> None:
    entry = tmp_path / "debian11-arm64"
    (entry / "root").mkdir(parents=True)
    (entry / "recipe.json").write_text("old")
    built = tmp_path / ".debian11-arm64.build.x"
    (built / "root").mkdir(parents=True)
    (built / "recipe.json").write_text("new")
    rootfs.replace_entry(built, entry)
    assert rootfs.read_stamp(entry) == "new" and not built.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["debian11-arm64"]   # old one removed


def test_remove_tree_unmounts_before_deleting(tmp_path: Path) -> None:
    """A tree with a bind mount of a folder outside it inside: removing the tree unmounts the
    bind first and leaves the outside folder's files alone."""
    import os
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("bind mounts need root")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("precious")
    tree = tmp_path / "tree"
    (tree / "dev").mkdir(parents=True)
    mounted = subprocess.run(["mount", "--bind", str(outside), str(tree / "dev")],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {mounted.stderr.strip()}")
    assert rootfs.mounts_under(tree) == [tree / "dev"]
    rootfs.remove_tree(tree)
    assert not tree.exists()
    assert (outside / "keep").read_text() == "precious"
