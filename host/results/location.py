"""Which results database a command uses.

In order: ``--db URL``; ``$EDGETUNE_DB``; ``[results] db`` in the edgetune.toml in use;
``.edgetune/results.db`` beside that edgetune.toml; else ``results.db`` in the user's data
directory (platformdirs: ``~/.local/share/edgetune`` on Linux). ``--no-record`` keeps a
command from writing at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

DB_ENV = "EDGETUNE_DB"


@dataclass(frozen=True)
class ResultsLocation:
    url: str
    origin: str          # what chose it: --db, $EDGETUNE_DB, the inventory, the default


def resolve_location(flag: Optional[str], env: Mapping[str, str],
                     inventory_path: Optional[Path], inventory_db: Optional[str]) -> ResultsLocation:
    if flag:
        return ResultsLocation(_as_url(flag), "--db")
    if env.get(DB_ENV):
        return ResultsLocation(_as_url(env[DB_ENV]), f"${DB_ENV}")
    if inventory_db:
        return ResultsLocation(inventory_db, f"[results] db in {inventory_path}")
    if inventory_path is not None:
        beside = Path(inventory_path).resolve().parent / ".edgetune" / "results.db"
        return ResultsLocation(f"sqlite:///{beside}", f"beside {inventory_path}")
    import platformdirs
    data = Path(platformdirs.user_data_dir("edgetune", appauthor=False))
    return ResultsLocation(f"sqlite:///{data / 'results.db'}", "the user data directory")


def _as_url(text: str) -> str:
    """A URL as given, or a plain file path as a SQLite URL."""
    text = text.strip()
    if "://" in text:
        return text
    return f"sqlite:///{Path(text).expanduser().resolve()}"
