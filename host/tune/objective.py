"""What a trial is judged by: the latency statistic (``--objective``), the accuracy metric
(top-1/top-5 against labels, else fidelity against the FP32 model's outputs), the accuracy
drop against FP32 in points (the ``--max-drop`` constraint), the early-stopping rule, and the
Pareto front with its knee.

Early stopping (successive halving with two rungs): every trial first gets a short latency
measurement; it gets the full one only if no finished feasible trial is at least as accurate
and faster than the short measurement's *fastest run* by more than ``prune_margin`` (then it
cannot reach the front). The fastest run, not the short p50: load on the board only ever
slows runs down, so the minimum of a short window is a lower bound of any latency statistic
of the configuration, while the p50 of 20 runs taken while something else ran can be 10 %+
above the configuration's true p50 -- the rule then stopped configurations as good as the
best (replayed on measured ground truth: bench/tune_efficiency.py). A trial whose accuracy
already breaks the constraint stops after the short one too.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from edgetune.host.errors import BadInputError

RESULT_KEY = {"top1": "top1", "top5": "top5", "fidelity": "cosine"}
METRIC_TITLE = {"top1": "top-1", "top5": "top-5", "fidelity": "cosine"}


def resolve_accuracy(wanted: str, dataset: Path) -> str:
    """top1/top5/fidelity (``auto``: top1 with labels, else fidelity); BadInputError for a
    label metric on a dataset without labels."""
    from edgetune.host.quant.evaluate import dataset_keys, resolve_metric

    keys = dataset_keys(Path(dataset))
    try:
        return resolve_metric(wanted, keys, Path(dataset))
    except BadInputError as exc:
        raise BadInputError(exc.message.replace("metric", "the accuracy objective", 1),
                            hint="add integer class labels to the dataset, or pass --accuracy "
                                 "fidelity (agreement with the FP32 model's outputs)") from None


def dataset_for(metric: str, dataset: Path, model: Path, workdir: Path) -> Path:
    """The dataset to upload: as given, or for fidelity with the FP32 model's outputs added
    as references (computed here once, as ``quantize --max-drop`` does)."""
    if metric != "fidelity":
        return Path(dataset)
    from edgetune.host.quant.evaluate import run_on_dataset

    _, names, outputs, _ = run_on_dataset(Path(model), Path(dataset))
    with np.load(dataset, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files if k not in names}
    arrays.update(outputs)
    target = Path(workdir) / f"{Path(dataset).stem}.with-reference.npz"
    np.savez(target, **arrays)
    return target


def accuracy_value(metrics: Dict[str, float], metric: str) -> float:
    key = RESULT_KEY[metric]
    if key in metrics:
        return float(metrics[key])
    per_output = [v for k, v in metrics.items() if k.endswith("/" + key)]
    if per_output:
        return float(np.mean(per_output))
    raise BadInputError(f"the board returned no {key!r} metric (it returned: "
                        f"{', '.join(sorted(metrics)) or 'nothing'})")


def drop_pts(baseline: float, value: float) -> float:
    """Points lost against FP32 (positive: worse)."""
    return 100.0 * (baseline - value)


def told_values(latency: float, accuracy: float, drop: float,
                max_drop: Optional[float]) -> List[float]:
    """The objectives told to Optuna. With ``--max-drop``, a feasible trial's accuracy is told
    as the bound itself (FP32's minus ``max_drop`` points): inside the bound accuracy no
    longer ranks trials, so the sampler spends its budget on latency instead of on the
    accurate end of the front (FP32, which no INT8 variant beats and which the constraint
    makes pointless). In a simulation on bench/tune_efficiency.py's measured table this
    raised TPE's share of seeds within 3 % of the best from 57 % to 70 %. The trial's own
    accuracy stays in its ``accuracy`` user attribute, which reports use."""
    if max_drop is None or drop > max_drop:
        return [latency, accuracy]
    return [latency, accuracy - (max_drop - drop) / 100.0]


def latency_of(result: Any, objective: str) -> float:
    return float(getattr(result.latency, f"{objective}_ms"))


def short_bound(result: Any) -> float:
    """What the early stop compares with the front: the short measurement's fastest run, a
    lower bound of the configuration's latency whatever the objective statistic."""
    return float(result.latency.min_ms)


def latency_doc(result: Any) -> Dict[str, float]:
    from edgetune.host.render import LATENCY_KEYS
    return {k: float(getattr(result.latency, f"{k}_ms")) for k in LATENCY_KEYS}


@dataclass(frozen=True)
class Point:
    """A finished trial on the latency/accuracy plane."""

    number: int
    latency_ms: float
    accuracy: float
    feasible: bool


def dominating(points: Sequence[Point], latency: float, accuracy: float,
               margin: float) -> Optional[Point]:
    """A feasible point at least as accurate and faster than ``latency`` (a lower bound of
    the trial's latency: ``short_bound``) by more than ``margin`` (a fraction): the trial
    cannot reach the front."""
    best = None
    for p in points:
        if p.feasible and p.accuracy >= accuracy - 1e-12 and p.latency_ms < latency * (1 - margin):
            if best is None or p.latency_ms < best.latency_ms:
                best = p
    return best


def pareto(points: Sequence[Point]) -> List[Point]:
    """The non-dominated points (lower latency, higher accuracy), fastest first."""
    front: List[Point] = []
    for p in sorted(points, key=lambda q: (q.latency_ms, -q.accuracy, q.number)):
        if not front or p.accuracy > front[-1].accuracy + 1e-12:
            front.append(p)
    return front


def knee(front: Sequence[Point]) -> Optional[Point]:
    """The point of the front farthest from the line joining its two ends (normalized
    axes): the best trade. With one or two points: the most accurate."""
    if not front:
        return None
    if len(front) <= 2:
        return max(front, key=lambda p: (p.accuracy, -p.latency_ms))
    lat = np.array([p.latency_ms for p in front])
    acc = np.array([p.accuracy for p in front])
    x = (lat - lat.min()) / (np.ptp(lat) or 1.0)
    y = (acc - acc.min()) / (np.ptp(acc) or 1.0)
    (x0, y0), (x1, y1) = (x[0], y[0]), (x[-1], y[-1])
    dist = np.abs((y1 - y0) * x - (x1 - x0) * y + x1 * y0 - y1 * x0) / np.hypot(x1 - x0, y1 - y0)
    return front[int(np.argmax(dist))]


def workdir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="edgetune-tune-")


__all__ = ["METRIC_TITLE", "Point", "accuracy_value", "dataset_for", "dominating", "drop_pts",
           "knee", "latency_doc", "latency_of", "pareto", "resolve_accuracy", "short_bound",
           "told_values"]
