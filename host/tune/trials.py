"""One trial on one board: the variant (made once, cached), its accuracy (evaluated once per
variant and provider, on the board), a short latency measurement, and the full one only when
the trial can still reach the front. Every measurement is a board job through the board
session, recorded in the results store with the study's run id and the trial's number,
study and params in its options.

Each job's id is written to the trial (Optuna user attribute ``jobs``) as soon as the board
accepted it (the recorder's ``submitted`` hook), so a host killed mid-trial re-attaches to that
job when the study resumes instead of measuring again.

Pipelining: a board's slots (``edgetune.host.tune.scheduler``) run two trials at once, so
that the next trial's job waits in the board's queue while the current one measures; the board
still runs one job at a time. Sending a model or dataset the board lacks waits until no latency
measurement is queued or running there (``BoardGate``): an upload beside a measurement would
take the board's CPU from it.

Failures: a job the board FAILED (the configuration cannot run: a provider that cannot load
the model, ...) or options the quantizer refuses make the trial infeasible, with its error,
never retried; a board that cannot be reached, an agent restarted under a job, a job
interrupted or cancelled raise ``BoardFailure`` (the scheduler retries the trial). A trial
whose first job had not started when the study was stopped (Ctrl-C) raises ``Withdrawn``: its
queued job is cancelled and its configuration is queued for the resume.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

from edgetune.host.errors import (AgentError, BadInputError, EdgetuneError, NotFoundError,
                                  TimeoutError_, UnreachableError)
from edgetune.host.results.recording import StoreRecorder
from edgetune.host.tune import objective as obj
from edgetune.host.tune.space import CPU, Candidate, candidate, with_shapes
from edgetune.host.tune.variants import Variant
from edgetune.protos.messages import BenchmarkSpec, BlobKind, EvaluateSpec, JobState

log = logging.getLogger("edgetune.tune")
HOST = socket.gethostname()


class BoardFailure(Exception):
    """The board, not the configuration, failed this trial: retry it."""


class ConfigFailure(Exception):
    """The configuration cannot run: the trial is infeasible (not retried)."""


class Pruned(Exception):
    """Stopped after the short measurement (``reason`` says why)."""


class Withdrawn(Exception):
    """The study stopped before any job of this trial ran: nothing was measured; its queued
    job was cancelled and its configuration is run again on resume."""


class TuneRecorder(StoreRecorder):
    """The results store's recorder, telling the running trial each job id it submits. The
    hook is per thread: a board's slots share its session and this recorder."""

    def __init__(self, store: Any, **kwargs: Any) -> None:
        super().__init__(store, **kwargs)
        self._hook = threading.local()

    @property
    def on_submit(self) -> Optional[Callable[[str, str], None]]:
        return getattr(self._hook, "fn", None)

    @on_submit.setter
    def on_submit(self, fn: Optional[Callable[[str, str], None]]) -> None:
        self._hook.fn = fn

    def submitted(self, board: str, job_id: str) -> None:
        super().submitted(board, job_id)
        hook = self.on_submit
        if hook is not None:
            hook(board, job_id)


