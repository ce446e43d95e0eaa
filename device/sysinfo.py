"""What the board is and the state that affects timing, read from /proc and /sys.

Everything degrades gracefully: a value the board does not expose is "" or 0. The parsers
take text (``parse_cpu_model``, ``parse_meminfo``, ...) so they are testable with samples
from other boards; the readers around them only open the files.
"""

from __future__ import annotations

import glob
import logging
import os
import platform
import socket
import sys
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

log = logging.getLogger("edgetune.agent.sysinfo")

_CPU_MODEL_KEYS = ("model name", "Model Name", "cpu model", "Hardware", "Model", "uarch", "isa",
                   "cpu")


@dataclass(frozen=True)
class SystemInfo:
    hostname: str
    os: str
    arch: str
    cpu_model: str
    cpu_cores: int
    memory_total_bytes: int
    memory_available_bytes: int
    python_version: str
    onnxruntime_version: str
    available_providers: Tuple[str, ...]


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def parse_cpu_model(cpuinfo: str) -> str:
    """The CPU's name from /proc/cpuinfo text: x86 "model name", ARM "Hardware"/"Model",
    RISC-V "model name"/"uarch"/"isa"; the first key found in that order of preference."""
    fields: Dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if sep and value and key not in fields:
            fields[key] = value
    for key in _CPU_MODEL_KEYS:
        if key in fields:
            return fields[key]
    return ""


def parse_meminfo(meminfo: str) -> Tuple[int, int]:
    """(MemTotal, MemAvailable) in bytes from /proc/meminfo text (MemFree+Cached if no
    MemAvailable, as on kernels before 3.14)."""
    values: Dict[str, int] = {}
    for line in meminfo.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            scale = 1024 if len(parts) > 1 and parts[1].lower() == "kb" else 1
            values[key.strip()] = int(parts[0]) * scale
    total = values.get("MemTotal", 0)
    available = values.get("MemAvailable",
                           values.get("MemFree", 0) + values.get("Cached", 0))
    return total, available


def parse_os_release(text: str) -> str:
    for line in text.splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip().strip("\"'")
    return ""


def parse_status_kb(status: str, key: str) -> int:
    """A "<key>: N kB" value of /proc/<pid>/status, in kB (0 if absent)."""
    for line in status.splitlines():
        if line.startswith(key + ":"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1])
    return 0


def os_string() -> str:
    """e.g. "Linux 6.1.0-18-arm64 (Debian GNU/Linux 12 (bookworm))"."""
    base = f"{platform.system()} {platform.release()}".strip()
    pretty = parse_os_release(_read("/etc/os-release") or _read("/usr/lib/os-release"))
    return f"{base} ({pretty})" if pretty else base


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 0


def onnxruntime_info() -> Tuple[str, Tuple[str, ...]]:
    """(version, available providers); ("", ()) when onnxruntime is not importable."""
    try:
        import onnxruntime as ort
    except Exception as exc:  # a broken vendor build must not take the agent down
        log.warning("onnxruntime is not importable: %s", exc)
        return "", ()
    return ort.__version__, tuple(ort.get_available_providers())


def system_info() -> SystemInfo:
    total, available = parse_meminfo(_read("/proc/meminfo"))
    version, providers = onnxruntime_info()
    return SystemInfo(
        hostname=socket.gethostname(), os=os_string(), arch=platform.machine(),
        cpu_model=parse_cpu_model(_read("/proc/cpuinfo")) or platform.processor(),
        cpu_cores=cpu_cores(), memory_total_bytes=total, memory_available_bytes=available,
        python_version=platform.python_version(), onnxruntime_version=version,
        available_providers=providers)


def memory_available_bytes() -> int:
    return parse_meminfo(_read("/proc/meminfo"))[1]


def cpu_freq_mhz(root: str = "/sys/devices/system/cpu") -> float:
    """Mean current frequency over the CPUs that expose cpufreq, MHz (0.0 if none do)."""
    values = []
    for path in glob.glob(os.path.join(root, "cpu[0-9]*", "cpufreq", "scaling_cur_freq")):
        text = _read(path).strip()
        if text.isdigit():
            values.append(int(text) / 1000.0)
    return sum(values) / len(values) if values else 0.0


def load_average() -> Tuple[float, ...]:
    """The 1, 5 and 15 minute load averages, () where the system does not say."""
    try:
        return tuple(round(v, 3) for v in os.getloadavg())
    except (AttributeError, OSError):
        return ()


def temperature_c(root: str = "/sys/class/thermal") -> float:
    """The hottest thermal zone in degrees C (0.0 if none is exposed)."""
    hottest = hottest_zone_c(root)
    return hottest if hottest is not None else 0.0


def hottest_zone_c(root: str = "/sys/class/thermal") -> Optional[float]:
    """The hottest thermal zone in degrees C; None when the board exposes none (no readable
    ``thermal_zone*/temp`` under ``root``)."""
    hottest: Optional[float] = None
    for path in glob.glob(os.path.join(root, "thermal_zone*", "temp")):
        text = _read(path).strip()
        try:
            value = int(text)
        except ValueError:
            continue
        celsius = value / 1000.0 if abs(value) >= 200 else float(value)  # some report degrees
        if -100.0 < celsius < 200.0 and (hottest is None or celsius > hottest):
            hottest = celsius
    return hottest


def rss_mb() -> float:
    """This process's current resident memory (VmRSS), MB."""
    return parse_status_kb(_read("/proc/self/status"), "VmRSS") / 1024.0


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM) since start or the last reset, MB."""
    kb = parse_status_kb(_read("/proc/self/status"), "VmHWM")
    if kb == 0:
        try:
            import resource
            maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            kb = maxrss // 1024 if sys.platform == "darwin" else maxrss
        except Exception:  # pragma: no cover
            return 0.0
    return kb / 1024.0


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write "5" to /proc/self/clear_refs).
    False when the kernel does not allow it; the peak then counts from process start."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError as exc:
        log.debug("cannot reset the peak RSS (%s); peak memory counts from agent start", exc)
        return False
