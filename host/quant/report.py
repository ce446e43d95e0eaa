"""Renderings of an ``AnalysisReport``: a JSON document, Markdown, and a bar chart PNG.

Markdown and JSON always work; the PNG needs matplotlib (``pip install edgetune[plot]``), and
without it ``analysis_png`` returns None and says "plot skipped".
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

from edgetune.host.render import json_safe

if TYPE_CHECKING:  # pragma: no cover
    from edgetune.host.quant.analysis import AnalysisReport, TensorError

log = logging.getLogger(__name__)

PLOT_SKIPPED = "plot skipped: pip install edgetune[plot]"

FORMULAS = """\
x is the reference tensor and y the tensor compared with it; every sum runs over every value
of every analysed sample.

- SQNR (dB) = 10 * log10( sum(x^2) / sum((x - y)^2) ), i.e. 20 * log10(|x| / |x - y|), the
  definition of onnxruntime's `compute_signal_to_quantization_noice_ratio`. Higher is better.
  Reported as +200 dB when x == y exactly and -200 dB when x is all zeros but y is not.
- cosine = sum(x * y) / ( sqrt(sum(x^2)) * sqrt(sum(y^2)) ). 1 is a perfect match.
- NSR (noise-to-signal ratio) = sum((x - y)^2) / sum(x^2) = 10^(-SQNR / 10). Lower is better.
- channel SQNR (dB) = the mean, over the channels c that carry any signal, of
  10 * log10( sum(x_c^2) / sum((x_c - y_c)^2) ); the channel axis is 1 for activations
  (NCHW, or the features of [N, F]) and the quantization axis (else 0) for weights. A tensor
  with a few huge channels can have a high SQNR while every other channel is rounded away:
  this figure shows it.
- accumulated: x = the float model's tensor, y = the quantized model's tensor after its
  QuantizeLinear/DequantizeLinear (all upstream error included).
- isolated: x = the quantized model's tensor just before its QuantizeLinear (after a Relu or
  Clip the quantizer folded into the range), y = the same tensor after its DequantizeLinear:
  only the rounding and clipping of this tensor's own quantization. For a weight: x = the float
  weight, y = its dequantized copy.
- rank score = min(isolated SQNR, isolated channel SQNR); tensors are ranked lowest first.
  Biases (int32, step = input scale x weight scale) are listed but not ranked: their error
  follows from their layer's input range, which is ranked itself.
- flagged: cosine < {cos} or SQNR < {sqnr} dB in either view, or isolated channel
  SQNR < {sqnr} dB."""


def formulas(cosine_threshold: float, sqnr_threshold_db: float) -> str:
    """The formulas text with the thresholds filled in."""
    return FORMULAS.format(cos=f"{cosine_threshold:g}", sqnr=f"{sqnr_threshold_db:g}")


def analysis_dict(report: "AnalysisReport") -> Dict[str, Any]:
    """The report as one JSON-friendly document (ranked worst first)."""
    return json_safe({
        "float_model": report.float_model,
        "quant_model": report.quant_model,
        "samples": report.samples,
        "thresholds": {"cosine": report.cosine_threshold, "sqnr_db": report.sqnr_threshold_db},
        "formulas": formulas(report.cosine_threshold, report.sqnr_threshold_db),
        "outputs": [o.as_dict() for o in report.outputs],
        "ranked": [t.as_dict() for t in report.ranked()],
        "biases": [t.as_dict() for t in report.biases()],
        "layers": [s.as_dict() for s in report.layer_scores()],
        "flagged": [t.name for t in report.flagged()],
        "unmatched": list(report.unmatched),
        "notes": list(report.notes),
        "elapsed_s": report.elapsed_s,
        "versions": dict(report.versions),
    })


def analysis_json(report: "AnalysisReport", indent: int = 2) -> str:
    return json.dumps(analysis_dict(report), indent=indent, allow_nan=False)


def _fmt(value: Optional[float], digits: int = 2) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1e4 or (value != 0 and abs(value) < 1e-3):
        return f"{value:.2e}"
    return f"{value:.{digits}f}"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _row(t: "TensorError", rank: int) -> str:
    iso, acc = t.isolated, t.accumulated
    return "| " + " | ".join(_cell(c) for c in (
        rank, f"`{t.name}`", t.kind, t.node or "-", t.op_type or "-", t.quant_type or "-",
        _fmt(iso.sqnr_db if iso else None, 1), _fmt(iso.channel_sqnr_db if iso else None, 1),
        _fmt(iso.cosine if iso else None, 4), _fmt(iso.nsr if iso else None, 4),
        _fmt(acc.sqnr_db if acc else None, 1), _fmt(acc.cosine if acc else None, 4),
        _fmt(acc.nsr if acc else None, 4), "**yes**" if t.flagged else "")) + " |"


_HEADER = ("| # | tensor | kind | node | op | type | iso SQNR dB | iso ch. SQNR dB | iso cosine "
           "| iso NSR | acc SQNR dB | acc cosine | acc NSR | flagged |\n"
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def analysis_markdown(report: "AnalysisReport", top: Optional[int] = None) -> str:
    """A Markdown report: outputs, flags, the ranked table (worst first), the formulas."""
    ranked = report.ranked()
    shown = ranked if top is None else ranked[:top]
    flagged = report.flagged()
    lines: List[str] = [
        "# Quantization error analysis", "",
        f"- float model: `{report.float_model}`",
        f"- quantized model: `{report.quant_model}`",
        f"- samples: {report.samples}; thresholds: cosine < {report.cosine_threshold:g}, "
        f"SQNR < {report.sqnr_threshold_db:g} dB",
        f"- {len(ranked)} quantized tensors and weights, {len(flagged)} flagged", "",
        "## Model outputs (quantized vs float)", "",
        "| output | SQNR dB | cosine | NSR | channel SQNR dB | flagged |",
        "|---|---|---|---|---|---|",
    ]
    for out in report.outputs:
        acc = out.accumulated
        lines.append("| " + " | ".join(_cell(c) for c in (
            f"`{out.name}`", _fmt(acc.sqnr_db if acc else None, 1),
            _fmt(acc.cosine if acc else None, 5), _fmt(acc.nsr if acc else None, 5),
            _fmt(acc.channel_sqnr_db if acc else None, 1),
            "**yes**" if out.flagged else "")) + " |")
    lines += ["", "## Flagged", ""]
    if flagged:
        for t in flagged:
            where = f" ({t.node}, {t.op_type})" if t.node else ""
            lines.append(f"- `{t.name}`{where}: " + "; ".join(t.reasons))
    else:
        lines.append("Nothing is flagged.")
    layers = report.layer_scores()[:10]
    if layers:
        lines += ["", "## Most sensitive layers", "",
                  "| layer | op | score dB | worst tensor |", "|---|---|---|---|"]
        lines += [f"| {_cell(s.node)} | {_cell(s.op_type or '-')} | {_fmt(s.score, 1)} | "
                  f"`{_cell(s.tensor)}` |" for s in layers]
    title = "## Tensors, worst first" + (f" (top {len(shown)} of {len(ranked)})"
                                         if len(shown) < len(ranked) else "")
    lines += ["", title, "", _HEADER]
    lines += [_row(t, i + 1) for i, t in enumerate(shown)]
    biases = report.biases()
    if biases:
        lines += ["", "## Biases (not ranked)", "", _HEADER]
        lines += [_row(t, i + 1) for i, t in enumerate(biases)]
    if report.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report.notes]
    lines += ["", "## Formulas", "", formulas(report.cosine_threshold,
                                              report.sqnr_threshold_db), ""]
    versions = ", ".join(f"{k} {v}" for k, v in report.versions)
    lines += [f"_{report.samples} samples in {report.elapsed_s:.1f} s; {versions}_", ""]
    return "\n".join(lines)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temp file and a rename (nothing half-written)."""
    _atomic_write_bytes(Path(path), text.encode("utf-8"))
    return Path(path)


