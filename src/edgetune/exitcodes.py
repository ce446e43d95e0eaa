"""The exit codes of both command lines, ``edgetune`` (the PC) and ``edgetune-agent`` (a board).

One table, so a missing certificate file, a wrong passphrase or a refused certificate exit
with the same code on both sides, and scripts that drive either can test one set of numbers.
Both ``--help`` epilogs print ``help_table()``; docs/commands.md writes it down.

Which error gets which code is decided where the error is defined: ``edgetune.certs.errors``
classes carry an ``exit_status`` (as ``edgetune.host.errors`` classes do), and the agent's
config errors too. Standard library only: the agent imports this on a board's Python 3.9.
"""

from __future__ import annotations

import enum
from typing import Tuple


class ExitStatus(enum.IntEnum):
    """Exit codes of ``edgetune`` and ``edgetune-agent`` (see ``MEANINGS``)."""

    OK = 0
    ERROR = 1
    USAGE = 2
    BAD_INPUT = 3
    NOT_FOUND = 4
    UNREACHABLE = 5
    AUTH = 6
    TIMEOUT = 7
    TARGET_NOT_MET = 8
    AGENT = 9
    INCOMPATIBLE = 10
    SOME_FAILED = 11
    NONE_SUCCEEDED = 12
    INTERRUPTED = 130


MEANINGS = {
    ExitStatus.OK: "done",
    ExitStatus.ERROR: "an unexpected failure, or the agent could not start (the message says why)",
    ExitStatus.USAGE: "bad flags or arguments, no passphrase source, a file that exists already",
    ExitStatus.BAD_INPUT: "an invalid file, model, dataset or config (edgetune.toml, agent.toml, "
                          "a flag)",
    ExitStatus.NOT_FOUND: "a missing file (certificate, key, passphrase, config), model, "
                          "dataset, job or device",
    ExitStatus.UNREACHABLE: "no agent answered (address, port, network, agent down)",
    ExitStatus.AUTH: "a certificate, key or passphrase was refused (wrong passphrase, usage, CA), "
                     "or a result's signature did not verify (results verify)",
    ExitStatus.TIMEOUT: "a call did not finish in time",
    ExitStatus.TARGET_NOT_MET: "the command ran, but the requested target was not met",
    ExitStatus.AGENT: "the agent refused or failed the request (its message says why)",
    ExitStatus.INCOMPATIBLE: "the other side's edgetune sent what this version cannot read "
                             "(upgrade as told)",
    ExitStatus.SOME_FAILED: "a fleet run: some boards failed, the others succeeded (each failed "
                            "row says why)",
    ExitStatus.NONE_SUCCEEDED: "a fleet run: no board succeeded (each row says why)",
    ExitStatus.INTERRUPTED: "Ctrl-C",
}


def label(status: ExitStatus) -> str:
    """``TARGET_NOT_MET`` -> ``target not met``."""
    return status.name.lower().replace("_", " ")


def rows() -> Tuple[Tuple[int, str, str], ...]:
    """(code, label, meaning) for every code, in order."""
    return tuple((int(s), label(s), MEANINGS[s]) for s in ExitStatus)


def help_table() -> str:
    """The table both ``--help`` epilogs print (for a RawDescriptionHelpFormatter)."""
    width = max(len(label(s)) for s in ExitStatus)
    lines = ["exit codes (the same for edgetune and edgetune-agent):"]
    lines += [f"  {code:<4} {name:<{width}}  {meaning}" for code, name, meaning in rows()]
    return "\n".join(lines)


__all__ = ["MEANINGS", "ExitStatus", "help_table", "label", "rows"]
