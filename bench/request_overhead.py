"""Request overhead: how much time a benchmark request spends outside the measured work.

    python bench/request_overhead.py [--requests 20] [--iterations 20] [--json]

A tiny model (host.builders.tiny_cnn, fixed batch 1, well under a millisecond per run) is
uploaded once. Then, over mutual TLS on loopback, ``--requests`` benchmark requests are made,
one at a time, each with ``AgentClient.run`` (SubmitJob, then WatchJob until the final event),
and for each:

    wall      = client wall time from before SubmitJob until the final event is in hand
    work      = load_ms + first_run_ms + warmup x mean_ms + measured_s x 1000
                (agent-reported: session creation, the first run, the warm-up runs -- the
                agent does not report their time, so warmup x the measured mean estimates it --
                and the measured loop's wall time)
    overhead  = wall - work

The target: median overhead < 50 ms. The first request is reported apart (``cold``) and not
counted. The agent's own job timestamps split the overhead into submit (the SubmitJob
round trip), queue (created -> started), runner (started -> finished, minus the work) and
delivery (finished -> the client has the final event); both sides read the same clock on
loopback.

Baselines measured side by side: the GetInfo round trip (the floor of any call), and the same
work done in this process (session creation, first run, warm-up, measured loop) with its wall
time, so ``agent wall / in-process wall`` says what going through the agent costs in total.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (check, connect, finish, local_agent, log_progress,  # noqa: E402
                          machine, make_pki, median, percentile)

TARGET_MS = 50.0


def one_request(client: Any, sha256: str, iterations: int, warmup: int) -> Dict[str, float]:
    from edgetune.protos.messages import BenchmarkSpec, JobState, SessionOptions

    spec = BenchmarkSpec(model_sha256=sha256, warmup=warmup, iterations=iterations,
                         session=SessionOptions(intra_op_threads=1, inter_op_threads=1))
    t_start = time.time()
    start = time.perf_counter()
    job, _ = client.submit(spec, label="bench request_overhead")
    submitted = time.perf_counter()
    job = client.wait(job.id)
    wall_ms = (time.perf_counter() - start) * 1e3
    t_end = time.time()
    if job.state is not JobState.SUCCEEDED or job.result is None:
        raise RuntimeError(f"the benchmark job ended {job.state.value}: {job.error}")
    res = job.result
    warmup_ms = res.warmup * res.latency.mean_ms
    measured_ms = res.measured_s * 1e3
    work_ms = res.load_ms + res.first_run_ms + warmup_ms + measured_ms
    runner_ms = (job.finished_unix - job.started_unix) * 1e3
    return {
        "wall_ms": wall_ms, "load_ms": res.load_ms, "first_run_ms": res.first_run_ms,
        "warmup_est_ms": warmup_ms, "measured_ms": measured_ms, "work_ms": work_ms,
        "overhead_ms": wall_ms - work_ms,
        "submit_ms": (submitted - start) * 1e3,
        "queue_ms": (job.started_unix - job.created_unix) * 1e3,
        "runner_extra_ms": runner_ms - work_ms,
        "delivery_ms": (t_end - job.finished_unix) * 1e3,
        "agent_span_ms": (job.finished_unix - job.created_unix) * 1e3,
        "unaccounted_ms": wall_ms - (t_end - t_start) * 1e3,  # clock check, ~0
    }


def in_process_work(model_path: Path, iterations: int, warmup: int) -> float:
    """Wall ms of the same work in this process: session, first run, warm-up, measured loop."""
    import numpy as np
    import onnxruntime as ort

    start = time.perf_counter()
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    session = ort.InferenceSession(str(model_path), sess_options=so,
                                   providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {i.name: rng.standard_normal(i.shape).astype(np.float32)
             for i in session.get_inputs()}
    names = [o.name for o in session.get_outputs()]
    session.run(names, feeds)
    for _ in range(warmup):
        session.run(names, feeds)
    clock = time.perf_counter_ns
    samples = []
    for _ in range(iterations):
        t0 = clock()
        session.run(names, feeds)
        samples.append(clock() - t0)
    return (time.perf_counter() - start) * 1e3


def get_info_ms(client: Any) -> float:
    start = time.perf_counter()
    client.info()
    return (time.perf_counter() - start) * 1e3


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--iterations", type=int, default=20, help="measured runs per request")
    parser.add_argument("--warmup", type=int, default=5, help="warm-up runs per request")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if min(args.requests, args.iterations, args.warmup) < 1:
        parser.error("--requests, --iterations and --warmup must be at least 1")

    from edgetune.host import builders
    from edgetune.protos.messages import BlobKind

    requests: List[Dict[str, float]] = []
    info_ms: List[float] = []
    local_ms: List[float] = []
    with tempfile.TemporaryDirectory(prefix="edgetune-bench-") as tmp:
        d = Path(tmp)
        pki = make_pki(d / "pki")
        model_path = builders.save(builders.tiny_cnn(dynamic_batch=False), d / "tiny.onnx")
        with local_agent(pki, d / "store") as agent, connect(agent.address, pki) as client:
            sha256 = client.upload(model_path, BlobKind.MODEL).blob.sha256
            get_info_ms(client)
            cold = one_request(client, sha256, args.iterations, args.warmup)
            in_process_work(model_path, args.iterations, args.warmup)      # warm this side too
            for i in range(args.requests):
                requests.append(one_request(client, sha256, args.iterations, args.warmup))
                info_ms.append(get_info_ms(client))
                local_ms.append(in_process_work(model_path, args.iterations, args.warmup))
                log_progress(args.json, f"request {i + 1}/{args.requests}: wall "
                             f"{requests[-1]['wall_ms']:.1f} ms, overhead "
                             f"{requests[-1]['overhead_ms']:.1f} ms")

    def med(key: str) -> float:
        return round(median(r[key] for r in requests), 3)

    overheads = [r["overhead_ms"] for r in requests]
    keys = list(requests[0])
    result = {
        "benchmark": "request_overhead", "model": "tiny_cnn (1x3x16x16)",
        "requests": args.requests, "iterations": args.iterations, "warmup": args.warmup,
        "subtracted": "load_ms + first_run_ms + warmup * latency.mean_ms + measured_s * 1000",
        "median_ms": {k: med(k) for k in keys},
        "overhead_ms": {"median": round(median(overheads), 3),
                        "p90": round(percentile(overheads, 90), 3),
                        "max": round(max(overheads), 3)},
        "cold_first_request_ms": {k: round(v, 3) for k, v in cold.items()},
        "baseline_ms": {"get_info_round_trip": round(median(info_ms), 3),
                        "in_process_same_work_wall": round(median(local_ms), 3)},
        "ratio_agent_wall_vs_in_process_wall": round(med("wall_ms") / median(local_ms), 2),
        "raw": [{k: round(v, 3) for k, v in r.items()} for r in requests],
        "checks": [check("median overhead ms", median(overheads), "<", TARGET_MS)],
        "machine": machine(),
    }
    m = result["median_ms"]
    lines = [
        f"benchmark request overhead, tiny_cnn, {args.iterations} iterations after "
        f"{args.warmup} warm-up, median of {args.requests} requests (ms):",
        f"  client wall (submit + watch to the result)  {m['wall_ms']:8.2f}",
        f"  - load {m['load_ms']:.2f} - first run {m['first_run_ms']:.2f} - warm-up (est.) "
        f"{m['warmup_est_ms']:.2f} - measured {m['measured_ms']:.2f}",
        f"  = overhead                                  {result['overhead_ms']['median']:8.2f}"
        f"  (p90 {result['overhead_ms']['p90']:.2f}, max {result['overhead_ms']['max']:.2f})",
        f"    of which: submit RPC {m['submit_ms']:.2f}, queue {m['queue_ms']:.2f}, runner "
        f"extra {m['runner_extra_ms']:.2f}, delivery {m['delivery_ms']:.2f}",
        f"  cold first request: wall {cold['wall_ms']:.2f}, overhead {cold['overhead_ms']:.2f}",
        f"  baseline: GetInfo round trip {result['baseline_ms']['get_info_round_trip']:.2f}; "
        f"same work in-process {result['baseline_ms']['in_process_same_work_wall']:.2f} "
        f"(agent wall / in-process wall = {result['ratio_agent_wall_vs_in_process_wall']:.2f})",
    ]
    return finish(result, args.json, lines)


if __name__ == "__main__":
    sys.exit(main())
