"""The FP32 vs INT8 comparison that ends ``edgetune demo``, from the typed results of
``edgetune.host.board``, computed and drawn by ``edgetune compare``'s code
(``edgetune.host.results.compare``): the ``comparison`` object of the JSON document (each metric for both
models and its change), the note on what the measured
latency change means, and the printed FP32 / INT8 / change table (Markdown, to paste into docs).
"""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

if TYPE_CHECKING:  # pragma: no cover
    from edgetune.host.board import BenchmarkRun, EvaluationRun
    from edgetune.host.results.records import Record

PRECISIONS = ("fp32", "int8")


def _side(size_bytes: int, bench: "BenchmarkRun", evaluation: "EvaluationRun") -> "Record":
    """One model as a record, for ``edgetune.host.results.compare``: its size, the benchmark's
    latency and throughput, the evaluation's metrics."""
    from edgetune.host.render import LATENCY_KEYS
    from edgetune.host.results.records import ModelRef, Record

    metrics: Dict[str, Any] = {}
    if bench.result is not None:
        lat = bench.result.latency
        metrics["latency_ms"] = {k: getattr(lat, f"{k}_ms") for k in LATENCY_KEYS}
        metrics["throughput_ips"] = bench.result.throughput_ips
    if evaluation.result is not None:
        metrics.update(evaluation.result.metric_dict())
    return Record(kind="demo", model=ModelRef(sha256=bench.model_sha256, size_bytes=size_bytes),
                  metrics=metrics)


def _nan(value: Optional[float]) -> float:
    return math.nan if value is None else float(value)


def comparison(sizes: Sequence[int], bench: Sequence["BenchmarkRun"],
               evaluation: Sequence["EvaluationRun"]) -> Dict[str, Any]:
    """FP32 vs INT8 from the two models' sizes and their typed bench and eval results (each
    given in the order FP32, INT8), through ``edgetune.host.results.compare.change`` (the
    code of ``edgetune compare``). Each metric is ``{"fp32", "int8"}`` plus its change:
    ``ratio`` (INT8 / FP32), ``points`` (percentage points, INT8 - FP32) or ``delta``
    (INT8 - FP32)."""
    from edgetune.host.results import compare

    a, b = (_side(*side) for side in zip(sizes, bench, evaluation))
    c = compare.change(a, b)

    def pair(value: Callable[["Record"], Optional[float]]) -> Dict[str, Any]:
        return {"fp32": _nan(value(a)), "int8": _nan(value(b))}

    doc: Dict[str, Any] = {
        "size_bytes": {**pair(compare.size), "ratio": _nan(c["size_ratio"])},
        "top1": {**pair(lambda r: compare.metric(r, "top1")), "points": _nan(c["top1_delta_pts"])},
        "cosine": {**pair(lambda r: compare.metric(r, "cosine")), "delta": _nan(c["cosine_delta"])},
        "p50_ms": {**pair(lambda r: compare.latency(r, "p50")),
                   "ratio": _nan(c["latency_p50_ratio"])},
        "throughput_ips": {**pair(lambda r: compare.metric(r, "throughput_ips")),
                           "ratio": _nan(c["throughput_ratio"])},
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


DEMO_ROWS = ("size", "top1", "cosine", "p50", "throughput")
DEMO_TITLES = {"cosine": "fidelity: cosine vs FP32 reference"}


def comparison_rows(c: Dict[str, Any]) -> List[Tuple[str, str, str, str]]:
    """The comparison as table rows: metric, FP32, INT8, change (``edgetune compare``'s rows,
    ``edgetune.host.results.compare.table_rows``)."""
    from edgetune.host.results import compare
    from edgetune.host.results.records import ModelRef, Record

    def side(p: str) -> Record:
        def num(value: float) -> Optional[float]:
            return value if math.isfinite(value) else None
        size = num(c["size_bytes"][p])
        return Record(kind="demo", model=ModelRef(sha256="", size_bytes=size),
                      metrics={"top1": num(c["top1"][p]), "cosine": num(c["cosine"][p]),
                               "latency_ms": {"p50": num(c["p50_ms"][p])},
                               "throughput_ips": num(c["throughput_ips"][p])})

    a, b = side("fp32"), side("int8")
    return compare.table_rows(a, b, compare.change(a, b), DEMO_ROWS, DEMO_TITLES)


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
