"""Execution providers as the board has them.

- ``create_session``: an onnxruntime session with the spec's providers and each provider's
  options (``SessionOptions.provider_options``); onnxruntime's own message when it refuses.
- ``Placement``: which provider ran how many nodes of the optimized graph, read from
  onnxruntime's profiler over the session's first run only (the profiler stops after it, so
  the warm-up and the timed runs are not profiled), so that "ran on the NPU" is a fact.
- ``onnxruntime_distribution`` and ``build_info``: which installed distribution provides the
  onnxruntime the agent imports (onnxruntime, onnxruntime-gpu, onnxruntime-cann, a vendor's
  build), found through the installed distributions rather than guessed, and the Debian
  package owning its files when there is one (Debian's python3-onnxruntime).
- ``ProviderChecks``: whether each available provider really creates a session on a tiny
  model, checked once when the agent starts (in a thread), then cached.

Standard library and onnxruntime only: this runs on a board's Python 3.9.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from edgetune.device.errors import InvalidArgument
from edgetune.protos.messages import ProviderCheck, SessionOptions

log = logging.getLogger("edgetune.agent.providers")

DEFAULT_PROVIDER = "CPUExecutionProvider"
GRAPH_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
                "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}
EXEC_MODES = {"sequential": "ORT_SEQUENTIAL", "parallel": "ORT_PARALLEL"}
# y = x + x on a float[1]: the smallest model every provider should run (opset 13, IR 7, so
# onnxruntime 1.12 reads it). Made with onnx.helper; the board has no onnx package.
TINY_MODEL = base64.b64decode(
    "CAcSCGVkZ2V0dW5lOjkKDgoBeAoBeBIBeSIDQWRkEgVjaGVja1oPCgF4EgoKCAgBEgQKAggBYg8KAXkSCgoICAESBAoC"
    "CAFCBAoAEA0=")
_KERNEL_SUFFIX = "_kernel_time"


def _ort() -> Any:
    import onnxruntime
    return onnxruntime


def session_providers(options: SessionOptions, available: List[str]) -> List[Any]:
    """The ``providers`` argument of an InferenceSession: names, or (name, options) pairs.
    InvalidArgument for a provider this onnxruntime lacks, or options for a provider the
    session does not use."""
    providers = list(options.providers) or [DEFAULT_PROVIDER]
    missing = [p for p in providers if p not in available]
    if missing:
        raise InvalidArgument(f"execution provider(s) {', '.join(missing)} not available in this "
                              f"board's onnxruntime; available: {', '.join(available)}")
    given = options.options_of()
    unused = sorted(set(given) - set(providers))
    if unused:
        raise InvalidArgument(f"options for {', '.join(unused)}, which this session does not use "
                              f"(providers: {', '.join(providers)}); add it to the providers")
    return [(p, given[p]) if given.get(p) else p for p in providers]


class Placement:
    """Profiles a session's first run to learn where its nodes ran (``nodes()``)."""

    def __init__(self) -> None:
        self.folder = ""

    def configure(self, so: Any) -> None:
        self.folder = tempfile.mkdtemp(prefix="edgetune-placement-")
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(self.folder, "placement")

    def nodes(self, session: Any) -> Tuple[Tuple[str, int], ...]:
        """Stop the profiler (after the first run) and count the nodes each provider ran:
        sorted (provider, nodes). () when the trace cannot be read (said in the log)."""
        try:
            return count_nodes(self.events(session))
        except Exception as exc:  # noqa: BLE001 - placement is a report, never a failure
            log.warning("could not read where the model's nodes ran: %s", exc)
            return ()

    def events(self, session: Any) -> Any:
        """Stop the profiler and return its trace (a list of events); the file is removed."""
        try:
            path = session.end_profiling()
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        finally:
            self.close()

    def close(self) -> None:
        """Remove the trace's folder (also when the first run never happened)."""
        if self.folder:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = ""


def count_nodes(events: Any) -> Tuple[Tuple[str, int], ...]:
    """Distinct nodes per provider in an onnxruntime profiler trace (its kernel events)."""
    seen: Dict[str, set] = {}
    for event in events if isinstance(events, list) else ():
        if not isinstance(event, dict) or event.get("cat") != "Node":
            continue
        name = str(event.get("name", ""))
        args = event.get("args") or {}
        if not name.endswith(_KERNEL_SUFFIX) or not isinstance(args, dict):
            continue
        provider = str(args.get("provider") or "unknown")
        seen.setdefault(provider, set()).add(name[:-len(_KERNEL_SUFFIX)])
    return tuple(sorted((p, len(names)) for p, names in seen.items()))


