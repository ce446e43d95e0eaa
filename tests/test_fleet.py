"""edgetune fleet: selectors, editing edgetune.toml with its comments kept, and the status of
several real agents in separate processes at once, with faults: a closed port, a port that
accepts TCP but never speaks TLS, and a board whose certificate comes from another CA."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator, List

import pytest

from edgetune.host.errors import BadInputError, NotFoundError, UsageError
from edgetune.host.fleet.inventory_edit import add_device, remove_device
from edgetune.host.fleet.selectors import Selector, select
from edgetune.host.inventory import Device, Inventory, load_inventory
from tests.host_fixtures import run_cli, start_agent, write_inventory

INVENTORY = '''# the lab's boards, kept by hand
[host]
ca = "pki/ca-cert.pem"   # our CA
cert = "pki/laptop-cert.pem"
key = "pki/laptop-key.pem"

# Atlas boards in room 2
[devices.atlas-1]
address = "10.0.0.1:50051"
tags = ["atlas", "lab2"]
attributes = { kind = "atlas200", room = "2" }

[devices.k1]
address = "10.0.0.2:50051"   # the RISC-V one
tags = ["riscv", "lab2"]

[results]
db = "results.db"
'''


def inventory(*devices: Device) -> Inventory:
    return Inventory(path=Path("edgetune.toml"), host=None, devices=devices)


BOARDS = inventory(
    Device("atlas-1", "10.0.0.1:1", ("atlas", "lab2"), attributes=(("kind", "atlas200"),)),
    Device("atlas-2", "10.0.0.2:1", ("atlas", "lab3")),
    Device("k1", "10.0.0.3:1", ("riscv", "lab2")),
)


def names(selector: str, reported: Any = None) -> List[str]:
    chosen, _ = select(BOARDS, Selector.parse(selector), reported)
    return [d.name for d in chosen]


def test_selectors_by_name_glob_tag_and_attribute() -> None:
    assert names("all") == ["atlas-1", "atlas-2", "k1"]
    assert names("k1,atlas-2") == ["atlas-2", "k1"]                     # inventory order
    assert names("atlas-*") == ["atlas-1", "atlas-2"]
    assert names("tag:lab2") == ["atlas-1", "k1"]
    assert names("tag:lab2,tag:atlas") == ["atlas-1", "atlas-2", "k1"]  # ',' any of
    assert names("tag:lab2+tag:atlas") == ["atlas-1"]                   # '+' all of
    assert names("kind=atlas*") == ["atlas-1"]
    reported = {"atlas-1": {"arch": "aarch64"}, "atlas-2": {"arch": "aarch64"},
                "k1": {"arch": "riscv64"}}
    assert names("arch=aarch64", reported) == ["atlas-1", "atlas-2"]
    assert Selector.parse("arch=aarch64+tag:lab2").reported_keys(BOARDS) == {"arch"}
    assert Selector.parse("kind=x").reported_keys(BOARDS) == set()


def test_a_selector_that_matches_nothing_says_what_exists() -> None:
    with pytest.raises(BadInputError, match="matches no board") as err:
        names("tag:jetson")
    text = str(err.value)
    assert "tags: atlas, lab2, lab3, riscv" in text and "kind=atlas200" in text
    assert "atlas-1, atlas-2, k1" in text
    for bad in ("", "tag:", "a,,b", "=x", "arch="):
        with pytest.raises(UsageError):
            Selector.parse(bad)
    skipped = select(BOARDS, Selector.parse("tag:atlas"),
                     skip=lambda d: "quarantined" if d.name == "atlas-2" else None)
    assert [d.name for d in skipped[0]] == ["atlas-1"]
    assert [(d.name, why) for d, why in skipped[1]] == [("atlas-2", "quarantined")]


def test_fleet_add_and_rm_keep_comments_and_layout(tmp_path: Path) -> None:
    path = tmp_path / "edgetune.toml"
    path.write_text(INVENTORY)
    add_device(path, "r329", "10.0.0.3:50051", tags=["r329", "lab2"],
               attributes={"kind": "r329"})
    text = path.read_text()
    assert text.startswith(INVENTORY.split("[results]")[0])       # everything before kept
    assert "# the RISC-V one" in text and "# our CA" in text and 'db = "results.db"' in text
    added = load_inventory(path).device("r329")
    assert added.tags == ("r329", "lab2") and added.attribute("kind") == "r329"
    assert load_inventory(path).results_db is not None
    assert remove_device(path, "k1") == "10.0.0.2:50051"
    text = path.read_text()
    assert "[devices.k1]" not in text and "# Atlas boards in room 2" in text
    assert [d.name for d in load_inventory(path).devices] == ["atlas-1", "r329"]


def test_fleet_add_refuses_duplicates_and_bad_values_and_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "edgetune.toml"
    path.write_text(INVENTORY)
    for call, message in (
            (lambda: add_device(path, "k1", "10.0.0.9:1"), "already lists a device 'k1'"),
            (lambda: add_device(path, "new", "10.0.0.2:50051"), "already lists 10.0.0.2:50051"),
            (lambda: add_device(path, "bad name", "10.0.0.9:1"), "not a device name"),
            (lambda: add_device(path, "new", "no-port"), "not HOST:PORT")):
        with pytest.raises((UsageError, BadInputError), match=message):
            call()
        assert path.read_text() == INVENTORY
    with pytest.raises(NotFoundError, match="known devices: atlas-1, k1"):
        remove_device(path, "nope")
    broken = tmp_path / "broken.toml"
    broken.write_text("[devices\n")
    with pytest.raises(BadInputError, match="not valid TOML"):
        add_device(broken, "x", "10.0.0.9:1")
    assert broken.read_text() == "[devices\n"


def test_fleet_add_creates_a_new_inventory(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "new" / "edgetune.toml"
    r = run_cli(capsys, "fleet", "add", "b1", "127.0.0.1:5000", "--tag", "x", "--attr",
                "kind=k1", "--inventory", str(path))
    assert r.code == 0, r.err
    device = load_inventory(path).device("b1")
    assert device.tags == ("x",) and device.attribute("kind") == "k1"
    assert run_cli(capsys, "fleet", "add", "b2", "127.0.0.1:5001", "--attr", "oops",
                   "--inventory", str(path)).code == 2
    r = run_cli(capsys, "fleet", "rm", "b1", "--inventory", str(path))
    assert r.code == 0 and load_inventory(path).devices == ()


def test_inventory_with_two_boards_at_one_address_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "edgetune.toml"
    path.write_text('[devices.a]\naddress = "10.0.0.1:1"\n[devices.b]\naddress = "10.0.0.1:1"\n')
    with pytest.raises(BadInputError, match="devices a and b have the same address"):
        load_inventory(path)


# ---------------------------------------------------------------------- status

class SilentPort:
    """A port that accepts TCP connections and never says a word (a hung board)."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.held: List[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.server.close()
        for conn in self.held:
            conn.close()


