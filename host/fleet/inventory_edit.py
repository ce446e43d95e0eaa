"""``edgetune fleet add`` / ``fleet rm``: edit edgetune.toml in place with tomlkit, keeping the
user's comments, order and layout. The edited text is parsed and checked as an inventory
before it replaces the file (atomically), so a bad edit never lands.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Mapping, Optional, Sequence

from edgetune.host.errors import BadInputError, NotFoundError, UsageError
from edgetune.host.inventory import DEVICE_NAME, parse_inventory, split_address

NEW_FILE = "# edgetune.toml: this PC's identity ([host]) and the boards ([devices.NAME]).\n"


def _load(path: Path):  # type: ignore[no-untyped-def]
    import tomlkit

    if not path.exists():
        return tomlkit.parse(NEW_FILE)
    try:
        return tomlkit.parse(path.read_text(encoding="utf-8"))
    except Exception as exc:  # tomlkit's parse errors have no common public base
        raise BadInputError(f"{path} is not valid TOML: {exc}",
                            hint="fix the file by hand first; nothing was changed") from None


def _save(path: Path, doc) -> None:  # type: ignore[no-untyped-def]
    import tomlkit
    try:
        import tomllib
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    text = tomlkit.dumps(doc)
    parse_inventory(tomllib.loads(text), path)          # the result must be a valid inventory
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def add_device(path: Path, name: str, address: str, *, tags: Sequence[str] = (),
               attributes: Optional[Mapping[str, str]] = None,
               server_name: Optional[str] = None) -> None:
    import tomlkit

    if not DEVICE_NAME.match(name):
        raise UsageError(f"{name!r} is not a device name: letters, digits, '.', '_' and '-' "
                         "(at most 64 characters)")
    split_address(address)
    doc = _load(path)
    devices = doc.get("devices")
    if devices is None:
        devices = tomlkit.table(is_super_table=True)
        doc.add("devices", devices)
    if name in devices:
        raise UsageError(f"{path} already lists a device {name!r} "
                         f"(at {devices[name].get('address')})",
                         hint=f"remove it first with `edgetune fleet rm {name}`, or pick "
                              "another name")
    for other, table in devices.items():
        if table.get("address") == address:
            raise UsageError(f"{path} already lists {address} as {other!r}",
                             hint="each board is listed once")
    table = tomlkit.table()
    table.add("address", address)
    if tags:
        array = tomlkit.array()
        array.extend(list(dict.fromkeys(tags)))
        table.add("tags", array)
    if server_name:
        table.add("server_name", server_name)
    if attributes:
        inline = tomlkit.inline_table()
        inline.update(dict(sorted(attributes.items())))
        table.add("attributes", inline)
    table.add(tomlkit.nl())
    devices[name] = table
    _save(path, doc)


def remove_device(path: Path, name: str) -> str:
    """Remove ``[devices.NAME]``; return the address it had."""
    if not path.exists():
        raise NotFoundError(f"inventory file {path} does not exist")
    doc = _load(path)
    devices = doc.get("devices") or {}
    if name not in devices:
        known = ", ".join(devices.keys()) or "none"
        raise NotFoundError(f"{path} lists no device {name!r} (known devices: {known})")
    address = str(devices[name].get("address", ""))
    del devices[name]
    _save(path, doc)
    return address
