"""Run every fuzz target for a while and report: ``python fuzz/run.py --seconds S``.

    python fuzz/run.py --seconds 20                 # what CI runs
    python fuzz/run.py --seconds 600 --json         # the long run docs/reliability.md records
    python fuzz/run.py --seconds 60 --only upload --corpus fuzz-corpus

Each target runs in its own process (``fuzz/harness.py``, atheris on libFuzzer), starting from
the seeds its ``fuzz/targets.py`` entry makes in code (plus what ``--corpus DIR`` kept from
earlier runs). A crash is an exception outside the target's documented errors, a broken
invariant, one input running past ``--timeout`` seconds, or the process passing ``--rss-mb``;
its input is kept under the artifacts folder, to be added to fuzz/regressions/NAME/ (the tests
replay those) before it is fixed. Exits 1 when any target crashed.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional, Sequence

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

_DONE = re.compile(r"#(\d+)\s+DONE\s+cov: (\d+) ft: (\d+) corp: (\d+)/")
_STAT = re.compile(r"#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/")


@dataclass
class Outcome:
    target: str
    seconds: float
    executions: int
    coverage: int              # libFuzzer's "cov": edges (Python branches) reached
    features: int
    corpus: int
    crashed: bool
    crash_files: List[str]
    tail: str                  # the end of the fuzzer's output when it crashed


def run_target(name: str, seconds: int, corpus: Path, artifacts: Path, *, timeout_s: int,
               rss_mb: int, max_len: int) -> Outcome:
    from fuzz.targets import TARGETS, write_seeds

    write_seeds(TARGETS[name], corpus)
    artifacts.mkdir(parents=True, exist_ok=True)
    before = set(artifacts.iterdir())
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(HERE / "harness.py"), name, str(corpus),
         f"-max_total_time={seconds}", f"-timeout={timeout_s}", f"-rss_limit_mb={rss_mb}",
         f"-max_len={max_len}", f"-artifact_prefix={artifacts}/{name}-",
         "-print_final_stats=1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
        timeout=seconds + 300)
    took = time.monotonic() - started
    output = proc.stdout
    stats = _DONE.findall(output) or _STAT.findall(output)
    execs, cov, ft, corp = (int(x) for x in stats[-1]) if stats else (0, 0, 0, 0)
    found = sorted(str(p) for p in set(artifacts.iterdir()) - before
                   if p.name.startswith(f"{name}-"))      # not a target fuzzed beside it
    crashed = proc.returncode != 0 or bool(found)
    return Outcome(name, round(took, 1), execs, cov, ft, corp, crashed, found,
                   output[-3000:] if crashed else "")


def main(argv: Optional[Sequence[str]] = None) -> int:
    from fuzz.targets import TARGETS

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=20, help="per target (default 20)")
    parser.add_argument("--only", action="append", choices=sorted(TARGETS),
                        help="run only this target (repeatable)")
    parser.add_argument("--corpus", type=Path,
                        help="keep each target's corpus in DIR/NAME between runs (default: "
                             "a temporary folder, seeds only)")
    parser.add_argument("--artifacts", type=Path, default=Path("fuzz-artifacts"),
                        help="where crashing inputs are written (default ./fuzz-artifacts)")
    parser.add_argument("--timeout", type=int, default=10,
                        help="seconds one input may take before it counts as a hang")
    parser.add_argument("--rss-mb", type=int, default=2048,
                        help="memory bound of a fuzzing process, MB (default 2048)")
    parser.add_argument("--max-len", type=int, default=65536,
                        help="largest input the fuzzer makes, bytes (default 65536)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="targets fuzzed at the same time (default 1)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.seconds < 1:
        parser.error("--seconds must be at least 1")

    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    names = args.only or list(TARGETS)
    with tempfile.TemporaryDirectory(prefix="edgetune-fuzz-corpus-") as tmp:
        root = args.corpus or Path(tmp)

        def one(name: str) -> Outcome:
            if not args.json:
                print(f"fuzzing {name} ({TARGETS[name].what}) for {args.seconds} s ...",
                      file=sys.stderr, flush=True)
            return run_target(name, args.seconds, root / name, args.artifacts,
                              timeout_s=args.timeout, rss_mb=args.rss_mb,
                              max_len=args.max_len)

        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            outcomes = list(pool.map(one, names))
    crashed = [o for o in outcomes if o.crashed]
    if args.json:
        print(json.dumps({"seconds": args.seconds, "targets": [asdict(o) for o in outcomes],
                          "crashes": len(crashed)}, indent=2))
    else:
        print(f"{'target':<12} {'seconds':>7} {'executions':>11} {'cov':>6} {'ft':>6} "
              f"{'corpus':>6}  crashes")
        for o in outcomes:
            print(f"{o.target:<12} {o.seconds:>7.1f} {o.executions:>11,} {o.coverage:>6} "
                  f"{o.features:>6} {o.corpus:>6}  {len(o.crash_files) or int(o.crashed)}")
        for o in crashed:
            print(f"\n{o.target} crashed; input(s): {', '.join(o.crash_files) or '(none kept)'}"
                  f"\n{o.tail}")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
