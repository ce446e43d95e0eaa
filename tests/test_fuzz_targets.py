"""The fuzz targets (fuzz/targets.py) on their seeds and on every input that once crashed one.

A crash found by ``python fuzz/run.py`` is saved under fuzz/regressions/NAME/ and replayed here
before it is fixed; the slow test runs the real fuzzer briefly, so the harness and the runner
stay working (CI's fuzz stage runs 20 s of each target).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fuzz.targets import TARGETS, Broken, regressions  # noqa: E402

REGRESSIONS: List[Tuple[str, Path]] = [(name, path) for name, target in TARGETS.items()
                                       for path in regressions(target)]


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_every_seed_is_handled(name: str) -> None:
    target = TARGETS[name]
    seeds = target.seeds()
    assert seeds, f"{name} has no seeds"
    for seed in seeds:
        target.one_input(seed)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_at_least_one_seed_is_accepted_whole(name: str) -> None:
    """A seed that the parser refuses at once teaches the fuzzer nothing about the rest."""
    target = TARGETS[name]
    accepted = 0
    for seed in target.seeds():
        try:
            target.run(seed)
            accepted += 1
        except target.allowed:
            pass
    assert accepted >= 1


@pytest.mark.parametrize("name,path", REGRESSIONS,
                         ids=[f"{n}/{p.name[:14]}" for n, p in REGRESSIONS])
def test_inputs_that_once_crashed_are_handled(name: str, path: Path) -> None:
    TARGETS[name].one_input(path.read_bytes())


def test_the_regressions_cover_what_was_found() -> None:
    found = {name for name, _ in REGRESSIONS}
    assert {"agent_toml", "dataset", "frames", "inventory"} <= found


def test_a_broken_invariant_is_a_crash() -> None:
    """``one_input`` lets only documented errors through: a Broken invariant propagates."""
    frames = TARGETS["frames"]
    assert Broken not in frames.allowed and not issubclass(Broken, frames.allowed or ())


def test_non_utf8_config_files_are_refused_with_a_message(tmp_path: Path) -> None:
    from edgetune.device.config import ConfigError, build_config
    from edgetune.host.errors import BadInputError
    from edgetune.host.inventory import load_inventory

    bad = tmp_path / "agent.toml"
    bad.write_bytes(b'ca = "ca.pem"\nkey = "\xff"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        build_config(bad)
    with pytest.raises(BadInputError, match="not UTF-8"):
        load_inventory(bad)
    with pytest.raises(BadInputError, match="cannot read inventory"):
        load_inventory(tmp_path)


@pytest.mark.slow
def test_the_fuzzer_runs_and_reports(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, str(ROOT / "fuzz" / "run.py"), "--seconds", "3",
                          "--only", "jobspec", "--only", "frames", "--json",
                          "--artifacts", str(tmp_path / "artifacts")],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert [t["target"] for t in report["targets"]] == ["jobspec", "frames"]
    assert report["crashes"] == 0
    assert all(t["executions"] > 100 and t["coverage"] > 5 for t in report["targets"])


def test_a_tilde_user_that_does_not_exist_is_a_plain_path(tmp_path: Path) -> None:
    """``~nosuchuser/x`` (found by the inventory fuzzer: pathlib raised RuntimeError) stays as
    written, as a shell leaves it, and the file check then says what is missing."""
    from edgetune.device.config import build_config
    from edgetune.host.inventory import load_inventory

    inventory = tmp_path / "edgetune.toml"
    inventory.write_text('[host]\nkey = "~nosuchuser-edgetune/host.key"\n'
                         'ca = "ca.pem"\ncert = "c.pem"\n')
    host = load_inventory(inventory).host
    assert str(host.key).endswith("~nosuchuser-edgetune/host.key")
    agent = tmp_path / "agent.toml"
    agent.write_text('ca = "~nosuchuser-edgetune/ca.pem"\ncert = "c"\nkey = "k"\n')
    assert build_config(agent).ca.name == "ca.pem"
