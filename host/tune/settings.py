"""``TuneSettings``: what a study runs, built once at the edge (the CLI's flags, or the
caller of ``edgetune.host.tune.run_study``), checked before anything is measured."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Tuple

from edgetune.host.errors import UsageError
from edgetune.host.quant.settings import CalibSource
from edgetune.host.tune.space import Space

OBJECTIVES = ("p50", "p90", "p95", "p99", "mean", "min")
ACCURACY = ("auto", "top1", "top5", "fidelity")
SAMPLERS = ("tpe", "nsga2", "random")


@dataclass(frozen=True)
class TuneSettings:
    """One study. ``max_drop``: accuracy points the tuned model may lose against FP32 (top-1
    0.5 = half a point; fidelity: 100 x the cosine lost), None: no constraint. ``trials``: the
    study's total (a resumed study runs the remainder). ``short_iterations`` /
    ``full_iterations``: the two latency measurements (a trial gets the full one only when
    its short one could still reach the front). ``final_rounds``: rounds of the closing
    interleaved comparison (0: none). ``queue_ahead``: trials each board holds ready behind
    the one it measures (their next job waits in the board's queue; 0: one trial at a time).
    ``quiet_uploads``: a model or dataset is sent to a board only while no latency measurement
    is queued or running there (False: uploads may overlap measurements)."""

    model: Path
    calib: Tuple[CalibSource, ...]
    dataset: Path
    db_url: str
    space: Space = field(default_factory=Space.default)
    study: Optional[str] = None
    new_study: bool = False
    max_drop: Optional[float] = None
    objective: str = "p50"
    accuracy: str = "auto"
    trials: int = 20
    timeout_s: Optional[float] = None
    out_dir: Optional[Path] = None
    sampler: str = "tpe"
    seed: int = 0
    warmup: int = 10
    short_iterations: int = 20
    full_iterations: int = 100
    prune_margin: float = 0.10
    final_rounds: int = 5
    input_shapes: Tuple[Tuple[str, Tuple[int, ...]], ...] = ()
    cache_dir: Optional[Path] = None
    lease: bool = True
    lease_ttl_s: float = 120.0
    label: str = ""
    queue_ahead: int = 1
    quiet_uploads: bool = True

    def check(self) -> None:
        """The checks that cost nothing (UsageError)."""
        if self.objective not in OBJECTIVES:
            raise UsageError(f"--objective {self.objective!r} is unknown",
                             hint=f"choose one of: {', '.join(OBJECTIVES)}")
        if self.accuracy not in ACCURACY:
            raise UsageError(f"--accuracy {self.accuracy!r} is unknown",
                             hint=f"choose one of: {', '.join(ACCURACY)}")
        if self.sampler not in SAMPLERS:
            raise UsageError(f"--sampler {self.sampler!r} is unknown",
                             hint=f"choose one of: {', '.join(SAMPLERS)}")
        if self.max_drop is not None and not (math.isfinite(self.max_drop)
                                              and 0 <= self.max_drop <= 100):
            raise UsageError(f"--max-drop must be between 0 and 100 points (got {self.max_drop})")
        if not 1 <= self.trials <= 100_000:
            raise UsageError(f"--trials must be between 1 and 100000 (got {self.trials})")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise UsageError(f"--timeout must be a positive number of seconds "
                             f"(got {self.timeout_s})")
        for name, value in (("short", self.short_iterations), ("full", self.full_iterations)):
            if not 1 <= value <= 1_000_000:
                raise UsageError(f"the {name} measurement needs 1 to 1000000 iterations "
                                 f"(got {value})")
        if self.short_iterations > self.full_iterations:
            raise UsageError("the short measurement cannot be longer than the full one")
        if not 0 <= self.queue_ahead <= 4:
            raise UsageError(f"queue_ahead must be between 0 and 4 (got {self.queue_ahead})")
        if not 0 <= self.final_rounds <= 100:
            raise UsageError(f"--final-rounds must be between 0 and 100 (got {self.final_rounds})")
        if not self.calib:
            raise UsageError("no calibration data", hint="give --calib SOURCE (what "
                                                         "`edgetune quantize --calib` takes)")
        if not Path(self.model).is_file():
            from edgetune.host.errors import NotFoundError
            raise NotFoundError(f"model {self.model} does not exist", hint="check the path")
        if self.study is not None and not self.study.strip():
            raise UsageError("--study needs a name")
