"""``edgetune demo``: the whole loop on this PC in under a minute, nothing to set up.

Without ``--quick`` the loop runs on the 32x32 digits sample and includes a short tuning study
and the interleaved FP32 / default INT8 / tuned comparison (``edgetune.host.cli.demo_loop``).
``--quick`` is the few-second version this module runs itself:

A throw-away PKI (ECDSA P-256 keys: generating three RSA-3072 keys would cost seconds for no
benefit here), a local agent started as a subprocess and reached over mutual TLS exactly as a
board would be, then the tool's main job on the shipped digits CNN: quantize it to INT8 with
``edgetune quantize``'s defaults, upload both models, benchmark both with the same options,
evaluate both on the test set (top-1 and fidelity against the stored FP32 reference logits),
and print one FP32 / INT8 / change table (a Markdown table, to paste into docs; the comparison
is in ``edgetune.host.cli.demo_compare``).

Ctrl-C at any moment stops the local agent and removes the throw-away directory (PKI, store,
the INT8 model) before the command says so and exits 130, like the other commands.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
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
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Tuple

from edgetune.host.cli.common import add_json_flag, add_record_flags, check_count
# comparison_rows: re-exported, importable from here as before the split.
from edgetune.host.cli.demo_compare import (PRECISIONS, comparison, comparison_rows,  # noqa: F401
                                   print_comparison)
from edgetune.host.errors import AgentError, NotFoundError, UsageError
from edgetune.host.results.location import recording

if TYPE_CHECKING:
    from edgetune.host.board import BenchmarkRun, EvaluationRun
    from edgetune.host.results.recording import StoreRecorder
    from edgetune.host.quant.pipeline import QuantizeReport
    from edgetune.host.quant.settings import QuantizeSettings

KEY_TYPE = "ecdsa-p256"
DEVICE = "demo-board"
HOST = "host"
# Both models get these benchmark options. One intra-op thread: on a model this small,
# onnxruntime's default pool (one thread per core) made the FP32 p50 jump between 0.013 and
# 0.024 ms from one run to the next on a 2-vCPU VM; with one thread it stayed within 2 %.
# 5000 runs take ~0.06 s per model here and steady the throughput (a mean) on a busy machine.
BENCH_ITERATIONS = 5000
BENCH_WARMUP = 50
BENCH_THREADS = 1
INPUT_SHAPE = (1, 1, 8, 8)


@dataclasses.dataclass(frozen=True)
class Samples:
    """The shipped sample files the demo uses (host/samples/)."""

    model: Path         # digits_cnn.onnx, FP32
    dataset: Path       # digits_test.npz: input, labels, reference logits
    calib: Path         # digits_calib.npz: 200 training images


QUICK_SAMPLES = ("digits_cnn.onnx", "digits_test.npz", "digits_calib.npz")


@contextlib.contextmanager
def sample_files(names: Tuple[str, str, str] = QUICK_SAMPLES) -> Iterator[Samples]:
    """A shipped model, its test set and calibration set (in that order), as real files even
    from a zipped install."""
    import importlib.resources

    root = importlib.resources.files("edgetune.host") / "samples"
    with contextlib.ExitStack() as stack:
        paths = [Path(stack.enter_context(importlib.resources.as_file(root / n))) for n in names]
        missing = [n for n, path in zip(names, paths) if not path.is_file()]
        if missing:
            raise NotFoundError(f"the shipped samples {', '.join(missing)} are missing from "
                                "this installation (host/samples/)",
                                hint="reinstall edgetune (pip install -e '.[host,device]')")
        yield Samples(*paths)


def int8_name(model: Path) -> str:
    """``digits_cnn.onnx`` -> ``digits_cnn.int8.onnx``."""
    return model.name[:-len(".onnx")] + ".int8.onnx"


def quantize_sample(model: Path, calib: Path, output: Path,
                    view: Any) -> Tuple["QuantizeSettings", "QuantizeReport"]:
    """``edgetune quantize MODEL -o OUTPUT --calib CALIB`` with every other option at its
    default: (QuantizeSettings, QuantizeReport)."""
    from edgetune.host.quant.calibdata import load_calibration
    from edgetune.host.quant.pipeline import quantize
    from edgetune.host.quant.settings import CalibSource, QuantizeSettings

    settings = QuantizeSettings(model=model, output=output, calib=(CalibSource(path=calib),),
                                source="edgetune demo")
    data = load_calibration(model, settings)
    if data.notes:      # into the record, as `edgetune quantize` does
        settings = dataclasses.replace(settings, notes=settings.notes + tuple(data.notes))
    report = quantize(settings, data=data, progress=view.stage_callback(f"quantize {model.name}"))
    return settings, report


def quantize_summary(settings: "QuantizeSettings", report: "QuantizeReport",
                     calib: Path) -> Dict[str, Any]:
    """What the INT8 model is, for the JSON document and the text under the table."""
    return {
        "method": report.method, "act_type": settings.act_type,
        "weight_type": settings.weight_type, "per_channel": settings.per_channel,
        "calib": calib.name, "calib_samples": report.n_samples,
        "int8_nodes": report.n_int8_nodes, "int16_nodes": report.n_int16_nodes,
        "float_nodes": report.n_float_nodes, "quantizable_nodes": len(report.quantizable_nodes),
        "record": report.record_path.name, "ranges": report.ranges_path.name,
        "elapsed_s": round(report.elapsed_s, 2),
    }


def make_pki(directory: Path) -> Dict[str, Path]:
    """CA, device cert for 127.0.0.1/localhost and a host cert, keys encrypted with a random
    passphrase kept in ``directory/passphrase`` (0600)."""
    from edgetune.certs import CertificateAuthority

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
        "# Written by `edgetune demo --quick --keep`. The demo's agent is stopped now; start it again:\n"
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


@dataclasses.dataclass(frozen=True)
class DemoOutcome:
    """What the demo measured: the JSON document, and the typed results it was made from
    (in the order FP32, INT8)."""

    doc: Dict[str, Any]
    bench: Tuple["BenchmarkRun", ...]
    evaluation: Tuple["EvaluationRun", ...]


def run_demo(workdir: Path, as_json: bool,
             agents: Optional[List[subprocess.Popen]] = None,
             recorder: Optional["StoreRecorder"] = None) -> DemoOutcome:
    """The demo in ``workdir``; its results. ``agents`` gets the agent's process once it
    serves (the agent is stopped when this returns or raises); ``recorder`` keeps every
    board result in the results store."""
    from edgetune.host import render
    from edgetune.host.board import BlobRef, BoardSession
    from edgetune.host.client import AgentClient
    from edgetune.host.localagent import AgentFiles, LocalAgent
    from edgetune.host.target import load_host_identity
    from edgetune.protos.messages import BenchmarkSpec, BlobKind, EvaluateSpec, SessionOptions

    started = time.monotonic()
    view = render.ProgressView.auto(quiet=as_json)
    view.line(f"demo: making a throw-away PKI ({KEY_TYPE}) in {workdir / 'pki'}")
    pki = make_pki(workdir / "pki")
    files = AgentFiles(ca=pki["ca"], cert=pki["device_cert"], key=pki["device_key"],
                       passphrase_file=pki["passphrase_file"])
    with LocalAgent() as agent, sample_files() as samples:
        address = agent.start(files, workdir / "store")
        if agents is not None and agent.process is not None:
            agents.append(agent.process)
        view.line(f"demo: local agent (pid {agent.process.pid}) serves at {address}")
        identity = load_host_identity(pki["ca"], pki["host_cert"], pki["host_key"],
                                      pki["passphrase_file"])
        device = f"{DEVICE} ({address})"
        with view:
            int8_path = workdir / int8_name(samples.model)
            view.line(f"demo: quantizing {samples.model.name} to {int8_path.name} with edgetune "
                      f"quantize's defaults, calibrated on {samples.calib.name}")
            settings, report = quantize_sample(samples.model, samples.calib, int8_path, view)
            view.line(f"demo: {int8_path.name}: {render.fmt_bytes(report.output_bytes)} "
                      f"({report.size_ratio:.2f}x), {report.n_int8_nodes} of "
                      f"{len(report.quantizable_nodes)} nodes int8, in {report.elapsed_s:.1f} s")
            models = dict(zip(PRECISIONS, (samples.model, int8_path)))
            with BoardSession(AgentClient(address, identity), device, view=view,
                              recorder=recorder) as board:
                info = board.board.agent
                uploaded: Dict[Path, Any] = {}
                for path, kind in ((samples.model, BlobKind.MODEL), (int8_path, BlobKind.MODEL),
                                   (samples.dataset, BlobKind.DATASET)):
                    uploaded[path] = board.upload(path, kind).blob
                stored = {path: BlobRef(path.name, blob.kind, path=path, sha256=blob.sha256)
                          for path, blob in uploaded.items()}      # sent once, named by hash
                one_image = SessionOptions(intra_op_threads=BENCH_THREADS,
                                           input_shapes=(("input", INPUT_SHAPE),))
                bench: List[BenchmarkRun] = []
                evaluation: List[EvaluationRun] = []
                for precision, path in models.items():     # same options for both models
                    bench.append(board.benchmark(
                        stored[path], BenchmarkSpec(model_sha256="", session=one_image,
                                            iterations=BENCH_ITERATIONS, warmup=BENCH_WARMUP),
                        label=f"demo benchmark {precision}",
                        on_event=view.job_callback(f"{precision.upper()} benchmark")))
                for precision, path in models.items():
                    evaluation.append(board.evaluate(
                        stored[path], stored[samples.dataset],
                        EvaluateSpec(model_sha256="", dataset_sha256="",
                                     metrics=("top1", "fidelity")),
                        label=f"demo evaluation {precision}",
                        on_event=view.job_callback(f"{precision.upper()} evaluation")))
        for run in (*bench, *evaluation):
            if not run.ok:
                raise AgentError(f"the demo's {run.kind} job {run.state.value}: {run.error}",
                                 hint=f"the agent's log:\n{agent.output()}")
        inventory = write_inventory(workdir, address)
    result_id = recorder.result_id if recorder is not None else None
    described = {p: {"file": models[p].name, "sha256": uploaded[models[p]].sha256,
                     "size_bytes": uploaded[models[p]].size_bytes} for p in PRECISIONS}
    described["int8"]["quantize"] = quantize_summary(settings, report, samples.calib)
    doc = {
        "device": device, "address": address, "key_type": KEY_TYPE,
        "info": info.as_dict() if info is not None else {}, "inventory": str(inventory),
        "models": described,
        "bench": {"results": render.result_entries(bench, result_id=result_id)},
        "eval": {"results": render.result_entries(evaluation, result_id=result_id)},
        "comparison": comparison([described[p]["size_bytes"] for p in PRECISIONS],
                                 bench, evaluation),
        "elapsed_s": round(time.monotonic() - started, 2),
    }
    return DemoOutcome(doc, tuple(bench), tuple(evaluation))


def cmd_demo(args: argparse.Namespace) -> int:
    from edgetune.host import render

    if args.trials is not None and args.quick:
        raise UsageError("--trials is for the tuning study, which --quick leaves out",
                         hint="drop --quick to tune, or --trials to run the quick demo")
    if args.trials is None:
        from edgetune.host.cli.demo_loop import DEMO_TRIALS
        args.trials = DEMO_TRIALS
    check_count("--trials", args.trials, minimum=1, maximum=1000)
    keep = args.keep
    if keep is not None:
        if keep.exists() and (not keep.is_dir() or any(keep.iterdir())):
            raise UsageError(f"--keep {keep}: give a new or empty directory",
                             hint="the demo writes a PKI, a store, an INT8 model and "
                                  "edgetune.toml there")
        keep.mkdir(parents=True, exist_ok=True)
        workdir = keep.resolve()
    else:
        workdir = Path(tempfile.mkdtemp(prefix="edgetune-demo-"))
    started: List[subprocess.Popen] = []
    interrupted = False
    from ulid import ULID
    try:
        if args.quick:
            with recording(args, label="demo", run_id=str(ULID())) as recorder:
                outcome = run_demo(workdir, args.json, started, recorder)
                results_db = recorder.store.where if recorder is not None else None
        else:
            from edgetune.host.cli.demo_loop import loop_db_url, run_loop_demo, where
            db_url = loop_db_url(args, workdir)
            loop = run_loop_demo(workdir, args.json, started, db_url, args.trials)
            results_db = None if args.no_record else where(db_url)
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
    if not args.quick:
        from edgetune.host.cli.demo_loop import finish_loop
        return finish_loop(args, loop, workdir, keep, results_db)
    doc = outcome.doc
    doc["kept"] = str(workdir) if keep is not None else None
    doc["results_db"] = results_db
    if keep is None:
        doc.pop("inventory")
    if args.json:
        render.print_json(doc)
        return 0
    width = shutil.get_terminal_size((100, 24)).columns if sys.stdout.isatty() else 100
    print_comparison(doc, outcome.bench, outcome.evaluation, min(width, 100),
                     input_shape=INPUT_SHAPE)
    print(f"\ndemo finished in {doc['elapsed_s']:.1f} s; agent stopped.")
    if results_db is not None:
        print(f"results kept in {results_db} (see `edgetune results list`; --no-record keeps "
              "none)")
    if keep is not None:
        import textwrap

        int8 = doc["models"]["int8"]
        print(textwrap.fill(
            f"kept {workdir}: the PKI, the agent's store, {int8['file']} (with "
            f"{int8['quantize']['record']}) and edgetune.toml (run `edgetune info --device "
            "demo` there after restarting the agent as its first lines say)",
            min(width, 100), break_long_words=False, break_on_hyphens=False))
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
        parts.append(f"its PKI, store and INT8 model stay in {workdir}")
    elif workdir.exists():
        parts.append(f"its throw-away directory {workdir} could not be removed (remove it "
                     "by hand)")
    else:
        parts.append(f"its throw-away PKI, store and INT8 model ({workdir}) were removed")
    return " and ".join(parts)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="the whole loop on this PC: a throw-away PKI, a local agent, a sample CNN "
                     "quantized to INT8, a short tuning study, FP32 / default INT8 / tuned "
                     "compared in interleaved rounds (under a minute; --quick: a few seconds)",
        description="Run the whole loop on this PC with nothing to set up: a throw-away PKI, "
                    "a local agent reached over mutual TLS like a board, the 32x32 digits "
                    "sample quantized with edgetune quantize's defaults, a short tuning study "
                    "on the agent, then FP32, default INT8 and the tuned model measured in "
                    "interleaved rounds, ending with one table with 95% confidence intervals "
                    "(under a minute). --quick: the 8x8 sample, FP32 vs INT8 measured once, no "
                    "tuning (a few seconds). Results go to the results database (--no-record: "
                    "none). Ctrl-C stops the agent and removes the throw-away directory (exit "
                    "130).")
    p.add_argument("--quick", action="store_true",
                   help="the few-second version: the 8x8 digits CNN quantized, FP32 and INT8 "
                        "benchmarked and evaluated once, no tuning")
    p.add_argument("--trials", type=int, default=None, metavar="N",
                   help="trials of the tuning study (default 8; not with --quick)")
    p.add_argument("--keep", type=Path, metavar="DIR",
                   help="keep the PKI, the store, the INT8 model (and with --quick an "
                        "edgetune.toml) in DIR (new or empty)")
    add_record_flags(p)
    add_json_flag(p)
    p.set_defaults(func=cmd_demo)
