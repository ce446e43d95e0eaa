"""`edgetune fleet status` over a hundred boards of which some never answer.

    python bench/fleet_status_scale.py [--boards 100] [--unreachable 10] [--processes 3]
        [--runs 3] [--json]

Real agents (``bench/fleet_agents.py``: ``AgentServer``s, each with its own certificate, store
and job database, several to a process so that a hundred fit on two cores) serve
``boards - unreachable`` of the boards; the others, spread through the list, are half black
holes (a TCP port that accepts connections, the kernel completing the handshake, and never
answers TLS) and half closed ports (connection refused). A generated edgetune.toml lists them
all; each run is the command a user types, in a fresh process:

    edgetune fleet status --devices all --json

timed from start to exit (wall). Every row is checked: one per board, in the inventory's order,
``serving`` with the board's own certificate name (``agent_name``) for a live board,
``unreachable`` for the others, and the exit status is the documented "unreachable" one.
For scale (no target) the same command over one live board (start-up and one round trip).
Target (issue 12): <= 3 s wall (median of the runs), every row right in every run.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import check, finish, log_progress, machine, median  # noqa: E402
from bench.fleet_agents import agents_running, make_fleet_pki  # noqa: E402


def edgetune_command() -> List[str]:
    """The installed ``edgetune`` script beside this Python (no pyenv shim in the timing),
    else ``python -m edgetune.host``."""
    script = Path(sys.executable).parent / "edgetune"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "edgetune.host"]


def write_inventory(path: Path, pki: Any, addresses: Dict[str, str]) -> None:
    lines = ["# edgetune.toml made by bench/fleet_status_scale.py", "[host]",
             f'ca = "{pki.ca_cert}"', f'cert = "{pki.host_cert}"', f'key = "{pki.host_key}"',
             f'passphrase_file = "{pki.passphrase_file}"', ""]
    for name, address in addresses.items():
        lines += [f"[devices.{name}]", f'address = "{address}"', 'tags = ["bench"]', ""]
    path.write_text("\n".join(lines))


def dead_addresses(count: int) -> tuple[Dict[int, str], List[socket.socket]]:
    """``count`` addresses nothing answers on: even ones accept TCP (a listening socket this
    process never accepts from: the kernel completes the handshake) and never speak TLS, odd
    ones are closed ports. Returns them by index and the sockets to keep open."""
    holes: List[socket.socket] = []
    found: Dict[int, str] = {}
    closed: List[socket.socket] = []
    for i in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        if i % 2 == 0:
            s.listen(128)
            holes.append(s)
        else:
            closed.append(s)
        found[i] = f"127.0.0.1:{s.getsockname()[1]}"
    for s in closed:            # bound but never listening, then released: refused
        s.close()
    return found, holes


def run_status(inventory: Path) -> tuple[float, int, Dict[str, Any], str, float]:
    """(wall s, exit status, JSON, stderr, CPU s) of the command, in a fresh process."""
    env = dict(os.environ, EDGETUNE_CONFIG=str(inventory))
    env.pop("EDGETUNE_PASSPHRASE", None)
    out, err = inventory.parent / "status.out", inventory.parent / "status.err"
    with open(out, "wb") as o, open(err, "wb") as e:
        start = time.perf_counter()
        proc = subprocess.Popen([*edgetune_command(), "fleet", "status", "--devices", "all",
                                 "--json"], stdout=o, stderr=e, env=env, cwd=inventory.parent,
                                stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    try:
        doc = json.loads(out.read_text())
    except json.JSONDecodeError:
        doc = {}
    return (wall, os.waitstatus_to_exitcode(status), doc, err.read_text(errors="replace"),
            usage.ru_utime + usage.ru_stime)


def wrong_rows(doc: Dict[str, Any], expected: Dict[str, str]) -> List[str]:
    """What is wrong with the rows (empty: every row right). ``expected``: name -> state."""
    rows = doc.get("devices", [])
    problems = []
    names = [r.get("name") for r in rows]
    if names != list(expected):
        problems.append(f"rows {names[:5]}... are not the {len(expected)} boards in order")
    for row in rows:
        want = expected.get(row.get("name"))
        if want is None:
            continue
        if row.get("state") != want:
            problems.append(f"{row.get('name')}: {row.get('state')} ({row.get('reason')}), "
                            f"expected {want}")
        elif want == "serving" and row.get("agent_name") != row.get("name"):
            problems.append(f"{row.get('name')}: answered as {row.get('agent_name')!r}")
        elif want == "unreachable" and not row.get("reason"):
            problems.append(f"{row.get('name')}: unreachable without a reason")
    return problems


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--boards", type=int, default=100, help="boards listed (default 100)")
    parser.add_argument("--unreachable", type=int, default=10,
                        help="of which nothing answers (default 10)")
    parser.add_argument("--processes", type=int, default=3,
                        help="processes the live agents share (default 3)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs (default 3)")
    parser.add_argument("--max-s", type=float, default=3.0, help="the target (default 3 s)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if args.boards < 2 or not 0 <= args.unreachable < args.boards or args.runs < 1:
        parser.error("need --boards >= 2, 0 <= --unreachable < --boards, --runs >= 1")

    from edgetune.exitcodes import ExitStatus

    names = [f"board{i:03d}" for i in range(args.boards)]
    step = args.boards // args.unreachable if args.unreachable else 0
    dead_idx = [i * step + step // 2 for i in range(args.unreachable)]
    dead_names = [names[i] for i in dead_idx]
    live = [n for n in names if n not in dead_names]
    with tempfile.TemporaryDirectory(prefix="edgetune-bench-") as tmp:
        d = Path(tmp)
        log_progress(args.json, f"issuing {len(live)} board certificates")
        pki = make_fleet_pki(d / "pki", live)
        dead, holes = dead_addresses(args.unreachable)
        log_progress(args.json, f"starting {len(live)} agents in {args.processes} processes")
        started = time.perf_counter()
        with agents_running(pki, live, d, args.processes) as fleet:
            start_s = time.perf_counter() - started
            addresses = {}
            for name in names:
                addresses[name] = (dead[dead_names.index(name)] if name in dead_names
                                   else fleet["addresses"][name])
            inventory = d / "edgetune.toml"
            write_inventory(inventory, pki, addresses)
            one = d / "one" / "edgetune.toml"
            one.parent.mkdir()
            write_inventory(one, pki, {live[0]: addresses[live[0]]})
            expected = {n: ("unreachable" if n in dead_names else "serving") for n in names}
            walls, one_walls, problems, codes, cpus = [], [], [], [], []
            for run in range(args.runs):
                wall, code, doc, err, cpu = run_status(inventory)
                walls.append(wall)
                cpus.append(cpu)
                codes.append(code)
                bad = wrong_rows(doc, expected)
                if code != int(ExitStatus.UNREACHABLE if dead_names else 0):
                    bad.append(f"exit status {code}: {err.strip()[-300:]}")
                problems.append(bad)
                one_wall, one_code, one_doc, one_err, _ = run_status(one)
                one_walls.append(one_wall)
                if one_code != 0:
                    problems[-1].append(f"one board: exit {one_code}: {one_err.strip()[-300:]}")
                log_progress(args.json, f"run {run + 1}/{args.runs}: {wall:.2f} s, "
                             f"{len(bad)} wrong rows; one board {one_wall:.2f} s")
                slowest = sorted(doc.get("devices", []), key=lambda r: -r.get("elapsed_s", 0))
        for s in holes:
            s.close()
    wrong = sum(len(p) for p in problems)
    checks = [check("fleet status wall s (median of runs)", median(walls), "<=", args.max_s),
              check("wrong rows over all runs", wrong, "==", 0)]
    result = {
        "benchmark": "fleet_status_scale", "boards": args.boards,
        "unreachable": {"black_holes": dead_names[0::2], "closed_ports": dead_names[1::2]},
        "agent_processes": args.processes, "agents_start_s": round(start_s, 2),
        "wall_s_per_run": [round(w, 3) for w in walls],
        "one_board_wall_s_per_run": [round(w, 3) for w in one_walls],
        "host_cpu_s_per_run": [round(c, 2) for c in cpus],
        "exit_status_per_run": codes, "problems": [p[:10] for p in problems],
        "slowest_rows_last_run": [{k: r.get(k) for k in ("name", "state", "elapsed_s", "reason")}
                                  for r in slowest[:3]],
        "checks": checks, "machine": machine(),
    }
    lines = [f"edgetune fleet status --devices all --json over {args.boards} boards "
             f"({args.unreachable} unreachable: {len(dead_names[0::2])} black holes, "
             f"{len(dead_names[1::2])} closed ports; {len(live)} agents in {args.processes} "
             f"processes), {args.runs} runs:",
             f"  wall s: {result['wall_s_per_run']} (median {median(walls):.2f}); the "
             f"command's CPU s: {result['host_cpu_s_per_run']}",
             f"  for scale, the same command over one live board: {result['one_board_wall_s_per_run']}",
             f"  slowest rows of the last run: {result['slowest_rows_last_run']}"]
    for i, p in enumerate(problems):
        for line in p[:10]:
            lines.append(f"  run {i + 1}: WRONG: {line}")
    return finish(result, args.json, lines)


if __name__ == "__main__":
    sys.exit(main())
