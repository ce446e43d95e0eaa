"""What the board commands show: JSON documents, rich tables, and progress on stderr.

It renders the typed results of ``edgetune.host.board`` (``result_record``, the tables); no
other code reads what it builds.

Results go to stdout (a table for people, one JSON document with ``--json``); progress goes to
stderr (a rich bar on a terminal, plain lines otherwise) so a pipe gets clean results.
rich is imported only when something is drawn.
"""

from __future__ import annotations

import json
import math
import sys
import threading
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Optional, Sequence, TextIO,
                    Tuple)

from edgetune.protos.messages import BenchmarkResult, BlobInfo, EvaluateResult, Job, JobEvent

if TYPE_CHECKING:  # pragma: no cover
    from edgetune.host.board import BoardRun

LATENCY_KEYS = ("min", "mean", "std", "p50", "p90", "p95", "p99", "max")


# ---------------------------------------------------------------------- JSON documents

def json_safe(value: Any) -> Any:
    """JSON has no NaN or Infinity: they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def json_text(doc: Dict[str, Any]) -> str:
    return json.dumps(json_safe(doc), indent=2, sort_keys=False, allow_nan=False)


def print_json(doc: Dict[str, Any], file: Optional[TextIO] = None) -> None:
    """One JSON document on stdout."""
    print(json_text(doc), file=file or sys.stdout)


def options_record(spec: Any) -> Dict[str, Any]:
    """A job spec's runtime options as one flat dict (the model and dataset hashes aside)."""
    options = spec.session.as_dict()
    options.update({k: v for k, v in spec.as_dict().items()
                    if k not in ("session", "model_sha256")})
    return options


def result_record(run: "BoardRun", *, samples: bool = False) -> Dict[str, Any]:
    """One entry of ``{"results": [...]}``: a typed benchmark or evaluation result as JSON."""
    record: Dict[str, Any] = {"model": run.model, "sha256": run.model_sha256,
                              "device": run.board.name}
    result = run.result
    if isinstance(result, BenchmarkResult):
        lat = result.latency
        record.update({
            "latency_ms": {k: getattr(lat, f"{k}_ms") for k in LATENCY_KEYS},
            "throughput_ips": result.throughput_ips, "load_ms": result.load_ms,
            "first_run_ms": result.first_run_ms, "peak_rss_mb": result.peak_rss_mb,
            "iterations": result.iterations, "warmup": result.warmup,
            "measured_s": result.measured_s, "providers": list(result.providers),
            "options": options_record(run.options),
            "cpu_freq_mhz": result.cpu_freq_mhz, "temperature_c": result.temperature_c,
            "load_avg": list(result.load_avg) or None,
            # where the optimized graph's nodes ran; null: the agent did not say (older)
            "provider_nodes": dict(result.provider_nodes) or None,
        })
        if result.profile is not None:      # --profile: per-operator times on the board
            from edgetune.host.render_profile import profile_record
            record["profile"] = profile_record(result.profile, lat.p50_ms,
                                               getattr(run, "model_path", None))
        if result.thermal is not None:      # --max-temp: what the agent waited (or could not)
            record["thermal"] = result.thermal.as_dict()
        if samples:
            record["samples_ms"] = list(result.samples_ms)
    elif isinstance(result, EvaluateResult):
        record.update({"dataset_sha256": run.options.dataset_sha256, "samples": result.samples,
                       "metrics": result.metric_dict(), "load_ms": result.load_ms,
                       "elapsed_s": result.elapsed_s, "options": options_record(run.options),
                       "providers": list(result.providers) or None,
                       "provider_nodes": dict(result.provider_nodes) or None})
    else:
        record.update({"state": run.state.value, "error": run.error})
    record["job_id"] = run.job_id
    if run.note:
        record["note"] = run.note
    return record


def job_record(job: Job, model: str, device: str, *, samples: bool = False) -> Dict[str, Any]:
    """``result_record`` of a job's typed result, the board named ``device``."""
    from edgetune.host.board import BoardInfo, run_from_job

    return result_record(run_from_job(job, model, BoardInfo(device, "")), samples=samples)


