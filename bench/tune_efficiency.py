"""The tuner's sample efficiency against exhaustive ground truth and random search, and its host
overhead per trial, on a ResNet-18-shaped model and a local agent.

    python bench/tune_efficiency.py [--seeds 5] [--size 112] [--budget 0.4] [--rounds 3]
                                    [--final-rounds 3] [--workdir DIR] [--json]

1. A ResNet-18-shaped model (host/builders.py, random weights; input 3x``size``x``size``),
   8 random calibration samples and 16 evaluation samples (no labels: accuracy is fidelity,
   the cosine to FP32's outputs; random weights make top-1 meaningless).
2. A fixed space (``SPACE``): FP32 or INT8 (per-channel or not, uint8 or int8 activations) x
   onnxruntime options (1 or 2 intra-op threads, sequential or parallel, basic / extended /
   all graph optimisation): 60 configurations, enumerated by Optuna's BruteForceSampler over
   the tuner's own define-by-run space.
3. Ground truth: every configuration measured ``--rounds`` times, interleaved (each round
   measures every configuration once, in an order shuffled per round; 10 warm-up, 100 timed
   runs, batch 1); its ground truth is the median of its rounds, and the spread between
   rounds is reported (how well the table itself is measured). Each variant's fidelity is
   evaluated once; a configuration is feasible when it loses at most ``MAX_DROP`` points.
   The tuner's early stop is replayed on the table: how many short windows (the first 20
   runs) of the near-best configurations it would have stopped.
4. For each seed, two studies with the same budget (``budget`` x 60 trials, the two seeded
   trials included) and ``--max-drop MAX_DROP``: the tuner (``sampler="tpe"``, its default)
   and random search (``sampler="random"``), each with the tuner's closing rounds. A study's
   answer is the product's answer (``StudyResult.best``: with ``--max-drop``, the fastest of
   its near-tied best trials in the closing rounds); it is judged by that configuration's
   ground-truth p50, never by the study's own measurement of it: the gap to the exhaustive
   best feasible. The gap of the fastest trial by its own measurement is printed beside it.
   Evaluations = configurations a study measured on the board (a configuration proposed
   again reuses its measurement).
5. Host overhead per trial (quantization cached: every variant was made in step 3): the
   trial's wall time (Optuna's start and completion) minus the time its jobs ran on the board
   (each job's started -> finished, as the agent reports it).

Targets: median over seeds of the tuner's gap <= 3 %, with at most 40 % of the configurations
evaluated; the tuner's median gap <= random search's; median host overhead per trial <= 0.5 s.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import check, finish, log_progress, machine, make_pki, local_agent  # noqa: E402

SPACE: Dict[str, Any] = {
    "quantization.method": ["minmax"], "quantization.per_channel": [True, False],
    "quantization.act_type": ["uint8", "int8"], "quantization.weight_type": ["int8"],
    "quantization.symmetric_act": [False], "quantization.calib_count": [8],
    "quantization.keep_k": [0],
    "runtime.intra_op_threads": [1, 2], "runtime.inter_op_threads": [1],
    "runtime.execution_mode": ["sequential", "parallel"],
    "runtime.graph_optimization": ["basic", "extended", "all"],
}
WARMUP = 10
ITERATIONS = 100
SHORT = 20                 # the tuner's short measurement (iterations / 5)
TARGET = 0.03
MAX_DROP = 1.0             # fidelity points (cosine >= 0.99 of FP32's): the feasibility bound


@contextlib.contextmanager
def workdir(chosen: Optional[Path]) -> Iterator[Path]:
    """``chosen`` (made if new, kept: a run there resumes the one before), or a temporary
    directory removed at the end."""
    if chosen is not None:
        chosen.mkdir(parents=True, exist_ok=True)
        yield chosen.resolve()
        return
    with tempfile.TemporaryDirectory(prefix="edgetune-bench-") as name:
        yield Path(name)


def reuse_pki(directory: Path) -> Any:
    """The PKI ``make_pki`` wrote into a kept --workdir."""
    from bench.common import DEVICE_NAME, HOST_NAME, PASSPHRASE, BenchPki

    return BenchPki(dir=directory, passphrase=PASSPHRASE,
                    passphrase_file=directory / "passphrase",
                    ca_cert=directory / "ca-cert.pem",
                    device_cert=directory / f"{DEVICE_NAME}-cert.pem",
                    device_key=directory / f"{DEVICE_NAME}-key.pem",
                    host_cert=directory / f"{HOST_NAME}-cert.pem",
                    host_key=directory / f"{HOST_NAME}-key.pem")


def key(params: Dict[str, Any]) -> Tuple[Tuple[str, Any], ...]:
    return tuple(sorted(params.items()))


def build_inputs(tmp: Path, size: int) -> Tuple[Path, Path, Path]:
    import numpy as np
    import onnx

    from edgetune.host import builders

    model = builders.resnet18_shape(seed=0)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value = size
    dims[3].dim_value = size
    onnx.checker.check_model(model)
    path = tmp / f"resnet18_{size}.onnx"
    calib, dataset = tmp / "calib.npz", tmp / "eval.npz"
    if path.is_file() and calib.is_file() and dataset.is_file():    # a kept --workdir
        return path, calib, dataset
    builders.save(model, path)
    rng = np.random.default_rng(0)
    np.savez(calib, input=rng.standard_normal((8, 3, size, size)).astype(np.float32))
    np.savez(dataset, input=rng.standard_normal((16, 3, size, size)).astype(np.float32))
    return path, calib, dataset


def board_space() -> Any:
    from edgetune.host.tune.space import CPU, Space

    return Space.default().updated(SPACE, "bench").for_board(2, [CPU])


def enumerate_configs(space: Any) -> List[Dict[str, Any]]:
    """Every configuration of the tuner's define-by-run space (BruteForceSampler)."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    seen: List[Dict[str, Any]] = []

    def objective(trial: Any) -> float:
        seen.append(space.suggest(trial, 0))
        return 0.0

    optuna.create_study(sampler=optuna.samplers.BruteForceSampler(seed=0)).optimize(
        objective, n_trials=10_000)
    unique = {key(p): p for p in seen}
    return list(unique.values())


