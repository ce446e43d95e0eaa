"""`fleet status` starts fast: with no results database yet, it does not import SQLAlchemy
(about a sixth of the command's time on a loaded machine) just to learn there is no
quarantine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from edgetune.host.results.location import sqlite_file

PROGRAM = """
import sys, traceback

class Spy:                      # who imports SQLAlchemy, for the failure message
    def find_spec(self, name, path, target=None):
        if name == "sqlalchemy":
            traceback.print_stack(limit=30, file=sys.stderr)
        return None

sys.meta_path.insert(0, Spy())
from edgetune.host.cli import main
code = main(["fleet", "status", "--devices", "all", "--json", "--inventory", sys.argv[1]])
print("EXIT", code, "sqlalchemy" in sys.modules)
"""


def test_status_without_a_database_does_not_import_sqlalchemy(tmp_path: Path, pki) -> None:
    inventory = tmp_path / "edgetune.toml"
    inventory.write_text(f'[host]\nca = "{pki.ca_cert}"\ncert = "{pki.host.cert}"\n'
                         f'key = "{pki.host.key}"\n\n[devices.dead]\naddress = "127.0.0.1:9"\n')
    env_db = {"EDGETUNE_DB": ""}
    import os
    env = {**os.environ, **env_db, "EDGETUNE_PASSPHRASE": pki.passphrase.decode()}
    out = subprocess.run([sys.executable, "-c", PROGRAM, str(inventory)], capture_output=True,
                         text=True, timeout=120, env=env, cwd=tmp_path)
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("EXIT 5"), out.stdout + out.stderr        # the board is down
    assert last.endswith("False"), f"fleet status imported SQLAlchemy:\n{out.stderr[-3000:]}"
    rows = json.loads("\n".join(out.stdout.strip().splitlines()[:-1]))["devices"]
    assert rows[0]["state"] == "unreachable"
    assert not (tmp_path / ".edgetune").exists()                      # nothing created


def test_sqlite_file_reads_urls_as_sqlalchemy_does() -> None:
    from edgetune.host.results.engine import sqlite_path
    for url in ("sqlite:////abs/x.db", "sqlite:///rel.db", "sqlite://", "sqlite:///:memory:",
                "postgresql+psycopg://u@h/db", "sqlite:////a/b.db?mode=ro"):
        assert sqlite_file(url) == sqlite_path(url), url
