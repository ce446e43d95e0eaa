"""Soak: one agent runs a long benchmark while 8 client processes keep it busy (issue 16,
section 3).

    python bench/soak.py --seconds 300 [--clients 8] [--long-s 20] [--json]
    python bench/soak.py --seconds 30                       # what CI runs

One agent (a separate process, real mutual TLS). The driver alternates two phases, idle and
load, and in each runs the same long benchmark (a ResNet-18-shaped model, 1x3x224x224,
``intra_op_threads=1``, ``--long-s`` seconds): idle with the clients paused, load while 8
client processes each, at 2 Hz, ask GetInfo and the status of their last job, and every 2 s
upload a small fresh dataset and submit a short benchmark (the digits CNN, 20 iterations).
Phases run in the order idle, load, load, idle, idle, load ... (ABBA), so a drift of the
machine falls on both alike.

Pass (exit 0) when:

- the clients saw 0 errors other than documented back-pressure (RESOURCE_EXHAUSTED: the queue
  is full, or too many calls are open; both messages say to wait or retry);
- the long benchmark's p50 under load is within 3 % of its p50 idle (medians over the phases);
- the agent's RSS did not grow: its peak over the second half of the run after warm-up (the
  first quiet point after the first load phase) is at most 10 % above its peak over the
  first half (RSS at one moment swings by tens of MB as the allocator returns memory or
  not, so single samples are no trend);
- its open file descriptors and threads did not grow: counted at quiet points (clients
  paused, queue drained: the start of every idle phase, and the end), the end is within +4
  fds and +2 threads of warm-up. Uploads open a writer thread, a hash thread and a file for
  as long as they run, so counts taken under load say how busy the agent was, not whether
  it leaks; they are reported as the maximum.

The p50 criterion needs a quiet machine: on a shared one, other processes' load lands on
either phase at random, so read the per-phase p50s before the ratio.

CPU time, per phase, over the long benchmark's run (from the moment it starts running to its
end), so a slower load phase can be put down to its cause: the job thread (the benchmark
itself: ``intra_op_threads=1`` runs it in that thread), the rest of the agent (serving the
clients: the event loop, upload writers and hashers, the io threads), the 8 client
processes, this driver, and the rest of the machine (``/proc/stat``). Here the clients run
on the same cores as the agent; on a board they sit on the PC. If the job thread gets less
than a core while the clients take the other, that is contention for the cores this machine
shares, not work the agent adds; time the agent spends outside the job thread is its own.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing as mp
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (BenchPki, check, cpu_seconds, finish, local_agent,  # noqa: E402
                          log_progress, machine, make_pki, median, rss_mb, status_kb)

SAMPLES = Path(__file__).resolve().parent.parent / "host" / "samples"
SHORT_MODEL = SAMPLES / "digits_cnn.onnx"
POLL_HZ = 2.0
UPLOAD_EVERY_S = 2.0
BACK_PRESSURE = ("RESOURCE_EXHAUSTED",)


# ------------------------------------------------------------------------------ clients

def client_main(address: str, pki: BenchPki, short_sha: str, active: Any, stop: Any,
                seed: int, workdir: str, results: Any) -> None:
    """One client process: poll at 2 Hz, upload and submit every 2 s while ``active``."""
    import grpc
    import numpy as np

    from edgetune.host.client import AgentClient, ClientSettings
    from edgetune.host.errors import EdgetuneError
    from edgetune.protos.messages import BenchmarkSpec, BlobKind

    rng = random.Random(seed)
    counts: Dict[str, int] = {"calls": 0, "uploads": 0, "submits": 0, "back_pressure": 0}
    errors: List[str] = []
    last_job = ""
    n = 0
    folder = Path(workdir) / f"client-{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    settings = ClientSettings(timeout_s=30.0, hash_cache=folder / "hashcache")
    with AgentClient(address, pki.host_identity(), settings=settings) as client:
        next_upload = time.monotonic() + rng.uniform(0, UPLOAD_EVERY_S)
        while not stop.is_set():
            if not active.wait(0.2):
                continue
            started = time.monotonic()
            try:
                client.info()
                counts["calls"] += 1
                if last_job:
                    client.get_job(last_job)
                    counts["calls"] += 1
                if started >= next_upload:
                    next_upload = started + UPLOAD_EVERY_S
                    n += 1
                    path = folder / f"d{n}.npz"
                    buf = io.BytesIO()
                    np.savez(buf, input=np.asarray(rng.random(), np.float32) *
                             np.ones((16, 1, 8, 8), np.float32),
                             labels=np.arange(16, dtype=np.int64) % 10)
                    path.write_bytes(buf.getvalue())
                    client.upload(path, BlobKind.DATASET)
                    path.unlink()
                    counts["uploads"] += 1
                    try:
                        job, _ = client.submit(BenchmarkSpec(model_sha256=short_sha, iterations=20,
                                                             warmup=1), label=f"soak-{seed}-{n}")
                        last_job = job.id
                        counts["submits"] += 1
                    except EdgetuneError as exc:
                        if _back_pressure(exc):
                            counts["back_pressure"] += 1
                        else:
                            raise
            except (EdgetuneError, grpc.RpcError) as exc:
                if _back_pressure(exc):
                    counts["back_pressure"] += 1
                else:
                    errors.append(f"{type(exc).__name__}: {exc}"[:300])
            time.sleep(max(0.0, 1.0 / POLL_HZ - (time.monotonic() - started)))
    results.put({"seed": seed, "counts": counts, "errors": errors})


def _back_pressure(exc: BaseException) -> bool:
    """RESOURCE_EXHAUSTED from a full queue or the stream limits (both say to wait/retry)."""
    text = str(exc)
    return ("queue is full" in text and "retry when" in text) or \
        ("max_streams_" in text and "retry" in text)


# ------------------------------------------------------------------------------ the agent

class Sampler:
    """RSS, open fds and threads of the agent, once a second."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: List[Dict[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def now(self) -> Dict[str, float]:
        try:
            fds = len(os.listdir(f"/proc/{self.pid}/fd"))
        except OSError:
            fds = 0
        return {"t": time.monotonic(), "rss_mb": rss_mb(self.pid), "fds": fds,
                "threads": status_kb(self.pid, "Threads")}

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self.samples.append(self.now())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def thread_cpu_seconds(pid: int) -> Dict[str, float]:
    """User + system CPU seconds of each thread of ``pid``, by thread id."""
    out: Dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", encoding="ascii", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue                                # the thread ended meanwhile
        out[tid] = (int(fields[11]) + int(fields[12])) / tick
    return out


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat: all but idle and iowait)."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    busy = sum(fields[:8]) - fields[3] - fields[4]      # user nice system idle iowait irq ...
    return busy / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds of the agent (its job thread apart), the clients, this driver and the whole
    machine, between ``start`` and ``stop``. The job thread is the agent's busiest thread over
    the window (it runs the benchmark, a core's worth; Python names its threads for itself
    only, so /proc cannot tell them apart by name)."""

    def __init__(self, agent_pid: int, client_pids: List[int]) -> None:
        self.agent_pid = agent_pid
        self.client_pids = list(client_pids)
        self._begin: Dict[str, Any] = {}

    def _now(self) -> Dict[str, Any]:
        return {"t": time.monotonic(), "agent": cpu_seconds(self.agent_pid),
                "threads": thread_cpu_seconds(self.agent_pid),  # type: ignore[dict-item]
                "clients": sum(cpu_seconds(p) for p in self.client_pids),
                "driver": cpu_seconds(), "machine": machine_busy_seconds()}

    def start(self) -> None:
        self._begin = self._now()

    def stop(self) -> Dict[str, float]:
        """CPU seconds spent since ``start``, and the wall time."""
        end, begin = self._now(), self._begin
        before: Dict[str, float] = begin["threads"]  # type: ignore[assignment]
        after: Dict[str, float] = end["threads"]  # type: ignore[assignment]
        d = {k: end[k] - begin[k] for k in end if k != "threads"}
        d["job"] = max((t - before.get(tid, 0.0) for tid, t in after.items()), default=0.0)
        other = d["machine"] - d["agent"] - d["clients"] - d["driver"]
        return {"wall_s": round(d["t"], 3), "job_thread": round(d["job"], 2),
                "agent_other": round(d["agent"] - d["job"], 2), "clients": round(d["clients"], 2),
                "driver": round(d["driver"], 2), "machine_other": round(max(other, 0.0), 2)}


def long_benchmark(client: Any, sha: str, seconds: float,
                   meter: Optional[CpuMeter] = None) -> Dict[str, Any]:
    from edgetune.protos.messages import BenchmarkSpec, JobState, SessionOptions
    spec = BenchmarkSpec(model_sha256=sha, iterations=0, min_duration_s=seconds, warmup=5,
                         session=SessionOptions(intra_op_threads=1, inter_op_threads=1))
    deadline = time.monotonic() + 600
    while True:
        try:
            job, _ = client.submit(spec, label="soak-long")
            break
        except Exception as exc:  # noqa: BLE001 - a full queue: the driver waits its turn too
            if not _back_pressure(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    if meter is not None:                   # measure from when it runs, not while queued
        while client.get_job(job.id).state is JobState.QUEUED:
            time.sleep(0.05)
        meter.start()
    done = client.wait(job.id)
    cpu = meter.stop() if meter is not None else None
    if done.state.value != "succeeded":
        raise RuntimeError(f"the long benchmark {done.state.value}: {done.error}")
    result = done.result
    out: Dict[str, Any] = {"p50_ms": result.latency.p50_ms, "iterations": result.iterations,
                           "mean_ms": result.latency.mean_ms}
    if cpu is not None:
        out["cpu_s"] = cpu
    return out


def cpu_summary(phases: List[Dict[str, Any]], kind: str) -> Dict[str, float]:
    """Median over the ``kind`` phases of each CPU share, in cores (CPU seconds / wall)."""
    rows = [p["cpu_s"] for p in phases if p["phase"] == kind and "cpu_s" in p]
    if not rows:
        return {}
    keys = [k for k in rows[0] if k != "wall_s"]
    return {k: round(median(r[k] / r["wall_s"] for r in rows if r["wall_s"] > 0), 3)
            for k in keys}


def drain(client: Any, timeout: float = 300.0) -> None:
    """Wait until the agent runs nothing and queues nothing."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = client.info()
        if not info.queue_length and not info.running_job_id:
            return
        time.sleep(0.2)
    raise RuntimeError("the agent's queue did not drain")


