"""TLS and file hygiene of the agent, checked from outside (issue 16, section 5).

- TLS 1.2 and 1.3 only: the ``openssl s_client`` binary offering only TLS 1.0 or 1.1 is
  refused by the agent, while the very same client command completes a TLS 1.0/1.1 handshake
  with an ``openssl s_server`` that allows it (so the refusal is the agent's, not the client's
  own security level).
- No client-initiated renegotiation: ``s_client``'s ``R`` command on a TLS 1.2 connection makes
  the agent drop the connection, while an ``s_server`` that allows renegotiation completes it.
  (TLS 1.3 has no renegotiation at all.)
- Store and database files 0600 in 0700 folders after uploads, jobs and a lease.
- Store paths are not followed through planted symbolic links.
- A name or label is never a path.
- The agent refuses a key file others can read, unless allow_readable_key (with a warning).
"""

from __future__ import annotations

import hashlib
import os
import select
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator, List, Sequence

import pytest

from edgetune.device.jobdb import JobDatabase
from edgetune.device.leases import LeaseBook
from edgetune.device.limits import Limits
from edgetune.device.safefs import SymlinkRefused
from edgetune.device.store import BlobStore, UploadState
from edgetune.host.client import AgentClient
from edgetune.host.errors import AgentError
from edgetune.protos.messages import BenchmarkSpec, BlobKind
from tests.agent_fixtures import mlp_model
from tests.host_fixtures import DIGITS_MODEL, RunningAgent, start_agent

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="the openssl binary is not installed")
LOW_SECLEVEL = "DEFAULT@SECLEVEL=0"     # lets OpenSSL 3 offer TLS 1.0/1.1 at all


