"""Trials in parallel, one job at a time per board; resumable; a failing board fails only its
trial.

Each board has one session (and lease) and ``1 + queue_ahead`` slots: threads that each ask
the study for a trial, measure it (``edgetune.host.tune.trials``) and tell the outcome. The
board runs one job at a time (its agent's queue); the second slot keeps the board's next job
queued behind the running one, so asking Optuna, looking up the variant, submitting, recording
the result and telling Optuna happen while the board measures, not between its jobs. Only the
budget check and ``ask`` hold the scheduler's lock; ``tell`` and every other write do not.
The last ``boards`` trials of the budget are not queued ahead: they go to boards that are free,
so that no board waits idle at the end while another still has a trial queued.

The study's budget (``--trials N``) counts finished trials (complete, pruned, infeasible) and
running ones; a trial the board failed is retried (enqueued with the same params: asked next,
by whichever board is free) and does not count. ``--timeout`` stops asking; trials running
then finish (queued-ahead ones too).

Resume: a RUNNING trial whose process is gone (the same host and a dead pid, or no
heartbeat for ``STALE_S``) is adopted: it runs again, re-attaching to each job it recorded
(``TrialHandle.jobs``) on the board that ran it, so no finished measurement is repeated.

Ctrl-C: ``stop()``; a trial that has started measuring (a job of it ran) finishes and is
recorded; a trial whose first job still waits in the board's queue is withdrawn: the job is
cancelled, the trial failed (it does not count) and its configuration enqueued, so the resumed
study runs it first. No slot asks for more.

SIGKILL with a job queued ahead: its id was written to its (RUNNING) trial when the board took
it, so the resumed study adopts the trial and re-attaches to that job, queued or done; a job
the killed host submitted but had not written yet is found on the board by its label.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from edgetune.host.errors import EdgetuneError
from edgetune.host.tune import objective as obj
from edgetune.host.tune.trials import (BoardFailure, ConfigFailure, Measurements, Pruned,
                                       TrialHandle, TuneRecorder, Withdrawn, owner_doc,
                                       owner_gone, trial_line)

log = logging.getLogger("edgetune.tune")
WAIT_S = 2.0              # a waiting slot looks again this often (other hosts' trials)
STALE_S = 90.0            # no heartbeat for this long: the trial's host is gone
HEARTBEAT_S = 15.0
MAX_OPEN_FAILURES = 4     # a board that cannot be opened this many times in a row leaves
MAX_ATTEMPTS = 3          # a trial the boards failed this many times is given up (counted)
BOARD_RETRY_S = 1.0       # after a board failed a trial, its session is opened again this late


class BoardLink:
    """One board's session and lease, shared by its slots. A trial that fails on the board
    retires the session: no new trial uses it, it is closed once its last user is done (a
    sibling slot's job may still be fine), and the next slot opens a new one (after
    ``BOARD_RETRY_S``, then with a back-off). A board that cannot be opened
    ``MAX_OPEN_FAILURES`` times in a row leaves the study."""

    def __init__(self, sched: "Scheduler", spec: Any) -> None:
        self.sched = sched
        self.spec = spec
        self.recorder = TuneRecorder(sched.ctx.store, label=sched.ctx.label,
                                     run_id=sched.ctx.run_id)
        self.lock = threading.Lock()
        self.board: Any = None
        self.lease: Any = None
        self.generation = 0
        self.users: Dict[int, int] = {}
        self.retiring: Dict[int, Tuple[Any, Any]] = {}
        self.failures = 0
        self.retry_at = 0.0
        self.left: Optional[str] = None

    def get(self) -> Optional[Tuple[Any, int]]:
        """(the open session, its generation), counted as used until ``release``; None once
        the board left or the study stops while waiting to open it again."""
        while True:
            with self.lock:
                if self.left is not None:
                    return None
                if self.board is not None:
                    self.users[self.generation] = self.users.get(self.generation, 0) + 1
                    return self.board, self.generation
                wait = max(self.retry_at - time.monotonic(), 0.2 if self.retiring else 0.0)
                if wait <= 0:
                    try:
                        self.board, self.lease = self.sched.ctx.open_board(self.spec,
                                                                           self.recorder)
                    except (EdgetuneError, OSError, RuntimeError) as exc:
                        self.failures += 1
                        text = getattr(exc, "message", str(exc))
                        if self.failures >= MAX_OPEN_FAILURES:
                            self.left = text
                            self.sched.retired[self.spec.name] = text
                            self.sched.say(f"board {self.spec.name} leaves the study: {text}")
                            return None
                        wait = 2.0 ** self.failures
                        self.retry_at = time.monotonic() + wait
                        self.sched.say(f"board {self.spec.name} cannot be reached ({text}); "
                                       f"retrying in {wait:g} s")
                    else:
                        self.failures = 0
                        self.generation += 1
                        self.users[self.generation] = 1
                        return self.board, self.generation
            if self.sched.stopping.wait(wait):
                return None

    def release(self, generation: int, failed: bool) -> None:
        """A slot is done with the session of ``generation``; ``failed``: its trial failed
        on the board (the session is retired)."""
        closing = None
        with self.lock:
            self.users[generation] = self.users.get(generation, 1) - 1
            if failed and generation == self.generation and self.board is not None:
                self.retiring[generation] = (self.board, self.lease)
                self.board, self.lease = None, None
                self.retry_at = time.monotonic() + BOARD_RETRY_S
            if generation in self.retiring and self.users[generation] <= 0:
                closing = self.retiring.pop(generation)
        if closing is not None:
            self.sched.ctx.close_board(*closing)

    def close(self) -> None:
        with self.lock:
            sessions = list(self.retiring.values())
            if self.board is not None:
                sessions.append((self.board, self.lease))
            self.board, self.lease = None, None
            self.retiring.clear()
        for board, lease in sessions:
            self.sched.ctx.close_board(board, lease)


class Scheduler:
    def __init__(self, ctx: Any, measurements: Measurements,
                 say: Callable[[str], None]) -> None:
        self.ctx = ctx
        self.study = ctx.study
        self.m = measurements
        self.say = say
        self.lock = threading.RLock()
        self.changed = threading.Condition()      # a trial ended: waiting slots look again
        self.stopping = threading.Event()         # no new trials (Ctrl-C, --timeout)
        self.on_board: Dict[int, str] = {}        # running trial -> the board it runs on
        self.queue_ahead = max(0, int(getattr(ctx.settings, "queue_ahead", 1)))
        self.pending: List[TrialHandle] = []           # adopted or given back, not yet run
        self.running: Dict[int, TrialHandle] = {}
        self.deadline = (time.monotonic() + ctx.settings.timeout_s
                         if ctx.settings.timeout_s else None)
        self.ran = 0
        self.retired: Dict[str, str] = {}

    # ------------------------------------------------------------------ the budget
    def used(self) -> int:
        from optuna.trial import TrialState

        n = 0
        for t in self.study.get_trials(deepcopy=False):
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING):
                n += 1
            elif t.state == TrialState.FAIL and (t.user_attrs.get("infeasible")
                                                 or t.user_attrs.get("gave_up")):
                n += 1
        return n

    def adopt_stale(self) -> List[TrialHandle]:
        """RUNNING trials whose host is gone: adopted by this process."""
        import optuna
        from optuna.trial import TrialState

        adopted = []
        with self.lock:
            for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if not owner_gone(t.user_attrs.get("owner") or {}, STALE_S):
                    continue
                trial = optuna.trial.Trial(self.study, t._trial_id)
                if "precision" not in t.params:       # killed before its params were chosen
                    trial.set_user_attr("board_error", "the host stopped before the trial began")
                    self.study.tell(trial, state=TrialState.FAIL)
                    continue
                handle = TrialHandle(trial, dict(t.params), dict(t.user_attrs.get("jobs") or {}),
                                     adopted=True)
                trial.set_user_attr("owner", owner_doc())
                adopted.append(handle)
                log.info("trial %d: adopted from a host that stopped (jobs %s)", t.number,
                         handle.jobs or "none yet")
            self.pending.extend(adopted)
        return adopted

    def next(self, board: str) -> Optional[TrialHandle]:
        """The next trial for ``board``; None when there is none left. While the budget is
        spent but other slots still run trials (a failing board may give one back), or while
        this slot may not queue ahead yet, wait (woken when a trial ends)."""
        while True:
            handle, wait = self._next(board)
            if handle is not None or not wait:
                return handle
            with self.changed:
                self.changed.wait(WAIT_S)
            if self.stopping.is_set():
                handle, _ = self._next(board)
                return handle

    def _next(self, board: str) -> Tuple[Optional[TrialHandle], bool]:
        with self.lock:
            for i, handle in enumerate(self.pending):       # its jobs' board first
                boards = {j.get("board") for j in handle.jobs.values()}
                if not boards or board in boards or not boards & self.ctx.board_names:
                    self._take(self.pending.pop(i), board)
                    return handle, False
            if self.stopping.is_set():
                return None, False
            if self.deadline is not None and time.monotonic() > self.deadline:
                if not self.stopping.is_set():
                    self.say("the --timeout is reached: no new trials")
                self.stopping.set()
                return None, False
            left = self.ctx.settings.trials - self.used()
            if left <= 0:
                return None, bool(self.running)
            if board in self.on_board.values() and left <= self.boards_active():
                # A trial queued here would wait behind this board's running one while
                # another board might run out of trials: the last ones go to free boards.
                return None, True
            trial = self.study.ask()
            params = self.ctx.board_space.suggest(trial, len(self.ctx.ranking))
            trial.set_user_attr("owner", owner_doc())
            handle = TrialHandle(trial, params)
            self._take(handle, board)
            return handle, False

    def _take(self, handle: TrialHandle, board: str) -> None:
        self.running[handle.number] = handle
        self.on_board[handle.number] = board

    def boards_active(self) -> int:
        return max(1, len(self.ctx.board_names) - len(self.retired))

    def stop(self) -> None:
        """No new trials; a trial whose first job waits in a board's queue is withdrawn (its
        job cancelled here; its slot tells it and enqueues its configuration)."""
        self.stopping.set()
        self.m.stopping.set()
        with self.changed:
            self.changed.notify_all()
        with self.lock:
            handles = list(self.running.values())
        for handle in handles:
            with handle.lock:
                if handle.started or handle.queued is None:
                    continue
                board, job_id = handle.queued
                handle.withdrawn = True
            try:
                board.cancel(job_id)
                log.info("trial %d: cancelled its queued job %s", handle.number, job_id)
            except Exception as exc:  # noqa: BLE001 - it ran meanwhile: the trial finishes
                log.debug("cancelling job %s of trial %d: %s", job_id, handle.number, exc)

    # ------------------------------------------------------------------ outcomes
    def finish(self, handle: TrialHandle, board: str, outcome: Optional[Dict[str, Any]],
               error: Optional[BaseException]) -> None:
        cand = handle.candidate
        trial = handle.trial
        max_drop = self.ctx.settings.max_drop
        try:
            self._tell(handle, board, cand, trial, max_drop, outcome, error)
        finally:
            self.m.told(handle)
            with self.lock:
                self.running.pop(handle.number, None)
                self.on_board.pop(handle.number, None)
                self.ran += 1
            with self.changed:
                self.changed.notify_all()

    def _tell(self, handle: TrialHandle, board: str, cand: Any, trial: Any,
              max_drop: Optional[float], outcome: Optional[Dict[str, Any]],
              error: Optional[BaseException]) -> None:
        """The outcome told to Optuna and said (outside the scheduler's lock: Optuna's
        storage is safe across threads, and a board's next trial must not wait for it). A
        retry is enqueued before its trial is told FAIL, so that the budget (which counts
        the RUNNING trial, not the WAITING copy) never lets a slot ask past it meanwhile."""
        from optuna.trial import TrialState

        if outcome is not None:
            if max_drop is not None:
                trial.set_constraint("max_drop", outcome["drop"] - max_drop)
            latency, accuracy = outcome["values"]
            self.study.tell(trial, obj.told_values(latency, accuracy, outcome["drop"], max_drop))
            feasible = max_drop is None or outcome["drop"] <= max_drop + 1e-9
            self.ctx.add_point(handle.number, latency, accuracy, feasible,
                               outcome["stage"] == "full")
            what = (f"{self.ctx.objective} {latency:.4g} ms, {self.ctx.metric_title} "
                    f"{100 * accuracy:.2f}% ({outcome['drop']:+.2f} pts)")
            if outcome.get("note"):
                what += f"; {outcome['note']}"
            if outcome["stage"] == "short":
                why = trial.user_attrs.get("early_stop") or "infeasible"
                what += f"; stopped after the short measurement: {why}"
            elif not feasible:
                what += "; over --max-drop"
            self.say(trial_line(handle.number, board, cand, what))
        elif isinstance(error, Pruned):
            self.study.tell(trial, state=TrialState.PRUNED)
            self.say(trial_line(handle.number, board, cand,
                                f"stopped early after the short measurement: {error}"))
        elif isinstance(error, Withdrawn):
            trial.set_user_attr("withdrawn", str(error))
            self.study.enqueue_trial(handle.params, user_attrs={
                "retry_of": handle.number,
                "attempt": int(trial.user_attrs.get("attempt") or 1),
                "seed": bool(trial.user_attrs.get("seed"))})
            self.study.tell(trial, state=TrialState.FAIL)
            self.say(trial_line(handle.number, board, cand,
                                f"withdrawn, nothing measured: {error}; its configuration "
                                "runs first when the study resumes"))
        elif isinstance(error, ConfigFailure):
            trial.set_user_attr("infeasible", str(error))
            self.study.tell(trial, state=TrialState.FAIL)
            self.say(trial_line(handle.number, board, cand,
                                f"infeasible (not retried): {error}"))
        else:
            text = str(error) or type(error).__name__
            attempt = int(trial.user_attrs.get("attempt") or 1)
            trial.set_user_attr("board_error", text)
            if attempt >= MAX_ATTEMPTS:
                trial.set_user_attr("gave_up", True)
            else:
                self.study.enqueue_trial(handle.params, user_attrs={
                    "retry_of": handle.number, "attempt": attempt + 1,
                    "seed": bool(trial.user_attrs.get("seed"))})
            self.study.tell(trial, state=TrialState.FAIL)
            if attempt < MAX_ATTEMPTS:
                self.say(trial_line(handle.number, board, cand,
                                    f"failed on the board, will be retried: {text}"))
            else:
                self.say(trial_line(handle.number, board, cand,
                                    f"failed on the boards {attempt} times, given up: {text}"))

    # ------------------------------------------------------------------ workers
    def heartbeat(self, done: threading.Event) -> None:
        while not done.wait(HEARTBEAT_S):
            with self.lock:
                handles = list(self.running.values())
            for handle in handles:
                try:
                    handle.set("owner", owner_doc())
                except Exception as exc:  # noqa: BLE001 - the next beat tries again
                    log.debug("heartbeat of trial %d: %s", handle.number, exc)

    def slot(self, link: BoardLink) -> None:
        """One slot of a board: trial after trial until none is left or the board leaves."""
        name = link.spec.name
        while True:
            got = link.get()
            if got is None:
                return
            board, generation = got
            error: Optional[BaseException] = None
            try:
                handle = self.next(name)
                if handle is None:
                    return
                outcome = None
                try:
                    outcome = self.m.run_trial(board, link.recorder, handle)
                except (Pruned, ConfigFailure, BoardFailure, Withdrawn) as exc:
                    error = exc
                except EdgetuneError as exc:
                    error = BoardFailure(f"{name}: {exc.message}")
                except Exception as exc:  # noqa: BLE001 - a slot must tell every trial
                    log.exception("trial %d on %s", handle.number, name)
                    error = BoardFailure(f"{name}: {type(exc).__name__}: {exc}")
                self.finish(handle, name, outcome, error)
            finally:
                link.release(generation, isinstance(error, BoardFailure))

    def run(self, specs: List[Any]) -> None:
        """Run workers until the budget, the timeout or ``stop()``; Ctrl-C in the caller's
        thread stops asking and waits for the running trials (re-raised after)."""
        beat_done = threading.Event()
        beat = threading.Thread(target=self.heartbeat, args=(beat_done,), daemon=True)
        beat.start()
        # Waiting on Events, not Thread.join: a join interrupted by Ctrl-C marks a live thread
        # stopped (Python 3.11, bpo-45274), and the process would exit under its trial.
        links = [BoardLink(self, spec) for spec in specs]
        slots = [(link, k) for link in links for k in range(1 + self.queue_ahead)]
        ended = [threading.Event() for _ in slots]
        left = {link.spec.name: 1 + self.queue_ahead for link in links}

        def work(link: BoardLink, done: threading.Event) -> None:
            try:
                self.slot(link)
            finally:
                with self.lock:
                    left[link.spec.name] -= 1
                    last = left[link.spec.name] == 0
                if last:                        # the board's last slot closes its session
                    try:
                        link.close()
                    except Exception as exc:  # noqa: BLE001
                        log.debug("closing %s: %s", link.spec.name, exc)
                done.set()

        threads = [threading.Thread(target=work, args=(link, e),
                                    name=f"tune-{link.spec.name}-{k}", daemon=True)
                   for (link, k), e in zip(slots, ended)]
        for t in threads:
            t.start()
        interrupted = False

        def wait_all() -> None:
            while not all(e.is_set() for e in ended):
                next(e for e in ended if not e.is_set()).wait(0.2)

        try:
            wait_all()
        except KeyboardInterrupt:
            interrupted = True
            self.stop()
            with self.lock:
                handles = sorted(self.running.values(), key=lambda h: h.number)
            running = [h.number for h in handles if not h.withdrawn]
            withdrawn = [h.number for h in handles if h.withdrawn]
            self.say("interrupted: no new trials; waiting for the running ones "
                     f"({', '.join(map(str, running)) or 'none'}) to finish and be recorded "
                     "(Ctrl-C again leaves them to re-attach on resume)"
                     + (f"; queued, not started, withdrawn (their jobs cancelled; they run "
                        f"first on resume): {', '.join(map(str, withdrawn))}"
                        if withdrawn else ""))
            try:
                wait_all()
            except KeyboardInterrupt:
                self.say("interrupted again: the running trials stay RUNNING in the study and "
                         "re-attach to their board jobs on resume")
                raise
        finally:
            beat_done.set()
            self._release_pending()
        if interrupted:
            raise KeyboardInterrupt

    def _release_pending(self) -> None:
        """Trials asked or adopted but never run (their boards left): failed, retried later."""
        from optuna.trial import TrialState

        with self.lock:
            for handle in self.pending:
                handle.set("board_error", "no board was left to run it")
                self.study.tell(handle.trial, state=TrialState.FAIL)
                self.study.enqueue_trial(handle.params, user_attrs={"retry_of": handle.number})
            self.pending.clear()
