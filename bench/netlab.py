"""Emulated links and weak boards for the bench/ scripts: a network namespace behind a veth
pair shaped with ``tc``, and a CPU quota (cgroup) for the processes that play the board.

    reason = netns_unavailable()                 # None, or why this machine cannot
    with emulated_link("1gbit", delay_ms=1.0) as link:
        argv = link.inside(["python", "-m", "edgetune.device", "serve", ...])   # in the netns
        ...                                      # reach it at link.board_ip from here
    with cpu_limit(quota_us=25000, period_us=100000, cpus="1") as limit:
        argv = limit.wrap(link.inside([...]))    # in the netns, held to a quarter of one core

Needs root, iproute2 (``ip``, ``tc``) and, for the quota, a cgroup cpu controller (v2
``cpu.max`` + ``cpuset.cpus``, or v1 ``cpu.cfs_quota_us`` + ``cpuset``). The delay (each way)
comes from the kernel's ``sch_netem`` where it has it; else from ``bench/nfq_delay.py``, a
user-space hold behind iptables NFQUEUE rules in the board's namespace (needs ``iptables`` and
the kernel's nfnetlink_queue); else the link has the rate from ``tbf`` and no delay. Which one
it was, the link says (``LinkInfo.delay_via``, ``LinkInfo.note``): the scripts print it with
their numbers, and ``connect_rtt_ms`` measures the round trip it gives.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence

from bench.common import stop_process

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _run(argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check)


def netns_unavailable() -> Optional[str]:
    """None when network namespaces, veth and tc work here; else why not (a sentence)."""
    if os.name != "posix" or not hasattr(os, "geteuid"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces and tc need root (run as root, or in a root container)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` not found: apt-get install iproute2"
    name = f"etb-probe-{uuid.uuid4().hex[:8]}"
    made = _run(["ip", "netns", "add", name], check=False)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    try:
        veth = _run(["ip", "link", "add", "etbprobe0", "type", "veth", "peer", "name",
                     "etbprobe1", "netns", name], check=False)
        if veth.returncode != 0:
            return f"cannot create a veth pair: {veth.stderr.strip()}"
        _run(["ip", "link", "del", "etbprobe0"], check=False)
    finally:
        _run(["ip", "netns", "del", name], check=False)
    return None


@dataclass(frozen=True)
class LinkInfo:
    """A shaped link from this namespace (``host_ip``) to a namespace (``board_ip``)."""

    netns: str
    host_ip: str
    board_ip: str
    rate: str              # tc syntax: "100mbit", "1gbit"
    delay_ms: float        # delay asked for, each way
    delay_emulated: bool   # False: neither netem nor NFQUEUE here, the link has no added delay
    qdisc: str             # what shapes host -> board: "netem ..." or "tbf ..."
    note: str = ""
    delay_via: str = ""    # "netem", "nfqueue" (bench/nfq_delay.py) or "" (no delay)
    delay_pid: int = 0     # the nfq_delay process (its CPU is the delay's cost)
    delay_stats_path: str = ""

    def inside(self, argv: Sequence[str]) -> List[str]:
        """``argv`` run in the board's namespace (``ip netns exec`` execs it: same pid)."""
        return ["ip", "netns", "exec", self.netns, *argv]

    def delay_stats(self) -> dict:
        """nfq_delay's statistics so far (rewritten every second; {} for netem or none)."""
        import json

        if not self.delay_stats_path:
            return {}
        with contextlib.suppress(OSError, ValueError):
            return json.loads(Path(self.delay_stats_path).read_text())
        return {}

    def as_json(self) -> dict:
        return {"rate": self.rate, "delay_ms": self.delay_ms,
                "delay_emulated": self.delay_emulated, "delay_via": self.delay_via,
                "delay_each_way": self.delay_emulated, "qdisc": self.qdisc, "note": self.note}


def _rate_bits(rate: str) -> int:
    units = {"kbit": 10 ** 3, "mbit": 10 ** 6, "gbit": 10 ** 9, "bit": 1}
    text = rate.strip().lower()
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(text)


