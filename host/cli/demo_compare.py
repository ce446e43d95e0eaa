"""The FP32 vs INT8 comparison that ends ``edgetune demo``, from the typed results of
``edgetune.host.board``: the ``comparison`` object of the JSON document (each metric for both
models and its change), the note on what the measured
latency change means, and the printed FP32 / INT8 / change table (Markdown, to paste into docs).
"""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING, Any, Dict, List, Sequence, Tuple

if TYPE_CHECKING:  # pragma: no cover
    from edgetune.host.board import BenchmarkRun, EvaluationRun

PRECISIONS = ("fp32", "int8")


def _ratio(before: float, after: float) -> float:
    if not (math.isfinite(before) and math.isfinite(after)) or before == 0:
        return math.nan
    return after / before


def comparison(sizes: Sequence[int], bench: Sequence["BenchmarkRun"],
               evaluation: Sequence["EvaluationRun"]) -> Dict[str, Any]:
    """FP32 vs INT8 from the two models' sizes and their typed bench and eval results (each
    given in the order FP32, INT8). Each metric is ``{"fp32", "int8"}`` plus its change:
    ``ratio`` (INT8 / FP32), ``points`` (percentage points, INT8 - FP32) or ``delta``
    (INT8 - FP32)."""
    def metric(run: "EvaluationRun", name: str) -> float:
        value = run.result.metric_dict().get(name) if run.result is not None else None
        return math.nan if value is None else float(value)

    def pair(values: Sequence[float]) -> Dict[str, Any]:
        return dict(zip(PRECISIONS, values))

    p50 = [r.result.latency.p50_ms if r.result is not None else math.nan for r in bench]
    ips = [r.result.throughput_ips if r.result is not None else math.nan for r in bench]
    top1 = [metric(r, "top1") for r in evaluation]
    cosine = [metric(r, "cosine") for r in evaluation]
    doc: Dict[str, Any] = {
        "size_bytes": {**pair(sizes), "ratio": _ratio(*sizes)},
        "top1": {**pair(top1), "points": 100.0 * (top1[1] - top1[0])},
        "cosine": {**pair(cosine), "delta": cosine[1] - cosine[0]},
        "p50_ms": {**pair(p50), "ratio": _ratio(*p50)},
        "throughput_ips": {**pair(ips), "ratio": _ratio(*ips)},
    }
    doc["note"] = latency_note(doc["p50_ms"]["ratio"])
    return doc


def latency_note(p50_ratio: float) -> str:
    """What the measured latency change means on this model, whichever way it went."""
    if not math.isfinite(p50_ratio):
        return ""
    measured = f"(p50 {p50_ratio:.2f}x FP32's)"
    if p50_ratio < 0.9:
        head = (f"INT8 is faster than FP32 here {measured}, though this model is tiny (8x8 "
                "inputs, 90k parameters) and the quantize/dequantize steps around its small "
                "convolutions take a large share of its time.")
    else:
        verdict = "is slower than" if p50_ratio > 1.1 else "runs about as fast as"
        head = (f"INT8 {verdict} FP32 here {measured}: this model is tiny (8x8 inputs, 90k "
                "parameters), and the quantize/dequantize steps around its small convolutions "
                "cost about as much as the int8 arithmetic saves.")
    return (f"{head} On real-size CNNs the same defaults ran 3.3x (ResNet-18 shape) and 2.3x "
            "(MobileNetV2 shape) faster than FP32 on a 2-vCPU EPYC (docs/quantization.md). "
            "Measure your own model on your board.")


def _change(ratio: float) -> str:
    if not math.isfinite(ratio):
        return "-"
    return f"{ratio:.2f}x ({_fixed(100 * (ratio - 1), 0, '%', sign=True)})"


def _fixed(value: float, digits: int, suffix: str = "", sign: bool = False) -> str:
    if not math.isfinite(value):
        return "-"
    value = round(value, digits) + 0.0      # no "-0.00": a change that rounds to 0 is +0
    return f"{value:{'+' if sign else ''}.{digits}f}{suffix}"


def _ms(value: float) -> str:
    return _fixed(value, 4 if abs(value) < 1 else 2)


def _thousands(value: float) -> str:
    return f"{value:,.0f}" if math.isfinite(value) else "-"


def comparison_rows(c: Dict[str, Any]) -> List[Tuple[str, str, str, str]]:
    """The comparison as table rows: metric, FP32, INT8, change."""
    size, top1, cosine = c["size_bytes"], c["top1"], c["cosine"]
    p50, ips = c["p50_ms"], c["throughput_ips"]
    return [
        ("size (KiB)", *(_fixed(size[p] / 1024, 1) for p in PRECISIONS), _change(size["ratio"])),
        ("top-1 accuracy", *(_fixed(100 * top1[p], 2, "%") for p in PRECISIONS),
         _fixed(top1["points"], 2, " pts", sign=True)),
        ("fidelity: cosine vs FP32 reference",
         *(_fixed(cosine[p], 4) for p in PRECISIONS),
         _fixed(cosine["delta"], 4, sign=True)),
        ("p50 latency (ms)", *(_ms(p50[p]) for p in PRECISIONS), _change(p50["ratio"])),
        ("throughput (inf/s)", *(_thousands(ips[p]) for p in PRECISIONS), _change(ips["ratio"])),
    ]


def print_comparison(doc: Dict[str, Any], bench: Sequence["BenchmarkRun"],
                     evaluation: Sequence["EvaluationRun"], width: int = 100, *,
                     input_shape: Sequence[int]) -> None:
    """The FP32 / INT8 / change table (Markdown), what was compared, and the latency note, on
    stdout; the text wrapped at ``width`` columns. ``doc``: the demo's models and comparison;
    ``bench``/``evaluation``: the typed results; ``input_shape``: the benchmarks' input."""
    import textwrap

    from edgetune.host import render
    from edgetune.protos.shapes import format_dims

    models, q = doc["models"], doc["models"]["int8"]["quantize"]
    measured = bench[0].result
    assert measured is not None and evaluation[0].result is not None
    threads = bench[0].options.session.intra_op_threads
    test_samples = evaluation[0].result.samples
    channel = "per-channel" if q["per_channel"] else "per-tensor"
    paragraphs = [
        f"FP32: {models['fp32']['file']}. INT8: {models['int8']['file']}, made with edgetune "
        f"quantize's defaults ({q['method']}, {q['act_type']} activations, "
        f"{q['weight_type']} {channel} weights, {q['calib_samples']} calibration images from "
        f"{q['calib']}): {q['int8_nodes']} of {q['quantizable_nodes']} nodes int8.",
        f"Both measured on the board with the same options: {measured.iterations} timed runs "
        f"after {measured.warmup} warm-up, one {format_dims(input_shape)} image, "
        f"{threads or 'default'} intra-op thread{'s' if threads != 1 else ''}, "
        f"{', '.join(measured.providers) or 'CPUExecutionProvider'}. Throughput counts every "
        "run, so a stall on a busy machine moves it more than the p50. Top-1 and cosine on "
        f"the {test_samples} test images of digits_test.npz; cosine against the FP32 "
        "reference logits stored in it.",
    ]
    if doc["comparison"]["note"]:
        paragraphs.append(f"Note: {doc['comparison']['note']}")
    print(f"FP32 vs INT8 on {doc['device']}\n")
    print(render.markdown_table(("", "FP32", "INT8", "change"),
                                comparison_rows(doc["comparison"])))
    for paragraph in paragraphs:
        print("\n" + textwrap.fill(paragraph, width, break_long_words=False,
                                    break_on_hyphens=False))
    sys.stdout.flush()
