"""Per-operator profiles on the board (``bench --profile``).

After the ordinary measurement, a second session of the same model (same options) runs the
same inputs with onnxruntime's profiler on: a short warm-up, then ``iterations`` timed runs.
Only node events inside those timed runs count (the trace's ``model_run`` windows), summed
per node of the optimized graph: its op type, the provider that ran it, calls, total and
mean time. The profiled runs' own p50 is returned too, so the profiler's overhead is stated
beside the unprofiled p50 rather than hidden in it.
"""

from __future__ import annotations

import bisect
import time
from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np

from edgetune.device.providers import Placement, create_session
from edgetune.protos.messages import NodeTime, OperatorProfile, SessionOptions

MAX_PROFILED_RUNS = 200     # the trace grows with runs x nodes; 200 runs give stable means
PROFILE_WARMUP = 3
_KERNEL = "_kernel_time"

RunFn = Callable[[Any, List[str], Dict[str, np.ndarray]], Any]


def profile_model(model_path: Any, options: SessionOptions, names: List[str],
                  feeds: Sequence[Dict[str, np.ndarray]], iterations: int, run: RunFn,
                  check: Callable[[], None]) -> OperatorProfile:
    """Profile ``iterations`` runs (at most MAX_PROFILED_RUNS) of a fresh session; ``run``
    runs one (the runner's wrapper), ``check`` raises when the job is cancelled."""
    count = max(1, min(iterations, MAX_PROFILED_RUNS))
    trace = Placement()
    session, _ = create_session(model_path, options, trace)
    try:
        nf = len(feeds)
        for i in range(PROFILE_WARMUP):
            check()
            run(session, names, feeds[i % nf])
        samples = []
        for i in range(count):
            check()
            start = time.perf_counter_ns()
            run(session, names, feeds[i % nf])
            samples.append(time.perf_counter_ns() - start)
        events = trace.events(session)
    finally:
        trace.close()
    return OperatorProfile(nodes=node_times(events, count), iterations=count,
                           profiled_p50_ms=float(np.percentile(samples, 50)) / 1e6)


def node_times(events: Any, last_runs: int) -> Tuple[NodeTime, ...]:
    """Per node, its kernel events inside the last ``last_runs`` ``model_run`` windows of an
    onnxruntime trace: slowest (by total) first."""
    if not isinstance(events, list):
        return ()
    runs = [(e.get("ts", 0), e.get("ts", 0) + e.get("dur", 0)) for e in events
            if isinstance(e, dict) and e.get("cat") == "Session" and e.get("name") == "model_run"]
    windows = runs[-last_runs:] if last_runs > 0 else []
    if not windows:
        return ()
    starts = [lo for lo, _ in windows]
    totals: Dict[str, List[Any]] = {}
    for e in events:
        if not isinstance(e, dict) or e.get("cat") != "Node":
            continue
        name, args = str(e.get("name", "")), e.get("args")
        if not name.endswith(_KERNEL) or not isinstance(args, dict):
            continue
        ts = e.get("ts", 0)
        k = bisect.bisect_right(starts, ts) - 1           # the last run that began before it
        if k < 0 or ts > windows[k][1]:
            continue
        entry = totals.setdefault(name[:-len(_KERNEL)], [str(args.get("op_name", "")),
                                                        str(args.get("provider", "")), 0, 0.0])
        entry[2] += 1
        entry[3] += float(e.get("dur", 0)) / 1000.0          # microseconds -> ms
    nodes = [NodeTime(name=n, op_type=op, provider=p, calls=c, total_ms=t,
                      mean_ms=t / c if c else 0.0) for n, (op, p, c, t) in totals.items()]
    return tuple(sorted(nodes, key=lambda x: (-x.total_ms, x.name)))
