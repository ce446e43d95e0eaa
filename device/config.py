"""The agent's settings: one frozen ``AgentConfig`` built once from agent.toml and the flags.

agent.toml (every key optional; flags override it; relative paths are relative to the file)::

    listen = "0.0.0.0:50051"          # HOST:PORT, port 0 picks a free port
    ca = "pki/ca-cert.pem"
    cert = "pki/board1-cert.pem"
    key = "pki/board1-key.pem"
    passphrase_file = "pki/passphrase" # else EDGETUNE_PASSPHRASE, else a prompt on a TTY
    store = "/var/lib/edgetune"        # models, datasets and jobs.db
    ready_file = "/run/edgetune/ready" # written with the bound host:port once SERVING
    allowed_clients = ["laptop"]       # certificate names allowed to call; empty: any
    log_level = "info"
    sysfs_root = "/sys"                # where CPU frequency and thermal zones are read
    allow_readable_key = false         # start although the key file is readable by others

    [limits]                           # see device.limits.Limits for every key
    max_model_mb = 512
    queue_capacity = 16

    [runners.npu]                      # a runner plug-in (docs/agent.md, "Runner plug-ins")
    command = ["/opt/vendor/bin/edgetune-npu-runner", "--device", "0"]  # argv, no shell
    formats = ["om"]                   # model formats it takes ("onnx" allowed)
    timeout_s = 600                    # a job's whole run of it; then its process group is killed

Unknown keys are an error that names the key. Sizes in ``[limits]`` may be given in bytes
(``max_model_bytes``) or MiB (``max_model_mb``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - boards with Python 3.9/3.10
    import tomli as tomllib

from edgetune.device.limits import Limits
from edgetune.exitcodes import ExitStatus

DEFAULT_PORT = 50051
DEFAULT_LISTEN = f"0.0.0.0:{DEFAULT_PORT}"
DEFAULT_STORE = "edgetune-store"
LOG_LEVELS = ("debug", "info", "warning", "error")

_TOP_KEYS = ("listen", "ca", "cert", "key", "passphrase_file", "store", "ready_file",
             "allowed_clients", "log_level", "limits", "sysfs_root", "allow_readable_key",
             "runners")
_PATH_KEYS = ("ca", "cert", "key", "passphrase_file", "store", "ready_file", "sysfs_root")
DEFAULT_SYSFS_ROOT = "/sys"
_MIB = 1 << 20
_RUNNER_KEYS = ("command", "formats", "timeout_s")
DEFAULT_RUNNER_TIMEOUT_S = 600.0
RUNNER_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
MODEL_FORMAT = re.compile(r"^[a-z0-9_]{1,16}$")     # "onnx", "om", "nb", "aipu", ...


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key or file and the fix."""

    exit_status: ExitStatus = ExitStatus.BAD_INPUT


class ConfigNotFoundError(ConfigError):
    """The config file does not exist (exits as a missing certificate file does)."""

    exit_status = ExitStatus.NOT_FOUND


@dataclass(frozen=True)
class RunnerConfig:
    """A runner plug-in of the board (``[runners.NAME]``): a program the agent runs, never
    through a shell, with the protocol of ``edgetune.device.plugins``."""

    name: str
    command: Tuple[str, ...]               # argv; command[0] an absolute path, executable
    formats: Tuple[str, ...]               # model formats it takes
    timeout_s: float = DEFAULT_RUNNER_TIMEOUT_S

    def describe(self) -> Dict[str, Any]:
        return {"command": list(self.command), "formats": list(self.formats),
                "timeout_s": self.timeout_s}


