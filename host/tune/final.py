"""The answer of a study: the best few candidates (the knee of the feasible Pareto front, the
fastest feasible trial, and the feasible trials whose one measurement came within ``NEAR`` of
the fastest's) measured again, interleaved in rounds against the baselines (FP32 with the
default session, INT8 with edgetune's defaults and the default session), so the reported gain
is not a lucky trial -- and, with ``--max-drop``, the chosen configuration is not one either:
among near-ties, the fastest single measurement is mostly the luckiest one (a small space
holds several configurations within a few % of each other: the same INT8 model sequential or
parallel, per-channel or per-tensor), so they are told apart in the rounds.

Each round measures every model once, in an order that rotates from round to round, as
separate benchmark jobs (the models run with different session options, which one comparison
job -- one ``CompareSpec.session`` -- cannot express); the per-round ratios go through the
comparison statistics of ``edgetune compare`` (``edgetune.host.results.compare``: geometric
mean and 95 % t interval on the log scale). Every job is recorded with the study's run id.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from edgetune.host.results.compare import RatioInterval, ratio_interval
from edgetune.host.tune import objective as obj
from edgetune.host.tune import study as studies
from edgetune.host.tune.space import CPU, candidate, with_shapes
from edgetune.host.tune.variants import Variant
from edgetune.protos.messages import SessionOptions

NEAR = 0.10          # feasible trials within 10 % of the fastest are measured again with it
MAX_NEAR = 2         # ... at most this many besides the fastest and the knee


@dataclass
class StudyResult:
    """What ``run_study`` returns (``as_json()`` is ``tune --json``)."""

    study: str
    run_id: str
    objective: str
    metric: str
    board_kind: Dict[str, str]
    trials: Dict[str, int]
    baselines: Dict[str, Any]
    best: Optional[Dict[str, Any]]
    pareto: List[Dict[str, Any]]
    summary: str
    target_met: bool
    max_drop: Optional[float] = None
    best_variant: Optional[Variant] = None
    best_session: Optional[SessionOptions] = None
    trial_docs: List[Dict[str, Any]] = field(default_factory=list)
    candidates: List[Dict[str, Any]] = field(default_factory=list)

    def as_json(self, with_trials: bool = False) -> Dict[str, Any]:
        doc = {"study": self.study, "run_id": self.run_id, "objective": self.objective,
               "metric": self.metric, "board_kind": self.board_kind,
               "max_drop": self.max_drop, "target_met": self.target_met,
               "trials": dict(self.trials), "baselines": self.baselines, "best": self.best,
               "candidates": self.candidates, "pareto": self.pareto, "summary": self.summary}
        if with_trials:
            doc["trial_list"] = self.trial_docs
        return doc


def trial_doc(t: Any, max_drop: Optional[float]) -> Dict[str, Any]:
    ids = t.user_attrs.get("result_ids") or {}
    return {"number": t.number, "state": studies.trial_kind(t, max_drop),
            "params": dict(t.params),
            # as measured (Optuna holds a feasible trial's accuracy as the bound: told_values)
            "values": [t.values[0], t.user_attrs.get("accuracy", t.values[1])] if t.values
            else None,
            "result_id": ids.get("full") or ids.get("short") or ids.get("eval"),
            "result_ids": ids, "board": t.user_attrs.get("board"),
            "latency_ms": t.user_attrs.get("latency_ms") or t.user_attrs.get("short_latency_ms"),
            "accuracy": t.user_attrs.get("accuracy"), "drop_pts": t.user_attrs.get("drop_pts"),
            "stage": t.user_attrs.get("stage"),
            "error": t.user_attrs.get("infeasible") or t.user_attrs.get("board_error"),
            "early_stop": t.user_attrs.get("early_stop"), "variant": t.user_attrs.get("variant")}


def _point_doc(p: obj.Point, trials: Dict[int, Any]) -> Dict[str, Any]:
    t = trials[p.number]
    return {"trial": p.number, "latency_ms": p.latency_ms, "accuracy": p.accuracy,
            "drop_pts": t.user_attrs.get("drop_pts"), "feasible": p.feasible,
            "params": dict(t.params)}


def _median_doc(runs: Sequence[Any]) -> Dict[str, float]:
    docs = [obj.latency_doc(r.result) for r in runs]
    return {k: float(statistics.median(d[k] for d in docs)) for k in docs[0]} if docs else {}


def _pct(ratio: float) -> float:
    return 100.0 * (1.0 - ratio)


def improvement(vs_int8: Optional[RatioInterval], vs_fp32: Optional[RatioInterval]
                ) -> Dict[str, Any]:
    """Latency gain: ``vs_int8_default`` in % (positive: faster), ``vs_fp32`` as a speed-up
    factor, ``ci`` the 95 % interval of the % gain over default INT8 (None: one round)."""
    ci = None
    if vs_int8 is not None and vs_int8.low is not None and vs_int8.high is not None:
        ci = [_pct(vs_int8.high), _pct(vs_int8.low)]
    fp32_ci = None
    if vs_fp32 is not None and vs_fp32.low is not None and vs_fp32.high is not None:
        fp32_ci = [1.0 / vs_fp32.high, 1.0 / vs_fp32.low]
    return {"vs_int8_default": _pct(vs_int8.ratio) if vs_int8 else None,
            "vs_fp32": 1.0 / vs_fp32.ratio if vs_fp32 else None, "ci": ci,
            "vs_fp32_ci": fp32_ci,
            "significant": vs_int8.significant if vs_int8 is not None else None,
            "rounds": vs_int8.rounds if vs_int8 is not None else 0}


def summary_line(objective: str, metric_title: str, imp: Dict[str, Any],
                 acc_delta_pts: Optional[float]) -> str:
    """"tuning improved p50 by 38% over default INT8 (95% CI 35-41%) and 3.1x over FP32;
    top-1 -0.3 pts"."""
    gain, ci = imp.get("vs_int8_default"), imp.get("ci")
    if gain is None:
        head = (f"no interleaved check of the answer (--final-rounds 0): see the trials' "
                f"{objective}")
    elif ci is not None and ci[0] <= 0 <= ci[1]:
        head = (f"tuning's {objective} is within noise of default INT8 ({gain:+.0f}%, 95% CI "
                f"{ci[0]:.0f} to {ci[1]:.0f}%)")
    elif gain >= 0:
        head = f"tuning improved {objective} by {gain:.0f}% over default INT8"
        head += f" (95% CI {ci[0]:.0f}-{ci[1]:.0f}%)" if ci else " (one round: no CI)"
    else:
        head = f"tuning's {objective} is {-gain:.0f}% slower than default INT8"
        head += f" (95% CI {ci[0]:.0f} to {ci[1]:.0f}%)" if ci else ""
    if imp.get("vs_fp32") is not None:
        head += f" and {imp['vs_fp32']:.1f}x over FP32"
    if acc_delta_pts is not None:
        head += f"; {metric_title} {acc_delta_pts:+.1f} pts"
    return head


