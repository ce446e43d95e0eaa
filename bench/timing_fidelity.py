"""Timing fidelity: does the agent report the latency the model really has?

    python bench/timing_fidelity.py [--model resnet18] [--threads 1] [--rounds 12] \\
        [--iterations 60] [--warmup 10] [--json]

The same ONNX model (host.builders.resnet18_shape by default, seed 0, 1x3x224x224) is timed
two ways, alternating in rounds to cancel the drift of a shared machine
(in-process, agent, in-process, agent, ...):

- in-process (the baseline): this script creates an onnxruntime session with the same options
  the agent is asked for (CPU provider, intra/inter-op threads, graph optimisation "all",
  sequential execution), builds the same random input (numpy default_rng(seed), N(0,1)
  float32), does one first run and ``--warmup`` runs, then times ``session.run`` alone with
  ``time.perf_counter_ns`` for ``--iterations`` iterations (garbage collector off during the
  loop, as in the agent's runner and timeit), and takes the p50;
- agent: a benchmark job with the same spec (model stored once beforehand, new session per
  job, as the agent always does) through ``AgentClient.run`` over mutual TLS; its reported
  ``latency.p50_ms``.

Per round it prints both p50s and agent/in-process; the target is a median ratio within 3 %
of 1 (0.97..1.03). The in-process process is idle while the agent measures and vice versa.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (check, connect, finish, local_agent, log_progress,  # noqa: E402
                          machine, make_pki, median, percentile, round_arguments)

TOLERANCE = 0.03
MODELS = ("resnet18", "mobilenetv2", "tiny_cnn")


def build_model(name: str, path: Path) -> Path:
    from edgetune.host import builders

    model = builders.build(name, seed=0, batch=1)
    return builders.save(model, path)


def in_process_p50(model_path: Path, threads: int, warmup: int, iterations: int,
                   seed: int = 0) -> Dict[str, float]:
    """Time ``model_path`` in this process the way the agent's runner does; p50 and more (ms)."""
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    start = time.perf_counter_ns()
    session = ort.InferenceSession(str(model_path), sess_options=so,
                                   providers=["CPUExecutionProvider"])
    load_ms = (time.perf_counter_ns() - start) / 1e6
    rng = np.random.default_rng(seed)
    feeds = {i.name: np.ascontiguousarray(rng.standard_normal(
        [d if isinstance(d, int) and d > 0 else 1 for d in i.shape]).astype(np.float32))
        for i in session.get_inputs()}
    names = [o.name for o in session.get_outputs()]
    run = session.run
    run(names, feeds)                                  # first run, as the agent does
    for _ in range(warmup):
        run(names, feeds)
    clock = time.perf_counter_ns
    samples: List[int] = []
    append = samples.append
    gc.collect()
    gc.disable()                 # no collector pauses in the timed loop, as the agent does
    try:
        for _ in range(iterations):
            t0 = clock()
            run(names, feeds)
            append(clock() - t0)
    finally:
        gc.enable()
    ms = [s / 1e6 for s in samples]
    del session
    gc.collect()
    return {"p50_ms": percentile(ms, 50), "mean_ms": sum(ms) / len(ms), "min_ms": min(ms),
            "p90_ms": percentile(ms, 90), "load_ms": load_ms}


def agent_p50(client: Any, sha256: str, threads: int, warmup: int,
              iterations: int, seed: int = 0) -> Dict[str, float]:
    from edgetune.protos.messages import BenchmarkSpec, JobState, SessionOptions

    spec = BenchmarkSpec(model_sha256=sha256, warmup=warmup, iterations=iterations, seed=seed,
                         session=SessionOptions(intra_op_threads=threads,
                                                inter_op_threads=threads))
    job = client.run(spec, label="bench timing_fidelity")
    if job.state is not JobState.SUCCEEDED or job.result is None:
        raise RuntimeError(f"the agent's benchmark job ended {job.state.value}: {job.error}")
    lat = job.result.latency
    return {"p50_ms": lat.p50_ms, "mean_ms": lat.mean_ms, "min_ms": lat.min_ms,
            "p90_ms": lat.p90_ms, "load_ms": job.result.load_ms}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    args = round_arguments(parser, rounds=12, models=MODELS)(argv)

    from edgetune.protos.messages import BlobKind

    rounds: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="edgetune-bench-") as tmp:
        d = Path(tmp)
        pki = make_pki(d / "pki")
        model_path = build_model(args.model, d / f"{args.model}.onnx")
        with local_agent(pki, d / "store") as agent, connect(agent.address, pki) as client:
            sha256 = client.upload(model_path, BlobKind.MODEL).blob.sha256
            for r in range(args.rounds):
                local = in_process_p50(model_path, args.threads, args.warmup, args.iterations)
                remote = agent_p50(client, sha256, args.threads, args.warmup, args.iterations)
                ratio = remote["p50_ms"] / local["p50_ms"]
                rounds.append({"round": r + 1, "in_process": _rounded(local),
                               "agent": _rounded(remote), "ratio": round(ratio, 4)})
                log_progress(args.json, f"round {r + 1}/{args.rounds}: in-process p50 "
                             f"{local['p50_ms']:.3f} ms, agent p50 {remote['p50_ms']:.3f} ms, "
                             f"agent/in-process {ratio:.3f}")
    ratios = [r["ratio"] for r in rounds]
    med = median(ratios)
    result = {
        "benchmark": "timing_fidelity", "model": args.model, "threads": args.threads,
        "iterations": args.iterations, "warmup": args.warmup, "rounds": rounds,
        "median_ratio": round(med, 4),
        "median_p50_ms": {"in_process": round(median(r["in_process"]["p50_ms"] for r in rounds), 3),
                          "agent": round(median(r["agent"]["p50_ms"] for r in rounds), 3)},
        "checks": [check("|agent/in-process p50 - 1| (median of rounds)", abs(med - 1.0), "<=",
                         TOLERANCE)],
        "machine": machine(),
    }
    lines = [f"timing fidelity, {args.model} shape, {args.threads} thread(s), "
             f"{args.iterations} iterations after {args.warmup} warm-up, {args.rounds} rounds:",
             "  round  in-process p50   agent p50   agent/in-process"]
    lines += [f"  {r['round']:>5}  {r['in_process']['p50_ms']:11.3f} ms "
              f"{r['agent']['p50_ms']:8.3f} ms   {r['ratio']:.4f}" for r in rounds]
    lines.append(f"  median ratio {med:.4f} (min {min(ratios):.4f}, max {max(ratios):.4f})")
    return finish(result, args.json, lines)


def _rounded(values: Dict[str, float]) -> Dict[str, float]:
    return {k: round(v, 4) for k, v in values.items()}


if __name__ == "__main__":
    sys.exit(main())
