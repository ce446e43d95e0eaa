"""What ``edgetune.host.quant.analysis.analyze`` returns: per-tensor errors, layer scores, the report.

``AnalysisReport.ranked()`` orders the quantized tensors worst first, ``layer_scores()``
turns that into layers (the fallback's ranking); rendering (Markdown, JSON, PNG) lives in
``edgetune.host.quant.report``. Part of ``edgetune.host.quant.analysis`` (which re-exports these names).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

from edgetune.host.quant.errmetrics import SQNR_CAP_DB, ErrorMetrics


@dataclass(frozen=True)
class TensorError:
    """The error of one quantized tensor (activation, weight) or one model output."""

    name: str                          # the tensor's name in the float model
    kind: str                          # "activation", "weight", "bias" or "output"
    node: Optional[str]                # the node that produces it (a weight: that reads it)
    op_type: Optional[str]
    nodes: Tuple[str, ...]             # every layer that touches it (raise these to fix it)
    quant_type: Optional[str]          # "uint8", "int8", "int16", ... (None for outputs)
    isolated: Optional[ErrorMetrics]   # its own Q/DQ round trip (None for outputs)
    accumulated: Optional[ErrorMetrics]  # vs the float model (None: no float counterpart)
    reasons: Tuple[str, ...] = ()      # why it is flagged (empty: not flagged)
    scale: Optional[float] = None      # per-tensor scale / zero point (None: per-channel)
    zero_point: Optional[int] = None
    qdq_output: str = ""               # the DequantizeLinear output in the quantized model

    @property
    def flagged(self) -> bool:
        return bool(self.reasons)

    @property
    def score(self) -> float:
        """The ranking key, lower is worse: the error this tensor's own quantization adds
        (isolated SQNR, or its mean per-channel SQNR when lower); outputs rank by accumulated."""
        metrics = self.isolated if self.isolated is not None else self.accumulated
        if metrics is None:
            return SQNR_CAP_DB
        values = [metrics.sqnr_db]
        if metrics.channel_sqnr_db is not None:
            values.append(metrics.channel_sqnr_db)
        return min(values)

    def as_dict(self) -> Dict[str, Any]:
        return {
            "name": self.name, "kind": self.kind, "node": self.node, "op_type": self.op_type,
            "nodes": list(self.nodes), "quant_type": self.quant_type, "scale": self.scale,
            "zero_point": self.zero_point, "score_db": self.score, "flagged": self.flagged,
            "reasons": list(self.reasons),
            "isolated": self.isolated.as_dict() if self.isolated else None,
            "accumulated": self.accumulated.as_dict() if self.accumulated else None,
        }


@dataclass(frozen=True)
class LayerScore:
    """A layer (node) and the worst score of the tensors that touch it."""

    node: str
    op_type: Optional[str]
    score: float
    tensor: str                        # the worst tensor

    def as_dict(self) -> Dict[str, Any]:
        return {"node": self.node, "op_type": self.op_type, "score_db": self.score,
                "tensor": self.tensor}


@dataclass(frozen=True)
class AnalysisReport:
    float_model: str
    quant_model: str
    samples: int
    cosine_threshold: float
    sqnr_threshold_db: float
    tensors: Tuple[TensorError, ...]           # activations and weights, in graph order
    outputs: Tuple[TensorError, ...]           # the model outputs, quantized vs float
    unmatched: Tuple[str, ...] = ()            # quantized tensors the float model lacks
    notes: Tuple[str, ...] = ()
    elapsed_s: float = 0.0
    versions: Tuple[Tuple[str, str], ...] = ()
    layers: Tuple[Tuple[str, str], ...] = field(default=(), repr=False)  # (node, op type),
                                                                          # in graph order

    def ranked(self) -> List[TensorError]:
        """Every quantized activation and weight, worst first (lowest ``score``).

        Biases are not ranked: an int32 bias's step is its layer's input scale times the
        weight scale, so its error follows from that input activation's range, which is
        ranked itself (see ``biases``)."""
        def key(t: TensorError) -> Tuple[float, float, str]:
            acc = t.accumulated.sqnr_db if t.accumulated is not None else SQNR_CAP_DB
            return (t.score, acc, t.name)
        return sorted((t for t in self.tensors if t.kind != "bias"), key=key)

    def biases(self) -> List[TensorError]:
        """The quantized biases, worst first."""
        return sorted((t for t in self.tensors if t.kind == "bias"), key=lambda t: t.score)

    def flagged(self) -> List[TensorError]:
        return [t for t in self.ranked() + self.biases() if t.flagged]

    def layer_scores(self, candidates: Optional[Iterable[str]] = None) -> List[LayerScore]:
        """Layers worst first: each node scores the worst of the tensors that touch it.
        ``candidates``: only these nodes (e.g. the quantizable ones)."""
        allowed = set(candidates) if candidates is not None else None
        best: Dict[str, LayerScore] = {}
        op_types = dict(self.layers)
        for tensor in self.ranked():
            for node in tensor.nodes:
                if allowed is not None and node not in allowed:
                    continue
                if node not in best or tensor.score < best[node].score:
                    best[node] = LayerScore(node, op_types.get(node), tensor.score, tensor.name)
        order = {name: i for i, (name, _) in enumerate(self.layers)}
        return sorted(best.values(), key=lambda s: (s.score, order.get(s.node, len(order)), s.node))

    def as_dict(self) -> Dict[str, Any]:
        from edgetune.host.quant.report import analysis_dict

        return analysis_dict(self)

    def to_json(self, indent: int = 2) -> str:
        from edgetune.host.quant.report import analysis_json

        return analysis_json(self, indent=indent)

    def to_markdown(self, top: Optional[int] = None) -> str:
        from edgetune.host.quant.report import analysis_markdown

        return analysis_markdown(self, top=top)

    def to_png(self, path: Path, top: int = 30) -> Optional[Path]:
        """The bar chart; None (and a logged "plot skipped" line) without matplotlib."""
        from edgetune.host.quant.report import analysis_png

        return analysis_png(self, Path(path), top=top)


__all__ = ["AnalysisReport", "LayerScore", "TensorError"]
