"""What a study leaves in ``-o DIR`` and prints.

    model.onnx            the chosen model (the FP32 file itself when that won)
    session.json          its onnxruntime session options: `edgetune bench --session session.json`
    model.record.json     the quantization record of model.onnx (absent for FP32)
    report.md             the summary, baselines, candidates, the Pareto table, every trial
    pareto.png            latency vs accuracy, feasible / infeasible / pruned marked
    trials.csv            one row per trial
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from edgetune.host.errors import UsageError

OUTPUTS = ("model.onnx", "session.json", "report.md", "pareto.png", "trials.csv")


def session_doc(session: Any) -> Dict[str, Any]:
    """The session options as ``bench --session`` reads them (SessionOptions.as_dict)."""
    return session.as_dict()


def check_out_dir(out: Path) -> None:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"-o {out} exists and is not a directory")


def write_outputs(result: Any, out: Path) -> List[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: List[Path] = []
    if result.best_variant is not None:
        model = out / "model.onnx"
        shutil.copyfile(result.best_variant.path, model)
        written.append(model)
        record_path = result.best_variant.record_path
        if record_path is not None and record_path.is_file():
            record = out / "model.record.json"
            shutil.copyfile(record_path, record)
            written.append(record)
        else:
            stale = out / "model.record.json"
            if stale.exists():
                stale.unlink()
    if result.best_session is not None:
        path = out / "session.json"
        path.write_text(json.dumps(session_doc(result.best_session), indent=2) + "\n",
                        encoding="utf-8")
        written.append(path)
    written.append(_write_csv(result, out / "trials.csv"))
    plot = write_plot(result, out / "pareto.png")
    if plot is not None:
        written.append(plot)
    report = out / "report.md"
    report.write_text(markdown(result), encoding="utf-8")
    written.append(report)
    return written


CSV_FIELDS = ("number", "state", "board", "stage", "latency_ms", "accuracy", "drop_pts",
              "result_id", "error", "params")


def _write_csv(result: Any, path: Path) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_FIELDS)
        for t in result.trial_docs:
            lat = (t.get("latency_ms") or {}).get(result.objective)
            writer.writerow([t["number"], t["state"], t.get("board") or "", t.get("stage") or "",
                             "" if lat is None else f"{lat:.6g}",
                             "" if t.get("accuracy") is None else f"{t['accuracy']:.6g}",
                             "" if t.get("drop_pts") is None else f"{t['drop_pts']:.4g}",
                             t.get("result_id") or "", t.get("error") or "",
                             json.dumps(t["params"], sort_keys=True)])
    return path


def write_plot(result: Any, path: Path) -> Optional[Path]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    groups: Dict[str, List[tuple]] = {"feasible": [], "infeasible": [], "pruned": []}
    for t in result.trial_docs:
        lat = (t.get("latency_ms") or {}).get(result.objective)
        if lat is None or t.get("accuracy") is None:
            continue
        kind = {"complete": "feasible", "infeasible": "infeasible",
                "pruned": "pruned"}.get(t["state"])
        if kind:
            groups[kind].append((lat, 100 * t["accuracy"], t["number"]))
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    styles = {"feasible": ("o", "tab:blue"), "infeasible": ("x", "tab:red"),
              "pruned": (".", "tab:gray")}
    for kind, pts in groups.items():
        if pts:
            marker, color = styles[kind]
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=marker, color=color,
                       label=f"{kind} ({len(pts)})")
    front = sorted(result.pareto, key=lambda p: p["latency_ms"])
    if front:
        ax.plot([p["latency_ms"] for p in front], [100 * p["accuracy"] for p in front], "-",
                color="tab:green", label="Pareto front")
    if result.best is not None:
        lat = result.best["latency_ms"].get(result.objective)
        acc = result.best["accuracy"]["value"]
        if lat is not None and acc is not None:
            ax.scatter([lat], [100 * acc], marker="*", s=160, color="gold", edgecolor="black",
                       zorder=5, label=f"chosen (trial {result.best['trial']})")
    spans = [p[0] for pts in groups.values() for p in pts if p[0] > 0]
    if spans and max(spans) > 20 * min(spans):       # a slow outlier would flatten the rest
        ax.set_xscale("log")
    ax.set_xlabel(f"{result.objective} latency (ms)")
    ax.set_ylabel(f"{result.metric} (%)")
    ax.set_title(f"study {result.study}")
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _fmt(value: Optional[float], digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}g}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    from edgetune.host.render import markdown_table
    return markdown_table(tuple(header), [tuple(r) for r in rows])


def markdown(result: Any) -> str:
    obj_key = result.objective
    lines = [f"# Tuning study {result.study}", "", result.summary, ""]
    kind = result.board_kind
    lines += [f"Boards: {kind.get('arch')}, {kind.get('cpu_model')}, onnxruntime "
              f"{kind.get('onnxruntime_version')}. Objective: {obj_key} latency, "
              f"{result.metric}; --max-drop: "
              f"{'none' if result.max_drop is None else f'{result.max_drop:g} pts'}. "
              f"Results run id: {result.run_id}.", ""]
    t = result.trials
    lines += [f"Trials: {t['complete']} complete, {t['infeasible']} infeasible, "
              f"{t['pruned']} stopped early, {t['failed']} failed on a board (retried).", ""]
    if result.baselines:
        lines += ["## The answer, measured again (interleaved rounds)", ""]
        rows = []
        for role, b in result.baselines.items():
            rows.append((role, _fmt(b["latency_ms"].get(obj_key)),
                         _fmt(None if b["accuracy"]["value"] is None
                              else 100 * b["accuracy"]["value"]), "-", "-"))
        for c in result.candidates:
            imp = c["improvement"]
            ci = imp.get("ci")
            rows.append((f"trial {c['trial']} ({c['role']})",
                         _fmt(c["latency_ms"].get(obj_key)),
                         _fmt(None if c["accuracy"]["value"] is None
                              else 100 * c["accuracy"]["value"]),
                         "-" if imp.get("vs_int8_default") is None else
                         f"{imp['vs_int8_default']:+.0f}%"
                         + (f" ({ci[0]:.0f} to {ci[1]:.0f}%)" if ci else ""),
                         "-" if imp.get("vs_fp32") is None else f"{imp['vs_fp32']:.2f}x"))
        lines += [_table(("model", f"{obj_key} (ms)", f"{result.metric} (%)",
                          "gain vs default INT8 (95% CI)", "speed-up vs FP32"), rows), ""]
    if result.best is not None:
        lines += ["## Chosen configuration", "", "```json",
                  json.dumps({"params": result.best["params"],
                              "session": result.best["session"]}, indent=2), "```", ""]
    lines += ["## Pareto front (feasible trials)", ""]
    lines += [_table(("trial", f"{obj_key} (ms)", f"{result.metric} (%)", "drop (pts)",
                      "params"),
                     [(str(p["trial"]), _fmt(p["latency_ms"]), _fmt(100 * p["accuracy"]),
                       _fmt(p.get("drop_pts"), 3), _params_text(p["params"]))
                      for p in result.pareto]) if result.pareto else "(no feasible trial)", ""]
    lines += ["## Every trial", ""]
    lines += [_table(("trial", "state", "board", f"{obj_key} (ms)", f"{result.metric} (%)",
                      "note"),
                     [(str(d["number"]), d["state"], d.get("board") or "-",
                       _fmt((d.get("latency_ms") or {}).get(obj_key)),
                       _fmt(None if d.get("accuracy") is None else 100 * d["accuracy"]),
                       (d.get("error") or d.get("early_stop") or "").replace("|", "/")[:120])
                      for d in result.trial_docs]), ""]
    return "\n".join(lines)


def _params_text(params: Dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())