def ground_truth(configs: List[Dict[str, Any]], model: Path, calib: Path, dataset: Path,
                 cache_dir: Path, spec: Any, shapes: Tuple[Tuple[str, Tuple[int, ...]], ...],
                 rounds: int, quiet: bool) -> Dict[Tuple[Tuple[str, Any], ...], Dict[str, Any]]:
    """Every configuration measured ``rounds`` times, interleaved: each round measures every
    configuration once, in an order shuffled per round (load that comes and goes hits them
    alike). Per configuration: its p50 per round, their median (the ground truth), and the
    first ``SHORT`` timed runs of each round (what the tuner's short measurement would have
    seen: the early-stop check below). Variants made as the tuner makes them (the same cache,
    keys and calibration data), so the studies find them all cached."""
    import json
    import random

    from edgetune.host.quant.calibdata import load_calibration
    from edgetune.host.quant.settings import CalibSource, QuantizeSettings
    from edgetune.host.tune import objective as obj
    from edgetune.host.tune.space import candidate, with_shapes
    from edgetune.host.tune.variants import VariantCache
    from edgetune.protos.messages import BenchmarkSpec, EvaluateSpec

    saved = cache_dir.parent / "ground_truth.json"
    table: Dict[Tuple[Tuple[str, Any], ...], Dict[str, Any]] = {}
    if saved.is_file():                     # a kept --workdir: measured by an earlier run
        for row in json.loads(saved.read_text()):
            runs = row.get("p50_rounds_ms") or [row["p50_ms"]]
            table[key(row["params"])] = {"params": row["params"], "p50_rounds_ms": runs,
                                         "short": row.get("short") or [],
                                         "drop_pts": row.get("drop_pts")}
    sources = (CalibSource(path=calib),)
    data = load_calibration(model, QuantizeSettings(model=model, output=cache_dir / "x.onnx",
                                                    calib=sources, calib_count=100, seed=0))
    cache = VariantCache(model, sources, data, cache_dir, seed=0)
    reference = obj.dataset_for("fidelity", dataset, model, cache_dir.parent)
    fidelity: Dict[str, float] = {}
    done = min((len(table.get(key(p), {}).get("p50_rounds_ms", [])) for p in configs),
               default=0)
    board = spec.open()
    try:
        for r in range(done, rounds):
            order = list(configs)
            random.Random(1000 + r).shuffle(order)
            for i, params in enumerate(order):
                row = table.setdefault(key(params), {"params": params, "p50_rounds_ms": [],
                                                     "short": []})
                if len(row["p50_rounds_ms"]) > r:
                    continue
                cand = candidate(params)
                variant = cache.fp32() if cand.quant is None else cache.get(cand.quant, ())
                if row.get("drop_pts") is None:
                    if variant.sha256 not in fidelity:    # once per variant
                        ev = board.evaluate(variant.path, reference, EvaluateSpec(
                            model_sha256="", dataset_sha256="", session=with_shapes(
                                type(cand.session)(), shapes), metrics=("fidelity",)),
                            label=f"ground truth eval {variant.path.name[:12]}")
                        if not ev.ok or ev.result is None:
                            raise SystemExit(f"evaluating {cand.describe()}: {ev.error}")
                        fidelity[variant.sha256] = obj.accuracy_value(
                            ev.result.metric_dict(), "fidelity")
                    row["drop_pts"] = 100.0 * (1.0 - fidelity[variant.sha256])
                run = board.benchmark(variant.path, BenchmarkSpec(
                    model_sha256="", session=with_shapes(cand.session, shapes), warmup=WARMUP,
                    iterations=ITERATIONS, return_samples=True),
                    label=f"ground truth r{r + 1} {i}")
                if not run.ok or run.result is None:
                    raise SystemExit(f"ground truth {cand.describe()}: {run.state.value} "
                                     f"{run.error}")
                row["p50_rounds_ms"].append(float(run.result.latency.p50_ms))
                first = sorted(run.result.samples_ms[:SHORT])
                if first:
                    row["short"].append({"p50_ms": statistics.median(first),
                                         "min_ms": first[0]})
                log_progress(quiet, f"  ground truth round {r + 1}/{rounds}, {i + 1}/"
                                    f"{len(configs)}: {cand.describe()}: "
                                    f"{row['p50_rounds_ms'][-1]:.3f} ms")
            saved.write_text(json.dumps(list(table.values()), indent=1))   # per round
    finally:
        board.close()
    for row in table.values():
        row["p50_ms"] = float(statistics.median(row["p50_rounds_ms"]))
    return {key(p): table[key(p)] for p in configs}


