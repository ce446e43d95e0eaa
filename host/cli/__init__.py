"""``edgetune``: the PC side command line.

``main(argv=None)`` is testable in-process: it returns the exit status instead of exiting.
Each command group lives in its own module exposing ``register(subparsers)``; a module's
top level imports nothing heavy (onnx, onnxruntime, grpc), so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from typing import Optional, Sequence

from edgetune import __version__
from edgetune.exitcodes import help_table
from edgetune.host.errors import EdgetuneError, ExitStatus

# Order is the order of ``edgetune --help``.
COMMAND_MODULES = (
    "edgetune.host.cli.demo_cmd",
    "edgetune.host.cli.certs_cmd",
    "edgetune.host.cli.agent_cmds",
    "edgetune.host.cli.compare_cmd",
    "edgetune.host.cli.quantize_cmd",
    "edgetune.host.cli.analyze_cmd",
    "edgetune.host.cli.tune_cmd",
    "edgetune.host.cli.results_cmd",
    "edgetune.host.cli.fleet_cmd",
    "edgetune.host.cli.lease_cmd",
    "edgetune.host.cli.deploy_cmd",
)

# Which module registers each command, so that running one command imports only its module
# (a command's own start-up is what a person waits for; `--help` still imports them all).
# tests/test_host_cli_parser.py checks this table against what the modules register.
COMMANDS = {
    "demo": "edgetune.host.cli.demo_cmd",
    "certs": "edgetune.host.cli.certs_cmd",
    **dict.fromkeys(("info", "models", "datasets", "jobs", "bench", "eval"),
                    "edgetune.host.cli.agent_cmds"),
    "compare": "edgetune.host.cli.compare_cmd",
    "quantize": "edgetune.host.cli.quantize_cmd",
    "analyze": "edgetune.host.cli.analyze_cmd",
    "tune": "edgetune.host.cli.tune_cmd",
    "results": "edgetune.host.cli.results_cmd",
    "fleet": "edgetune.host.cli.fleet_cmd",
    "lease": "edgetune.host.cli.lease_cmd",
    "deploy": "edgetune.host.cli.deploy_cmd",
}

EXIT_CODES_HELP = help_table()  # the same table as edgetune-agent --help


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """The whole parser, or (``command``, a name of ``COMMANDS``) one with only the module
    that registers that command."""
    parser = argparse.ArgumentParser(
        prog="edgetune",
        description="Quantize ONNX models on this PC, measure them on edge boards over "
                    "mutual TLS, and report.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"edgetune {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log more (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = COMMAND_MODULES if command not in COMMANDS else (COMMANDS[command],)
    for name in modules:
        importlib.import_module(name).register(sub)
    return parser


def _command(argv: Sequence[str]) -> Optional[str]:
    """The command ``argv`` runs (its first word that is not an option), if it is known."""
    for word in argv:
        if not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_command(argv))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return ExitStatus.USAGE
    try:
        return int(args.func(args) or 0)
    except EdgetuneError as exc:
        if getattr(args, "json", False):
            print(json.dumps({"error": {"type": type(exc).__name__, "message": exc.message,
                                        "hint": exc.hint,
                                        "exit_status": int(exc.exit_status)}}))
        else:
            print(f"edgetune: error: {exc}", file=sys.stderr)
        return int(exc.exit_status)
    except BrokenPipeError:  # `edgetune ... --json | head`: the reader went away
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the flush at exit does not raise again
        return int(ExitStatus.OK)
    except KeyboardInterrupt:
        print("edgetune: interrupted", file=sys.stderr)
        return int(ExitStatus.INTERRUPTED)


def entry() -> None:  # pragma: no cover - console script
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
