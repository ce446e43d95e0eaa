"""``edgetune deploy`` over SSH on loopback: a fresh board, the no-op re-run, 8 boards at once.

    python bench/deploy_speed.py [--boards 8] [--skip-fresh-many] [--json]

Each "board" is this machine reached through its own OpenSSH sshd on loopback (bench/sshd.py),
installed into its own temp prefix from a local wheelhouse made once for the board's Python
(cached under ~/.cache/edgetune, or $EDGETUNE_CACHE); the agents start detached (no systemd
here). Everything runs through the CLI in-process, as a user would type it.

Measured, each beside its baseline in the same run:
- fresh deploy of one board, against the same work done by hand over one SSH connection
  (SFTP the wheelhouse, ``python3 -m venv``, ``pip install --no-index``, no certificates, no
  service, no health check): target deploy <= 60 s;
- the no-op re-run of that board ("up to date"), against one SSH login running ``true``:
  target <= 5 s;
- the no-op re-run of N boards at once (``--devices tag:bench``) against one board's no-op:
  target <= 2x;
- a fresh deploy of N boards at once (``--devices``): wall time and this process's own CPU
  time (user + system, with its children), no target (the boards' installs share this
  machine's cores, which real boards would not).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import check, finish, log_progress, machine, make_pki  # noqa: E402
from bench.sshd import SshServer, local_sshd  # noqa: E402

BOARD_PYTHON = "/usr/bin/python3"


def board_python() -> str:
    if os.access(BOARD_PYTHON, os.X_OK) and subprocess.run(
            [BOARD_PYTHON, "-c", "import venv, ensurepip"], capture_output=True).returncode == 0:
        return BOARD_PYTHON
    return sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(*argv: str) -> Tuple[int, str, str, float]:
    from edgetune.host.cli import main

    out, err = io.StringIO(), io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue(), time.perf_counter() - started


def host_cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def make_wheelhouse(python: str) -> Path:
    import json

    from edgetune.host.deploy.probe import BoardFacts
    from edgetune.host.deploy.wheelhouse import build_wheelhouse

    helper = Path(__file__).resolve().parent.parent / "host" / "deploy" / "boardctl.py"
    doc = json.loads(subprocess.run([python, "-", "probe", tempfile.gettempdir()], check=True,
                                    capture_output=True, input=helper.read_bytes()).stdout)
    facts = BoardFacts.from_json(doc)
    return build_wheelhouse(facts.platform_tags(), facts.python_tuple,
                            with_onnxruntime=True).directory


def by_hand(sshd: SshServer, known_hosts: Path, wheelhouse: Path, prefix: Path,
            python: str) -> float:
    """The floor: SFTP the wheels, make a venv, pip install them, over one SSH login."""
    import paramiko

    started = time.perf_counter()
    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts))
    client.connect(sshd.host, sshd.port, sshd.user, key_filename=str(sshd.client_key),
                   allow_agent=False, look_for_keys=False)
    try:
        wheels = prefix / "wheels"
        client.exec_command(f"mkdir -p {wheels}")[1].channel.recv_exit_status()
        sftp = client.open_sftp()
        for wheel in sorted(wheelhouse.glob("*.whl")):
            sftp.put(str(wheel), str(wheels / wheel.name))
        sftp.close()
        names = " ".join(w.name.split("-")[0] for w in wheelhouse.glob("edgetune-*.whl"))
        _, out, err = client.exec_command(
            f"{python} -m venv {prefix}/venv && PIP_CONFIG_FILE=/dev/null {prefix}/venv/bin/python "
            f"-m pip install --quiet --no-index --no-cache-dir --find-links {wheels} "
            f"'{names}[device]'")
        if out.channel.recv_exit_status() != 0:
            raise RuntimeError(err.read().decode())
    finally:
        client.close()
    return time.perf_counter() - started


def ssh_true(sshd: SshServer, known_hosts: Path) -> float:
    import paramiko

    started = time.perf_counter()
    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts))
    client.connect(sshd.host, sshd.port, sshd.user, key_filename=str(sshd.client_key),
                   allow_agent=False, look_for_keys=False)
    client.exec_command("true")[1].channel.recv_exit_status()
    client.close()
    return time.perf_counter() - started


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boards", type=int, default=8)
    parser.add_argument("--skip-fresh-many", action="store_true",
                        help="leave out the fresh deploy of all boards at once")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(list(argv))
    quiet = args.json
    python = board_python()
    tmp = Path(tempfile.mkdtemp(prefix="edgetune-bench-deploy-"))
    tmp.chmod(0o755)
    try:
        os.environ["HOME"] = str(tmp / "home")
        pki = make_pki(tmp / "pki")
        os.environ["EDGETUNE_PASSPHRASE"] = pki.passphrase.decode()
        log_progress(quiet, "making the wheelhouse (cached after the first run)")
        wheelhouse = make_wheelhouse(python)
        inventory = tmp / "edgetune.toml"
        known = tmp / "known_hosts"
        with contextlib.ExitStack() as stack:
            servers = [stack.enter_context(local_sshd()) for _ in range(args.boards + 1)]
            for sshd in servers:
                key = sshd.host_key_pub.read_text().split()
                with known.open("a") as fh:
                    fh.write(f"[{sshd.host}]:{sshd.port} {key[0]} {key[1]}\n")
            common = ["--inventory", str(inventory), "--known-hosts", str(known),
                      "--wheelhouse", str(wheelhouse), "--python", python,
                      "--onnxruntime", "pypi", "--service-user", "root", "--pki", str(pki.dir)]

            def deploy_flags(i: int, sshd: SshServer, tag: str) -> List[str]:
                return ["deploy", f"b{i}", "--ssh", f"{sshd.user}@{sshd.host}:{sshd.port}",
                        "--identity", str(sshd.client_key), "--prefix", str(tmp / f"b{i}"),
                        "--listen", f"127.0.0.1:{free_port()}", "--tag", tag, *common]

            # 1. fresh deploy of one board, and the same install by hand
            log_progress(quiet, "fresh deploy of one board")
            cpu0 = host_cpu()
            code, out, err, fresh_s = cli(*deploy_flags(0, servers[0], "one"))
            if code != 0:
                raise SystemExit(f"deploy failed ({code}):\n{out}\n{err}")
            fresh_cpu = host_cpu() - cpu0
            log_progress(quiet, f"  {fresh_s:.1f} s; by hand")
            hand_s = by_hand(servers[-1], known, wheelhouse, tmp / "by-hand", python)
            # 2. the no-op re-run of that board, and one SSH login
            log_progress(quiet, "no-op re-runs")
            noop = []
            for _ in range(3):
                code, out, err, seconds = cli("deploy", "b0", "--inventory", str(inventory))
                if code != 0 or "up to date" not in out:
                    raise SystemExit(f"the re-run was not a no-op ({code}):\n{out}\n{err}")
                noop.append(seconds)
            login = sorted(ssh_true(servers[0], known) for _ in range(3))[1]
            noop_s = sorted(noop)[1]
            # 3. a fresh deploy of N boards at once, then their no-op re-run at once
            many = [deploy_flags(i, s, "bench") for i, s in
                    enumerate(servers[1:args.boards + 1], start=1)]
            from edgetune.host.deploy.record import upsert_device
            for i, flags in enumerate(many, start=1):
                # listed first (as `edgetune deploy NAME --ssh ...` of each would), so that
                # --devices can then deploy them all at once
                upsert_device(inventory, f"b{i}", flags[flags.index("--listen") + 1],
                              tags=["bench"], deploy={
                                  "ssh": flags[3], "identity": flags[5], "prefix": flags[7],
                                  "listen": flags[flags.index("--listen") + 1],
                                  "known_hosts": str(known), "wheelhouse": str(wheelhouse),
                                  "python": python, "onnxruntime": "pypi",
                                  "service_user": "root"})
            result: Dict[str, Any] = {"boards": args.boards, "machine": machine()}
            if not args.skip_fresh_many:
                log_progress(quiet, f"fresh deploy of {args.boards} boards at once")
                cpu0 = host_cpu()
                code, out, err, many_fresh_s = cli("deploy", "--devices", "tag:bench",
                                                   "--inventory", str(inventory))
                if code != 0:
                    raise SystemExit(f"deploy --devices failed ({code}):\n{out}\n{err}")
                result["fresh_many_s"] = round(many_fresh_s, 2)
                result["fresh_many_host_cpu_s"] = round(host_cpu() - cpu0, 2)
                log_progress(quiet, "no-op re-run of all boards at once")
                many_noop = []
                for _ in range(3):
                    code, out, err, seconds = cli("deploy", "--devices", "tag:bench",
                                                  "--inventory", str(inventory))
                    if code != 0 or out.count("up to date") != args.boards:
                        raise SystemExit(f"not a no-op ({code}):\n{out}\n{err}")
                    many_noop.append(seconds)
                result["noop_many_s"] = round(sorted(many_noop)[1], 3)
            result.update({"fresh_s": round(fresh_s, 2), "fresh_host_cpu_s": round(fresh_cpu, 2),
                           "by_hand_s": round(hand_s, 2), "noop_s": round(noop_s, 3),
                           "ssh_login_s": round(login, 3)})
            checks = [check("fresh deploy s", fresh_s, "<=", 60),
                      check("no-op re-run s", noop_s, "<=", 5)]
            lines = [f"fresh deploy of one board: {fresh_s:.1f} s (host CPU {fresh_cpu:.1f} s); "
                     f"the same install by hand: {hand_s:.1f} s; ratio {fresh_s / hand_s:.2f}",
                     f"no-op re-run: {noop_s:.2f} s (median of 3); one SSH login + true: "
                     f"{login:.2f} s; ratio {noop_s / login:.1f}"]
            if "noop_many_s" in result:
                ratio = result["noop_many_s"] / noop_s
                result["noop_many_ratio"] = round(ratio, 2)
                checks.append(check(f"no-op of {args.boards} / no-op of 1", ratio, "<=", 2))
                lines += [f"fresh deploy of {args.boards} boards at once: "
                          f"{result['fresh_many_s']:.1f} s wall, host CPU "
                          f"{result['fresh_many_host_cpu_s']:.1f} s (this process and its "
                          "children; the boards' installs are sshd's children, not counted)",
                          f"no-op re-run of {args.boards} boards at once: "
                          f"{result['noop_many_s']:.2f} s; ratio to one board {ratio:.2f}"]
            result["checks"] = checks
            return finish(result, args.json, lines)
    finally:
        _kill_agents(tmp)
        shutil.rmtree(tmp, ignore_errors=True)


def _kill_agents(tmp: Path) -> None:
    """The agents the run started (their pid files under the temp prefixes)."""
    import signal

    for pid_file in tmp.glob("*/run/agent.pid"):
        with contextlib.suppress(Exception):
            os.kill(int(pid_file.read_text()), signal.SIGTERM)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
