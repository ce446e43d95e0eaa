"""edgetune.host.quant.analysis split by what it holds (graph walking, error math, result types, the
driver): every public name still imports from host.quant.analysis, and each module is small."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PUBLIC = ("AnalysisReport", "ErrorAccumulator", "ErrorMetrics", "Graph", "LayerScore",
          "NSR_CAP", "QDQ_OPS", "QdqPair", "QdqWeight", "SQNR_CAP_DB", "TensorError",
          "analyze", "dequantize_weight", "error_metrics", "find_qdq", "fused_activation")
HOMES = {"edgetune.host.quant.errmetrics": ("ErrorAccumulator", "ErrorMetrics", "NSR_CAP",
                                   "SQNR_CAP_DB", "error_metrics"),
         "edgetune.host.quant.graphwalk": ("Graph", "QDQ_OPS", "QdqPair", "QdqWeight",
                                  "dequantize_weight", "find_qdq", "fused_activation"),
         "edgetune.host.quant.analysis_types": ("AnalysisReport", "LayerScore", "TensorError")}


def test_public_names_are_re_exported():
    analysis = importlib.import_module("edgetune.host.quant.analysis")
    for name in PUBLIC:
        assert hasattr(analysis, name), name
        assert name in analysis.__all__, name
    for module_name, names in HOMES.items():
        module = importlib.import_module(module_name)
        for name in names:
            assert getattr(analysis, name) is getattr(module, name), (module_name, name)


@pytest.mark.parametrize("module", ["analysis", "errmetrics", "graphwalk", "analysis_types"])
def test_modules_stay_small(module):
    lines = (ROOT / "host" / "quant" / f"{module}.py").read_text().count("\n")
    assert lines <= 400, f"host/quant/{module}.py has {lines} lines"

