"""Properties that must hold for any value, checked with hypothesis:

- every wire dataclass survives the wire (``as_pb2`` -> bytes -> ``from_pb2``) and the job
  database's JSON (``as_dict`` -> JSON text -> ``from_dict``) unchanged;
- the agent's latency statistics are numpy's percentiles (and in order) for any samples;
- the canonical encoding of signed results is deterministic: the same bytes whatever the key
  order, and decoding then encoding again gives those bytes back.
"""

from __future__ import annotations

import json
import random
from typing import Any, Dict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgetune.certs.signing import (SignatureError, canonical_json, decode_payload,
                                    encode_payload, samples_digest)
from edgetune.device.runner import latency_stats
from edgetune.protos.messages import (EXECUTION_MODES, GRAPH_OPT_LEVELS, BenchmarkResult,
                                      BenchmarkSpec, CompareResult, CompareRound, CompareSpec,
                                      EvaluateResult, EvaluateSpec, Job, JobState, LatencyStats,
                                      SessionOptions, SignedResult, ThermalGate, ThermalReport)

text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
i32 = st.integers(-(2 ** 31), 2 ** 31 - 1)
i64 = st.integers(-(2 ** 63), 2 ** 63 - 1)
u64 = st.integers(0, 2 ** 64 - 1)
f64 = st.floats(allow_nan=False, allow_infinity=False)
positive = st.floats(min_value=1e-6, max_value=1e6, allow_nan=False)


def sorted_pairs(keys: Any, values: Any, max_size: int = 4) -> Any:
    return st.dictionaries(keys, values, max_size=max_size).map(
        lambda d: tuple(sorted(d.items())))


sessions = st.builds(
    SessionOptions, providers=st.tuples(text) | st.just(()), intra_op_threads=i32,
    inter_op_threads=i32, graph_optimization=st.sampled_from(GRAPH_OPT_LEVELS),
    execution_mode=st.sampled_from(EXECUTION_MODES),
    input_shapes=sorted_pairs(text, st.lists(i64, max_size=5).map(tuple)))
gates = st.none() | st.builds(ThermalGate, max_temp_c=positive, max_wait_s=st.floats(0, 1e4))
benchmark_specs = st.builds(
    BenchmarkSpec, model_sha256=text, session=sessions, warmup=i32, iterations=i32,
    min_duration_s=f64, seed=u64, dataset_sha256=text, return_samples=st.booleans(),
    free_batch_dims=sorted_pairs(text, text), thermal=gates)
evaluate_specs = st.builds(
    EvaluateSpec, model_sha256=text, dataset_sha256=text, session=sessions,
    metrics=st.lists(text, max_size=3).map(tuple), batch_size=i32)
compare_specs = st.builds(
    CompareSpec, model_a_sha256=text, model_b_sha256=text, session=sessions, rounds=i32,
    warmup=i32, iterations=i32, min_duration_s=f64, seed=u64, return_samples=st.booleans(),
    dataset_sha256=text, metrics=st.lists(text, max_size=3).map(tuple), thermal=gates,
    free_batch_dims=sorted_pairs(text, text))
latencies = st.builds(LatencyStats, *([f64] * 8))
benchmark_results = st.builds(
    BenchmarkResult, latency=latencies, throughput_ips=f64, load_ms=f64, first_run_ms=f64,
    peak_rss_mb=f64, iterations=i32, warmup=i32, measured_s=f64,
    samples_ms=st.lists(f64, max_size=6).map(tuple), cpu_freq_mhz=f64, temperature_c=f64,
    providers=st.lists(text, max_size=2).map(tuple),
    thermal=st.none() | st.builds(ThermalReport, max_temp_c=f64, no_sensor=st.booleans(),
                                  waited_s=f64, start_temp_c=f64),
    load_avg=st.lists(f64, max_size=3).map(tuple))
evaluate_results = st.builds(EvaluateResult, samples=i32, metrics=sorted_pairs(text, f64),
                             load_ms=f64, elapsed_s=f64)
compare_results = st.builds(
    CompareResult, rounds=st.lists(st.builds(CompareRound, a=benchmark_results,
                                             b=benchmark_results, b_first=st.booleans()),
                                   max_size=3).map(tuple),
    evaluate_a=st.none() | evaluate_results, evaluate_b=st.none() | evaluate_results,
    peak_rss_mb=f64)
signed = st.none() | st.builds(SignedResult, payload=st.binary(max_size=40),
                               signature=st.binary(max_size=40), algorithm=text,
                               agent_cert_pem=text)


