"""A runner plug-in for the tests (docs/agent.md, "Runner plug-ins"): runs the model with
onnxruntime in its own process, so its numbers can be set beside the agent's in-process ones.

``--behave`` picks a misbehaviour the agent must survive: crash, hang, garbage, wrong-shape,
few-lines; or ``skew:OUTPUT``: that output comes out 3 % larger, as a board kernel computing
one layer differently would give (analyze --device must flag that layer alone); ``--summary`` prints one {"samples_ms": [...]} line instead of one line per
iteration; ``--threads N`` sets onnxruntime's intra- and inter-op threads as the agent's
session options do (bench/plugin_overhead.py). Everything else is the protocol's own
arguments. The timed loop is the agent's: ``session.run`` alone between two
``perf_counter_ns`` reads, the garbage collector off.
"""

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--behave", default="ok")
    parser.add_argument("--summary", action="store_true")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--mode", required=True, choices=("benchmark", "evaluate"))
    parser.add_argument("--model", required=True)
    parser.add_argument("--inputs", required=True)
    parser.add_argument("--outputs", required=True)
    parser.add_argument("--warmup", type=int, required=True)
    parser.add_argument("--iterations", type=int, required=True)
    args = parser.parse_args()
    print(f"plug-in: {args.mode} of {os.path.basename(args.model)} ({args.behave}); "
          f"EDGETUNE_PASSPHRASE {'set' if 'EDGETUNE_PASSPHRASE' in os.environ else 'unset'}",
          file=sys.stderr)
    if args.behave == "crash":
        print("plug-in: the NPU driver is gone", file=sys.stderr)
        sys.stderr.flush()
        os.abort()
    if args.behave == "hang":
        Path("hanging").write_text(str(os.getpid()))
        time.sleep(3600)
    if args.behave == "garbage":
        print("loading the NPU firmware...")
        return 0

    import onnxruntime as ort
    start = time.perf_counter()
    options = ort.SessionOptions()
    if args.threads:
        options.intra_op_num_threads = options.inter_op_num_threads = args.threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(args.model, sess_options=options,
                                   providers=["CPUExecutionProvider"])
    load_ms = (time.perf_counter() - start) * 1e3
    feeds = {p.name[:-4]: np.load(p) for p in sorted(Path(args.inputs).glob("*.npy"))}
    names = [o.name for o in session.get_outputs()]

    if args.mode == "evaluate":
        n = len(next(iter(feeds.values())))
        parts = [session.run(names, {k: v[b:b + 64] for k, v in feeds.items()})
                 for b in range(0, n, 64)]
        for i, name in enumerate(names):
            out = np.concatenate([p[i] for p in parts])
            if args.behave == "wrong-shape":
                out = out[:, :3]
            if args.behave == f"skew:{name}":
                out = out * np.float32(1.03)
            np.save(Path(args.outputs) / f"{name}.npy", out)
        return 0

    start = time.perf_counter()
    session.run(names, feeds)
    first_ms = (time.perf_counter() - start) * 1e3
    print(json.dumps({"load_ms": load_ms, "first_run_ms": first_ms}))
    for _ in range(args.warmup):
        session.run(names, feeds)
    run, clock = session.run, time.perf_counter_ns
    samples = []
    gc.collect()
    gc.disable()
    for _ in range(args.iterations):
        t0 = clock()
        run(names, feeds)
        samples.append((clock() - t0) / 1e6)
    gc.enable()
    if args.behave == "few-lines":
        samples = samples[:-1]
    if args.summary:
        print(json.dumps({"samples_ms": samples}))
    else:
        for ms in samples:
            print(json.dumps({"ms": ms}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
