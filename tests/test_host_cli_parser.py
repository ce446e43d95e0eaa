"""The ``edgetune`` parser as a user meets it: the order of ``edgetune --help``, and a command
module that cannot be imported is an error, never a command silently missing."""

from __future__ import annotations

import argparse

import pytest

import edgetune.host.cli
from edgetune.host.cli import build_parser


def test_help_lists_the_board_commands_together_in_their_usual_order() -> None:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    listed = [choice.dest for choice in sub._choices_actions]      # the order of --help
    board = ["info", "models", "datasets", "jobs", "bench", "eval"]
    first = listed.index("info")
    assert listed[first:first + len(board)] == board, listed
    assert listed.index("demo") < listed.index("certs") < first, listed
    assert listed.index("quantize") < listed.index("analyze"), listed
    help_text = parser.format_help()
    assert help_text.index("  demo") < help_text.index("  certs") < help_text.index("  info")


def test_a_misspelt_command_module_is_an_error_not_a_missing_command(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(edgetune.host.cli, "COMMAND_MODULES",
                        (*edgetune.host.cli.COMMAND_MODULES, "edgetune.host.cli.quantise_cmd"))
    with pytest.raises(ModuleNotFoundError, match="quantise_cmd"):
        build_parser()


def test_the_command_table_names_the_module_that_registers_each_command() -> None:
    import importlib

    registered = {}
    for module in edgetune.host.cli.COMMAND_MODULES:
        parser = argparse.ArgumentParser()
        sub = parser.add_subparsers()
        importlib.import_module(module).register(sub)
        registered.update(dict.fromkeys(sub.choices, module))
    assert registered == edgetune.host.cli.COMMANDS
    assert set(edgetune.host.cli.COMMANDS.values()) == set(edgetune.host.cli.COMMAND_MODULES)


def test_running_a_command_imports_only_its_own_module(tmp_path) -> None:
    import subprocess
    import sys

    code = ("import sys\nfrom edgetune.host.cli import main\n"
            f"code = main(['results', 'list', '--db', {str(tmp_path / 'r.db')!r}, '--json'])\n"
            "loaded = sorted(m for m in sys.modules if m.startswith('edgetune.host.cli.'))\n"
            "print(code, ' '.join(loaded))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout.strip().splitlines()[-1]
    assert out.split()[0] == "0"
    assert "edgetune.host.cli.results_cmd" in out
    for other in ("agent_cmds", "demo_cmd", "quantize_cmd", "fleet_cmd", "certs_cmd"):
        assert f"edgetune.host.cli.{other}" not in out, out
    assert "usage: edgetune [-h]" in subprocess.run(
        [sys.executable, "-c", "from edgetune.host.cli import main; main(['nope'])"],
        capture_output=True, text=True, timeout=120).stderr     # unknown: the whole parser
