"""A fleet run: the same models measured on many boards at once, one row per board x model.

    run = FleetRun(run_id, spec, devices, identity, FleetSettings(), book=book,
                   recorder=recorder, progress=progress)
    rows = run.execute()              # a RowResult per board x model; KeyboardInterrupt on Ctrl-C

Each board gets its own ``BoardSession`` (the one path to a board) and its own worker thread,
which connects, uploads what the board lacks (every file hashed once, by the caller, and read
once for the boards uploading it together: ``fanout.SharedFile``; uploads bounded by
``upload_parallel`` across the fleet), submits one job per model and watches them
(``board_jobs``: a full queue is waited out, not failed).
A board's failure ends only that board's rows, with the reason; unreachable boards, lost
connections, timeouts and jobs interrupted by an agent restart are retried ``retries`` times,
with a doubling back-off.

Why threads and not grpc.aio: the synchronous ``AgentClient`` and ``BoardSession`` already
hold the upload (resume, dedup, bounded deadlines), the watch (re-attach) and the error
translation, and the board session is the only code allowed to upload, submit and wait; an
asyncio client would be a second copy of all of it. A board's worker spends its life blocked in
grpc's C core (a watch stream), which costs a thread's stack and no CPU, so a hundred boards
are a hundred mostly idle threads (``parallel`` caps them). The main thread never enters grpc:
it waits on the workers' futures with a short timeout, so Ctrl-C lands in it at once; it then
sets the cancel flag and closes every board's channel, which ends every call in flight (grpc
cancels active RPCs on close), and the workers record their rows as interrupted with their job
ids, for ``--resume``. Every call keeps its own deadline (``ClientSettings``).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
import threading
from typing import Any, Dict, List, Optional, Sequence

from edgetune.host.errors import AuthError, EdgetuneError, UnreachableError
from edgetune.host.fleet import runbook as rb
from edgetune.host.fleet.board_jobs import BoardJobs, Row
from edgetune.host.fleet.policy import (TRANSIENT, Cancelled, FleetSettings, Restarted,
                                        backoff_delays, reason)
from edgetune.host.fleet.runspec import FileRef, FleetRunSpec, unique
from edgetune.host.fleet.summary import RowResult, board_kind
from edgetune.protos.messages import BlobKind

log = logging.getLogger(__name__)


class FleetRun:
    """One fleet run over ``devices`` (inventory ``Device``s). ``rows``: what a resumed run
    had (``RowState``s); rows that were done are kept, the others run again (a job still on
    its board is re-attached). ``book``: a ``RunBook`` (None: nothing is kept);
    ``quarantine``: a ``QuarantineBook`` told each job's outcome (None: not kept)."""

    def __init__(self, run_id: str, spec: FleetRunSpec, devices: Sequence[Any], identity: Any,
                 settings: FleetSettings, *, book: Optional[rb.RunBook] = None,
                 recorder: Any = None, quarantine: Any = None, progress: Any = None,
                 rows: Sequence[Any] = ()) -> None:
        from edgetune.host.fleet.progress import NoProgress
        from edgetune.host.fleet.runbook import LockedRecorder

        self.run_id = run_id
        self.spec = spec
        self.devices = list(devices)
        self.identity = identity
        self.settings = settings
        self.book = book
        self.recorder = LockedRecorder(recorder) if recorder is not None else None
        self.quarantine = quarantine
        self.progress = progress or NoProgress()
        self.cancel = threading.Event()
        self._upload_slots = threading.Semaphore(settings.upload_parallel)
        self._files: Dict[str, Any] = {}     # sha256 -> the SharedFile its uploads read
        self._sessions: Dict[str, Any] = {}
        self._warned: set = set()
        self._held: Dict[str, Any] = {}      # board -> the HeldLease of its lease block
        self._lock = threading.Lock()
        before = {(r.device, r.model_sha256): r for r in rows}
        self.rows: Dict[str, List[Row]] = {}
        for device in self.devices:
            board_rows = []
            for model in spec.models:
                old = before.get((device.name, model.sha256))
                row = Row(device.name, model)
                if old is not None:
                    row.state = rb.DONE if old.state == rb.DONE else rb.PENDING
                    row.job_id, row.result_id = old.job_id, old.result_id
                    row.error, row.attempts = (old.error, old.attempts) if row.final else ("", 0)
                board_rows.append(row)
            self.rows[device.name] = board_rows

    # ------------------------------------------------------------------ the main thread
    def execute(self) -> List[RowResult]:
        """Run every board; the rows in device then model order. On Ctrl-C: the boards'
        calls are cancelled, their rows kept as interrupted, and KeyboardInterrupt raised."""
        todo = [d for d in self.devices if any(not r.final for r in self.rows[d.name])]
        pool = cf.ThreadPoolExecutor(max_workers=max(1, min(self.settings.parallel, len(todo))),
                                     thread_name_prefix="edgetune-fleet")
        futures = [pool.submit(self._board, device) for device in todo]
        try:
            pending = set(futures)
            while pending:
                _, pending = cf.wait(pending, timeout=0.2)
        except KeyboardInterrupt:
            self.cancel.set()
            with self._lock:
                sessions = list(self._sessions.values())
            for session in sessions:
                _close_quietly(session)
            pool.shutdown(wait=False, cancel_futures=True)
            cf.wait(futures, timeout=15)
            raise
        finally:
            pool.shutdown(wait=False)
            for shared in self._files.values():
                shared.close()
        for future in futures:
            future.result()             # a bug in a worker is not swallowed
        return self.results()

    def results(self) -> List[RowResult]:
        return [row.result() for d in self.devices for row in self.rows[d.name]]

    # ------------------------------------------------------------------ one board
    def _board(self, device: Any) -> None:
        rows = [r for r in self.rows[device.name] if not r.final]
        attempt = 0
        session = None
        lost: Optional[BaseException] = None    # how the board was lost while jobs ran on it
        try:
            while not self.cancel.is_set():
                jobs = BoardJobs(self, None, device.name)
                try:
                    if session is None:
                        session = self._open(device)
                    self.progress.board(device.name, "connecting")
                    agent = session.board.agent
                    self._check_name(device.name, agent)
                    kind = board_kind(agent)
                    for row in rows:
                        row.kind = kind
                    self._upload(session, device.name, rows)
                    with self._lease(session) as held:  # no other host's jobs in between
                        self._held[device.name] = held
                        jobs.session = session
                        jobs.run_rows(rows)
                    self._note_quarantine(device.name, rows)
                    return
                except Exception as exc:  # noqa: BLE001 - every failure ends in a row's reason
                    if self.cancel.is_set():
                        break
                    if jobs.on_board and isinstance(exc, UnreachableError) and \
                            not isinstance(exc, Restarted):
                        lost = exc
                    why = reason(lost or exc, mid_run=lost is not None)
                    if isinstance(exc, TRANSIENT) and attempt < self.settings.retries:
                        attempt += 1
                        delay = min(self.settings.backoff_max_s,
                                    self.settings.backoff_s * 2 ** (attempt - 1))
                        log.info("%s: %s; retry %d in %.1f s", device.name, why, attempt, delay)
                        self.progress.board(device.name, f"retry {attempt} in {delay:.0f} s "
                                                         f"({why.split(':')[0]})")
                        _close_quietly(session)
                        session = None
                        self.cancel.wait(delay)
                        continue
                    if lost is not None and exc is not lost:
                        why += f" (then, retrying: {reason(exc, mid_run=False)})"
                    for row in rows:
                        if not row.final:
                            self.finish(row, rb.FAILED, why, attempts=attempt + 1)
                    self._note_quarantine(device.name, rows)
                    return
            self._interrupted(rows)
            self._release_after_cancel(device)
        finally:
            with self._lock:
                self._sessions.pop(device.name, None)
            _close_quietly(session)

    def _release_after_cancel(self, device: Any) -> None:
        """After Ctrl-C the board's channel is closed, so its lease could not be released on
        the way out: release it over a short-lived connection of its own (best effort; it
        expires by itself otherwise)."""
        from edgetune.host.client import AgentClient, ClientSettings

        held = self._held.pop(device.name, None)
        if held is None or not getattr(held, "supported", False) or not held.lease_id:
            return
        settings = ClientSettings(timeout_s=3.0, connect_timeout_s=2.0, cert_warning_days=-1)
        try:
            with AgentClient(device.address, self.identity, server_name=device.server_name,
                             settings=settings) as client:
                client.release_lease(held.lease_id, timeout=3.0)
        except Exception as exc:  # noqa: BLE001 - the lease expires by itself
            log.warning("could not release the lease on %s after Ctrl-C (%s); it ends by "
                        "itself", device.name, exc)

    def _check_name(self, device: str, agent: Any) -> None:
        """A board whose certificate names another board (the inventory's address is wrong?):
        a warning, or with ``strict`` its rows refused."""
        from edgetune.host.fleet.check import cn_warning

        warning = cn_warning(device, getattr(agent, "agent_name", "") or "")
        if warning and self.settings.strict:
            raise AuthError(f"{warning} (--strict)")
        if warning and device not in self._warned:
            self._warned.add(device)
            self.progress.note(f"warning: {device}: {warning}")

    def _open(self, device: Any) -> Any:
        from edgetune.host.board import BoardSession
        from edgetune.host.client import AgentClient
        from edgetune.host.fleet.progress import BoardView

        client = AgentClient(device.address, self.identity, server_name=device.server_name,
                             settings=self.settings.client_settings())
        session = BoardSession(client, device.name, recorder=self.recorder,
                               view=BoardView(self.progress, device.name))
        with self._lock:
            self._sessions[device.name] = session
        if self.cancel.is_set():            # Ctrl-C came while it opened
            _close_quietly(session)
        return session

    def _lease(self, session: Any) -> Any:
        """The board's lease while its jobs are submitted and measured (an agent older than
        leases: a warning, and the jobs run unprotected); none with ``lease_ttl_s`` 0."""
        if self.settings.lease_ttl_s > 0:
            return session.lease(self.settings.lease_ttl_s, required=False)
        return contextlib.nullcontext()

    def _upload(self, session: Any, device: str, rows: List[Row]) -> None:
        needed = [r.model for r in rows if not r.final and r.job_id is None]
        files = [(f, BlobKind.MODEL) for f in unique(needed) if f.path is not None]
        if self.spec.dataset is not None and self.spec.dataset.path is not None and needed:
            files.insert(0, (self.spec.dataset, BlobKind.DATASET))
        for ref, kind in files:
            with self._upload_slots:
                if self.cancel.is_set():
                    raise Cancelled()
                session.upload(ref.path, kind, sha256=ref.sha256,
                               chunks=self.shared_file(ref).chunks)

    def shared_file(self, ref: FileRef) -> Any:
        """The one reader of ``ref``'s file that every board's upload of it draws from."""
        from edgetune.host.fleet.fanout import SharedFile

        with self._lock:
            shared = self._files.get(ref.sha256)
            if shared is None:
                chunk = self.settings.client_settings().upload_chunk_bytes
                shared = SharedFile(ref.path, ref.size if ref.size is not None
                                    else ref.path.stat().st_size, chunk_bytes=chunk,
                                    window_chunks=self.settings.window_chunks)
                self._files[ref.sha256] = shared
            return shared

    def files_read(self) -> Dict[str, int]:
        """sha256 -> bytes read from that file for the uploads so far (over every board)."""
        with self._lock:
            return {sha: f.bytes_read for sha, f in self._files.items()}

    # ------------------------------------------------------------------ row outcomes
    def finish(self, row: Row, state: str, error: str, attempts: int = 0) -> None:
        """End ``row`` as ``state`` (with ``error``): kept, and shown."""
        row.state, row.error = state, error
        row.attempts = max(row.attempts, attempts)
        self.note(row, state=state, error=error, result_id=row.result_id,
                   job_id=row.job_id, attempts=row.attempts)
        self.progress.finished(row.result())

    def _note_quarantine(self, device: str, rows: List[Row]) -> None:
        """Tell the quarantine how the board's jobs of this run went (once per board: a
        success resets its count of failures in a row, a failure adds one)."""
        if self.quarantine is None:
            return
        failed = [r for r in rows if r.state != rb.DONE]
        try:
            entry = self.quarantine.note_job(device, ok=not failed,
                                             reason=failed[0].error if failed else "",
                                             run_id=self.run_id)
        except Exception as exc:  # noqa: BLE001 - the quarantine must not fail the run
            log.warning("could not note %s's jobs in the quarantine: %s", device, exc)
            return
        if entry is not None:
            self.progress.note(f"{device} is now quarantined: {entry.reason}")

    def _interrupted(self, rows: List[Row]) -> None:
        for row in rows:
            if not row.final:
                row.state = rb.INTERRUPTED if row.job_id else rb.PENDING
                row.error = ("interrupted; the job stays on the board" if row.job_id
                             else "interrupted before it was submitted")
                self.note(row, state=row.state, error=row.error, job_id=row.job_id)

    def note(self, row: Row, **values: Any) -> None:
        """Keep ``values`` of ``row`` in the run's book (the results database)."""
        if self.book is None:
            return
        try:
            self.book.update(self.run_id, row.device, row.model.sha256, **values)
        except EdgetuneError as exc:
            log.warning("could not keep %s/%s in the results database: %s", row.device,
                        row.model.display, exc)


def _close_quietly(session: Any) -> None:
    if session is None:
        return
    try:
        session.close()
    except Exception as exc:  # noqa: BLE001 - closing is best effort
        log.debug("closing a board session: %s", exc)


__all__ = ["FleetRun", "FleetSettings", "Restarted", "Row", "backoff_delays", "reason"]
