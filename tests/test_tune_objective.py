"""The tuner's judgement without a board: the early stop compares a lower bound of a trial's
latency (the short measurement's fastest run) with the front, and the sampler a study gets."""

from __future__ import annotations

import pytest

from edgetune.host.tune import objective as obj
from edgetune.protos.messages import BenchmarkResult, LatencyStats


def short_result(min_ms: float, p50_ms: float) -> BenchmarkResult:
    stats = LatencyStats(min_ms=min_ms, mean_ms=p50_ms, std_ms=0.1, p50_ms=p50_ms,
                         p90_ms=p50_ms * 1.2, p95_ms=p50_ms * 1.3, p99_ms=p50_ms * 1.5,
                         max_ms=p50_ms * 2)
    return BenchmarkResult(latency=stats, throughput_ips=1000 / p50_ms, load_ms=1.0,
                           first_run_ms=p50_ms, peak_rss_mb=10.0, iterations=20, warmup=10,
                           measured_s=0.02 * p50_ms)


def test_a_short_window_slowed_by_load_does_not_stop_a_configuration_as_fast_as_the_best(
) -> None:
    # the best so far: 1.00 ms. A configuration as fast, measured while something else ran:
    # its short p50 is 1.25 ms (the p50 rule stopped it), its fastest run 1.01 ms
    front = [obj.Point(0, 1.00, 0.99, True)]
    noisy = short_result(min_ms=1.01, p50_ms=1.25)
    assert obj.short_bound(noisy) == 1.01
    assert obj.dominating(front, obj.short_bound(noisy), 0.99, 0.10) is None


def test_a_configuration_slower_in_every_run_is_stopped() -> None:
    front = [obj.Point(0, 1.00, 0.99, True), obj.Point(1, 0.90, 0.995, True)]
    slow = short_result(min_ms=1.30, p50_ms=1.40)
    better = obj.dominating(front, obj.short_bound(slow), 0.99, 0.10)
    assert better is not None and better.number == 1          # the fastest that dominates


def test_a_more_accurate_configuration_is_not_stopped_by_a_less_accurate_one() -> None:
    front = [obj.Point(0, 1.00, 0.95, True)]
    slow = short_result(min_ms=1.50, p50_ms=1.60)
    assert obj.dominating(front, obj.short_bound(slow), 0.99, 0.10) is None
    # an infeasible point stops nothing
    assert obj.dominating([obj.Point(0, 0.5, 1.0, False)], 1.5, 0.99, 0.10) is None


def test_the_answer_measures_the_near_ties_of_the_fastest_again() -> None:
    from edgetune.host.tune.final import MAX_NEAR, NEAR, near_ties

    fastest = obj.Point(3, 1.00, 0.99, True)
    points = [fastest, obj.Point(1, 1.02, 0.98, True), obj.Point(2, 1.0 + NEAR / 2, 0.999, True),
              obj.Point(4, 1.01, 0.999, False),           # infeasible: not a candidate
              obj.Point(5, 1.5, 1.0, True),               # clearly slower
              obj.Point(6, 1.03, 0.97, True), obj.Point(7, 1.04, 0.97, True)]
    feasible = [p for p in points if p.feasible]
    ties = near_ties(feasible, fastest, {3})
    assert [p.number for p in ties] == [1, 6][:MAX_NEAR]
    assert all(p.latency_ms <= 1.0 * (1 + NEAR) for p in ties)
    assert near_ties(feasible, fastest, {3, 1, 6, 7, 2}) == []


def test_feasible_trials_are_told_the_bound_and_infeasible_ones_their_accuracy() -> None:
    assert obj.told_values(2.0, 0.99, 0.0, 1.0) == pytest.approx([2.0, 0.98])   # FP32
    assert obj.told_values(1.0, 0.985, 0.5, 1.0) == pytest.approx([1.0, 0.98])  # within
    assert obj.told_values(1.0, 0.95, 4.0, 1.0) == [1.0, 0.95]                   # over it
    assert obj.told_values(1.0, 0.95, 4.0, None) == [1.0, 0.95]                  # no bound
