"""Where things live after the splits of host/client.py and host/cli/agent_cmds.py: the old
import paths keep working, and ``edgetune --help`` lists the commands in the same order."""

from __future__ import annotations

import argparse
from typing import List


def test_sigint_gate_lives_in_host_interrupts_and_host_client_reexports_it() -> None:
    import edgetune.host.client
    import edgetune.host.interrupts
    assert edgetune.host.interrupts.SigintGate.__module__ == "edgetune.host.interrupts"
    assert edgetune.host.client.SigintGate is edgetune.host.interrupts.SigintGate
    assert edgetune.host.client.GATE is edgetune.host.interrupts.GATE          # one gate for the whole process
    assert {"GATE", "SigintGate"} <= set(edgetune.host.client.__all__)


def _commands(register: object) -> List[str]:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    register(sub)  # type: ignore[operator]
    return list(sub.choices)


def test_board_command_modules_register_their_own_commands() -> None:
    from edgetune.host.cli import agent_cmds, jobs_cmds, store_cmds

    assert _commands(store_cmds.register) == ["models", "datasets"]
    assert _commands(jobs_cmds.register) == ["jobs"]
    # agent_cmds registers the others around them, in the order of `edgetune --help`.
    assert _commands(agent_cmds.register) == ["info", "models", "datasets", "jobs", "bench",
                                              "eval"]


def test_help_lists_the_board_commands_together_in_their_usual_order() -> None:
    from edgetune.host.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    listed = [choice.dest for choice in sub._choices_actions]      # the order of --help
    board = ["info", "models", "datasets", "jobs", "bench", "eval"]
    first = listed.index("info")
    assert listed[first:first + len(board)] == board, listed
    assert listed.index("demo") < listed.index("certs") < first, listed
