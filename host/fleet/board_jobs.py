"""One board's jobs in a fleet run: submit one per model, watch them, collect their results.

    BoardJobs(run, session, device).run(rows)

Rows are submitted in order; a row that already has a job on the board (a resumed run, a
retry) is re-attached while the board still has it queued, running or finished. When the
board refuses a job because its queue is full (the agent's documented back-pressure:
RESOURCE_EXHAUSTED "queue is full ...; retry when the running job has finished"), the row is
not failed: while jobs of this run wait on the board, the oldest is watched to its end (which
frees a place) and the row is submitted again; when none of ours is there (other hosts' jobs
fill the queue), it is tried again every few seconds for up to ``queue_wait_s``, and only then
fails (``busy: the job queue of BOARD stayed full for N s``), with the rows after it; the
jobs already queued still run and are collected.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import Any, Deque, Dict, List, Optional

from edgetune.host.errors import BadInputError, BusyError, NotFoundError
from edgetune.host.fleet import runbook as rb
from edgetune.host.fleet.policy import Cancelled, Restarted
from edgetune.host.fleet.runspec import FileRef
from edgetune.host.fleet.summary import RowResult, row_values
from edgetune.protos.messages import JobState

BUSY_POLL_S = (1.0, 2.0, 4.0, 5.0)        # waits between submissions to a board full of others'


@dataclass
class Row:
    """One board x model while the run goes (owned by the board's worker)."""

    device: str
    model: FileRef
    state: str = rb.PENDING
    job_id: Optional[str] = None
    result_id: Optional[str] = None
    error: str = ""
    attempts: int = 0
    run: Any = None                     # the typed BoardRun once finished
    kind: Optional[Dict[str, str]] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> bool:
        return self.state in rb.FINAL

    def result(self) -> RowResult:
        latency, metrics = row_values(self.run.result if self.run is not None else None)
        return RowResult(device=self.device, model=self.model.display,
                         sha256=self.model.sha256, state=self.state, job_id=self.job_id,
                         result_id=self.result_id, latency_ms=latency, metrics=metrics,
                         error=self.error, kind=self.kind)


class BoardJobs:
    """Submit, watch and collect ``rows`` on one board (``session``) for ``run`` (a
    ``FleetRun``: its spec, settings, progress view, recorder and row bookkeeping)."""

    def __init__(self, run: Any, session: Any, device: str) -> None:
        self.run = run
        self.session = session
        self.device = device
        self.on_board = False           # a job of this run is (or was) on the board

    def run_rows(self, rows: List[Row]) -> None:
        on_board: Deque[Row] = collections.deque()
        todo = [r for r in rows if not r.final]
        for n, row in enumerate(todo):
            if self._reattached(row):
                self.on_board = True
                on_board.append(row)
                continue
            busy_since: Optional[float] = None
            polls = 0
            while True:
                try:
                    if self._submit(row):
                        self.on_board = True
                        on_board.append(row)
                    break
                except BusyError as exc:
                    if not exc.queue_full:
                        raise
                    if on_board:            # our oldest job's end frees a place
                        waited = on_board.popleft()
                        self.run.progress.board(self.device, f"queue full: waiting for "
                                                             f"{waited.model.display} before "
                                                             f"{row.model.display}")
                        self._collect(waited)
                        busy_since, polls = None, 0
                        continue
                    now = time.monotonic()
                    busy_since = now if busy_since is None else busy_since
                    limit = self.run.settings.queue_wait_s
                    if now - busy_since >= limit:
                        self._stays_full(todo[n:], exc, limit)
                        break
                    delay = min(BUSY_POLL_S[min(polls, len(BUSY_POLL_S) - 1)],
                                max(0.1, limit - (now - busy_since)))
                    polls += 1
                    self.run.progress.board(self.device, f"queue full (other jobs); "
                                                         f"submitting again in {delay:.0f} s")
                    if self.run.cancel.wait(delay):
                        raise Cancelled() from None
            if row.final and row.error.startswith("busy:"):
                break                       # the rows after it failed with it
        while on_board:
            self._collect(on_board.popleft())

    # ------------------------------------------------------------------ submitting
    def _reattached(self, row: Row) -> bool:
        """A row with a job id (a resumed run, a retry) keeps its job while the board still
        has it queued, running or succeeded."""
        if row.job_id is None:
            return False
        try:
            job = self.session.get_job(row.job_id)
        except NotFoundError:
            job = None
        if job is not None and job.state in (JobState.QUEUED, JobState.RUNNING,
                                             JobState.SUCCEEDED):
            self.run.progress.board(row.device, f"re-attached {row.model.display} "
                                                f"({job.state.value})")
            return True
        row.job_id = None
        return False

    def _submit(self, row: Row) -> bool:
        """Queue the row's job: True when queued, False when the board refused that job
        (only its row fails). BusyError: the board's queue is full."""
        spec = self.run.spec
        try:
            job, position = self.session.submit(spec.job_spec(row.model),
                                                spec.label or row.model.display)
        except (NotFoundError, BadInputError) as exc:   # this job's input: only its row
            self.run.finish(row, rb.FAILED, f"job refused: {exc.message}")
            return False
        row.job_id = job.id
        row.state = rb.SUBMITTED
        self.run.note(row, state=rb.SUBMITTED, job_id=job.id)
        self.run.progress.board(row.device, f"queued {row.model.display} at position "
                                            f"{position}" if position else
                                f"running {row.model.display}")
        return True

    def _stays_full(self, rows: List[Row], exc: BusyError, waited: float) -> None:
        why = (f"busy: the job queue of {self.device} stayed full for {waited:g} s, with no "
               f"job of this run in it to wait for ({exc.message})")
        for row in rows:
            if not row.final and row.job_id is None:
                self.run.finish(row, rb.FAILED, why)

    # ------------------------------------------------------------------ collecting
    def _collect(self, row: Row) -> None:
        from edgetune.host.render import describe_event

        def on_event(event: Any, name: str = row.model.display) -> None:
            self.run.progress.board(self.device, f"{describe_event(event)}: {name}")

        job = self.session.wait(row.job_id, on_event)
        if job.state is JobState.INTERRUPTED:     # submitted again by a retry
            raise Restarted(f"job {job.id} was interrupted on {self.device} (the agent "
                            "restarted while it ran)")
        result = self.session.result(job, row.model.text, row.model.path)
        row.run = result
        if self.run.recorder is not None:
            row.result_id = self.run.recorder.result_id(result)
        if result.ok:
            self.run.finish(row, rb.DONE, "")
        else:
            self.run.finish(row, rb.FAILED, f"job {job.state.value}: {result.error}")