def run(pki: BenchPki, workdir: Path, seconds: float, *, clients: int = 8,
        long_s: float = 10.0, quiet: bool = True) -> Dict[str, Any]:
    from edgetune.host import builders
    from edgetune.host.client import AgentClient, ClientSettings
    from edgetune.protos.messages import BlobKind

    model = builders.save(builders.resnet18_shape(seed=0), workdir / "resnet18_shape.onnx")
    ctx = mp.get_context("spawn")
    with local_agent(pki, workdir / "store") as agent:
        address = agent.address
        with AgentClient(address, pki.host_identity(),
                         settings=ClientSettings(timeout_s=60.0,
                                                 hash_cache=workdir / "driver.hashcache")) as client:
            long_sha = client.upload(model, BlobKind.MODEL).blob.sha256
            short_sha = client.upload(SHORT_MODEL, BlobKind.MODEL).blob.sha256
            active, stop, results = ctx.Event(), ctx.Event(), ctx.Queue()
            procs = [ctx.Process(target=client_main, daemon=True,
                                 args=(address, pki, short_sha, active, stop, seed,
                                       str(workdir), results))
                     for seed in range(clients)]
            for p in procs:
                p.start()
            sampler = Sampler(agent.process.pid)
            meter = CpuMeter(agent.process.pid, [p.pid for p in procs if p.pid])
            phases: List[Dict[str, Any]] = []
            order = ["idle", "load", "load", "idle"]
            started = time.monotonic()
            warm: Optional[Dict[str, float]] = None
            calm: List[Dict[str, float]] = []       # samples with clients paused, queue empty
            i = 0
            try:
                while i % 4 or time.monotonic() - started < seconds:   # whole ABBA blocks
                    phase = order[i % 4]
                    i += 1
                    if phase == "idle":
                        active.clear()
                        drain(client)
                        calm.append(sampler.now())
                        if warm is None and any(p["phase"] == "load" for p in phases):
                            warm = calm[-1]
                    else:
                        active.set()
                        time.sleep(1.0)             # the clients are at it
                    bench = long_benchmark(client, long_sha, long_s, meter)
                    phases.append(dict(bench, phase=phase))
                    log_progress(quiet, f"{phase}: p50 {bench['p50_ms']:.2f} ms "
                                        f"({bench['iterations']} runs), cpu {bench['cpu_s']}, "
                                        f"agent {sampler.now()}")
            finally:
                stop.set()
                active.set()
                outcomes = [results.get(timeout=120) for _ in procs]
                for p in procs:
                    p.join(30)
                sampler.stop()
            active.clear()
            drain(client)
            time.sleep(1.0)
            end = sampler.now()
    idle = [p["p50_ms"] for p in phases if p["phase"] == "idle"]
    load = [p["p50_ms"] for p in phases if p["phase"] == "load"]
    errors = [e for o in outcomes for e in o["errors"]]
    totals: Dict[str, int] = {}
    for o in outcomes:
        for k, v in o["counts"].items():
            totals[k] = totals.get(k, 0) + v
    assert warm is not None
    after = [s for s in sampler.samples if s["t"] >= warm["t"]] + [end]
    calm.append(end)
    ratio = median(load) / median(idle)
    half = (after[0]["t"] + after[-1]["t"]) / 2
    rss_growth = max(s["rss_mb"] for s in after if s["t"] >= half) / \
        max(s["rss_mb"] for s in after if s["t"] < half)
    result = {
        "seconds": round(time.monotonic() - started, 1), "clients": clients, "long_s": long_s,
        "phases": phases, "p50_idle_ms": median(idle), "p50_load_ms": median(load),
        "p50_ratio": round(ratio, 4),
        "cpu_cores": {"idle": cpu_summary(phases, "idle"), "load": cpu_summary(phases, "load"),
                      "cores": os.cpu_count()},
        "client_counts": totals, "errors": errors[:20],
        "error_count": len(errors),
        "rss_mb": {"warm": warm["rss_mb"], "end": end["rss_mb"], "growth": round(rss_growth, 4),
                   "max_after_warm": max(s["rss_mb"] for s in after),
                   "quiet": [round(q["rss_mb"], 1) for q in calm]},
        "fds": {"warm": warm["fds"], "end": end["fds"],
                "max_under_load": max(s["fds"] for s in after),
                "quiet": [q["fds"] for q in calm]},
        "threads": {"warm": warm["threads"], "end": end["threads"],
                    "max_under_load": max(s["threads"] for s in after),
                    "quiet": [q["threads"] for q in calm]},
        "machine": machine(),
    }
    result["checks"] = [
        check("errors other than back-pressure", len(errors), "<=", 0),
        check("p50 under load vs idle, |ratio - 1|", abs(ratio - 1.0), "<=", 0.03),
        check("RSS growth after warm-up (peak, 2nd half / 1st half)", rss_growth, "<=", 1.10),
        check("open fds, end - warm-up (quiet)", end["fds"] - warm["fds"], "<=", 4),
        check("threads, end - warm-up (quiet)", end["threads"] - warm["threads"], "<=", 2),
    ]
    return result


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=300.0,
                        help="how long to keep alternating phases (300; CI: 30)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--long-s", type=float, default=10.0,
                        help="seconds of each long benchmark (10)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="edgetune-soak-") as tmp:
        pki = make_pki(Path(tmp) / "pki")
        result = run(pki, Path(tmp), args.seconds, clients=args.clients, long_s=args.long_s,
                     quiet=args.quiet)
    lines = [f"soak: {result['seconds']} s, {args.clients} clients, long benchmark "
             f"{args.long_s:g} s x {len(result['phases'])}",
             f"  p50 idle {result['p50_idle_ms']:.2f} ms, under load "
             f"{result['p50_load_ms']:.2f} ms (ratio {result['p50_ratio']:.4f})",
             f"  CPU in cores during the long benchmark (medians; {result['cpu_cores']['cores']}"
             f" cores): idle {result['cpu_cores']['idle']}, load {result['cpu_cores']['load']}",
             f"  client calls {result['client_counts']}, errors {result['error_count']}",
             f"  agent RSS MB {result['rss_mb']}, fds {result['fds']}, "
             f"threads {result['threads']}"]
    lines += [f"  error: {e}" for e in result["errors"][:5]]
    return finish(result, args.json, lines)


if __name__ == "__main__":
    sys.exit(main())
