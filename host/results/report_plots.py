"""The plots of ``edgetune results report`` (matplotlib, Agg backend, imported only here).

    draw(report, folder) -> {"latency": "latency.png", "scatter": "accuracy_latency.png"}

A plot with nothing to show is not made (and report.md says why in words).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

from edgetune.host.errors import BadInputError
from edgetune.host.results.report import LATENCY_PNG, SCATTER_PNG, Group, Report

INSTALL_HINT = "pip install 'edgetune[plot]'"
DPI = 120


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (no display needed), or a clear error."""
    try:
        import matplotlib
    except ImportError as exc:
        raise BadInputError(f"results report draws its plots with matplotlib, which is not "
                            f"installed ({exc})", hint=INSTALL_HINT) from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def draw(report: Report, folder: Path) -> Dict[str, str]:
    plt = pyplot()
    made: Dict[str, str] = {}
    bench = [g for g in report.groups if g.bench]
    if bench:
        _latency(plt, bench, folder / LATENCY_PNG)
        made["latency"] = LATENCY_PNG
    joined = [g for g in report.groups if g.bench and g.eval]
    if joined and any(_accuracy(g)[0] is not None for g in joined):
        _scatter(plt, report, joined, folder / SCATTER_PNG)
        made["scatter"] = SCATTER_PNG
    return made


def _horizontal() -> Dict[str, Any]:
    """bxp's horizontal switch: ``orientation`` since matplotlib 3.10, ``vert`` before."""
    import matplotlib
    major, minor = (int(x) for x in matplotlib.__version__.split(".")[:2])
    return {"orientation": "horizontal"} if (major, minor) >= (3, 10) else {"vert": False}


def _percentile(sorted_values: List[float], q: float) -> float:
    pos = (len(sorted_values) - 1) * q
    low = int(pos)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low)


def _tick(group: Group) -> str:
    runs = len(group.bench)
    if not group.sampled_runs:
        where = f"{runs} run{'s' if runs != 1 else ''}, stored percentiles"
    elif group.sampled_runs == runs:
        where = f"{runs} run{'s' if runs != 1 else ''}, {len(group.samples)} samples"
    else:
        where = f"{len(group.samples)} samples of {group.sampled_runs} of {runs} runs"
    return f"{group.label}\non {group.device} ({where})"


def _latency(plt: Any, groups: List[Group], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(9, 1.6 + 0.9 * len(groups)))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    devices = sorted({g.device for g in groups})
    stats, positions = [], []
    strips = []
    for i, group in enumerate(reversed(groups)):
        color = colors[devices.index(group.device) % len(colors)]
        if group.sampled_runs:
            data = sorted(group.samples)
            stats.append({"med": _percentile(data, 0.5), "q1": _percentile(data, 0.25),
                          "q3": _percentile(data, 0.75), "whislo": _percentile(data, 0.01),
                          "whishi": _percentile(data, 0.99), "fliers": [],
                          "mean": sum(data) / len(data), "label": ""})
            positions.append((i, color))
        else:
            strips.append((i, color, group))
    if stats:
        boxes = ax.bxp(stats, positions=[p for p, _ in positions], widths=0.55,
                       showmeans=False, patch_artist=True, showfliers=False, **_horizontal())
        for patch, (_, color) in zip(boxes["boxes"], positions):
            patch.set_facecolor(color)
            patch.set_alpha(0.45)
        for line in boxes["medians"]:
            line.set_color("black")
            line.set_linewidth(1.6)
    marks = (("p50", "|", 16), ("p90", "D", 6), ("p99", "x", 7))
    for i, color, group in strips:
        low, high = group.latency("min"), group.latency("p99")
        if low is not None and high is not None:
            ax.plot([low, high], [i, i], color=color, linewidth=1.2, alpha=0.8)
        for stat, marker, size in marks:
            value = group.latency(stat)
            if value is not None:
                ax.plot([value], [i], marker=marker, markersize=size, color=color,
                        markeredgecolor="black" if marker != "x" else color, linestyle="none",
                        label=f"{stat} (stored percentiles)")
    ax.set_yticks(range(len(groups)))
    ax.set_yticklabels([_tick(g) for g in reversed(groups)], fontsize=8)
    ax.set_ylim(-0.6, len(groups) - 0.4)
    ax.set_xlabel("latency per inference (ms)")
    ax.set_title("Latency per model and board", loc="left", fontsize=11)
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlim(left=0)
    _finish(plt, fig, ax, path, legend=bool(strips), fontsize=7, loc="lower right")