def create_session(model_path: Any, options: SessionOptions,
                   placement: Optional[Placement] = None) -> Tuple[Any, float]:
    """(InferenceSession, load_ms). InvalidArgument for unavailable providers, options a
    provider refuses or a model onnxruntime cannot load (onnxruntime's message included).
    ``model_path``: a path, the model's bytes, or the stored model opened
    (``edgetune.device.safefs.OpenedFile``: onnxruntime then reads that very file, through
    ``/proc/self/fd/N``, or its bytes where there is no such folder).
    ``placement``: profile the first run to learn where the nodes ran."""
    ort = _ort()
    providers = session_providers(options, list(ort.get_available_providers()))
    so = ort.SessionOptions()
    so.intra_op_num_threads = options.intra_op_threads
    so.inter_op_num_threads = options.inter_op_threads
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel,
                                          GRAPH_LEVELS[options.graph_optimization])
    so.execution_mode = getattr(ort.ExecutionMode, EXEC_MODES[options.execution_mode])
    so.log_severity_level = 3
    if placement is not None:
        placement.configure(so)
    start = time.perf_counter_ns()
    try:
        session = ort.InferenceSession(_model_source(model_path), sess_options=so,
                                       providers=providers)
    except Exception as exc:
        if placement is not None:
            placement.close()
        raise InvalidArgument(f"onnxruntime cannot load the model: {exc}".strip()) from None
    return session, (time.perf_counter_ns() - start) / 1e6


def _model_source(model: Any) -> Any:
    """What ``InferenceSession`` takes: a path string or bytes."""
    if isinstance(model, bytes):
        return model
    if hasattr(model, "source"):            # an OpenedFile
        return model.source()
    return str(model)


NO_ONNXRUNTIME = (
    "no onnxruntime can be imported by this Python ({problem}); the agent needs one. Install "
    "the build for this board into the agent's Python: PyPI's `pip install onnxruntime` "
    "(x86-64 and aarch64 CPUs: Raspberry Pi, RK3588, Jetson's CPU), `pip install "
    "onnxruntime-cann` on an Ascend Atlas board (CANN), `pip install onnxruntime-gpu` with an "
    "NVIDIA GPU, and on a SpacemiT K1 (Bianbu) or another Debian riscv64 board the "
    "distribution's `apt install python3-onnxruntime` with the agent in a venv made with "
    "--system-site-packages. `pip install 'edgetune[agent]'` installs the agent without "
    "onnxruntime (for a board's own build); 'edgetune[device]' with PyPI's")


def import_problem() -> str:
    """Why onnxruntime cannot be imported ("" when it can): the agent refuses to start then."""
    try:
        import onnxruntime  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - a broken vendor build raises anything
        return f"{type(exc).__name__}: {exc}"
    return ""


DPKG_ADMIN = "/var/lib/dpkg"


def onnxruntime_distribution(admindir: str = DPKG_ADMIN) -> str:
    """Who installed the importable ``onnxruntime``: the Python distribution whose files hold
    it (name and version, e.g. "onnxruntime-cann 1.18.0"), and the Debian package owning those
    files when there is one: Debian 13's python3-onnxruntime carries an egg-info named plain
    "onnxruntime 1.21", which alone would read as PyPI's wheel, so the report is "onnxruntime
    1.21, Debian package python3-onnxruntime 1.21.0+dfsg-1". "" when nothing owns it (a copy
    on PYTHONPATH)."""
    try:
        import onnxruntime
        init_file = str(onnxruntime.__file__)
    except Exception:  # noqa: BLE001 - no onnxruntime at all
        return ""
    return distribution_of(init_file, "onnxruntime", admindir)


def distribution_of(init_file: str, package: str, admindir: str = DPKG_ADMIN) -> str:
    """``onnxruntime_distribution`` for the package whose ``__init__`` is ``init_file``."""
    where = os.path.realpath(os.path.dirname(init_file))
    found = python_distribution_of(where, package)
    deb, version = dpkg_owner(init_file, admindir)
    debian = " ".join(part for part in ("Debian package", deb, version) if part) if deb else ""
    return ", ".join(part for part in (found, debian) if part)