def _records(runs: Sequence[Any]) -> List[Dict[str, Any]]:
    """Typed results as their JSON records (records pass through)."""
    return [r if isinstance(r, dict) else result_record(r) for r in runs]


def result_entries(runs: Sequence["BoardRun"], *, samples: bool = False,
                   result_id: Optional[Callable[["BoardRun"], Optional[str]]] = None
                   ) -> List[Dict[str, Any]]:
    """The entries of ``{"results": [...]}``: each run's ``result_record`` with the
    ``result_id`` of its record in the results database (null when not recorded)."""
    return [{**result_record(r, samples=samples),
             "result_id": result_id(r) if result_id is not None else None} for r in runs]


def print_results(kind: str, runs: Sequence["BoardRun"], as_json: bool, *,
                  samples: bool = False,
                  result_id: Optional[Callable[["BoardRun"], Optional[str]]] = None,
                  profile_top: int = 10) -> int:
    """Typed results on stdout (a table, or ``{"results": [...]}``, each entry with the
    ``result_id`` of its record in the results database, null when not recorded); failures
    and notes on stderr. Returns how many jobs failed."""
    records = result_entries(runs, samples=samples, result_id=result_id)
    if as_json:
        print_json({"results": records})
    else:
        console = stdout_console()
        console.print(bench_table(runs, console.width) if kind == "benchmark"
                      else eval_table(runs))
        for run, record in zip(runs, records):
            if isinstance(run.result, BenchmarkResult) and run.result.profile is not None:
                from edgetune.host.render_profile import print_profile
                print_profile(console, run.model, run.result.profile, record["profile"],
                              profile_top)
        for run in runs:
            if not run.ok:
                print(f"edgetune: job {run.job_id} ({run.model}) {run.state.value}: {run.error}",
                      file=sys.stderr)
        for run in runs:
            if run.note:
                print(f"edgetune: warning: {run.model}: {run.note}", file=sys.stderr)
    return sum(1 for r in runs if not r.ok)


# ---------------------------------------------------------------------- tables

def stdout_console() -> Any:
    from rich.console import Console

    # Not a terminal: wide enough that a result table is not squeezed into 80 columns.
    return Console(width=None if sys.stdout.isatty() else 200, soft_wrap=False)


def _table(title: Optional[str], columns: Sequence[str], rows: Iterable[Sequence[str]],
           right: Sequence[str] = ()) -> Any:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, justify="right" if column in right else "left",
                         no_wrap=column in right)
    for row in rows:   # cells are plain text (a model named "[x].onnx" is not markup)
        table.add_row(*(cell if isinstance(cell, Text) else Text(str(cell)) for cell in row))
    return table


def _short(model: str) -> str:
    """A model's file name for tables (JSON keeps the path as given)."""
    return model.replace("\\", "/").rsplit("/", 1)[-1] or model


def _failed_row(record: Dict[str, Any], width: int) -> Tuple[Any, ...]:
    """A job without a result: model, device, its state in red, blank cells up to ``width``."""
    from rich.text import Text

    state = Text(record.get("state", "failed"), style="red")
    return (_short(record["model"]), record["device"], state, *([""] * (width - 3)))


