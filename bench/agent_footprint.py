"""Agent footprint: memory of an idle agent and its time from process start to SERVING.

    python bench/agent_footprint.py [--starts 5] [--idle-s 2] [--json]

Each start launches ``python -m edgetune.device serve`` exactly as ``edgetune.host.localagent.LocalAgent`` does
(mutual TLS on 127.0.0.1 port 0, encrypted key with a passphrase file, a fresh store) and
measures:

- start-up: from just before the process is spawned to the moment the agent wrote its ready
  file (the file's modification time; the agent writes it once health says SERVING);
- idle RSS: VmRSS of the agent process ``--idle-s`` seconds after it got ready, with no call
  made; its VmHWM (peak) and thread count at that moment;
- after one call: VmRSS after a GetInfo round trip and one tiny benchmark job (what a board
  keeps resident once it has been used).

Baselines started side by side, the same way, in the same run: a bare ``python -c pass`` and a
``python`` that only imports what the agent cannot do without (grpc, onnxruntime, numpy,
cryptography, the generated protobuf code) and then writes its ready file; the ratios say what
the agent itself adds. The issue sets no target for these numbers: the script reports them,
and exits non-zero only if ``--max-rss-mb`` / ``--max-start-s`` are given and exceeded.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (check, connect, finish, log_progress, machine,  # noqa: E402
                          make_pki, median, rss_mb, status_kb, stop_process)

IMPORTS_ONLY = ("import sys, pathlib, grpc, numpy, onnxruntime, cryptography.x509, "
                "google.protobuf; import edgetune.protos.agent_pb2_grpc; "
                "pathlib.Path(sys.argv[1]).write_text('ready'); import time; time.sleep(3600)")
BARE = "import sys, pathlib; pathlib.Path(sys.argv[1]).write_text('ready'); " \
       "import time; time.sleep(3600)"


def _threads(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


def start_and_measure(argv: List[str], ready: Path, idle_s: float, timeout_s: float = 120.0,
                      env: Optional[Dict[str, str]] = None,
                      after_ready: Any = None) -> Dict[str, float]:
    """Spawn ``argv``, wait for ``ready``, idle, measure; always stops the process."""
    if ready.exists():
        ready.unlink()
    t0 = time.time()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + timeout_s
        while not (ready.exists() and ready.read_text().strip()):
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise RuntimeError(f"{argv[:4]} exited with {proc.returncode} before it was "
                                   f"ready:\n{err[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{argv[:4]} was not ready within {timeout_s:g} s")
            time.sleep(0.005)
        start_s = ready.stat().st_mtime - t0
        time.sleep(idle_s)
        out = {"start_s": start_s, "idle_rss_mb": rss_mb(proc.pid),
               "idle_peak_rss_mb": status_kb(proc.pid, "VmHWM") / 1024.0,
               "threads": float(_threads(proc.pid))}
        if after_ready is not None:
            after_ready(ready.read_text().strip())
            out["used_rss_mb"] = rss_mb(proc.pid)
        return out
    finally:
        stop_process(proc, 15)
        if proc.stderr:
            proc.stderr.close()


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--starts", type=int, default=5, help="starts of each kind (default 5)")
    parser.add_argument("--idle-s", type=float, default=2.0,
                        help="seconds to leave it idle before reading its memory (default 2)")
    parser.add_argument("--max-rss-mb", type=float, help="fail if the idle RSS is above this")
    parser.add_argument("--max-start-s", type=float, help="fail if start-up takes longer")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if args.starts < 1 or args.idle_s < 0:
        parser.error("--starts must be at least 1 and --idle-s not negative")

    from edgetune.host import builders
    from edgetune.host.localagent import LocalAgent
    from edgetune.protos.messages import BenchmarkSpec, BlobKind

    runs: Dict[str, List[Dict[str, float]]] = {"agent": [], "imports_only": [], "bare_python": []}
    with tempfile.TemporaryDirectory(prefix="edgetune-bench-") as tmp:
        d = Path(tmp)
        pki = make_pki(d / "pki")
        model = builders.save(builders.tiny_cnn(dynamic_batch=False), d / "tiny.onnx")
        env = dict(os.environ)
        env.pop("EDGETUNE_PASSPHRASE", None)
        env.setdefault("PYTHONUNBUFFERED", "1")

        def use(address: str) -> None:
            with connect(address, pki) as client:
                client.info()
                sha = client.upload(model, BlobKind.MODEL).blob.sha256
                client.run(BenchmarkSpec(model_sha256=sha, iterations=10))

        for i in range(args.starts):
            ready = d / "ready"
            cmd = LocalAgent().command(pki.agent_files(), d / f"store{i}", ready)
            runs["agent"].append(start_and_measure(cmd, ready, args.idle_s, env=env,
                                                   after_ready=use))
            runs["imports_only"].append(start_and_measure(
                [sys.executable, "-c", IMPORTS_ONLY, str(ready)], ready, args.idle_s, env=env))
            runs["bare_python"].append(start_and_measure(
                [sys.executable, "-c", BARE, str(ready)], ready, args.idle_s, env=env))
            log_progress(args.json, f"start {i + 1}/{args.starts}: " + ", ".join(
                f"{k} {v[-1]['start_s']:.3f} s {v[-1]['idle_rss_mb']:.1f} MiB"
                for k, v in runs.items()))

    med = {k: {m: round(median(r[m] for r in v), 3) for m in v[0]} for k, v in runs.items()}
    checks = []
    if args.max_rss_mb is not None:
        checks.append(check("agent idle RSS MiB", med["agent"]["idle_rss_mb"], "<=",
                            args.max_rss_mb))
    if args.max_start_s is not None:
        checks.append(check("agent start to SERVING s", med["agent"]["start_s"], "<=",
                            args.max_start_s))
    a, imp, bare = med["agent"], med["imports_only"], med["bare_python"]
    result = {
        "benchmark": "agent_footprint", "starts": args.starts, "idle_s": args.idle_s,
        "median": med,
        "ratio_vs_imports_only": {"start_s": round(a["start_s"] / imp["start_s"], 2),
                                  "idle_rss_mb": round(a["idle_rss_mb"] / imp["idle_rss_mb"], 2)},
        "raw": {k: [{m: round(x, 3) for m, x in r.items()} for r in v] for k, v in runs.items()},
        "checks": checks, "machine": machine(),
    }
    lines = [f"agent footprint, median of {args.starts} starts (idle {args.idle_s:g} s):",
             f"  {'':<14} {'start (s)':>10} {'idle RSS':>10} {'peak RSS':>10} {'threads':>8}"]
    for name, m in med.items():
        lines.append(f"  {name:<14} {m['start_s']:10.3f} {m['idle_rss_mb']:7.1f} MiB "
                     f"{m['idle_peak_rss_mb']:7.1f} MiB {m['threads']:8.0f}")
    lines.append(f"  agent after GetInfo + a tiny benchmark job: RSS {a['used_rss_mb']:.1f} MiB")
    lines.append(f"  agent / imports-only: start {result['ratio_vs_imports_only']['start_s']:.2f}x,"
                 f" idle RSS {result['ratio_vs_imports_only']['idle_rss_mb']:.2f}x")
    return finish(result, args.json, lines)


if __name__ == "__main__":
    sys.exit(main())