class _Entry:
    def __init__(self, role: str, variant: Variant, session: SessionOptions,
                 trial: Optional[int] = None) -> None:
        self.role, self.variant, self.session, self.trial = role, variant, session, trial
        self.runs: List[Any] = []
        self.result_ids: List[Optional[str]] = []


def answer(ctx: Any, m: Any, boards: Sequence[Any], scheduler: Any) -> StudyResult:
    from optuna.trial import TrialState

    from edgetune.host.tune.space import Candidate, QuantParams
    from edgetune.host.tune.trials import TuneRecorder

    s = ctx.settings
    all_trials = ctx.study.get_trials(deepcopy=False)
    by_number = {t.number: t for t in all_trials}
    counts = studies.count_states(all_trials, s.max_drop)
    docs = [trial_doc(t, s.max_drop) for t in all_trials]
    points = distinct(ctx.points(), by_number)
    feasible = [p for p in points if p.feasible]
    front = obj.pareto(feasible)
    result = StudyResult(study=ctx.name, run_id=ctx.run_id, objective=ctx.objective,
                         metric=ctx.metric, board_kind=ctx.kind, trials=counts, baselines={},
                         best=None, pareto=[_point_doc(p, by_number) for p in front],
                         summary="", target_met=True, max_drop=s.max_drop, trial_docs=docs)
    if not front:
        done = [t for t in all_trials if t.state == TrialState.COMPLETE and t.values]
        if not done:
            result.target_met = False
            result.summary = ("no trial finished (see each trial's error with `edgetune tune "
                              f"show {ctx.name}`): nothing to report")
            ctx.study.set_user_attr("answer", result.as_json())
            return result
        found = min(done, key=lambda t: (t.user_attrs.get("drop_pts", 0.0), t.values[0]))
        cand = candidate(found.params)
        result.target_met = False
        result.best_variant = m.variant(cand)
        result.best_session = with_shapes(cand.session, s.input_shapes)
        result.best = _best_doc(ctx, found, result.best_variant, result.best_session,
                                found.user_attrs.get("latency_ms")
                                or found.user_attrs.get("short_latency_ms") or {}, {})
        result.summary = (f"no trial met --max-drop {s.max_drop:g} pts: the best found, trial "
                          f"{found.number}, loses {found.user_attrs.get('drop_pts', 0.0):.2f} "
                          f"pts of {ctx.metric_title}")
        ctx.study.set_user_attr("answer", result.as_json())
        return result

    knee = obj.knee(front)
    fastest = front[0]
    chosen_points = [fastest] + ([knee] if knee is not None and knee.number != fastest.number
                                 else [])
    if s.max_drop is not None:      # the answer is the fastest feasible: its near-ties too
        chosen_points += near_ties(feasible, fastest, {p.number for p in chosen_points})
    entries: List[_Entry] = []
    base_session = SessionOptions(input_shapes=tuple(sorted(s.input_shapes)))
    fp32 = ctx.cache.fp32()
    int8 = ctx.cache.get(QuantParams(calib_count=min(100, len(ctx.cache.data))), ctx.ranking)
    entries.append(_Entry("fp32", fp32, base_session))
    entries.append(_Entry("int8_default", int8, base_session))
    for p in chosen_points:
        cand = candidate(by_number[p.number].params)
        entries.append(_Entry(f"trial {p.number}", m.variant(cand),
                              with_shapes(cand.session, s.input_shapes), p.number))
    rounds = s.final_rounds
    spec = next((b for b in boards if b.name not in scheduler.retired), boards[0])
    recorder = TuneRecorder(ctx.store, label=ctx.label, run_id=ctx.run_id)
    accuracy: Dict[str, float] = {}
    if rounds:
        board, lease = ctx.open_board(spec, recorder)
        try:
            for e in entries:
                m.upload(board, e.variant)
                if e.trial is None:
                    accuracy[e.role] = m.accuracy_of(board, recorder, None, e.variant, CPU,
                                                     {"study": ctx.name, "final": e.role})["value"]
            ctx.say(f"the answer: {rounds} interleaved round(s) of "
                    f"{', '.join(e.role for e in entries)} on {spec.name}")
            for r in range(rounds):
                order = entries[r % len(entries):] + entries[:r % len(entries)]
                if r % 2:
                    order = order[::-1]
                for e in order:
                    run, rid = m.benchmark(board, recorder, None, f"final {e.role} round {r + 1}",
                                           e.variant, Candidate(None, e.session),
                                           s.full_iterations,
                                           {"study": ctx.name, "final": e.role, "round": r + 1,
                                            "trial": e.trial})
                    e.runs.append(run)
                    e.result_ids.append(rid)
        finally:
            ctx.close_board(board, lease)
    key = ctx.objective

    def lat(run: Any) -> float:
        return obj.latency_of(run.result, key)

    def interval(e: _Entry, base: _Entry) -> Optional[RatioInterval]:
        if not e.runs:
            return None
        return ratio_interval([lat(a) / lat(b) for a, b in zip(e.runs, base.runs)])

    fp32_e, int8_e = entries[0], entries[1]
    for e in (fp32_e, int8_e):
        result.baselines[e.role] = {
            "model": str(e.variant.path), "model_sha256": e.variant.sha256,
            "session": e.session.as_dict(), "latency_ms": _median_doc(e.runs),
            "accuracy": {"metric": ctx.metric, "value": accuracy.get(e.role)},
            "result_ids": e.result_ids}
    fp32_acc = accuracy.get("fp32")
    cands = []
    for e in entries[2:]:
        t = by_number[e.trial]
        imp = improvement(interval(e, int8_e), interval(e, fp32_e))
        lat_doc = _median_doc(e.runs) or t.user_attrs.get("latency_ms") or {}
        doc = _best_doc(ctx, t, e.variant, e.session, lat_doc, imp)
        doc["role"] = "fastest" if e.trial == fastest.number else "near the fastest"
        if knee is not None and e.trial == knee.number:
            doc["role"] = "fastest, knee" if e.trial == fastest.number else "knee"
        doc["final_result_ids"] = e.result_ids
        cands.append((e, doc))
    if s.max_drop is not None:
        chosen = min(cands, key=lambda c: c[1]["latency_ms"].get(key, float("inf")))
    else:
        chosen = next((c for c in cands if "knee" in c[1]["role"]), cands[0])
    e, best = chosen
    result.best, result.best_variant, result.best_session = best, e.variant, e.session
    result.candidates = [d for _, d in cands]
    acc_value = by_number[e.trial].user_attrs.get("accuracy")
    delta = None if fp32_acc is None or acc_value is None else 100 * (acc_value - fp32_acc)
    result.summary = summary_line(key, ctx.metric_title, best["improvement"], delta)
    ctx.study.set_user_attr("answer", result.as_json())
    return result


