"""The Optuna study on the results database: storage, identity, creation, resume, listing.

Optuna's RDB storage runs on the same URL as the results store (its own tables beside
``results``; its Alembic table is ``alembic_version``, ours ``edgetune_alembic_version``), so a
study survives the host, several hosts share one study through PostgreSQL, and
optuna-dashboard opens it (``optuna-dashboard sqlite:///.edgetune/results.db``).

What makes a study "the same" is kept in its user attribute ``edgetune``: the model's sha256,
the space on the board, the objective, the accuracy metric and the board kind. A study of that
name with other values is refused unless ``--new-study`` (which deletes the old study's
trials from Optuna; their result records stay in the results store).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from edgetune.host.errors import BadInputError, NotFoundError
from edgetune.host.results.engine import safe_url, sqlite_path

ATTR = "edgetune"
IDENTITY = ("model_sha256", "space_fingerprint", "objective", "metric", "board_kind")
log = logging.getLogger(__name__)


def quiet_optuna() -> None:
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    import warnings
    warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")
    try:
        from optuna.exceptions import ExperimentalWarning
        warnings.filterwarnings("ignore", category=ExperimentalWarning)
    except ImportError:  # pragma: no cover
        pass


def open_storage(url: str) -> Any:
    """Optuna's RDB storage on the results database ``url`` (open the ``ResultsStore``
    first: it refuses a file that is not a database and creates the directory).

    On SQLite its engine gets the results store's settings (WAL, busy timeout, NORMAL sync)
    and begins every transaction with the write lock: Optuna reads a trial and then writes it
    in one transaction, and a deferred reader that another thread's commit overtook cannot
    upgrade (SQLite fails it at once, "database is locked", without waiting). Its first
    connections (made by Optuna's table check, without those settings) are closed here."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    from edgetune.host.results.engine import BUSY_TIMEOUT_MS, make_sqlite_safe

    quiet_optuna()
    sqlite = sqlite_path(url) is not None or url.startswith("sqlite")
    kwargs: Dict[str, Any] = ({"connect_args": {"timeout": BUSY_TIMEOUT_MS / 1000}} if sqlite
                              else {"pool_pre_ping": True})
    for attempt in range(3):
        try:
            storage = optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
            if sqlite:
                make_sqlite_safe(storage.engine, immediate=True)
                storage.engine.dispose()
            return storage
        except (SQLAlchemyError, RuntimeError) as exc:
            # two processes making Optuna's tables in a new database at once: the loser's
            # CREATE TABLE fails ("already exists"); the tables are there on the next try
            if "already exists" in str(exc) and attempt < 2:
                time.sleep(0.5)
                continue
            from edgetune.host.results.engine import connection_error
            raise connection_error(url, exc) from exc
    raise AssertionError("unreachable")  # pragma: no cover


def identity(model_sha256: str, space_fingerprint: str, objective: str, metric: str,
             kind: Dict[str, str]) -> Dict[str, Any]:
    return {"model_sha256": model_sha256, "space_fingerprint": space_fingerprint,
            "objective": objective, "metric": metric, "board_kind": dict(kind)}


def default_name(model_stem: str, ident: Dict[str, Any]) -> str:
    """``MODEL-xxxxxxxx``: the same model, space, objective and board kind give the same name,
    so running the same command again resumes."""
    text = json.dumps(ident, sort_keys=True)
    return f"{model_stem}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def find_study(storage: Any, name: str) -> Optional[Any]:
    import optuna
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None


def meta(study: Any) -> Dict[str, Any]:
    return dict(study.user_attrs.get(ATTR) or {})


def differences(old: Dict[str, Any], new: Dict[str, Any]) -> List[str]:
    what = {"model_sha256": "model", "space_fingerprint": "space", "objective": "objective",
            "metric": "accuracy metric", "board_kind": "board kind"}
    return [what[k] for k in IDENTITY if old.get(k) != new.get(k)]


def make_sampler(kind: str, seed: int) -> Any:
    import optuna

    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=8)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=6, multivariate=True,
                                      group=True, constant_liar=True)


def create_or_load(storage: Any, name: str, ident: Dict[str, Any], *, new_study: bool,
                   sampler: Any, make_meta: Any) -> Tuple[Any, Dict[str, Any], bool]:
    """(the study, its edgetune metadata, created). ``make_meta()`` -> the extra metadata of a
    new study (its ranking, run id, ...), called only when one is created."""
    import optuna

    existing = find_study(storage, name)
    if existing is not None:
        old = meta(existing)
        diff = differences(old, ident)
        if not diff:
            study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
            return study, old, False
        if not new_study:
            raise BadInputError(
                f"a study named {name!r} exists with a different {', '.join(diff)}",
                hint=f"resume it with the same model, space and boards, pick another --study "
                     f"NAME, or pass --new-study to replace it (its {len(existing.trials)} "
                     f"trials leave Optuna; their results stay in the results store)")
        optuna.delete_study(study_name=name, storage=storage)
    extra = make_meta()
    study = optuna.create_study(study_name=name, storage=storage, sampler=sampler,
                                directions=["minimize", "maximize"])
    doc = {**ident, **extra, "created_unix": time.time()}
    study.set_user_attr(ATTR, doc)
    return study, doc, True


def summaries(storage: Any) -> List[Dict[str, Any]]:
    """Every study in the database: name, trials by state, created, model, objective."""
    import optuna

    out = []
    for summary in optuna.study.get_all_study_summaries(storage, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        doc = meta(study)
        counts = count_states(study.get_trials(deepcopy=False), doc.get("max_drop"))
        answer = study.user_attrs.get("answer") or {}
        out.append({"study": summary.study_name, "model": doc.get("model"),
                    "objective": doc.get("objective"), "metric": doc.get("metric"),
                    "board_kind": doc.get("board_kind"), "run_id": doc.get("run_id"),
                    "created_unix": doc.get("created_unix"), "trials": counts,
                    "summary": answer.get("summary")})
    return out


def load_existing(storage: Any, name: str, url: str) -> Any:
    study = find_study(storage, name)
    if study is None:
        raise NotFoundError(f"no study named {name!r} in {safe_url(url)}",
                            hint="see `edgetune tune list`")
    return study


def trial_kind(trial: Any, max_drop: Optional[float]) -> str:
    """complete (feasible), infeasible (over --max-drop, or the configuration cannot run),
    pruned (stopped after the short measurement), failed (the board failed: retried),
    running."""
    from optuna.trial import TrialState

    if trial.state == TrialState.COMPLETE:
        drop = trial.user_attrs.get("drop_pts")
        if max_drop is not None and drop is not None and drop > max_drop + 1e-9:
            return "infeasible"
        return "complete"
    if trial.state == TrialState.PRUNED:
        return "pruned"
    if trial.state == TrialState.FAIL:
        return "infeasible" if trial.user_attrs.get("infeasible") else "failed"
    return trial.state.name.lower()


def count_states(trials: Sequence[Any], max_drop: Optional[float]) -> Dict[str, int]:
    counts = {"complete": 0, "pruned": 0, "failed": 0, "infeasible": 0}
    for trial in trials:
        kind = trial_kind(trial, max_drop)
        if kind in counts:
            counts[kind] += 1
    return counts