def _tbf(rate: str) -> List[str]:
    """tbf arguments for ``rate``: a burst of 4 ms of the rate (at least 64 KiB: a GSO
    packet), a queue of 20 ms."""
    burst = max(64 * 1024, _rate_bits(rate) // 8 * 4 // 1000)
    return ["tbf", "rate", rate, "burst", str(burst), "latency", "20ms"]


def free_subnet() -> int:
    """An N with no address of 10.231.N.0/24 on this namespace's interfaces (so that two runs
    at once do not collide)."""
    import random

    used = _run(["ip", "-o", "-4", "addr", "show"], check=False).stdout
    free = [n for n in range(256) if f"10.231.{n}." not in used]
    if not free:
        raise RuntimeError("every 10.231.N.0/24 is in use here")
    return random.choice(free)


def board_ip(subnet: int) -> str:
    return f"10.231.{subnet}.2"


def nfqueue_unavailable() -> Optional[str]:
    """None when bench/nfq_delay.py can delay a link here (root, iptables, the kernel's
    nfnetlink_queue); else why not."""
    if os.name != "posix" or os.geteuid() != 0:
        return "an NFQUEUE delay needs root on Linux"
    if _iptables() is None:
        return "`iptables` not found: apt-get install iptables"
    if not Path("/proc/net/netfilter/nfnetlink_queue").exists():
        return "the kernel has no nfnetlink_queue (/proc/net/netfilter/nfnetlink_queue)"
    return None


def _iptables() -> Optional[str]:
    """iptables' path (root's PATH may lack /usr/sbin)."""
    found = shutil.which("iptables")
    if found is None and os.access("/usr/sbin/iptables", os.X_OK):
        found = "/usr/sbin/iptables"
    return found


def connect_rtt_ms(ip: str, count: int = 20, port: int = 9) -> List[float]:
    """Round trips to ``ip`` in ms, one per TCP connect to a port nobody listens on (SYN out,
    RST back: no process on the far side is involved)."""
    import socket
    import time

    samples = []
    for _ in range(count):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            start = time.perf_counter()
            try:
                s.connect((ip, port))
            except ConnectionRefusedError:
                samples.append((time.perf_counter() - start) * 1000)
            else:
                raise RuntimeError(f"something listens on {ip}:{port}; pick another port")
        time.sleep(0.01)
    return samples


@contextlib.contextmanager
def _nfq_delay(inside: List[str], board_if: str, delay_ms: float) -> Iterator[tuple]:
    """bench/nfq_delay.py in the board's namespace holding what enters and what leaves
    ``board_if`` for ``delay_ms``; yields (pid, stats path)."""
    import sys
    import tempfile
    import time

    script = Path(__file__).with_name("nfq_delay.py")
    iptables = _iptables() or "iptables"
    with tempfile.TemporaryDirectory(prefix="etb-nfq-") as tmp:
        ready, stats, log_path = (Path(tmp) / n for n in ("ready", "stats.json", "log"))
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [*inside, sys.executable, str(script), "--queue", "0", "--delay-ms",
                 f"{delay_ms:g}", "--ready", str(ready), "--stats", str(stats),
                 "--realtime"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while not ready.is_file():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("bench/nfq_delay.py did not start: "
                                       + log_path.read_text(errors="replace")[-2000:])
                time.sleep(0.02)
            for rule in (["INPUT", "-i"], ["OUTPUT", "-o"]):
                _run([*inside, iptables, "-A", rule[0], rule[1], board_if, "-j", "NFQUEUE",
                      "--queue-num", "0"])
            yield proc.pid, str(stats)
        finally:
            for rule in (["INPUT", "-i"], ["OUTPUT", "-o"]):
                _run([*inside, iptables, "-D", rule[0], rule[1], board_if, "-j", "NFQUEUE",
                      "--queue-num", "0"], check=False)
            stop_process(proc)


@contextlib.contextmanager
def emulated_link(rate: str, delay_ms: float = 0.0, subnet: int = 0,
                  delay_via: str = "auto") -> Iterator[LinkInfo]:
    """A fresh namespace joined by a veth pair, host -> board shaped to ``rate``, board ->
    host (the acks) to ``rate``, with ``delay_ms`` of delay each way (a round trip 2 x
    ``delay_ms`` longer); everything removed on exit. ``subnet`` picks 10.231.N.0/30
    (``free_subnet``). ``delay_via``: "auto" (netem where the kernel has it, else NFQUEUE,
    else no delay and a note), "netem" or "nfqueue" (that one or an error)."""
    if delay_via not in ("auto", "netem", "nfqueue"):
        raise ValueError(f"delay_via {delay_via!r}: auto, netem or nfqueue")
    reason = netns_unavailable()
    if reason:
        raise RuntimeError(reason)
    tag = uuid.uuid4().hex[:6]
    netns, host_if, board_if = f"etb-{tag}", f"etbh{tag}", f"etbb{tag}"
    host_ip, far_ip = f"10.231.{subnet}.1", board_ip(subnet)
    _run(["ip", "netns", "add", netns])
    try:
        with contextlib.ExitStack() as stack:
            _run(["ip", "link", "add", host_if, "type", "veth", "peer", "name", board_if,
                  "netns", netns])
            _run(["ip", "addr", "add", f"{host_ip}/30", "dev", host_if])
            _run(["ip", "link", "set", host_if, "up"])
            inside = ["ip", "netns", "exec", netns]
            _run([*inside, "ip", "addr", "add", f"{far_ip}/30", "dev", board_if])
            _run([*inside, "ip", "link", "set", board_if, "up"])
            _run([*inside, "ip", "link", "set", "lo", "up"])
            note, via, qdisc, pid, stats = "", "", "", 0, ""
            if delay_ms > 0 and delay_via in ("auto", "netem"):
                # netem's own rate, and a queue long enough for the bandwidth-delay product
                limit = max(1000, _rate_bits(rate) // 8 // 1500 * 50 // 1000)
                netem = ["netem", "delay", f"{delay_ms:g}ms", "rate", rate, "limit", str(limit)]
                tried = _run(["tc", "qdisc", "add", "dev", host_if, "root", *netem],
                             check=False)
                if tried.returncode == 0:
                    _run([*inside, "tc", "qdisc", "add", "dev", board_if, "root", *netem])
                    via, qdisc = "netem", " ".join(netem)
                else:
                    note = f"this kernel has no sch_netem ({tried.stderr.strip()})"
                    if delay_via == "netem":
                        raise RuntimeError(note)
            if not qdisc:
                _run(["tc", "qdisc", "add", "dev", host_if, "root", *_tbf(rate)])
                _run([*inside, "tc", "qdisc", "add", "dev", board_if, "root", *_tbf(rate)])
                qdisc = " ".join(_tbf(rate))
            if delay_ms > 0 and not via:
                why_not = nfqueue_unavailable()
                if why_not is None:
                    pid, stats = stack.enter_context(_nfq_delay(inside, board_if, delay_ms))
                    via = "nfqueue"
                    note = ((note + "; ") if note else "") + (
                        f"the {delay_ms:g} ms each way is a user-space hold "
                        "(bench/nfq_delay.py, iptables NFQUEUE on the board's side of the veth)"
                        f", the rate is tbf's")
                elif delay_via == "nfqueue":
                    raise RuntimeError(why_not)
                else:
                    note = ((note + "; ") if note else "") + (
                        f"no delay ({why_not}): the link is shaped to {rate} by tbf with its "
                        "own round trip (tens of us)")
            yield LinkInfo(netns, host_ip, far_ip, rate, delay_ms, bool(via), qdisc, note,
                           via, pid, stats)
    finally:
        _run(["ip", "link", "del", host_if], check=False)
        _run(["ip", "netns", "del", netns], check=False)


# ---------------------------------------------------------------------------- CPU quota

def cgroup_unavailable() -> Optional[str]:
    """None when a CPU quota can be set here (cgroup v2 or v1 cpu controller); else why not."""
    if os.name != "posix" or os.geteuid() != 0:
        return "a CPU quota (cgroup) needs root on Linux"
    if _v2_root() is not None or (CGROUP_ROOT / "cpu" / "cpu.cfs_quota_us").is_file():
        return None
    return ("no cgroup cpu controller is mounted (neither cgroup v2 with `cpu` in "
            "cgroup.controllers nor cgroup v1's cpu hierarchy)")


def _v2_root() -> Optional[Path]:
    controllers = CGROUP_ROOT / "cgroup.controllers"
    if controllers.is_file() and "cpu" in controllers.read_text().split():
        return CGROUP_ROOT
    return None


@dataclass(frozen=True)
class CpuLimit:
    """A cgroup (v2, or v1 cpu + cpuset) holding what runs in it to ``quota_us`` of CPU every
    ``period_us``, on the CPUs ``cpus``."""

    procs_files: tuple          # cgroup.procs files a process writes its pid to, to join
    quota_us: int
    period_us: int
    cpus: str
    kind: str                   # "cgroup v2" or "cgroup v1"

    def wrap(self, argv: Sequence[str]) -> List[str]:
        """``argv`` started inside the cgroup (it joins before exec: every thread and child
        it makes is held too)."""
        joins = "; ".join(f"echo $$ > {f}" for f in self.procs_files)
        return ["sh", "-c", f'{joins}; exec "$@"', "sh", *argv]

    def as_json(self) -> dict:
        return {"cpu_max": f"{self.quota_us} {self.period_us}", "cpus": self.cpus,
                "kind": self.kind}


@contextlib.contextmanager
def cpu_limit(quota_us: int = 25000, period_us: int = 100000,
              cpus: Optional[str] = None) -> Iterator[CpuLimit]:
    """A cgroup with the quota (default a quarter of a core) pinned to ``cpus`` (default the
    last CPU this process may use); removed on exit (whatever runs in it must be gone)."""
    reason = cgroup_unavailable()
    if reason:
        raise RuntimeError(reason)
    if cpus is None:
        allowed = sorted(os.sched_getaffinity(0))
        cpus = str(allowed[-1])
    name = f"edgetune-bench-{uuid.uuid4().hex[:8]}"
    made: List[Path] = []
    try:
        root = _v2_root()
        if root is not None:
            group = root / name
            (root / "cgroup.subtree_control").write_text("+cpu +cpuset")
            group.mkdir()
            made.append(group)
            (group / "cpuset.cpus").write_text(cpus)
            (group / "cpu.max").write_text(f"{quota_us} {period_us}")
            limit = CpuLimit((str(group / "cgroup.procs"),), quota_us, period_us, cpus,
                             "cgroup v2")
        else:
            cpu_group = CGROUP_ROOT / "cpu" / name
            cpu_group.mkdir()
            made.append(cpu_group)
            (cpu_group / "cpu.cfs_period_us").write_text(str(period_us))
            (cpu_group / "cpu.cfs_quota_us").write_text(str(quota_us))
            files = [str(cpu_group / "cgroup.procs")]
            cpuset_root = CGROUP_ROOT / "cpuset"
            if (cpuset_root / "cpuset.cpus").is_file():
                cpuset_group = cpuset_root / name
                cpuset_group.mkdir()
                made.append(cpuset_group)
                (cpuset_group / "cpuset.cpus").write_text(cpus)
                (cpuset_group / "cpuset.mems").write_text(
                    (cpuset_root / "cpuset.mems").read_text().strip())
                files.append(str(cpuset_group / "cgroup.procs"))
            limit = CpuLimit(tuple(files), quota_us, period_us, cpus, "cgroup v1")
        yield limit
    finally:
        for group in reversed(made):
            _remove_group(group)


def _remove_group(group: Path, wait_s: float = 10.0) -> None:
    """rmdir a cgroup once the processes started in it are gone (an sshd session child may
    outlive its client by a moment; one left after ``wait_s`` is killed: it is ours)."""
    import signal
    import time

    deadline = time.monotonic() + wait_s
    while True:
        try:
            group.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                procs = (group / "cgroup.procs").read_text().split()
                for pid in procs:
                    with contextlib.suppress(OSError):
                        os.kill(int(pid), signal.SIGKILL)
                if not procs or time.monotonic() > deadline + 5:
                    return
            time.sleep(0.1)
