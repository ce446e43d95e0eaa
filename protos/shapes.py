"""The one parser of input shapes as people write them, ``NAME=1x3x224x224``, and their
formatting back to that form. The host parses ``--shape`` (and ``--input-shape``) with it; the
agent's messages that tell the user which ``--shape`` to pass format with it.

Pure Python (boards run 3.9+): no grpc, no numpy.
"""

from __future__ import annotations

from typing import Sequence, Tuple

MAX_DIM = 2 ** 31 - 1
EXAMPLE = "1x3x224x224"


class ShapeError(ValueError):
    """A shape that cannot be used. ``reason``: "form" (not NAME=DIMS), "whole" (a size is not
    a whole number) or "size" (a size below 1 or above ``MAX_DIM``); ``hint``: the form."""

    def __init__(self, message: str, reason: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.hint = hint


def format_dims(dims: Sequence[int]) -> str:
    """(1, 3, 224, 224) -> "1x3x224x224"."""
    return "x".join(str(d) for d in dims)


def shape_flag(name: str, dims: Sequence[int]) -> str:
    """The flag that fixes ``name`` to ``dims``: "--shape input=1x3x224x224"."""
    return f"--shape {name}={format_dims(dims)}"


def parse_dims(text: str, separators: str = "x") -> Tuple[int, ...]:
    """"1x3x224x224" (any case; each of ``separators`` splits) -> (1, 3, 224, 224)."""
    text = text.lower()
    for sep in separators[1:]:
        text = text.replace(sep, separators[0])
    try:
        dims = tuple(int(d) for d in text.split(separators[0]))
    except ValueError:
        raise ShapeError(f"{text!r}: the sizes must be whole numbers", "whole") from None
    if not dims or any(d < 1 or d > MAX_DIM for d in dims):
        raise ShapeError(f"{text!r}: every size must be at least 1", "size")
    return dims


def parse_shape(text: str, flag: str = "--shape") -> Tuple[str, Tuple[int, ...]]:
    """"NAME=1x3x224x224" -> ("NAME", (1, 3, 224, 224)); ShapeError naming ``flag``."""
    name, sep, dims_text = text.partition("=")
    hint = f"pass {flag} NAME={EXAMPLE} (input name, '=', positive sizes joined by 'x')"
    if not sep or not name.strip() or not dims_text:
        raise ShapeError(f"{flag} {text!r} is not NAME=DIMS", "form", hint)
    try:
        return name.strip(), parse_dims(dims_text)
    except ShapeError as exc:
        what = ("the sizes must be whole numbers" if exc.reason == "whole"
                else "every size must be at least 1")
        raise ShapeError(f"{flag} {text!r}: {what}", exc.reason, hint) from None
