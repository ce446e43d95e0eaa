"""``edgetune demo`` wall time: the whole loop (quantize, tuning study, interleaved answer)
under a minute on this machine, and ``demo --quick`` beside it.

    python bench/demo_time.py [--repeat 2] [--trials 8] [--json]

Each round runs ``edgetune demo --json --no-record`` and then ``edgetune demo --quick --json
--no-record`` as fresh processes (the command a new user types, start-up included), and times
them from outside. Reported: the median and worst wall time of each, and what each demo said
(the default INT8 and tuned speed-ups over FP32 from the interleaved rounds). Target: the
worst full demo <= 60 s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, check, finish, log_progress, machine  # noqa: E402


def run(args: List[str]) -> Dict[str, Any]:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "edgetune.host", "demo", *args, "--json",
                           "--no-record"], capture_output=True, text=True, cwd=REPO,
                          timeout=900)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"edgetune demo {' '.join(args)} exited {proc.returncode}:\n"
                         f"{proc.stderr[-3000:]}")
    return {"seconds": seconds, "doc": json.loads(proc.stdout)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=2, help="rounds (2)")
    parser.add_argument("--trials", type=int, default=8, help="the study's trials (8)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)

    loops: List[Dict[str, Any]] = []
    quick: List[float] = []
    for i in range(args.repeat):
        log_progress(args.json, f"round {i + 1}/{args.repeat}: edgetune demo ...")
        loop = run(["--trials", str(args.trials)])
        c = loop["doc"]["comparison"]
        loops.append({"seconds": round(loop["seconds"], 2),
                      "inside_s": loop["doc"]["elapsed_s"],
                      "int8_speedup": round(c["speedup_vs_fp32"]["int8_default"]["speedup"], 3),
                      "tuned_speedup": round(c["speedup_vs_fp32"]["tuned"]["speedup"], 3),
                      "trials": loop["doc"]["study"]["trials"]})
        log_progress(args.json, f"round {i + 1}/{args.repeat}: edgetune demo --quick ...")
        quick.append(round(run(["--quick"])["seconds"], 2))
    seconds = [r["seconds"] for r in loops]
    worst = max(seconds)
    result = {
        "bench": "demo_time", "machine": machine(), "trials": args.trials,
        "demo": {"median_s": round(statistics.median(seconds), 2), "max_s": round(worst, 2),
                 "runs": loops},
        "quick": {"median_s": round(statistics.median(quick), 2), "max_s": max(quick),
                  "runs": quick},
        "checks": [check("edgetune demo wall time s (worst run)", worst, "<=", 60.0)],
    }
    lines = [f"edgetune demo ({args.trials} trials), wall time of the command: median "
             f"{statistics.median(seconds):.1f} s, worst {worst:.1f} s over {len(seconds)} runs",
             *(f"  run {i + 1}: {r['seconds']:.1f} s (inside {r['inside_s']:.1f} s), INT8 "
               f"{r['int8_speedup']:.2f}x / tuned {r['tuned_speedup']:.2f}x over FP32"
               for i, r in enumerate(loops)),
             f"edgetune demo --quick: median {statistics.median(quick):.1f} s, worst "
             f"{max(quick):.1f} s"]
    return finish(result, args.json, lines)


if __name__ == "__main__":
    sys.exit(main())
