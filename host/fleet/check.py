"""``edgetune fleet check``: a canary on every selected board at once, to find boards that are up
but wrong (a broken onnxruntime build, a throttled or overloaded board, one running hot).

The canary is the shipped digits CNN (host/samples/digits_cnn.onnx) on the first
``CANARY_SAMPLES`` images of its test set, fixed inputs. This PC's own onnxruntime (CPU) runs
them first; its outputs become the canary's dataset: ``labels`` = this PC's top-1 class, and
the logits themselves as reference outputs under the model's output name. The agent cannot
return raw outputs, but its evaluation computes top-1 against labels and fidelity against
reference outputs (device/metrics.py, the same code everywhere), so one evaluation job on the
board compares the board's outputs with this PC's:

- top-1 must agree on every input (inputs whose top two logits on this PC are closer than
  ``MIN_MARGIN`` are left out of the canary, so that rounding cannot flip them);
- the largest absolute difference of any logit must be at most ``tolerance`` (default
  ``TOLERANCE`` = 1e-3; the canary's logits reach 4.8 in magnitude; measured on this model:
  onnxruntime 1.30.0 on a board against 1.32.0 on the PC, both x86-64, differ by 0, and the
  same onnxruntime with graph optimisations off, other kernels, by 1.1e-6);
- then a benchmark of the same model on the same inputs (``iterations`` timed runs): the ratio
  p90/p50 of its latencies must be at most ``max_spread`` (default ``MAX_SPREAD``), and the
  board's temperature, when it reports one, at most ``max_temperature_c``.

Each board is reached through ``BoardSession`` (one thread per board, at most ``parallel`` at
once); the canary's two files are uploaded once per board and deduplicated by hash afterwards
(the dataset is written byte for byte the same each time). A board whose agent's certificate
names another board than its inventory name gets a warning (``cn_warning``), and is refused
unchecked under ``strict``.
"""

from __future__ import annotations

import concurrent.futures
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

CANARY_SAMPLES = 64
MIN_MARGIN = 1e-2          # logits: top-1 minus top-2 on this PC, below which a sample is left out
TOLERANCE = 1e-3           # largest absolute logit difference, board against this PC
MAX_SPREAD = 3.0           # p90 / p50 of the benchmark's latencies
MAX_TEMPERATURE_C = 85.0
ITERATIONS = 200
WARMUP = 20
PASSED, FAILED = "passed", "failed"


def cn_warning(inventory_name: str, agent_name: str) -> str:
    """"" when the board's certificate names it as the inventory does (or says nothing)."""
    if not agent_name or agent_name == inventory_name:
        return ""
    return (f"its certificate is for {agent_name!r}, not {inventory_name!r} as edgetune.toml "
            f"names it: is {inventory_name}'s address right?")


@dataclass(frozen=True)
class CheckSettings:
    """What a check demands of a board (built once from the flags)."""

    tolerance: float = TOLERANCE
    max_spread: float = MAX_SPREAD
    max_temperature_c: float = MAX_TEMPERATURE_C
    iterations: int = ITERATIONS
    warmup: int = WARMUP
    strict: bool = False            # refuse a board whose certificate names another board
    timeout_s: float = 30.0         # each call to a board
    job_timeout_s: float = 600.0    # each canary job, queue included
    parallel: int = 16

    def __post_init__(self) -> None:
        if not self.tolerance >= 0:
            raise ValueError("the tolerance must be 0 or more")
        if not self.max_spread >= 1:
            raise ValueError("the largest latency spread (p90/p50) must be at least 1")
        if self.iterations < 10:
            raise ValueError("the canary needs at least 10 timed runs for a spread")
        if self.warmup < 0 or self.parallel < 1 or not self.timeout_s > 0 \
                or not self.job_timeout_s > 0:
            raise ValueError("warm-up, parallelism and timeouts must be positive")


@dataclass(frozen=True)
class Canary:
    """The canary's model and its dataset (this PC's outputs on fixed inputs)."""

    model: Path
    dataset: Path
    samples: int
    onnxruntime_version: str        # this PC's, which made the reference


def _write_npz(path: Path, arrays: Mapping[str, Any]) -> None:
    """An .npz that is the same bytes for the same arrays (np.savez stamps the time), so the
    board keeps one copy of the canary however often it is checked."""
    import numpy as np

    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(info, "w") as member:
                np.lib.format.write_array(member, np.ascontiguousarray(array),
                                          allow_pickle=False)


