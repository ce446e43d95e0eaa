"""A fixed delay on a link without ``sch_netem``: packets that iptables hands to an NFQUEUE are
held here for ``--delay-ms`` and then accepted, in the order they came.

    python bench/nfq_delay.py --queue 0 --delay-ms 1 [--ready FILE] [--stats FILE]

    # in the namespace whose traffic is to be delayed (bench/netlab.py does this):
    iptables -A INPUT  -i IF -j NFQUEUE --queue-num 0     # what arrives on IF
    iptables -A OUTPUT -o IF -j NFQUEUE --queue-num 0     # what leaves by IF

Pure Python over a raw netlink socket (``NETLINK_NETFILTER``, the nfnetlink_queue messages of
linux/netfilter/nfnetlink_queue.h): it binds the queue, asks for metadata only (no payload
copied) and for whole GSO packets (``NFQA_CFG_F_GSO``: a 64 KiB TCP segment is one message,
not 45), notes each packet's arrival time, and when the oldest is due accepts it and every
earlier one with one batch verdict (``NFQNL_MSG_VERDICT_BATCH``: the ids of a queue rise in
arrival order, and every packet gets the same delay, so the order is kept). Must run in the
namespace of the iptables rules, as root. ``--ready`` is written once the queue is bound;
``--stats`` (JSON: packets, how late the releases were, CPU seconds, the kernel's drop
counters) every second and at exit (SIGTERM/SIGINT). Packets still held at exit are accepted.
``--realtime``: run as SCHED_FIFO 1 (else at nice -10, else as started), so that the link's
delay does not grow with the CPU load of the processes at its ends; it sleeps between
packets, and the kernel's real-time throttling still bounds it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import signal
import socket
import struct
import sys
import time
from collections import deque
from typing import Deque, Dict, Optional, Tuple

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_NO_ENOBUFS = 5
SO_RCVBUFFORCE = 33
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLMSG_ERROR = 2
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT_BATCH, NFQNL_MSG_CONFIG = 0, 3, 2
NFQA_PACKET_HDR, NFQA_VERDICT_HDR = 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN = 1, 2, 3
NFQA_CFG_MASK, NFQA_CFG_FLAGS = 4, 5
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NFQA_CFG_F_GSO = 1 << 2
NF_ACCEPT = 1

NLMSGHDR = struct.Struct("=IHHII")          # len, type, flags, seq, pid (host order)
NFGENMSG = struct.Struct("!BBH")            # family, version, res_id (queue number)
NLATTR = struct.Struct("=HH")               # len, type


def _attr(kind: int, payload: bytes) -> bytes:
    size = NLATTR.size + len(payload)
    return NLATTR.pack(size, kind) + payload + b"\0" * (-size % 4)


def _message(msg: int, queue: int, attrs: bytes, flags: int, seq: int) -> bytes:
    body = NFGENMSG.pack(socket.AF_UNSPEC, 0, queue) + attrs
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), (NFNL_SUBSYS_QUEUE << 8) | msg, flags,
                         seq, 0) + body


class NfqDelay:
    """One bound queue; ``run()`` holds and releases until ``stop`` is set."""

    def __init__(self, queue: int, delay_s: float, maxlen: int = 16384) -> None:
        self.queue, self.delay_s = queue, delay_s
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:   # a deep receive buffer: a packet the kernel cannot post is dropped
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
        self.sock.bind((0, 0))
        self.seq = 0
        self._config(_attr(NFQA_CFG_CMD, struct.pack("!BBH", NFQNL_CFG_CMD_BIND, 0,
                                                     socket.AF_INET)))
        self._config(_attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META))
                     + _attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", maxlen))
                     + _attr(NFQA_CFG_MASK, struct.pack("!I", NFQA_CFG_F_GSO))
                     + _attr(NFQA_CFG_FLAGS, struct.pack("!I", NFQA_CFG_F_GSO)))
        self.held: Deque[Tuple[float, int]] = deque()
        self.stop = False
        self.packets = self.batches = self.errors = self.max_held = 0
        self.late_sum = self.late_max = 0.0
        self.late_over_half_ms = 0
        self.priority = "as started"

    def _config(self, attrs: bytes) -> None:
        """Send a config message and wait for the kernel's acknowledgement (raise on error)."""
        self.seq += 1
        self.sock.send(_message(NFQNL_MSG_CONFIG, self.queue, attrs,
                                NLM_F_REQUEST | NLM_F_ACK, self.seq))
        while True:
            data = self.sock.recv(65536)
            length, kind, _, seq, _ = NLMSGHDR.unpack_from(data)
            if kind == NLMSG_ERROR and seq == self.seq:
                error = struct.unpack_from("=i", data, NLMSGHDR.size)[0]
                if error:
                    raise OSError(-error, f"nfnetlink_queue config of queue {self.queue}: "
                                          f"{os.strerror(-error)}")
                return

    def _receive(self, now: float) -> None:
        """Take every message waiting on the socket; note each packet's due time."""
        due = now + self.delay_s
        held = self.held
        while True:
            try:
                data = self.sock.recv(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            offset = 0
            while offset + NLMSGHDR.size <= len(data):
                length, kind, _, _, _ = NLMSGHDR.unpack_from(data, offset)
                if length < NLMSGHDR.size:
                    break
                if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
                    packet_id = self._packet_id(data, offset, length)
                    if packet_id is not None:
                        held.append((due, packet_id))
                        self.packets += 1
                elif kind == NLMSG_ERROR and struct.unpack_from(
                        "=i", data, offset + NLMSGHDR.size)[0]:
                    self.errors += 1
                offset += (length + 3) & ~3
        if len(held) > self.max_held:
            self.max_held = len(held)

    @staticmethod
    def _packet_id(data: bytes, offset: int, length: int) -> Optional[int]:
        pos, end = offset + NLMSGHDR.size + NFGENMSG.size, offset + length
        while pos + NLATTR.size <= end:
            size, kind = NLATTR.unpack_from(data, pos)
            if size < NLATTR.size:
                return None
            if kind & 0x7FFF == NFQA_PACKET_HDR:
                return struct.unpack_from("!I", data, pos + NLATTR.size)[0]
            pos += (size + 3) & ~3
        return None

    def _release(self, now: float, everything: bool = False) -> None:
        """Accept every held packet that is due (all of them with ``everything``)."""
        held = self.held
        last = None
        while held and (everything or held[0][0] <= now):
            due, last = held.popleft()
            late = now - due
            if late > 0:
                self.late_sum += late
                if late > self.late_max:
                    self.late_max = late
                if late > 0.0005:
                    self.late_over_half_ms += 1
        if last is not None:
            self.seq += 1
            self.sock.send(_message(NFQNL_MSG_VERDICT_BATCH, self.queue,
                                    _attr(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, last)),
                                    NLM_F_REQUEST, self.seq))
            self.batches += 1

    def run(self, stats_path: Optional[str] = None) -> None:
        sock, held, clock = self.sock, self.held, time.monotonic
        next_stats = clock() + 1.0
        while not self.stop:
            now = clock()
            timeout = max(0.0, held[0][0] - now) if held else 0.5
            try:
                readable, _, _ = select.select([sock], [], [], min(timeout, 0.5))
            except InterruptedError:
                continue
            now = clock()
            if readable:
                self._receive(now)
            if held and held[0][0] <= now:
                self._release(now)
            if stats_path and now >= next_stats:
                self.write_stats(stats_path)
                next_stats = now + 1.0
        self._receive(clock())
        self._release(clock(), everything=True)
        if stats_path:
            self.write_stats(stats_path)

    def stats(self) -> Dict[str, object]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {"queue": self.queue, "delay_ms": self.delay_s * 1000, "packets": self.packets,
                "verdict_batches": self.batches, "max_held": self.max_held,
                "late_mean_ms": round(self.late_sum / self.packets * 1000, 4)
                if self.packets else 0.0,
                "late_max_ms": round(self.late_max * 1000, 3),
                "late_over_0.5ms": self.late_over_half_ms, "netlink_errors": self.errors,
                "cpu_s": round(usage.ru_utime + usage.ru_stime, 3), "priority": self.priority,
                "kernel": kernel_counters(self.queue)}

    def write_stats(self, path: str) -> None:
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.stats(), f)
        os.replace(tmp, path)


