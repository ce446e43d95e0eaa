"""`edgetune fleet bench` of a small model on 32 boards: the host's control-plane time.

    python bench/fleet_bench_scale.py [--boards 32] [--processes 4] [--job-s 3] [--runs 3]
        [--json]

The boards are real agents (``bench/fleet_agents.py``: ``AgentServer``s with their own
certificates, stores, job databases and leases, several to a process) whose runner is the
benchmark-only one: a benchmark job sleeps ``--job-s`` and returns fixed numbers instead of
running onnxruntime, so that what is timed is the host's work: hash, upload (dedup), lease,
submit, watch, record. Each run is the command a user types, in a fresh process, against a
generated edgetune.toml (its results database a temporary SQLite file):

    edgetune fleet bench digits_cnn.onnx --devices all --json

timed from start to exit (wall); then every board's own job time (its job's finished -
started, read from the agent) is fetched and the control-plane time is wall minus the slowest
board's job time. The host process's peak RSS and CPU seconds come from wait4. Every board
must have one succeeded row with a result id. Targets (issue 12): control-plane time <= 2 s
(median of the runs); every row right.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import check, connect, finish, log_progress, machine, median  # noqa: E402
from bench.fleet_agents import agents_running, make_fleet_pki  # noqa: E402
from bench.fleet_status_scale import edgetune_command  # noqa: E402

SUCCEEDED = ("succeeded", "done", "ok")


def write_inventory(path: Path, pki: Any, addresses: Dict[str, str], db: Path) -> None:
    lines = ["# edgetune.toml made by bench/fleet_bench_scale.py", "[host]",
             f'ca = "{pki.ca_cert}"', f'cert = "{pki.host_cert}"', f'key = "{pki.host_key}"',
             f'passphrase_file = "{pki.passphrase_file}"', "", "[results]", f'db = "{db}"', ""]
    for name, address in addresses.items():
        lines += [f"[devices.{name}]", f'address = "{address}"', 'tags = ["bench"]', ""]
    path.write_text("\n".join(lines))


def run_cli(argv: List[str], inventory: Path) -> Dict[str, Any]:
    """Run ``edgetune ARGV`` as a user would; wall, exit status, JSON, peak RSS and CPU."""
    env = dict(os.environ, EDGETUNE_CONFIG=str(inventory))
    env.pop("EDGETUNE_PASSPHRASE", None)
    out, err = inventory.parent / "cli.out", inventory.parent / "cli.err"
    with open(out, "wb") as o, open(err, "wb") as e:
        start = time.perf_counter()
        proc = subprocess.Popen([*edgetune_command(), *argv], stdout=o, stderr=e, env=env,
                                cwd=inventory.parent, stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    try:
        doc = json.loads(out.read_text())
    except json.JSONDecodeError:
        doc = {}
    return {"wall_s": wall, "code": proc.returncode, "doc": doc,
            "stderr": err.read_text(errors="replace"),
            "rss_mb": usage.ru_maxrss / 1024.0, "cpu_s": usage.ru_utime + usage.ru_stime}


def job_times(addresses: Dict[str, str], pki: Any, since: float) -> Dict[str, float]:
    """Each board's running time (finished - started) of its jobs created after ``since``
    (the longest, if several)."""
    times: Dict[str, float] = {}
    for name, address in addresses.items():
        with connect(address, pki) as client:
            jobs = [j for j in client.list_jobs() if j.created_unix >= since]
        spans = [j.finished_unix - j.started_unix for j in jobs
                 if j.finished_unix and j.started_unix]
        times[name] = max(spans) if spans else float("nan")
    return times


def wrong_rows(doc: Dict[str, Any], names: List[str]) -> List[str]:
    rows = doc.get("rows", [])
    problems = []
    by_device: Dict[str, List[Dict[str, Any]]] = {}
    for row in rows:
        by_device.setdefault(row.get("device"), []).append(row)
    for name in names:
        mine = by_device.get(name, [])
        if len(mine) != 1:
            problems.append(f"{name}: {len(mine)} rows")
            continue
        row = mine[0]
        if str(row.get("state")).lower() not in SUCCEEDED or not row.get("result_id"):
            problems.append(f"{name}: {row.get('state')} {row.get('error')!r}")
    extra = set(by_device) - set(names)
    if extra:
        problems.append(f"rows for boards not asked: {sorted(extra)[:5]}")
    return problems


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--boards", type=int, default=32, help="boards (default 32)")
    parser.add_argument("--processes", type=int, default=4,
                        help="processes the agents share (default 4)")
    parser.add_argument("--job-s", type=float, default=3.0,
                        help="each board's benchmark job sleeps this long (default 3)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs (default 3)")
    parser.add_argument("--max-s", type=float, default=2.0, help="the target (default 2 s)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if args.boards < 1 or args.runs < 1 or args.job_s <= 0:
        parser.error("need --boards >= 1, --runs >= 1, --job-s > 0")

    from edgetune.host.samples import __file__ as samples_init

    model = Path(samples_init).parent / "digits_cnn.onnx"
    names = [f"board{i:03d}" for i in range(args.boards)]
    runs: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="edgetune-bench-") as tmp:
        d = Path(tmp)
        os.environ["EDGETUNE_HASH_CACHE"] = str(d / "hashes.json")
        log_progress(args.json, f"issuing {len(names)} board certificates")
        pki = make_fleet_pki(d / "pki", names)
        log_progress(args.json, f"starting {len(names)} agents in {args.processes} processes")
        with agents_running(pki, names, d, args.processes, sleep_s=args.job_s) as fleet:
            addresses = fleet["addresses"]
            inventory = d / "edgetune.toml"
            write_inventory(inventory, pki, addresses, d / "results.db")
            for i in range(args.runs):
                since = time.time() - 1.0
                r = run_cli(["fleet", "bench", str(model), "--devices", "all", "--json"],
                            inventory)
                problems = wrong_rows(r["doc"], names)
                if r["code"] != 0:
                    problems.append(f"exit status {r['code']}: {r['stderr'].strip()[-400:]}")
                jobs = job_times(addresses, pki, since)
                slowest = max(jobs.values()) if jobs else float("nan")
                runs.append({"wall_s": round(r["wall_s"], 3), "slowest_job_s": round(slowest, 3),
                             "control_plane_s": round(r["wall_s"] - slowest, 3),
                             "host_rss_mb": round(r["rss_mb"], 1),
                             "host_cpu_s": round(r["cpu_s"], 2), "problems": problems[:10]})
                log_progress(args.json, f"run {i + 1}/{args.runs}: wall {r['wall_s']:.2f} s, "
                             f"slowest job {slowest:.2f} s, host {r['rss_mb']:.0f} MiB "
                             f"{r['cpu_s']:.2f} CPU s, {len(problems)} problems")
    control = median(r["control_plane_s"] for r in runs)
    wrong = sum(len(r["problems"]) for r in runs)
    checks = [check("control-plane s (wall - slowest board's job, median of runs)", control,
                    "<=", args.max_s),
              check("wrong rows over all runs", wrong, "==", 0)]
    result = {"benchmark": "fleet_bench_scale", "boards": args.boards,
              "agent_processes": args.processes, "job_s": args.job_s, "model": model.name,
              "runs": runs, "checks": checks, "machine": machine()}
    lines = [f"edgetune fleet bench {model.name} --devices all --json on {args.boards} boards "
             f"(bench agents, {args.processes} processes, jobs sleep {args.job_s:g} s):"]
    for i, r in enumerate(runs):
        lines.append(f"  run {i + 1}: wall {r['wall_s']} s, slowest job {r['slowest_job_s']} s, "
                     f"control plane {r['control_plane_s']} s; host peak RSS "
                     f"{r['host_rss_mb']} MiB, CPU {r['host_cpu_s']} s")
        for p in r["problems"]:
            lines.append(f"    WRONG: {p}")
    return finish(result, args.json, lines)


if __name__ == "__main__":
    sys.exit(main())
