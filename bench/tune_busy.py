"""How busy the tuner keeps several boards: 4 local agents, one study, the share of the
tuning's wall time each board had a job running.

    python bench/tune_busy.py [--agents 4] [--trials 24] [--size 112] [--queue-ahead 1] [--json]

Four agents (separate processes, separate stores, one PKI) serve as four boards of one kind;
one study (``edgetune.host.tune.run_study``, the space of ``bench/tune_efficiency.py``, no
accuracy constraint, no closing rounds) runs ``trials`` trials on a ResNet-18-shaped model.
Its variants are made before the study starts (the tuner's cache), so the window measures
scheduling, not quantization. For each board, the agent's own job times (started ->
finished) are merged and clipped to the window from the end of the first trial to the end of
the last; busy share = covered time / window. The gap between trials on a board: from the
end of one job to the start of the board's next, in the window (median and p90 over every
board's gaps; the host's time between a board's jobs). On this 2-core machine the four agents
share the cores, so their latencies mean nothing here; what is measured is whether the host
keeps every board fed. Target: the mean busy share >= 0.9. ``--queue-ahead 0`` runs the
scheduler one trial at a time per board (as before pipelining), for comparison.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import check, finish, log_progress, machine, make_pki, local_agent  # noqa: E402
from bench.tune_efficiency import SPACE, build_inputs, workdir  # noqa: E402


def covered(intervals: List[Tuple[float, float]], start: float, end: float) -> float:
    """Length of the union of ``intervals`` inside [start, end]."""
    total, last = 0.0, start
    for a, b in sorted(intervals):
        a, b = max(a, last), min(b, end)
        if b > a:
            total += b - a
            last = b
    return total


def gaps(intervals: List[Tuple[float, float]], start: float, end: float) -> List[float]:
    """Idle stretches between consecutive jobs (sorted by start), clipped to [start, end]."""
    out: List[float] = []
    last = None
    for a, b in sorted(intervals):
        if last is not None and a > last:
            gap = min(a, end) - max(last, start)
            if gap > 0:
                out.append(gap)
        last = b if last is None else max(last, b)
    return out


def quantile(values: List[float], q: float) -> Optional[float]:
    """The q-quantile (nearest rank) of ``values``; None for none."""
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _round(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(value, 3)


def premake_variants(model: Path, calib: Path, cache_dir: Path) -> int:
    """Every INT8 variant of the space, made now with the tuner's cache and data."""
    from bench.tune_efficiency import board_space, enumerate_configs
    from edgetune.host.quant.calibdata import load_calibration
    from edgetune.host.quant.settings import CalibSource, QuantizeSettings
    from edgetune.host.tune.space import candidate
    from edgetune.host.tune.variants import VariantCache

    sources = (CalibSource(path=calib),)
    data = load_calibration(model, QuantizeSettings(model=model, output=cache_dir / "x.onnx",
                                                    calib=sources, calib_count=100, seed=0))
    cache = VariantCache(model, sources, data, cache_dir, seed=0)
    quants = {candidate(p).quant for p in enumerate_configs(board_space())} - {None}
    for quant in quants:
        cache.get(quant, ())
    return len(quants)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=4, help="local agents (4)")
    parser.add_argument("--trials", type=int, default=24, help="trials of the study (24)")
    parser.add_argument("--size", type=int, default=112, help="input height and width (112)")
    parser.add_argument("--overlap-uploads", action="store_true",
                        help="let uploads overlap measurements (quiet_uploads=False)")
    parser.add_argument("--queue-ahead", type=int, default=1,
                        help="trials each board holds ready behind its running one (1; 0: one "
                             "at a time, as before pipelining)")
    parser.add_argument("--workdir", type=Path,
                        help="work in this new directory and keep it (default: a temporary one)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)

    import optuna

    from edgetune.host.quant.settings import CalibSource
    from edgetune.host.tune import BoardSpec, TuneSettings, run_study
    from edgetune.host.tune import study as studies
    from edgetune.host.tune.space import Space

    with workdir(args.workdir) as tmp, contextlib.ExitStack() as stack:
        pki = make_pki(tmp / "pki")
        model, calib, dataset = build_inputs(tmp, args.size)
        cache_dir = tmp / "variants"
        log_progress(args.json, "making the variants ...")
        made = premake_variants(model, calib, cache_dir)
        specs = []
        for i in range(args.agents):
            agent = stack.enter_context(local_agent(pki, tmp / f"store{i}"))
            specs.append(BoardSpec(f"board{i}", agent.address, pki.host_identity()))
        db = f"sqlite:///{tmp / 'results.db'}"
        settings = TuneSettings(
            model=model, calib=(CalibSource(path=calib),), dataset=dataset, db_url=db,
            space=Space.default().updated(SPACE, "bench"), study="bench-busy",
            trials=args.trials, final_rounds=0, cache_dir=cache_dir, lease=False,
            input_shapes=(("input", (1, 3, args.size, args.size)),), label="bench busy",
            **({"queue_ahead": args.queue_ahead} if args.queue_ahead != 1 else {}),
            **({"quiet_uploads": False} if args.overlap_uploads else {}))
        log_progress(args.json, f"study: {args.trials} trials on {args.agents} agents ...")
        started = time.time()
        result = run_study(settings, specs, say=None)
        wall = time.time() - started
        trials = optuna.load_study(study_name=result.study,
                                   storage=studies.open_storage(db)).get_trials()
        ends = sorted(t.datetime_complete.timestamp() for t in trials
                      if t.datetime_complete is not None)
        window = (ends[0], ends[-1]) if len(ends) >= 2 else (started, started + wall)
        share: Dict[str, float] = {}
        jobs: Dict[str, int] = {}
        between: Dict[str, List[float]] = {}
        timeline: Dict[str, List[Tuple[float, float, float, str]]] = {}
        for spec in specs:
            board = spec.open()
            try:
                listed = [j for j in board.list_jobs(1000) if j.started_unix and j.finished_unix]
            finally:
                board.close()
            spans = [(j.started_unix, j.finished_unix) for j in listed]
            jobs[spec.name] = len(spans)
            share[spec.name] = covered(spans, *window) / max(1e-9, window[1] - window[0])
            between[spec.name] = gaps(spans, *window)
            timeline[spec.name] = [(round(j.created_unix - window[0], 3),
                                    round(j.started_unix - window[0], 3),
                                    round(j.finished_unix - window[0], 3), j.label)
                                   for j in sorted(listed, key=lambda j: j.started_unix)]
    mean = statistics.mean(share.values())
    every_gap = [g for v in between.values() for g in v]
    gap_median, gap_p90 = quantile(every_gap, 0.5), quantile(every_gap, 0.9)
    result_doc = {
        "bench": "tune_busy", "machine": machine(), "agents": args.agents,
        "trials": args.trials, "size": args.size, "variants_premade": made,
        "states": result.trials, "wall_s": round(wall, 1),
        "window_s": round(window[1] - window[0], 1),
        "busy_share": {k: round(v, 3) for k, v in share.items()},
        "jobs_per_board": jobs, "mean_busy_share": round(mean, 3),
        "queue_ahead": args.queue_ahead, "quiet_uploads": not args.overlap_uploads,
        "gap_between_jobs_s": {"median": _round(gap_median), "p90": _round(gap_p90),
                               "count": len(every_gap),
                               "per_board_median": {k: _round(quantile(v, 0.5))
                                                    for k, v in between.items()}},
        "jobs_from_window_start_s": timeline,      # (queued, started, finished, label)
        "checks": [check("mean busy share of the boards after the first trial", mean, ">=",
                         0.9)],
    }
    lines = [f"{args.trials} trials on {args.agents} local agents (ResNet-18 shape "
             f"{args.size}x{args.size}), study {wall:.1f} s, window after the first trial "
             f"{window[1] - window[0]:.1f} s",
             "  busy share per board: " + ", ".join(f"{k} {v:.1%} ({jobs[k]} jobs)"
                                                    for k, v in share.items()),
             f"  mean busy share {mean:.1%} (target >= 90%: {'met' if mean >= 0.9 else 'missed'})",
             (f"  gap between a board's jobs: median {gap_median:.3f} s, p90 {gap_p90:.3f} s "
              if every_gap else "  gap between a board's jobs: none ") +
             f"({len(every_gap)} gaps; queue ahead {args.queue_ahead}, uploads "
             f"{'overlapping measurements' if args.overlap_uploads else 'between measurements'})"]
    return finish(result_doc, args.json, lines)


if __name__ == "__main__":
    sys.exit(main())