def raise_priority() -> str:
    """SCHED_FIFO 1, else nice -10, else nothing; says which."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
        return "SCHED_FIFO 1"
    except (OSError, AttributeError):
        pass
    try:
        os.setpriority(os.PRIO_PROCESS, 0, -10)
        return "nice -10"
    except OSError:
        return "as started"


def kernel_counters(queue: int) -> Dict[str, int]:
    """The queue's line of /proc/net/netfilter/nfnetlink_queue (this namespace): packets
    waiting, dropped because the queue was full, dropped because this socket's buffer was."""
    try:
        with open("/proc/net/netfilter/nfnetlink_queue", encoding="ascii") as f:
            for line in f:
                fields = line.split()
                if fields and int(fields[0]) == queue:
                    return {"waiting": int(fields[2]), "queue_dropped": int(fields[5]),
                            "user_dropped": int(fields[6]), "id_sequence": int(fields[7])}
    except (OSError, ValueError, IndexError):
        pass
    return {}


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queue", type=int, default=0, help="NFQUEUE number (default 0)")
    parser.add_argument("--delay-ms", type=float, required=True, help="hold time per packet")
    parser.add_argument("--ready", help="file written once the queue is bound")
    parser.add_argument("--stats", help="JSON statistics, rewritten every second and at exit")
    parser.add_argument("--realtime", action="store_true",
                        help="SCHED_FIFO 1 (else nice -10) for timely releases")
    args = parser.parse_args(argv)
    if args.delay_ms < 0 or not 0 <= args.queue <= 65535:
        parser.error("--delay-ms must be >= 0 and --queue 0..65535")
    delay = NfqDelay(args.queue, args.delay_ms / 1000)
    if args.realtime:
        delay.priority = raise_priority()

    def stop(*_: object) -> None:
        delay.stop = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.ready:
        with open(args.ready, "w", encoding="utf-8") as f:
            f.write(f"{os.getpid()}\n")
    delay.run(args.stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
