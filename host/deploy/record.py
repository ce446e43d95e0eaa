"""``[devices.NAME]`` in edgetune.toml, as deploy leaves it: the agent's address, tags, and a
``deploy`` table with how the board was reached (SSH target, identity file path, known_hosts
file, prefix, listen address, service user). No secret is ever written. tomlkit keeps the
file's comments and layout; an entry that would not change is not rewritten.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

from edgetune.host.deploy.settings import RECORD_KEYS
from edgetune.host.errors import UsageError
from edgetune.host.fleet.inventory_edit import _load, _save
from edgetune.host.inventory import DEVICE_NAME, HostIdentityFiles, split_address


def upsert_device(path: Path, name: str, address: str, *, tags: Sequence[str],
                  deploy: Mapping[str, str], host: Optional[HostIdentityFiles] = None) -> bool:
    """Add or update ``[devices.NAME]`` (and ``[host]`` when the file has none and ``host``
    is given). Returns whether the file changed."""
    import tomlkit

    if not DEVICE_NAME.match(name):
        raise UsageError(f"{name!r} is not a device name: letters, digits, '.', '_' and '-' "
                         "(at most 64 characters)")
    split_address(address)
    unknown = set(deploy) - set(RECORD_KEYS)
    if unknown:
        raise ValueError(f"not recorded: {sorted(unknown)}")
    want = {k: str(v) for k, v in deploy.items() if v}
    if host is None or _has_host(path):
        if _already(path, name, address, tags, want):
            return False          # the common case of a re-run: no tomlkit round trip
    doc = _load(path)
    changed = False
    if host is not None and "host" not in doc:
        table = tomlkit.table()
        for key in ("ca", "cert", "key", "passphrase_file", "pki"):
            value = getattr(host, key)
            if value is not None:
                table.add(key, str(Path(value).resolve()))
        doc.add("host", table)
        changed = True
    devices = doc.get("devices")
    if devices is None:
        devices = tomlkit.table(is_super_table=True)
        doc.add("devices", devices)
    for other, table in devices.items():
        if other != name and table.get("address") == address:
            raise UsageError(f"{path} already lists {address} as {other!r}",
                             hint=f"deploy it under that name, or `edgetune fleet rm {other}`")
    want_deploy: Dict[str, str] = dict(sorted(want.items()))
    if name in devices:
        table = devices[name]
        if table.get("address") != address:
            table["address"] = address
            changed = True
        merged = list(dict.fromkeys([*(table.get("tags") or []), *tags]))
        if list(table.get("tags") or []) != merged:
            array = tomlkit.array()
            array.extend(merged)
            table["tags"] = array
            changed = True
        if dict(table.get("deploy") or {}) != want_deploy:
            inline = tomlkit.inline_table()
            inline.update(want_deploy)
            table["deploy"] = inline
            changed = True
    else:
        table = tomlkit.table()
        table.add("address", address)
        if tags:
            array = tomlkit.array()
            array.extend(list(dict.fromkeys(tags)))
            table.add("tags", array)
        inline = tomlkit.inline_table()
        inline.update(want_deploy)
        table.add("deploy", inline)
        table.add(tomlkit.nl())
        devices[name] = table
        changed = True
    if changed:
        _save(path, doc)
    return changed


def _read(path: Path) -> Optional[Mapping[str, Any]]:
    import tomllib

    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError):
        return None


def _has_host(path: Path) -> bool:
    data = _read(path)
    return data is not None and "host" in data


def _already(path: Path, name: str, address: str, tags: Sequence[str],
             deploy: Mapping[str, str]) -> bool:
    """Whether ``[devices.NAME]`` already says all this (read with tomllib, quick)."""
    data = _read(path) or {}
    table = (data.get("devices") or {}).get(name)
    if not isinstance(table, dict) or table.get("address") != address:
        return False
    have_tags = list(table.get("tags") or [])
    return all(t in have_tags for t in tags) and dict(table.get("deploy") or {}) == dict(deploy)