def analysis_png(report: "AnalysisReport", path: Path, top: int = 30) -> Optional[Path]:
    """A horizontal bar chart of the ``top`` worst tensors (isolated and accumulated SQNR, the
    threshold as a line); None when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning(PLOT_SKIPPED)
        return None
    import io

    ranked = report.ranked()[:top]
    names = [t.name if len(t.name) <= 40 else "..." + t.name[-37:] for t in ranked][::-1]
    score = [t.score for t in ranked][::-1]
    acc = [t.accumulated.sqnr_db if t.accumulated is not None else float("nan")
           for t in ranked][::-1]
    height = max(3.0, 0.3 * len(ranked) + 1.5)
    fig, ax = plt.subplots(figsize=(9, height))
    try:
        ys = list(range(len(ranked)))
        ax.barh([y + 0.2 for y in ys], score, height=0.4, label="isolated (rank score)",
                color=["#d62728" if t.flagged else "#1f77b4" for t in ranked][::-1])
        ax.barh([y - 0.2 for y in ys], acc, height=0.4, label="accumulated SQNR",
                color="#aaaaaa")
        ax.axvline(report.sqnr_threshold_db, color="black", linestyle="--", linewidth=1,
                   label=f"threshold {report.sqnr_threshold_db:g} dB")
        ax.set_yticks(ys)
        ax.set_yticklabels(names, fontsize=7)
        ax.set_xlabel("SQNR (dB), higher is better; red: flagged")
        ax.set_title(f"Quantization error, worst {len(ranked)} tensors")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.6 / height - 0.04), ncol=3,
                  fontsize=7, frameon=False)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
    finally:
        plt.close(fig)
    _atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)


def table_rows(tensors: Sequence["TensorError"]) -> List[List[str]]:
    """Rows for a terminal table: tensor, node, op, isolated/accumulated SQNR, cosine, flag."""
    rows = []
    for t in tensors:
        iso, acc = t.isolated, t.accumulated
        rows.append([t.name, t.node or "-", t.op_type or "-", t.quant_type or "-",
                     _fmt(t.score, 1), _fmt(iso.sqnr_db if iso else None, 1),
                     _fmt(acc.sqnr_db if acc else None, 1), _fmt(acc.cosine if acc else None, 4),
                     "yes" if t.flagged else ""])
    return rows


TABLE_COLUMNS = ("tensor", "node", "op", "type", "score dB", "iso dB", "acc dB", "acc cos",
                 "flag")

__all__ = ["FORMULAS", "PLOT_SKIPPED", "formulas", "TABLE_COLUMNS", "analysis_dict", "analysis_json",
           "analysis_markdown", "analysis_png", "table_rows", "write_text_atomic"]
