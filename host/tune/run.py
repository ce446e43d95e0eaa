"""``run_study``: one tuning study from the FP32 model to the answer.

    settings check -> results store + Optuna storage on one URL -> boards opened, one kind ->
    the space on that board -> calibration data -> the study (created, or resumed: stale
    trials adopted) -> trials on every board in parallel -> the answer (``final``) -> outputs
"""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

from edgetune.host.errors import BadInputError, UsageError
from edgetune.host.tune import objective as obj
from edgetune.host.tune import study as studies
from edgetune.host.tune.boards import BoardSpec, board_kind, check_one_kind, kind_text
from edgetune.host.tune.settings import TuneSettings
from edgetune.host.tune.space import CPU, BoardSpace
from edgetune.protos.messages import SessionOptions

log = logging.getLogger("edgetune.tune")
Say = Callable[[str], None]


def _stderr(text: str) -> None:
    print(f"edgetune: {text}", file=sys.stderr, flush=True)


class StudyContext:
    """What every part of a running study shares."""

    def __init__(self, settings: TuneSettings, store: Any, say: Say) -> None:
        self.settings = settings
        self.store = store
        self.say = say
        self.objective = settings.objective
        self.metric = ""
        self.metric_title = ""
        self.name = ""
        self.run_id = ""
        self.label = settings.label
        self.study: Any = None
        self.meta: Dict[str, Any] = {}
        self.board_space: Optional[BoardSpace] = None
        self.ranking: List[str] = []
        self.cache: Any = None
        self.kind: Dict[str, str] = {}
        self.board_names: Set[str] = set()
        self.dataset_upload: Path = Path(settings.dataset)
        self.known_accuracy: Dict[Tuple[str, str], Dict[str, Any]] = {}
        self._points: List[obj.Point] = []
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ boards
    def open_board(self, spec: BoardSpec, recorder: Any) -> Tuple[Any, Any]:
        """A session on ``spec`` (its kind checked against the study's) and its lease (None
        without one)."""
        board = spec.open(recorder)
        try:
            info = board.board.agent
            kind = board_kind(info)
            if self.kind and kind != self.kind:
                raise BadInputError(f"board {spec.name} is now {kind_text(kind)}, not the "
                                    f"study's {kind_text(self.kind)}")
            lease = None
            take = getattr(board, "lease", None)
            if self.settings.lease and callable(take):
                lease = take(self.settings.lease_ttl_s, required=False)
                lease.__enter__()
            return board, lease
        except BaseException:
            board.close()
            raise

    def close_board(self, board: Any, lease: Any) -> None:
        try:
            if lease is not None:
                lease.__exit__(None, None, None)
        except Exception as exc:  # noqa: BLE001 - the lease expires on its own
            log.debug("releasing the lease on %s: %s", board.name, exc)
        board.close()

    def session_for(self, provider: str) -> SessionOptions:
        return SessionOptions(providers=(provider,) if provider == CPU else (provider, CPU),
                              input_shapes=tuple(sorted(self.settings.input_shapes)))

    # ------------------------------------------------------------------ accuracy
    def remember_accuracy(self, key: Tuple[str, str], doc: Dict[str, Any]) -> None:
        """Kept with the study, so that a resumed study evaluates no variant again."""
        with self._lock:
            self.study.set_user_attr(f"accuracy:{key[0]}:{key[1]}", doc)

    def baseline_accuracy(self, m: Any, board: Any, recorder: Any, provider: str,
                          options: Dict[str, Any]) -> float:
        fp32 = self.cache.fp32()
        return float(m.accuracy_of(board, recorder, None, fp32, provider,
                                   {**options, "baseline": "fp32"})["value"])

    # ------------------------------------------------------------------ the front
    def add_point(self, number: int, latency: float, accuracy: float, feasible: bool,
                  full: bool) -> None:
        if full:
            with self._lock:
                self._points.append(obj.Point(number, latency, accuracy, feasible))

    def points(self) -> List[obj.Point]:
        with self._lock:
            return list(self._points)

    def load_points(self) -> None:
        from optuna.trial import TrialState

        max_drop = self.settings.max_drop
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if t.user_attrs.get("stage") == "full" and t.values:
                drop = t.user_attrs.get("drop_pts", 0.0)
                self.add_point(t.number, t.values[0], t.user_attrs.get("accuracy", t.values[1]),
                               max_drop is None or drop <= max_drop + 1e-9, True)
        for key, value in self.study.user_attrs.items():
            if key.startswith("accuracy:"):
                _, sha, provider = key.split(":", 2)
                self.known_accuracy[(sha, provider)] = value


def _open_boards(ctx: StudyContext, specs: Sequence[BoardSpec]) -> Dict[str, Any]:
    """Ask each board what it is (once, before the study); refuse boards of several kinds."""
    infos: Dict[str, Any] = {}
    for spec in specs:
        board = spec.open()
        try:
            infos[spec.name] = board.board.agent
        finally:
            board.close()
    ctx.kind = check_one_kind({n: board_kind(i) for n, i in infos.items()})
    return infos