def noise_of(truth: Dict[Any, Dict[str, Any]]) -> Dict[str, Any]:
    """How well the ground truth is measured: per configuration the spread of its rounds'
    p50 ((max - min) / median); their median and p90 over configurations."""
    spreads = sorted((max(r["p50_rounds_ms"]) - min(r["p50_rounds_ms"])) / r["p50_ms"]
                     for r in truth.values() if len(r["p50_rounds_ms"]) > 1)
    if not spreads:
        return {"rounds": 1, "spread_median": None, "spread_p90": None}
    return {"rounds": min(len(r["p50_rounds_ms"]) for r in truth.values()),
            "spread_median": round(statistics.median(spreads), 4),
            "spread_p90": round(spreads[int(0.9 * (len(spreads) - 1))], 4)}


def early_stop_check(truth: Dict[Any, Dict[str, Any]], best: float, margin: float
                     ) -> Dict[str, Any]:
    """The tuner's early stop replayed on the ground truth: of the configurations within
    ``TARGET`` of the best, how many short measurements (the first ``SHORT`` runs of a round)
    the rule would have stopped against the best's full p50 -- with the short p50 (the rule
    before) and with the short minimum (a lower bound of any latency statistic: the rule
    now)."""
    near = [r for r in truth.values() if r["p50_ms"] <= best * (1 + TARGET)]
    shorts = [s for r in near for s in r["short"]]
    by_p50 = sum(1 for s in shorts if best < s["p50_ms"] * (1 - margin))
    by_min = sum(1 for s in shorts if best < s["min_ms"] * (1 - margin))
    return {"near_best_configs": len(near), "short_measurements": len(shorts),
            "stopped_by_short_p50": by_p50, "stopped_by_short_min": by_min}