@st.composite
def jobs(draw: Any) -> Job:
    spec, result = draw(st.sampled_from([(benchmark_specs, benchmark_results),
                                         (evaluate_specs, evaluate_results),
                                         (compare_specs, compare_results)]))
    return Job(id=draw(text), state=draw(st.sampled_from(list(JobState))), spec=draw(spec),
               label=draw(text), created_unix=draw(f64), started_unix=draw(f64),
               finished_unix=draw(f64), error=draw(text), client=draw(text),
               result=draw(st.none() | result), signed=draw(signed))


WIRE = {"SessionOptions": sessions, "BenchmarkSpec": benchmark_specs,
        "EvaluateSpec": evaluate_specs, "CompareSpec": compare_specs,
        "BenchmarkResult": benchmark_results, "EvaluateResult": evaluate_results,
        "CompareResult": compare_results, "Job": jobs()}


@pytest.mark.parametrize("name", sorted(WIRE))
def test_wire_dataclasses_survive_the_wire(name: str) -> None:
    @settings(max_examples=150, deadline=None)
    @given(WIRE[name])
    def check(value: Any) -> None:
        msg = value.as_pb2()
        again = type(value).from_pb2(type(msg).FromString(msg.SerializeToString()))
        assert again == value

    check()


@pytest.mark.parametrize("name", sorted(set(WIRE) - {"SessionOptions"}))
def test_wire_dataclasses_survive_the_job_database(name: str) -> None:
    """The agent's job database keeps jobs as JSON text (``as_dict``)."""
    @settings(max_examples=150, deadline=None)
    @given(WIRE[name])
    def check(value: Any) -> None:
        again = type(value).from_dict(json.loads(json.dumps(value.as_dict())))
        assert again == value

    check()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(1, 10 ** 12), min_size=1, max_size=300))
def test_latency_statistics_are_numpys_percentiles(samples_ns: Any) -> None:
    stats = latency_stats(samples_ns)
    ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
    expected = np.percentile(ms, [50, 90, 95, 99])
    assert [stats.p50_ms, stats.p90_ms, stats.p95_ms, stats.p99_ms] == \
        pytest.approx(list(expected), rel=1e-12)
    assert stats.min_ms == ms.min() and stats.max_ms == ms.max()
    assert stats.mean_ms == pytest.approx(float(ms.mean()), rel=1e-12)
    assert stats.std_ms == pytest.approx(float(ms.std()), rel=1e-9, abs=1e-12)
    ordered = [stats.min_ms, stats.p50_ms, stats.p90_ms, stats.p95_ms, stats.p99_ms,
               stats.max_ms]
    assert all(a <= b * (1 + 1e-12) for a, b in zip(ordered, ordered[1:]))
    assert stats.min_ms * (1 - 1e-12) <= stats.mean_ms <= stats.max_ms * (1 + 1e-12)


json_docs = st.recursive(
    st.none() | st.booleans() | st.integers(-(2 ** 53), 2 ** 53) | f64 | text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=20)


def _shuffled(doc: Any, rng: random.Random) -> Any:
    if isinstance(doc, dict):
        items = list(doc.items())
        rng.shuffle(items)
        return {k: _shuffled(v, rng) for k, v in items}
    if isinstance(doc, list):
        return [_shuffled(v, rng) for v in doc]
    return doc


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(text, json_docs, max_size=6), st.integers(0, 2 ** 32))
def test_the_canonical_encoding_is_deterministic(doc: Dict[str, Any], seed: int) -> None:
    encoded = canonical_json(doc)
    assert canonical_json(_shuffled(doc, random.Random(seed))) == encoded
    assert encoded.decode("ascii")                       # ASCII only, whatever the text
    payload = encode_payload(doc)
    assert encode_payload(decode_payload(payload)) == payload


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(text, json_docs, min_size=1, max_size=4))
def test_a_payload_not_in_canonical_form_is_refused(doc: Dict[str, Any]) -> None:
    payload = encode_payload(doc)
    spaced = payload[:-1] + b" " + payload[-1:]          # same document, other bytes
    with pytest.raises(SignatureError):
        decode_payload(spaced)


@settings(max_examples=200, deadline=None)
@given(st.lists(f64, max_size=50))
def test_the_samples_digest_depends_only_on_the_values(samples: Any) -> None:
    assert samples_digest(samples) == samples_digest(tuple(samples))
    assert samples_digest(samples) == samples_digest([float(x) for x in samples])
