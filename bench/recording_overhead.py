"""Recording overhead: what keeping a result in the results database adds to a command.

    python bench/recording_overhead.py [--rounds 30] [--iterations 20] [--json]

`edgetune bench digits_cnn.onnx --shape input=1x1x8x8 --iterations N --json` is run
in-process (``edgetune.host.cli.main``, stdout captured) against a local agent over mutual
TLS, ``--rounds`` times each way, alternating (which way goes first alternates too):

    recorded   --db FILE (a SQLite file made before the first round, as a user's exists)
    baseline   --no-record

One model, so one result per command. The target: the median of the per-round differences
(recorded - baseline) <= 5 ms. The time spent in the recording code itself is also reported,
measured inside the same recorded runs: opening the store (on a background thread while the
session connects to the board, so off the command's path unless the connection is quicker),
the recorder turning the result into a record and adding it, and closing the store.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (check, finish, local_agent, log_progress, machine,  # noqa: E402
                          make_pki, median, percentile)

TARGET_MS = 5.0
MODEL = Path(__file__).resolve().parent.parent / "host" / "samples" / "digits_cnn.onnx"


@contextlib.contextmanager
def timing_the_recording(spent: Dict[str, float]) -> Any:
    """Adds to ``spent`` the seconds a command spends in the recording code: opening the store
    (``open``), turning the result into a record and adding it (``record``), closing the
    store (``close``)."""
    from edgetune.host.results import recording, store

    cls = store.ResultsStore
    original = {"open": cls.open.__func__, "close": cls.close,     # type: ignore[attr-defined]
                "record": recording.StoreRecorder.__call__}

    def timer(name: str) -> Any:
        def timed(*args: Any) -> Any:
            start = time.perf_counter()
            try:
                return original[name](*args)
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - start
        return timed

    cls.open = classmethod(timer("open"))                           # type: ignore[assignment]
    cls.close = timer("close")                                      # type: ignore[method-assign]
    recording.StoreRecorder.__call__ = timer("record")              # type: ignore[method-assign]
    try:
        yield
    finally:
        cls.open = classmethod(original["open"])                    # type: ignore[assignment]
        cls.close = original["close"]                               # type: ignore[method-assign]
        recording.StoreRecorder.__call__ = original["record"]       # type: ignore[method-assign]


def run_bench(argv: Sequence[str]) -> float:
    from edgetune.host.cli import main

    out = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = main(list(argv))
    took = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"edgetune {' '.join(argv)} exited {code}: {out.getvalue()[-500:]}")
    return took


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--iterations", type=int, default=20, help="timed runs per bench")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if min(args.rounds, args.iterations) < 1:
        parser.error("--rounds and --iterations must be at least 1")

    from edgetune.host.results.store import ResultsStore

    recorded: List[float] = []
    baseline: List[float] = []
    in_recording: List[Dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="edgetune-bench-") as tmp:
        d = Path(tmp)
        pki = make_pki(d / "pki")
        db = d / "results.db"
        ResultsStore.open(f"sqlite:///{db}").close()
        with local_agent(pki, d / "store") as agent:
            common = ["bench", str(MODEL), "--shape", "input=1x1x8x8", "--iterations",
                      str(args.iterations), "--warmup", "2", "--address", agent.address,
                      "--ca", str(pki.ca_cert), "--cert", str(pki.host_cert),
                      "--key", str(pki.host_key), "--passphrase-file",
                      str(pki.passphrase_file), "--json"]
            with_db = [*common, "--db", str(db)]
            without = [*common, "--no-record"]
            run_bench(with_db)                  # the upload, imports, caches: not timed
            run_bench(without)
            for r in range(args.rounds):
                spent: Dict[str, float] = {}
                order = (True, False) if r % 2 == 0 else (False, True)
                for record in order:
                    if record:
                        with timing_the_recording(spent):
                            recorded.append(run_bench(with_db))
                    else:
                        baseline.append(run_bench(without))
                in_recording.append(spent)
                log_progress(args.json, f"round {r + 1}/{args.rounds}: recorded "
                             f"{recorded[-1] * 1e3:.1f} ms, --no-record "
                             f"{baseline[-1] * 1e3:.1f} ms, in the recording code "
                             f"{sum(spent.values()) * 1e3:.2f} ms")
        with ResultsStore.open(f"sqlite:///{db}") as store:
            kept = store.count()

    diffs = [(a - b) * 1e3 for a, b in zip(recorded, baseline)]
    med_diff = median(diffs)
    result: Dict[str, Any] = {
        "benchmark": "recording_overhead", "model": "digits_cnn.onnx (1x1x8x8)",
        "rounds": args.rounds, "iterations": args.iterations, "records_kept": kept,
        "command": "edgetune bench digits_cnn.onnx --shape input=1x1x8x8 --iterations "
                   f"{args.iterations} --warmup 2 --json (in-process), --db FILE vs --no-record",
        "median_ms": {"recorded": round(median(recorded) * 1e3, 3),
                      "no_record": round(median(baseline) * 1e3, 3),
                      "difference_per_round": round(med_diff, 3),
                      "in_recording_code": round(median(sum(x.values()) for x in in_recording)
                                                 * 1e3, 3),
                      **{f"in_recording_{k}": round(median(x.get(k, 0.0) for x in in_recording)
                                                    * 1e3, 3) for k in ("open", "record",
                                                                        "close")}},
        "difference_ms": {"p10": round(percentile(diffs, 10), 3),
                          "p90": round(percentile(diffs, 90), 3)},
        "ratio_recorded_vs_no_record": round(median(recorded) / median(baseline), 3),
        "raw_ms": {"recorded": [round(x * 1e3, 3) for x in recorded],
                   "no_record": [round(x * 1e3, 3) for x in baseline],
                   "in_recording_code": [round(sum(x.values()) * 1e3, 3)
                                         for x in in_recording]},
        "checks": [check("recording overhead ms per result (median)", med_diff, "<=",
                         TARGET_MS)],
        "machine": machine(),
    }
    m = result["median_ms"]
    lines = [
        f"recording overhead, `edgetune bench` of the digits model ({args.iterations} "
        f"iterations) in-process, median of {args.rounds} alternating rounds (ms):",
        f"  --db FILE {m['recorded']:.2f}   --no-record {m['no_record']:.2f}   "
        f"difference {m['difference_per_round']:.2f} (p10 {result['difference_ms']['p10']:.2f},"
        f" p90 {result['difference_ms']['p90']:.2f})",
        f"  time in the recording code {m['in_recording_code']:.2f}: open the store "
        f"{m['in_recording_open']:.2f} (on a thread, beside the TLS connection), make and add "
        f"the record {m['in_recording_record']:.2f}, close {m['in_recording_close']:.2f}; "
        f"{kept} records kept",
    ]
    return finish(result, args.json, lines)


if __name__ == "__main__":
    sys.exit(main())