def study(sampler: str, seed: int, trials: int, model: Path, calib: Path, dataset: Path,
          db: str, cache_dir: Path, spec: Any, shapes: Any, final_rounds: int
          ) -> Tuple[Any, List[Any]]:
    from edgetune.host.quant.settings import CalibSource
    from edgetune.host.tune import TuneSettings, run_study
    from edgetune.host.tune.space import Space

    settings = TuneSettings(
        model=model, calib=(CalibSource(path=calib),), dataset=dataset, db_url=db,
        space=Space.default().updated(SPACE, "bench"), study=f"bench-{sampler}-{seed}",
        trials=trials, sampler=sampler, seed=seed, max_drop=MAX_DROP, accuracy="fidelity",
        final_rounds=final_rounds, input_shapes=shapes,
        cache_dir=cache_dir, label=f"bench {sampler} {seed}", lease=False)
    result = run_study(settings, [spec], say=None)
    import optuna

    from edgetune.host.tune import study as studies

    trials_done = optuna.load_study(study_name=result.study,
                                    storage=studies.open_storage(db)).get_trials()
    return result, trials_done


def answer_of(trials_done: List[Any]) -> Any:
    """The study's fastest fully measured trial (None if none finished)."""
    full = [t for t in trials_done if t.values and t.user_attrs.get("stage") == "full"]
    return min(full, key=lambda t: t.values[0]) if full else None


def host_overheads(trials_done: List[Any], spec: Any) -> List[float]:
    """Per trial: wall time minus the time its jobs spent on the board, from submission to
    end: with trials queued ahead, a job waits in the board's queue while the previous
    trial's job runs, which is board time, not the host's."""
    out = []
    board = spec.open()
    try:
        for t in trials_done:
            jobs = t.user_attrs.get("jobs") or {}
            if t.datetime_start is None or t.datetime_complete is None or not jobs:
                continue
            wall = (t.datetime_complete - t.datetime_start).total_seconds()
            on_board = 0.0
            for job in jobs.values():
                j = board.get_job(job["job_id"])
                if j.finished_unix and (j.created_unix or j.started_unix):
                    on_board += j.finished_unix - (j.created_unix or j.started_unix)
            out.append(wall - on_board)
    finally:
        board.close()
    return out


def judged(truth: Dict[Any, Dict[str, Any]], params: Optional[Dict[str, Any]], best: float
           ) -> Optional[float]:
    """The gap of the configuration ``params`` to the exhaustive best, by its ground truth
    (not by the study's own measurement of it)."""
    return None if params is None else truth[key(params)]["p50_ms"] / best - 1.0