def _accuracy(group: Group) -> Any:
    """(value in the plot's unit, axis label) of a group's accuracy: top-1 %, else cosine."""
    top1 = group.accuracy("top1")
    if top1 is not None:
        return 100 * top1, "top-1 accuracy (%)"
    return group.accuracy("cosine"), "cosine similarity to the reference outputs"


def _scatter(plt: Any, report: Report, groups: List[Group], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 5.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    devices = sorted({g.device for g in groups})
    use_top1 = any(g.accuracy("top1") is not None for g in groups)
    points: Dict[Any, Any] = {}
    labels: List[Any] = []
    for group in groups:
        value, _ = _accuracy(group)
        x = group.latency("p50")
        if value is None or x is None or (use_top1 and group.accuracy("top1") is None):
            continue
        color = colors[devices.index(group.device) % len(colors)]
        quantized = group.parent_sha256 is not None
        ax.scatter([x], [value], s=70, color=color, marker="s" if quantized else "o",
                   edgecolors="black", linewidths=0.6, zorder=3,
                   label=f"{group.device}, {'quantized' if quantized else 'float / other'}")
        points[(group.sha256, group.device)] = (x, value)
        labels.append((x, value, group.label))
    _label_points(ax, labels)
    for group in groups:
        start = points.get((group.parent_sha256, group.device))
        end = points.get((group.sha256, group.device))
        if start and end:
            ax.annotate("", xy=end, xytext=start, zorder=2,
                        arrowprops={"arrowstyle": "->", "color": "0.45", "lw": 1.0})
    ax.set_xlabel("p50 latency per inference (ms, median over runs)")
    ax.set_ylabel("top-1 accuracy (%)" if use_top1
                  else "cosine similarity to the reference outputs")
    ax.set_title("Accuracy against latency (up and left is better)", loc="left", fontsize=11)
    ax.grid(alpha=0.3)
    xs = [p[0] for p in points.values()]
    ys = [p[1] for p in points.values()]
    if xs:
        pad_x = (max(xs) - min(xs)) * 0.25 or max(xs) * 0.1 or 1.0
        pad_y = (max(ys) - min(ys)) * 0.25 or 0.5
        ax.set_xlim(max(0.0, min(xs) - pad_x), max(xs) + pad_x * 1.6)
        ax.set_ylim(min(ys) - pad_y, max(ys) + pad_y)
    _finish(plt, fig, ax, path, legend=True, fontsize=8, loc="best")


def _finish(plt: Any, fig: Any, ax: Any, path: Any, *, legend: bool, fontsize: int,
            loc: str) -> None:
    """One legend entry per label (repeated series draw the same label), then write the PNG."""
    if legend:
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles))
        ax.legend(unique.values(), unique.keys(), fontsize=fontsize, loc=loc)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def _label_points(ax: Any, labels: List[Any]) -> None:
    """Name each point beside it; a label that would sit on an earlier one (close in y and
    to its left within the label's reach) moves a line down."""
    if not labels:
        return
    xs = [x for x, _, _ in labels]
    ys = [y for _, y, _ in labels]
    span_x = (max(xs) - min(xs)) or 1.0
    span_y = (max(ys) - min(ys)) or 1.0
    placed: List[Any] = []
    for x, y, text in sorted(labels, key=lambda p: (p[0], -p[1])):
        line = 0
        while any(abs(y - py) < 0.06 * span_y and abs(x - px) < 0.45 * span_x and pl == line
                  for px, py, pl in placed):
            line += 1
        placed.append((x, y, line))
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(7, 5 - 11 * line),
                    fontsize=7)
