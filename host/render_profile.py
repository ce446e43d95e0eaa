"""``bench --profile``: a board's per-operator profile as JSON and as tables.

The board returns per-node times (``OperatorProfile``); the shares by op type and by provider
are summed here, and the profiler's own overhead is stated: the profiled runs' p50 beside the
unprofiled measurement's. Each node is also put back on the user's model when its file is at
hand (``host.profile_names``): the model node and tensor that ``edgetune analyze`` names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

from edgetune.host.profile_names import map_to_model
from edgetune.protos.messages import OperatorProfile


def _shares(profile: OperatorProfile, key: str) -> List[Dict[str, Any]]:
    total = sum(n.total_ms for n in profile.nodes) or 1.0
    sums: Dict[str, List[float]] = {}
    for node in profile.nodes:
        entry = sums.setdefault(getattr(node, key) or "?", [0.0, 0])
        entry[0] += node.total_ms
        entry[1] += 1
    rows = [{key: name, "total_ms": t, "share": t / total, "nodes": int(n)}
            for name, (t, n) in sums.items()]
    return sorted(rows, key=lambda r: -r["total_ms"])


def profile_record(profile: OperatorProfile, p50_ms: float,
                   model_path: Optional[Path] = None) -> Dict[str, Any]:
    """``"profile"`` of a bench result in ``--json``; ``model_path``: the local model, to name
    each node's ``model_node`` and ``tensor`` (null: inserted by onnxruntime, or no model)."""
    per_run = profile.iterations or 1
    mapped = map_to_model((n.name for n in profile.nodes), model_path)
    return {
        "iterations": profile.iterations,
        "profiled_p50_ms": profile.profiled_p50_ms, "p50_ms": p50_ms,
        "overhead": (profile.profiled_p50_ms / p50_ms - 1.0) if p50_ms > 0 else None,
        "nodes": [{"name": n.name, "op_type": n.op_type, "provider": n.provider,
                   "calls": n.calls, "total_ms": n.total_ms, "mean_ms": n.mean_ms,
                   "per_run_ms": n.total_ms / per_run,
                   "model_node": mapped[n.name].node if n.name in mapped else None,
                   "tensor": mapped[n.name].tensor if n.name in mapped else None}
                  for n in profile.nodes],
        "by_op_type": _shares(profile, "op_type"),
        "by_provider": _shares(profile, "provider"),
    }


def print_profile(console: Any, model: str, profile: OperatorProfile, doc: Dict[str, Any],
                  top: int) -> None:
    """``doc``: the result's ``profile_record`` (made once: it reads the local model)."""
    from rich.table import Table

    p50_ms = doc["p50_ms"]
    mapped = any(n["model_node"] for n in doc["nodes"])
    overhead: Optional[float] = doc["overhead"]
    said = f", {overhead:+.0%} with the profiler on" if overhead is not None else ""
    nodes = Table(title=f"{model}: slowest {min(top, len(profile.nodes))} of "
                        f"{len(profile.nodes)} nodes over {profile.iterations} profiled runs "
                        f"(p50 {profile.profiled_p50_ms:.3f} ms profiled, {p50_ms:.3f} ms "
                        f"measured{said})", title_justify="left")
    columns = ["node", "op type", "provider", "ms per run", "share"]
    if mapped:          # the model's own names, as `edgetune analyze` reports them
        columns[1:1] = ["model node", "tensor"]
    for column in columns:
        nodes.add_column(column, justify="right" if column in ("ms per run", "share") else "left")
    total = sum(n.total_ms for n in profile.nodes) or 1.0
    for n, entry in zip(profile.nodes[:top], doc["nodes"]):
        names = [entry["model_node"] or "-", entry["tensor"] or "-"] if mapped else []
        nodes.add_row(n.name, *names, n.op_type, n.provider,
                      f"{n.total_ms / (profile.iterations or 1):.4f}", f"{n.total_ms / total:.1%}")
    console.print(nodes)
    for key, title in (("op_type", "by op type"), ("provider", "by provider")):
        table = Table(title=f"{model}: time {title}", title_justify="left")
        for column in (title.split()[-1], "nodes", "share"):
            table.add_column(column, justify="left" if column == title.split()[-1] else "right")
        for row in doc[f"by_{key}"]:
            table.add_row(row[key], str(row["nodes"]), f"{row['share']:.1%}")
        console.print(table)
