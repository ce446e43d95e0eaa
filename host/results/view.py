"""What the results commands show: list rows, a side-by-side comparison with its change
columns, and the CSV / JSON / Markdown exports. Pure functions of records; the commands print.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from edgetune.host.render import json_safe, markdown_table
from edgetune.host.results.compare import change, fixed, latency, metric, ratio_text
from edgetune.host.results.records import Record

LIST_COLUMNS = ("id", "created", "kind", "model", "device", "label", "p50 ms", "top1")


def p50_ms(record: Record) -> Optional[float]:
    return latency(record, "p50")


def _fmt(value: Optional[float], digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def model_label(record: Record) -> str:
    name = record.model.name.replace("\\", "/").rsplit("/", 1)[-1]
    return f"{name} ({record.model.sha256[:8]})" if name else record.model.sha256[:12]


def list_row(record: Record) -> Tuple[str, ...]:
    created = record.created.astimezone().strftime("%Y-%m-%d %H:%M") if record.created else "-"
    # Full ids: several records made in one millisecond share all but the last characters
    # (the ids are monotonic, so they sort in the order they were made).
    return (record.id, created, record.kind, model_label(record),
            record.device_name or "-", record.label or "", _fmt(p50_ms(record), 4),
            _fmt(metric(record, "top1"), 4))


# ---------------------------------------------------------------------- comparison
# The change of B against A is edgetune compare's (``compare.change``), without the rounds'
# interval: stored results measured at different times say nothing about noise.

def _pts_text(value: Optional[float], suffix: str = " pts", digits: int = 4) -> str:
    return fixed(value, digits, suffix, sign=True)


_ROWS: Tuple[Tuple[str, Any, Any], ...] = (
    ("model", lambda r: model_label(r), None),
    ("device", lambda r: r.device_name or "-", None),
    ("kind", lambda r: r.kind, None),
    ("size (KiB)", lambda r: _fmt(None if r.model.size_bytes is None
                                  else r.model.size_bytes / 1024, 1),
     lambda c: ratio_text(c["size_ratio"])),
    ("top-1", lambda r: _fmt(None if metric(r, "top1") is None
                             else 100 * metric(r, "top1"), 2),  # type: ignore[operator]
     lambda c: _pts_text(c["top1_delta_pts"], digits=2)),
    ("top-5", lambda r: _fmt(None if metric(r, "top5") is None
                             else 100 * metric(r, "top5"), 2),  # type: ignore[operator]
     lambda c: _pts_text(c["top5_delta_pts"], digits=2)),
    ("cosine", lambda r: _fmt(metric(r, "cosine"), 4),
     lambda c: _pts_text(c["cosine_delta"], "")),
    ("p50 ms", lambda r: _fmt(p50_ms(r), 4), lambda c: ratio_text(c["latency_p50_ratio"])),
    ("p90 ms", lambda r: _fmt(latency(r, "p90"), 4),
     lambda c: ratio_text(c["latency_p90_ratio"])),
    ("throughput (inf/s)", lambda r: _fmt(metric(r, "throughput_ips"), 0),
     lambda c: ratio_text(c["throughput_ratio"])),
)


def compare_table(records: Sequence[Record]) -> Tuple[List[str], List[List[str]]]:
    """Columns: one per record, then the change of every later record against the first."""
    first = records[0]
    changes = [change(first, other) for other in records[1:]]
    columns = ["", *(r.id for r in records),
               *(f"{r.id} vs {first.id}" if len(records) > 2 else "change"
                 for r in records[1:])]
    rows = []
    for title, cell, delta in _ROWS:
        rows.append([title, *(cell(r) for r in records),
                     *((delta(c) if delta else "") for c in changes)])
    return columns, rows


def compare_json(records: Sequence[Record]) -> Dict[str, Any]:
    first = records[0]
    return {"results": [r.as_json(samples=False) for r in records],
            "changes": [{"a": first.id, "b": r.id, **change(first, r)} for r in records[1:]]}


# ---------------------------------------------------------------------- exports

_SCALARS = frozenset((str, int, float, bool, type(None)))


def _flatten(prefix: str, value: Mapping[str, Any], out: Dict[str, Any]) -> None:
    # Leaves inline and exact type checks first: isinstance against typing's Mapping costs
    # ~1 us a call, and an export of 25,000 records meets 1.5 million values
    # (bench/results_scale.py).
    for key, inner in value.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        kind = type(inner)
        if kind in _SCALARS:
            out[name] = inner
        elif kind is dict or isinstance(inner, Mapping):
            _flatten(name, inner, out)
        elif kind is list or kind is tuple:
            out[name] = json.dumps(json_safe(list(inner)))
        else:
            out[name] = inner


_SHARED = ("options", "device", "host")     # documents that repeat from record to record


def flat_row(record: Record, memo: Optional[Dict[Any, Dict[str, Any]]] = None) -> Dict[str, Any]:
    """A record as one flat dict (``metrics.latency_ms.p50``, ...). ``memo``: flattened
    documents by identity, for an export: records read back share equal documents."""
    doc = record.as_json(samples=False)
    out: Dict[str, Any] = {}
    for key, value in doc.items():
        source = getattr(record, key) if memo is not None and key in _SHARED else None
        if source is not None and value:
            flat = memo.get((key, id(source)))       # type: ignore[union-attr]
            if flat is None:
                flat = {}
                _flatten(key, value, flat)
                memo[(key, id(source))] = flat      # type: ignore[index]
            out.update(flat)
        elif type(value) is dict:
            _flatten(key, value, out)
        else:
            _flatten("", {key: value}, out)
    return out


def export_csv(records: Iterable[Record]) -> str:
    records = list(records)                   # alive while the memo holds their ids
    memo: Dict[Any, Dict[str, Any]] = {}
    rows = [flat_row(r, memo) for r in records]
    seen: Dict[str, None] = {}            # every column, in the order first met
    for row in rows:
        seen.update(dict.fromkeys(row))
    columns = list(seen)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if (v := row.get(c)) is None else v for c in columns])
    return buffer.getvalue()


def export_json(records: Iterable[Record]) -> str:
    doc = {"results": [r.as_json() for r in records]}
    return json.dumps(json_safe(doc), indent=2, allow_nan=False) + "\n"


def export_markdown(records: Iterable[Record]) -> str:
    return markdown_table(LIST_COLUMNS, [list_row(r) for r in records]) + "\n"


EXPORTERS = {"csv": export_csv, "json": export_json, "md": export_markdown}
