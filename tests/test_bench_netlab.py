"""bench/netlab.py's delay where the kernel has no sch_netem: bench/nfq_delay.py holding the
link's packets behind iptables NFQUEUE rules really delays them (a round trip of at least
2 ms with 1 ms each way), loses and corrupts nothing under a bulk transfer, and refuses bad
arguments."""

from __future__ import annotations

import hashlib
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.netlab import (connect_rtt_ms, emulated_link, free_subnet,  # noqa: E402
                          netns_unavailable, nfqueue_unavailable)

SINK = """
import hashlib, socket, sys
srv = socket.socket(); srv.bind((sys.argv[1], 0)); srv.listen(1)
print(srv.getsockname()[1], flush=True)
conn, _ = srv.accept(); h = hashlib.sha256(); n = 0
while True:
    b = conn.recv(1 << 20)
    if not b:
        break
    h.update(b); n += len(b)
print(n, h.hexdigest(), flush=True)
"""


def test_nfq_delay_refuses_bad_arguments() -> None:
    for args in (["--delay-ms", "-1"], ["--delay-ms", "1", "--queue", "70000"], []):
        proc = subprocess.run([sys.executable, str(REPO / "bench" / "nfq_delay.py"), *args],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, (args, proc.stderr)
        assert "usage" in proc.stderr


def test_emulated_link_refuses_an_unknown_delay_mechanism() -> None:
    with pytest.raises(ValueError, match="auto, netem or nfqueue"):
        with emulated_link("100mbit", 1.0, 0, delay_via="tc-magic"):
            pass


@pytest.mark.slow
def test_nfqueue_delay_is_real() -> None:
    reason = netns_unavailable() or nfqueue_unavailable()
    if reason:
        pytest.skip(f"cannot emulate a delayed link here: {reason}")
    with emulated_link("1gbit", 0.0, free_subnet()) as link:
        assert link.delay_via == "" and not link.delay_emulated
        bare = statistics.median(connect_rtt_ms(link.board_ip, 10))
    with emulated_link("1gbit", 1.0, free_subnet(), delay_via="nfqueue") as link:
        assert link.delay_via == "nfqueue" and link.delay_emulated, link
        rtts = connect_rtt_ms(link.board_ip, 20)
        # bulk: 16 MiB host -> board through the hold, GSO packets and all
        data = hashlib.sha256(b"seed").digest() * (16 << 15)
        sink = subprocess.Popen(link.inside([sys.executable, "-c", SINK, link.board_ip]),
                                stdout=subprocess.PIPE, text=True)
        try:
            port = int(sink.stdout.readline())
            start = time.perf_counter()
            with socket.create_connection((link.board_ip, port), timeout=60) as s:
                s.sendall(data)
            got = sink.stdout.readline().split()
            elapsed = time.perf_counter() - start
        finally:
            sink.kill()
            sink.wait()
        time.sleep(1.2)           # the statistics are rewritten every second
        stats = link.delay_stats()
    assert bare < 1.0, bare       # a veth pair alone: tens of microseconds
    assert statistics.median(rtts) >= 2.0, rtts
    assert min(rtts) >= 2.0, rtts
    assert got == [str(len(data)), hashlib.sha256(data).hexdigest()]
    assert elapsed > 0.1          # 16 MiB at 1 Gbit/s takes at least 0.13 s
    assert stats["packets"] >= 40 and stats["kernel"]["queue_dropped"] == 0, stats
