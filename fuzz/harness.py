"""One fuzz target under atheris (libFuzzer): ``python fuzz/harness.py NAME [libFuzzer flags]``.

``fuzz/run.py`` starts this for each target with its corpus folder and bounds (time per
input, memory, total time). The edgetune modules are imported inside
``atheris.instrument_imports`` so that coverage guides the fuzzer through them.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

with atheris.instrument_imports(include=["edgetune", "fuzz.targets"]):
    from fuzz.targets import TARGETS


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: harness.py NAME [libFuzzer flags]; NAME one of {', '.join(TARGETS)}")
    target = TARGETS[sys.argv[1]]
    logging.disable(logging.CRITICAL)      # messages per input would be most of the time
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target.one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
