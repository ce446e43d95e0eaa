"""report.md of ``edgetune results report``: plain Markdown (pipe tables, relative image
links) that reads the same pasted into a doc, a wiki or a pull request."""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from edgetune.host.results.records import Record
from edgetune.host.results.repeat import spread
from edgetune.host.results.report import MAX_LISTED, Group, Report
from edgetune.host.results.compare import fixed, ratio_text
from edgetune.host.results.view import metric, model_label, p50_ms


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(columns: Sequence[str], rows: Sequence[Sequence[Any]],
           right: Sequence[str] = ()) -> str:
    """A Markdown pipe table, padded to line up as text too; the columns named in ``right``
    (numbers) right-aligned, the others left-aligned."""
    cells = [[_cell(c) for c in columns]] + [[_cell(c) for c in r] for r in rows]
    widths = [max(3, *(len(row[i]) for row in cells)) for i in range(len(columns))]
    align = [c in right for c in columns]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if a else c.ljust(w)
                                 for c, w, a in zip(row, widths, align)) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ":" if a else "-" * (w + 2)
                          for w, a in zip(widths, align)) + "|"
    return "\n".join([line(cells[0]), rule, *(line(row) for row in cells[1:])])


def _fmt(value: Optional[float], digits: int = 4, unit: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.2f} %"


def _kib(size: Optional[int]) -> str:
    return "-" if size is None else f"{size / 1024:.1f} KiB"


def _ratio(before: Optional[float], after: Optional[float]) -> str:
    return ratio_text(None if before in (None, 0) or after is None else after / before)


def _delta_pts(before: Optional[float], after: Optional[float]) -> str:
    return fixed(None if before is None or after is None else 100 * (after - before), 2, " pts",
                 sign=True)


def before_after_rows(before: Group, after: Group) -> List[List[str]]:
    rows = [["model", before.label, after.label, ""],
            ["size", _kib(before.size_bytes), _kib(after.size_bytes),
             _ratio(before.size_bytes, after.size_bytes)]]
    for name, title in (("top1", "top-1"), ("top5", "top-5")):
        if before.accuracy(name) is not None or after.accuracy(name) is not None:
            rows.append([title, _pct(before.accuracy(name)), _pct(after.accuracy(name)),
                         _delta_pts(before.accuracy(name), after.accuracy(name))])
    if before.accuracy("cosine") is not None or after.accuracy("cosine") is not None:
        rows.append(["cosine to reference", _fmt(before.accuracy("cosine")),
                     _fmt(after.accuracy("cosine")),
                     fixed(None if before.accuracy("cosine") is None
                           or after.accuracy("cosine") is None
                           else after.accuracy("cosine") - before.accuracy("cosine"),  # type: ignore[operator]
                           4, sign=True)])
    for stat in ("p50", "p90", "p99"):
        rows.append([f"{stat} latency", _fmt(before.latency(stat), 4, " ms"),
                     _fmt(after.latency(stat), 4, " ms"),
                     _ratio(before.latency(stat), after.latency(stat))])
    rows.append(["throughput", _fmt(before.throughput(), 0, " inf/s"),
                 _fmt(after.throughput(), 0, " inf/s"),
                 _ratio(before.throughput(), after.throughput())])
    rows.append(["measured", _runs(before), _runs(after), ""])
    return rows


def _runs(group: Group) -> str:
    return f"{len(group.bench)} bench, {len(group.eval)} eval"


def _board_rows(records: Sequence[Record]) -> List[List[str]]:
    boards: Dict[str, Mapping[str, Any]] = {}
    for record in records:
        if record.device_name:
            boards[record.device_name] = record.device   # the newest description wins
    rows = []
    for name in sorted(boards):
        d = boards[name]
        rows.append([name, d.get("agent_name") or "-", d.get("hostname") or "-",
                     d.get("arch") or "-", d.get("cpu_model") or "-",
                     str(d.get("cpu_cores") or "-"), d.get("os") or "-",
                     d.get("python_version") or "-", d.get("onnxruntime_version") or "-",
                     d.get("agent_version") or "-", ", ".join(d.get("providers") or ()) or "-"])
    return rows


