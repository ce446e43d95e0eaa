"""Results store at scale: `results list --limit 50` and a filtered `results export --format
csv` over a database of 100,000 records.

    python bench/results_scale.py [--records 100000] [--rounds 5] [--json]

A SQLite file is filled with ``--records`` realistic records (4 boards, 60 % bench with every
latency statistic, board info and options, 30 % eval, 10 % quantize; no raw samples), then
each command is timed as a user runs it, two ways, alternating, ``--rounds`` times:

    subprocess   `python -m edgetune.host results ...` (interpreter start and imports included;
                 bytecode cached, as after a pip install, in a temporary PYTHONPYCACHEPREFIX)
    in-process   ``edgetune.host.cli.main([...])`` (stdout to a file)

Baselines side by side, in the same rounds: the raw SQL the command boils down to, with
Python's sqlite3 (``SELECT * ... ORDER BY id DESC LIMIT 50``; the filtered ``SELECT *`` with
every row fetched), and `python -c pass` (the interpreter alone). The export writes to a file
(``-o``), as a user saving a CSV would.

Targets: median subprocess time <= 0.3 s (list) and <= 3 s (export).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import check, finish, log_progress, machine, median  # noqa: E402

LIST_TARGET_S = 0.3
EXPORT_TARGET_S = 3.0
BOARDS = ("board1", "board2", "board3", "board4")


def _device(name: str) -> Dict[str, Any]:
    return {"name": name, "address": "10.0.0.7:7443", "agent_name": name,
            "hostname": f"{name}-host", "os": "Linux 5.10.110 (Ubuntu 22.04.3 LTS)",
            "arch": "aarch64", "cpu_model": "Cortex-A55", "cpu_cores": 4,
            "memory_total_bytes": 4 * 2 ** 30, "python_version": "3.9.2",
            "onnxruntime_version": "1.16.3", "agent_version": "0.2.0",
            "providers": ["CPUExecutionProvider"]}


def make_records(n: int, seed: int = 0) -> List[Any]:
    from edgetune.host.results.records import ModelRef, Record

    rng = random.Random(seed)
    models = [ModelRef(f"{i:064x}", f"model{i}.onnx", 100_000 + i,
                       f"{i - 1:064x}" if i % 2 else None) for i in range(1, 41)]
    host = {"edgetune_version": "0.1.0", "hostname": "laptop"}
    out = []
    for i in range(n):
        board = BOARDS[i % len(BOARDS)]
        model = models[rng.randrange(len(models))]
        kind = "bench" if i % 10 < 6 else "eval" if i % 10 < 9 else "quantize"
        options = {"providers": [], "intra_op_threads": rng.choice([0, 1, 2, 4]),
                   "inter_op_threads": 0, "graph_optimization": "all",
                   "execution_mode": "sequential", "input_shapes": {"input": [1, 3, 224, 224]},
                   "warmup": 10, "iterations": 200, "min_duration_s": 0.0, "seed": 0,
                   "dataset_sha256": "", "return_samples": False}
        if kind == "bench":
            p50 = rng.uniform(1, 50)
            metrics = {"latency_ms": {"min": p50 * 0.9, "mean": p50 * 1.05, "std": p50 * 0.1,
                                      "p50": p50, "p90": p50 * 1.2, "p95": p50 * 1.3,
                                      "p99": p50 * 1.6, "max": p50 * 3},
                       "throughput_ips": 1000 / p50, "load_ms": 40.0, "first_run_ms": p50 * 2,
                       "peak_rss_mb": 120.5, "iterations": 200, "warmup": 10,
                       "measured_s": p50 * 0.2, "providers": ["CPUExecutionProvider"]}
            state = {"cpu_freq_mhz": 1800.0, "temperature_c": rng.uniform(40, 60)}
        elif kind == "eval":
            metrics = {"top1": rng.uniform(0.7, 0.8), "top5": rng.uniform(0.9, 0.95),
                       "cosine": 0.999, "sqnr_db": 30.5, "max_abs_error": 0.01,
                       "samples": 1000, "load_ms": 40.0, "elapsed_s": 12.0}
            state = {}
        else:
            metrics = {"size_ratio": 0.27, "input_bytes": 14_000_000,
                       "output_bytes": 3_800_000, "nodes": 120, "elapsed_s": 20.0}
            state = {}
        out.append(Record(kind=kind, model=model, metrics=metrics, options=options,
                          device=_device(board) if kind != "quantize" else {},
                          board_state=state, host=host, label=rng.choice(["", "nightly", "a/b"]),
                          job_id=f"{i:032x}" if kind != "quantize" else None))
    return out


def fill(url: str, n: int, quiet: bool) -> float:
    from edgetune.host.results.store import ResultsStore

    start = time.perf_counter()
    records = make_records(n)
    with ResultsStore.open(url) as store:
        for at in range(0, n, 5000):
            store.add_many(records[at:at + 5000])
            log_progress(quiet, f"filled {min(at + 5000, n)}/{n}")
    return time.perf_counter() - start


def timed(action: Callable[[], Any]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def subprocess_cli(argv: Sequence[str], env: Dict[str, str]) -> Callable[[], None]:
    def run() -> None:
        proc = subprocess.run([sys.executable, "-m", "edgetune.host", *argv],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"edgetune {' '.join(argv)} exited {proc.returncode}: "
                               f"{proc.stderr.decode()[-500:]}")
    return run


def in_process_cli(argv: Sequence[str]) -> Callable[[], None]:
    def run() -> None:
        from edgetune.host.cli import main

        sink = io.StringIO()
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(io.StringIO()):
            code = main(list(argv))
        if code != 0:
            raise RuntimeError(f"edgetune {' '.join(argv)} exited {code}")
    return run


def raw_sql(path: Path, query: str, args: Sequence[Any] = ()) -> Callable[[], None]:
    def run() -> None:
        conn = sqlite3.connect(str(path))
        try:
            conn.execute(query, args).fetchall()
        finally:
            conn.close()
    return run


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if args.records < len(BOARDS) or args.rounds < 1:
        parser.error("--records must be at least 4 and --rounds at least 1")

    with tempfile.TemporaryDirectory(prefix="edgetune-bench-") as tmp:
        path = Path(tmp) / "results.db"
        url = f"sqlite:///{path}"
        fill_s = fill(url, args.records, args.json)
        csv_out = Path(tmp) / "out.csv"
        list_argv = ["results", "list", "--limit", "50", "--db", url]
        export_argv = ["results", "export", "--device", "board1", "--format", "csv",
                       "-o", str(csv_out), "--db", url]
        # As installed: bytecode cached (pip compiles at install; here into the temporary
        # folder, so nothing is written into the checkout even when PYTHONDONTWRITEBYTECODE
        # is set in this environment).
        env = {k: v for k, v in os.environ.items()
               if k not in ("EDGETUNE_DB", "PYTHONDONTWRITEBYTECODE")}
        env["PYTHONPYCACHEPREFIX"] = str(Path(tmp) / "pycache")
        actions = {
            "list_subprocess": subprocess_cli(list_argv, env),
            "list_in_process": in_process_cli(list_argv),
            "list_raw_sql": raw_sql(path, "SELECT * FROM results ORDER BY id DESC LIMIT 50"),
            "export_subprocess": subprocess_cli(export_argv, env),
            "export_in_process": in_process_cli(export_argv),
            "export_raw_sql": raw_sql(path, "SELECT * FROM results WHERE device_name = ? "
                                      "ORDER BY id", ("board1",)),
            "python_startup": lambda: subprocess.run([sys.executable, "-c", "pass"], check=True,
                                                     env=env),
        }
        for action in actions.values():           # warm the page cache and imports
            action()
        times: Dict[str, List[float]] = {k: [] for k in actions}
        for r in range(args.rounds):
            for name, action in actions.items():
                times[name].append(timed(action))
            log_progress(args.json, f"round {r + 1}/{args.rounds}: list "
                         f"{times['list_subprocess'][-1]:.3f} s, export "
                         f"{times['export_subprocess'][-1]:.3f} s")
        exported_rows = sum(1 for _ in csv_out.open(encoding="utf-8")) - 1
        db_mib = path.stat().st_size / 2 ** 20

    med = {k: round(median(v), 4) for k, v in times.items()}
    result = {
        "benchmark": "results_scale", "records": args.records, "rounds": args.rounds,
        "database_mib": round(db_mib, 1), "fill_s": round(fill_s, 1),
        "exported_rows": exported_rows,
        "commands": {"list": "edgetune " + " ".join(list_argv[:4]) + " --db DB",
                     "export": "edgetune results export --device board1 --format csv "
                               "-o FILE --db DB"},
        "median_s": med,
        "ratio_vs_raw_sql": {"list_in_process": round(med["list_in_process"]
                                                      / med["list_raw_sql"], 1),
                             "export_in_process": round(med["export_in_process"]
                                                        / med["export_raw_sql"], 1)},
        "raw_s": {k: [round(x, 4) for x in v] for k, v in times.items()},
        "checks": [check("results list --limit 50 s (subprocess)", med["list_subprocess"],
                         "<=", LIST_TARGET_S),
                   check("filtered results export csv s (subprocess)",
                         med["export_subprocess"], "<=", EXPORT_TARGET_S)],
        "machine": machine(),
    }
    lines = [
        f"results store, {args.records} records ({db_mib:.1f} MiB SQLite), median of "
        f"{args.rounds} rounds (s):",
        f"  results list --limit 50     subprocess {med['list_subprocess']:.3f}  in-process "
        f"{med['list_in_process']:.4f}  raw SQL {med['list_raw_sql']:.4f}",
        f"  export --device board1 csv  subprocess {med['export_subprocess']:.3f}  in-process "
        f"{med['export_in_process']:.3f}  raw SQL {med['export_raw_sql']:.3f} "
        f"({exported_rows} rows)",
        f"  python -c pass              {med['python_startup']:.3f}",
    ]
    return finish(result, args.json, lines)


if __name__ == "__main__":
    sys.exit(main())
