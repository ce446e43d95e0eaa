"""Many agents in one process, for the fleet scale benchmarks only (never the product).

    python bench/fleet_agents.py --pki DIR --names board000,board001 --base DIR --ready FILE
        [--sleep-s S]

Each name is a real agent (``edgetune.device.server.AgentServer``: its own grpc.aio server on
127.0.0.1 port 0 over mutual TLS with its own certificate ``DIR/NAME-cert.pem``, store, job
database and leases under ``--base/NAME``), all on one event loop, so that a hundred boards fit
on two cores. ``--sleep-s S``: the benchmark-only runner, whose benchmark job sleeps S seconds
(cancellable) and returns fixed numbers instead of running onnxruntime, so that a fleet run's
control plane (upload, submit, watch, record) is what is timed. Writes ``{"NAME": "ip:port"}``
to ``--ready`` (JSON, atomically) once every agent serves; stops them all on SIGTERM/SIGINT.
Also: ``make_fleet_pki`` (a CA, the host ``laptop`` and one device certificate per board) and
``agents_running`` (start several of these processes and wait for them).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import HOST_NAME, KEY_TYPE, PASSPHRASE, BenchPki  # noqa: E402


def make_fleet_pki(directory: Path, names: Sequence[str],
                   ips: Sequence[str] = ("127.0.0.1",)) -> BenchPki:
    """A CA, the host certificate ``laptop`` and a device certificate per name (``ips``,
    localhost), keys encrypted with the bench passphrase. ``device_cert``/``device_key`` of
    the result are the first board's."""
    from edgetune.certs import CertificateAuthority

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ca = CertificateAuthority.create("/O=edgetune bench/CN=edgetune fleet bench CA",
                                     key_type=KEY_TYPE)
    ca_cert, _ = ca.write(directory, PASSPHRASE)
    pairs = [ca.issue_device(name, ips=list(ips), dns=["localhost"],
                             key_type=KEY_TYPE).write(directory, PASSPHRASE) for name in names]
    host_cert, host_key = ca.issue_host(HOST_NAME, key_type=KEY_TYPE).write(directory, PASSPHRASE)
    passphrase_file = directory / "passphrase"
    passphrase_file.write_bytes(PASSPHRASE + b"\n")
    os.chmod(passphrase_file, 0o600)
    return BenchPki(dir=directory, passphrase=PASSPHRASE, passphrase_file=passphrase_file,
                    ca_cert=ca_cert, device_cert=pairs[0][0], device_key=pairs[0][1],
                    host_cert=host_cert, host_key=host_key)


class SleepRunner:
    """The benchmark-only runner: a benchmark job sleeps ``seconds`` and returns fixed
    numbers (evaluations and comparisons are refused)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def run_benchmark(self, spec: Any, progress: Any, cancelled: threading.Event) -> Any:
        from edgetune.device.errors import Cancelled
        from edgetune.protos.messages import BenchmarkResult, LatencyStats, Progress

        progress(Progress(done=0, total=1, phase="measure", message="sleeping (bench runner)"))
        if cancelled.wait(self.seconds):
            raise Cancelled("the job was cancelled")
        ms = 1.0
        return BenchmarkResult(
            latency=LatencyStats(min_ms=ms, mean_ms=ms, std_ms=0.0, p50_ms=ms, p90_ms=ms,
                                 p95_ms=ms, p99_ms=ms, max_ms=ms),
            throughput_ips=1000.0 / ms, load_ms=0.0, first_run_ms=ms, peak_rss_mb=0.0,
            iterations=max(1, int(getattr(spec, "iterations", 0) or 1)),
            warmup=int(getattr(spec, "warmup", 0) or 0), measured_s=self.seconds,
            providers=("SleepRunner",))

    def run_evaluate(self, spec: Any, progress: Any, cancelled: threading.Event) -> Any:
        from edgetune.device.errors import FailedPrecondition
        raise FailedPrecondition("the bench sleep runner only benchmarks")

    run_compare = run_evaluate


async def serve_many(pki_dir: Path, names: Sequence[str], base: Path, ready: Path,
                     sleep_s: float, host: str = "127.0.0.1") -> None:
    from edgetune.device.config import AgentConfig
    from edgetune.device.server import AgentServer
    from edgetune.certs.identity import open_identity

    class BenchAgentServer(AgentServer):
        def _make_runner(self, store: Any) -> Any:
            return SleepRunner(sleep_s) if sleep_s > 0 else super()._make_runner(store)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    passphrase_file = pki_dir / "passphrase"
    agents: List[AgentServer] = []
    try:
        for name in names:
            config = AgentConfig(ca=pki_dir / "ca-cert.pem", cert=pki_dir / f"{name}-cert.pem",
                                 key=pki_dir / f"{name}-key.pem", listen=f"{host}:0",
                                 passphrase_file=passphrase_file, store=base / name,
                                 log_level="warning")
            identity = open_identity(config.ca, config.cert, config.key, passphrase_file,
                                     usage="serverAuth")
            agent = BenchAgentServer(config, identity)
            await agent.start()
            agents.append(agent)
        tmp = ready.with_suffix(".tmp")
        tmp.write_text(json.dumps({n: a.address for n, a in zip(names, agents)}))
        os.replace(tmp, ready)
        await stop.wait()
    finally:
        await asyncio.gather(*(a.stop(1.0) for a in agents), return_exceptions=True)


@contextlib.contextmanager
def agents_running(pki: BenchPki, names: Sequence[str], base: Path, processes: int,
                   sleep_s: float = 0.0, timeout_s: float = 300.0, host: str = "127.0.0.1",
                   prefix: Sequence[str] = ()) -> Iterator[Dict[str, Any]]:
    """Start ``processes`` processes of this script sharing ``names`` out between them (each
    started behind ``prefix``, e.g. ``ip netns exec NS``, listening on ``host``); yields
    ``{"addresses": {name: address}, "pids": [...]}`` once all serve; SIGTERM on exit."""
    processes = max(1, min(processes, len(names)))
    groups = [list(names[i::processes]) for i in range(processes)]
    procs: List[subprocess.Popen] = []
    logs = []
    try:
        for i, group in enumerate(groups):
            ready = base / f"agents-{i}.json"
            log = open(base / f"agents-{i}.log", "wb")
            logs.append(log)
            procs.append(subprocess.Popen(
                [*prefix, sys.executable, str(Path(__file__).resolve()), "--pki", str(pki.dir),
                 "--names", ",".join(group), "--base", str(base), "--ready", str(ready),
                 "--sleep-s", str(sleep_s), "--host", host],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT))
        addresses: Dict[str, str] = {}
        deadline = time.monotonic() + timeout_s
        for i, proc in enumerate(procs):
            ready = base / f"agents-{i}.json"
            while not ready.is_file():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the bench agents did not start: " + (
                        base / f"agents-{i}.log").read_text(errors="replace")[-3000:])
                time.sleep(0.1)
            addresses.update(json.loads(ready.read_text()))
        yield {"addresses": {n: addresses[n] for n in names}, "pids": [p.pid for p in procs]}
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pki", type=Path, required=True)
    parser.add_argument("--names", required=True, help="comma-separated board names")
    parser.add_argument("--base", type=Path, required=True, help="the stores go below it")
    parser.add_argument("--ready", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    parser.add_argument("--sleep-s", type=float, default=0.0,
                        help="benchmark jobs sleep this long instead of running onnxruntime")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(serve_many(args.pki, [n for n in args.names.split(",") if n], args.base,
                           args.ready, args.sleep_s, args.host))
    return 0


if __name__ == "__main__":
    sys.exit(main())
