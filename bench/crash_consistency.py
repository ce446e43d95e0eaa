"""Crash consistency of the agent: SIGKILL it at random moments while it works, check what
survives, restart it, again and again (issue 16, section 2).

    python bench/crash_consistency.py --kills 500 [--seed 1] [--json]

Each round starts the agent (a separate process, ``python -m edgetune.device serve``, real
mutual TLS) on the same store, and runs four host workers against it at once:

- ``upload-hash``: uploads fresh .npz datasets (1-8 MiB of random bytes) by hash;
- ``upload-id``: the same by id (the hash known only once the bytes arrived);
- ``jobs``: submits short benchmarks and one-second ones, watches them run;
- ``lease``: acquires, renews and releases lease claims.

After a random 0.3-2.5 s the agent gets SIGKILL. What each worker was doing at that moment
(``upload-hash:sending``, ``jobs:running``, ``lease:renew`` ...) and the agent's last log
line are the round's kill point. Then, on the dead agent's files:

- every blob in models/ and datasets/ hashes to its name (no partial file is visible as a
  blob);

and after the restart:

- no temporary file is left, and every partial upload is resumable (GetUploadStatus says
  PARTIAL at its size) or gone (cleaned at start);
- every job the host was told of exists; one the host saw finish keeps its state and result;
  the others are finished, queued, running again or interrupted (with the reason); no job
  is there twice (labels are unique per submission) and none appears that was not submitted;
- a lease claim the host was told of (acquired or renewed, not released) still holds, and a
  released one is gone (a change cut off mid-call may be either);
- the host's resume (``AgentClient.upload`` of the same file) completes every upload that
  was cut off, by hash and by id, and the stored blob hashes to the file's sha256.

Exit status 1 when any check failed. ``run`` is what tests/test_agent_crash.py calls.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import io
import os
import random
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Counter, Dict, List, Optional, Set, Tuple

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import BenchPki, check, finish, machine, make_pki  # noqa: E402

SAMPLES = Path(__file__).resolve().parent.parent / "host" / "samples"
DIGITS_MODEL = SAMPLES / "digits_cnn.onnx"
SUFFIXES = {"models": ".onnx", "datasets": ".npz"}
FINISHED = ("succeeded", "failed", "cancelled", "interrupted")


@dataclass
class Report:
    kills: int = 0
    kill_points: Counter = field(default_factory=collections.Counter)
    agent_last_logged: Counter = field(default_factory=collections.Counter)
    blobs_checked: int = 0
    partials_resumable: int = 0
    uploads_resumed: int = 0               # cut-off uploads the host completed after a restart
    resumed_from_offset: int = 0           # ... of them continuing from committed bytes
    jobs_checked: int = 0
    job_states: Counter = field(default_factory=collections.Counter)
    lease_checks: int = 0
    restart_s: List[float] = field(default_factory=list)
    violations: List[str] = field(default_factory=list)

    def as_dict(self) -> Dict[str, Any]:
        return {"kills": self.kills, "kill_points": dict(self.kill_points.most_common()),
                "agent_last_logged": dict(self.agent_last_logged.most_common()),
                "blobs_checked": self.blobs_checked,
                "partials_resumable": self.partials_resumable,
                "uploads_resumed": self.uploads_resumed,
                "resumed_from_offset": self.resumed_from_offset,
                "jobs_checked": self.jobs_checked, "job_states": dict(self.job_states),
                "lease_checks": self.lease_checks,
                "restart_s_median": sorted(self.restart_s)[len(self.restart_s) // 2]
                if self.restart_s else 0.0,
                "violations": self.violations}


# ------------------------------------------------------------------------------ host side

class Host:
    """What the host was told, kept across rounds: the expectations checked after restarts."""

    def __init__(self, workdir: Path, rng: random.Random) -> None:
        self.workdir = workdir
        self.rng = rng
        self.files = workdir / "files"
        self.files.mkdir(parents=True, exist_ok=True)
        self.jobs: Dict[str, Any] = {}           # id -> last Job seen
        self.fresh: Set[str] = set()             # jobs seen finishing in the current round
        self.labels_sent: Set[str] = set()       # every label a submission carried
        self.pending_uploads: List[Tuple[str, Path]] = []   # (worker, file) cut off
        self.lease_held: Dict[str, bool] = {}    # lease id -> held as last acknowledged
        self.counter = 0
        self.lock = threading.Lock()

    def new_dataset(self, worker: str) -> Path:
        import numpy as np
        with self.lock:
            self.counter += 1
            n = self.counter
        rows = self.rng.randint(1, 8) * 256
        data = np.frombuffer(self.rng.randbytes(rows * 1024 * 4), np.float32).reshape(rows, 1024)
        buf = io.BytesIO()
        np.savez(buf, input=np.nan_to_num(data), labels=np.arange(rows, dtype=np.int64))
        path = self.files / f"{worker}-{n}.npz"
        path.write_bytes(buf.getvalue())
        # Older than the hash cache's racy window (host/hashcache.py), as a file made before
        # its upload usually is: the cache then keeps the upload id for a resume by id.
        old = time.time() - 60
        os.utime(path, (old, old))
        return path


class Round:
    """The workers of one agent lifetime; ``phases`` says what each is doing now."""

    def __init__(self, host: Host, address: str, pki: BenchPki, model_sha: str,
                 round_no: int) -> None:
        self.host = host
        self.address = address
        self.pki = pki
        self.model_sha = model_sha
        self.round_no = round_no
        self.stop = threading.Event()
        self.phases: Dict[str, str] = {}
        self.lease_in_flight: Optional[Tuple[str, str]] = None    # (op, lease id)
        self.threads: List[threading.Thread] = []
        self.errors: List[Tuple[float, str]] = []      # (monotonic time, what failed)

    def client(self, **settings: Any) -> Any:
        from edgetune.host.client import AgentClient, ClientSettings
        return AgentClient(self.address, self.pki.host_identity(),
                           settings=ClientSettings(timeout_s=10.0, connect_timeout_s=5.0,
                                                   upload_chunk_bytes=256 * 1024, **settings))

    def start(self) -> None:
        for name, target in (("upload-hash", self._uploads), ("upload-id", self._uploads),
                             ("jobs", self._jobs), ("lease", self._lease)):
            self.phases[name] = "idle"
            t = threading.Thread(target=self._guard, args=(name, target), daemon=True)
            t.start()
            self.threads.append(t)

    def snapshot(self) -> Dict[str, str]:
        return dict(self.phases)

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def _guard(self, name: str, target: Callable[[str], None]) -> None:
        try:
            target(name)
        except Exception as exc:  # noqa: BLE001 - expected once the agent is killed
            self.errors.append((time.monotonic(), f"{name}: {type(exc).__name__}: {exc}"))

    # --- workers (each ends with an exception once the agent is killed)
    def _uploads(self, name: str) -> None:
        from edgetune.protos.messages import BlobKind
        settings = {"hash_cache": self.host.workdir / f"{name}.hashcache"}
        if name == "upload-id":
            settings["hash_first_below_bytes"] = 1          # every file by id
        with self.client(**settings) as client:
            while not self.stop.is_set():
                path = self.host.new_dataset(name)
                size = path.stat().st_size
                with self.host.lock:
                    self.host.pending_uploads.append((name, path))

                def progress(done: int, total: int) -> None:
                    self.phases[name] = f"{name}:" + ("awaiting-commit" if done >= total
                                                      else "sending")
                    time.sleep(0.01)                         # about 25 MB/s
                self.phases[name] = f"{name}:starting"
                out = client.upload(path, BlobKind.DATASET, progress=progress)
                self.phases[name] = "idle"
                if out.blob.sha256 != _sha256(path) or out.blob.size_bytes != size:
                    self.errors.append((time.monotonic(),
                                        f"{name}: stored {out.blob.sha256} for {path.name}"))
                with self.host.lock:
                    self.host.pending_uploads.remove((name, path))
                path.unlink()

    def _jobs(self, name: str) -> None:
        from edgetune.protos.messages import BenchmarkSpec
        rng = random.Random(self.host.rng.random())
        with self.client() as client:
            n = 0
            while not self.stop.is_set():
                n += 1
                label = f"crash-r{self.round_no}-j{n}"
                if rng.random() < 0.3:
                    spec = BenchmarkSpec(model_sha256=self.model_sha, iterations=0,
                                         min_duration_s=1.0, warmup=2)
                else:
                    spec = BenchmarkSpec(model_sha256=self.model_sha,
                                         iterations=rng.randint(20, 400), warmup=2)
                self.phases[name] = "jobs:submit"
                with self.host.lock:
                    self.host.labels_sent.add(label)
                job, _ = client.submit(spec, label=label)
                with self.host.lock:
                    self.host.jobs[job.id] = job
                while not self.stop.is_set():
                    job = client.get_job(job.id)
                    with self.host.lock:
                        self.host.jobs[job.id] = job
                        if job.state.value in FINISHED:
                            self.host.fresh.add(job.id)
                    self.phases[name] = f"jobs:{job.state.value}"
                    if job.state.value in FINISHED:
                        break
                    time.sleep(0.05)
                self.phases[name] = "idle"

    def _lease(self, name: str) -> None:
        rng = random.Random(self.host.rng.random())
        with self.client() as client:
            while not self.stop.is_set():
                held = [i for i, h in self.host.lease_held.items() if h]
                op = "acquire" if not held or (len(held) < 3 and rng.random() < 0.3) else \
                    rng.choice(["renew", "release"])
                lease_id = "" if op == "acquire" else rng.choice(held)
                self.lease_in_flight = (op, lease_id)
                self.phases[name] = f"lease:{op}"
                if op == "acquire":
                    lease = client.acquire_lease(300)
                    self.lease_in_flight = ("acquire", lease.lease_id)
                    self.host.lease_held[lease.lease_id] = True
                elif op == "renew":
                    client.renew_lease(lease_id, 300)
                    self.host.lease_held[lease_id] = True
                else:
                    client.release_lease(lease_id)
                    self.host.lease_held[lease_id] = False
                self.lease_in_flight = None
                self.phases[name] = "idle"
                time.sleep(rng.uniform(0.0, 0.15))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ------------------------------------------------------------------------------ checks

def check_blobs_on_disk(store: Path, report: Report, when: str) -> None:
    for folder, suffix in SUFFIXES.items():
        for blob in sorted((store / folder).glob("*" + suffix)):
            report.blobs_checked += 1
            if _sha256(blob) != blob.name[:-len(suffix)]:
                report.violations.append(f"{when}: {folder}/{blob.name} does not hash to its name")


def check_after_restart(store: Path, client: Any, report: Report, round_no: int) -> None:
    from edgetune.protos.messages import BlobKind
    check_blobs_on_disk(store, report, f"round {round_no} after restart")
    leftovers = [p for p in store.rglob("*.tmp")]
    if leftovers:
        report.violations.append(f"round {round_no}: temporary files left after the restart: "
                                 f"{[p.name for p in leftovers]}")
    for part in sorted((store / "partial").glob("*.part")):
        stem = part.name[:-len(".part")]
        meta = store / "partial" / (stem + ".json")
        if not meta.exists():
            report.violations.append(f"round {round_no}: partial {part.name} has no side file "
                                     "(neither resumable nor cleaned)")
            continue
        kind_text, _, key = stem.partition("-")
        kind = BlobKind(kind_text)
        upload_id = key[2:] if key.startswith("u-") else ""
        sha = "" if upload_id else key
        status = client.upload_status(kind, sha, 0, upload_id)
        if status.state != "partial" or status.committed_bytes != part.stat().st_size:
            report.violations.append(f"round {round_no}: partial {part.name} is not resumable "
                                     f"({status.state} at {status.committed_bytes})")
        else:
            report.partials_resumable += 1
    for meta in (store / "partial").glob("*.json"):
        if not (store / "partial" / (meta.name[:-len(".json")] + ".part")).exists():
            report.violations.append(f"round {round_no}: orphan side file {meta.name} not cleaned")


def check_jobs(store: Path, client: Any, host: Host, report: Report, round_no: int) -> None:
    """Every job the host was told of is in the database; one it saw finish keeps its state
    (and, when it finished in the last round, its result, asked through the agent); the
    others are finished, queued, running or interrupted with the reason; no label twice, no
    job that was never submitted (one whose SubmitJob was cut off before the reply is
    adopted)."""
    db = sqlite3.connect(f"file:{store / 'jobs.db'}?mode=ro", uri=True)
    try:
        rows = {i: (label, state) for i, label, state in
                db.execute("SELECT id, label, state FROM jobs").fetchall()}
    finally:
        db.close()
    with host.lock:
        known = dict(host.jobs)
    for job_id, seen in known.items():
        report.jobs_checked += 1
        if job_id not in rows:
            report.violations.append(f"round {round_no}: job {job_id} ({seen.label}) the host "
                                     "was told of is lost")
            continue
        state = rows[job_id][1]
        report.job_states[state] += 1
        if seen.state.value in FINISHED:
            if state != seen.state.value:
                report.violations.append(f"round {round_no}: finished job {job_id} changed: "
                                         f"{seen.state.value} -> {state}")
            elif job_id in host.fresh:      # finished in the last round: its result too
                now = client.get_job(job_id)
                if _result(now) != _result(seen):
                    report.violations.append(f"round {round_no}: the result of job {job_id} "
                                             "changed across the restart")
            continue
        now = client.get_job(job_id)
        if now.state.value == "interrupted" and "agent stopped" not in now.error:
            report.violations.append(f"round {round_no}: job {job_id} interrupted without the "
                                     f"reason: {now.error!r}")
        elif now.state.value in ("failed", "cancelled"):
            report.violations.append(f"round {round_no}: job {job_id} {now.state.value}: "
                                     f"{now.error}")
        with host.lock:
            host.jobs[job_id] = now
    host.fresh = set()
    labels = collections.Counter(label for label, _ in rows.values())
    twice = [label for label, n in labels.items() if n > 1 and label]
    if twice:
        report.violations.append(f"round {round_no}: jobs stored twice: {twice[:5]}")
    for job_id, (label, _) in rows.items():
        if job_id in known:
            continue
        if label not in host.labels_sent:
            report.violations.append(f"round {round_no}: job {job_id} ({label!r}) was never "
                                     "submitted")
        else:                       # its SubmitJob was cut off before the reply: adopt it
            with host.lock:
                host.jobs[job_id] = client.get_job(job_id)


def _result(job: Any) -> Any:
    return job.as_dict().get("result")


def check_leases(client: Any, host: Host, in_flight: Optional[Tuple[str, str]],
                 report: Report, round_no: int) -> None:
    from edgetune.host.errors import AgentError
    for lease_id, held in list(host.lease_held.items()):
        if in_flight is not None and in_flight[1] == lease_id:
            continue                                    # cut off mid-change: either is right
        try:
            client.renew_lease(lease_id, 300)
            exists = True
        except AgentError:
            exists = False
        report.lease_checks += 1
        if exists != held:
            report.violations.append(f"round {round_no}: lease claim {lease_id[:8]} "
                                     f"{'lost' if held else 'came back after its release'}")
    client.release_lease("")                            # every round starts with a free board
    host.lease_held.clear()


def resume_uploads(address: str, pki: BenchPki, host: Host, report: Report,
                   round_no: int) -> None:
    """The host's resume, as the workers upload (same hash caches: an upload by id resumes
    under the id it was given)."""
    from edgetune.host.client import AgentClient, ClientSettings
    from edgetune.protos.messages import BlobKind
    with host.lock:
        pending = list(host.pending_uploads)
        host.pending_uploads.clear()
    for worker, path in pending:
        sha = _sha256(path)
        settings = ClientSettings(hash_cache=host.workdir / f"{worker}.hashcache",
                                  hash_first_below_bytes=1 if worker == "upload-id" else 64 << 20)
        try:
            with AgentClient(address, pki.host_identity(), settings=settings) as client:
                out = client.upload(path, BlobKind.DATASET)
        except Exception as exc:  # noqa: BLE001 - reported as a violation
            report.violations.append(f"round {round_no}: the host's resume of {path.name} "
                                     f"({worker}) failed: {exc}")
            continue
        report.uploads_resumed += 1
        if out.resumed_from:
            report.resumed_from_offset += 1
        if out.blob.sha256 != sha:
            report.violations.append(f"round {round_no}: resume of {path.name} stored "
                                     f"{out.blob.sha256}, the file is {sha}")
        path.unlink()


def free_space(client: Any, keep: int = 4) -> None:
    """Delete all but the newest ``keep`` datasets (the disk stays small over 500 rounds)."""
    from edgetune.protos.messages import BlobKind
    blobs = client.list_blobs(BlobKind.DATASET)
    for blob in blobs[:-keep] if len(blobs) > keep else []:
        client.delete_blob(BlobKind.DATASET, blob.sha256)


# ------------------------------------------------------------------------------ the loop

def _last_logged(agent: Any) -> str:
    lines = [l for l in agent.output(60).splitlines()
             if " edgetune." in l and " edgetune.agent.calls:" not in l]
    if not lines:
        return "(nothing yet)"
    logger_and_msg = lines[-1].split(" edgetune.", 1)[1]
    logger, _, message = logger_and_msg.partition(": ")
    words = [w for w in message.split()[:3] if not any(c.isdigit() for c in w)]
    return f"{logger} {' '.join(words)}".strip()


def run(pki: BenchPki, workdir: Path, kills: int, *, seed: int = 1,
        min_s: float = 0.3, max_s: float = 2.5,
        progress: Optional[Callable[[str], None]] = None,
        stop: Optional[threading.Event] = None) -> Report:
    """``kills`` rounds (fewer when ``stop`` is set: the round under way ends with its
    restart and checks, and the report says how many kills there were)."""
    from edgetune.host.client import AgentClient, ClientSettings
    from edgetune.host.localagent import LocalAgent
    from edgetune.protos.messages import BlobKind

    rng = random.Random(seed)
    store = workdir / "store"
    host = Host(workdir, rng)
    report = Report()
    model_sha = ""
    last_lease_in_flight: Optional[Tuple[str, str]] = None
    for round_no in range(kills + 1):
        agent = LocalAgent(ready_timeout_s=120)
        started = time.monotonic()
        address = agent.start(pki.agent_files(), store)
        report.restart_s.append(time.monotonic() - started)
        try:
            with AgentClient(address, pki.host_identity(),
                             settings=ClientSettings(hash_cache=workdir / "main.hashcache")) \
                    as client:
                if round_no:
                    check_after_restart(store, client, report, round_no)
                    check_jobs(store, client, host, report, round_no)
                    check_leases(client, host, last_lease_in_flight, report, round_no)
                    resume_uploads(address, pki, host, report, round_no)
                    free_space(client)
                if not model_sha:
                    model_sha = client.upload(DIGITS_MODEL, BlobKind.MODEL).blob.sha256
            if round_no == kills or (stop is not None and stop.is_set()):
                break
            work = Round(host, address, pki, model_sha, round_no)
            work.start()
            time.sleep(rng.uniform(min_s, max_s))
            phases = work.snapshot()
            last = _last_logged(agent)
            assert agent.process is not None
            killed_at = time.monotonic()
            agent.process.send_signal(signal.SIGKILL)
            agent.process.wait(30)
            report.kills += 1
            for phase in phases.values():
                report.kill_points[phase] += 1
            report.agent_last_logged[last] += 1
            last_lease_in_flight = work.lease_in_flight
            work.join()
            report.violations.extend(f"round {round_no}: before the kill: {what}"
                                     for when, what in work.errors if when < killed_at)
            check_blobs_on_disk(store, report, f"round {round_no} after the kill")
            if progress is not None:
                progress(f"kill {report.kills}/{kills}: {', '.join(sorted(phases.values()))}; "
                         f"agent last logged: {last}; violations so far: "
                         f"{len(report.violations)}")
        finally:
            agent.stop()
    return report


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=500, help="SIGKILLs in a row (500)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    stop = threading.Event()            # SIGTERM: finish the round, check, report what ran
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with tempfile.TemporaryDirectory(prefix="edgetune-crash-") as tmp:
        pki = make_pki(Path(tmp) / "pki")
        started = time.monotonic()
        report = run(pki, Path(tmp) / "work", args.kills, seed=args.seed, stop=stop,
                     progress=None if args.quiet else lambda m: print(m, file=sys.stderr))
        elapsed = time.monotonic() - started
    result = dict(report.as_dict(), seconds=round(elapsed, 1), seed=args.seed,
                  stopped_early=report.kills < args.kills, machine=machine())
    result["checks"] = [check("violations", len(report.violations), "<=", 0),
                        check("kills made / asked", report.kills / max(1, args.kills), ">=", 1)]
    lines = [f"{key}: {value}" for key, value in result.items()
             if key not in ("checks", "machine")]
    return finish(result, args.json, lines)


if __name__ == "__main__":
    sys.exit(main())