def _state(record: Record) -> str:
    state = record.board_state or {}
    parts = []
    if state.get("cpu_freq_mhz"):
        parts.append(f"{state['cpu_freq_mhz']:.0f} MHz")
    if state.get("temperature_c"):
        parts.append(f"{state['temperature_c']:.1f} degC")
    if state.get("flags"):
        parts.append("FLAGGED " + "+".join(state["flags"]))
    return ", ".join(parts) or "-"


def _options(record: Record) -> str:
    o = record.options or {}
    parts = []
    if record.kind == "bench":
        parts.append(f"{record.metrics.get('iterations', '-')} iters")
        if o.get("intra_op_threads"):
            n = o["intra_op_threads"]
            parts.append(f"{n} thread{'s' if n != 1 else ''}")
        if o.get("providers"):
            parts.append(",".join(o["providers"]))
        if isinstance(o.get("repeat"), Mapping):
            parts.append(f"repeat {o['repeat'].get('index')}/{o['repeat'].get('of')}")
    elif record.kind == "eval":
        parts.append(f"{record.metrics.get('samples', '-')} samples")
    elif record.kind == "quantize":
        parts.append(str(o.get("method") or "-"))
    return ", ".join(parts)


def repeat_rows(records: Sequence[Record]) -> List[List[str]]:
    sets: Dict[Tuple[str, str], List[Record]] = {}
    for record in records:
        if record.run_id and isinstance(record.options.get("repeat"), Mapping):
            sets.setdefault((record.run_id, record.model.sha256), []).append(record)
    rows = []
    for (run_id, _), recs in sets.items():
        s = spread([p for p in (p50_ms(r) for r in recs) if p is not None])
        flagged = [str(r.options["repeat"].get("index")) for r in recs
                   if (r.board_state or {}).get("flags")]
        rows.append([model_label(recs[0]), recs[0].device_name or "-", run_id,
                     str(len(recs)), _fmt(s.median if s else None),
                     f"{_fmt(s.min)}-{_fmt(s.max)}" if s else "-", _fmt(s.iqr if s else None),
                     ", ".join(flagged) or "none"])
    return rows


