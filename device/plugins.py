"""Runner plug-ins: the board's own programs that run what onnxruntime cannot (an NPU's ``.om``,
``.nb`` or AIPU binary), timed and evaluated exactly as onnxruntime is.

A board registers them in agent.toml (``[runners.NAME]``: ``command``, ``formats``,
``timeout_s``; ``edgetune.device.config.RunnerConfig``); a host only names one
(``BenchmarkSpec.runner``/``EvaluateSpec.runner``) and can never choose the program or its
arguments. The protocol (docs/agent.md, "Runner plug-ins"): the agent runs ::

    command... --mode benchmark|evaluate --model MODEL --inputs IN_DIR --outputs OUT_DIR
               --warmup W --iterations N

never through a shell, in a new session (its own process group), in a private work folder
that is its working directory, with the agent's environment minus every ``EDGETUNE_*``
variable (the key's passphrase among them). MODEL is the stored blob, linked into the work
folder as ``model.<format>`` (vendor tools check suffixes). IN_DIR holds ``<input>.npy`` per
model input: one batch in benchmark mode, every sample in evaluate mode (first axis =
samples). Benchmark mode: the plug-in runs W untimed and N timed iterations and prints one
JSON line per timed iteration, ``{"ms": 1.23}``, or one summary line ``{"samples_ms": [...]}``;
it may also print ``{"load_ms": ...}`` and ``{"first_run_ms": ...}``. Evaluate mode: it writes
``OUT_DIR/<output>.npy`` for every model output, first axis = samples. Every stdout line must
be such JSON (logs go to stderr). Exit status 0 means success.

The agent aggregates the times with ``edgetune.device.runner.latency_stats`` and evaluates the
outputs with ``edgetune.device.evaluate.evaluate_session`` (``Outputs`` stands in for the
onnxruntime session and serves the precomputed outputs batch by batch). It kills the whole
process group (SIGKILL) at ``timeout_s`` and when the job is cancelled; a crash, a hang,
garbage output or outputs of the wrong shape end the job with an error naming the runner and
the tail of its stderr, and the agent goes on serving.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from edgetune.device.config import RunnerConfig
from edgetune.device.datasets import DETECTION_KEYS, LABELS, ORT_DTYPES, Dataset
from edgetune.device.errors import InvalidArgument, StatusError
from edgetune.protos.messages import BenchmarkSpec, CompareSpec, RunnerInfo, SessionOptions

log = logging.getLogger("edgetune.agent.plugins")

ONNX = "onnx"
WAKE_S = 0.25                           # how often the agent looks at a running plug-in (cancel,
                                        # timeout, output size, progress): rarely, so that its
                                        # wake-ups do not disturb what the plug-in times
STDERR_TAIL = 2000                      # characters of its stderr quoted in an error
MAX_STDOUT_BYTES = 16 << 20             # more than this is garbage: the plug-in is killed
NUMPY_TO_ORT = {np.dtype(v).name: k for k, v in ORT_DTYPES.items()}


class PluginError(StatusError):
    """A runner plug-in failed (crashed, hung, printed garbage, wrote wrong outputs)."""


def runner_infos(runners: Sequence[RunnerConfig]) -> Tuple[RunnerInfo, ...]:
    return tuple(RunnerInfo(name=r.name, formats=r.formats, can_profile=False) for r in runners)


def _names(runners: Mapping[str, RunnerConfig]) -> str:
    return ", ".join(f"{r.name} ({'/'.join(r.formats)})" for r in runners.values()) or "none"


def check_runner(spec: Any, runners: Mapping[str, RunnerConfig], model_format: str) -> None:
    """Refuse, at submit time, a job its runner cannot do: an unknown runner name, a model
    format the runner does not take (onnxruntime takes only "onnx"), ``--profile`` or a
    duration-bound run with a plug-in, session options a plug-in would not apply."""
    name = getattr(spec, "runner", "")
    if isinstance(spec, CompareSpec) or not name:
        if model_format != ONNX:
            able = [r.name for r in runners.values() if model_format in r.formats]
            what = "a comparison runs onnxruntime" if isinstance(spec, CompareSpec) else \
                "onnxruntime cannot run it"
            if able:
                hint = (f"run it with --runner {able[0]} (this board's runners for "
                        f"'{model_format}': {', '.join(able)})")
            else:
                hint = (f"this board has no runner for '{model_format}' (its runners: "
                        f"{_names(runners)}); register one in [runners.NAME] of its agent.toml")
            raise InvalidArgument(f"the model is a '{model_format}' file and {what}; {hint}")
        return
    runner = runners.get(name)
    if runner is None:
        raise InvalidArgument(f"this board has no runner {name!r}; its runners: "
                              f"{_names(runners)} (a board registers runners in [runners.NAME] "
                              "of its agent.toml; without --runner, onnxruntime runs the model)")
    if model_format not in runner.formats:
        raise InvalidArgument(f"runner {name!r} takes {'/'.join(runner.formats)} models; this "
                              f"model is a '{model_format}' file")
    if isinstance(spec, BenchmarkSpec):
        if spec.profile:
            raise InvalidArgument(f"runner {name!r} cannot profile operators: --profile is "
                                  "onnxruntime's profiler; leave out --profile, or profile the "
                                  "ONNX model without --runner")
        if spec.iterations <= 0:
            raise InvalidArgument(f"runner {name!r} is given a fixed number of iterations; pass "
                                  "--iterations instead of a duration")
    plain = SessionOptions(input_shapes=spec.session.input_shapes)
    if spec.session != plain:
        raise InvalidArgument(f"runner {name!r} is a plug-in program: onnxruntime's session "
                              "options (providers, provider options, threads, graph "
                              "optimisation, execution mode) do not apply to it; leave them out")


# ---------------------------------------------------------------------- model inputs/outputs

@dataclass(frozen=True)
class Value:
    """A model input or output as evaluate_session and match_to_model read them (NodeArg-like)."""

    name: str
    shape: Tuple[Any, ...]
    type: str                               # onnxruntime's "tensor(float)" spelling


def onnx_values(values: Sequence[Any]) -> List[Value]:
    """``onnx_safety.ValueSummary`` -> Value (unknown shapes as ())."""
    return [Value(v.name, tuple(v.shape or ()), NUMPY_TO_ORT.get(v.dtype, f"tensor({v.dtype})"))
            for v in values]


def opaque_inputs(options: SessionOptions, dataset: Optional[Dataset]) -> List[Value]:
    """An opaque model's inputs: the ``--shape`` names (float32 random data, or those arrays of
    the dataset), else every dataset array that is not labels or detection ground truth."""
    shapes = options.shapes()
    if dataset is None:
        if not shapes:
            raise InvalidArgument("the agent cannot read an opaque model's inputs: pass --shape "
                                  "NAME=DIMS for each input (float32 random data), or a dataset "
                                  "with one array per input")
        return [Value(n, tuple(d), "tensor(float)") for n, d in shapes.items()]
    names = list(shapes) or [n for n in dataset.arrays if n != LABELS and n not in DETECTION_KEYS]
    missing = [n for n in names if n not in dataset.arrays]
    if missing or not names:
        raise InvalidArgument(f"the dataset has no array {missing[0]!r} to feed the model" if
                              missing else "the dataset holds no input array")
    values = []
    for n in names:
        arr = dataset.arrays[n]
        kind = NUMPY_TO_ORT.get(arr.dtype.name)
        if kind is None:
            raise InvalidArgument(f"dataset array {n!r} is {arr.dtype}, which cannot be fed")
        values.append(Value(n, ("N",) + tuple(arr.shape[1:]), kind))
    return values


class Outputs:
    """Stands in for an onnxruntime session in ``evaluate_session``: serves the outputs the
    plug-in computed for every sample, batch by batch, in order."""

    def __init__(self, inputs: Sequence[Value], outputs: Sequence[Value],
                 arrays: Dict[str, np.ndarray]) -> None:
        self._inputs, self._outputs, self._arrays = list(inputs), list(outputs), arrays
        self._at = 0

    def get_inputs(self) -> List[Value]:
        return self._inputs

    def get_outputs(self) -> List[Value]:
        return self._outputs

    def run(self, names: List[str], feeds: Dict[str, np.ndarray]) -> List[np.ndarray]:
        batch = len(next(iter(feeds.values())))
        begin, self._at = self._at, self._at + batch
        return [self._arrays[n][begin:begin + batch] for n in names]


# ---------------------------------------------------------------------- running the program

def place_model(model: Any, target: Path) -> None:
    """Put the model at ``target`` for the program. An opened model (``BlobStore.open``) is
    hard-linked from its descriptor (``/proc/self/fd/N``, followed to the file held: the
    file the store checked, whatever its name in the store is now), or else copied from
    it; a path is hard-linked, or else linked symbolically."""
    fd_path = model.fd_path() if hasattr(model, "fd_path") else None
    if fd_path:
        folder = os.open(str(target.parent), os.O_RDONLY)
        try:
            # With dst_dir_fd, os.link is linkat(..., AT_SYMLINK_FOLLOW): the file, not the
            # /proc link (the same file system: no copy).
            os.link(fd_path, target.name, dst_dir_fd=folder)
            return
        except OSError:
            pass
        finally:
            os.close(folder)
    if hasattr(model, "file"):
        model.file.seek(0)
        with open(target, "wb") as out:
            shutil.copyfileobj(model.file, out, 1 << 20)
        return
    try:
        os.link(model, target)              # same file system: no copy
    except OSError:
        os.symlink(os.path.abspath(model), target)


class PluginProcess:
    """One run of a plug-in program in ``work`` (a fresh folder it owns)."""

    def __init__(self, config: RunnerConfig, work: Path, model: Any,
                 model_format: str) -> None:
        """``model``: the stored model, opened (``BlobStore.open``), or a path."""
        self.config = config
        self.work = work
        self.inputs = work / "inputs"
        self.outputs = work / "outputs"
        self.inputs.mkdir()
        self.outputs.mkdir()
        self.model = work / f"model.{model_format}"
        place_model(model, self.model)
        self.stdout_path = work / "stdout"
        self.stderr_path = work / "stderr"

    def write_inputs(self, feeds: Mapping[str, np.ndarray]) -> None:
        for name, array in feeds.items():
            np.save(self.inputs / f"{_file_name(name)}.npy", np.ascontiguousarray(array),
                    allow_pickle=False)

    def argv(self, mode: str, warmup: int, iterations: int) -> List[str]:
        return [*self.config.command, "--mode", mode, "--model", str(self.model),
                "--inputs", str(self.inputs), "--outputs", str(self.outputs),
                "--warmup", str(warmup), "--iterations", str(iterations)]

    def run(self, mode: str, warmup: int, iterations: int, rep: Any,
            progress: Any = None) -> str:
        """Run to its end; its stdout. PluginError on a non-zero exit, the timeout or too much
        output; Cancelled (killing the group) when the job is cancelled."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGETUNE_")}
        argv = self.argv(mode, warmup, iterations)
        log.info("runner %s: %s", self.config.name, " ".join(argv))
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            try:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                        cwd=str(self.work), env=env, start_new_session=True,
                                        close_fds=True)
            except OSError as exc:
                raise PluginError(f"runner {self.config.name!r} could not start "
                                  f"{self.config.command[0]}: {exc.strerror or exc}") from None
        deadline = time.monotonic() + self.config.timeout_s
        finished = threading.Event()         # set by a thread blocked in wait(): no polling

        def reap() -> None:
            proc.wait()
            finished.set()

        threading.Thread(target=reap, name=f"edgetune-runner-{self.config.name}",
                         daemon=True).start()
        try:
            while not finished.wait(WAKE_S):
                if rep.cancelled.is_set():
                    self._kill(proc, finished)
                    rep.check()
                if time.monotonic() > deadline:
                    self._kill(proc, finished)
                    raise self.error(f"did not finish within its timeout of "
                                     f"{self.config.timeout_s:g} s (timeout_s in its "
                                     "[runners] table) and was killed")
                if self.stdout_path.stat().st_size > MAX_STDOUT_BYTES:
                    self._kill(proc, finished)
                    raise self.error(f"printed more than {MAX_STDOUT_BYTES} bytes and was killed")
                if progress is not None:
                    progress()
        finally:
            if not finished.is_set():        # an exception above, e.g. KeyboardInterrupt
                self._kill(proc, finished)
            else:
                _kill_group(proc.pid)        # children it left behind
        if proc.returncode != 0:
            how = (f"was killed by signal {-proc.returncode}" if proc.returncode < 0
                   else f"exited with status {proc.returncode}")
            raise self.error(how)
        with open(self.stdout_path, "rb") as f:
            return f.read(MAX_STDOUT_BYTES).decode("utf-8", errors="replace")

    def _kill(self, proc: "subprocess.Popen[bytes]", finished: threading.Event) -> None:
        _kill_group(proc.pid)
        if not finished.wait(10):
            log.error("runner %s: process %d did not die after SIGKILL", self.config.name,
                      proc.pid)

    def stderr_tail(self) -> str:
        try:
            with open(self.stderr_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - STDERR_TAIL))
                return f.read().decode("utf-8", errors="replace").strip()
        except OSError:
            return ""

    def error(self, what: str) -> PluginError:
        tail = self.stderr_tail()
        return PluginError(f"runner {self.config.name!r} {what}"
                           + (f"; its stderr ends with: {tail}" if tail else
                              "; it wrote nothing to stderr"))


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _file_name(name: str) -> str:
    """An input/output name as a file name: a tensor name is not a path."""
    if not name or name in (".", "..") or "/" in name or "\0" in name or len(name) > 200:
        raise InvalidArgument(f"tensor name {name!r} cannot be a plug-in's file name")
    return name


