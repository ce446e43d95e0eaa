"""``edgetune.toml``: the host's own identity and the boards it talks to.

    [host]
    ca = "pki/ca-cert.pem"            # paths are relative to this file
    cert = "pki/laptop-cert.pem"
    key = "pki/laptop-key.pem"
    passphrase_file = "pki/passphrase" # optional; else EDGETUNE_PASSPHRASE, else a prompt
    pki = "pki"                        # optional: the CA folder `edgetune deploy` issues from

    [devices.board1]
    address = "192.168.1.20:50051"
    tags = ["riscv", "lab"]
    attributes = { kind = "k1", room = "lab2" }   # optional free attributes (strings)
    server_name = "board1"             # optional: a name in the board certificate's SAN
    deploy = { ssh = "root@192.168.1.20", prefix = "/opt/edgetune" }   # written by
                                       # `edgetune deploy` (how it reached the board; no secret)

    [results]
    db = "results.db"                  # optional: a SQLite file (relative to this file) or a
                                       # URL such as "postgresql+psycopg://user@server/edgetune"

The file is found through ``--inventory FILE``, then ``$EDGETUNE_CONFIG``, then
``./edgetune.toml``, then ``~/.config/edgetune/edgetune.toml``. Unknown keys are an error
naming the key (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from edgetune.host.errors import BadInputError, NotFoundError

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.9/3.10
    import tomli as tomllib  # type: ignore[no-redef]

CONFIG_ENV = "EDGETUNE_CONFIG"
CONFIG_NAME = "edgetune.toml"
DEVICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

_HOST_KEYS = ("ca", "cert", "key", "passphrase_file", "pki")
_DEVICE_KEYS = ("address", "tags", "server_name", "attributes", "deploy")


@dataclass(frozen=True)
class HostIdentityFiles:
    """Where this PC's own certificate, key and CA live (absolute paths)."""

    ca: Path
    cert: Path
    key: Path
    passphrase_file: Optional[Path] = None
    pki: Optional[Path] = None            # the CA folder (ca-key.pem) deploy issues from


@dataclass(frozen=True)
class Device:
    name: str
    address: str                          # "host:port"
    tags: Tuple[str, ...] = ()
    server_name: Optional[str] = None     # overrides the name checked against the cert's SAN
    attributes: Tuple[Tuple[str, str], ...] = ()   # free (key, value) pairs, sorted by key
    deploy: Tuple[Tuple[str, str], ...] = ()       # [devices.NAME.deploy] (edgetune deploy)

    def attribute(self, key: str) -> Optional[str]:
        return dict(self.attributes).get(key)


@dataclass(frozen=True)
class Inventory:
    path: Optional[Path]
    host: Optional[HostIdentityFiles]
    devices: Tuple[Device, ...] = ()
    results_db: Optional[str] = None      # [results] db: a database URL (files made absolute)

    def device(self, name: str) -> Device:
        """The device called ``name``; NotFoundError listing the known ones otherwise."""
        for device in self.devices:
            if device.name == name:
                return device
        known = ", ".join(d.name for d in self.devices) or "none"
        where = f" in {self.path}" if self.path else ""
        raise NotFoundError(
            f"no device named {name!r}{where} (known devices: {known})",
            hint=f"add a [devices.{name}] section with address = \"IP:PORT\", "
                 "or pass --address HOST:PORT")


def find_config(explicit: Optional[Path] = None, *, env: Optional[Mapping[str, str]] = None,
                cwd: Optional[Path] = None, home: Optional[Path] = None) -> Optional[Path]:
    """The inventory file to use, or None when there is none.

    An explicit ``--inventory`` or ``$EDGETUNE_CONFIG`` that does not exist is an error (the user
    asked for that file); the two default locations are simply skipped when absent.
    """
    env = os.environ if env is None else env
    for given, origin in ((explicit, "--inventory"), (env.get(CONFIG_ENV), f"${CONFIG_ENV}")):
        if given:
            path = Path(os.path.expanduser(given))
            if not path.is_file():
                raise NotFoundError(f"inventory file {path} (from {origin}) does not exist",
                                    hint=f"create it or fix {origin}")
            return path
    cwd = Path.cwd() if cwd is None else cwd
    home = Path.home() if home is None else home
    for candidate in (cwd / CONFIG_NAME, home / ".config" / "edgetune" / CONFIG_NAME):
        if candidate.is_file():
            return candidate
    return None