class BoardGate:
    """What may overlap on one board. Jobs may queue behind the running one (the board runs
    them one at a time); sending a model or dataset waits until no latency measurement is
    queued or running there and holds new ones back meanwhile. Evaluations are not timed:
    they may overlap an upload. ``quiet_uploads`` False: uploads overlap measurements too
    (one upload at a time), for boards whose measurements an upload does not disturb."""

    def __init__(self, quiet_uploads: bool = True) -> None:
        self.quiet_uploads = quiet_uploads
        self._cond = threading.Condition()
        self._timed = 0
        self._uploading = False
        self._waiting = 0

    @contextlib.contextmanager
    def job(self, timed: bool) -> Iterator[None]:
        if not timed or not self.quiet_uploads:
            yield
            return
        with self._cond:
            while self._uploading or self._waiting:
                self._cond.wait()
            self._timed += 1
        try:
            yield
        finally:
            with self._cond:
                self._timed -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def upload(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            try:
                while self._timed or self._uploading:
                    self._cond.wait()
            finally:
                self._waiting -= 1
            self._uploading = True
        try:
            yield
        finally:
            with self._cond:
                self._uploading = False
                self._cond.notify_all()


@dataclass
class TrialHandle:
    """An Optuna trial this process runs: asked now, or adopted from a host that died."""

    trial: Any                               # optuna.trial.Trial
    params: Dict[str, Any]
    jobs: Dict[str, Dict[str, str]] = field(default_factory=dict)
    adopted: bool = False
    # Whether a job of the trial has run (then Ctrl-C lets the trial finish), else the job
    # waiting in the board's queue (board session, job id) that Ctrl-C cancels; under ``lock``.
    started: bool = False
    queued: Optional[Tuple[Any, str]] = None
    withdrawn: bool = False
    lock: Any = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def number(self) -> int:
        return int(self.trial.number)

    @property
    def candidate(self) -> Candidate:
        return candidate(self.params)

    def set(self, key: str, value: Any) -> None:
        self.trial.set_user_attr(key, value)


def owner_doc() -> Dict[str, Any]:
    return {"host": HOST, "pid": os.getpid(), "heartbeat": time.time()}


def owner_gone(owner: Dict[str, Any], stale_s: float) -> bool:
    """The process that ran a RUNNING trial is gone: same host and its pid is dead, or no
    heartbeat for ``stale_s``."""
    if not owner:
        return True
    if owner.get("host") == HOST:
        pid = int(owner.get("pid") or 0)
        if pid == os.getpid():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return time.time() - float(owner.get("heartbeat") or 0) > stale_s
    return time.time() - float(owner.get("heartbeat") or 0) > stale_s


class Measurements:
    """What every worker shares: the study context, the variant cache, the accuracy cache."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self._lock = threading.Lock()
        self._key_locks: Dict[Tuple[str, str], threading.Lock] = {}
        self.accuracy: Dict[Tuple[str, str], Dict[str, Any]] = dict(ctx.known_accuracy)
        self.stopping = threading.Event()        # set by the scheduler at Ctrl-C
        self._gates: Dict[str, BoardGate] = {}
        self._sha: Dict[Path, str] = {}
        # configurations being measured by a trial of this process -> (its number, set when
        # that trial was told): a trial proposing one waits and reuses its measurement
        self._measuring: Dict[Tuple[Tuple[str, Any], ...], Tuple[int, threading.Event]] = {}

    def gate(self, board_name: str) -> BoardGate:
        with self._lock:
            if board_name not in self._gates:
                self._gates[board_name] = BoardGate(
                    bool(getattr(self.ctx.settings, "quiet_uploads", True)))
            return self._gates[board_name]

    # ------------------------------------------------------------------ pieces
    def variant(self, cand: Candidate) -> Variant:
        if cand.quant is None:
            return self.ctx.cache.fp32()
        try:
            return self.ctx.cache.get(cand.quant, self.ctx.ranking)
        except EdgetuneError as exc:
            raise ConfigFailure(f"the quantizer refused these options: {exc.message}") from None

    def run_job(self, board: Any, recorder: TuneRecorder, handle: Optional[TrialHandle],
                stage: str, spec: Any, variant: Variant, label: str,
                options: Dict[str, Any]) -> Any:
        """Submit ``spec`` (or re-attach to the job this trial recorded for ``stage`` on this
        board), wait for it, return its typed result (recorded)."""
        job_id = None
        if handle is not None:
            known = handle.jobs.get(stage)
            if known and known.get("board") == board.name:
                job_id = known["job_id"]
                log.info("trial %d: re-attaching to job %s on %s (%s)", handle.number,
                         job_id, board.name, stage)
        try:
            if job_id is None and handle is not None and handle.adopted \
                    and stage not in handle.jobs and stage != "eval":
                job_id = self.orphan_job(board, handle, label)
            with self.gate(board.name).job(timed=isinstance(spec, BenchmarkSpec)):
                if job_id is not None:
                    try:
                        board.get_job(job_id)
                    except NotFoundError:
                        job_id = None
                if job_id is None:
                    job_id = self._submit(board, recorder, handle, stage, spec, label)
                recorder.annotate(board.name, job_id, run_id=self.ctx.run_id,
                                  options={"tune": options})
                done = board.wait(job_id, _watcher(handle))
        except Withdrawn:
            raise
        except (UnreachableError, TimeoutError_) as exc:
            raise BoardFailure(f"{board.name}: {exc.message}") from None
        except AgentError as exc:
            raise BoardFailure(f"{board.name}: {exc.message}") from None
        except BadInputError as exc:         # the board refused this job's options
            raise ConfigFailure(f"{stage} refused by {board.name}: {exc.message}") from None
        except EdgetuneError:
            raise
        except Exception as exc:  # noqa: BLE001 - grpc and transport errors
            raise BoardFailure(f"{board.name}: {type(exc).__name__}: {exc}") from None
        if handle is not None and handle.withdrawn and done.state is JobState.CANCELLED:
            raise Withdrawn("the study was stopped (Ctrl-C) before it was measured: its queued "
                            f"job {job_id} on {board.name} was cancelled")
        run = board.result(done, variant.path.name, variant.path)
        if done.state is JobState.FAILED:
            raise ConfigFailure(f"{stage} job {job_id} failed on {board.name}: {run.error}")
        if not run.ok:
            raise BoardFailure(f"{stage} job {job_id} on {board.name} {done.state.value}: "
                               f"{run.error}")
        return run, recorder.result_id(run)

    def _submit(self, board: Any, recorder: TuneRecorder, handle: Optional[TrialHandle],
                stage: str, spec: Any, label: str) -> str:
        """Queue ``spec`` on the board; its id is written to the trial at once. A trial that
        has not started measuring is withdrawn instead once the study stops."""
        if handle is None:
            job, _ = board.submit(spec, label)
            return job.id

        def on_submit(board_name: str, new_id: str) -> None:
            handle.jobs[stage] = {"board": board_name, "job_id": new_id}
            handle.set("jobs", dict(handle.jobs))

        with handle.lock:
            if not handle.started and self.stopping.is_set():
                raise Withdrawn("the study was stopped (Ctrl-C) before it was measured")
            recorder.on_submit = on_submit
            try:
                job, _ = board.submit(spec, label)
            finally:
                recorder.on_submit = None
            if not handle.started:
                handle.queued = (board, job.id)
        return job.id

    def orphan_job(self, board: Any, handle: TrialHandle, label: str) -> Optional[str]:
        """A job the stopped host submitted for this stage of an adopted trial but had not
        written to the trial yet (killed between the board's answer and that write): found on
        the board by its label, made after the trial began; None if there is none."""
        began = handle.trial.datetime_start
        since = began.timestamp() - 2.0 if began is not None else 0.0
        try:
            jobs = board.list_jobs(200)
        except EdgetuneError:
            return None
        gone = (JobState.CANCELLED, JobState.INTERRUPTED)
        found = [j for j in jobs if j.label == label and j.created_unix >= since
                 and j.state not in gone]
        if not found:
            return None
        job = max(found, key=lambda j: j.created_unix)
        log.info("trial %d: re-attaching to job %s on %s, found by its label %r",
                 handle.number, job.id, board.name, label)
        return job.id

    def sha256(self, path: Path) -> str:
        with self._lock:
            known = self._sha.get(path)
        if known is None:
            from edgetune.host.tune.variants import file_sha256
            known = file_sha256(path)
            with self._lock:
                self._sha[path] = known
        return known

    def ensure_blob(self, board: Any, path: Path, kind: BlobKind, sha256: str,
                    name: Optional[str] = None) -> None:
        """``path`` stored on the board: one small call when the board has it; else it is sent
        (by its known hash) once no latency measurement is queued or running there."""
        try:
            status = board.client.upload_status(kind, sha256, path.stat().st_size)
            if status.state == "complete":
                return
            with self.gate(board.name).upload():
                board.upload(path, kind, name=name, sha256=sha256)
        except (UnreachableError, TimeoutError_, AgentError) as exc:
            raise BoardFailure(f"{board.name}: {exc.message}") from None

    def upload(self, board: Any, variant: Variant) -> None:
        self.ensure_blob(board, variant.path, BlobKind.MODEL, variant.sha256,
                         name=variant.path.name)

    def accuracy_of(self, board: Any, recorder: TuneRecorder, handle: Optional[TrialHandle],
                    variant: Variant, provider: str, options: Dict[str, Any]
                    ) -> Dict[str, Any]:
        """{"value", "result_id", "metrics"} of ``variant`` with ``provider`` (evaluated once
        per study; the first trial that needs it runs the job, others wait for it)."""
        key = (variant.sha256, provider)
        with self._lock:
            lock = self._key_locks.setdefault(key, threading.Lock())
        with lock:
            with self._lock:
                if key in self.accuracy:
                    return self.accuracy[key]
            ctx = self.ctx
            self.upload(board, variant)         # the FP32 baseline may not be there yet
            dataset = Path(ctx.dataset_upload)
            dataset_sha = self.sha256(dataset)
            self.ensure_blob(board, dataset, BlobKind.DATASET, dataset_sha)
            session = dataclasses.replace(ctx.session_for(provider), intra_op_threads=0)
            spec = EvaluateSpec(model_sha256=variant.sha256, dataset_sha256=dataset_sha,
                                session=session, metrics=(ctx.metric,))
            label = f"tune {ctx.name} eval {variant.path.name[:16]}"
            run, result_id = self.run_job(board, recorder, handle, "eval", spec, variant, label,
                                          {**options, "stage": "eval"})
            metrics = run.result.metric_dict()
            doc = {"value": obj.accuracy_value(metrics, ctx.metric), "result_id": result_id,
                   "metrics": {k: float(v) for k, v in metrics.items()}}
            with self._lock:
                self.accuracy[key] = doc
            ctx.remember_accuracy(key, doc)
            return doc

    def benchmark(self, board: Any, recorder: TuneRecorder, handle: Optional[TrialHandle],
                  stage: str, variant: Variant, cand: Candidate, iterations: int,
                  options: Dict[str, Any]) -> Tuple[Any, Optional[str]]:
        ctx = self.ctx
        spec = BenchmarkSpec(model_sha256=variant.sha256,
                             session=with_shapes(cand.session, ctx.settings.input_shapes),
                             warmup=ctx.settings.warmup, iterations=iterations)
        number = f"#{handle.number} " if handle is not None else ""
        label = f"tune {ctx.name} {number}{stage}"
        return self.run_job(board, recorder, handle, stage, spec, variant, label,
                            {**options, "stage": stage})

    # ------------------------------------------------------------------ duplicates
    def measured_before(self, params: Dict[str, Any]) -> Optional[Any]:
        """A finished trial with these very params and a full measurement (the sampler
        proposes a configuration again, more often in a small space): its numbers are reused,
        nothing is measured again."""
        from optuna.trial import TrialState

        for t in self.ctx.study.get_trials(deepcopy=False,
                                           states=(TrialState.COMPLETE, TrialState.FAIL)):
            if t.params != params:
                continue
            if t.state == TrialState.FAIL and t.user_attrs.get("infeasible"):
                return t
            if t.state == TrialState.COMPLETE and t.user_attrs.get("stage") == "full" \
                    and t.values:
                return t
        return None

    def _claim(self, handle: TrialHandle) -> Optional[Tuple[int, threading.Event]]:
        """None: ``handle`` now measures its configuration; else (number, told) of the trial
        of this process measuring it already."""
        key = tuple(sorted(handle.params.items()))
        with self._lock:
            other = self._measuring.get(key)
            if other is not None and other[0] != handle.number:
                return other
            self._measuring[key] = (handle.number, threading.Event())
            return None

    def told(self, handle: TrialHandle) -> None:
        """The scheduler told ``handle``'s outcome: trials waiting for its configuration look
        again (and reuse it, or measure it if it did not finish)."""
        key = tuple(sorted(handle.params.items()))
        with self._lock:
            mine = self._measuring.get(key)
            if mine is None or mine[0] != handle.number:
                return
            del self._measuring[key]
        mine[1].set()

    def reuse(self, handle: TrialHandle, same: Any) -> Dict[str, Any]:
        handle.set("duplicate_of", same.number)
        if same.user_attrs.get("infeasible"):
            raise ConfigFailure(f"{same.user_attrs['infeasible']} (the configuration of trial "
                                f"{same.number}: not run again)")
        for key in _reuse_keys():
            if key in same.user_attrs:
                handle.set(key, same.user_attrs[key])
        values = [same.values[0], same.user_attrs.get("accuracy", same.values[1])]  # as measured
        return {"values": values, "drop": float(same.user_attrs.get("drop_pts", 0.0)),
                "stage": "full", "note": f"the configuration of trial {same.number}: its "
                                         "measurement reused"}

    # ------------------------------------------------------------------ one trial
    def run_trial(self, board: Any, recorder: TuneRecorder, handle: TrialHandle
                  ) -> Dict[str, Any]:
        """Measure one trial; its outcome doc (values, attrs). Raises Pruned, ConfigFailure,
        BoardFailure."""
        ctx = self.ctx
        cand = handle.candidate
        while not handle.adopted:
            same = self.measured_before(handle.params)
            if same is not None:
                return self.reuse(handle, same)
            other = self._claim(handle)
            if other is None:
                break
            log.info("trial %d: the same configuration is being measured by trial %d; waiting "
                     "to reuse it", handle.number, other[0])
            while not other[1].wait(1.0):
                if self.stopping.is_set() and not handle.started:
                    raise Withdrawn("the study was stopped (Ctrl-C) before it was measured")
        options = {"study": ctx.name, "trial": handle.number, "params": handle.params}
        handle.set("board", board.name)
        variant = self.variant(cand)
        handle.set("model_sha256", variant.sha256)
        handle.set("variant", variant.path.name)
        self.upload(board, variant)
        provider = (cand.session.providers or (CPU,))[0]
        acc = self.accuracy_of(board, recorder, handle, variant, provider, options)
        base = ctx.baseline_accuracy(self, board, recorder, provider, options)
        drop = obj.drop_pts(base, acc["value"])
        handle.set("accuracy", acc["value"])
        handle.set("drop_pts", drop)
        handle.set("result_ids", {"eval": acc["result_id"]})
        feasible = ctx.settings.max_drop is None or drop <= ctx.settings.max_drop + 1e-9
        short, short_id = self.benchmark(board, recorder, handle, "short", variant, cand,
                                         ctx.settings.short_iterations, options)
        wanted = (cand.session.providers or (CPU,))[0]
        used = tuple(short.result.providers)
        if used and wanted not in used:
            raise ConfigFailure(f"{wanted} did not take the model on {board.name}: the session "
                                f"ran on {', '.join(used)} (onnxruntime's fallback)")
        latency = obj.latency_of(short.result, ctx.objective)
        handle.set("short_latency_ms", obj.latency_doc(short.result))
        result_ids = {"eval": acc["result_id"], "short": short_id}
        handle.set("result_ids", result_ids)
        seeded = bool(handle.trial.user_attrs.get("seed"))
        if not feasible and not seeded:
            handle.set("stage", "short")
            handle.set("early_stop", f"accuracy drop {drop:.2f} pts is over --max-drop")
            return {"values": [latency, acc["value"]], "drop": drop, "stage": "short"}
        bound = obj.short_bound(short.result)
        better = None if seeded else obj.dominating(
            ctx.points(), bound, acc["value"], ctx.settings.prune_margin)
        if better is not None:
            reason = (f"short {ctx.objective} {latency:.4g} ms, fastest run {bound:.4g} ms; "
                      f"trial {better.number} is at least as accurate at "
                      f"{better.latency_ms:.4g} ms")
            handle.set("early_stop", reason)
            raise Pruned(reason)
        full, full_id = self.benchmark(board, recorder, handle, "full", variant, cand,
                                       ctx.settings.full_iterations, options)
        result_ids["full"] = full_id
        handle.set("result_ids", result_ids)
        handle.set("latency_ms", obj.latency_doc(full.result))
        handle.set("stage", "full")
        return {"values": [obj.latency_of(full.result, ctx.objective), acc["value"]],
                "drop": drop, "stage": "full"}


def _watcher(handle: Optional[TrialHandle]) -> Optional[Callable[[Any], None]]:
    """Marks ``handle`` started when one of its jobs runs (then Ctrl-C lets it finish)."""
    if handle is None:
        return None
    ran = (JobState.RUNNING, JobState.SUCCEEDED, JobState.FAILED)

    def on_event(event: Any) -> None:
        if event.state in ran and not handle.started:
            with handle.lock:
                handle.started = True
                handle.queued = None
    return on_event


def _reuse_keys() -> Tuple[str, ...]:
    return ("board", "model_sha256", "variant", "accuracy", "drop_pts", "result_ids",
            "short_latency_ms", "latency_ms", "stage")


def trial_line(number: int, board: str, cand: Candidate, outcome: str) -> str:
    return f"trial {number} on {board}: {cand.describe()} -> {outcome}"


__all__ = ["BoardFailure", "BoardGate", "ConfigFailure", "Measurements", "Pruned",
           "TrialHandle", "TuneRecorder", "Withdrawn", "owner_doc", "owner_gone", "trial_line"]
