"""``edgetune demo``: the whole loop on this PC in under a minute, nothing to set up.

A throw-away PKI (ECDSA P-256 keys: generating three RSA-3072 keys would cost seconds for no
benefit here), a local agent started as a subprocess and reached over mutual TLS exactly as a
board would be, then the shipped digits CNN uploaded, benchmarked and evaluated on its test
set (top-1 and fidelity against the stored reference logits).

Ctrl-C at any moment stops the local agent and removes the throw-away directory (PKI, store)
before the command says so and exits 130, like the other commands.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

from host.cli.common import add_json_flag
from host.errors import AgentError, UsageError

KEY_TYPE = "ecdsa-p256"
DEVICE = "demo-board"
HOST = "host"
BENCH_ITERATIONS = 200


@contextlib.contextmanager
def sample_files() -> Iterator[Tuple[Path, Path]]:
    """The shipped digits model and test set, as real files even from a zipped install."""
    import importlib.resources

    samples = importlib.resources.files("host") / "samples"
    with importlib.resources.as_file(samples / "digits_cnn.onnx") as model, \
            importlib.resources.as_file(samples / "digits_test.npz") as dataset:
        if not Path(model).is_file() or not Path(dataset).is_file():
            raise AgentError("the shipped samples host/samples/digits_cnn.onnx and "
                             "digits_test.npz are missing from this installation",
                             hint="reinstall edgetune (pip install -e '.[host,device]')")
        yield Path(model), Path(dataset)


def make_pki(directory: Path) -> Dict[str, Path]:
    """CA, device cert for 127.0.0.1/localhost and a host cert, keys encrypted with a random
    passphrase kept in ``directory/passphrase`` (0600)."""
    from certs import CertificateAuthority

    directory.mkdir(parents=True, exist_ok=True)
    passphrase = secrets.token_urlsafe(24)
    passphrase_file = directory / "passphrase"
    fd = os.open(passphrase_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(passphrase + "\n")
    ca = CertificateAuthority.create("/O=edgetune demo/CN=edgetune demo CA", key_type=KEY_TYPE)
    ca_cert, _ = ca.write(directory, passphrase)
    device_cert, device_key = ca.issue_device(DEVICE, ips=["127.0.0.1"], dns=["localhost"],
                                              key_type=KEY_TYPE).write(directory, passphrase)
    host_cert, host_key = ca.issue_host(HOST, key_type=KEY_TYPE).write(directory, passphrase)
    return {"ca": ca_cert, "device_cert": device_cert, "device_key": device_key,
            "host_cert": host_cert, "host_key": host_key, "passphrase_file": passphrase_file}


def write_inventory(workdir: Path, address: str) -> Path:
    path = workdir / "edgetune.toml"
    path.write_text(
        "# Written by `edgetune demo --keep`. The demo's agent is stopped now; start it again:\n"
        f"#   edgetune-agent serve --listen {address} --ca pki/ca-cert.pem "
        f"--cert pki/{DEVICE}-cert.pem --key pki/{DEVICE}-key.pem "
        "--passphrase-file pki/passphrase --store store\n"
        "# then, from this directory: edgetune info --device demo\n\n"
        "[host]\n"
        'ca = "pki/ca-cert.pem"\n'
        f'cert = "pki/{HOST}-cert.pem"\n'
        f'key = "pki/{HOST}-key.pem"\n'
        'passphrase_file = "pki/passphrase"\n\n'
        "[devices.demo]\n"
        f'address = "{address}"\n'
        'tags = ["local"]\n')
    return path


def run_demo(workdir: Path, as_json: bool,
             agents: Optional[List[subprocess.Popen]] = None) -> Dict[str, Any]:
    """The demo in ``workdir``; its results. ``agents`` gets the agent's process once it
    serves (the agent is stopped when this returns or raises)."""
    from host import render
    from host.cli.certs_cmd import identity_from_args
    from host.client import AgentClient
    from host.localagent import AgentFiles, LocalAgent
    from protos.messages import BenchmarkSpec, BlobKind, EvaluateSpec, SessionOptions

    started = time.monotonic()
    view = render.ProgressView.auto(quiet=as_json)
    view.line(f"demo: making a throw-away PKI ({KEY_TYPE}) in {workdir / 'pki'}")
    pki = make_pki(workdir / "pki")
    files = AgentFiles(ca=pki["ca"], cert=pki["device_cert"], key=pki["device_key"],
                       passphrase_file=pki["passphrase_file"])
    with LocalAgent() as agent, sample_files() as (model, dataset):
        address = agent.start(files, workdir / "store")
        if agents is not None and agent.process is not None:
            agents.append(agent.process)
        view.line(f"demo: local agent (pid {agent.process.pid}) serves at {address}")
        identity = identity_from_args(pki["ca"], pki["host_cert"], pki["host_key"],
                                      pki["passphrase_file"])
        with AgentClient(address, identity) as client, view:
            info = client.info()
            uploaded = {}
            for path, kind in ((model, BlobKind.MODEL), (dataset, BlobKind.DATASET)):
                outcome = client.upload(path, kind, progress=view.upload_callback(
                    path.name, path.stat().st_size))
                view.upload_done(path.name, outcome)
                uploaded[kind] = outcome.blob.sha256
            model_sha, dataset_sha = uploaded[BlobKind.MODEL], uploaded[BlobKind.DATASET]
            one_image = SessionOptions(input_shapes=(("input", (1, 1, 8, 8)),))
            bench = client.run(BenchmarkSpec(model_sha256=model_sha, session=one_image,
                                             iterations=BENCH_ITERATIONS, warmup=20),
                               view.job_callback("benchmark"), label="demo benchmark")
            evaluation = client.run(EvaluateSpec(model_sha256=model_sha, dataset_sha256=dataset_sha,
                                                 metrics=("top1", "fidelity")),
                                    view.job_callback("evaluation"), label="demo evaluation")
        for job in (bench, evaluation):
            if job.result is None:
                raise AgentError(f"the demo's {job.kind} job {job.state.value}: {job.error}",
                                 hint=f"the agent's log:\n{agent.output()}")
        inventory = write_inventory(workdir, address)
    device = f"{DEVICE} ({address})"
    return {
        "device": device, "address": address, "key_type": KEY_TYPE,
        "info": info.as_dict(), "inventory": str(inventory),
        "bench": {"results": [render.job_record(bench, model.name, device)]},
        "eval": {"results": [render.job_record(evaluation, model.name, device)]},
        "elapsed_s": round(time.monotonic() - started, 2),
    }


def cmd_demo(args: argparse.Namespace) -> int:
    from host import render

    keep = args.keep
    if keep is not None:
        if keep.exists() and (not keep.is_dir() or any(keep.iterdir())):
            raise UsageError(f"--keep {keep}: give a new or empty directory",
                             hint="the demo writes a PKI, a store and edgetune.toml there")
        keep.mkdir(parents=True, exist_ok=True)
        workdir = keep.resolve()
    else:
        workdir = Path(tempfile.mkdtemp(prefix="edgetune-demo-"))
    started: List[subprocess.Popen] = []
    interrupted = False
    try:
        doc = run_demo(workdir, args.json, started)
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        with _sigint_ignored():         # a second Ctrl-C must not leave anything behind
            for process in started:     # stopped when run_demo left, unless a 2nd Ctrl-C hit
                _stop(process)
            if keep is None:
                shutil.rmtree(workdir, ignore_errors=True)
            if interrupted:
                print(f"\nedgetune: demo interrupted; {_cleanup_note(started, workdir, keep)}",
                      file=sys.stderr)
    doc["kept"] = str(workdir) if keep is not None else None
    if keep is None:
        doc.pop("inventory")
    if args.json:
        render.print_json(doc)
        return 0
    console = render.stdout_console()
    console.print(render.bench_table(doc["bench"]["results"], console.width))
    console.print(render.eval_table(doc["eval"]["results"]))
    console.print(f"demo finished in {doc['elapsed_s']:.1f} s; agent stopped.")
    if keep is not None:
        console.print(f"kept {workdir}: the PKI, the agent's store and edgetune.toml "
                      f"(run `edgetune info --device demo` there after restarting the agent "
                      f"as its first lines say)", markup=False)
    return 0


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored inside the block (main thread only; elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _stop(process: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout_s``; nothing if it has ended."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _cleanup_note(started: List[subprocess.Popen], workdir: Path, keep: Optional[Path]) -> str:
    """What Ctrl-C left behind, as checked: the agent's process, the throw-away directory."""
    parts = []
    for process in started:
        if process.poll() is None:
            parts.append(f"its local agent (pid {process.pid}) still runs (stop it with "
                         f"`kill {process.pid}`)")
        else:
            parts.append(f"its local agent (pid {process.pid}) was stopped")
    if keep is not None:
        parts.append(f"its PKI and store stay in {workdir}")
    elif workdir.exists():
        parts.append(f"its throw-away directory {workdir} could not be removed (remove it "
                     "by hand)")
    else:
        parts.append(f"its throw-away PKI and store ({workdir}) were removed")
    return " and ".join(parts)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="the whole loop on this PC: a throw-away PKI, a local agent, benchmark "
                     "and evaluation of a small model (under a minute)",
        description=__doc__)
    p.add_argument("--keep", type=Path, metavar="DIR",
                   help="keep the PKI, the store and an edgetune.toml in DIR (new or empty)")
    add_json_flag(p)
    p.set_defaults(func=cmd_demo)
