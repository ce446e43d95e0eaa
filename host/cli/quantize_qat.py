"""``edgetune quantize --from-qat MODEL`` (or a MODEL already holding Q/DQ pairs): check the
QAT model's scales, fold its weight Q/DQ, write OUT with the PTQ record and ranges
(``edgetune.host.quant.qat``). Calibration and fallback flags do not apply and are refused."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict

from edgetune.host.errors import UsageError

# flags of ``quantize`` that mean calibration or its options: refused beside a QAT model
NOT_FOR_QAT = ("calib", "ranges", "method", "percentile", "max_drop", "eval", "int16",
               "exclude", "subgraph", "truncate", "int16_list", "act", "weight", "op_types",
               "per_channel", "symmetric_act", "analysis")


def run_qat(args: argparse.Namespace, model: Path) -> int:
    given = [f"--{name.replace('_', '-')}" for name in NOT_FOR_QAT
             if getattr(args, name, None) not in (None, False, [])]
    if given:
        raise UsageError(f"{model.name} is a QAT model (it holds Q/DQ pairs): "
                         f"{', '.join(given)} do(es) not apply",
                         hint="its scales come from training; to quantize the float model "
                              "instead, pass that one")
    from edgetune.host.quant.qat import convert_qat
    from edgetune.host.results.location import open_results_store

    output = args.output or model.with_name(model.name.rsplit(".onnx", 1)[0] + ".q.onnx")
    store = None if args.no_record else open_results_store(args.db, getattr(args, "inventory",
                                                                            None))
    try:
        report = convert_qat(model, output, force=bool(args.force))
        summary: Dict[str, Any] = {"model": str(model), "qat": True, **report.as_dict(),
                                   "method": "qat", "activations": "from the model",
                                   "weights": "from the model", "per_channel": None,
                                   "nodes": _nodes(report.node_precision),
                                   "result_id": None}
        if store is not None:
            from edgetune.host.cli.quantize_cmd import _record
            summary["result_id"] = _record(store, summary, report)
    finally:
        if store is not None:
            store.close()
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print(f"QAT model {model} -> {report.output}")
        print(f"  Q/DQ nodes checked  {report.n_pairs}")
        print(f"  weights folded      {report.n_folded_weights} (to integer initializers)")
        print(f"  activation ranges   {report.n_activations} (-> {report.ranges_path.name})")
        print(f"  size                {report.input_bytes:,} -> {report.output_bytes:,} bytes "
              f"({report.size_ratio:.2f}x)")
        print(f"  record              {report.record_path}")
    return 0


def _nodes(precision: Dict[str, str]) -> Dict[str, int]:
    counts = {"int8": 0, "int16": 0, "float": 0}
    for value in precision.values():
        counts[value] = counts.get(value, 0) + 1
    return counts
