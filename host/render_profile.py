"""``bench --profile``: a board's per-operator profile as JSON and as tables.

The board returns per-node times (``OperatorProfile``); the shares by op type and by provider
are summed here, and the profiler's own overhead is stated: the profiled runs' p50 beside the
unprofiled measurement's.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

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


def profile_record(profile: OperatorProfile, p50_ms: float) -> Dict[str, Any]:
    """``"profile"`` of a bench result in ``--json``."""
    per_run = profile.iterations or 1
    return {
        "iterations": profile.iterations,
        "profiled_p50_ms": profile.profiled_p50_ms, "p50_ms": p50_ms,
        "overhead": (profile.profiled_p50_ms / p50_ms - 1.0) if p50_ms > 0 else None,
        "nodes": [{"name": n.name, "op_type": n.op_type, "provider": n.provider,
                   "calls": n.calls, "total_ms": n.total_ms, "mean_ms": n.mean_ms,
                   "per_run_ms": n.total_ms / per_run} for n in profile.nodes],
        "by_op_type": _shares(profile, "op_type"),
        "by_provider": _shares(profile, "provider"),
    }


def print_profile(console: Any, model: str, profile: OperatorProfile, p50_ms: float,
                  top: int) -> None:
    from rich.table import Table

    doc = profile_record(profile, p50_ms)
    overhead: Optional[float] = doc["overhead"]
    said = f", {overhead:+.0%} with the profiler on" if overhead is not None else ""
    nodes = Table(title=f"{model}: slowest {min(top, len(profile.nodes))} of "
                        f"{len(profile.nodes)} nodes over {profile.iterations} profiled runs "
                        f"(p50 {profile.profiled_p50_ms:.3f} ms profiled, {p50_ms:.3f} ms "
                        f"measured{said})", title_justify="left")
    for column in ("node", "op type", "provider", "ms per run", "share"):
        nodes.add_column(column, justify="right" if column in ("ms per run", "share") else "left")
    total = sum(n.total_ms for n in profile.nodes) or 1.0
    for n in profile.nodes[:top]:
        nodes.add_row(n.name, n.op_type, n.provider, f"{n.total_ms / (profile.iterations or 1):.4f}",
                      f"{n.total_ms / total:.1%}")
    console.print(nodes)
    for key, title in (("op_type", "by op type"), ("provider", "by provider")):
        table = Table(title=f"{model}: time {title}", title_justify="left")
        for column in (title.split()[-1], "nodes", "share"):
            table.add_column(column, justify="left" if column == title.split()[-1] else "right")
        for row in doc[f"by_{key}"]:
            table.add_row(row[key], str(row["nodes"]), f"{row['share']:.1%}")
        console.print(table)
