"""Which results database a command uses.

In order: ``--db URL``; ``$EDGETUNE_DB``; ``[results] db`` in the edgetune.toml in use;
``.edgetune/results.db`` beside that edgetune.toml; else ``results.db`` in the user's data
directory (platformdirs: ``~/.local/share/edgetune`` on Linux). ``--no-record`` keeps a
command from writing at all.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Optional

if TYPE_CHECKING:  # pragma: no cover
    from edgetune.host.results.recording import StoreRecorder
    from edgetune.host.results.store import ResultsStore

DB_ENV = "EDGETUNE_DB"


@dataclass(frozen=True)
class ResultsLocation:
    url: str
    origin: str          # what chose it: --db, $EDGETUNE_DB, the inventory, the default


def as_url(text: str) -> str:
    """A database URL as given, or a plain file path as a SQLite URL (no SQLAlchemy needed)."""
    text = text.strip()
    if "://" in text:
        return text
    return f"sqlite:///{Path(os.path.expanduser(text)).resolve()}"


def resolve_location(flag: Optional[str], env: Mapping[str, str],
                     inventory_path: Optional[Path], inventory_db: Optional[str]) -> ResultsLocation:
    if flag:
        return ResultsLocation(as_url(flag), "--db")
    if env.get(DB_ENV):
        return ResultsLocation(as_url(env[DB_ENV]), f"${DB_ENV}")
    if inventory_db:
        return ResultsLocation(inventory_db, f"[results] db in {inventory_path}")
    if inventory_path is not None:
        beside = Path(inventory_path).resolve().parent / ".edgetune" / "results.db"
        return ResultsLocation(f"sqlite:///{beside}", f"beside {inventory_path}")
    import platformdirs
    data = Path(platformdirs.user_data_dir("edgetune", appauthor=False))
    return ResultsLocation(f"sqlite:///{data / 'results.db'}", "the user data directory")


def sqlite_file(url: str) -> Optional[Path]:
    """The file of a ``sqlite:///FILE`` URL (None for another database, memory or a ``file:``
    URI), read without SQLAlchemy: a command that only needs to know whether a results
    database exists does not pay for importing it."""
    for prefix in ("sqlite:///", "sqlite+pysqlite:///"):
        if url.startswith(prefix):
            rest = url[len(prefix):].split("?", 1)[0]
            if not rest or rest.startswith((":memory:", "file:")):
                return None
            return Path(rest)
    return None


def open_results_store(db: Optional[str], inventory: Optional[Path]) -> "ResultsStore":
    """The results store the flags (``--db``, ``--inventory``) and the environment name."""
    from edgetune.host.inventory import find_config, load_inventory
    from edgetune.host.results.store import ResultsStore

    inventory_path = None if db or os.environ.get(DB_ENV) else find_config(inventory)
    inventory_db = load_inventory(inventory_path).results_db if inventory_path else None
    return ResultsStore.open(resolve_location(db, os.environ, inventory_path, inventory_db).url)


@contextlib.contextmanager
def recording(args: Any, *, label: str = "", kind: Optional[str] = None,
              run_id: Optional[str] = None) -> Iterator[Optional["StoreRecorder"]]:
    """The recorder a board session hands its results to, on the store the flags name; None
    with ``--no-record``.

    The store opens on a background thread while the command connects to its board (the TLS
    handshake and the upload check take longer than opening a SQLite file and checking its
    schema), so recording costs a command only the write itself. A database that cannot be
    used still stops the command before it costs a measurement: the board session waits for
    the open (``StoreRecorder.ready``) before it submits a job, and the open's error is raised
    there. On the way out the store is closed, and an open that failed is reported even if
    nothing was submitted."""
    if getattr(args, "no_record", False):
        yield None
        return
    from concurrent.futures import ThreadPoolExecutor

    from edgetune.host.results.recording import StoreRecorder

    db, inventory = getattr(args, "db", None), getattr(args, "inventory", None)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgetune-results") as pool:
        opening = pool.submit(open_results_store, db, inventory)
        recorder = StoreRecorder(opening, label=label, kind=kind, run_id=run_id)
        failed = True
        try:
            yield recorder
            failed = False
        finally:
            error = opening.exception()          # waits for the open to end
            if error is None:
                opening.result().close()
            elif not failed:
                raise error