def _closed_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def fleet(pki: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    base = tmp_path_factory.mktemp("fleet")
    rogue_dir = base / "rogue-pki"
    rogue_dir.mkdir()
    rogue = pki.foreign_ca.issue_device("rogue", ips=["127.0.0.1"])
    rogue_cert, rogue_key = rogue.write(rogue_dir, pki.passphrase)
    import datetime as dt
    soon_dir = base / "soon-pki"
    soon_dir.mkdir()
    now = dt.datetime.now(dt.timezone.utc)
    soon = pki.ca.issue_device("soon", ips=["127.0.0.1"], not_before=now - dt.timedelta(days=1),
                               not_after=now + dt.timedelta(days=10))
    soon_cert, soon_key = soon.write(soon_dir, pki.passphrase)
    agents: List[Any] = []
    silent = SilentPort()
    try:           # whatever fails to start, what did start is stopped
        agents.extend(start_agent(pki, base / f"agent{n}") for n in range(3))
        # A board set up with another PKI altogether: its CA is not ours.
        agents.append(start_agent(pki, base / "rogue", cert=rogue_cert, key=rogue_key,
                                  ca=pki.dir / "foreign" / "ca-cert.pem"))
        # A board whose certificate expires in 10 days.
        agents.append(start_agent(pki, base / "soon", cert=soon_cert, key=soon_key))
        devices = {f"good{n}": (agents[n].address, ["good", "even" if n % 2 == 0 else "odd"])
                   for n in range(3)}
        devices.update(rogue=(agents[3].address, ["bad"]), soon=(agents[4].address, ["soon"]),
                       silent=(f"127.0.0.1:{silent.port}", ["bad"]),
                       closed=(f"127.0.0.1:{_closed_port()}", ["bad"]))
        path = write_inventory(base / "edgetune.toml", pki.host, agents[0].passphrase_file,
                               devices)
        yield path
    finally:
        silent.close()
        for agent in agents:
            agent.agent.stop()


def test_status_of_every_board_at_once(fleet: Path, capsys: Any) -> None:
    started = time.monotonic()
    r = run_cli(capsys, "fleet", "status", "--inventory", str(fleet), "--timeout", "2", "--json")
    elapsed = time.monotonic() - started
    assert r.code == 5, r.err                         # not every board is serving
    rows = {d["name"]: d for d in r.json["devices"]}
    assert list(rows) == ["good0", "good1", "good2", "rogue", "soon", "silent", "closed"]
    for n in range(3):
        good = rows[f"good{n}"]
        assert good["state"] == "serving" and good["agent_name"] == "board1"
        assert good["arch"] and good["onnxruntime"] and good["queue_length"] == 0
    assert rows["rogue"]["state"] == "refused" and "foreign CA" in rows["rogue"]["reason"]
    assert rows["soon"]["state"] == "serving" and 9 < rows["soon"]["cert_days_left"] < 10.1
    assert "expires in 10 days" in rows["soon"]["cert_warning"]
    assert rows["good0"]["cert_days_left"] > 300 and rows["good0"]["cert_warning"] is None
    assert rows["closed"]["cert_days_left"] is None
    assert rows["silent"]["state"] == "unreachable"
    assert rows["closed"]["state"] == "unreachable"
    assert elapsed < 12          # asked at once: one silent board's deadline, not six in a row


def test_status_of_a_selection_and_on_reported_attributes(fleet: Path, capsys: Any) -> None:
    import platform
    r = run_cli(capsys, "fleet", "status", "--inventory", str(fleet), "--devices",
                "tag:good+tag:even", "--json")
    assert r.code == 0, r.err
    assert [d["name"] for d in r.json["devices"]] == ["good0", "good2"]
    r = run_cli(capsys, "fleet", "status", "--inventory", str(fleet), "--timeout", "1",
                "--devices", f"arch={platform.machine()}", "--json")
    assert r.code == 0, r.err
    assert [d["name"] for d in r.json["devices"]] == ["good0", "good1", "good2", "soon"]
    soon = run_cli(capsys, "fleet", "status", "--inventory", str(fleet), "--devices", "soon")
    assert soon.code == 0 and "warning: soon: its certificate expires in" in soon.err
    table = run_cli(capsys, "fleet", "status", "--inventory", str(fleet), "--devices", "good1")
    assert table.code == 0 and "serving" in table.out and "good1" in table.out
    none = run_cli(capsys, "fleet", "status", "--inventory", str(fleet), "--devices", "tag:x")
    assert none.code == 3 and "tags: bad, even, good, odd, soon" in none.err
