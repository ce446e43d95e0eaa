"""MinMax quantize wall time: edgetune's pipeline vs calling ``quantize_static`` directly.

    python bench/quantize_speed.py [--model resnet18] [--samples 32] [--repeat 7] [--json]

Both quantize the same pre-processed model (``quant_pre_process`` run once, beforehand) with
the same settings (QDQ, uint8 activations, int8 per-channel weights, MinMax) from the same
samples. After one warm-up run each, every round runs both back to back (alternating which
goes first); the target is the median of the per-round ratios, which cancels most of the
drift of a shared machine. The best-of ratio (min / min) and the ratio of process CPU time
(all threads; little affected by other load) are printed beside it.

What each timing includes:
- ``quantize_static``: shape inference, building the augmented model, calibration (one
  sample per run, the model's batch is fixed at 1), quantization, saving the model.
- edgetune ``quantize``: option checks, loading and naming the nodes, shape inference (the
  model's metadata says it is pre-processed, so ``quant_pre_process`` is skipped and the
  record says so), override resolution, the same calibration streamed chunk by chunk,
  quantization, saving, loading the result in onnxruntime to verify it, reading back every
  scale for the record, sha256 of input and output, writing the record and the ranges cache,
  and the atomic renames.
Target: edgetune / quantize_static <= 1.15. Also printed, not a target: edgetune from the
raw (not pre-processed) model, i.e. including ``quant_pre_process``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import check, finish, log_progress, machine  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18", help="resnet18 or mobilenetv2")
    parser.add_argument("--samples", type=int, default=32, help="calibration samples (32)")
    parser.add_argument("--repeat", type=int, default=7, help="timed rounds (7)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    import numpy as np
    import onnx
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                          quant_pre_process, quantize_static)

    from edgetune.host import builders
    from edgetune.host.quant.calibdata import CalibrationData
    from edgetune.host.quant.pipeline import quantize
    from edgetune.host.quant.record import read_qdq_params
    from edgetune.host.quant.settings import QuantizeSettings

    with tempfile.TemporaryDirectory(prefix="edgetune-bench-") as tmp_name:
        tmp = Path(tmp_name)
        raw = builders.save(builders.build(args.model), tmp / "raw.onnx")
        prepared = tmp / "prepared.onnx"
        quant_pre_process(str(raw), str(prepared))
        rng = np.random.default_rng(0)
        np.save(tmp / "calib.npy",
                rng.standard_normal((args.samples, 3, 224, 224)).astype(np.float32))
        data = CalibrationData.from_arrays({"input": np.load(tmp / "calib.npy", mmap_mode="r")})

        cpu = {"ort": [], "ours": []}

        def run_ort() -> float:
            t0, c0 = time.perf_counter(), time.process_time()
            quantize_static(str(prepared), str(tmp / "ort.onnx"), data.as_reader(1),
                            quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
            cpu["ort"].append(time.process_time() - c0)
            return time.perf_counter() - t0

        def run_ours(model: Path = prepared) -> float:
            t0, c0 = time.perf_counter(), time.process_time()
            quantize(QuantizeSettings(model=model, output=tmp / "ours.onnx", force=True),
                     data=data)
            cpu["ours"].append(time.process_time() - c0)
            return time.perf_counter() - t0

        log_progress(args.json, f"{args.model}, {args.samples} samples: warm-up ...")
        run_ort()
        run_ours()
        ort_times, our_times, ratios = [], [], []
        for i in range(args.repeat):
            log_progress(args.json, f"round {i + 1}/{args.repeat} ...")
            if i % 2:                       # alternate who goes first
                mine = run_ours()
                theirs = run_ort()
            else:
                theirs = run_ort()
                mine = run_ours()
            ort_times.append(theirs)
            our_times.append(mine)
            ratios.append(mine / theirs)
        same = ({(e["tensor"], e["kind"]): e["scale"]
                 for e in read_qdq_params(onnx.load(str(tmp / "ort.onnx")))}
                == {(e["tensor"], e["kind"]): e["scale"]
                    for e in read_qdq_params(onnx.load(str(tmp / "ours.onnx")))})
        log_progress(args.json, "edgetune from the raw model (with quant_pre_process) ...")
        full = statistics.median(run_ours(raw) for _ in range(3))
    t_ort = statistics.median(ort_times)
    t_ours = statistics.median(our_times)
    ratio = statistics.median(ratios)            # paired: each round ran both back to back
    best = min(our_times) / min(ort_times)
    # CPU time (all threads) of the timed rounds: much less sensitive to other load
    cpu_ratios = [o / t for o, t in zip(cpu["ours"][1:1 + args.repeat],
                                        cpu["ort"][1:1 + args.repeat])]
    cpu_ratio = statistics.median(cpu_ratios)
    result = {
        "bench": "quantize_speed", "machine": machine(), "model": args.model,
        "samples": args.samples, "repeat": args.repeat,
        "quantize_static_s": [round(t, 3) for t in ort_times],
        "edgetune_s": [round(t, 3) for t in our_times],
        "median_quantize_static_s": round(t_ort, 3), "median_edgetune_s": round(t_ours, 3),
        "edgetune_from_raw_model_s": round(full, 3), "identical_scales": same,
        "paired_ratios": [round(r, 3) for r in ratios], "ratio_of_best": round(best, 4),
        "cpu_time_paired_ratios": [round(r, 3) for r in cpu_ratios],
        "median_cpu_time_ratio": round(cpu_ratio, 4),
        "checks": [check("edgetune/quantize_static wall time (median paired ratio)", ratio,
                         "<=", 1.15)],
    }
    lines = [
        f"MinMax quantize of the {args.model} shape, {args.samples} samples, median of "
        f"{args.repeat} alternating rounds",
        f"  quantize_static: {t_ort:.2f} s  {[round(t, 2) for t in ort_times]}",
        f"  edgetune:        {t_ours:.2f} s  {[round(t, 2) for t in our_times]}",
        f"  paired ratios {[round(r, 3) for r in ratios]}: median {ratio:.3f}x; "
        f"best-of ratio {best:.3f}x",
        f"  CPU time (process, all threads) paired ratios {[round(r, 3) for r in cpu_ratios]}: "
        f"median {cpu_ratio:.3f}x",
        f"  same scales in both outputs: {same}",
        f"  edgetune from the raw model (incl. quant_pre_process): {full:.2f} s",
    ]
    if not same:
        result["checks"].append(check("identical scales", 0, ">=", 1))
    return finish(result, args.json, lines)


if __name__ == "__main__":
    sys.exit(main())
