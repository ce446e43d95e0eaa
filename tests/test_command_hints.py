"""Every command line the project shows a user (hints in error messages, log lines, help
texts, docs) names a command that exists: each ``edgetune <cmd> [<subcmd> ...]`` found in
the source's string literals and in the docs is walked through the real argparse parsers.

What counts as a command line, so that prose ("edgetune never runs onnxsim") is not read as
one: a code span (`...` or ``...``) that starts with ``edgetune`` or ``edgetune-agent``, or
plain text where such a line is introduced the way hints introduce commands: at the start
of a line (examples, ``$ `` prompts), after ``(``, ``with``, ``run``, ``see``, ``use``,
``try`` or ``next:``. The words after the program name are walked while the parser has
subcommands; a word that is a placeholder (``NAME``, ``model.onnx``, ``...``) or a flag
ends the walk. A ``{...}`` part of an f-string matches any subcommand, so
``f"edgetune {kind}s list"`` passes only if some ``<x>s list`` exists.
"""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import pytest

from edgetune.device.cli import build_parser as agent_parser
from edgetune.host.cli import build_parser as host_parser

ROOT = Path(__file__).resolve().parents[1]
PY_DIRS = ("host", "device", "certs")
HOLE = "\x00"          # stands for an f-string's {...}

WORD = r"[A-Za-z0-9_.\x00'-]+"
COMMAND = re.compile(rf"\bedgetune(?:-agent)?(?:[ \t]+{WORD})*")
CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.S)
# an indented or prompted line (examples in help texts), or a hint's lead-in
HINT_CONTEXT = re.compile(r"(?:^|\n)(?:[ \t]+|[ \t]*[$#>][ \t]*)$|\($"
                          r"|\b(?:with|run|see|use|try|next:)[ \t]+$", re.I)


def _subcommands(parser: argparse.ArgumentParser) -> Optional[Dict[str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return None


PARSERS = {"edgetune": host_parser(), "edgetune-agent": agent_parser()}


def _walk(parser: argparse.ArgumentParser, words: List[str], guessed: bool = False) -> bool:
    """True if ``words`` is a path of real subcommands (up to the first placeholder).
    ``guessed``: ``parser`` was picked for an f-string hole, so a command-shaped word after a
    command without subcommands means it was the wrong pick."""
    word = words[0].split("'")[0] if words else ""  # edgetune quantize's defaults
    command_shaped = bool(re.fullmatch(r"[a-z][a-z0-9-]*", word))
    choices = _subcommands(parser)
    if choices is None or not words:
        return not (guessed and command_shaped)
    if HOLE in word:
        pattern = re.compile(".*".join(re.escape(part) for part in word.split(HOLE)) + r"\Z")
        return any(_walk(sub, words[1:], guessed=True)
                   for name, sub in choices.items() if pattern.match(name))
    if not command_shaped:
        return True                               # a placeholder, a file name or a flag
    return word in choices and _walk(choices[word], words[1:])


def _check(line: str) -> bool:
    program, *words = line.split()
    return _walk(PARSERS[program], words)


def _commands_in(text: str, mode: str = "text") -> Iterator[str]:
    """Command lines in ``text``: code spans first, then hints in the plain text around them.
    ``mode``: "text" (a string literal), "prose" (a docs paragraph: code spans only, as the
    docs write commands) or "line" (a line of a fenced block, which may start with one)."""
    plain = []
    last = 0
    for span in CODE_SPAN.finditer(text):
        plain.append(text[last:span.start()])
        last = span.end()
        inner = " ".join(span.group(2).split())
        found = COMMAND.match(inner)
        if found:
            yield found.group(0)
    plain.append(text[last:])
    if mode == "prose":
        return
    for chunk in plain:
        for found in COMMAND.finditer(chunk):
            before = chunk[:found.start()]
            if HINT_CONTEXT.search(before) or (mode == "line" and not before.strip()):
                yield " ".join(found.group(0).split())


def _string_literals(path: Path) -> Iterator[Tuple[int, str, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    inside_fstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            inside_fstrings.update(id(value) for value in node.values)
            yield node.lineno, "".join(value.value if isinstance(value, ast.Constant) else HOLE
                                       for value in node.values), "text"
    for node in ast.walk(tree):
        if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                and id(node) not in inside_fstrings):
            yield node.lineno, node.value, "text"


def _markdown_texts(path: Path) -> Iterator[Tuple[int, str, str]]:
    """Paragraphs outside fenced blocks, and each line inside them (one command a line)."""
    fenced = False
    paragraph: List[str] = []
    start = 1
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.lstrip().startswith("```"):
            if paragraph:
                yield start, "\n".join(paragraph), "prose"
                paragraph = []
            fenced = not fenced
            continue
        if fenced:
            yield number, line, "line"
        elif line.strip():
            if not paragraph:
                start = number
            paragraph.append(line)
        elif paragraph:
            yield start, "\n".join(paragraph), "prose"
            paragraph = []
    if paragraph:
        yield start, "\n".join(paragraph), "prose"


def _sources() -> Iterator[Tuple[Path, Iterator[Tuple[int, str, str]]]]:
    for folder in PY_DIRS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            yield path, _string_literals(path)
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        yield path, _markdown_texts(path)


def _bad_hints() -> List[str]:
    bad = []
    for path, texts in _sources():
        for line, text, mode in texts:
            for command in _commands_in(text, mode):
                if not _check(command):
                    where = path.relative_to(ROOT).as_posix()
                    bad.append(f"{where}:{line}: {command.replace(HOLE, '{...}')}")
    return bad


def test_every_command_named_in_source_and_docs_exists() -> None:
    assert _bad_hints() == []


def test_the_scan_finds_commands_where_hints_put_them() -> None:
    # Proof the scan can fail: each of these names a command that does not exist.
    cases = {
        "delete blobs with `edgetune models delete`": "edgetune models delete",
        "copy the files to the board (edgetune install does it)": "edgetune install does it",
        "run edgetune-agent start on the board": "edgetune-agent start on the board",
        "Examples:\n  edgetune bnech model.onnx": "edgetune bnech model.onnx",
        f"see `edgetune {HOLE} delete`": f"edgetune {HOLE} delete",
        "$ edgetune certs make host x": "edgetune certs make host x",
        "resume with ``edgetune jobs\n   follow JOB``": "edgetune jobs follow JOB",
    }
    for text, command in cases.items():
        assert list(_commands_in(text)) == [command], text
        assert not _check(command), command
    # and passes the ones that exist, placeholders and all
    good = ["`edgetune models rm SHA`", f"`edgetune {HOLE}s list`", "(edgetune certs issue ... --force)",
            "next: edgetune certs issue device BOARD --ip IP", "`edgetune-agent serve --config F`",
            "with edgetune quantize's defaults", "`edgetune demo --keep DIR`"]
    for text in good:
        (command,) = _commands_in(text)
        assert _check(command), text


@pytest.mark.parametrize("prose", [
    "edgetune never runs onnxsim",        # not at the start of a line: prose, not a command
    "this edgetune reads version 2",
    "signed by the edgetune CA",
    "is edgetune-agent running there?",
])
def test_prose_mentioning_edgetune_is_not_a_command(prose: str) -> None:
    assert list(_commands_in("x: " + prose)) == []
