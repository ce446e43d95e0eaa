"""A fleet run reads a model once for all the boards it uploads it to (issue 12: "the host must
not hash or read the file 16 times"), over real agents in separate processes, each behind its
own slowed link (a TCP forwarder at 3 MiB/s) so that the uploads overlap as they do on real
links. One board kept part of the model from a cut upload and resumes from there. Counted two
ways: the bytes the shared reader read, and the bytes this process read with read()/pread()
(``/proc/self/io`` rchar: the hashing, the uploads' reads, and the small files the command
opens; the agents' processes and the sockets are not in it)."""

from __future__ import annotations

from typing import Any, Dict, Iterator, List

import pytest

from edgetune.host.client import AgentClient, ClientSettings
from edgetune.host.hashcache import file_sha256
from edgetune.protos.messages import BlobKind
from tests.host_fixtures import (DIGITS_MODEL, ONE_DIGIT, TcpProxy, big_model, run_cli,
                                settled_partial, start_agent, started_agents, write_inventory)

pytestmark = pytest.mark.slow           # four agents, 16 MiB each at 3 MiB/s

BOARDS = ("b0", "b1", "b2", "b3")
RATE = 3 * 1024 * 1024


def _rchar() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


@pytest.fixture(scope="module")
def boards(pki: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dict[str, Any]]:
    base = tmp_path_factory.mktemp("fleet-upload")
    with started_agents(BOARDS, lambda name: start_agent(pki, base / name)) as agents:
        proxies: Dict[str, TcpProxy] = {}
        try:
            proxies = {n: TcpProxy(agents[n].address, rate=RATE) for n in BOARDS}
            inventory = write_inventory(base / "edgetune.toml", pki.host,
                                        agents["b0"].passphrase_file,
                                        {name: (proxies[name].address, []) for name in BOARDS})
            yield {"agents": agents, "inventory": inventory, "base": base, "pki": pki,
                   "db": f"sqlite:///{base / 'results.db'}"}
        finally:
            for proxy in proxies.values():
                proxy.close()


def test_the_model_is_read_once_for_every_board_one_of_them_resuming(
        boards: Dict[str, Any], capsys: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgetune.host.fleet import fanout

    model = big_model(boards["base"] / "shared.onnx", 16)
    size = model.stat().st_size
    sha, _ = file_sha256(model)
    # b3 kept part of the model from an upload cut halfway (straight to its agent).
    agent = boards["agents"]["b3"]

    class Cut(Exception):
        pass

    def cut_halfway(done: int, total: int) -> None:
        if done >= total * 3 // 4:              # grpc holds a few MiB in flight: about half lands
            raise Cut()

    with AgentClient(agent.address, boards["pki"].host.identity,
                     settings=ClientSettings(upload_chunk_bytes=256 * 1024)) as client:
        with pytest.raises(Cut):
            client.upload(model, BlobKind.MODEL, progress=cut_halfway, sha256=sha)
        committed = settled_partial(client, BlobKind.MODEL, size, sha256=sha)
    assert 0 < committed < size

    readers: List[Any] = []
    offsets: List[int] = []
    real_init, real_chunks = fanout.SharedFile.__init__, fanout.SharedFile.chunks

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        readers.append(self)

    def chunks(self: Any, offset: int = 0) -> Any:
        offsets.append(offset)
        return real_chunks(self, offset)

    # A first run of another model: what the command imports and opens once (modules, the
    # results database) is not counted below.
    warm = run_cli(capsys, "fleet", "bench", str(DIGITS_MODEL), "--devices", "all", "--shape",
                   ONE_DIGIT, "--iterations", "3", "--inventory", str(boards["inventory"]),
                   "--db", boards["db"], "--json")
    assert warm.code == 0, warm.err
    monkeypatch.setattr(fanout.SharedFile, "__init__", init)
    monkeypatch.setattr(fanout.SharedFile, "chunks", chunks)
    before = _rchar()
    r = run_cli(capsys, "fleet", "bench", str(model), "--devices", "all", "--iterations", "3",
                "--warmup", "1", "--inventory", str(boards["inventory"]), "--db",
                boards["db"], "--json")
    read = _rchar() - before
    assert r.code == 0, r.err
    assert [row["state"] for row in r.json["rows"]] == ["done"] * len(BOARDS), r.json["rows"]
    for name in BOARDS:                             # every board holds the whole model
        with AgentClient(boards["agents"][name].address, boards["pki"].host.identity) as c:
            assert sha in {b.sha256 for b in c.list_blobs(BlobKind.MODEL)}
    assert sorted(offsets) == sorted([0, 0, 0, committed])      # b3 resumed where it was cut
    (reader,) = readers                             # one reader for the file, for all boards
    # Each byte read once: one pass, or two when b3 started first (from its offset) and the
    # others, reaching its chunks, moved over to its pass.
    assert reader.bytes_read == size and reader.passes <= 2, (reader.passes,
                                                              reader.bytes_read, size)
    assert reader.max_buffered_bytes <= reader.passes * 8 * 2 * 1024 * 1024  # the windows
    # The whole command read the model twice: hashed once, read once for four uploads (a
    # read per board would be 1 + 3 + the resumed part, about 4.5 times).
    assert read < 2.5 * size, (read, size)