def load_inventory(path: Path) -> Inventory:
    """Parse and check ``path``; BadInputError naming the key or value at fault."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise NotFoundError(f"inventory file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise BadInputError(f"{path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise BadInputError(f"{path} is not UTF-8 text (byte {exc.start})",
                            hint="TOML files are UTF-8: save it as UTF-8") from None
    except OSError as exc:
        raise BadInputError(f"cannot read inventory file {path}: {exc.strerror}") from None
    return parse_inventory(data, path)


def parse_inventory(data: Mapping[str, Any], path: Path) -> Inventory:
    _check_keys(data, ("host", "devices", "results"), path, "")
    base = path.resolve().parent
    host = None
    if "host" in data:
        section = _table(data["host"], path, "host")
        _check_keys(section, _HOST_KEYS, path, "host.")
        missing = [k for k in ("ca", "cert", "key") if k not in section]
        if missing:
            raise BadInputError(f"{path}: [host] lacks {', '.join(missing)}",
                                hint="set ca, cert and key to the files `edgetune certs` made")
        files: Dict[str, Optional[Path]] = {
            key: _path(section, key, base, path) for key in _HOST_KEYS}
        host = HostIdentityFiles(ca=files["ca"], cert=files["cert"], key=files["key"],  # type: ignore[arg-type]
                                 passphrase_file=files["passphrase_file"], pki=files["pki"])
    devices = []
    for name, section in _table(data.get("devices", {}), path, "devices").items():
        where = f"devices.{name}"
        if not DEVICE_NAME.match(name):
            raise BadInputError(f"{path}: [{where}]: a device name is letters, digits, '.', '_' "
                                "and '-' (at most 64 characters)")
        section = _table(section, path, where)
        _check_keys(section, _DEVICE_KEYS, path, where + ".")
        if "address" not in section:
            raise BadInputError(f"{path}: [{where}] lacks address = \"IP:PORT\"")
        address = _string(section, "address", path, where)
        try:
            split_address(address)
        except BadInputError as exc:
            raise BadInputError(f"{path}: {where}.address: {exc.message}") from None
        tags = section.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise BadInputError(f"{path}: {where}.tags must be a list of strings")
        server_name = _string(section, "server_name", path, where) if "server_name" in section else None
        attributes = section.get("attributes", {})
        if not isinstance(attributes, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in attributes.items()):
            raise BadInputError(f"{path}: {where}.attributes must be a table of strings",
                                hint='e.g. attributes = { kind = "atlas", room = "lab2" }')
        deploy = section.get("deploy", {})
        if not isinstance(deploy, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in deploy.items()):
            raise BadInputError(f"{path}: {where}.deploy must be a table of strings",
                                hint="`edgetune deploy` writes it; run it again to rewrite it")
        devices.append(Device(name=name, address=address, tags=tuple(tags),
                              server_name=server_name or None,
                              attributes=tuple(sorted(attributes.items())),
                              deploy=tuple(sorted(deploy.items()))))
    _check_unique_addresses(devices, path)
    return Inventory(path=path, host=host, devices=tuple(devices),
                     results_db=_results_db(data, base, path))


def _results_db(data: Mapping[str, Any], base: Path, path: Path) -> Optional[str]:
    if "results" not in data:
        return None
    section = _table(data["results"], path, "results")
    _check_keys(section, ("db",), path, "results.")
    if "db" not in section:
        return None
    value = _string(section, "db", path, "results").strip()
    if not value:
        raise BadInputError(f"{path}: results.db is empty",
                            hint='set it to a file ("results.db") or a database URL')
    if "://" in value:
        return value
    file = Path(os.path.expanduser(value))
    return f"sqlite:///{file if file.is_absolute() else base / file}"


def _check_unique_addresses(devices: List[Device], path: Path) -> None:
    seen: Dict[str, str] = {}
    for device in devices:
        other = seen.setdefault(device.address, device.name)
        if other != device.name:
            raise BadInputError(f"{path}: devices {other} and {device.name} have the same "
                                f"address {device.address}",
                                hint="each board is listed once; remove or correct one of them")


def split_address(address: str) -> Tuple[str, int]:
    """("host", port) from "host:port" or "[v6]:port"; BadInputError saying the expected form."""
    host, sep, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BadInputError(f"address {address!r} is not HOST:PORT (e.g. 192.168.1.20:50051)")
    return host, int(port)


def _check_keys(section: Mapping[str, Any], allowed: Tuple[str, ...], path: Path, prefix: str) -> None:
    for key in section:
        if key not in allowed:
            raise BadInputError(f"{path}: unknown key {prefix}{key}",
                                hint=f"the keys allowed here are: {', '.join(allowed)}")


def _table(value: Any, path: Path, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise BadInputError(f"{path}: [{where}] must be a table")
    return value


def _string(section: Mapping[str, Any], key: str, path: Path, where: str) -> str:
    value = section[key]
    if not isinstance(value, str):
        raise BadInputError(f"{path}: {where}.{key} must be a string")
    return value


def _path(section: Mapping[str, Any], key: str, base: Path, path: Path) -> Optional[Path]:
    if key not in section:
        return None
    value = Path(os.path.expanduser(_string(section, key, path, "host")))
    return value if value.is_absolute() else base / value
