"""edgetune.host.quant.analysis is the analysis API: every public name imports from it, and
everything its ``__all__`` lists exists (``from edgetune.host.quant.analysis import *`` works)."""

from __future__ import annotations

from typing import Any, Dict

import edgetune.host.quant.analysis as analysis

PUBLIC = ("AnalysisReport", "ErrorAccumulator", "ErrorMetrics", "Graph", "LayerScore",
          "NSR_CAP", "QDQ_OPS", "QdqPair", "QdqWeight", "SQNR_CAP_DB", "TensorError",
          "analyze", "dequantize_weight", "error_metrics", "find_qdq", "fused_activation")


def test_public_names_import_from_the_analysis_module() -> None:
    assert set(PUBLIC) <= set(analysis.__all__)
    namespace: Dict[str, Any] = {}
    exec("from edgetune.host.quant.analysis import *", namespace)  # fails on a stale __all__
    assert {name: namespace[name] for name in PUBLIC} == {name: getattr(analysis, name)
                                                          for name in PUBLIC}
