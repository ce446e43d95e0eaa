"""The comparison statistics (host/results/compare.py) on synthetic round data: the t interval
of the log ratios, its coverage, significance, the sentence, the change and the table."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgetune.host.results import compare
from edgetune.host.results.records import ModelRef, Record


def test_t_quantiles_match_the_tables() -> None:
    assert compare.t975(1) == 12.706 and compare.t975(4) == 2.776
    assert compare.t975(30) == 2.042
    assert compare.t975(40) == pytest.approx(2.021, abs=0.001)
    assert compare.t975(120) == pytest.approx(1.980, abs=0.001)
    with pytest.raises(ValueError):
        compare.t975(0)


def test_interval_by_hand() -> None:
    ratios = [0.30, 0.31, 0.32, 0.31, 0.30]
    iv = compare.ratio_interval(ratios)
    logs = [math.log(r) for r in ratios]
    mean = sum(logs) / 5
    sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / 4)
    half = 2.776 * sd / math.sqrt(5)
    assert iv.ratio == pytest.approx(math.exp(mean))
    assert (iv.low, iv.high) == (pytest.approx(math.exp(mean - half)),
                                 pytest.approx(math.exp(mean + half)))
    assert iv.significant and iv.rounds == 5
    assert compare.verdict(iv) == f"B is 0.31x A, 95% CI {iv.low:.2f}-{iv.high:.2f}x"


def test_within_noise_and_one_round() -> None:
    iv = compare.ratio_interval([0.98, 1.03, 1.01, 0.99, 1.02])
    assert not iv.significant and iv.low < 1 < iv.high
    assert compare.verdict(iv) == f"within noise (95% CI {iv.low:.2f}-{iv.high:.2f}x)"
    one = compare.ratio_interval([1.2])
    assert one.low is None and not one.significant and one.as_list() is None
    assert "no confidence interval" in compare.verdict(one)
    with pytest.raises(ValueError):
        compare.ratio_interval([1.0, 0.0])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.05, 20.0), min_size=2, max_size=30),
       st.floats(0.01, 100.0))
def test_interval_holds_the_ratio_and_scales(ratios: list, scale: float) -> None:
    iv = compare.ratio_interval(ratios)
    assert iv.low <= iv.ratio * (1 + 1e-9) and iv.ratio <= iv.high * (1 + 1e-9)
    assert min(ratios) * (1 - 1e-9) <= iv.ratio <= max(ratios) * (1 + 1e-9)
    scaled = compare.ratio_interval([r * scale for r in ratios])   # B k times slower: all x k
    assert scaled.ratio == pytest.approx(iv.ratio * scale, rel=1e-6)
    assert scaled.low == pytest.approx(iv.low * scale, rel=1e-6)
    inverse = compare.ratio_interval([1 / r for r in ratios])     # A and B swapped
    assert inverse.low == pytest.approx(1 / iv.high, rel=1e-6)
    assert inverse.significant == iv.significant


def test_coverage_and_power_on_simulated_rounds() -> None:
    """Rounds with 3 % log-normal noise: the same model is 'within noise' about 95 % of the
    time, a model 20 % slower is found slower nearly always (5 rounds)."""
    rng = random.Random(1)

    def runs(true_ratio: float, n: int = 4000) -> list:
        return [compare.ratio_interval([true_ratio * math.exp(rng.gauss(0, 0.03))
                                        for _ in range(5)]) for _ in range(n)]

    same = runs(1.0)
    covered = sum(1 for iv in same if iv.low <= 1.0 <= iv.high) / len(same)
    assert 0.935 <= covered <= 0.965
    slower = runs(1.2)
    assert sum(1 for iv in slower if iv.significant and iv.ratio > 1) / len(slower) > 0.99


def _record(size: int, p50: float, top1: float, cosine: float, ips: float) -> Record:
    return Record(kind="compare", model=ModelRef(sha256="0" * 64, size_bytes=size),
                  metrics={"latency_ms": {"p50": p50, "p90": p50 * 1.2}, "top1": top1,
                           "cosine": cosine, "throughput_ips": ips})


def test_change_and_table() -> None:
    a, b = _record(1024 * 100, 2.0, 0.99, 1.0, 500), _record(1024 * 25, 0.62, 0.985, 0.995, 1600)
    iv = compare.ratio_interval([0.30, 0.31, 0.32])
    c = compare.change(a, b, iv)
    assert c["size_ratio"] == 0.25 and c["latency_p50_ratio"] == iv.ratio
    assert c["latency_p50_ratio_ci"] == [iv.low, iv.high] and c["significant"] is True
    assert c["top1_delta_pts"] == pytest.approx(-0.5)
    plain = compare.change(a, b)                       # without rounds: the records' ratio
    assert plain["latency_p50_ratio"] == pytest.approx(0.31) and plain["significant"] is None
    rows = {r[0]: r[1:] for r in compare.table_rows(a, b, c)}
    assert rows["size (KiB)"] == ("100.0", "25.0", "0.25x (-75%)")
    assert rows["top-1 accuracy"] == ("99.00%", "98.50%", "-0.50 pts")
    assert rows["fidelity: cosine vs reference"] == ("1.0000", "0.9950", "-0.0050")
    assert rows["p50 latency (ms)"][2] == (f"{iv.ratio:.2f}x (-69%), 95% CI "
                                          f"{iv.low:.2f}-{iv.high:.2f}x")
    assert rows["throughput (inf/s)"] == ("500", "1,600", "3.20x (+220%)")
    assert compare.ratio_text(0.999) == "1.00x (+0%)"  # never "-0%"
