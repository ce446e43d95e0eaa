"""``edgetune results report``: a folder with report.md and PNG plots, readable without
edgetune (plain Markdown, relative image links, every table inline).

    report = build_report(records, samples, selection="--device board1")
    write_report(report, Path("report"), force=False)

What it holds:

- before / after: each quantized model against its float parent (``parent_sha256``), per board
  that measured both: size, accuracy, latency and throughput, with the change;
- latency per model and board: a table, and ``latency.png`` (box plots of the raw samples
  where the runs kept them, else the stored percentiles, marked as such);
- accuracy against latency: eval and bench records of the same model on the same board
  joined, as a table and ``accuracy_latency.png``;
- repeated measurements (``bench --repeat``) with their spread and flagged repetitions;
- what was measured where: the boards (as their agents described themselves) and the models;
- the results themselves (the first ``MAX_LISTED``).

Here: what goes in (groups, pairs) and writing the folder; the Markdown is
``edgetune.host.results.report_md``, the drawing ``edgetune.host.results.report_plots``
(matplotlib).
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from edgetune.host.errors import UsageError
from edgetune.host.results.records import Record
from edgetune.host.results.view import metric, model_label

MAX_LISTED = 200
REPORT_NAME = "report.md"
LATENCY_PNG = "latency.png"
SCATTER_PNG = "accuracy_latency.png"


def _median(values: Sequence[Optional[float]]) -> Optional[float]:
    data = [v for v in values if v is not None]
    return float(statistics.median(data)) if data else None


@dataclass
class Group:
    """The bench and eval records of one model on one board."""

    sha256: str
    device: str
    label: str                                    # "digits_cnn.onnx (f6f74f1c)"
    parent_sha256: Optional[str] = None
    size_bytes: Optional[int] = None
    bench: List[Record] = field(default_factory=list)
    eval: List[Record] = field(default_factory=list)
    samples: List[float] = field(default_factory=list)   # raw samples of all its bench runs
    sampled_runs: int = 0

    def latency(self, stat: str) -> Optional[float]:
        """The median over its bench runs of each run's ``stat`` (p50, p90, ...)."""
        return _median([_lat(r, stat) for r in self.bench])

    def throughput(self) -> Optional[float]:
        return _median([metric(r, "throughput_ips") for r in self.bench])

    def accuracy(self, name: str) -> Optional[float]:
        """The newest eval's ``name`` (top1, cosine, ...)."""
        values = [metric(r, name) for r in self.eval if metric(r, name) is not None]
        return values[-1] if values else None

    @property
    def source(self) -> str:
        """Where the distribution in the plot comes from."""
        if not self.bench:
            return "-"
        if self.sampled_runs == len(self.bench):
            return f"raw samples ({len(self.samples)})"
        if self.sampled_runs:
            return (f"raw samples of {self.sampled_runs} of {len(self.bench)} runs "
                    f"({len(self.samples)})")
        return "stored percentiles"


def _lat(record: Record, stat: str) -> Optional[float]:
    latency = record.metrics.get("latency_ms")
    value = latency.get(stat) if isinstance(latency, Mapping) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else None


@dataclass
class Report:
    records: List[Record]
    groups: List[Group]                           # model x board, bench and/or eval
    selection: str
    created: _dt.datetime
    sizes: Dict[str, int]                         # model sha256 -> size in bytes
    names: Dict[str, str]                         # model sha256 -> label
    parents: Dict[str, str]                       # quantized sha256 -> float sha256

    def pairs(self) -> List[Tuple[Group, Group]]:
        """(float, quantized) on the same board, both measured there."""
        by_key = {(g.sha256, g.device): g for g in self.groups}
        return [(by_key[(self.parents[g.sha256], g.device)], g) for g in self.groups
                if g.sha256 in self.parents and (self.parents[g.sha256], g.device) in by_key]

    def unpaired_quantized(self) -> List[str]:
        """Quantized models in the report whose parent was measured on no shared board."""
        paired = {q.sha256 for _, q in self.pairs()}
        return [sha for sha in self.parents if sha not in paired]


def build_report(records: Sequence[Record], samples: Mapping[str, Sequence[float]], *,
                 selection: str = "", now: Optional[_dt.datetime] = None) -> Report:
    """The report of ``records`` (oldest first); ``samples``: raw samples by record id."""
    groups: Dict[Tuple[str, str], Group] = {}
    sizes: Dict[str, int] = {}
    names: Dict[str, str] = {}
    parents: Dict[str, str] = {}
    for record in records:
        sha = record.model.sha256
        if record.model.size_bytes:
            sizes[sha] = int(record.model.size_bytes)
        if record.model.name or sha not in names:
            names[sha] = model_label(record)
        if record.model.parent_sha256:
            parents[sha] = record.model.parent_sha256
        if record.kind == "quantize":
            size_in = metric(record, "input_bytes")
            if record.model.parent_sha256 and size_in and record.model.parent_sha256 not in sizes:
                sizes[record.model.parent_sha256] = int(size_in)
            continue
        if record.kind not in ("bench", "eval", "demo"):
            continue
        device = record.device_name or "-"
        group = groups.setdefault((sha, device), Group(sha256=sha, device=device, label=""))
        if "latency_ms" in record.metrics:
            group.bench.append(record)
            kept = samples.get(record.id)
            if kept:
                group.samples.extend(float(v) for v in kept)
                group.sampled_runs += 1
        else:
            group.eval.append(record)
    for group in groups.values():
        group.label = names.get(group.sha256, group.sha256[:12])
        group.size_bytes = sizes.get(group.sha256)
        group.parent_sha256 = parents.get(group.sha256)
    ordered = sorted(groups.values(), key=lambda g: (g.device, g.label))
    return Report(records=list(records), groups=ordered, selection=selection,
                  created=now or _dt.datetime.now(_dt.timezone.utc), sizes=sizes, names=names,
                  parents=parents)


# ---------------------------------------------------------------------- writing

def check_output_dir(directory: Path, force: bool) -> None:
    """Refuse a DIR that exists and is not an empty folder, unless ``force``."""
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"{directory} exists and is not a folder")
    if directory.is_dir() and any(directory.iterdir()) and not force:
        raise UsageError(f"{directory} exists and is not empty",
                         hint="choose another -o DIR, or --force to write the report there "
                              "(replacing report.md and its plots, leaving other files)")


def write_report(report: Report, directory: Path, *, force: bool = False,
                 plots: bool = True) -> List[Path]:
    """Write DIR/report.md and its plots: all made in a temporary folder beside DIR, then
    moved in (a new DIR: one rename; --force: each file replaced atomically, report.md last,
    so it never links to a plot that is not there). Returns the files written."""
    check_output_dir(directory, force)
    directory = directory.absolute()
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=str(directory.parent)))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)       # mkdtemp made it 0700; DIR gets the usual mode
    try:
        made: Dict[str, str] = {}
        if plots:
            from edgetune.host.results import report_plots
            made = report_plots.draw(report, tmp)
        from edgetune.host.results.report_md import render_markdown
        (tmp / REPORT_NAME).write_text(render_markdown(report, made), encoding="utf-8")
        names = [*made.values(), REPORT_NAME]
        if not directory.exists() or not any(directory.iterdir()):
            if directory.exists():
                directory.rmdir()
            os.rename(tmp, directory)
        else:
            for name in names:
                os.replace(tmp / name, directory / name)
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [directory / name for name in names]