@pytest.fixture(scope="module")
def agent(pki: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    running = start_agent(pki, tmp_path_factory.mktemp("hygiene"))
    try:
        yield running
    finally:
        running.agent.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def s_client(address: str, *args: str, stdin_script: Sequence[Any] = (), timeout: float = 20.0,
             pki: Any = None, passphrase_file: Path = None) -> subprocess.CompletedProcess:
    """Run ``openssl s_client`` against ``address``; ``stdin_script``: strings to type and
    numbers of seconds to wait, in order (stdin closes at the end)."""
    argv = [str(OPENSSL), "s_client", "-connect", address, *args]
    if pki is not None:
        argv += ["-CAfile", str(pki.ca_cert), "-cert", str(pki.host.cert), "-key",
                 str(pki.host.key), "-pass", f"file:{passphrase_file}"]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdin is not None
    try:
        for step in stdin_script:
            if isinstance(step, str):
                try:
                    proc.stdin.write(step.encode())
                    proc.stdin.flush()
                except BrokenPipeError:
                    break
            else:
                time.sleep(step)
        try:
            proc.stdin.close()
        except BrokenPipeError:
            pass
        proc.stdin = None                   # closed: communicate() only reads
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(argv, proc.returncode, out.decode("latin-1"),
                                       err.decode("latin-1"))


class SServer:
    """``openssl s_server`` with the board's certificate: the control that shows the client
    can do what the agent refuses."""

    def __init__(self, pki: Any, passphrase_file: Path, *args: str) -> None:
        self.port = _free_port()
        self.proc = subprocess.Popen(
            [str(OPENSSL), "s_server", "-accept", f"127.0.0.1:{self.port}", "-cert",
             str(pki.device.cert), "-key", str(pki.device.key), "-pass",
             f"file:{passphrase_file}", "-naccept", "1", *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()      # raw reads: a buffered reader hides lines from select
        deadline = time.monotonic() + 30
        self.head = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                data = os.read(fd, 4096)
                self.head += data
                if b"ACCEPT" in self.head:          # listening (a probe would use up -naccept)
                    return
                if not data:
                    break
        self.close()
        raise AssertionError(f"openssl s_server did not listen: {self.head!r}")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> str:
        """What s_server printed; it ends by itself after its one connection (-naccept 1)
        and prints its counters then, so it is given time before being killed."""
        try:
            out, _ = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate(timeout=10)
        return (self.head + out).decode("latin-1")


def _handshake_done(result: subprocess.CompletedProcess) -> bool:
    return "Cipher is (NONE)" not in result.stdout and "Cipher is " in result.stdout


# ----------------------------------------------------------------- TLS versions

@needs_openssl
@pytest.mark.parametrize("flag,name", [("-tls1", "TLSv1"), ("-tls1_1", "TLSv1.1")])
def test_tls_10_and_11_are_refused(agent: RunningAgent, pki: Any, flag: str, name: str) -> None:
    server = SServer(pki, agent.passphrase_file, flag, "-cipher", LOW_SECLEVEL)
    try:
        control = s_client(server.address, flag, "-cipher", LOW_SECLEVEL, stdin_script=[1.0])
    finally:
        server.close()
    assert _handshake_done(control), f"the client cannot do {name} at all:\n{control.stdout}"
    assert f"Protocol  : {name}" in control.stdout

    refused = s_client(agent.address, flag, "-cipher", LOW_SECLEVEL, "-alpn", "h2",
                       stdin_script=[1.0], pki=pki, passphrase_file=agent.passphrase_file)
    assert not _handshake_done(refused), refused.stdout
    assert refused.returncode != 0


@needs_openssl
@pytest.mark.parametrize("flag,name", [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")])
def test_tls_12_and_13_are_served(agent: RunningAgent, pki: Any, flag: str, name: str) -> None:
    ok = s_client(agent.address, flag, "-alpn", "h2", stdin_script=[1.0], pki=pki,
                  passphrase_file=agent.passphrase_file)
    assert _handshake_done(ok), ok.stdout + ok.stderr
    assert f"New, {name}" in ok.stdout


@needs_openssl
def test_client_initiated_renegotiation_is_refused(agent: RunningAgent, pki: Any) -> None:
    # Control: an s_server that allows renegotiation completes the client's "R".
    server = SServer(pki, agent.passphrase_file, "-tls1_2", "-client_renegotiation")
    try:
        control = s_client(server.address, "-tls1_2", "-CAfile", str(pki.ca_cert),
                           stdin_script=[1.0, "R\n", 1.5, "after\n", 1.0])
    finally:
        served = server.close()
    assert "RENEGOTIATING" in control.stderr
    assert "after" in served and "1 server renegotiates" in served, served

    # Without "R" the agent keeps the connection until the client closes it (exit 0) ...
    quiet = s_client(agent.address, "-tls1_2", "-alpn", "h2", stdin_script=[2.5], pki=pki,
                     passphrase_file=agent.passphrase_file)
    assert _handshake_done(quiet) and quiet.returncode == 0, quiet.stderr
    # ... and "R" makes it drop the connection.
    reneg = s_client(agent.address, "-tls1_2", "-alpn", "h2", stdin_script=[1.0, "R\n", 2.5],
                     pki=pki, passphrase_file=agent.passphrase_file)
    assert _handshake_done(reneg)
    assert "RENEGOTIATING" in reneg.stderr
    assert reneg.returncode != 0, reneg.stderr
    assert "unexpected eof" in reneg.stderr or "alert" in reneg.stderr, reneg.stderr


# ----------------------------------------------------------------- file modes

def _client(agent: RunningAgent) -> AgentClient:
    return AgentClient(agent.address, agent.pki.host.identity)


def _modes(root: Path) -> List[str]:
    """Every entry under ``root`` whose mode is not private, as "path mode"."""
    bad = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            mode = stat.S_IMODE(os.lstat(os.path.join(dirpath, name)).st_mode)
            if mode != 0o700:
                bad.append(f"{name}/ {mode:04o}")
        for name in filenames:
            mode = stat.S_IMODE(os.lstat(os.path.join(dirpath, name)).st_mode)
            if mode != 0o600:
                bad.append(f"{name} {mode:04o}")
    if stat.S_IMODE(os.stat(root).st_mode) != 0o700:
        bad.append(f"{root.name}/ (the store)")
    return bad


def test_store_and_database_are_private(agent: RunningAgent, tmp_path: Path) -> None:
    with _client(agent) as client:
        sha = client.upload(DIGITS_MODEL, BlobKind.MODEL, name="digits").blob.sha256
        job = client.run(BenchmarkSpec(model_sha256=sha, iterations=3, warmup=1))
        assert job.state.value == "succeeded", job.error
        lease = client.acquire_lease(30)
        client.release_lease(lease.lease_id)
    names = {p.name for p in agent.store.rglob("*")}
    assert {"jobs.db", "leases.json", "models", "partial"} <= names
    assert _modes(agent.store) == []


def test_an_old_store_is_made_private_and_new_files_are_0600(tmp_path: Path) -> None:
    root = tmp_path / "store"
    (root / "models").mkdir(parents=True, mode=0o755)
    os.chmod(root, 0o755)
    os.chmod(root / "models", 0o755)
    old = root / "models" / ("a" * 64 + ".json")
    old.write_text("{}")
    os.chmod(old, 0o644)
    old_umask = os.umask(0o022)             # the test proves explicit modes, not the umask
    try:
        store = BlobStore(root, Limits())
        assert _modes(root) == []
        data = mlp_model()
        writer = store.begin_upload(BlobKind.MODEL, hashlib.sha256(data).hexdigest(), len(data))
        writer.write(data[:100])
        assert _modes(root) == []
        writer.write(data[100:])
        writer.commit()
        JobDatabase(root / "jobs.db").close()
        LeaseBook(root / "leases.json", 5, 60).acquire("laptop", 30)
    finally:
        os.umask(old_umask)
    assert {"jobs.db", "leases.json"} <= set(os.listdir(root))
    assert _modes(root) == []


# ----------------------------------------------------------------- symbolic links

@pytest.fixture
def outside(tmp_path: Path) -> Path:
    target = tmp_path / "outside.txt"
    target.write_text("not the agent's\n")
    return target


def test_a_planted_partial_link_is_not_written_through(tmp_path: Path, outside: Path) -> None:
    store = BlobStore(tmp_path / "store", Limits())
    data = mlp_model()
    sha = hashlib.sha256(data).hexdigest()
    (tmp_path / "store" / "partial" / f"model-{sha}.part").symlink_to(outside)
    with pytest.raises(SymlinkRefused):
        store.begin_upload(BlobKind.MODEL, sha, len(data))
    assert outside.read_text() == "not the agent's\n"
    # Control: without the link the same upload works.
    os.unlink(tmp_path / "store" / "partial" / f"model-{sha}.part")
    writer = store.begin_upload(BlobKind.MODEL, sha, len(data))
    writer.write(data)
    assert writer.commit().sha256 == sha


def test_a_planted_blob_link_is_not_served(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "store", Limits())
    data = mlp_model()
    sha = hashlib.sha256(data).hexdigest()
    real = tmp_path / "real.onnx"
    real.write_bytes(data)                  # even content with the right hash
    (tmp_path / "store" / "models" / f"{sha}.onnx").symlink_to(real)
    assert store.status(BlobKind.MODEL, sha) == (UploadState.ABSENT, 0)
    assert store.list() == []
    with pytest.raises(Exception) as err:
        store.path(BlobKind.MODEL, sha)
    assert "not stored" in str(err.value)
    os.unlink(tmp_path / "store" / "models" / f"{sha}.onnx")
    shutil.copy(real, tmp_path / "store" / "models" / f"{sha}.onnx")   # control: a real file
    assert store.path(BlobKind.MODEL, sha).name == f"{sha}.onnx"


def test_side_files_and_state_files_are_not_followed(tmp_path: Path, outside: Path) -> None:
    root = tmp_path / "store"
    BlobStore(root, Limits())
    (root / "jobs.db").symlink_to(outside)
    with pytest.raises(SymlinkRefused):
        JobDatabase(root / "jobs.db")
    (root / "leases.json").symlink_to(outside)
    book = LeaseBook(root / "leases.json", 5, 60)       # unreadable through the link: free
    assert book.current() == ("", 0.0)
    book.acquire("laptop", 30)              # written beside, then renamed over the link
    assert outside.read_text() == "not the agent's\n"
    assert not (root / "leases.json").is_symlink()
    (root / "leases.json.tmp").symlink_to(outside)
    book.acquire("laptop", 30)              # a planted temporary file is refused, not followed
    assert outside.read_text() == "not the agent's\n"


def test_a_store_folder_that_is_a_link_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "store"
    BlobStore(root, Limits())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.rmtree(root / "models")
    (root / "models").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(SymlinkRefused):
        BlobStore(root, Limits())
    linked_root = tmp_path / "linked-store"
    linked_root.symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(SymlinkRefused):
        BlobStore(linked_root, Limits())


# ----------------------------------------------------------------- names are labels

HOSTILE_NAMES = ["../../../escaped", "/srv/escaped-abs", "models/../../escaped",
                 "..", "a\x00b", "escaped\n../x", "C:\\escaped"]


def test_a_name_or_label_never_becomes_a_path(agent: RunningAgent, tmp_path: Path) -> None:
    before = set(agent.store.rglob("*"))
    with _client(agent) as client:
        for i, name in enumerate(HOSTILE_NAMES):
            model = tmp_path / f"m{i}.onnx"
            model.write_bytes(mlp_model(hidden=8 + i))
            info = client.upload(model, BlobKind.MODEL, name=name).blob
            job, _ = client.submit(BenchmarkSpec(model_sha256=info.sha256, iterations=1,
                                                 warmup=0), label=name)
            client.wait(job.id)
    created = set(agent.store.rglob("*")) - before
    for path in created:
        rel = path.relative_to(agent.store)
        assert rel.parts[0] in ("models", "partial", "datasets") or rel.name.startswith("jobs.db"), rel
        stem = rel.name.split(".")[0]
        assert rel.parts[0] not in ("models", "datasets") or len(stem) == 64, rel
    for probe in (agent.store.parent / "escaped", Path("/srv/escaped-abs"),
                  agent.store / "escaped", agent.store.parent.parent / "escaped"):
        assert not probe.exists(), probe


# ----------------------------------------------------------------- the key file

def _serve_argv(pki: Any, key: Path, passphrase_file: Path, store: Path, *extra: str) -> List[str]:
    return [sys.executable, "-m", "edgetune.device", "check", "--listen", "127.0.0.1:0",
            "--ca", str(pki.ca_cert), "--cert", str(pki.device.cert), "--key", str(key),
            "--passphrase-file", str(passphrase_file), "--store", str(store), *extra]


def test_a_key_file_readable_by_others_is_refused(agent: RunningAgent, pki: Any,
                                                  tmp_path: Path) -> None:
    key = tmp_path / "board1-key.pem"
    shutil.copy(pki.device.key, key)
    os.chmod(key, 0o644)
    env = dict(os.environ)
    env.pop("EDGETUNE_PASSPHRASE", None)
    refused = subprocess.run(_serve_argv(pki, key, agent.passphrase_file, tmp_path / "s"),
                             capture_output=True, text=True, env=env, timeout=120)
    assert refused.returncode == 3, refused.stderr
    assert "mode 0644" in refused.stderr and "chmod 600" in refused.stderr
    assert "allow_readable_key" in refused.stderr

    config = tmp_path / "agent.toml"
    config.write_text("allow_readable_key = true\n")
    allowed = subprocess.run(_serve_argv(pki, key, agent.passphrase_file, tmp_path / "s",
                                         "--config", str(config)),
                             capture_output=True, text=True, env=env, timeout=120)
    assert allowed.returncode == 0, allowed.stderr
    assert "serving anyway" in allowed.stderr and "mode 0644" in allowed.stderr

    os.chmod(key, 0o600)                    # control: a private key file starts quietly
    quiet = subprocess.run(_serve_argv(pki, key, agent.passphrase_file, tmp_path / "s"),
                           capture_output=True, text=True, env=env, timeout=120)
    assert quiet.returncode == 0 and "mode 0" not in quiet.stderr, quiet.stderr


def test_an_agent_serves_with_a_readable_key_only_when_told(pki: Any, tmp_path: Path) -> None:
    key = tmp_path / "board1-key.pem"
    shutil.copy(pki.device.key, key)
    os.chmod(key, 0o640)
    with pytest.raises(AgentError) as err:
        start_agent(pki, tmp_path / "refused", key=key)
    assert "mode 0640" in str(err.value)
    config = tmp_path / "agent.toml"
    config.write_text("allow_readable_key = true\n")
    running = start_agent(pki, tmp_path / "allowed", key=key,
                          extra_args=["--config", str(config)])
    try:
        with _client(running) as client:
            assert client.info().agent_name == "board1"
        assert "serving anyway" in running.agent.output(200)
    finally:
        running.agent.stop()
