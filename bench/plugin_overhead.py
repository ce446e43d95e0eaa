"""Runner plug-in overhead: does timing a model through a runner plug-in (device/plugins.py)
report the p50 that onnxruntime in the agent's own process reports?

    python bench/plugin_overhead.py [--model resnet18] [--threads 1] [--rounds 10] \\
        [--iterations 60] [--warmup 10] [--json]

One local agent (mutual TLS) whose agent.toml registers one runner plug-in,
tests/plugins/ort_plugin.py: a Python program that runs the model with onnxruntime in its own
process with the same session options (CPU provider, ``--threads`` intra/inter-op threads,
graph optimisation "all", sequential), the same timed loop (``session.run`` alone between two
``perf_counter_ns`` reads, GC off) and prints one ``{"ms": ...}`` line per timed iteration, as
the protocol asks. The model: ``host.builders.resnet18_shape`` (seed 0, 1x3x224x224; or
another builder's with ``--model``), stored once. Each round runs two benchmark jobs of the same length on the same stored model, in
alternating order (in-process, plug-in; plug-in, in-process; ...), so a shared machine's drift
falls on both. The ratio per round is plug-in p50 / in-process p50; the target is a median
ratio <= 1.02 (the protocol adds at most 2 % to p50).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (check, connect, finish, local_agent, log_progress,  # noqa: E402
                          machine, make_pki, median, round_arguments)

TARGET = 1.02
PLUGIN = Path(__file__).resolve().parent.parent / "tests" / "plugins" / "ort_plugin.py"


def runner_table(threads: int) -> str:
    argv = ", ".join(f'"{a}"' for a in (sys.executable, str(PLUGIN), "--threads", str(threads)))
    return f'[runners.ort]\ncommand = [{argv}]\nformats = ["onnx"]\ntimeout_s = 600\n'


def p50(client: Any, sha256: str, runner: str, threads: int, warmup: int,
        iterations: int) -> Dict[str, float]:
    from edgetune.protos.messages import BenchmarkSpec, JobState, SessionOptions

    session = SessionOptions() if runner else SessionOptions(intra_op_threads=threads,
                                                              inter_op_threads=threads)
    spec = BenchmarkSpec(model_sha256=sha256, session=session, warmup=warmup,
                         iterations=iterations, runner=runner)
    job = client.run(spec, label=f"bench plugin_overhead {runner or 'in-process'}")
    if job.state is not JobState.SUCCEEDED or job.result is None:
        raise RuntimeError(f"the {runner or 'in-process'} benchmark ended {job.state.value}: "
                           f"{job.error}")
    lat = job.result.latency
    return {"p50_ms": round(lat.p50_ms, 4), "mean_ms": round(lat.mean_ms, 4),
            "min_ms": round(lat.min_ms, 4)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    args = round_arguments(parser, rounds=10,
                           models=("resnet18", "mobilenetv2", "tiny_cnn"))(argv)

    from edgetune.host import builders
    from edgetune.protos.messages import BlobKind

    rounds: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="edgetune-bench-") as tmp:
        d = Path(tmp)
        pki = make_pki(d / "pki")
        model = builders.save(builders.build(args.model, seed=0, batch=1),
                              d / f"{args.model}.onnx")
        config = d / "agent.toml"
        config.write_text(runner_table(args.threads))
        with local_agent(pki, d / "store", ["--config", str(config)]) as agent, \
                connect(agent.address, pki) as client:
            sha256 = client.upload(model, BlobKind.MODEL).blob.sha256
            for r in range(args.rounds):
                order = ("", "ort") if r % 2 == 0 else ("ort", "")
                got = {name: p50(client, sha256, name, args.threads, args.warmup,
                                 args.iterations) for name in order}
                ratio = got["ort"]["p50_ms"] / got[""]["p50_ms"]
                rounds.append({"round": r + 1, "plugin_first": order[0] == "ort",
                               "in_process": got[""], "plugin": got["ort"],
                               "ratio": round(ratio, 4)})
                log_progress(args.json, f"round {r + 1}/{args.rounds}: in-process p50 "
                             f"{got['']['p50_ms']:.3f} ms, plug-in p50 "
                             f"{got['ort']['p50_ms']:.3f} ms, ratio {ratio:.4f}")
    ratios = [r["ratio"] for r in rounds]
    med = median(ratios)
    result = {
        "benchmark": "plugin_overhead", "model": args.model, "threads": args.threads,
        "iterations": args.iterations, "warmup": args.warmup, "rounds": rounds,
        "median_ratio": round(med, 4),
        "median_p50_ms": {"in_process": round(median(r["in_process"]["p50_ms"] for r in rounds), 3),
                          "plugin": round(median(r["plugin"]["p50_ms"] for r in rounds), 3)},
        "checks": [check("plug-in p50 / in-process p50 (median of rounds)", med, "<=", TARGET)],
        "machine": machine(),
    }
    lines = [f"runner plug-in overhead, {args.model} shape, {args.threads} thread(s), "
             f"{args.iterations} iterations after {args.warmup} warm-up, {args.rounds} rounds:",
             "  round  in-process p50   plug-in p50   plug-in/in-process"]
    lines += [f"  {r['round']:>5}  {r['in_process']['p50_ms']:11.3f} ms "
              f"{r['plugin']['p50_ms']:10.3f} ms   {r['ratio']:.4f}" for r in rounds]
    lines.append(f"  median ratio {med:.4f} (min {min(ratios):.4f}, max {max(ratios):.4f})")
    return finish(result, args.json, lines)


if __name__ == "__main__":
    sys.exit(main())
