"""Histogram calibration peak memory: edgetune's streaming calibrator vs onnxruntime's own.

    python bench/calib_memory.py [--model resnet18] [--samples 64] [--methods entropy,percentile]
                                 [--json]

The model (ResNet-18 shape by default) is built in code and pre-processed once; 64 random
samples are written to a .npy file. Then, for each method, two fresh Python processes each
calibrate the same model on the same samples and report their peak RSS (``ru_maxrss``) and
the ranges they found:
- onnxruntime: ``create_calibrator`` (Entropy with 2048/255 bins, or Percentile 99.999 with
  2048 bins), ``collect_data`` over a reader of the samples, ``compute_data``;
- edgetune: ``edgetune.host.quant.calibrate.calibrate`` with the same bins and percentile (chunks of
  16 samples, histograms folded as each run's activations arrive).
Each process's peak (``ru_maxrss``; ``VmHWM`` is printed beside it as a cross-check) includes
the interpreter, onnxruntime and the model. The model and samples are made in a separate
process first so this parent stays small (a child's ru_maxrss starts at its parent's size at
fork time and survives exec). Targets: edgetune
peak <= 0.5x onnxruntime's, and every tensor's range within 1% (of its max |range|) of
onnxruntime's.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import check, finish, log_progress, machine  # noqa: E402

BINS = 2048
QUANTIZED_BINS = 255
PERCENTILE = 99.999


def child(kind: str, method: str, model: Path, data_path: Path) -> dict:
    import numpy as np

    from edgetune.host.quant.calibdata import CalibrationData

    data = CalibrationData.from_arrays({"input": np.load(data_path, mmap_mode="r")})
    t0 = time.perf_counter()
    if kind == "ort":
        import contextlib
        import io

        from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

        from edgetune.host.quant.prepare import effective_op_types
        from edgetune.host.quant.settings import QuantizeSettings

        ops = sorted(effective_op_types(QuantizeSettings(model=model, output=model)))
        extra = {"num_bins": BINS}
        extra.update({"num_quantized_bins": QUANTIZED_BINS} if method == "entropy"
                     else {"percentile": PERCENTILE})
        with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
            calib = create_calibrator(model, ops, augmented_model_path=str(Path(tmp) / "a.onnx"),
                                      calibrate_method=getattr(CalibrationMethod,
                                                               method.capitalize()),
                                      extra_options=extra)
            calib.collect_data(data.as_reader(1))
            tensors = calib.compute_data()
        ranges = {k: [float(np.asarray(v, dtype=np.float32).reshape(-1)[0])
                      for v in td.range_value] for k, td in tensors.items()}
    else:
        from edgetune.host.quant.calibrate import calibrate
        from edgetune.host.quant.prepare import prepare_model
        from edgetune.host.quant.settings import QuantizeSettings

        settings = QuantizeSettings(model=model, output=model.with_name("unused.onnx"),
                                    method=method, histogram_bins=BINS,
                                    quantized_bins=QUANTIZED_BINS, percentile=PERCENTILE,
                                    entropy_compat="ort")     # parity with onnxruntime's
        with prepare_model(settings) as prepared:
            result = calibrate(prepared, data, settings)
        ranges = {k: list(v) for k, v in result.tensors.items()}
    seconds = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {"kind": kind, "method": method, "peak_rss_mb": round(peak_mb, 1),
            "vm_hwm_mb": round(_status_kb("VmHWM") / 1024.0, 1),
            "seconds": round(seconds, 2), "ranges": ranges}


def _status_kb(key: str) -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def setup(model_name: str, samples: int, directory: Path) -> None:
    """Builds and pre-processes the model and writes the samples (run in its own process,
    so the parent stays small: ru_maxrss survives fork+exec, a big parent would leak its
    size into every child's peak)."""
    import numpy as np
    from onnxruntime.quantization import quant_pre_process

    from edgetune.host import builders

    raw = builders.save(builders.build(model_name), directory / "raw.onnx")
    quant_pre_process(str(raw), str(directory / "prepared.onnx"))
    rng = np.random.default_rng(0)
    np.save(directory / "calib.npy",
            rng.standard_normal((samples, 3, 224, 224)).astype(np.float32))


def run_child(kind: str, method: str, model: Path, data: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--methods", method,
           "--model-path", str(model), "--data-path", str(data)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(ours: dict, theirs: dict) -> tuple:
    """(worst relative difference, tensors compared, missing tensors)."""
    worst = 0.0
    missing = sorted(set(theirs) ^ set(ours))
    for name, (lo, hi) in theirs.items():
        if name not in ours:
            continue
        span = max(abs(lo), abs(hi)) or 1.0
        olo, ohi = ours[name]
        worst = max(worst, abs(olo - lo) / span, abs(ohi - hi) / span)
    return worst, len(theirs), missing


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--methods", default="entropy,percentile")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", choices=("ours", "ort", "setup"), help=argparse.SUPPRESS)
    parser.add_argument("--model-path", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--data-path", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child == "setup":
        setup(args.model, args.samples, args.data_path)
        return 0
    if args.child:
        print(json.dumps(child(args.child, args.methods, args.model_path, args.data_path)))
        return 0

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    result = {"bench": "calib_memory", "machine": machine(), "model": args.model,
              "samples": args.samples, "bins": BINS, "quantized_bins": QUANTIZED_BINS,
              "percentile": PERCENTILE, "methods": {}, "checks": []}
    lines = [f"histogram calibration of the {args.model} shape, {args.samples} samples, "
             "peak RSS of a fresh process each"]
    with tempfile.TemporaryDirectory(prefix="edgetune-bench-") as tmp_name:
        tmp = Path(tmp_name)
        log_progress(args.json, f"building the {args.model} shape and {args.samples} samples ...")
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", "setup",
                        "--model", args.model, "--samples", str(args.samples),
                        "--data-path", str(tmp)], check=True)
        model = tmp / "prepared.onnx"
        data = tmp / "calib.npy"
        result["parent_peak_rss_mb"] = round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)
        for method in methods:
            log_progress(args.json, f"{method}: onnxruntime's calibrator ...")
            theirs = run_child("ort", method, model, data)
            log_progress(args.json, f"{method}: edgetune's calibrator ...")
            ours = run_child("ours", method, model, data)
            worst, count, missing = compare(ours["ranges"], theirs["ranges"])
            ratio = ours["peak_rss_mb"] / theirs["peak_rss_mb"]
            result["methods"][method] = {
                "onnxruntime_peak_rss_mb": theirs["peak_rss_mb"],
                "edgetune_peak_rss_mb": ours["peak_rss_mb"], "ratio": round(ratio, 4),
                "onnxruntime_vm_hwm_mb": theirs["vm_hwm_mb"],
                "edgetune_vm_hwm_mb": ours["vm_hwm_mb"],
                "onnxruntime_s": theirs["seconds"], "edgetune_s": ours["seconds"],
                "tensors": count, "worst_range_difference": worst, "tensor_set_differs": missing}
            result["checks"].append(check(f"{method} peak RSS edgetune/onnxruntime", ratio,
                                          "<=", 0.5))
            result["checks"].append(check(f"{method} worst range difference", worst, "<=", 0.01))
            if missing:
                result["checks"].append(check(f"{method} same tensors", 0, ">=", 1))
            lines.append(f"  {method}: onnxruntime {theirs['peak_rss_mb']:.0f} MiB (VmHWM "
                         f"{theirs['vm_hwm_mb']:.0f}) in {theirs['seconds']:.1f} s; edgetune "
                         f"{ours['peak_rss_mb']:.0f} MiB (VmHWM {ours['vm_hwm_mb']:.0f}) in "
                         f"{ours['seconds']:.1f} s -> {ratio:.3f}x; {count} tensors, worst "
                         f"range difference {worst:.2e}")
    return finish(result, args.json, lines)


if __name__ == "__main__":
    sys.exit(main())
