"""One trial on one board: the variant (made once, cached), its accuracy (evaluated once per
variant and provider, on the board), a short latency measurement, and the full one only when
the trial can still reach the front. Every measurement is a board job through the board
session, recorded in the results store with the study's run id and the trial's number,
study and params in its options.

Each job's id is written to the trial (Optuna user attribute ``jobs``) as soon as the board
accepted it (the recorder's ``submitted`` hook), so a host killed mid-trial re-attaches to that
job when the study resumes instead of measuring again.

Failures: a job the board FAILED (the configuration cannot run: a provider that cannot load
the model, ...) or options the quantizer refuses make the trial infeasible, with its error,
never retried; a board that cannot be reached, an agent restarted under a job, a job
interrupted or cancelled raise ``BoardFailure`` (the scheduler retries the trial).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple

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


class TuneRecorder(StoreRecorder):
    """The results store's recorder, telling the running trial each job id it submits."""

    def __init__(self, store: Any, **kwargs: Any) -> None:
        super().__init__(store, **kwargs)
        self.on_submit: Optional[Callable[[str, str], None]] = None

    def submitted(self, board: str, job_id: str) -> None:
        super().submitted(board, job_id)
        if self.on_submit is not None:
            self.on_submit(board, job_id)


@dataclass
class TrialHandle:
    """An Optuna trial this process runs: asked now, or adopted from a host that died."""

    trial: Any                               # optuna.trial.Trial
    params: Dict[str, Any]
    jobs: Dict[str, Dict[str, str]] = field(default_factory=dict)
    adopted: bool = False

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
        self._variant_lock = threading.Lock()

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
            if job_id is not None:
                try:
                    board.get_job(job_id)
                except NotFoundError:
                    job_id = None
            if job_id is None:
                def on_submit(board_name: str, new_id: str) -> None:
                    if handle is not None:
                        handle.jobs[stage] = {"board": board_name, "job_id": new_id}
                        handle.set("jobs", dict(handle.jobs))

                recorder.on_submit = on_submit
                try:
                    job, _ = board.submit(spec, label)
                finally:
                    recorder.on_submit = None
                job_id = job.id
            recorder.annotate(board.name, job_id, run_id=self.ctx.run_id,
                              options={"tune": options})
            done = board.wait(job_id)
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
        run = board.result(done, variant.path.name, variant.path)
        if done.state is JobState.FAILED:
            raise ConfigFailure(f"{stage} job {job_id} failed on {board.name}: {run.error}")
        if not run.ok:
            raise BoardFailure(f"{stage} job {job_id} on {board.name} {done.state.value}: "
                               f"{run.error}")
        return run, recorder.result_id(run)

    def upload(self, board: Any, variant: Variant) -> None:
        try:
            board.upload(variant.path, BlobKind.MODEL, name=variant.path.name)
        except (UnreachableError, TimeoutError_, AgentError) as exc:
            raise BoardFailure(f"{board.name}: {exc.message}") from None

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
            from edgetune.host.board import BlobRef
            dataset_sha = board.resolve(BlobRef(str(ctx.dataset_upload), BlobKind.DATASET,
                                                path=ctx.dataset_upload))
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

    def reuse(self, handle: TrialHandle, same: Any) -> Dict[str, Any]:
        handle.set("duplicate_of", same.number)
        if same.user_attrs.get("infeasible"):
            raise ConfigFailure(f"{same.user_attrs['infeasible']} (the configuration of trial "
                                f"{same.number}: not run again)")
        for key in _reuse_keys():
            if key in same.user_attrs:
                handle.set(key, same.user_attrs[key])
        return {"values": list(same.values), "drop": float(same.user_attrs.get("drop_pts", 0.0)),
                "stage": "full", "note": f"the configuration of trial {same.number}: its "
                                         "measurement reused"}

    # ------------------------------------------------------------------ one trial
    def run_trial(self, board: Any, recorder: TuneRecorder, handle: TrialHandle
                  ) -> Dict[str, Any]:
        """Measure one trial; its outcome doc (values, attrs). Raises Pruned, ConfigFailure,
        BoardFailure."""
        ctx = self.ctx
        cand = handle.candidate
        same = None if handle.adopted else self.measured_before(handle.params)
        if same is not None:
            return self.reuse(handle, same)
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


def _reuse_keys() -> Tuple[str, ...]:
    return ("board", "model_sha256", "variant", "accuracy", "drop_pts", "result_ids",
            "short_latency_ms", "latency_ms", "stage")


def trial_line(number: int, board: str, cand: Candidate, outcome: str) -> str:
    return f"trial {number} on {board}: {cand.describe()} -> {outcome}"


__all__ = ["BoardFailure", "ConfigFailure", "Measurements", "Pruned", "TrialHandle",
           "TuneRecorder", "owner_doc", "owner_gone", "trial_line"]
