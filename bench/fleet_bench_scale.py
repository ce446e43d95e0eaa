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
(median of the runs); every row right. edgetune's modules are byte-compiled before the runs,
as an installed edgetune's are (``compile_like_an_install``). ``--in-process``: also time the
same command run in this process after a warm-up run (no interpreter start, no imports): what
the command's own work costs.
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


def compile_like_an_install() -> Dict[str, str]:
    """The environment for the command, with edgetune's own modules byte-compiled first, as
    pip does when it installs a package: in a checkout installed in editable mode, and with
    PYTHONDONTWRITEBYTECODE set (as on the machine these numbers come from), each start would
    otherwise compile about 50 modules from source (0.1 CPU s, 0.35 s of wall at a load of
    10), which no installed edgetune does. The .pyc files go to the checkout's __pycache__
    directories (ignored by git)."""
    import compileall

    import edgetune
    import edgetune.certs
    import edgetune.host
    import edgetune.protos

    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    sys.dont_write_bytecode = False
    roots = [*edgetune.host.__path__, *edgetune.certs.__path__, *edgetune.protos.__path__,
             str(Path(edgetune.__file__).parent)]
    for root in roots:
        compileall.compile_dir(root, quiet=1, maxlevels=3)
    return env


def run_cli(argv: List[str], inventory: Path, env: Optional[Dict[str, str]] = None
            ) -> Dict[str, Any]:
    """Run ``edgetune ARGV`` as a user would; wall, exit status, JSON, peak RSS and CPU."""
    env = dict(env or os.environ, EDGETUNE_CONFIG=str(inventory))
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
    parser.add_argument("--in-process", type=int, default=0, metavar="N",
                        help="also time N runs in this process after a warm-up run (default 0)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if args.boards < 1 or args.runs < 1 or args.job_s <= 0 or args.in_process < 0:
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
            env = compile_like_an_install()
            for i in range(args.runs):
                since = time.time() - 1.0
                r = run_cli(["fleet", "bench", str(model), "--devices", "all", "--json"],
                            inventory, env)
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
            inproc = in_process_runs(args.in_process, model, inventory, addresses, pki, names)
    control = median(r["control_plane_s"] for r in runs)
    wrong = sum(len(r["problems"]) for r in runs)
    checks = [check("control-plane s (wall - slowest board's job, median of runs)", control,
                    "<=", args.max_s),
              check("wrong rows over all runs", wrong, "==", 0)]
    result = {"benchmark": "fleet_bench_scale", "boards": args.boards,
              "agent_processes": args.processes, "job_s": args.job_s, "model": model.name,
              "runs": runs, "in_process": inproc, "checks": checks, "machine": machine()}
    lines = [f"edgetune fleet bench {model.name} --devices all --json on {args.boards} boards "
             f"(bench agents, {args.processes} processes, jobs sleep {args.job_s:g} s):"]
    for i, r in enumerate(runs):
        lines.append(f"  run {i + 1}: wall {r['wall_s']} s, slowest job {r['slowest_job_s']} s, "
                     f"control plane {r['control_plane_s']} s; host peak RSS "
                     f"{r['host_rss_mb']} MiB, CPU {r['host_cpu_s']} s")
        for p in r["problems"]:
            lines.append(f"    WRONG: {p}")
    for i, r in enumerate(inproc):
        lines.append(f"  in-process run {i + 1}: wall {r['wall_s']} s, slowest job "
                     f"{r['slowest_job_s']} s, control plane {r['control_plane_s']} s"
                     + "".join(f"; WRONG: {p}" for p in r["problems"]))
    return finish(result, args.json, lines)


def in_process_runs(n: int, model: Path, inventory: Path, addresses: Dict[str, str], pki: Any,
                    names: List[str]) -> List[Dict[str, Any]]:
    """``n`` timed runs of the command in this process, after one untimed (imports, the
    database's migrations): the command's own work, without an interpreter's start."""
    import contextlib
    import io

    from edgetune.host.cli import main as cli

    if n <= 0:
        return []
    os.environ["EDGETUNE_CONFIG"] = str(inventory)
    argv = ["fleet", "bench", str(model), "--devices", "all", "--json"]
    out: List[Dict[str, Any]] = []
    for i in range(n + 1):
        since = time.time() - 1.0
        text = io.StringIO()
        start = time.perf_counter()
        with contextlib.redirect_stdout(text), contextlib.redirect_stderr(io.StringIO()):
            code = cli(argv)
        wall = time.perf_counter() - start
        if i == 0:
            continue
        try:
            problems = wrong_rows(json.loads(text.getvalue()), names)
        except json.JSONDecodeError:
            problems = ["no JSON document"]
        if code != 0:
            problems.append(f"exit status {code}")
        slowest = max(job_times(addresses, pki, since).values())
        out.append({"wall_s": round(wall, 3), "slowest_job_s": round(slowest, 3),
                    "control_plane_s": round(wall - slowest, 3), "problems": problems[:10]})
    return out


if __name__ == "__main__":
    sys.exit(main())
