"""Trials in parallel, one at a time per board; resumable; a failing board fails only its trial.

One worker thread per board asks the study for the next trial (under one lock: Optuna's
ask/tell), measures it (``edgetune.host.tune.trials``) and tells the outcome. The study's
budget (``--trials N``) counts finished trials (complete, pruned, infeasible) and running
ones; a trial the board failed is retried (enqueued with the same params: asked next, by
whichever board is free) and does not count. ``--timeout`` stops asking; trials running then
finish.

Resume: a RUNNING trial whose process is gone (the same host and a dead pid, or no
heartbeat for ``STALE_S``) is adopted: it runs again, re-attaching to each job it recorded
(``TrialHandle.jobs``) on the board that ran it, so no finished measurement is repeated.

Ctrl-C: ``stop()``; workers finish the trial they run (recorded), ask no more.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from edgetune.host.errors import EdgetuneError
from edgetune.host.tune.trials import (BoardFailure, ConfigFailure, Measurements, Pruned,
                                       TrialHandle, TuneRecorder, owner_doc, owner_gone,
                                       trial_line)

log = logging.getLogger("edgetune.tune")
STALE_S = 90.0            # no heartbeat for this long: the trial's host is gone
HEARTBEAT_S = 15.0
MAX_OPEN_FAILURES = 4     # a board that cannot be opened this many times in a row leaves
MAX_ATTEMPTS = 3          # a trial the boards failed this many times is given up (counted)


class Scheduler:
    def __init__(self, ctx: Any, measurements: Measurements,
                 say: Callable[[str], None]) -> None:
        self.ctx = ctx
        self.study = ctx.study
        self.m = measurements
        self.say = say
        self.lock = threading.RLock()
        self.stopping = threading.Event()
        self.pending: List[TrialHandle] = []           # adopted or given back, not yet run
        self.running: Dict[int, TrialHandle] = {}
        self.deadline = (time.monotonic() + ctx.settings.timeout_s
                         if ctx.settings.timeout_s else None)
        self.ran = 0
        self.boards_left = 0
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
        spent but other workers still run trials (a failing board may give one back), wait."""
        while True:
            handle, wait = self._next(board)
            if handle is not None or not wait:
                return handle
            if self.stopping.wait(0.25):
                handle, _ = self._next(board)
                return handle

    def _next(self, board: str) -> Tuple[Optional[TrialHandle], bool]:
        with self.lock:
            for i, handle in enumerate(self.pending):       # its jobs' board first
                boards = {j.get("board") for j in handle.jobs.values()}
                if not boards or board in boards or not boards & self.ctx.board_names:
                    self.running[handle.number] = self.pending.pop(i)
                    return handle, False
            if self.stopping.is_set():
                return None, False
            if self.deadline is not None and time.monotonic() > self.deadline:
                if not self.stopping.is_set():
                    self.say("the --timeout is reached: no new trials")
                self.stopping.set()
                return None, False
            if self.used() >= self.ctx.settings.trials:
                return None, bool(self.running)
            trial = self.study.ask()
            params = self.ctx.board_space.suggest(trial, len(self.ctx.ranking))
            trial.set_user_attr("owner", owner_doc())
            handle = TrialHandle(trial, params)
            self.running[handle.number] = handle
            return handle, False

    def give_back(self, handle: TrialHandle) -> None:
        with self.lock:
            self.running.pop(handle.number, None)
            self.pending.append(handle)

    def stop(self) -> None:
        self.stopping.set()

    # ------------------------------------------------------------------ outcomes
    def finish(self, handle: TrialHandle, board: str, outcome: Optional[Dict[str, Any]],
               error: Optional[BaseException]) -> None:
        from optuna.trial import TrialState

        cand = handle.candidate
        trial = handle.trial
        max_drop = self.ctx.settings.max_drop
        with self.lock:
            self.running.pop(handle.number, None)
            if outcome is not None:
                if max_drop is not None:
                    trial.set_constraint("max_drop", outcome["drop"] - max_drop)
                self.study.tell(trial, outcome["values"])
                latency, accuracy = outcome["values"]
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
                self.study.tell(trial, state=TrialState.FAIL)
                if attempt < MAX_ATTEMPTS:
                    self.study.enqueue_trial(handle.params, user_attrs={
                        "retry_of": handle.number, "attempt": attempt + 1,
                        "seed": bool(trial.user_attrs.get("seed"))})
                    self.say(trial_line(handle.number, board, cand,
                                        f"failed on the board, will be retried: {text}"))
                else:
                    self.say(trial_line(handle.number, board, cand,
                                        f"failed on the boards {attempt} times, given up: {text}"))
            self.ran += 1

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

    def work(self, spec: Any) -> None:
        board = None
        lease = None
        recorder = TuneRecorder(self.ctx.store, label=self.ctx.label, run_id=self.ctx.run_id)
        failures = 0
        try:
            while True:
                handle = self.next(spec.name)
                if handle is None:
                    return
                if board is None:
                    try:
                        board, lease = self.ctx.open_board(spec, recorder)
                        failures = 0
                    except (EdgetuneError, OSError, RuntimeError) as exc:
                        self.give_back(handle)
                        failures += 1
                        text = getattr(exc, "message", str(exc))
                        if failures >= MAX_OPEN_FAILURES:
                            self.retired[spec.name] = text
                            self.say(f"board {spec.name} leaves the study: {text}")
                            return
                        self.say(f"board {spec.name} cannot be reached ({text}); "
                                 f"retrying in {2 ** failures} s")
                        if self.stopping.wait(2 ** failures):
                            return
                        continue
                outcome, error = None, None
                try:
                    outcome = self.m.run_trial(board, recorder, handle)
                except (Pruned, ConfigFailure, BoardFailure) as exc:
                    error = exc
                except EdgetuneError as exc:
                    error = BoardFailure(f"{spec.name}: {exc.message}")
                except Exception as exc:  # noqa: BLE001 - a worker must tell every trial
                    log.exception("trial %d on %s", handle.number, spec.name)
                    error = BoardFailure(f"{spec.name}: {type(exc).__name__}: {exc}")
                self.finish(handle, spec.name, outcome, error)
                if isinstance(error, BoardFailure):
                    self.ctx.close_board(board, lease)
                    board, lease = None, None
                    if self.stopping.wait(1.0):
                        return
        finally:
            if board is not None:
                self.ctx.close_board(board, lease)

    def run(self, specs: List[Any]) -> None:
        """Run workers until the budget, the timeout or ``stop()``; Ctrl-C in the caller's
        thread stops asking and waits for the running trials (re-raised after)."""
        beat_done = threading.Event()
        beat = threading.Thread(target=self.heartbeat, args=(beat_done,), daemon=True)
        beat.start()
        # Waiting on Events, not Thread.join: a join interrupted by Ctrl-C marks a live thread
        # stopped (Python 3.11, bpo-45274), and the process would exit under its trial.
        ended = [threading.Event() for _ in specs]

        def work(spec: Any, done: threading.Event) -> None:
            try:
                self.work(spec)
            finally:
                done.set()

        threads = [threading.Thread(target=work, args=(s, e), name=f"tune-{s.name}",
                                    daemon=True) for s, e in zip(specs, ended)]
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
                running = sorted(self.running)
            self.say("interrupted: no new trials; waiting for the running ones "
                     f"({', '.join(map(str, running)) or 'none'}) to finish and be recorded "
                     "(Ctrl-C again leaves them to re-attach on resume)")
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
