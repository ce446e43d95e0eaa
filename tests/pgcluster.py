"""A throw-away PostgreSQL cluster for the results tests (and for .ci/run).

    python -m tests.pgcluster start DIR    # prints the URL; the server runs until `stop`
    python -m tests.pgcluster stop DIR

Uses the server binaries of Debian's postgresql package (.ci/run installs it). initdb and
postgres refuse to run as root, so as root the cluster belongs to the ``postgres`` user.
Loopback only, trust authentication for the local user, a free port: nothing outside this
machine can reach it, and it holds nothing but test data.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional

USER = "edgetune"
DATABASE = "edgetune_test"


def bin_dir() -> Optional[Path]:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(candidate, "initdb").exists():
            return Path(candidate)
    found = shutil.which("initdb")
    return Path(found).resolve().parent if found else None


def _as_owner(cmd: List[str]) -> List[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def new_directory() -> Path:
    """A fresh folder the server's user can reach (pytest's temp folders are root-only)."""
    return Path(tempfile.mkdtemp(prefix="edgetune-pg-"))


def start(directory: Path) -> str:
    binaries = bin_dir()
    if binaries is None:
        raise RuntimeError("no PostgreSQL server binaries (apt-get install postgresql)")
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / "data"
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres", "postgres")
    port = _free_port()
    proc = subprocess.run(_as_owner([str(binaries / "initdb"), "-D", str(data), "-U", USER,
                                     "--auth=trust", "-E", "UTF8", "--no-sync"]),
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"initdb failed: {proc.stderr.strip() or proc.stdout.strip()}")
    log = directory / "server.log"
    subprocess.run(_as_owner([str(binaries / "pg_ctl"), "-D", str(data), "-l", str(log), "-w",
                              "-o", f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 "
                                    "-c fsync=off -c max_connections=60",
                              "start"]), check=True, capture_output=True)
    url_base = f"postgresql+psycopg://{USER}@127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        proc = subprocess.run(_as_owner([str(binaries / "createdb"), "-h", "127.0.0.1", "-p",
                                         str(port), "-U", USER, DATABASE]),
                              capture_output=True, text=True)
        if proc.returncode == 0:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"createdb failed: {proc.stderr.strip()}")
        time.sleep(0.3)
    url = f"{url_base}/{DATABASE}"
    (directory / "url").write_text(url)
    return url


def stop(directory: Path) -> None:
    binaries = bin_dir()
    data = directory / "data"
    if binaries is None or not data.exists():
        return
    subprocess.run(_as_owner([str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate",
                              "-w", "stop"]), capture_output=True)
    shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    action, where = sys.argv[1], Path(sys.argv[2]).resolve()
    if action == "start":
        print(start(where))
    elif action == "stop":
        stop(where)
    else:
        raise SystemExit("usage: python -m tests.pgcluster start|stop DIR")