def build_canary(directory: Path, samples: int = CANARY_SAMPLES,
                 model: Optional[Path] = None) -> Canary:
    """Run the canary model on this PC and write its dataset into ``directory``."""
    import numpy as np
    import onnxruntime as ort

    from edgetune.host.samples import DIGITS_MODEL, DIGITS_TEST

    model = Path(model or DIGITS_MODEL)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    (input_arg,), (output_arg,) = session.get_inputs(), session.get_outputs()
    with np.load(DIGITS_TEST, allow_pickle=False) as data:
        inputs = np.asarray(data[input_arg.name], dtype=np.float32)
    (logits,) = session.run([output_arg.name], {input_arg.name: inputs})
    top = np.sort(logits, axis=1)
    clear = (top[:, -1] - top[:, -2]) >= MIN_MARGIN
    inputs, logits = inputs[clear][:samples], logits[clear][:samples]
    dataset = Path(directory) / "fleet-check-canary.npz"
    _write_npz(dataset, {input_arg.name: inputs,
                         "labels": np.argmax(logits, axis=1).astype(np.int64),
                         output_arg.name: logits.astype(np.float32)})
    return Canary(model=model, dataset=dataset, samples=len(inputs),
                  onnxruntime_version=ort.__version__)


@dataclass(frozen=True)
class CheckOutcome:
    """One board's check. ``state``: passed, failed (the board is up but wrong: quarantined),
    or unreachable / refused / error (the board was not checked: nothing changes)."""

    name: str
    address: str
    state: str
    reasons: Tuple[str, ...] = ()
    metrics: Tuple[Tuple[str, float], ...] = ()     # top1, max_abs_error, cosine, sqnr_db
    p50_ms: Optional[float] = None
    p90_ms: Optional[float] = None
    temperature_c: Optional[float] = None
    onnxruntime: str = ""
    cn_warning: str = ""
    elapsed_s: float = 0.0

    @property
    def passed(self) -> bool:
        return self.state == PASSED

    @property
    def spread(self) -> Optional[float]:
        if self.p50_ms is None or self.p90_ms is None or self.p50_ms <= 0:
            return None
        return self.p90_ms / self.p50_ms

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)

    def as_json(self) -> Dict[str, Any]:
        metrics = dict(self.metrics)
        spread = self.spread
        return {"name": self.name, "address": self.address, "state": self.state,
                "reason": self.reason, "reasons": list(self.reasons),
                "top1_agreement": metrics.get("top1"),
                "max_abs_error": metrics.get("max_abs_error"),
                "cosine": metrics.get("cosine"), "sqnr_db": metrics.get("sqnr_db"),
                "p50_ms": self.p50_ms, "p90_ms": self.p90_ms,
                "spread": None if spread is None else round(spread, 3),
                "temperature_c": self.temperature_c, "onnxruntime": self.onnxruntime or None,
                "cn_warning": self.cn_warning or None, "elapsed_s": round(self.elapsed_s, 3)}


def judge(metrics: Mapping[str, float], p50_ms: Optional[float], p90_ms: Optional[float],
          temperature_c: Optional[float], settings: CheckSettings) -> List[str]:
    """Why a board fails the check ([] when it passes): the board's evaluation metrics
    against this PC's outputs, its latency spread and its temperature."""
    reasons: List[str] = []
    top1 = metrics.get("top1")
    if top1 is None or not top1 >= 1.0:
        shown = "none" if top1 is None else f"{top1:.1%}"
        reasons.append(f"outputs differ from this PC's onnxruntime: the top-1 class agrees on "
                       f"{shown} of the canary's inputs (all must)")
    error = metrics.get("max_abs_error")
    if error is None or not error <= settings.tolerance:
        cosine, sqnr = metrics.get("cosine"), metrics.get("sqnr_db")
        detail = "" if cosine is None or sqnr is None else \
            f" (cosine {cosine:.6f}, SQNR {sqnr:.1f} dB)"
        reasons.append(f"outputs differ from this PC's onnxruntime: max abs error "
                       f"{error if error is None else f'{error:.3g}'} > {settings.tolerance:g}"
                       f"{detail}")
    if p50_ms is not None and p90_ms is not None and p50_ms > 0:
        spread = p90_ms / p50_ms
        if not spread <= settings.max_spread:
            reasons.append(f"latency spread p90/p50 {spread:.2f} > {settings.max_spread:g} "
                           f"(p50 {p50_ms:.3f} ms, p90 {p90_ms:.3f} ms): a throttled or "
                           "overloaded board")
    if temperature_c is not None and temperature_c > settings.max_temperature_c:
        reasons.append(f"temperature {temperature_c:.0f} C > {settings.max_temperature_c:g} C")
    return reasons