def python_distribution_of(where: str, package: str) -> str:
    """The installed Python distribution (name version) whose ``package`` is at ``where``."""
    try:
        from importlib import metadata
        dists = list(metadata.distributions())
    except Exception:  # noqa: BLE001
        return ""
    for dist in dists:
        top = (dist.read_text("top_level.txt") or "").split()
        files = dist.files or ()
        if package not in top and not any(str(f).startswith(package + "/__init__")
                                          for f in files):
            continue
        try:
            located = os.path.realpath(str(dist.locate_file(package)))
        except Exception:  # noqa: BLE001
            continue
        if located == where:
            return f"{dist.metadata['Name']} {dist.version}"
    return ""


def dpkg_owner(path: str, admindir: str = DPKG_ADMIN) -> Tuple[str, str]:
    """(package, version) of the installed Debian package whose file list holds ``path`` (what
    ``dpkg -S`` answers, read from dpkg's database without running a program); ("", "") on a
    system without dpkg or when no package owns it."""
    candidates = {path, os.path.realpath(path)}
    info = os.path.join(admindir, "info")
    try:
        lists = sorted(n for n in os.listdir(info) if n.endswith(".list"))
    except OSError:
        return "", ""
    for name in lists:
        try:
            with open(os.path.join(info, name), encoding="utf-8", errors="replace") as f:
                owned = any(line.rstrip("\n") in candidates for line in f)
        except OSError:
            continue
        if owned:
            package, _, arch = name[:-len(".list")].partition(":")   # multiarch: pkg:arch
            return package, dpkg_version(package, arch, admindir)
    return "", ""


def dpkg_version(package: str, arch: str = "", admindir: str = DPKG_ADMIN) -> str:
    """The installed version of ``package`` (of ``arch`` when given) in dpkg's status file."""
    try:
        with open(os.path.join(admindir, "status"), encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return ""
    for paragraph in text.split("\n\n"):
        fields: Dict[str, str] = {}
        for line in paragraph.splitlines():
            key, sep, value = line.partition(":")
            if sep and not line[:1].isspace():
                fields[key.strip()] = value.strip()
        if fields.get("Package") != package or not fields.get("Status", "").endswith(" installed"):
            continue
        if arch and fields.get("Architecture") not in (arch, "all"):
            continue
        return fields.get("Version", "")
    return ""


def build_info() -> str:
    """onnxruntime's own build information (``get_build_info``, onnxruntime >= 1.15), or its
    device string on older builds."""
    try:
        ort = _ort()
    except Exception:  # noqa: BLE001
        return ""
    getter = getattr(ort, "get_build_info", None)
    try:
        return str(getter()) if getter is not None else f"device {ort.get_device()}"
    except Exception:  # noqa: BLE001
        return ""


def check_provider(provider: str) -> ProviderCheck:
    """Whether ``provider`` creates a session on ``TINY_MODEL`` and runs it, alone (no CPU
    fallback allowed, so a provider that silently hands everything to the CPU is not
    counted as working)."""
    try:
        ort = _ort()
        import numpy as np
        so = ort.SessionOptions()
        so.log_severity_level = 3
        session = ort.InferenceSession(TINY_MODEL, sess_options=so, providers=[provider])
        used = session.get_providers()
        if provider not in used:
            return ProviderCheck(provider, False, f"the session fell back to {', '.join(used)}")
        session.run(None, {"x": np.ones(1, dtype=np.float32)})
        return ProviderCheck(provider, True)
    except Exception as exc:  # noqa: BLE001 - the provider's own message is the answer
        return ProviderCheck(provider, False, str(exc).strip()[:500])


class ProviderChecks:
    """``check_provider`` for each available provider, once, in a thread started with the
    agent; ``results()`` is () until it is done (GetInfo never waits for it)."""

    def __init__(self) -> None:
        self._results: Tuple[ProviderCheck, ...] = ()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> "ProviderChecks":
        self._thread = threading.Thread(target=self._run, name="edgetune-provider-checks",
                                        daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            available = list(_ort().get_available_providers())
        except Exception:  # noqa: BLE001 - no onnxruntime: nothing to check
            return
        results = tuple(check_provider(p) for p in available)
        for check in results:
            if not check.usable:
                log.warning("execution provider %s is listed but does not work: %s",
                            check.provider, check.error)
        self._results = results

    def wait(self, timeout: Optional[float] = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def results(self) -> Tuple[ProviderCheck, ...]:
        return self._results
