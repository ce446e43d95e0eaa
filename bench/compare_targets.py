"""`edgetune compare`: its cost against the two plain benches it replaces, and how often its
confidence interval gets the answer right.

    python bench/compare_targets.py [--runs 20] [--rounds 5] [--iterations 100] [--json]

A local agent (mutual TLS, a subprocess, as a board is reached); every command runs in-process
through ``edgetune.host.cli.main`` with ``--no-record --json --threads 1``.

1. Cost: ``edgetune compare digits_cnn.onnx digits_cnn.int8.onnx --rounds R`` against
   ``edgetune bench digits_cnn.onnx`` + ``edgetune bench digits_cnn.int8.onnx`` (same runs and
   warm-up per session), side by side, ``--repeat`` times each (both models uploaded first, so
   neither pays for an upload). Target: median compare time <= 2 x (median time of the two
   benches + the rounds' own measured time, i.e. the timed loops the extra sessions add).
2. Noise: ``compare digits digits`` ``--runs`` times: "within noise" (the 95 % CI holds 1.0)
   in >= 19 of 20 runs.
3. Power: a chain of 5 MatMuls (16x256 @ 256x256) against the same chain with a 6th (20 %
   more work; its measured slowdown is printed): significant and slower in >= 19 of 20 runs.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (check, finish, local_agent, log_progress, machine, make_pki,  # noqa: E402
                          median)

SAMPLES = Path(__file__).resolve().parent.parent / "host" / "samples"


def chain_model(matmuls: int, rows: int = 16, width: int = 256, seed: int = 0) -> bytes:
    """x [rows, width] through ``matmuls`` MatMul+Relu steps (fixed random weights): a model
    whose work grows linearly with ``matmuls``; 6 against 5 is a copy 20 % slower."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "x"
    for i in range(matmuls):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]))
        out = "y" if i == matmuls - 1 else f"r{i}"
        nodes.append(helper.make_node("Relu", [f"m{i}"], [out]))
        prev = out
    graph = helper.make_graph(
        nodes, f"chain{matmuls}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, width])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def quantize_digits(out: Path) -> Path:
    """digits_cnn.onnx -> INT8 with edgetune quantize's defaults (as `edgetune demo` does)."""
    from edgetune.host.quant.calibdata import load_calibration
    from edgetune.host.quant.pipeline import quantize
    from edgetune.host.quant.settings import CalibSource, QuantizeSettings

    model = SAMPLES / "digits_cnn.onnx"
    settings = QuantizeSettings(model=model, output=out,
                                calib=(CalibSource(path=SAMPLES / "digits_calib.npz"),))
    quantize(settings, data=load_calibration(model, settings))
    return out


def cli(*argv: str) -> Dict[str, Any]:
    """``edgetune ARGV`` in-process; its JSON document (stderr progress discarded)."""
    from edgetune.host.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    if code != 0:
        raise RuntimeError(f"edgetune {' '.join(argv[:3])} exited {code}: {out.getvalue()}"
                           f"{err.getvalue()[-2000:]}")
    return json.loads(out.getvalue())


def timed(*argv: str) -> Any:
    start = time.perf_counter()
    doc = cli(*argv)
    return time.perf_counter() - start, doc


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="comparisons per noise/power test")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=100, help="timed runs per session")
    parser.add_argument("--repeat", type=int, default=5, help="cost measurements (median)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(list(argv) or None)

    with tempfile.TemporaryDirectory(prefix="edgetune-bench-") as tmp_text:
        tmp = Path(tmp_text)
        pki = make_pki(tmp / "pki")
        fp32 = SAMPLES / "digits_cnn.onnx"
        log_progress(args.json, "quantizing digits_cnn.onnx ...")
        int8 = quantize_digits(tmp / "digits_cnn.int8.onnx")
        chain5, chain6 = tmp / "chain5.onnx", tmp / "chain6.onnx"
        chain5.write_bytes(chain_model(5))
        chain6.write_bytes(chain_model(6))
        with local_agent(pki, tmp / "store") as agent:
            board = ["--address", agent.address, "--ca", str(pki.ca_cert), "--cert",
                     str(pki.host_cert), "--key", str(pki.host_key), "--passphrase-file",
                     str(pki.passphrase_file), "--json"]
            conn = [*board, "--no-record", "--threads", "1"]
            per = ["--iterations", str(args.iterations), "--warmup", "10"]
            digits = ["--shape", "input=1x1x8x8"]
            for model in (fp32, int8, chain5, chain6):     # uploaded once, before any timing
                cli("models", "upload", str(model), *board)

            log_progress(args.json, f"cost: compare vs two benches, {args.repeat} times ...")
            compare_s: List[float] = []
            bench_s: List[float] = []
            measured_s: List[float] = []
            for _ in range(args.repeat):
                t_a, _doc = timed("bench", str(fp32), *per, *digits, *conn)
                t_b, _doc = timed("bench", str(int8), *per, *digits, *conn)
                bench_s.append(t_a + t_b)
                t_c, doc = timed("compare", str(fp32), str(int8), "--rounds", str(args.rounds),
                                 *per, *conn)
                compare_s.append(t_c)
                measured_s.append(sum(r["measured_s"] for side in ("a", "b")
                                      for r in doc[side]["metrics"]["rounds"]))
            budget = median(bench_s) + median(measured_s)
            cost_ratio = median(compare_s) / budget

            def significance(a: Path, b: Path, what: str) -> List[Dict[str, Any]]:
                log_progress(args.json, f"{what}: {args.runs} comparisons ...")
                return [cli("compare", str(a), str(b), "--rounds", str(args.rounds), *per,
                            *conn)["change"] for _ in range(args.runs)]

            same = significance(fp32, fp32, "digits vs itself")
            slower = significance(chain5, chain6, "chain of 5 vs 6 MatMuls")

    noise_ok = sum(1 for c in same if not c["significant"])
    power_ok = sum(1 for c in slower if c["significant"] and c["latency_p50_ratio"] > 1)
    slowdown = median(c["latency_p50_ratio"] for c in slower)
    widths = [c["latency_p50_ratio_ci"][1] - c["latency_p50_ratio_ci"][0] for c in same]
    result: Dict[str, Any] = {
        "bench": "compare_targets", "machine": machine(), "rounds": args.rounds,
        "iterations_per_session": args.iterations, "runs": args.runs,
        "cost": {"compare_s_median": round(median(compare_s), 4),
                 "two_benches_s_median": round(median(bench_s), 4),
                 "rounds_measured_s_median": round(median(measured_s), 4),
                 "ratio": round(cost_ratio, 4)},
        "self": {"within_noise": noise_ok, "runs": len(same),
                 "ratios": [round(c["latency_p50_ratio"], 4) for c in same],
                 "ci_width_median": round(median(widths), 4)},
        "slower": {"significant_and_slower": power_ok, "runs": len(slower),
                   "ratio_median": round(slowdown, 4),
                   "ratios": [round(c["latency_p50_ratio"], 4) for c in slower]},
        "checks": [
            check("compare time / (two benches + rounds' measured time)", cost_ratio, "<=", 2),
            check("self-comparisons within noise (of runs)", noise_ok / len(same), ">=", 0.95),
            check("20%-slower copy significant and slower (of runs)", power_ok / len(slower),
                  ">=", 0.95),
        ],
    }
    lines = [
        f"compare ({args.rounds} rounds x {args.iterations} runs) vs two benches, digits FP32/INT8:",
        f"  compare {median(compare_s):.3f} s, two benches {median(bench_s):.3f} s + rounds' "
        f"measured {median(measured_s):.3f} s -> {cost_ratio:.2f}x",
        f"  self-comparison within noise in {noise_ok}/{len(same)} runs (median CI width "
        f"{median(widths):.3f})",
        f"  chain 6 vs 5 MatMuls (median ratio {slowdown:.3f}x) significant and slower in "
        f"{power_ok}/{len(slower)} runs",
    ]
    return finish(result, args.json, lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