def parse_timings(text: str, plugin: PluginProcess,
                  iterations: Optional[int]) -> Dict[str, Any]:
    """The plug-in's stdout -> {"samples_ms": [...], "load_ms": x, "first_run_ms": y}.
    PluginError on a line that is not the protocol's JSON, or a count other than ``iterations``
    (None: any count)."""
    samples: List[float] = []
    extra: Dict[str, float] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        try:
            value = json.loads(line)
            if not isinstance(value, dict):
                raise ValueError("not an object")
            if "ms" in value:
                samples.append(_ms(value["ms"]))
            elif "samples_ms" in value:
                if not isinstance(value["samples_ms"], list):
                    raise ValueError("samples_ms is not a list")
                samples.extend(_ms(v) for v in value["samples_ms"])
            elif "load_ms" in value or "first_run_ms" in value:
                for key in ("load_ms", "first_run_ms"):
                    if key in value:
                        extra[key] = _ms(value[key])
            else:
                raise ValueError("no 'ms' or 'samples_ms' key")
        except ValueError as exc:
            shown = line if len(line) <= 120 else line[:117] + "..."
            raise plugin.error(f"printed line {number} that is not the protocol's JSON "
                               f"({exc}): {shown!r}") from None
    if iterations is not None and len(samples) != iterations:
        raise plugin.error(f"printed {len(samples)} timed iterations where {iterations} were "
                           "asked (one {\"ms\": ...} line per timed iteration)")
    return {"samples_ms": samples, **extra}


