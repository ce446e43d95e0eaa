"""What a fleet run shows while it runs.

On a terminal (stdout is one): a live view, one line per board (connecting, uploading x.onnx
40%, queued at position n, running, done, failed: why), redrawn a few times a second. Otherwise
quiet: one plain line on stderr per finished row (``fleet: board1 model.onnx: done p50 1.234 ms``
or ``...: failed: unreachable: ...``), so that a log or a pipe stays readable and stdout holds
only the result. Every method may be called from any board's thread.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, Dict, Optional, Sequence, TextIO


class NoProgress:
    def __enter__(self) -> "NoProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def board(self, device: str, status: str) -> None:
        pass

    def finished(self, row: Any) -> None:
        pass

    def note(self, text: str) -> None:
        pass


class PlainProgress(NoProgress):
    """A line per finished row, and notes, on ``stream`` (stderr)."""

    def __init__(self, stream: Optional[TextIO] = None) -> None:
        self.stream = stream
        self._lock = threading.Lock()

    def _line(self, text: str) -> None:
        with self._lock:
            print(f"fleet: {text}", file=self.stream or sys.stderr, flush=True)

    def finished(self, row: Any) -> None:
        if row.state == "done":
            value = (f"p50 {row.latency_ms:.3f} ms" if row.latency_ms is not None else
                     " ".join(f"{k}={v:.4g}" for k, v in (row.metrics or {}).items()
                              if isinstance(v, float)))
            self._line(f"{row.device} {row.model}: done {value}".rstrip())
        else:
            self._line(f"{row.device} {row.model}: {row.state}: {row.error}")

    def note(self, text: str) -> None:
        self._line(text)


class LiveProgress(NoProgress):
    """rich's Live display: a table of boards and what each is doing."""

    def __init__(self, devices: Sequence[str], console: Any = None) -> None:
        self.devices = list(devices)
        self.console = console
        self.status: Dict[str, str] = {d: "waiting" for d in devices}
        self.since: Dict[str, float] = {d: time.monotonic() for d in devices}
        self.notes: list = []
        self._live: Any = None
        self._lock = threading.Lock()

    def __enter__(self) -> "LiveProgress":
        from rich.console import Console
        from rich.live import Live

        self._live = Live(get_renderable=self._render, console=self.console or Console(),
                          refresh_per_second=4, transient=True)
        self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
        for note in self.notes:             # the live view is gone: the notes stay
            print(f"edgetune: {note}", file=sys.stderr)

    def _render(self) -> Any:
        from rich.table import Table
        from rich.text import Text

        table = Table(box=None, show_header=False, pad_edge=False)
        table.add_column("board", style="bold")
        table.add_column("status")
        table.add_column("for", justify="right", style="dim")
        now = time.monotonic()
        with self._lock:
            for device in self.devices:
                status = self.status[device]
                style = ("green" if status.startswith("done") else
                         "red" if status.startswith("failed") else "")
                table.add_row(device, Text(status, style=style),
                              f"{now - self.since[device]:.0f} s")
            for note in self.notes[-5:]:
                table.add_row("", Text(note, style="yellow"), "")
        return table

    def board(self, device: str, status: str) -> None:
        with self._lock:
            if self.status.get(device) != status:
                self.status[device] = status
                self.since[device] = time.monotonic()

    def finished(self, row: Any) -> None:
        text = (f"done {row.model}" + (f" p50 {row.latency_ms:.3f} ms"
                                       if row.latency_ms is not None else "")
                if row.state == "done" else f"{row.state} {row.model}: {row.error}")
        self.board(row.device, text)

    def note(self, text: str) -> None:
        with self._lock:
            self.notes.append(text)


class BoardView:
    """The ``BoardSession`` progress view of one board: upload progress to the fleet's."""

    def __init__(self, progress: Any, device: str) -> None:
        self.progress = progress
        self.device = device

    def upload_callback(self, label: str, size: int) -> Any:
        def update(done: int, total: int) -> None:
            percent = f" {100 * done // total}%" if total else ""
            self.progress.board(self.device, f"uploading {label}{percent}")
        return update

    def upload_done(self, label: str, outcome: Any) -> None:
        self.progress.board(self.device, f"{label} on the board"
                            if outcome.already_present else f"uploaded {label}")

    def job_callback(self, label: str) -> Any:
        return lambda event: None

    def __exit__(self, *exc: object) -> None:
        pass


def auto(devices: Sequence[str], *, as_json: bool) -> NoProgress:
    """The live view when stdout is a terminal (and no --json), else the quiet lines."""
    if not as_json and sys.stdout.isatty():
        return LiveProgress(devices)
    return PlainProgress()
