"""Shared helpers of the bench/ scripts: a throw-away PKI, a local agent, statistics, output.

Benchmarks are not tests: they measure, print a ratio against a baseline measured side by side
in the same run, and exit non-zero when a target is missed (``finish``). Everything lives in a
temporary folder; nothing is downloaded.

    pki = make_pki(tmp / "pki")                      # CA, board1 (device), laptop (host)
    with local_agent(pki, tmp / "store") as agent:   # ``python -m edgetune.device serve`` over mTLS
        with AgentClient(agent.address, pki.host_identity()) as client:
            ...
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:      # `python bench/x.py` from a plain checkout
    sys.path.insert(0, str(REPO))

DEVICE_NAME = "board1"
HOST_NAME = "laptop"
PASSPHRASE = b"edgetune-bench-passphrase"
KEY_TYPE = "ecdsa-p256"            # fast to make; the handshake is not what these scripts time


@dataclass(frozen=True)
class BenchPki:
    """A PKI folder as ``edgetune certs`` lays it out, with encrypted keys and a passphrase file."""

    dir: Path
    passphrase: bytes
    passphrase_file: Path
    ca_cert: Path
    device_cert: Path
    device_key: Path
    host_cert: Path
    host_key: Path

    def host_identity(self) -> Any:
        """The host's ``edgetune.certs.Identity`` (decrypted key in memory), loaded like the CLI does."""
        import edgetune.certs
        return edgetune.certs.load_identity(self.ca_cert, self.host_cert, self.host_key, self.passphrase)

    def agent_files(self) -> Any:
        """The agent's side, as ``edgetune.host.localagent.LocalAgent.start`` takes it."""
        from edgetune.host.localagent import AgentFiles
        return AgentFiles(ca=self.ca_cert, cert=self.device_cert, key=self.device_key,
                          passphrase_file=self.passphrase_file)


def make_pki(directory: Path, key_type: str = KEY_TYPE,
             device_ips: Sequence[str] = ("127.0.0.1",)) -> BenchPki:
    """CA + device certificate ``board1`` (``device_ips``, localhost) + host certificate
    ``laptop``."""
    from edgetune.certs import CertificateAuthority

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ca = CertificateAuthority.create("/O=edgetune bench/CN=edgetune bench CA", key_type=key_type)
    ca_cert, _ = ca.write(directory, PASSPHRASE)
    device_cert, device_key = ca.issue_device(DEVICE_NAME, ips=list(device_ips), dns=["localhost"],
                                              key_type=key_type).write(directory, PASSPHRASE)
    host_cert, host_key = ca.issue_host(HOST_NAME, key_type=key_type).write(directory, PASSPHRASE)
    passphrase_file = directory / "passphrase"
    passphrase_file.write_bytes(PASSPHRASE + b"\n")
    os.chmod(passphrase_file, 0o600)
    return BenchPki(dir=directory, passphrase=PASSPHRASE, passphrase_file=passphrase_file,
                    ca_cert=ca_cert, device_cert=device_cert, device_key=device_key,
                    host_cert=host_cert, host_key=host_key)


@contextlib.contextmanager
def local_agent(pki: BenchPki, store: Path, extra_args: Sequence[str] = (),
                limits: Optional[Dict[str, Any]] = None,
                ready_timeout_s: float = 120.0) -> Iterator[Any]:
    """A ``edgetune.host.localagent.LocalAgent`` serving ``store`` on 127.0.0.1 (a free port), stopped
    on exit. ``limits`` become the ``[limits]`` table of an agent.toml beside the store."""
    from edgetune.host.localagent import LocalAgent

    args = list(extra_args)
    if limits:
        config = Path(store).parent / "bench-agent.toml"
        lines = ["[limits]"] + [f"{k} = {v!r}" for k, v in limits.items()]
        config.write_text("\n".join(lines) + "\n")
        args += ["--config", str(config)]
    agent = LocalAgent(ready_timeout_s=ready_timeout_s)
    with agent:
        agent.start(pki.agent_files(), Path(store), args)
        yield agent


