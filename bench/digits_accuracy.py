"""Digits CNN (the shipped sample): FP32 vs default INT8 held-out accuracy and model size.

    python bench/digits_accuracy.py [--method minmax] [--json]

Quantizes host/samples/digits_cnn.onnx with edgetune's defaults (QDQ, uint8 activations,
int8 per-channel weights, MinMax, 100 calibration samples from digits_calib.npz, the train
split) and evaluates FP32 and INT8 side by side on digits_test.npz (450 held-out images).
Targets: INT8 loses at most 1 held-out sample against FP32; INT8 size <= 0.35x FP32.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, check, finish, log_progress, machine  # noqa: E402

SAMPLES = REPO / "host" / "samples"


def correct(model: Path, inputs, labels) -> int:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {sess.get_inputs()[0].name: inputs})[0]
    return int((logits.argmax(axis=1) == labels).sum())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="minmax",
                        help="calibration method (default minmax, the default of quantize)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)

    import numpy as np

    from edgetune.host.quant.pipeline import quantize
    from edgetune.host.quant.settings import CalibSource, QuantizeSettings

    fp32 = SAMPLES / "digits_cnn.onnx"
    test = np.load(SAMPLES / "digits_test.npz", allow_pickle=False)
    with tempfile.TemporaryDirectory(prefix="edgetune-bench-") as tmp:
        out = Path(tmp) / "digits_int8.onnx"
        log_progress(args.json, f"quantizing {fp32.name} ({args.method}) ...")
        report = quantize(QuantizeSettings(
            model=fp32, output=out, method=args.method,
            calib=(CalibSource(path=SAMPLES / "digits_calib.npz"),)))
        n = int(test["labels"].shape[0])
        ok_fp32 = correct(fp32, test["input"], test["labels"])
        ok_int8 = correct(out, test["input"], test["labels"])
        size_fp32, size_int8 = fp32.stat().st_size, out.stat().st_size
    lost = ok_fp32 - ok_int8
    ratio = size_int8 / size_fp32
    result = {
        "bench": "digits_accuracy", "machine": machine(), "method": args.method,
        "samples": n, "fp32_correct": ok_fp32, "int8_correct": ok_int8,
        "fp32_accuracy": round(ok_fp32 / n, 4), "int8_accuracy": round(ok_int8 / n, 4),
        "fp32_bytes": size_fp32, "int8_bytes": size_int8, "size_ratio": round(ratio, 4),
        "quantize_seconds": round(report.elapsed_s, 3),
        "checks": [check("held-out samples lost", lost, "<=", 1),
                   check("size ratio int8/fp32", ratio, "<=", 0.35)],
    }
    lines = [
        f"digits CNN, {n} held-out samples, INT8 = edgetune defaults ({args.method}, uint8 act, "
        "int8 per-channel weights)",
        f"  FP32: {ok_fp32}/{n} ({ok_fp32 / n:.2%}), {size_fp32 / 1024:.1f} KiB",
        f"  INT8: {ok_int8}/{n} ({ok_int8 / n:.2%}), {size_int8 / 1024:.1f} KiB "
        f"(quantized in {report.elapsed_s:.2f} s)",
        f"  lost {lost} sample(s); size ratio {ratio:.3f}",
    ]
    return finish(result, args.json, lines)


if __name__ == "__main__":
    sys.exit(main())