def evaluations(trials_done: List[Any]) -> int:
    """Configurations the study measured on the board (a trial that reused an earlier
    trial's measurement is not one)."""
    return len({key(t.params) for t in trials_done if t.user_attrs.get("jobs")})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds per sampler (5)")
    parser.add_argument("--size", type=int, default=112, help="input height and width (112)")
    parser.add_argument("--budget", type=float, default=0.4,
                        help="trials per study as a share of the configurations (0.4)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="ground-truth rounds: every configuration measured this many "
                             "times, interleaved; its ground truth is the median (3)")
    parser.add_argument("--final-rounds", type=int, default=3,
                        help="the tuner's closing rounds (3): its answer is the fastest of "
                             "its near-tied best trials in them")
    parser.add_argument("--workdir", type=Path,
                        help="work in this new directory and keep it (default: a temporary one)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.rounds < 1 or not 0 < args.budget <= 1:
        parser.error("--seeds and --rounds must be >= 1, --budget in (0, 1]")

    from edgetune.host.tune.boards import BoardSpec
    from edgetune.host.tune.settings import TuneSettings

    started = time.perf_counter()
    with workdir(args.workdir) as tmp:
        pki = make_pki(tmp / "pki") if not (tmp / "pki").is_dir() else reuse_pki(tmp / "pki")
        model, calib, dataset = build_inputs(tmp, args.size)
        shapes = (("input", (1, 3, args.size, args.size)),)
        cache_dir = tmp / "variants"
        db = f"sqlite:///{tmp / 'results.db'}"
        configs = enumerate_configs(board_space())
        budget = max(3, int(args.budget * len(configs)))
        with local_agent(pki, tmp / "store") as agent:
            spec = BoardSpec("bench-board", agent.address, pki.host_identity())
            log_progress(args.json, f"{len(configs)} configurations; ground truth, "
                                    f"{args.rounds} round(s) ...")
            truth = ground_truth(configs, model, calib, dataset, cache_dir, spec, shapes,
                                 args.rounds, args.json)
            feasible = {k: r for k, r in truth.items() if r["drop_pts"] <= MAX_DROP + 1e-9}
            best = min(r["p50_ms"] for r in feasible.values())
            gaps: Dict[str, List[float]] = {"tpe": [], "random": []}
            trial_gaps: Dict[str, List[float]] = {"tpe": [], "random": []}
            evals: Dict[str, List[int]] = {"tpe": [], "random": []}
            overheads: List[float] = []
            per_seed = []
            for seed, sampler in itertools.product(range(args.seeds), ("tpe", "random")):
                log_progress(args.json, f"seed {seed}: {sampler}, {budget} trials ...")
                result, done = study(sampler, seed, budget, model, calib, dataset, db,
                                     cache_dir, spec, shapes, args.final_rounds)
                answer = result.best["params"] if result.best and result.target_met else None
                gap = judged(truth, answer, best)
                if gap is not None:
                    gaps[sampler].append(gap)
                found = answer_of(done)
                trial_gap = judged(truth, found.params if found is not None else None, best)
                if trial_gap is not None:
                    trial_gaps[sampler].append(trial_gap)
                evals[sampler].append(evaluations(done))
                overheads += host_overheads(done, spec)
                per_seed.append({"seed": seed, "sampler": sampler,
                                 "gap": None if gap is None else round(gap, 4),
                                 "answer": answer,
                                 "fastest_trial_gap": None if trial_gap is None
                                 else round(trial_gap, 4),
                                 "evaluations": evals[sampler][-1],
                                 "trial": None if found is None else found.number,
                                 "measured_ms": None if found is None else found.values[0],
                                 "params": None if found is None else found.params})
    med = {k: statistics.median(v) if v else float("inf") for k, v in gaps.items()}
    med_trial = {k: statistics.median(v) if v else float("inf") for k, v in trial_gaps.items()}
    overhead = statistics.median(overheads) if overheads else float("inf")
    ordered = sorted(overheads)
    noise = noise_of(truth)
    near = sum(1 for r in feasible.values() if r["p50_ms"] <= best * (1 + TARGET))
    stop_check = early_stop_check(feasible, best, TuneSettings.__dataclass_fields__[
        "prune_margin"].default)
    most_evals = max(evals["tpe"] + evals["random"], default=0)
    result = {
        "bench": "tune_efficiency", "machine": machine(), "size": args.size,
        "configurations": len(configs), "budget_trials": budget,
        "budget_share": round(budget / len(configs), 3), "seeds": args.seeds,
        "ground_truth_best_ms": round(best, 4),
        "ground_truth_worst_ms": round(max(r["p50_ms"] for r in truth.values()), 4),
        "ground_truth_noise": noise, "configs_within_target": near,
        "early_stop_replay": stop_check,
        "ground_truth": [{"params": r["params"], "p50_ms": round(r["p50_ms"], 4),
                          "drop_pts": round(r["drop_pts"], 4),
                          "p50_rounds_ms": [round(v, 4) for v in r["p50_rounds_ms"]]}
                         for r in sorted(truth.values(), key=lambda r: r["p50_ms"])],
        "median_gap": {k: round(v, 4) for k, v in med.items()},
        "median_gap_fastest_trial": {k: round(v, 4) for k, v in med_trial.items()},
        "max_drop": MAX_DROP, "feasible_configurations": len(feasible),
        "evaluations": {k: v for k, v in evals.items()}, "runs": per_seed,
        "host_overhead_s": {"median": round(overhead, 3),
                            "p90": round(ordered[int(0.9 * (len(ordered) - 1))], 3)
                            if ordered else None, "trials": len(overheads)},
        "elapsed_s": round(time.perf_counter() - started, 1),
        "checks": [check("tuner gap to exhaustive best (median of seeds)", med["tpe"], "<=",
                         TARGET),
                   check("evaluations per study / configurations (most)",
                         most_evals / len(configs), "<=", 0.4),
                   check("tuner gap - random search gap (medians)", med["tpe"] - med["random"],
                         "<=", 0.0),
                   check("host overhead per trial s (median)", overhead, "<=", 0.5)],
    }
    spread = ("one round: no noise figure" if noise["spread_median"] is None else
              f"round-to-round spread of a configuration's p50: median "
              f"{100 * noise['spread_median']:.1f}%, p90 {100 * noise['spread_p90']:.1f}%")
    lines = [f"ResNet-18 shape {args.size}x{args.size}, {len(configs)} configurations, "
             f"exhaustive best {best:.3f} ms (worst "
             f"{max(r['p50_ms'] for r in truth.values()):.3f} ms); budget {budget} trials "
             f"({budget / len(configs):.0%}), {args.seeds} seed(s)",
             f"  ground truth: median of {noise['rounds']} interleaved round(s); {spread}; "
             f"{len(feasible)} feasible (fidelity drop <= {MAX_DROP:g} pts), {near} within "
             f"{100 * TARGET:.0f}% of the best",
             f"  early stop replayed on the {stop_check['near_best_configs']} near-best "
             f"configurations' short windows: {stop_check['stopped_by_short_p50']} of "
             f"{stop_check['short_measurements']} stopped by the short p50, "
             f"{stop_check['stopped_by_short_min']} by the short minimum",
             f"  tuner (TPE): median gap {100 * med['tpe']:.1f}% (target <= "
             f"{100 * TARGET:.0f}%: {'met' if med['tpe'] <= TARGET else 'MISSED'}); seeds "
             f"{', '.join(f'{100 * g:.1f}' for g in gaps['tpe'])}; evaluations "
             f"{', '.join(map(str, evals['tpe']))}",
             f"  random search: median gap {100 * med['random']:.1f}% (target <= "
             f"{100 * TARGET:.0f}%: {'met' if med['random'] <= TARGET else 'missed'}); seeds "
             f"{', '.join(f'{100 * g:.1f}' for g in gaps['random'])}; evaluations "
             f"{', '.join(map(str, evals['random']))}",
             f"  the fastest trial's own measurement, before the closing rounds: median gap "
             f"tuner {100 * med_trial['tpe']:.1f}%, random {100 * med_trial['random']:.1f}%",
             f"  host overhead per trial: median {overhead:.3f} s over {len(overheads)} trials"]
    return finish(result, args.json, lines)


if __name__ == "__main__":
    sys.exit(main())
