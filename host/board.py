"""The board session: the one path from a file on this PC to a typed result from a board.

    upload (dedup, resume) -> submit -> watch (re-attach) -> typed result

``bench``, ``eval``, ``jobs watch``, ``models/datasets upload``, ``demo`` and the fallback's
on-board evaluator all go through ``BoardSession``; nothing else on the host uploads, submits
or waits (a test scans for it). The results are frozen dataclasses (``BenchmarkRun``,
``EvaluationRun``) holding the board's info, the job id, the model's name and sha256, the
options used and the board's numbers; ``edgetune.host.render`` only renders them. Every result
passes through ``BoardSession._record``, the one place a results store hooks in (``recorder``).

    with BoardSession(AgentClient(address, identity), "board1") as board:
        run = board.benchmark(Path("model.onnx"), BenchmarkSpec(model_sha256="", iterations=200))
        print(run.result.latency.p50_ms, run.board.agent.agent_name)
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Sequence,
                    Tuple, Union)

from edgetune.host.errors import BadInputError, IncompatibleError, NotFoundError, UsageError
from edgetune.protos.messages import (AgentInfo, BenchmarkResult, BenchmarkSpec, BlobInfo, BlobKind,
                                      CompareResult, CompareSpec, EvaluateResult, EvaluateSpec, Job,
                                      JobEvent, JobState, SignedResult)
from edgetune.protos.shapes import shape_flag

if TYPE_CHECKING:  # pragma: no cover
    from edgetune.host.leases import HeldLease

HEX = re.compile(r"^[0-9a-f]{6,64}$")
RESUME_HINT = "run the same command again to resume from the bytes the board kept"
# Model files a runner plug-in takes, by suffix (anything else is sent as ONNX; --format
# overrides): Ascend .om, VeriSilicon/Amlogic .nb, Zhouyi AIPU binaries, and a few more.
OPAQUE_SUFFIXES = {".om": "om", ".nb": "nb", ".aipu": "aipu", ".bin": "bin", ".rknn": "rknn",
                   ".bmodel": "bmodel", ".cvimodel": "cvimodel", ".tflite": "tflite"}
FORMAT = re.compile(r"^[a-z0-9_]{1,16}$")


def model_format(path: Path, given: str = "") -> str:
    """The format declared when ``path`` is uploaded as a model: ``given`` (--format), else
    from its suffix (.om -> om), else onnx."""
    if given:
        if not FORMAT.match(given):
            raise UsageError(f"--format {given!r} is not 1-16 lowercase letters, digits or '_' "
                             "(e.g. onnx, om, nb, aipu)")
        return given
    return OPAQUE_SUFFIXES.get(Path(path).suffix.lower(), "onnx")
EventCallback = Callable[[JobEvent], None]


# ---------------------------------------------------------------------- typed results

@dataclass(frozen=True)
class BoardInfo:
    """Which board measured: how results name it (inventory name or address), where it is,
    and what it said about itself (None until asked: ``BoardSession.board``)."""

    name: str
    address: str
    agent: Optional[AgentInfo] = None


@dataclass(frozen=True)
class _ModelRun:
    """What a benchmark's and an evaluation's outcome share (the subclasses type ``options``
    and ``result``)."""

    job_id: str
    model: str                              # how the model was named: a path as given, a hash
    model_sha256: str
    board: BoardInfo
    options: Any
    state: JobState
    result: Any
    error: str = ""
    label: str = ""
    note: str = ""
    model_path: Optional[Path] = None       # the local file measured, when there was one
    signed: Optional[SignedResult] = None

    @property
    def ok(self) -> bool:
        return self.state is JobState.SUCCEEDED and self.result is not None


@dataclass(frozen=True)
class BenchmarkRun(_ModelRun):
    """One benchmark job's outcome. ``result`` is None when the job did not succeed
    (``state`` and ``error`` say why). ``note``: what the user should know (e.g. a
    ``--duration`` run stopped early by the agent's limit), "" when nothing. ``signed``: the
    agent's signature of what it measured (None from agents that do not sign)."""

    options: BenchmarkSpec
    result: Optional[BenchmarkResult]

    kind = "benchmark"


@dataclass(frozen=True)
class EvaluationRun(_ModelRun):
    """One evaluation job's outcome (see ``BenchmarkRun``); ``result.metric_dict()`` holds
    the metrics the board computed."""

    options: EvaluateSpec
    result: Optional[EvaluateResult]

    kind = "evaluate"

    @property
    def dataset_sha256(self) -> str:
        return self.options.dataset_sha256


@dataclass(frozen=True)
class ComparisonRun:
    """One comparison job's outcome (``edgetune compare``): both models as named and their
    local files, the rounds' numbers in ``result`` (a ``CompareResult``; None when the job
    did not succeed), ``note`` as in ``BenchmarkRun``. ``model``/``model_sha256`` name A."""

    job_id: str
    model_a: str
    model_b: str
    model_a_sha256: str
    model_b_sha256: str
    board: BoardInfo
    options: CompareSpec
    state: JobState
    result: Optional[CompareResult]
    error: str = ""
    label: str = ""
    note: str = ""
    model_a_path: Optional[Path] = None
    model_b_path: Optional[Path] = None
    signed: Optional[SignedResult] = None   # the agent's signature of the job (both models)

    kind = "compare"

    @property
    def ok(self) -> bool:
        return self.state is JobState.SUCCEEDED and self.result is not None

    @property
    def model(self) -> str:
        return self.model_a

    @property
    def model_sha256(self) -> str:
        return self.model_a_sha256


BoardRun = Union[BenchmarkRun, EvaluationRun, ComparisonRun]
Recorder = Callable[[BoardRun], None]


def thermal_note(spec: Any, result: Any) -> str:
    """What thermal gating did (``--max-temp``): that the board has no sensor, so nothing
    was waited for, or how long the agent waited for it to cool."""
    gate = getattr(spec, "thermal", None)
    if gate is None:
        return ""
    sessions = ([r for round_ in result.rounds for r in (round_.a, round_.b)]
                if isinstance(result, CompareResult) else [result] if result else [])
    reports = [r.thermal for r in sessions if r.thermal is not None]
    if sessions and not reports:
        return (f"--max-temp {gate.max_temp_c:g}: this agent does not know thermal gating (an "
                "older edgetune-agent), so nothing was waited for; upgrade it on the board")
    if any(t.no_sensor for t in reports):
        return (f"--max-temp {gate.max_temp_c:g}: the board exposes no thermal zone, so the "
                "agent could not wait for it to cool (nothing was waited for)")
    waited = sum(t.waited_s for t in reports)
    if waited > 0:
        return (f"waited {waited:.1f} s in all for the board to cool below "
                f"{gate.max_temp_c:g} °C before measuring")
    return ""


def duration_note(spec: Any, result: Any) -> str:
    """What to tell the user when a ``--duration`` run ended early: the board also stops it
    at its max_iterations limit (the only reason a successful run measures less time)."""
    wanted = getattr(spec, "min_duration_s", 0.0)
    if not wanted or not isinstance(result, BenchmarkResult) or result.measured_s >= wanted:
        return ""
    return (f"stopped after {result.iterations} iterations at {result.measured_s:.1f} s of the "
            f"{wanted:g} s asked: the agent's max_iterations limit ([limits] max_iterations "
            "in its agent.toml); raise it to measure longer")


def free_batch_note(spec: Any) -> str:
    """What to tell the user when the agent set a free batch dimension to 1 (no --shape
    given for that input; ``BenchmarkSpec.free_batch_dims``), and how to choose another."""
    shapes = spec.session.shapes()
    notes = []
    for name, dim in getattr(spec, "free_batch_dims", ()):
        called = f" '{dim}'" if dim else ""
        dims = shapes.get(name)
        choose = f" ({shape_flag(name, dims)} to choose)" if dims else ""
        notes.append(f"{name}: free batch dimension{called} set to 1{choose}")
    return "; ".join(notes)


def placement_note(spec: Any, result: Any) -> str:
    """A warning when some nodes did not run on the provider the session put first (an NPU's
    provider handing the operators it lacks to the CPU): "ran on the NPU" is then only
    partly true. Nothing when the agent did not say (an older agent) or all ran there."""
    nodes = dict(getattr(result, "provider_nodes", ()) or ())
    session = getattr(spec, "session", None)
    if not nodes or session is None:
        return ""
    first = (session.providers or ("CPUExecutionProvider",))[0]
    elsewhere = {p: n for p, n in nodes.items() if p != first}
    if not elsewhere:
        return ""
    total = sum(nodes.values())
    where = ", ".join(f"{n} on {p}" for p, n in sorted(elsewhere.items()))
    return (f"{sum(elsewhere.values())} of {total} nodes did not run on {first} ({where}): "
            "its time includes that fallback")


def run_from_job(job: Job, model: str, board: BoardInfo,
                 model_path: Optional[Path] = None) -> BoardRun:
    """The typed result of a finished (or failed) job. ``model``: how to name the model;
    ``model_path``: the local file it was uploaded from, if known."""
    if isinstance(job.spec, CompareSpec):
        return comparison_from_job(job, board)
    cls = BenchmarkRun if isinstance(job.spec, BenchmarkSpec) else EvaluationRun
    expected = BenchmarkResult if cls is BenchmarkRun else EvaluateResult
    result = job.result if isinstance(job.result, expected) else None
    error = "" if result is not None else (job.error or f"the job {job.state.value}")
    return cls(job_id=job.id, model=model, model_sha256=job.spec.model_sha256, board=board,
               options=job.spec, state=job.state, result=result, error=error,
               label=job.label, note="; ".join(n for n in (free_batch_note(job.spec),
                                                           duration_note(job.spec, result),
                                                           thermal_note(job.spec, result),
                                                           placement_note(job.spec, result))
                                               if n),
               model_path=model_path, signed=job.signed if result is not None else None)


def comparison_from_job(job: Job, board: BoardInfo, names: Sequence[str] = ("", ""),
                        paths: Sequence[Optional[Path]] = (None, None)) -> ComparisonRun:
    """The typed result of a finished (or failed) comparison job; ``names``: how to name
    models A and B (default their short hashes), ``paths``: their local files, if known."""
    spec = job.spec
    result = job.result if isinstance(job.result, CompareResult) else None
    error = "" if result is not None else (job.error or f"the job {job.state.value}")
    shas = spec.models
    return ComparisonRun(
        job_id=job.id, model_a=names[0] or shas[0][:12], model_b=names[1] or shas[1][:12],
        model_a_sha256=shas[0], model_b_sha256=shas[1], board=board, options=spec,
        state=job.state, result=result, error=error, label=job.label,
        note="; ".join(n for n in (free_batch_note(spec), thermal_note(spec, result)) if n),
        model_a_path=paths[0], model_b_path=paths[1],
        signed=job.signed if result is not None else None)


def job_name(job: Job) -> str:
    """How progress lines and results name a job: its label, else its model's short hash."""
    return job.label or job.spec.model_sha256[:12]


# ---------------------------------------------------------------------- naming blobs

@dataclass(frozen=True)
class BlobRef:
    """A model or dataset named on the command line: a local file, or a hash on the board."""

    text: str
    kind: BlobKind
    path: Optional[Path] = None
    sha256: str = ""                   # full or a prefix of at least 6 hex digits
    format: str = ""                   # a model's declared format; "": from its suffix

    @classmethod
    def parse(cls, text: str, kind: BlobKind) -> "BlobRef":
        path = Path(os.path.expanduser(text))
        if path.is_file():
            return cls(text=text, kind=kind, path=path)
        if HEX.match(text.lower()):
            return cls(text=text, kind=kind, sha256=text.lower())
        raise NotFoundError(f"{text} is neither a file nor the sha256 of a {kind.value} on the "
                            "board", hint=f"check the path, or list the board's {kind.value}s "
                                          f"with `edgetune {kind.value}s list`")

    @classmethod
    def of(cls, where: Union["BlobRef", Path, str], kind: BlobKind) -> "BlobRef":
        """``where`` as a BlobRef: a Path is a local file, a str is parsed."""
        if isinstance(where, BlobRef):
            return where
        if isinstance(where, Path):
            return cls(text=str(where), kind=kind, path=where)
        return cls.parse(where, kind)

    @property
    def display(self) -> str:
        """How progress lines and job listings name it: its file name, else its short hash."""
        return self.path.name if self.path is not None else self.sha256[:12]


# ---------------------------------------------------------------------- the session

class _NoView:
    """What ``BoardSession`` calls when no progress view is given: nothing is shown."""

    def upload_callback(self, label: str, size: int) -> None:
        return None

    def upload_done(self, label: str, outcome: Any) -> None:
        pass

    def job_callback(self, label: str) -> EventCallback:
        return lambda event: None

    def __exit__(self, *exc: object) -> None:
        pass


class BoardSession:
    """One board reached through one ``AgentClient`` (``client``; closed with the session).

    ``name``: how results name the board (default: the client's address). ``recorder``:
    called with every typed result this session produces (the results store's hook).
    ``view``: a ``edgetune.host.render.ProgressView`` for upload and job progress, or None.
    """

    def __init__(self, client: Any, name: str = "", *, recorder: Optional[Recorder] = None,
                 view: Any = None) -> None:
        self.client = client
        self.name = name or client.address
        self.recorder = recorder
        self.view = view
        self._board: Optional[BoardInfo] = None
        self._held: Optional["HeldLease"] = None

    def __enter__(self) -> "BoardSession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.client.close()

    @property
    def address(self) -> str:
        return self.client.address

    @property
    def board(self) -> BoardInfo:
        """The board's info (asked once per session)."""
        if self._board is None:
            self._board = BoardInfo(self.name, self.address, self.client.info())
        return self._board

    def check_features(self, spec: Any) -> None:
        """Refuse ``spec`` now, before any work, if the board cannot run it as asked (see
        ``submit``)."""
        self._check_features(spec)

    def _check_features(self, spec: Any) -> None:
        """Refuse what an older agent would silently drop (and so measure without), and a
        runner the board does not have (naming the ones it has)."""
        session = getattr(spec, "session", None)
        runner = getattr(spec, "runner", "")
        asked = (("profile", "cannot profile operators (--profile)", "--profile",
                  getattr(spec, "profile", False)),
                 ("runners", "has no runner plug-ins (--runner)", "--runner", bool(runner)),
                 ("provider_options", "does not take execution-provider options "
                  "(--provider-option)", "--provider-option",
                  session is not None and bool(session.provider_options)),
                 ("detection", "does not compute detection mAP (--metric map, --decoder)",
                  "--metric map", bool(getattr(spec, "decoder", ""))
                  or "map" in (getattr(spec, "metrics", ()) or ())),
                 ("job_output", "cannot send a job's output tensors back (analyze --device)",
                  "--device", bool(getattr(spec, "dump_outputs", ()))))
        info = self.board.agent if any(wanted for *_, wanted in asked) else None
        for feature, lacks, flag, wanted in asked:
            if wanted and info is not None and not info.has(feature):
                from edgetune import __version__
                raise IncompatibleError(
                    f"the agent at {self.address} runs edgetune "
                    f"{info.agent_version or 'before 0.2'}, which {lacks}: it would run the "
                    f"job without it (this PC runs edgetune {__version__})",
                    hint=f"upgrade the agent (`edgetune deploy upgrade`), or leave out {flag}")
        if runner and info is not None and runner not in {r.name for r in info.runners}:
            have = ", ".join(f"{r.name} ({'/'.join(r.formats)})" for r in info.runners)
            raise BadInputError(f"the board at {self.address} has no runner {runner!r}; its "
                                f"runners: {have or 'none'}",
                                hint="runners are registered in [runners.NAME] of the board's "
                                     "agent.toml; leave out --runner to run onnxruntime")

    def _recorder_ready(self) -> None:
        """Before the first thing that costs the board work (an upload, a job), wait for a
        recorder that needs time to get ready (``ready()``: a results store still opening
        while the session connected), so that a store that cannot be used stops the command
        before it sends or measures anything."""
        ready = getattr(self.recorder, "ready", None)
        if ready is not None:
            ready()

    def _view(self, view: Any) -> Any:
        return view or self.view or _NoView()

    # ------------------------------------------------------------------ lease
    @contextlib.contextmanager
    def lease(self, ttl_s: float = 60.0, *, required: bool = True) -> Iterator["HeldLease"]:
        """Hold the board's lease for the block: acquire it (``ttl_s`` seconds, within the
        agent's bounds), renew it every ``ttl_s / 3`` in a background thread, release it when
        the block ends (also on an exception or Ctrl-C). Yields a ``HeldLease``; a lost lease
        is a logged warning and ``held.lost``/``held.losses``, never an exception in the block.

        LeaseHeldError: another host holds the board. An agent older than leases raises
        LeasesUnsupportedError, unless ``required`` is False: then a warning says the
        measurements are not protected and the block runs (``held.supported`` False). Inside
        another ``lease`` block of this session, the outer lease is yielded as it is."""
        from edgetune.host.errors import LeasesUnsupportedError
        from edgetune.host.leases import NOT_PROTECTED, HeldLease, LeaseKeeper, log

        if self._held is not None:
            yield self._held
            return
        keeper = LeaseKeeper(self.client, self.name, ttl_s)
        try:
            held = keeper.acquire()
        except LeasesUnsupportedError as exc:
            if required:
                raise
            log.warning("%s; %s", exc.message, NOT_PROTECTED)
            yield HeldLease(board=self.name, ttl_s=keeper.ttl_s, supported=False)
            return
        self._held = held
        try:
            yield held
        finally:
            self._held = None
            keeper.close()

    @property
    def held_lease(self) -> Optional["HeldLease"]:
        """The lease a ``lease`` block of this session holds now, else None."""
        return self._held

    # ------------------------------------------------------------------ blobs
    def upload(self, path: Path, kind: BlobKind, name: Optional[str] = None,
               view: Any = None, *, sha256: str = "", format: str = "",
               chunks: Any = None) -> Any:
        """Store ``path`` on the board unless it is there (dedup by hash; a partial upload
        resumes): an ``UploadOutcome``. After Ctrl-C, says how to resume and re-raises.
        ``sha256``: the file's hash, when the caller computed it already (a fleet run: once
        for all its boards). ``format`` (models): declared to the agent; "" takes it from the
        suffix (``model_format``). An opaque format needs an agent with runner plug-ins.
        ``chunks(offset)``: the file's bytes from a reader shared by several boards
        (``AgentClient.upload``)."""
        path = Path(path)
        view = self._view(view)
        fmt = model_format(path, format) if kind is BlobKind.MODEL else ""
        if fmt not in ("", "onnx"):
            info = self.board.agent
            if info is not None and not info.has("runners"):
                raise IncompatibleError(
                    f"{path.name} is a '{fmt}' model, but the agent at {self.address} runs "
                    f"edgetune {info.agent_version or 'before 0.2'}, which takes ONNX models only",
                    hint="upgrade the agent (`edgetune deploy upgrade`), or pass --format onnx "
                         "if the file is ONNX")
        self._recorder_ready()
        try:
            outcome = self.client.upload(path, kind, name=name, progress=view.upload_callback(
                path.name, path.stat().st_size), sha256=sha256,
                format="" if fmt == "onnx" else fmt, chunks=chunks)
        except KeyboardInterrupt:
            view.__exit__(None, None, None)
            print(f"\nedgetune: upload of {path} interrupted; {RESUME_HINT}", file=sys.stderr)
            raise
        view.upload_done(path.name, outcome)
        return outcome

    def resolve(self, ref: BlobRef, view: Any = None) -> str:
        """The full sha256 of ``ref`` on the board: a full hash as it is (a file already sent
        this session, named by its hash), else uploads a local file or expands a prefix."""
        if len(ref.sha256) == 64:
            return ref.sha256
        if ref.path is not None:
            return self.upload(ref.path, ref.kind, view=view, format=ref.format).blob.sha256
        matches = [b.sha256 for b in self.client.list_blobs(ref.kind)
                   if b.sha256.startswith(ref.sha256)]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise NotFoundError(f"no {ref.kind.value} on the board starts with {ref.sha256}",
                                hint=f"list them with `edgetune {ref.kind.value}s list`")
        raise UsageError(f"{ref.sha256} matches {len(matches)} {ref.kind.value}s on the board; "
                         "give more digits")

    def list_blobs(self, kind: Optional[BlobKind] = None) -> List[BlobInfo]:
        return self.client.list_blobs(kind)

    def delete_blob(self, kind: BlobKind, sha256: str) -> bool:
        return self.client.delete_blob(kind, sha256)

    # ------------------------------------------------------------------ jobs
    def submit(self, spec: Any, label: str = "") -> Tuple[Job, int]:
        """Queue a BenchmarkSpec or EvaluateSpec: (the job, its queue position). A recorder
        that wants to know (``submitted(board, job_id)``) learns the job is new: nothing can
        have recorded it before. Options an older agent would silently ignore (provider
        options) are refused here, before anything is measured without them."""
        self._check_features(spec)
        self._recorder_ready()
        job, position = self.client.submit(spec, label)
        submitted = getattr(self.recorder, "submitted", None)
        if submitted is not None:
            submitted(self.name, job.id)
        return job, position

    def wait(self, job_id: str, on_event: Optional[EventCallback] = None) -> Job:
        """Watch the job to its end, re-attaching a dropped watch (``AgentClient.wait``)."""
        return self.client.wait(job_id, on_event)

    def wait_all(self, jobs: Sequence[Tuple[str, str]], view: Any = None,
                 states: Optional[Dict[str, str]] = None) -> Optional[List[Job]]:
        """Wait for each (job id, label) in turn; None after Ctrl-C, once the user was told
        where the jobs stand on the board (running or queued) and how to re-attach. A label
        "" names the job as the board knows it (``job_name``). ``states``: the jobs' states
        when submitted (job id -> "queued"/"running"), updated from their events."""
        view = self._view(view)
        done: List[Job] = []
        states = dict(states or {})
        try:
            for job_id, label in jobs:
                shows: List[Any] = []           # the progress callback, made at the 1st event

                def on_event(event: JobEvent, label: str = label, shows: List[Any] = shows) -> None:
                    states[event.job_id] = event.state.value
                    if not shows:
                        name = label or (job_name(event.job) if event.job is not None
                                         else event.job_id)
                        shows.append(view.job_callback(name))
                    shows[0](event)

                done.append(self.wait(job_id, on_event))
        except KeyboardInterrupt:
            view.__exit__(None, None, None)
            pending = [job_id for job_id, _ in jobs[len(done):]]
            print(f"\nedgetune: interrupted; {_where_jobs_stand(pending, states)}. Re-attach "
                  f"with `edgetune jobs watch {pending[0]}` (or cancel it with "
                  f"`edgetune jobs cancel {pending[0]}`)", file=sys.stderr)
            return None
        return done

    def cancel(self, job_id: str) -> Job:
        return self.client.cancel_job(job_id)

    def read_output(self, run: "EvaluationRun", *, offset: int = 0,
                    chunk_bytes: int = 0) -> Any:
        """The output file of a succeeded evaluation that asked for one (``dump_outputs``):
        an ``OutputStream`` of chunks, resumed by offset after a dropped stream."""
        if not run.ok or not run.options.dump_outputs:
            raise BadInputError(f"job {run.job_id} wrote no output file to read")
        assert run.result is not None
        return self.client.read_job_output(run.job_id, offset, chunk_bytes=chunk_bytes,
                                           expected_bytes=run.result.output_bytes)

    def get_job(self, job_id: str) -> Job:
        return self.client.get_job(job_id)

    def list_jobs(self, limit: int = 0) -> List[Job]:
        return self.client.list_jobs(limit)

    # ------------------------------------------------------------------ typed results
    def result(self, job: Job, model: str = "", model_path: Optional[Path] = None) -> BoardRun:
        """The typed result of a finished job (``model``: how to name the model; default the
        job's label or short hash; ``model_path``: its local file, if any), recorded."""
        run = run_from_job(job, model or job_name(job), self.board, model_path)
        self._record(run)
        return run

    def _record(self, run: BoardRun) -> None:
        """Every typed result passes here: the one hook for a results store (which should
        key by board and job id: ``jobs show`` of a recorded job passes again)."""
        if self.recorder is not None:
            self.recorder(run)

    def run(self, spec: Any, model: str = "", *, label: str = "",
            on_event: Optional[EventCallback] = None,
            model_path: Optional[Path] = None) -> BoardRun:
        """Submit ``spec`` (its hashes filled in), wait for its end, return its typed result."""
        job, position = self.submit(spec, label)
        if on_event is not None:
            on_event(JobEvent(job_id=job.id, state=job.state, queue_position=position, job=job))
        return self.result(self.wait(job.id, on_event), model or label, model_path)

    def benchmark(self, model: Union[BlobRef, Path, str], spec: BenchmarkSpec, *,
                  label: str = "", on_event: Optional[EventCallback] = None,
                  view: Any = None) -> BenchmarkRun:
        """Upload ``model`` (unless stored), benchmark it with ``spec`` (its model_sha256 is
        replaced; a dataset in ``spec`` must be on the board already)."""
        ref = BlobRef.of(model, BlobKind.MODEL)
        sha = self.resolve(ref, view)
        spec = dataclasses.replace(spec, model_sha256=sha)
        run = self.run(spec, ref.text, label=label or ref.display, on_event=on_event,
                       model_path=ref.path)
        assert isinstance(run, BenchmarkRun)
        return run

    def evaluate(self, model: Union[BlobRef, Path, str], dataset: Union[BlobRef, Path, str],
                 spec: EvaluateSpec, *, label: str = "", dataset_name: Optional[str] = None,
                 on_event: Optional[EventCallback] = None, view: Any = None) -> EvaluationRun:
        """Upload ``model`` and ``dataset`` (unless stored; ``dataset_name``: the dataset's
        label on the board), evaluate with ``spec`` (its hashes are replaced)."""
        data = BlobRef.of(dataset, BlobKind.DATASET)
        if data.path is not None:
            dataset_sha = self.upload(data.path, BlobKind.DATASET, name=dataset_name,
                                      view=view).blob.sha256
        else:
            dataset_sha = self.resolve(data, view)
        ref = BlobRef.of(model, BlobKind.MODEL)
        sha = self.resolve(ref, view)
        spec = dataclasses.replace(spec, model_sha256=sha, dataset_sha256=dataset_sha)
        run = self.run(spec, ref.text, label=label or ref.display, on_event=on_event,
                       model_path=ref.path)
        assert isinstance(run, EvaluationRun)
        return run

    def compare(self, model_a: Union[BlobRef, Path, str], model_b: Union[BlobRef, Path, str],
                spec: CompareSpec, *, dataset: Union[BlobRef, Path, str, None] = None,
                label: str = "", on_event: Optional[EventCallback] = None,
                view: Any = None) -> ComparisonRun:
        """Upload both models (and ``dataset``) unless stored, run the interleaved comparison
        ``spec`` as one job (its hashes are replaced), return its typed result, recorded."""
        refs = [BlobRef.of(m, BlobKind.MODEL) for m in (model_a, model_b)]
        shas = [self.resolve(ref, view) for ref in refs]
        dataset_sha = ""
        if dataset is not None:
            data = BlobRef.of(dataset, BlobKind.DATASET)
            dataset_sha = (self.upload(data.path, BlobKind.DATASET, view=view).blob.sha256
                           if data.path is not None else self.resolve(data, view))
        spec = dataclasses.replace(spec, model_a_sha256=shas[0], model_b_sha256=shas[1],
                                   dataset_sha256=dataset_sha)
        job, position = self.submit(
            spec, label or f"compare {refs[0].display} vs {refs[1].display}")
        if on_event is not None:
            on_event(JobEvent(job_id=job.id, state=job.state, queue_position=position, job=job))
        run = comparison_from_job(self.wait(job.id, on_event), self.board,
                                  [r.text for r in refs], [r.path for r in refs])
        self._record(run)
        return run


def _where_jobs_stand(pending: Sequence[str], states: Dict[str, str]) -> str:
    """"job X keeps running on the board; job Y stays queued on the board (...)" from the last
    known states (a job not seen yet behind the one being watched waits in the queue)."""
    known = {j: states.get(j, "" if i == 0 else "queued") for i, j in enumerate(pending)}
    groups = (([j for j in pending if known[j] == "running"], "keep{s} running on the board"),
              ([j for j in pending if known[j] not in ("running", "queued")],
               "{are} still on the board"),
              ([j for j in pending if known[j] == "queued"],
               "stay{s} queued on the board ({they} when {their} turn comes)"))
    parts = []
    for ids, text in groups:
        if ids:
            many = len(ids) > 1
            parts.append(f"job{'s' if many else ''} {', '.join(ids)} " + text.format(
                s="" if many else "s", are="are" if many else "is",
                they="they run" if many else "it runs", their="their" if many else "its"))
    return "; ".join(parts)


__all__ = ["BenchmarkRun", "BlobRef", "BoardInfo", "BoardRun", "BoardSession", "ComparisonRun",
           "EvaluationRun", "Recorder", "duration_note", "job_name", "run_from_job",
           "thermal_note"]