def render_markdown(report: Report, plots: Mapping[str, str]) -> str:
    """report.md; ``plots``: the image files made (``latency``, ``scatter``) -> file name."""
    from edgetune import __version__
    from edgetune.host.results.repeat import FREQ_DROP_PCT, TEMP_RISE_C

    records = report.records
    kinds: Dict[str, int] = {}
    for r in records:
        kinds[r.kind] = kinds.get(r.kind, 0) + 1
    times = [r.created for r in records if r.created]
    out = ["# Results report", ""]
    span = ""
    if times:
        first, last = min(times), max(times)
        span = (f", measured on {first:%Y-%m-%d}, {first:%H:%M}-{last:%H:%M} UTC"
                if first.date() == last.date()
                else f", measured {first:%Y-%m-%d %H:%M} to {last:%Y-%m-%d %H:%M} UTC")
    out += [f"{len(records)} results ({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))})"
            f"{span}; selection: {report.selection or 'all results'}. Made "
            f"{report.created:%Y-%m-%d %H:%M} UTC by edgetune {__version__} "
            "(`edgetune results report`).", ""]
    out += ["Latency is per inference, in milliseconds, of `session.run` on the board "
            "(warm-up excluded); where a model was measured several times on a board, the "
            "tables give the median over those runs of each run's statistic. Accuracy is "
            "from `edgetune eval` on the board.", ""]

    out += ["## Before / after quantization", ""]
    pairs = report.pairs()
    if not pairs:
        out += ["No quantized model in this selection was measured on the same board as the "
                "float model it was made from (`parent_sha256`).", ""]
    for before, after in pairs:
        out += [f"### {before.label} -> {after.label}, on {after.device}", ""]
        out += [_table(("", "before (float)", "after (quantized)", "change"),
                       before_after_rows(before, after),
                       right=("before (float)", "after (quantized)", "change")), ""]
    if report.unpaired_quantized():
        names = ", ".join(report.names.get(s, s[:12]) for s in report.unpaired_quantized())
        out += [f"Quantized without their float model measured on the same board: {names}.", ""]

    bench_groups = [g for g in report.groups if g.bench]
    out += ["## Latency per model and board", ""]
    if "latency" in plots:
        out += [f"![latency per model and board]({plots['latency']})", "",
                "Boxes: the raw samples of every run (box: quartiles; line: median; whiskers: "
                "1st to 99th percentile; the slower tail beyond is not drawn). Where runs kept "
                "no raw samples (no `--samples`), the stored percentiles are drawn instead, "
                "as marks on a line from min to p99; the `distribution` column says which.", ""]
    if bench_groups:
        out += [_table(("model", "board", "runs", "p50 ms", "p90 ms", "p99 ms", "min ms",
                        "max ms", "inf/s", "distribution"),
                       [[g.label, g.device, str(len(g.bench)),
                         *(_fmt(g.latency(s)) for s in ("p50", "p90", "p99", "min", "max")),
                         _fmt(g.throughput(), 0), g.source] for g in bench_groups],
                       right=("runs", "p50 ms", "p90 ms", "p99 ms", "min ms", "max ms",
                              "inf/s")), ""]
    else:
        out += ["No benchmark results in this selection.", ""]

    joined = [g for g in report.groups if g.bench and g.eval]
    out += ["## Accuracy against latency", ""]
    if "scatter" in plots:
        out += [f"![accuracy against latency]({plots['scatter']})", "",
                "Each point: one model on one board, its eval result against its median p50; "
                "an arrow runs from a float model to the model quantized from it.", ""]
    if joined:
        out += [_table(("model", "board", "top-1", "cosine", "p50 ms", "quantized from"),
                       [[g.label, g.device, _pct(g.accuracy("top1")),
                         _fmt(g.accuracy("cosine")), _fmt(g.latency("p50")),
                         report.names.get(g.parent_sha256, g.parent_sha256[:12])
                         if g.parent_sha256 else "-"] for g in joined],
                       right=("top-1", "cosine", "p50 ms")), ""]
    else:
        out += ["No model in this selection has both an eval and a bench result on the same "
                "board.", ""]

    reps = repeat_rows(records)
    if reps:
        out += ["## Repeated measurements", "",
                f"`bench --repeat`: each repetition a fresh session. Flagged: a repetition "
                f"whose CPU frequency was more than {FREQ_DROP_PCT:g} % below, or temperature "
                f"more than {TEMP_RISE_C:g} degC above, the first repetition's.", "",
                _table(("model", "board", "run", "repetitions", "median p50 ms",
                        "min-max ms", "IQR ms", "flagged"), reps,
                       right=("repetitions", "median p50 ms", "min-max ms", "IQR ms")), ""]

    out += ["## What was measured where", ""]
    boards = _board_rows(records)
    if boards:
        out += [_table(("board", "agent", "hostname", "arch", "CPU", "cores", "OS", "Python",
                        "onnxruntime", "agent version", "providers"), boards,
                       right=("cores",)), ""]
    shas = sorted(report.names, key=lambda s: report.names[s])
    out += [_table(("model", "sha256", "size", "quantized from"),
                   [[report.names[s], s, _kib(report.sizes.get(s)),
                     report.names.get(report.parents[s], report.parents[s][:12])
                     if s in report.parents else "-"] for s in shas], right=("size",)), ""]

    out += ["## The results", ""]
    listed = records[-MAX_LISTED:]
    if len(records) > MAX_LISTED:
        out += [f"The newest {MAX_LISTED} of {len(records)} (`edgetune results export "
                "--format csv` has them all).", ""]
    out += [_table(("id", "created (UTC)", "kind", "model", "board", "label", "options",
                    "p50 ms", "top-1", "board state"),
                   [[r.id, f"{r.created:%Y-%m-%d %H:%M:%S}" if r.created else "-", r.kind,
                     model_label(r), r.device_name or "-", r.label or "", _options(r),
                     _fmt(p50_ms(r)), _pct(metric(r, "top1")), _state(r)] for r in listed],
                   right=("p50 ms", "top-1")), ""]
    return "\n".join(out)