def _ms(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) \
            or value < 0:
        raise ValueError(f"{value!r} is not a duration in ms")
    return float(value)


def read_outputs(plugin: PluginProcess, expected: Sequence[Value],
                 samples: int) -> Tuple[List[Value], Dict[str, np.ndarray]]:
    """The outputs an evaluate-mode run wrote: every expected one (an ONNX model's; an opaque
    model's are the files it wrote, by name), each [samples, ...] with the model's fixed
    dimensions. PluginError otherwise."""
    files = sorted(p for p in plugin.outputs.iterdir() if p.name.endswith(".npy"))
    if expected:
        names = [v.name for v in expected]
        missing = [n for n in names if not (plugin.outputs / f"{_file_name(n)}.npy").is_file()]
        if missing:
            raise plugin.error(f"wrote no output {missing[0]!r} (expected "
                               f"{', '.join(f'{n}.npy' for n in names)} in --outputs)")
    else:
        names = [p.name[:-len(".npy")] for p in files]
        if not names:
            raise plugin.error("wrote no .npy output in --outputs")
    arrays: Dict[str, np.ndarray] = {}
    values: List[Value] = []
    by_name = {v.name: v for v in expected}
    for name in names:
        path = plugin.outputs / f"{name}.npy"
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise plugin.error(f"wrote {name}.npy, which is not a .npy array: {exc}") from None
        want = by_name.get(name)
        model_shape = list(want.shape) if want is not None else []
        fixed_ok = (not model_shape or (array.ndim == len(model_shape) and all(
            not isinstance(m, int) or m <= 0 or m == a
            for m, a in zip(model_shape[1:], array.shape[1:]))))
        if array.ndim == 0 or array.shape[0] != samples or not fixed_ok:
            expect = "[" + ", ".join([str(samples)] + [str(d) if isinstance(d, int) and d > 0
                                                       else "?" for d in model_shape[1:]]) + "]"
            raise plugin.error(f"wrote output {name!r} of shape {list(array.shape)}; expected "
                               f"{expect if model_shape else f'[{samples}, ...]'} (first axis: "
                               f"the {samples} samples)")
        arrays[name] = array
        values.append(want or Value(name, (samples,) + tuple(array.shape[1:]),
                                    NUMPY_TO_ORT.get(array.dtype.name, "tensor(float)")))
    return values, arrays


def work_folder(root: Path) -> Path:
    """A fresh private folder for one plug-in run under ``root``."""
    root.mkdir(mode=0o700, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="run-", dir=str(root)))


def remove_work(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