def run_study(settings: TuneSettings, boards: Sequence[BoardSpec], *,
              say: Optional[Say] = _stderr) -> "Any":
    """Run (or resume) the study ``settings`` describes on ``boards`` and return its
    ``StudyResult`` (``edgetune.host.tune.final``).

    ``boards``: one ``BoardSpec`` per board (``BoardSpec(name, address, identity)``; the
    CLI builds them from ``--device``/``--devices``); boards must be of one kind (arch, CPU
    model, onnxruntime version). ``say``: where progress lines go (None: nowhere).
    Raises ``edgetune.host.errors`` errors for bad input (before anything is measured), and
    KeyboardInterrupt after Ctrl-C once the running trials are recorded. The result's
    ``target_met`` is False when ``--max-drop`` was given and no trial met it (the caller
    decides the exit status: the CLI exits TARGET_NOT_MET).
    """
    from edgetune.host.results.store import ResultsStore
    from edgetune.host.tune.final import answer

    say = say or (lambda text: None)
    settings.check()
    if not boards:
        raise UsageError("no board to tune on", hint="pass --device NAME or --devices SEL")
    names = [b.name for b in boards]
    if len(set(names)) != len(names):
        raise UsageError(f"a board is named twice: {', '.join(names)}")
    metric = obj.resolve_accuracy(settings.accuracy, settings.dataset)
    store = ResultsStore.open(settings.db_url)
    storage = None
    try:
        storage = studies.open_storage(store.url)
        ctx = StudyContext(settings, store, say)
        ctx.metric, ctx.metric_title = metric, obj.METRIC_TITLE[metric]
        ctx.board_names = set(names)
        infos = _open_boards(ctx, boards)
        cores = min(int(i.cpu_cores or 1) for i in infos.values())
        providers = [p for p in next(iter(infos.values())).available_providers]
        ctx.board_space = settings.space.for_board(cores, providers)
        with obj.workdir() as work:
            _prepare_data(ctx, Path(work))
            _open_study(ctx, storage)
            say(f"study {ctx.name}: {len(ctx.study.trials)} trial(s) so far, "
                f"{settings.trials} in all; boards {', '.join(names)} ({kind_text(ctx.kind)}); "
                f"resume with --study {ctx.name}")
            from edgetune.host.tune.scheduler import Scheduler
            from edgetune.host.tune.trials import Measurements

            ctx.load_points()
            measurements = Measurements(ctx)
            scheduler = Scheduler(ctx, measurements, say)
            adopted = scheduler.adopt_stale()
            if adopted:
                say(f"resuming {len(adopted)} trial(s) a stopped host left running: "
                    f"{', '.join(str(h.number) for h in adopted)}")
            try:
                scheduler.run(list(boards))
            except KeyboardInterrupt:
                say(f"interrupted; finished trials are kept in the study. Resume with the same "
                    f"command and --study {ctx.name}")
                raise
            return answer(ctx, measurements, boards, scheduler)
    finally:
        if storage is not None:       # its pooled connections: a caller may run many studies
            storage.engine.dispose()
        store.close()


def _prepare_data(ctx: StudyContext, work: Path) -> None:
    from edgetune.host.quant.calibdata import load_calibration
    from edgetune.host.quant.settings import QuantizeSettings
    from edgetune.host.tune.variants import VariantCache

    s = ctx.settings
    counts = list(ctx.board_space.dims()["quantization.calib_count"]) + [100]
    qs = QuantizeSettings(model=Path(s.model), output=work / "x.onnx", calib=s.calib,
                          calib_count=max(counts), seed=s.seed)
    data = load_calibration(Path(s.model), qs)
    ctx.cache = VariantCache(Path(s.model), s.calib, data, s.cache_dir, s.seed)
    ctx.dataset_upload = obj.dataset_for(ctx.metric, s.dataset, Path(s.model), work)


def _open_study(ctx: StudyContext, storage: Any) -> None:
    from ulid import ULID

    from edgetune.host.tune.variants import sensitivity_ranking

    s = ctx.settings
    ident = studies.identity(ctx.cache.model_sha256, ctx.board_space.fingerprint(),
                             s.objective, ctx.metric, ctx.kind)
    ctx.name = s.study or studies.default_name(Path(s.model).stem, ident)

    def make_meta() -> Dict[str, Any]:
        ranking = sensitivity_ranking(ctx.cache)
        return {"run_id": str(ULID()), "model": str(s.model), "ranking": ranking,
                "space": {k: list(v) for k, v in ctx.board_space.choices},
                "max_drop": s.max_drop, "dataset": str(s.dataset)}

    sampler = studies.make_sampler(s.sampler, s.seed)
    study, meta, created = studies.create_or_load(storage, ctx.name, ident,
                                                  new_study=s.new_study, sampler=sampler,
                                                  make_meta=make_meta)
    ctx.study, ctx.meta = study, meta
    ctx.run_id = meta["run_id"]
    ctx.ranking = list(meta.get("ranking") or [])
    if created:
        for params in ctx.board_space.seeds(len(ctx.ranking)):
            study.enqueue_trial(params, user_attrs={"seed": True})
    if s.max_drop != meta.get("max_drop"):
        meta = {**meta, "max_drop": s.max_drop}
        study.set_user_attr(studies.ATTR, meta)
        ctx.meta = meta