@dataclass(frozen=True)
class AgentConfig:
    ca: Path
    cert: Path
    key: Path
    listen: str = DEFAULT_LISTEN
    passphrase_file: Optional[Path] = None
    store: Path = Path(DEFAULT_STORE)
    ready_file: Optional[Path] = None
    allowed_clients: Tuple[str, ...] = ()
    limits: Limits = field(default_factory=Limits)
    log_level: str = "info"
    sysfs_root: Path = Path(DEFAULT_SYSFS_ROOT)  # class/thermal, devices/system/cpu below it
    allow_readable_key: bool = False       # serve with a key file others may read (warned)
    source: Optional[Path] = None          # the agent.toml this came from, if any
    runners: Tuple[RunnerConfig, ...] = ()  # [runners.NAME] tables, by name

    @property
    def host(self) -> str:
        return split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return split_listen(self.listen)[1]

    def describe(self) -> Dict[str, Any]:
        """A JSON-friendly summary (what ``edgetune-agent check`` prints)."""
        return {
            "config": str(self.source) if self.source else None,
            "listen": self.listen, "ca": str(self.ca), "cert": str(self.cert),
            "key": str(self.key),
            "passphrase_file": str(self.passphrase_file) if self.passphrase_file else None,
            "store": str(self.store),
            "ready_file": str(self.ready_file) if self.ready_file else None,
            "allowed_clients": list(self.allowed_clients) or "any client certificate of the CA",
            "limits": dataclasses.asdict(self.limits), "log_level": self.log_level,
            "sysfs_root": str(self.sysfs_root), "allow_readable_key": self.allow_readable_key,
            "runners": {r.name: r.describe() for r in self.runners},
        }


