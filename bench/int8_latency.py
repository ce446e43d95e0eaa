"""INT8 latency: FP32 vs edgetune's default INT8 on the ResNet-18 and MobileNetV2 shapes.

    python bench/int8_latency.py [--models resnet18,mobilenetv2] [--iters 100] [--json]

Each model is built in code (random weights, host/builders.py, input [1,3,224,224]) and
quantized with edgetune's defaults (QDQ, uint8 activations, int8 per-channel weights, MinMax
on 16 random samples). Both models then run in onnxruntime CPU with 1 intra-op and 1
inter-op thread and full graph optimisation, in alternating rounds (FP32 round, INT8 round,
...) so drift in machine load hits both alike. Only ``session.run`` is timed, with pre-built
inputs, after a warm-up. Targets: INT8 p50 <= 0.4x FP32 (ResNet-18), <= 0.5x (MobileNetV2).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import check, finish, log_progress, machine, percentile  # noqa: E402

TARGETS = {"resnet18": 0.4, "mobilenetv2": 0.5}


def session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=options,
                                providers=["CPUExecutionProvider"])


def time_side_by_side(paths: Dict[str, Path], feeds, iters: int, rounds: int = 5,
                      warmup: int = 5) -> Dict[str, List[float]]:
    sessions = {name: session(path) for name, path in paths.items()}
    for sess in sessions.values():
        for _ in range(warmup):
            sess.run(None, feeds)
    samples: Dict[str, List[float]] = {name: [] for name in sessions}
    per_round = max(1, iters // rounds)
    for _ in range(rounds):
        for name, sess in sessions.items():
            for _ in range(per_round):
                t0 = time.perf_counter()
                sess.run(None, feeds)
                samples[name].append((time.perf_counter() - t0) * 1000.0)
    return samples


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="resnet18,mobilenetv2")
    parser.add_argument("--iters", type=int, default=100, help="timed runs per model (100)")
    parser.add_argument("--calib", type=int, default=16, help="calibration samples (16)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    import numpy as np

    from edgetune.host import builders
    from edgetune.host.quant.calibdata import CalibrationData
    from edgetune.host.quant.pipeline import quantize
    from edgetune.host.quant.settings import QuantizeSettings

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    result = {"bench": "int8_latency", "machine": machine(), "threads": 1, "iters": args.iters,
              "models": {}, "checks": []}
    lines = ["INT8 (edgetune default) vs FP32, onnxruntime CPU, 1 thread, p50 of session.run"]
    with tempfile.TemporaryDirectory(prefix="edgetune-bench-") as tmp:
        for name in models:
            fp32 = builders.save(builders.build(name), Path(tmp) / f"{name}.onnx")
            rng = np.random.default_rng(0)
            calib = rng.standard_normal((args.calib, 3, 224, 224)).astype(np.float32)
            log_progress(args.json, f"{name}: quantizing ...")
            report = quantize(QuantizeSettings(model=fp32, output=Path(tmp) / f"{name}.q.onnx"),
                              data=CalibrationData.from_arrays({"input": calib}))
            feeds = {"input": rng.standard_normal((1, 3, 224, 224)).astype(np.float32)}
            log_progress(args.json, f"{name}: timing {args.iters} runs each ...")
            samples = time_side_by_side({"fp32": fp32, "int8": report.output}, feeds,
                                        args.iters)
            p50 = {k: percentile(v, 50) for k, v in samples.items()}
            p90 = {k: percentile(v, 90) for k, v in samples.items()}
            ratio = p50["int8"] / p50["fp32"]
            result["models"][name] = {
                "fp32_p50_ms": round(p50["fp32"], 3), "int8_p50_ms": round(p50["int8"], 3),
                "fp32_p90_ms": round(p90["fp32"], 3), "int8_p90_ms": round(p90["int8"], 3),
                "ratio": round(ratio, 4), "int8_nodes": report.n_quantized_nodes,
                "size_ratio": round(report.size_ratio, 4)}
            result["checks"].append(check(f"{name} int8/fp32 p50", ratio, "<=",
                                          TARGETS.get(name, 0.5)))
            lines.append(f"  {name}: FP32 {p50['fp32']:.2f} ms, INT8 {p50['int8']:.2f} ms "
                         f"(p90 {p90['fp32']:.2f} / {p90['int8']:.2f}) -> {ratio:.3f}x, "
                         f"size {report.size_ratio:.3f}x")
    return finish(result, args.json, lines)


if __name__ == "__main__":
    sys.exit(main())