def distinct(points: Sequence[obj.Point], trials: Dict[int, Any]) -> List[obj.Point]:
    """One point per configuration: a trial that reused an earlier trial's measurement (the
    sampler proposed its params again) is the same configuration, and measuring it again in
    the closing rounds beside the first would compare a configuration with itself."""
    seen: set = set()
    out = []
    for point in sorted(points, key=lambda p: p.number):
        t = trials.get(point.number)
        key = tuple(sorted(t.params.items())) if t is not None else ("#", point.number)
        if key not in seen:
            seen.add(key)
            out.append(point)
    return out


def near_ties(feasible: Sequence[obj.Point], fastest: obj.Point, taken: Any
              ) -> List[obj.Point]:
    """Feasible trials (not in ``taken``) whose measured latency is within ``NEAR`` of the
    fastest's, fastest first, at most ``MAX_NEAR``: one measurement each cannot order them."""
    close = [p for p in feasible if p.number not in taken
             and p.latency_ms <= fastest.latency_ms * (1 + NEAR)]
    return sorted(close, key=lambda p: (p.latency_ms, p.number))[:MAX_NEAR]


def _best_doc(ctx: Any, t: Any, variant: Variant, session: SessionOptions,
              latency: Dict[str, float], imp: Dict[str, Any]) -> Dict[str, Any]:
    return {"trial": t.number, "model": str(variant.path), "model_sha256": variant.sha256,
            "session": session.as_dict(), "params": dict(t.params),
            "latency_ms": dict(latency),
            "accuracy": {"metric": ctx.metric, "value": t.user_attrs.get("accuracy"),
                         "drop_pts": t.user_attrs.get("drop_pts")},
            "improvement": imp}