def _num(value: Optional[float], digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


BENCH_COLUMNS = (("p50 ms", "p50"), ("mean ms", "mean"), ("std ms", "std"), ("p90 ms", "p90"),
                 ("p99 ms", "p99"), ("min ms", "min"), ("max ms", "max"))
COMPACT_BENCH = ("model", "device", "p50 ms", "p99 ms", "mean ms", "inf/s", "iters")


def bench_table(runs: Sequence[Any], width: int = 200) -> Any:
    """One row per model (typed results); below 150 columns of terminal, only the essential
    columns."""
    records = _records(runs)
    columns = ("model", "device", *(c for c, _ in BENCH_COLUMNS), "inf/s", "load ms", "first ms",
               "RSS MB", "iters")
    rows = []
    for r in records:
        if "latency_ms" not in r:
            rows.append(_failed_row(r, len(columns)))
            continue
        lat = r["latency_ms"]
        rows.append((_short(r["model"]), r["device"], *(_num(lat[k]) for _, k in BENCH_COLUMNS),
                     _num(r["throughput_ips"], 1), _num(r["load_ms"], 1),
                     _num(r["first_run_ms"], 2), _num(r["peak_rss_mb"], 1), str(r["iterations"])))
    if width < 150:
        keep = [columns.index(c) for c in COMPACT_BENCH]
        columns = COMPACT_BENCH
        rows = [tuple(row[i] for i in keep) for row in rows]
    return _table("benchmark", columns, rows, right=columns[2:])


def eval_table(runs: Sequence[Any]) -> Any:
    """One row per model (typed results), a column per metric."""
    records = _records(runs)
    names: List[str] = []
    for r in records:
        names += [k for k in r.get("metrics", {}) if k not in names]
    first = ("top1", "top5", "cosine", "sqnr_db", "max_abs_error")
    names.sort(key=lambda n: (first.index(n) if n in first else len(first), n))
    columns = ("model", "device", "samples", *names)
    rows = []
    for r in records:
        if "metrics" not in r:
            rows.append(_failed_row(r, len(columns)))
            continue
        metrics = r["metrics"]
        rows.append((_short(r["model"]), r["device"], str(r["samples"]),
                     *(_num(metrics.get(n), 4) for n in names)))
    return _table("evaluation", columns, rows, right=columns[2:])


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A Markdown pipe table, padded so it also lines up on a terminal: the first column
    left-aligned, the others right-aligned (``---:``). Paste it into docs as is."""
    cells = [[str(c) for c in columns]] + [[str(c) for c in row] for row in rows]
    widths = [max(3, *(len(row[i]) for row in cells)) for i in range(len(columns))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                 for i, (c, w) in enumerate(zip(row, widths))) + " |"

    rule = "|" + "|".join("-" * (w + 2) if i == 0 else "-" * (w + 1) + ":"
                          for i, w in enumerate(widths)) + "|"
    return "\n".join([line(cells[0]), rule, *(line(row) for row in cells[1:])])


def info_table(info: Dict[str, Any]) -> Any:
    rows = []
    for key, value in info.items():
        if key == "provider_checks":
            value = [f"{c['provider']}: " + ("works" if c["usable"] else f"fails ({c['error']})")
                     for c in value] or ["not checked yet"]
        if key == "runners":
            value = [f"{r['name']} ({'/'.join(r['formats'])})" for r in value] or ["none"]
        if key.endswith("_bytes") and isinstance(value, int):
            value = fmt_bytes(value)
        elif isinstance(value, (list, tuple)):
            value = ", ".join(map(str, value)) or "-"
        elif isinstance(value, float):
            value = f"{value:.1f}"
        rows.append((key, str(value) if value != "" else "-"))
    return _table(None, ("field", "value"), rows)


def blobs_table(kind: str, blobs: Sequence[BlobInfo]) -> Any:
    import datetime

    rows = [(b.sha256[:16], b.name or "-", fmt_bytes(b.size_bytes),
             datetime.datetime.fromtimestamp(b.created_unix).strftime("%Y-%m-%d %H:%M"))
            for b in blobs]
    columns = ("sha256", "name", "size", "stored")
    if any(b.format not in ("", "onnx") for b in blobs):    # opaque models for runner plug-ins
        rows = [(*row, b.format or "-") for row, b in zip(rows, blobs)]
        columns += ("format",)
    return _table(f"{kind}s ({len(blobs)})", columns, rows, right=("size",))


def jobs_table(jobs: Sequence[Job]) -> Any:
    import datetime

    rows = []
    for job in jobs:
        created = datetime.datetime.fromtimestamp(job.created_unix).strftime("%m-%d %H:%M:%S") \
            if job.created_unix else "-"
        took = f"{job.finished_unix - job.started_unix:.1f} s" \
            if job.finished_unix and job.started_unix else "-"
        rows.append((job.id, job.kind, job.state.value, job.spec.model_sha256[:12],
                     job.label or "-", job.client or "-", created, took))
    return _table(f"jobs ({len(jobs)})", ("id", "kind", "state", "model", "label", "client",
                                         "created", "took"), rows)


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


# ---------------------------------------------------------------------- progress

def describe_event(event: JobEvent) -> str:
    """One line for a person: state, queue position, phase, done/total."""
    state = event.state.value
    if state == "queued":
        return f"queued (position {event.queue_position})" if event.queue_position else "queued"
    p = event.progress
    if state == "running" and p is not None and p.phase:
        counts = f" {p.done}/{p.total}" if p.total else ""
        return f"running: {p.phase}{counts}{' - ' + p.message if p.message else ''}"
    return state


class ProgressView:
    """Upload and job progress on stderr. ``mode``: "rich" (a live bar, for a terminal),
    "plain" (a line per change) or "off". ``ProgressView.auto(quiet)`` picks one."""

    def __init__(self, mode: str, stream: Optional[TextIO] = None) -> None:
        self.mode = mode
        self.stream = stream
        self._progress: Any = None
        self._tasks: Dict[str, Any] = {}
        self._last: Dict[str, str] = {}
        self._lock = threading.Lock()

    @classmethod
    def auto(cls, quiet: bool = False) -> "ProgressView":
        if sys.stderr.isatty():
            return cls("rich")
        return cls("off" if quiet else "plain")

    def __enter__(self) -> "ProgressView":
        if self.mode == "rich":
            from rich.console import Console
            from rich.progress import (BarColumn, Progress, SpinnerColumn, TaskProgressColumn,
                                       TextColumn, TimeElapsedColumn)

            self._progress = Progress(
                SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                TaskProgressColumn(), TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                console=Console(file=self.stream or sys.stderr), transient=False)
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def line(self, text: str) -> None:
        if self.mode == "off":
            return
        if self._progress is not None:
            self._progress.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=self.stream or sys.stderr, flush=True)

    def _task(self, key: str, description: str, total: Optional[float]) -> Any:
        from rich.markup import escape

        if key not in self._tasks:
            self._tasks[key] = self._progress.add_task(escape(description), total=total,
                                                       status="")
        return self._tasks[key]

    def upload_callback(self, label: str, size: int) -> Callable[[int, int], None]:
        """A ``progress(done, total)`` for ``AgentClient.upload`` (called from grpc's thread)."""
        if self.mode != "rich":
            self.line(f"checking {label} ({fmt_bytes(size)}) on the board")
            return lambda done, total: None
        task = self._task(f"upload:{label}", f"upload {label}", size)

        def update(done: int, total: int) -> None:
            with self._lock:
                self._progress.update(task, completed=done, total=total,
                                      status=f"{fmt_bytes(done)} of {fmt_bytes(total)}")
        return update

    def upload_done(self, label: str, outcome: Any) -> None:
        if outcome.already_present and outcome.sent_bytes:
            text = (f"{label}: sent {fmt_bytes(outcome.sent_bytes)}, but the board had it "
                    f"already ({outcome.blob.sha256[:12]}): the copy was discarded")
        elif outcome.already_present:
            text = f"{label}: on the board already ({outcome.blob.sha256[:12]}), nothing sent"
        elif outcome.resumed_from:
            text = (f"{label}: resumed at {fmt_bytes(outcome.resumed_from)}, sent "
                    f"{fmt_bytes(outcome.sent_bytes)} ({outcome.blob.sha256[:12]})")
        else:
            text = f"{label}: sent {fmt_bytes(outcome.sent_bytes)} ({outcome.blob.sha256[:12]})"
        if self._progress is not None:
            task = self._tasks.get(f"upload:{label}")
            if task is not None:
                self._progress.update(task, completed=outcome.blob.size_bytes,
                                      total=outcome.blob.size_bytes,
                                      status="present" if outcome.already_present else "sent")
            return
        self.line(text)

    def stage_callback(self, label: str) -> Callable[[str, int, int], None]:
        """A ``progress(stage, done, total)`` for the quantization pipeline: a bar per stage,
        or a line ``"{label}: {stage} {done}/{total}"`` when a stage starts and when it ends."""
        started: set = set()

        def progress(stage: str, done: int, total: int) -> None:
            if self._progress is None:
                first = stage not in started
                started.add(stage)
                if first or (total and done >= total):
                    self.line(f"{label}: {stage} {done}/{total}")
                return
            with self._lock:
                task = self._task(f"stage:{label}:{stage}", f"{label}: {stage}", total or None)
                self._progress.update(task, completed=done, total=total or None,
                                      status="done" if total and done >= total else "")
        return progress

    def job_callback(self, label: str) -> Callable[[JobEvent], None]:
        """An ``on_event`` for ``AgentClient.wait``: the bar, or a line when something changes."""
        from rich.markup import escape

        def on_event(event: JobEvent) -> None:
            text = describe_event(event)
            if self._progress is None:
                # Plain lines: one per queue position, phase or state, not one per tick.
                phase = event.progress.phase if event.progress is not None else ""
                key = f"{event.state.value} {event.queue_position} {phase}"
                if self._last.get(label) != key:
                    self._last[label] = key
                    self.line(f"job {event.job_id} ({label}): {text}")
                return
            with self._lock:
                task = self._task(f"job:{event.job_id}", f"{label} ({event.job_id[:8]})", None)
                p = event.progress
                total = p.total if p is not None and p.total else None
                done = p.done if p is not None else 0
                if event.state.finished:
                    total = total or 1
                    done = total
                self._progress.update(task, completed=done, total=total,
                                      status=escape(text.split(" - ")[0]))
        return on_event


class StageProgress:
    """A ``progress(stage, done, total)`` callback for the quantization pipeline and analysis.

    On a terminal's stderr (and ``enabled``): a rich bar per stage, ``transient`` (erased when
    done) or kept, with an elapsed-time column when ``elapsed``. Otherwise, when ``plain`` is
    given, a line ``"{plain}: {stage} {done}/{total}"`` per stage at 0, 25, 50, 75 and 100 %;
    without ``plain``, nothing.
    """

    def __init__(self, enabled: bool, plain: Optional[str] = None, *, transient: bool = False,
                 elapsed: bool = True) -> None:
        self.rich = enabled and sys.stderr.isatty()
        self.plain = plain
        self.transient = transient
        self.elapsed = elapsed
        self._bar: Any = None
        self._tasks: Dict[str, Any] = {}
        self._last: Dict[str, int] = {}

    def __enter__(self) -> "StageProgress":
        if self.rich:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn)
            columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
            if self.elapsed:
                columns.append(TimeElapsedColumn())
            self._bar = Progress(*columns, console=Console(stderr=True),
                                 transient=self.transient)
            self._bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.stop()

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self._bar is not None:
            if stage not in self._tasks:
                self._tasks[stage] = self._bar.add_task(stage, total=total or None)
            self._bar.update(self._tasks[stage], completed=done, total=total or None)
            return
        if self.plain is None:
            return
        quarter = (4 * done // total) if total else 0
        if self._last.get(stage) != quarter:   # a line per stage at 0, 25, 50, 75, 100 %
            self._last[stage] = quarter
            print(f"{self.plain}: {stage} {done}/{total}", file=sys.stderr, flush=True)


def plain_table(title: Optional[str], columns: Sequence[str], rows: Iterable[Sequence[str]],
                right: Sequence[str] = ()) -> Any:
    """A rich table of plain-text cells; the columns named in ``right`` right-aligned."""
    return _table(title, columns, rows, right)
