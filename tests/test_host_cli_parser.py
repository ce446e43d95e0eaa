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