def split_listen(listen: str) -> Tuple[str, int]:
    """``"HOST:PORT"`` (or ``"[::1]:PORT"``) -> (host, port); ConfigError when malformed."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(f"listen address {listen!r} is not HOST:PORT "
                          "(e.g. 0.0.0.0:50051, or 127.0.0.1:0 for a free port)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port_text)


def read_toml(path: Path) -> Dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigNotFoundError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start}); TOML files "
                          "are UTF-8: save it as UTF-8") from None


def limits_from_table(table: Mapping[str, Any], where: str = "[limits]") -> Limits:
    """Build ``Limits`` from a TOML table; ``*_mb`` keys are MiB spellings of ``*_bytes`` ones."""
    known = {f.name: f for f in dataclasses.fields(Limits)}
    values: Dict[str, Any] = {}
    for key, value in table.items():
        name, scale = key, 1
        if key not in known and key.endswith("_mb") and key[:-3] + "_bytes" in known:
            name, scale = key[:-3] + "_bytes", _MIB
        if name not in known:
            raise ConfigError(f"unknown key {key!r} in {where}; known keys: "
                              + ", ".join(sorted(known)))
        if name in values:
            raise ConfigError(f"{where} sets {name} twice (as bytes and as MiB); keep one")
        default = getattr(Limits(), name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} {key} must be a number (got {value!r})")
        if not math.isfinite(value):            # TOML's inf and nan, or 1e486
            raise ConfigError(f"{where} {key} must be a finite number (got {value!r})")
        if value <= 0:
            raise ConfigError(f"{where} {key} must be positive (got {value!r})")
        value = value * scale
        if isinstance(default, int):
            if value != int(value):
                raise ConfigError(f"{where} {key} must be a whole number (got {value!r})")
            value = int(value)
        else:
            value = float(value)
        values[name] = value
    try:
        return Limits(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def runners_from_table(table: Any, where: str) -> Tuple[RunnerConfig, ...]:
    """``[runners.NAME]`` tables -> RunnerConfig, sorted by name. Each program must exist and
    be executable now: a runner the board cannot start is a config error, not a failed job."""
    if not isinstance(table, dict):
        raise ConfigError(f"'runners' in {where} must be tables ([runners.NAME])")
    runners = []
    for name, entry in sorted(table.items()):
        at = f"[runners.{name}] of {where}"
        if not RUNNER_NAME.match(name):
            raise ConfigError(f"runner name {name!r} in {where} must be 1-32 lowercase letters, "
                              "digits, '-' or '_', starting with a letter or digit")
        if not isinstance(entry, dict):
            raise ConfigError(f"runners.{name} in {where} must be a table ([runners.{name}])")
        unknown = sorted(set(entry) - set(_RUNNER_KEYS))
        if unknown:
            raise ConfigError(f"unknown key {unknown[0]!r} in {at}; known keys: "
                              + ", ".join(_RUNNER_KEYS))
        command = entry.get("command")
        if (not isinstance(command, list) or not command
                or not all(isinstance(a, str) and a for a in command)):
            raise ConfigError(f"command in {at} must be a list of non-empty strings, the program "
                              'and its arguments (no shell), e.g. ["/opt/npu/bin/run", "--fast"]')
        program = command[0]
        if not os.path.isabs(program):
            raise ConfigError(f"command in {at} starts with {program!r}; give the program's "
                              "absolute path (no PATH lookup, no shell)")
        if not os.path.isfile(program) or not os.access(program, os.X_OK):
            raise ConfigError(f"the program of {at}, {program}, does not exist or is not "
                              f"executable; install it or fix the path (chmod +x {program})")
        formats = entry.get("formats")
        if (not isinstance(formats, list) or not formats
                or not all(isinstance(f, str) and MODEL_FORMAT.match(f) for f in formats)):
            raise ConfigError(f"formats in {at} must be a non-empty list of model formats "
                              '(lowercase, e.g. ["om"] or ["onnx"])')
        timeout = entry.get("timeout_s", DEFAULT_RUNNER_TIMEOUT_S)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
                or not math.isfinite(timeout) or timeout <= 0:
            raise ConfigError(f"timeout_s in {at} must be a positive, finite number of seconds "
                              f"(got {timeout!r})")
        runners.append(RunnerConfig(name=name, command=tuple(command),
                                    formats=tuple(dict.fromkeys(formats)),
                                    timeout_s=float(timeout)))
    return tuple(runners)


def build_config(config_file: Optional[Path] = None,
                 overrides: Optional[Mapping[str, Any]] = None) -> AgentConfig:
    """The one place settings are merged: the TOML file, then the flags that were given.

    ``overrides`` holds flag values (None means "not given"): listen, ca, cert, key,
    passphrase_file, store, ready_file, allowed_clients (a sequence), log_level, sysfs_root. Flag paths
    are taken as given (relative to the working directory); file paths relative to the file.
    """
    values: Dict[str, Any] = {}
    limits = Limits()
    if config_file is not None:
        config_file = Path(config_file)
        data = read_toml(config_file)
        base = config_file.resolve().parent
        for key, value in data.items():
            if key not in _TOP_KEYS:
                raise ConfigError(f"unknown key {key!r} in {config_file}; known keys: "
                                  + ", ".join(_TOP_KEYS))
            if key == "limits":
                if not isinstance(value, dict):
                    raise ConfigError(f"'limits' in {config_file} must be a table ([limits])")
                limits = limits_from_table(value, f"[limits] of {config_file}")
            elif key == "runners":
                values[key] = runners_from_table(value, str(config_file))
            elif key in _PATH_KEYS:
                if not isinstance(value, str) or not value:
                    raise ConfigError(f"{key} in {config_file} must be a non-empty path string")
                values[key] = base / Path(os.path.expanduser(value))
            elif key == "allowed_clients":
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise ConfigError(f"allowed_clients in {config_file} must be a list of "
                                      'certificate names, e.g. ["laptop"]')
                values[key] = tuple(value)
            elif key == "allow_readable_key":
                if not isinstance(value, bool):
                    raise ConfigError(f"allow_readable_key in {config_file} must be true or false")
                values[key] = value
            else:
                if not isinstance(value, str):
                    raise ConfigError(f"{key} in {config_file} must be a string")
                values[key] = value
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key in _PATH_KEYS:
            values[key] = Path(os.path.expanduser(value))
        elif key == "allowed_clients":
            if value:
                values[key] = tuple(value)
        elif key in ("listen", "log_level"):
            values[key] = value
        else:
            raise ConfigError(f"unknown setting {key!r}")
    missing = [k for k in ("ca", "cert", "key") if k not in values]
    if missing:
        raise ConfigError("missing " + ", ".join(missing) + ": pass --ca/--cert/--key (the "
                          "CA certificate, this board's certificate and its key) or set them "
                          "in agent.toml")
    values.setdefault("listen", DEFAULT_LISTEN)
    split_listen(values["listen"])
    level = values.get("log_level", "info").lower()
    if level not in LOG_LEVELS:
        raise ConfigError(f"log_level {level!r} is not one of {', '.join(LOG_LEVELS)}")
    values["log_level"] = level
    for name in values.get("allowed_clients", ()):
        if not name.strip():
            raise ConfigError("allowed_clients holds an empty name")
    return AgentConfig(limits=limits, source=config_file, **values)
