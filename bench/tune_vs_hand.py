"""The tuned model and session against the hand configurations of docs/quantization.md and
edgetune's default INT8, measured in the same run, interleaved, on a ResNet-18-shaped model
and a local agent.

    python bench/tune_vs_hand.py [--size 224] [--trials 24] [--rounds 7] [--max-drop 1]
                                 [--workdir DIR] [--json]

1. A ResNet-18-shaped model (host/builders.py, random weights; input 3x``size``x``size``),
   128 random calibration samples and 16 evaluation samples without labels: random weights
   make top-1 meaningless, so accuracy is fidelity (the cosine of the outputs to FP32's) and
   ``--max-drop`` bounds it (1 point: cosine >= 0.99).
2. ``edgetune tune`` on it (``run_study``, the default space, ``--trials``, the tuner's own
   closing rounds): its answer, a model and a session.
3. The hand configurations, each as a user would run it (``edgetune quantize`` with the
   options, ``edgetune bench`` with onnxruntime's default session): the columns of the
   precision table of docs/quantization.md (FP32; uint8 activations / int8 weights
   per-channel, which is edgetune's default INT8; int8 activations / int8 weights; int16
   activations), per-tensor weights, and FP32 and default INT8 at 1 thread (how that table
   was measured). Each is evaluated for fidelity on the board.
4. ``--rounds`` interleaved rounds: each round benchmarks every model once (10 warm-up, 100
   timed runs), the order rotating (and reversed every other round); the per-round ratios
   tuned / hand go through ``edgetune compare``'s statistics (geometric mean, 95 % t
   interval on the log scale).

Targets: the tuned result at least as fast as the fastest hand configuration within the
same ``--max-drop`` (not slower beyond noise: the interval's low end <= 1), and not slower
than default INT8 beyond noise (the same test). The ratios and intervals are printed; a
ratio < 1 is the tuned model being faster.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import check, finish, log_progress, machine, make_pki, local_agent  # noqa: E402
from bench.tune_efficiency import reuse_pki, workdir  # noqa: E402

WARMUP = 10
ITERATIONS = 100


@dataclasses.dataclass
class Entry:
    """One model + session measured in the rounds."""

    name: str
    path: Path
    session: Any
    fidelity: Optional[float] = None
    p50: List[float] = dataclasses.field(default_factory=list)


def hand_configs() -> List[Tuple[str, Optional[Dict[str, Any]], int]]:
    """(name, quantization options or None for FP32, intra-op threads or 0 for onnxruntime's
    default): the hand configurations of docs/quantization.md."""
    return [
        ("fp32", None, 0),
        ("int8 default (uint8/int8 per-channel)", {}, 0),
        ("uint8/int8 per-tensor", {"per_channel": False}, 0),
        ("int8/int8 per-channel", {"act_type": "int8"}, 0),
        ("int16 activations", {"act_type": "int16"}, 0),
        ("fp32, 1 thread", None, 1),
        ("int8 default, 1 thread", {}, 1),
    ]


def build_inputs(tmp: Path, size: int) -> Tuple[Path, Path, Path]:
    import numpy as np
    import onnx

    from edgetune.host import builders

    path = tmp / f"resnet18_{size}.onnx"
    calib, dataset = tmp / "calib.npz", tmp / "eval.npz"
    if path.is_file() and calib.is_file() and dataset.is_file():    # a kept --workdir
        return path, calib, dataset
    model = builders.resnet18_shape(seed=0)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value = size
    dims[3].dim_value = size
    onnx.checker.check_model(model)
    builders.save(model, path)
    rng = np.random.default_rng(0)
    np.savez(calib, input=rng.standard_normal((128, 3, size, size)).astype(np.float32))
    np.savez(dataset, input=rng.standard_normal((16, 3, size, size)).astype(np.float32))
    return path, calib, dataset


def tune(model: Path, calib: Path, dataset: Path, tmp: Path, spec: Any,
         shapes: Any, args: argparse.Namespace) -> Any:
    from edgetune.host.quant.settings import CalibSource
    from edgetune.host.tune import TuneSettings, run_study

    settings = TuneSettings(
        model=model, calib=(CalibSource(path=calib),), dataset=dataset,
        db_url=f"sqlite:///{tmp / 'results.db'}", study=f"vs-hand-{args.size}",
        max_drop=args.max_drop, accuracy="fidelity", trials=args.trials, seed=0,
        final_rounds=args.final_rounds, input_shapes=shapes, cache_dir=tmp / "variants",
        label="bench tune_vs_hand", lease=False)
    say = None if args.json else (lambda text: log_progress(False, f"  {text}"))
    return run_study(settings, [spec], say=say)


def hand_entries(model: Path, calib: Path, tmp: Path, shapes: Any) -> List[Entry]:
    """The hand configurations' models (made by the tuner's variant cache: the same quantizer
    and options as ``edgetune quantize``) with their sessions."""
    from edgetune.host.quant.calibdata import load_calibration
    from edgetune.host.quant.settings import CalibSource, QuantizeSettings
    from edgetune.host.tune.space import QuantParams
    from edgetune.host.tune.variants import VariantCache
    from edgetune.protos.messages import SessionOptions

    sources = (CalibSource(path=calib),)
    cache_dir = tmp / "variants"
    data = load_calibration(model, QuantizeSettings(model=model, output=cache_dir / "x.onnx",
                                                    calib=sources, calib_count=128, seed=0))
    cache = VariantCache(model, sources, data, cache_dir, seed=0)
    out = []
    for name, options, threads in hand_configs():
        variant = cache.fp32() if options is None else cache.get(
            dataclasses.replace(QuantParams(), **options), ())
        out.append(Entry(name, variant.path, SessionOptions(
            intra_op_threads=threads, input_shapes=tuple(sorted(shapes)))))
    return out


def fidelity(board: Any, entry: Entry, reference: Path) -> float:
    from edgetune.host.tune import objective as obj
    from edgetune.protos.messages import EvaluateSpec

    run = board.evaluate(entry.path, reference, EvaluateSpec(
        model_sha256="", dataset_sha256="", session=dataclasses.replace(
            entry.session, intra_op_threads=0), metrics=("fidelity",)),
        label=f"vs hand eval {entry.name}")
    if not run.ok or run.result is None:
        raise SystemExit(f"evaluating {entry.name}: {run.state.value} {run.error}")
    return obj.accuracy_value(run.result.metric_dict(), "fidelity")


def rounds(board: Any, entries: Sequence[Entry], count: int, quiet: bool) -> None:
    from edgetune.protos.messages import BenchmarkSpec

    for r in range(count):
        order = list(entries[r % len(entries):]) + list(entries[:r % len(entries)])
        if r % 2:
            order = order[::-1]
        for e in order:
            run = board.benchmark(e.path, BenchmarkSpec(
                model_sha256="", session=e.session, warmup=WARMUP, iterations=ITERATIONS),
                label=f"vs hand r{r + 1} {e.name}")
            if not run.ok or run.result is None:
                raise SystemExit(f"benchmarking {e.name}: {run.state.value} {run.error}")
            e.p50.append(float(run.result.latency.p50_ms))
        log_progress(quiet, f"  round {r + 1}/{count}: " + ", ".join(
            f"{e.name} {e.p50[-1]:.3f}" for e in entries))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=224, help="input height and width (224)")
    parser.add_argument("--trials", type=int, default=24, help="the study's trials (24)")
    parser.add_argument("--final-rounds", type=int, default=5,
                        help="the tuner's own closing rounds (5, as `edgetune tune`)")
    parser.add_argument("--rounds", type=int, default=7,
                        help="interleaved rounds of the comparison (7)")
    parser.add_argument("--max-drop", type=float, default=1.0,
                        help="fidelity points the tuned model and the hand ones may lose (1)")
    parser.add_argument("--workdir", type=Path,
                        help="work in this new directory and keep it (default: a temporary one)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    if args.rounds < 2 or args.trials < 3:
        parser.error("--rounds must be >= 2 (a confidence interval) and --trials >= 3")

    from edgetune.host.results.compare import ratio_interval
    from edgetune.host.tune import objective as obj
    from edgetune.host.tune.boards import BoardSpec

    started = time.perf_counter()
    with workdir(args.workdir) as tmp:
        pki = make_pki(tmp / "pki") if not (tmp / "pki").is_dir() else reuse_pki(tmp / "pki")
        model, calib, dataset = build_inputs(tmp, args.size)
        shapes = (("input", (1, 3, args.size, args.size)),)
        reference = obj.dataset_for("fidelity", dataset, model, tmp)
        with local_agent(pki, tmp / "store") as agent:
            spec = BoardSpec("bench-board", agent.address, pki.host_identity())
            log_progress(args.json, f"tuning ({args.trials} trials) ...")
            result = tune(model, calib, dataset, tmp, spec, shapes, args)
            if result.best_variant is None or result.best_session is None:
                raise SystemExit(f"the study gave no answer: {result.summary}")
            tuned = Entry(f"tuned (trial {result.best['trial']})", result.best_variant.path,
                          result.best_session)
            log_progress(args.json, "the hand configurations ...")
            hands = hand_entries(model, calib, tmp, shapes)
            entries = [tuned] + hands
            board = spec.open()
            try:
                for e in entries:
                    e.fidelity = fidelity(board, e, reference)
                log_progress(args.json, f"{args.rounds} interleaved rounds of {len(entries)} "
                                        "models ...")
                rounds(board, entries, args.rounds, args.json)
            finally:
                board.close()
    base_fid = next(e.fidelity for e in hands if e.name == "fp32")
    rows = []
    for e in hands:
        iv = ratio_interval([t / h for t, h in zip(tuned.p50, e.p50)])
        drop = 100 * (base_fid - e.fidelity) if e.fidelity is not None else None
        rows.append({"name": e.name, "p50_ms": sorted(e.p50)[len(e.p50) // 2],
                     "fidelity": e.fidelity, "drop_pts": drop,
                     "within_max_drop": drop is not None and drop <= args.max_drop + 1e-9,
                     "tuned_over_hand": iv.ratio, "ci": iv.as_list(),
                     "significant": iv.significant})
    feasible = [r for r in rows if r["within_max_drop"]]
    best_hand = min(feasible, key=lambda r: r["p50_ms"])
    default = next(r for r in rows if r["name"].startswith("int8 default ("))

    def not_slower(row: Dict[str, Any]) -> float:
        """The interval's low end (<= 1: the tuned model is not slower beyond noise)."""
        return row["ci"][0] if row["ci"] else row["tuned_over_hand"]

    tuned_drop = 100 * (base_fid - tuned.fidelity) if tuned.fidelity is not None else None
    doc = {
        "bench": "tune_vs_hand", "machine": machine(), "size": args.size,
        "trials": args.trials, "rounds": args.rounds, "max_drop": args.max_drop,
        "tuned": {"trial": result.best["trial"], "params": result.best["params"],
                  "session": result.best["session"], "p50_ms": sorted(tuned.p50)[
                      len(tuned.p50) // 2], "fidelity": tuned.fidelity, "drop_pts": tuned_drop,
                  "study_summary": result.summary, "study_trials": result.trials},
        "hand": rows, "best_hand": best_hand["name"],
        "elapsed_s": round(time.perf_counter() - started, 1),
        "checks": [check(f"tuned / best hand ({best_hand['name']}), CI low end",
                         not_slower(best_hand), "<=", 1.0),
                   check("tuned / default INT8, CI low end", not_slower(default), "<=", 1.0)],
    }
    lines = [f"ResNet-18 shape {args.size}x{args.size}: tuned trial {result.best['trial']} "
             f"({', '.join(f'{k}={v}' for k, v in result.best['params'].items())}), p50 "
             f"{doc['tuned']['p50_ms']:.3f} ms, fidelity drop {tuned_drop:.2f} pts; "
             f"{args.rounds} interleaved rounds",
             f"  study: {result.summary}"]
    for r in rows:
        ci = (f"95% CI {r['ci'][0]:.3f}-{r['ci'][1]:.3f}" if r["ci"] else "no CI")
        lines.append(f"  {r['name']:40s} p50 {r['p50_ms']:8.3f} ms  drop {r['drop_pts']:6.2f} "
                     f"pts{'' if r['within_max_drop'] else ' (over --max-drop)'}  tuned/hand "
                     f"{r['tuned_over_hand']:.3f} ({ci})")
    lines.append(f"  fastest hand configuration within --max-drop {args.max_drop:g}: "
                 f"{best_hand['name']}")
    return finish(doc, args.json, lines)


if __name__ == "__main__":
    sys.exit(main())
