"""Upload over emulated links: edgetune vs a raw TLS socket vs a hashing TLS socket vs SFTP.

    python bench/upload_links.py [--links 100mbit,1gbit,1gbit-weak] [--delay-ms 1]
        [--mib 256] [--mib-slow 64] [--repeat 3] [--no-sftp] [--json]

Each link is a veth pair from this (the host's) network namespace into a fresh one that plays
the board, shaped with ``tc`` (``bench/netlab.py``): ``100mbit`` and ``1gbit`` with
``--delay-ms`` of delay each way (netem; on a kernel without sch_netem a user-space hold behind
iptables NFQUEUE, bench/nfq_delay.py, with tbf's rate; where neither works, no delay; the
report says which, with the TCP connect round trip measured across the link and the CPU the
user-space hold used); ``1gbit-weak`` is the 1 Gbit/s link with every receiving
process (agent, TLS receiver, sshd) held to one core at a quarter of its time (a cgroup:
``cpu.max`` "25000 100000" and a cpuset, or cgroup v1's cfs quota), as on a low-end board.
In the board's namespace run, as separate processes started the same way: the agent
(``python -m edgetune.device serve``), ``bench/tls_sink.py`` and OpenSSH's sshd. Every round
sends one fresh file (random bytes, a valid dataset .npz; ``--mib`` on the 1 Gbit/s links,
``--mib-slow`` on 100 Mbit/s) by each way, the order rotating, the page cache written back
before each transfer (untimed):
- edgetune: ``AgentClient.upload`` (mutual TLS, the agent hashes and verifies, then stores);
- TLS socket: Python's ssl, mutual TLS, the receiver writes to a file and fsyncs;
- TLS socket + sha256: the same receiver also sha256-hashing what it receives;
- SFTP: paramiko's ``SFTPClient.put`` to sshd (login not timed, no fsync).
Targets (issue 12): on 100mbit and 1gbit, edgetune >= 0.9x the raw TLS socket and >= 1x SFTP;
on 1gbit-weak, edgetune >= 0.7x the hashing TLS socket (the others reported). Exits 1 when a
target is missed. Where namespaces (root, iproute2) or a cgroup CPU controller are missing it
says so, measures nothing and exits 0 with ``"skipped"``. Loopback: bench/upload_throughput.py.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (check, cpu_seconds, finish, log_progress, machine,  # noqa: E402
                          make_pki, median, stop_process)
from bench.netlab import (board_ip, cgroup_unavailable, connect_rtt_ms,  # noqa: E402
                          cpu_limit, emulated_link, free_subnet, netns_unavailable)
from bench.tls_sink import HEADER  # noqa: E402
from bench.upload_throughput import (_drop_stored, _settle, edgetune_upload,  # noqa: E402
                                     make_blob, sftp_put)

CHUNK = 1 << 20
LINKS = {"100mbit": ("100mbit", False), "1gbit": ("1gbit", False),
         "1gbit-weak": ("1gbit", True)}
WAYS = ("edgetune", "tls_socket", "tls_socket_sha256", "sftp")


def _prefixed_agent(prefix: Sequence[str], listen: str) -> Any:
    """A LocalAgent whose command runs behind ``prefix`` (namespace, cgroup)."""
    from edgetune.host.localagent import LocalAgent

    class PrefixedAgent(LocalAgent):
        def command(self, *a: Any, **kw: Any) -> List[str]:
            return [*prefix, *super().command(*a, **kw)]

    return PrefixedAgent(listen=listen, ready_timeout_s=180.0)


@contextlib.contextmanager
def tls_sink(prefix: Sequence[str], listen: str, pki: Any, work: Path) -> Iterator[Any]:
    """``bench/tls_sink.py`` behind ``prefix``; yields (process, "ip:port")."""
    ready = work / "sink.ready"
    log = open(work / "sink.log", "wb")
    proc = subprocess.Popen(
        [*prefix, sys.executable, str(Path(__file__).with_name("tls_sink.py")),
         "--listen", listen, "--ready", str(ready), "--ca", str(pki.ca_cert),
         "--cert", str(pki.device_cert), "--key", str(pki.device_key),
         "--passphrase-file", str(pki.passphrase_file), "--dir", str(work / "sink")],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not (ready.is_file() and ready.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the TLS sink did not start: "
                                   + (work / "sink.log").read_text(errors="replace")[-2000:])
            time.sleep(0.05)
        yield proc, ready.read_text().strip()
    finally:
        stop_process(proc)
        log.close()


def tls_send(src: Path, pki: Any, address: str, mode: bytes) -> float:
    """Seconds to send src to the sink over mutual TLS (after the handshake) until it has
    written, fsynced (and, mode ``h``, hashed) all of it."""
    host, _, port = address.rpartition(":")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_cert_chain(pki.host_cert, pki.host_key, password=pki.passphrase)
    context.load_verify_locations(pki.ca_cert)
    size = src.stat().st_size
    with socket.create_connection((host, int(port)), timeout=600) as raw, \
            context.wrap_socket(raw, server_hostname=host) as tls, open(src, "rb") as f:
        tls.do_handshake()
        start = time.perf_counter()
        tls.sendall(HEADER.pack(mode, size))
        while chunk := f.read(CHUNK):
            tls.sendall(chunk)
        reply = b""
        while len(reply) < 33:
            more = tls.recv(33 - len(reply))
            if not more:
                raise ConnectionError("the TLS sink closed before it acknowledged")
            reply += more
        elapsed = time.perf_counter() - start
    if reply[:1] != b"k":
        raise ConnectionError(f"the TLS sink answered {reply[:1]!r}")
    return elapsed


def measure_link(name: str, pki: Any, work: Path, subnet: int,
                 args: argparse.Namespace) -> Dict[str, Any]:
    from bench.sshd import local_sshd

    rate, weak = LINKS[name]
    mib = args.mib_slow if rate == "100mbit" else args.mib
    ways = [w for w in WAYS if not (w == "sftp" and args.no_sftp)]
    times: Dict[str, List[float]] = {w: [] for w in ways}
    receiver_cpu: Dict[str, List[float]] = {w: [] for w in ways if w != "sftp"}
    sender_cpu: Dict[str, List[float]] = {w: [] for w in ways if w != "sftp"}
    delay_cpu: Dict[str, List[float]] = {w: [] for w in ways}
    with emulated_link(rate, args.delay_ms, subnet) as link, contextlib.ExitStack() as stack:
        rtt = sorted(connect_rtt_ms(link.board_ip, 20))
        limit = None
        if weak:
            quota, period = (int(v) for v in args.cpu_max.split())
            limit = stack.enter_context(cpu_limit(quota, period, args.cpus))
        prefix = limit.wrap(link.inside([])) if limit else link.inside([])
        store = work / f"store-{name}"
        agent = stack.enter_context(_prefixed_agent(prefix, f"{link.board_ip}:0"))
        agent.start(pki.agent_files(), store, ["--config", str(_agent_config(work, mib))])
        sink, sink_address = stack.enter_context(tls_sink(prefix, f"{link.board_ip}:0", pki,
                                                          work))
        sshd = (stack.enter_context(local_sshd(link.board_ip, prefix=prefix))
                if "sftp" in ways else None)
        for i in range(args.repeat):
            src = work / f"blob-{name}-{i}.npz"
            make_blob(src, mib, salt=i)
            size = src.stat().st_size
            for way in ways[i % len(ways):] + ways[:i % len(ways)]:
                _settle()
                delay0 = cpu_seconds(link.delay_pid) if link.delay_pid else 0.0
                if way == "sftp":
                    times[way].append(sftp_put(sshd, src, work / "sftp.out"))
                    if link.delay_pid:
                        delay_cpu[way].append(cpu_seconds(link.delay_pid) - delay0)
                    (work / "sftp.out").unlink(missing_ok=True)
                    continue
                pid = agent.process.pid if way == "edgetune" else sink.pid
                cpu0, recv0 = cpu_seconds(), cpu_seconds(pid)
                if way == "edgetune":
                    both: Dict[str, List[float]] = {"edgetune": []}
                    times[way].append(edgetune_upload(src, pki, agent.address, pid, both))
                else:
                    times[way].append(tls_send(src, pki, sink_address,
                                               b"h" if way == "tls_socket_sha256" else b"p"))
                sender_cpu[way].append(cpu_seconds() - cpu0)
                receiver_cpu[way].append(cpu_seconds(pid) - recv0)
                if link.delay_pid:
                    delay_cpu[way].append(cpu_seconds(link.delay_pid) - delay0)
                if way == "edgetune":
                    _drop_stored(agent.address, pki)
            src.unlink()
            log_progress(args.json, f"{name} round {i + 1}/{args.repeat}: " + ", ".join(
                f"{k} {size / (1 << 20) / v[-1]:.1f} MiB/s" for k, v in times.items()))
        if link.delay_pid:
            time.sleep(1.1)      # its statistics are rewritten every second
        delay_stats = link.delay_stats()
    size_mib = size / (1 << 20)
    rates = {k: size_mib / median(v) for k, v in times.items()}
    link_mib_s = _rate_bits(rate) / 8 / (1 << 20)
    return {
        "link": link.as_json(), "weak_board": limit.as_json() if limit else None,
        "size_mib": round(size_mib, 1), "link_mib_per_s": round(link_mib_s, 1),
        "mib_per_s": {k: round(v, 2) for k, v in rates.items()},
        "fraction_of_link": {k: round(v / link_mib_s, 3) for k, v in rates.items()},
        "seconds_per_round": {k: [round(t, 3) for t in v] for k, v in times.items()},
        "receiver_cpu_s_per_round": {k: [round(t, 3) for t in v] for k, v in receiver_cpu.items()},
        "sender_cpu_s_per_round": {k: [round(t, 3) for t in v] for k, v in sender_cpu.items()},
        "connect_rtt_ms": {"median": round(median(rtt), 3), "min": round(rtt[0], 3),
                           "max": round(rtt[-1], 3), "n": len(rtt)},
        "delay_cpu_s_per_round": ({k: [round(t, 3) for t in v] for k, v in delay_cpu.items()}
                                  if link.delay_pid else None),
        "delay_cpu_fraction": ({k: round(sum(delay_cpu[k]) / sum(times[k]), 3)
                                for k in ways} if link.delay_pid else None),
        "delay_stats": delay_stats or None,
        "ratio_vs_tls_socket": round(rates["edgetune"] / rates["tls_socket"], 3),
        "ratio_vs_tls_socket_sha256": round(rates["edgetune"] / rates["tls_socket_sha256"], 3),
        "ratio_vs_sftp": round(rates["edgetune"] / rates["sftp"], 3) if "sftp" in rates else None,
    }


def _rate_bits(rate: str) -> int:
    from bench.netlab import _rate_bits as parse

    return parse(rate)


def _agent_config(work: Path, mib: int) -> Path:
    config = work / "bench-agent.toml"
    config.write_text(f"[limits]\nmax_dataset_mb = {max(2048, 2 * mib + 64)}\n")
    return config


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--links", default=",".join(LINKS),
                        help=f"which links, comma-separated (default {','.join(LINKS)})")
    parser.add_argument("--delay-ms", type=float, default=1.0,
                        help="delay each way on every link (default 1: netem, else an NFQUEUE "
                             "hold in user space, else none)")
    parser.add_argument("--mib", type=int, default=256,
                        help="file size on the 1 Gbit/s links (default 256)")
    parser.add_argument("--mib-slow", type=int, default=64,
                        help="file size on the 100 Mbit/s link (default 64)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per link (default 3)")
    parser.add_argument("--cpu-max", default="25000 100000",
                        help='the weak board\'s CPU quota, "QUOTA PERIOD" in us (default a quarter)')
    parser.add_argument("--cpus", default=None,
                        help="the weak board's CPU (default the last one this process may use)")
    parser.add_argument("--no-sftp", action="store_true", help="skip the SFTP way (no sshd)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.links.split(",") if n.strip()]
    unknown = [n for n in names if n not in LINKS]
    if unknown or not names:
        parser.error(f"unknown link {unknown}; choose from {', '.join(LINKS)}")
    if args.mib < 1 or args.mib_slow < 1 or args.repeat < 1:
        parser.error("--mib, --mib-slow and --repeat must be at least 1")
    if not args.no_sftp:
        from bench.sshd import find_sshd
        if find_sshd() is None:
            parser.error("no sshd here (apt-get install openssh-server), or pass --no-sftp")

    reason = netns_unavailable()
    if reason is None and any(LINKS[n][1] for n in names):
        cgroup_reason = cgroup_unavailable()
        if cgroup_reason:
            reason = f"the weak board needs a CPU quota: {cgroup_reason}"
    if reason:
        result = {"benchmark": "upload_links", "skipped": reason, "checks": [],
                  "machine": machine()}
        return finish(result, args.json, [f"upload over emulated links: SKIPPED: {reason}"])

    links: Dict[str, Any] = {}
    checks = []
    with tempfile.TemporaryDirectory(prefix="edgetune-bench-") as tmp:
        d = Path(tmp)
        os.environ["EDGETUNE_HASH_CACHE"] = str(d / "hashes.json")   # not the user's cache
        subnet = free_subnet()
        pki = make_pki(d / "pki", device_ips=["127.0.0.1", board_ip(subnet)])
        for name in names:
            work = d / name
            work.mkdir()
            log_progress(args.json, f"{name}: starting the board's side")
            r = links[name] = measure_link(name, pki, work, subnet, args)
            if LINKS[name][1]:
                checks.append(check(f"{name}: edgetune / TLS socket + sha256",
                                    r["ratio_vs_tls_socket_sha256"], ">=", 0.7))
            else:
                checks.append(check(f"{name}: edgetune / TLS socket",
                                    r["ratio_vs_tls_socket"], ">=", 0.9))
                if r["ratio_vs_sftp"] is not None:
                    checks.append(check(f"{name}: edgetune / SFTP", r["ratio_vs_sftp"], ">=", 1))
    result = {"benchmark": "upload_links", "repeat": args.repeat, "links": links,
              "checks": checks, "machine": machine()}
    lines = []
    for name, r in links.items():
        weak = r["weak_board"]
        lines.append(f"{name}: {r['size_mib']} MiB over {r['link']['qdisc']}"
                     + (f", receivers held to {weak['cpu_max']} on CPU {weak['cpus']} "
                        f"({weak['kind']})" if weak else "")
                     + f"; link {r['link_mib_per_s']} MiB/s; median of {args.repeat} rounds:")
        if r["link"]["note"]:
            lines.append(f"  note: {r['link']['note']}")
        rtt = r["connect_rtt_ms"]
        lines.append(f"  delay: {r['link']['delay_via'] or 'none'}"
                     + (f", {r['link']['delay_ms']:g} ms each way" if r['link']['delay_via']
                        else "")
                     + f"; TCP connect round trip {rtt['median']:.3f} ms median "
                     f"(min {rtt['min']:.3f}, max {rtt['max']:.3f}, n {rtt['n']})")
        if r["delay_cpu_fraction"]:
            st = r["delay_stats"] or {}
            lines.append("  the NFQUEUE hold's CPU, share of one core while each way ran: "
                         + ", ".join(f"{k} {v:.2f}" for k, v in r["delay_cpu_fraction"].items())
                         + (f"; {st.get('packets')} packets, released late by "
                            f"{st.get('late_mean_ms')} ms on average (max "
                            f"{st.get('late_max_ms')}), kernel drops "
                            f"{st.get('kernel', {}).get('queue_dropped')}+"
                            f"{st.get('kernel', {}).get('user_dropped')}" if st else ""))
        for k, v in r["mib_per_s"].items():
            cpu = r["receiver_cpu_s_per_round"].get(k)
            lines.append(f"  {k:<18} {v:8.1f} MiB/s ({r['fraction_of_link'][k]:.2f} of the link)"
                         f"   rounds (s): {r['seconds_per_round'][k]}"
                         + (f"   receiver CPU s: {cpu}" if cpu else ""))
        lines.append(f"  edgetune / TLS socket {r['ratio_vs_tls_socket']:.2f}, / TLS + sha256 "
                     f"{r['ratio_vs_tls_socket_sha256']:.2f}"
                     + (f", / SFTP {r['ratio_vs_sftp']:.2f}" if r["ratio_vs_sftp"] else ""))
    return finish(result, args.json, lines)


if __name__ == "__main__":
    sys.exit(main())