def _not_checked(device: Any, error: Exception, started: float, warning: str = "") -> CheckOutcome:
    from edgetune.host.errors import AuthError, TimeoutError_, UnreachableError

    if isinstance(error, AuthError):
        state = "refused"
    elif isinstance(error, (UnreachableError, TimeoutError_)):
        state = "unreachable"
    else:
        state = "error"
    message = getattr(error, "message", "") or str(error) or type(error).__name__
    return CheckOutcome(device.name, device.address, state, (message,), cn_warning=warning,
                        elapsed_s=time.monotonic() - started)


@dataclass
class _Clients:
    """The clients in use, so that Ctrl-C can close them (their blocked calls then end)."""

    open: List[Any] = field(default_factory=list)

    def close_all(self) -> None:
        for client in list(self.open):
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing on the way out
                pass


def check_board(device: Any, identity: Any, canary: Canary, settings: CheckSettings,
                clients: Optional[_Clients] = None) -> CheckOutcome:
    """Run the canary on one board (``device``: an inventory Device)."""
    from edgetune.host.board import BoardSession
    from edgetune.host.client import AgentClient, ClientSettings
    from edgetune.host.errors import EdgetuneError
    from edgetune.protos.messages import BenchmarkSpec, EvaluateSpec

    started = time.monotonic()
    warning = ""
    client_settings = ClientSettings(timeout_s=settings.timeout_s,
                                     connect_timeout_s=min(10.0, settings.timeout_s),
                                     watch_timeout_s=settings.job_timeout_s)
    try:
        client = AgentClient(device.address, identity, server_name=device.server_name,
                             settings=client_settings)
        if clients is not None:
            clients.open.append(client)
        with BoardSession(client, device.name) as board:
            info = board.board.agent
            warning = cn_warning(device.name, info.agent_name if info else "")
            version = info.onnxruntime_version if info else ""
            if warning and settings.strict:
                return CheckOutcome(device.name, device.address, "refused",
                                    (f"{warning} (refused under --strict)",),
                                    onnxruntime=version, cn_warning=warning,
                                    elapsed_s=time.monotonic() - started)
            evaluation = board.evaluate(
                canary.model, canary.dataset,
                EvaluateSpec(model_sha256="", dataset_sha256="", metrics=("top1", "fidelity")),
                label="fleet check canary", dataset_name=canary.dataset.name)
            if not evaluation.ok:
                return CheckOutcome(device.name, device.address, FAILED,
                                    (f"the canary's evaluation failed on the board "
                                     f"({evaluation.state.value}): {evaluation.error}",),
                                    onnxruntime=version, cn_warning=warning,
                                    elapsed_s=time.monotonic() - started)
            metrics = evaluation.result.metric_dict()   # type: ignore[union-attr]
            bench = board.benchmark(
                evaluation.model_sha256,
                BenchmarkSpec(model_sha256="", warmup=settings.warmup,
                              iterations=settings.iterations,
                              dataset_sha256=evaluation.dataset_sha256),
                label="fleet check canary")
            kept = {k: float(metrics[k]) for k in ("top1", "max_abs_error", "cosine", "sqnr_db")
                    if k in metrics}
            if not bench.ok:
                return CheckOutcome(device.name, device.address, FAILED,
                                    (f"the canary's benchmark failed on the board "
                                     f"({bench.state.value}): {bench.error}",),
                                    tuple(sorted(kept.items())), onnxruntime=version,
                                    cn_warning=warning, elapsed_s=time.monotonic() - started)
            result = bench.result
            assert result is not None
            temperature = result.temperature_c or None          # 0: the board does not say
            reasons = judge(metrics, result.latency.p50_ms, result.latency.p90_ms,
                            temperature, settings)
            return CheckOutcome(device.name, device.address, FAILED if reasons else PASSED,
                                tuple(reasons), tuple(sorted(kept.items())),
                                result.latency.p50_ms, result.latency.p90_ms, temperature,
                                version, warning, time.monotonic() - started)
    except EdgetuneError as error:
        return _not_checked(device, error, started, warning)
    except ValueError as error:       # e.g. an agent certificate this PC cannot read
        return _not_checked(device, error, started, warning)


def check_fleet(devices: Sequence[Any], identity: Any, canary: Canary,
                settings: CheckSettings) -> List[CheckOutcome]:
    """Every board at once (at most ``settings.parallel``); outcomes in the order of
    ``devices``. Ctrl-C closes every connection and re-raises (jobs already on a board
    finish there)."""
    clients = _Clients()
    workers = max(1, min(settings.parallel, len(devices)))
    pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="fleet-check")
    try:
        futures = [pool.submit(check_board, d, identity, canary, settings, clients)
                   for d in devices]
        return [f.result() for f in futures]
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)
        clients.close_all()
        raise
    finally:
        pool.shutdown(wait=True)