def connect(address: str, pki: BenchPki, **settings: Any) -> Any:
    """An ``AgentClient`` to ``address`` with the host identity, already connected."""
    from edgetune.host.client import AgentClient, ClientSettings

    client = AgentClient(address, pki.host_identity(), settings=ClientSettings(**settings))
    client.connect()
    return client


# ---------------------------------------------------------------------------- numbers

def median(values: Iterable[float]) -> float:
    data = list(values)
    if not data:
        raise ValueError("median of no values")
    return float(statistics.median(data))


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in 0..100."""
    import numpy as np
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` in MiB (VmRSS), 0 when /proc does not say."""
    return status_kb(pid, "VmRSS") / 1024.0


def cpu_seconds(pid: Optional[int] = None) -> float:
    """User + system CPU seconds used so far by ``pid`` (all its threads; None: this process)."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def status_kb(pid: int, key: str) -> int:
    """A "kB" field of /proc/PID/status (VmRSS, VmHWM...), 0 when /proc does not say."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def load_average() -> List[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover - not on Linux
        return []


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> Dict[str, Any]:
    """What the numbers were measured on (no paths): date, CPU, cores, load, versions."""
    info: Dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(), "cpu_model": cpu_model(),
        "load_average_1_5_15": load_average(),
        "python": platform.python_version(), "os": f"{platform.system()} {platform.release()}",
    }
    for module in ("grpc", "onnxruntime"):
        try:
            info[module] = __import__(module).__version__
        except Exception:  # noqa: BLE001 - informative only
            pass
    return info


# ---------------------------------------------------------------------------- output

_OPS = {">=": lambda v, t: v >= t, "<=": lambda v, t: v <= t, "<": lambda v, t: v < t,
        ">": lambda v, t: v > t, "==": lambda v, t: v == t}


def check(name: str, value: float, op: str, target: float) -> Dict[str, Any]:
    """One target: ``{"name", "value", "target": ">= 0.6", "met": bool}``."""
    if op not in _OPS:
        raise ValueError(f"unknown comparison {op!r}; use one of {', '.join(_OPS)}")
    met = _OPS[op](value, target)
    return {"name": name, "value": round(value, 4), "target": f"{op} {target:g}", "met": bool(met)}


def finish(result: Dict[str, Any], as_json: bool, lines: Sequence[str]) -> int:
    """Print ``result`` (``--json``) or ``lines`` plus the targets; 0 if all targets are met."""
    checks = result.get("checks", [])
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        for line in lines:
            print(line)
        for c in checks:
            print(f"  target {c['name']}: {c['value']:g} {c['target']}: "
                  f"{'met' if c['met'] else 'MISSED'}")
        m = result.get("machine", {})
        if m:
            print(f"  machine: {m.get('nproc')} x {m.get('cpu_model')}, load "
                  f"{m.get('load_average_1_5_15')}, {m.get('date')}")
    return 0 if all(c["met"] for c in checks) else 1


def round_arguments(parser: Any, *, rounds: int, models: Sequence[str]) -> Any:
    """The flags of a paired, alternating-rounds latency benchmark (``--model``, ``--threads``,
    ``--rounds``, ``--iterations``, ``--warmup``, ``--json``), parsed and checked by the
    returned function: ``parse(argv) -> args``."""
    parser.add_argument("--model", choices=tuple(models), default=models[0])
    parser.add_argument("--threads", type=int, default=1,
                        help="intra- and inter-op threads on both sides (default 1)")
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--iterations", type=int, default=60, help="measured runs per side")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")

    def parse(argv: Optional[Sequence[str]]) -> Any:
        args = parser.parse_args(argv)
        if min(args.threads, args.rounds, args.iterations, args.warmup) < 1:
            parser.error("--threads, --rounds, --iterations and --warmup must be at least 1")
        return args
    return parse


def log_progress(quiet: bool, message: str) -> None:
    """Progress on stderr, so --json output on stdout stays clean."""
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def stop_process(proc: "subprocess.Popen", wait_s: float = 10.0) -> None:
    """SIGTERM, wait up to ``wait_s``, then SIGKILL and wait: a helper process always ends."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(wait_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
