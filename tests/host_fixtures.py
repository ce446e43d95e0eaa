"""Fixtures and helpers shared by the tests/test_host_*.py modules (this module holds no tests).

``local_agent`` is module-scoped: each test module that imports it gets one real agent
subprocess (``python -m edgetune.device serve``, mutual TLS, port 0) for all its tests.
"""

from __future__ import annotations

import contextlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import pytest

from edgetune.host.cli import main
from edgetune.host.localagent import AgentFiles, LocalAgent

SAMPLES = Path(__file__).resolve().parent.parent / "host" / "samples"
DIGITS_MODEL = SAMPLES / "digits_cnn.onnx"
DIGITS_TEST = SAMPLES / "digits_test.npz"
ONE_DIGIT = "input=1x1x8x8"           # the digits model has a dynamic batch dimension


def write_passphrase_file(path: Path, passphrase: bytes) -> Path:
    path.write_bytes(passphrase + b"\n")
    path.chmod(0o600)
    return path


@dataclass
class RunningAgent:
    address: str
    agent: LocalAgent
    store: Path
    passphrase_file: Path
    pki: Any                                # tests.pki_fixtures.PkiFixture

    def conn(self, host: Optional[Any] = None, ca: Optional[Path] = None) -> List[str]:
        """CLI flags reaching this agent as ``host`` (default: the good "laptop" identity)."""
        host = host or self.pki.host
        return ["--address", self.address, "--ca", str(ca or self.pki.ca_cert),
                "--cert", str(host.cert), "--key", str(host.key),
                "--passphrase-file", str(self.passphrase_file)]


def start_agent(pki: Any, workdir: Path, *, cert: Optional[Path] = None,
                key: Optional[Path] = None, ca: Optional[Path] = None,
                extra_args: Sequence[str] = ()) -> RunningAgent:
    workdir.mkdir(parents=True, exist_ok=True)
    passphrase_file = write_passphrase_file(workdir / "passphrase", pki.passphrase)
    files = AgentFiles(ca=ca or pki.ca_cert, cert=cert or pki.device.cert, key=key or pki.device.key,
                       passphrase_file=passphrase_file)
    agent = LocalAgent(ready_timeout_s=60)
    address = agent.start(files, workdir / "store", extra_args)
    return RunningAgent(address=address, agent=agent, store=workdir / "store",
                        passphrase_file=passphrase_file, pki=pki)


@pytest.fixture(scope="module")
def local_agent(pki: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    running = start_agent(pki, tmp_path_factory.mktemp("agent"))
    try:
        yield running
    finally:
        running.agent.stop()


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def json(self) -> Any:
        return json.loads(self.out)


def run_cli(capsys: pytest.CaptureFixture, *argv: str) -> CliResult:
    """``edgetune ARGV`` in-process; its exit status, stdout and stderr."""
    capsys.readouterr()
    code = main(list(argv))
    captured = capsys.readouterr()
    return CliResult(code=code, out=captured.out, err=captured.err)


# ---------------------------------------------------------------------- network helpers

class TcpProxy:
    """A TCP forwarder to an agent on loopback. ``rate`` (bytes/s, 0 = unlimited) slows the
    PC-to-board direction (a slow link); ``cut()`` drops every live connection and
    ``refusing = True`` closes new ones at once (a network glitch)."""

    def __init__(self, target: str, rate: float = 0.0) -> None:
        import socket
        import threading

        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.rate = rate
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.sockets: List[Any] = []
        self.lock = threading.Lock()
        self.refusing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                inbound, _ = self.listener.accept()
            except OSError:
                return
            if self.refusing:
                inbound.close()
                continue
            outbound = socket.create_connection(self.target)
            with self.lock:
                self.sockets += [inbound, outbound]
            for a, b, rate in ((inbound, outbound, self.rate), (outbound, inbound, 0.0)):
                threading.Thread(target=self._pump, args=(a, b, rate), daemon=True).start()

    @staticmethod
    def _pump(src: Any, dst: Any, rate: float) -> None:
        import socket
        import time

        try:
            while data := src.recv(65536):
                dst.sendall(data)
                if rate:
                    time.sleep(len(data) / rate)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        import socket

        with self.lock:
            sockets, self.sockets = self.sockets, []
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self.listener.close()
        self.cut()


def retry_busy(action: Any, attempts: int = 20) -> Any:
    """Run ``action``; while the agent says an upload of that blob is still in progress (a
    cancelled one may still be closing), wait a little and try again."""
    import time

    from edgetune.host.errors import AgentError

    for _ in range(attempts):
        try:
            return action()
        except AgentError as exc:
            if "in progress" not in exc.message:
                raise
            time.sleep(0.1)
    return action()


def settled_partial(client: Any, kind: Any, size: int, *, sha256: str = "",
                    upload_id: str = "") -> int:
    """The committed bytes of a cancelled upload (by hash or by upload id) once the agent has
    closed it: the same value three times in a row, 0.2 s apart (on a loaded machine the agent
    can take a while to drain the writes that were in flight when the client went away)."""
    import time

    seen: List[int] = []
    status = None
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        status = client.upload_status(kind, sha256, size, upload_id)
        seen = (seen + [status.committed_bytes])[-3:] if status.state == "partial" else []
        if len(seen) == 3 and len(set(seen)) == 1:
            return seen[0]
        time.sleep(0.2)
    raise AssertionError(f"the partial upload never settled (last {status})")


def write_inventory(path: Path, host: Any, passphrase_file: Any,
                    devices: Mapping[str, Tuple[str, Sequence[str]]]) -> Path:
    """An edgetune.toml with ``[host]`` (``host``: a PKI's host files) and one
    ``[devices.NAME]`` per entry of ``devices``: NAME -> (address, tags)."""
    lines = [f'[host]\nca = "{host.ca}"\ncert = "{host.cert}"\nkey = "{host.key}"\n'
             f'passphrase_file = "{passphrase_file}"\n']
    for name, (address, tags) in devices.items():
        tag_line = f"tags = {json.dumps([str(t) for t in tags])}\n" if tags else ""
        lines.append(f'[devices.{name}]\naddress = "{address}"\n{tag_line}')
    path.write_text("\n".join(lines))
    return path


def big_model(path: Path, mib: int, seed: Optional[int] = None) -> Path:
    """A valid single-file ONNX model of about ``mib`` MiB (an Identity of a constant)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    floats = mib * (1 << 20) // 4
    weights = np.random.default_rng(mib if seed is None else seed).standard_normal(
        floats).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["w"], ["y"], name="identity")], "big", [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [floats])],
        [numpy_helper.from_array(weights, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                ir_version=9), path)
    return path


@contextlib.contextmanager
def started_agents(names: Sequence[str], start: Callable[[str], RunningAgent]
                   ) -> Iterator[Dict[str, RunningAgent]]:
    """``start(name)`` for every name at once (in threads: each agent takes a second or two to
    serve); every agent started is stopped at the end, also when another failed to start
    (whose error is raised)."""
    agents: Dict[str, RunningAgent] = {}
    errors: List[BaseException] = []

    def one(name: str) -> None:
        try:
            agents[name] = start(name)
        except BaseException as exc:  # noqa: BLE001 - raised below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        if errors:
            raise errors[0]
        yield agents
    finally:
        for running in agents.values():
            running.agent.stop()
