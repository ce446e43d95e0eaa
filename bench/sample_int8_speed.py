"""The 32x32 digits sample: default INT8 vs FP32 speed on one thread, and held-out accuracy.

    python bench/sample_int8_speed.py [--iters 400] [--rounds 8] [--json]

Quantizes host/samples/digits32_cnn.onnx with edgetune's defaults (QDQ, uint8 activations,
int8 per-channel weights, MinMax, 100 calibration samples from digits32_calib.npz, the train
split), then times FP32 and INT8 side by side in onnxruntime CPU with 1 intra-op and 1
inter-op thread and full graph optimisation, batch 1, in alternating rounds (FP32 round, INT8
round, ...) so drift in machine load hits both alike; only ``session.run`` is timed, with
pre-built inputs, after a warm-up. Both are also evaluated on digits32_test.npz (450 held-out
images). Targets: FP32 p50 / INT8 p50 >= 2 (the sample exists to show INT8 paying off);
INT8 loses at most 2 held-out samples that FP32 gets right.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, check, finish, log_progress, machine, percentile  # noqa: E402
from bench.int8_latency import time_side_by_side  # noqa: E402

SAMPLES = REPO / "host" / "samples"
MODEL = "digits32_cnn.onnx"


def predictions(model: Path, inputs):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: inputs})[0].argmax(axis=1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=400, help="timed runs per model (400)")
    parser.add_argument("--rounds", type=int, default=8, help="alternating rounds (8)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)

    import numpy as np

    from edgetune.host.quant.pipeline import quantize
    from edgetune.host.quant.settings import CalibSource, QuantizeSettings

    fp32 = SAMPLES / MODEL
    test = np.load(SAMPLES / "digits32_test.npz", allow_pickle=False)
    with tempfile.TemporaryDirectory(prefix="edgetune-bench-") as tmp:
        log_progress(args.json, f"quantizing {fp32.name} with the defaults ...")
        report = quantize(QuantizeSettings(
            model=fp32, output=Path(tmp) / "digits32.int8.onnx",
            calib=(CalibSource(path=SAMPLES / "digits32_calib.npz"),)))
        feeds = {"input": np.ascontiguousarray(test["input"][:1])}
        log_progress(args.json, f"timing {args.iters} runs each, {args.rounds} rounds ...")
        samples = time_side_by_side({"fp32": fp32, "int8": report.output}, feeds, args.iters,
                                    rounds=args.rounds)
        p50 = {k: percentile(v, 50) for k, v in samples.items()}
        p90 = {k: percentile(v, 90) for k, v in samples.items()}
        right = predictions(fp32, test["input"]) == test["labels"]
        int8_right = predictions(report.output, test["input"]) == test["labels"]
    speedup = p50["fp32"] / p50["int8"]
    lost = int((right & ~int8_right).sum())
    result = {
        "bench": "sample_int8_speed", "machine": machine(), "model": MODEL, "threads": 1,
        "batch": 1, "iters": args.iters, "rounds": args.rounds,
        "fp32_p50_ms": round(p50["fp32"], 4), "int8_p50_ms": round(p50["int8"], 4),
        "fp32_p90_ms": round(p90["fp32"], 4), "int8_p90_ms": round(p90["int8"], 4),
        "speedup": round(speedup, 3), "size_bytes": {"fp32": fp32.stat().st_size,
                                                     "int8": report.output_bytes},
        "top1": {"fp32": int(right.sum()), "int8": int(int8_right.sum()),
                 "samples": int(len(right))},
        "lost": lost,
        "checks": [check("FP32 p50 / INT8 p50 (1 thread)", speedup, ">=", 2.0),
                   check("held-out samples lost", lost, "<=", 2)],
    }
    lines = [f"{MODEL}: default INT8 vs FP32, onnxruntime CPU, 1 thread, batch 1, p50 of "
             "session.run, alternating rounds",
             f"  FP32 {p50['fp32']:.3f} ms, INT8 {p50['int8']:.3f} ms (p90 {p90['fp32']:.3f} / "
             f"{p90['int8']:.3f}) -> INT8 {speedup:.2f}x faster",
             f"  top-1 FP32 {int(right.sum())}/{len(right)}, INT8 {int(int8_right.sum())}/"
             f"{len(right)} ({lost} of FP32's right answers lost)"]
    return finish(result, args.json, lines)


if __name__ == "__main__":
    sys.exit(main())
