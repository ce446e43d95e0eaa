"""One 100 MiB model to 16 boards: `edgetune fleet bench`'s upload vs the same bytes over one
connection of the same capacity.

    python bench/fleet_upload.py [--boards 16] [--mib 100] [--rate 1gbit] [--processes 4]
        [--rounds 3] [--json]

The boards are real agents (``bench/fleet_agents.py``, the benchmark-only runner whose job
sleeps 0.1 s) in a network namespace behind one veth link shaped with ``tc`` to ``--rate``
(``bench/netlab.py``); ``bench/tls_sink.py`` (mutual TLS, sha256-hashing what it receives, as
each agent must) waits behind the same link. Each round makes a fresh model (a MatMul with
``--mib`` MiB of random float32 weights: nothing deduplicates) and times, as a user types them:

- A: ``edgetune fleet bench MODEL --devices all --json``: hash, upload to every board, submit,
  watch, record;
- B: the same command again: every board has the model, nothing is uploaded, the rest is A's
  work again;
- baseline: the same bytes (boards x the file) sent over one TLS connection into the sink.

The fleet upload's time is A - B, and the ratio (A - B) / baseline has the target <= 1.5
(issue 12). For scale, A - B against the link's own bound (boards x size at the tc rate; the
baseline's single Python receiver may not reach it on a loaded machine). For scale, the host's file passes: the bytes the edgetune process read
(``/proc/PID/io`` rchar, sampled while it runs) in A minus in B, over the file's size (the
host must not hash or read the file once per board: about 1-2, not 16). Says so and skips
where network namespaces are not available.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import check, finish, log_progress, machine, median  # noqa: E402
from bench.fleet_agents import agents_running, make_fleet_pki  # noqa: E402
from bench.fleet_bench_scale import wrong_rows, write_inventory  # noqa: E402
from bench.fleet_status_scale import edgetune_command  # noqa: E402
from bench.netlab import (_rate_bits, board_ip, emulated_link, free_subnet,  # noqa: E402
                          netns_unavailable)
from bench.tls_sink import HEADER  # noqa: E402
from bench.upload_links import tls_sink  # noqa: E402

CHUNK = 1 << 20


def make_model(path: Path, mib: int, seed: int) -> None:
    """A valid ONNX model Y = X @ W with W about ``mib`` MiB of random float32."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n = int((mib * (1 << 20) / 4) ** 0.5)
    w = np.random.default_rng(seed).standard_normal((n, n), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["Y"])], "bench_big",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, n])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, n])],
        [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save_model(model, str(path))


def run_cli(argv: List[str], inventory: Path) -> Dict[str, Any]:
    """``edgetune ARGV`` as a user would: wall, exit status, JSON, and the bytes it read
    (rchar, sampled every 20 ms while it runs)."""
    env = dict(os.environ, EDGETUNE_CONFIG=str(inventory))
    env.pop("EDGETUNE_PASSPHRASE", None)
    out, err = inventory.parent / "cli.out", inventory.parent / "cli.err"
    rchar = [0]
    with open(out, "wb") as o, open(err, "wb") as e:
        start = time.perf_counter()
        proc = subprocess.Popen([*edgetune_command(), *argv], stdout=o, stderr=e, env=env,
                                cwd=inventory.parent, stdin=subprocess.DEVNULL)

        def sample() -> None:
            while proc.poll() is None:
                try:
                    with open(f"/proc/{proc.pid}/io") as f:
                        for line in f:
                            if line.startswith("rchar:"):
                                rchar[0] = max(rchar[0], int(line.split()[1]))
                except OSError:
                    pass
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        proc.wait()
        wall = time.perf_counter() - start
        sampler.join()
    try:
        doc = json.loads(out.read_text())
    except json.JSONDecodeError:
        doc = {}
    return {"wall_s": wall, "code": proc.returncode, "doc": doc, "rchar": rchar[0],
            "stderr": err.read_text(errors="replace")}


def one_connection(src: Path, times: int, pki: Any, address: str) -> float:
    """Seconds to send ``times`` x src over one mutual-TLS connection into the hashing sink."""
    host, _, port = address.rpartition(":")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_cert_chain(pki.host_cert, pki.host_key, password=pki.passphrase)
    context.load_verify_locations(pki.ca_cert)
    size = src.stat().st_size
    with socket.create_connection((host, int(port)), timeout=600) as raw, \
            context.wrap_socket(raw, server_hostname=host) as tls:
        tls.do_handshake()
        start = time.perf_counter()
        tls.sendall(HEADER.pack(b"h", size * times))
        for _ in range(times):
            with open(src, "rb") as f:
                while chunk := f.read(CHUNK):
                    tls.sendall(chunk)
        reply = b""
        while len(reply) < 33:
            more = tls.recv(33 - len(reply))
            if not more:
                raise ConnectionError("the TLS sink closed before it acknowledged")
            reply += more
        return time.perf_counter() - start


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--boards", type=int, default=16, help="boards (default 16)")
    parser.add_argument("--mib", type=int, default=100, help="model size (default 100)")
    parser.add_argument("--rate", default="1gbit", help="the link (tc rate; default 1gbit)")
    parser.add_argument("--processes", type=int, default=4,
                        help="processes the agents share (default 4)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--max-ratio", type=float, default=1.5, help="the target (default 1.5)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if args.boards < 1 or args.mib < 1 or args.rounds < 1:
        parser.error("--boards, --mib and --rounds must be at least 1")
    reason = netns_unavailable()
    if reason:
        return finish({"benchmark": "fleet_upload", "skipped": reason, "checks": [],
                       "machine": machine()}, args.json,
                      [f"fleet upload over an emulated link: SKIPPED: {reason}"])

    names = [f"board{i:03d}" for i in range(args.boards)]
    rounds: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="edgetune-bench-") as tmp:
        d = Path(tmp)
        os.environ["EDGETUNE_HASH_CACHE"] = str(d / "hashes.json")
        subnet = free_subnet()
        pki = make_fleet_pki(d / "pki", names, ips=["127.0.0.1", board_ip(subnet)])
        with emulated_link(args.rate, 0.0, subnet) as link:
            log_progress(args.json, f"starting {args.boards} agents behind {link.qdisc}")
            with agents_running(pki, names, d, args.processes, sleep_s=0.1,
                                host=link.board_ip, prefix=link.inside([])) as fleet, \
                    tls_sink(link.inside([]), f"{link.board_ip}:0", pki, d) as (_, sink):
                inventory = d / "edgetune.toml"
                write_inventory(inventory, pki, fleet["addresses"], d / "results.db")
                for i in range(args.rounds):
                    model = d / f"big{i}.onnx"
                    make_model(model, args.mib, seed=i)
                    size = model.stat().st_size
                    os.sync()
                    command = ["fleet", "bench", str(model), "--devices", "all", "--json"]
                    a = run_cli(command, inventory)
                    b = run_cli(command, inventory)
                    os.sync()
                    base = one_connection(model, args.boards, pki, sink)
                    problems = wrong_rows(a["doc"], names) + wrong_rows(b["doc"], names)
                    for run, label in ((a, "A"), (b, "B")):
                        if run["code"] != 0:
                            problems.append(f"{label}: exit status {run['code']}: "
                                            f"{run['stderr'].strip()[-400:]}")
                    upload = a["wall_s"] - b["wall_s"]
                    ideal = args.boards * size * 8 / _rate_bits(args.rate)
                    rounds.append({
                        "size_mib": round(size / (1 << 20), 1), "a_wall_s": round(a["wall_s"], 3),
                        "b_wall_s": round(b["wall_s"], 3), "upload_s": round(upload, 3),
                        "one_connection_s": round(base, 3),
                        "ratio": round(upload / base, 3),
                        "link_bound_s": round(ideal, 3), "ratio_vs_link": round(upload / ideal, 3),
                        "host_file_passes": round((a["rchar"] - b["rchar"]) / size, 2),
                        "problems": problems[:10]})
                    log_progress(args.json, f"round {i + 1}/{args.rounds}: fleet upload "
                                 f"{upload:.2f} s (A {a['wall_s']:.2f} - B {b['wall_s']:.2f}), "
                                 f"one connection {base:.2f} s, {len(problems)} problems")
                    model.unlink()
    ratio = median(r["ratio"] for r in rounds)
    wrong = sum(len(r["problems"]) for r in rounds)
    checks = [check("fleet upload / one connection (median of rounds)", ratio, "<=",
                    args.max_ratio),
              check("wrong rows over all rounds", wrong, "==", 0)]
    result = {"benchmark": "fleet_upload", "boards": args.boards, "link": link.as_json(),
              "agent_processes": args.processes, "rounds": rounds, "checks": checks,
              "machine": machine()}
    lines = [f"one {rounds[0]['size_mib']} MiB model to {args.boards} boards behind "
             f"{link.qdisc}, vs the same bytes over one connection on that link:"]
    for i, r in enumerate(rounds):
        lines.append(f"  round {i + 1}: fleet upload {r['upload_s']} s (A {r['a_wall_s']} - "
                     f"B {r['b_wall_s']}), one connection {r['one_connection_s']} s: "
                     f"{r['ratio']}x (the link's own bound: {r['link_bound_s']} s, "
                     f"{r['ratio_vs_link']}x); the upload read the file "
                     f"{r['host_file_passes']} times")
        for p in r["problems"]:
            lines.append(f"    WRONG: {p}")
    return finish(result, args.json, lines)


if __name__ == "__main__":
    sys.exit(main())
