"""The tuner's sample efficiency against exhaustive ground truth and random search, and its host
overhead per trial, on a ResNet-18-shaped model and a local agent.

    python bench/tune_efficiency.py [--seeds 5] [--size 112] [--budget 0.4] [--json]

1. A ResNet-18-shaped model (host/builders.py, random weights; input 3x``size``x``size``),
   8 random calibration samples and 16 evaluation samples (no labels: fidelity).
2. A fixed space (``SPACE``): FP32 or INT8 (per-channel or not, uint8 or int8 activations) x
   onnxruntime options (1 or 2 intra-op threads, sequential or parallel, basic / extended /
   all graph optimisation): 60 configurations, enumerated by Optuna's BruteForceSampler over
   the tuner's own define-by-run space.
3. Ground truth: every configuration measured once on the agent (a benchmark job through the
   board session: 10 warm-up, 100 timed runs, batch 1), its variant made by the tuner's cache.
4. For each seed, two studies with the same budget (``budget`` x 60 trials, the two seeded
   trials included): the tuner (``sampler="tpe"``, its default) and random search
   (``sampler="random"``), no accuracy constraint, no closing rounds. A study's answer is its
   fastest fully measured trial; it is judged by that configuration's ground-truth p50
   (so measurement noise in the study does not flatter it): the gap to the exhaustive best.
5. Host overhead per trial (quantization cached: every variant was made in step 3): the
   trial's wall time (Optuna's start and completion) minus the time its jobs ran on the board
   (each job's started -> finished, as the agent reports it).

Targets: median over seeds of the tuner's gap <= 3 %; the tuner's median gap <= random
search's; median host overhead per trial <= 0.5 s.
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


def ground_truth(configs: List[Dict[str, Any]], model: Path, calib: Path, cache_dir: Path,
                 spec: Any, shapes: Tuple[Tuple[str, Tuple[int, ...]], ...],
                 quiet: bool) -> Dict[Tuple[Tuple[str, Any], ...], float]:
    """Every configuration measured once: p50 ms. Variants made as the tuner makes them (the
    same cache, keys and calibration data), so the studies find them all cached."""
    from edgetune.host.quant.calibdata import load_calibration
    from edgetune.host.quant.settings import CalibSource, QuantizeSettings
    from edgetune.host.tune.space import candidate, with_shapes
    from edgetune.host.tune.variants import VariantCache
    from edgetune.protos.messages import BenchmarkSpec

    import json

    saved = cache_dir.parent / "ground_truth.json"
    if saved.is_file():                     # a kept --workdir: measured by an earlier run
        rows = json.loads(saved.read_text())
        return {key(row["params"]): float(row["p50_ms"]) for row in rows}
    sources = (CalibSource(path=calib),)
    data = load_calibration(model, QuantizeSettings(model=model, output=cache_dir / "x.onnx",
                                                    calib=sources, calib_count=100, seed=0))
    cache = VariantCache(model, sources, data, cache_dir, seed=0)
    truth: Dict[Tuple[Tuple[str, Any], ...], float] = {}
    board = spec.open()
    try:
        for i, params in enumerate(configs):
            cand = candidate(params)
            variant = cache.fp32() if cand.quant is None else cache.get(cand.quant, ())
            run = board.benchmark(variant.path, BenchmarkSpec(
                model_sha256="", session=with_shapes(cand.session, shapes), warmup=WARMUP,
                iterations=ITERATIONS), label=f"ground truth {i}")
            if not run.ok or run.result is None:
                raise SystemExit(f"ground truth {cand.describe()}: {run.state.value} {run.error}")
            truth[key(params)] = float(run.result.latency.p50_ms)
            log_progress(quiet, f"  ground truth {i + 1}/{len(configs)}: {cand.describe()}: "
                                f"{truth[key(params)]:.3f} ms")
    finally:
        board.close()
    saved.write_text(json.dumps([{"params": dict(k), "p50_ms": v} for k, v in truth.items()],
                                indent=1))
    return truth


def study(sampler: str, seed: int, trials: int, model: Path, calib: Path, dataset: Path,
          db: str, cache_dir: Path, spec: Any, shapes: Any) -> Tuple[Any, List[Any]]:
    from edgetune.host.quant.settings import CalibSource
    from edgetune.host.tune import TuneSettings, run_study
    from edgetune.host.tune.space import Space

    settings = TuneSettings(
        model=model, calib=(CalibSource(path=calib),), dataset=dataset, db_url=db,
        space=Space.default().updated(SPACE, "bench"), study=f"bench-{sampler}-{seed}",
        trials=trials, sampler=sampler, seed=seed, final_rounds=0, input_shapes=shapes,
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
    """Per trial: wall time minus the time its jobs ran on the board."""
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
                if j.started_unix and j.finished_unix:
                    on_board += j.finished_unix - j.started_unix
            out.append(wall - on_board)
    finally:
        board.close()
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds per sampler (5)")
    parser.add_argument("--size", type=int, default=112, help="input height and width (112)")
    parser.add_argument("--budget", type=float, default=0.4,
                        help="trials per study as a share of the configurations (0.4)")
    parser.add_argument("--workdir", type=Path,
                        help="work in this new directory and keep it (default: a temporary one)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)

    from edgetune.host.tune.boards import BoardSpec

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
            log_progress(args.json, f"{len(configs)} configurations; ground truth ...")
            truth = ground_truth(configs, model, calib, cache_dir, spec, shapes, args.json)
            best = min(truth.values())
            gaps: Dict[str, List[float]] = {"tpe": [], "random": []}
            overheads: List[float] = []
            per_seed = []
            for seed, sampler in itertools.product(range(args.seeds), ("tpe", "random")):
                log_progress(args.json, f"seed {seed}: {sampler}, {budget} trials ...")
                _, done = study(sampler, seed, budget, model, calib, dataset, db, cache_dir,
                                spec, shapes)
                found = answer_of(done)
                gap = (truth[key(found.params)] / best - 1.0) if found is not None else None
                if gap is not None:
                    gaps[sampler].append(gap)
                overheads += host_overheads(done, spec)
                per_seed.append({"seed": seed, "sampler": sampler,
                                 "gap": None if gap is None else round(gap, 4),
                                 "trial": None if found is None else found.number,
                                 "params": None if found is None else found.params})
    med = {k: statistics.median(v) if v else float("inf") for k, v in gaps.items()}
    overhead = statistics.median(overheads) if overheads else float("inf")
    ordered = sorted(overheads)
    result = {
        "bench": "tune_efficiency", "machine": machine(), "size": args.size,
        "configurations": len(configs), "budget_trials": budget,
        "budget_share": round(budget / len(configs), 3), "seeds": args.seeds,
        "ground_truth_best_ms": round(best, 4),
        "ground_truth_worst_ms": round(max(truth.values()), 4),
        "median_gap": {k: round(v, 4) for k, v in med.items()}, "runs": per_seed,
        "host_overhead_s": {"median": round(overhead, 3),
                            "p90": round(ordered[int(0.9 * (len(ordered) - 1))], 3)
                            if ordered else None, "trials": len(overheads)},
        "elapsed_s": round(time.perf_counter() - started, 1),
        "checks": [check("tuner gap to exhaustive best (median of seeds)", med["tpe"], "<=",
                         0.03),
                   check("tuner gap - random search gap (medians)", med["tpe"] - med["random"],
                         "<=", 0.0),
                   check("host overhead per trial s (median)", overhead, "<=", 0.5)],
    }
    lines = [f"ResNet-18 shape {args.size}x{args.size}, {len(configs)} configurations, "
             f"exhaustive best {best:.3f} ms (worst {max(truth.values()):.3f} ms); budget "
             f"{budget} trials ({budget / len(configs):.0%}), {args.seeds} seeds",
             f"  tuner (TPE): median gap {100 * med['tpe']:.1f}% "
             f"({', '.join(f'{100 * g:.1f}' for g in gaps['tpe'])})",
             f"  random search: median gap {100 * med['random']:.1f}% "
             f"({', '.join(f'{100 * g:.1f}' for g in gaps['random'])})",
             f"  host overhead per trial: median {overhead:.3f} s over {len(overheads)} trials"]
    return finish(result, args.json, lines)


if __name__ == "__main__":
    sys.exit(main())
