"""Run an edgetune agent on this PC as a subprocess, reached exactly as a board would be.

The demo, the tests and the bench scripts use it; ``host`` never imports ``device``: the agent
is started as ``python -m edgetune.device serve ...`` with a ready file, over real mutual TLS.

    files = AgentFiles.from_dir(pki_dir, "board1", passphrase_file)
    with LocalAgent() as agent:
        address = agent.start(files, store_dir)
        ...                        # connect an AgentClient to ``address``
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from edgetune.host.errors import AgentError, UsageError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AgentFiles:
    """The agent's side of the PKI: its CA bundle, its certificate and encrypted key, and the
    file holding the key's passphrase."""

    ca: Path
    cert: Path
    key: Path
    passphrase_file: Path

    @classmethod
    def from_dir(cls, directory: Path, name: str, passphrase_file: Path) -> "AgentFiles":
        """``DIR/ca-cert.pem``, ``DIR/NAME-cert.pem``, ``DIR/NAME-key.pem`` (``edgetune certs``)."""
        directory = Path(directory)
        return cls(ca=directory / "ca-cert.pem", cert=directory / f"{name}-cert.pem",
                   key=directory / f"{name}-key.pem", passphrase_file=Path(passphrase_file))


class LocalAgent:
    """One agent subprocess. ``start`` returns its ``host:port`` once it is SERVING; ``stop``
    (or leaving the ``with`` block) sends SIGTERM, waits, then kills."""

    def __init__(self, *, python: str = sys.executable, ready_timeout_s: float = 60.0,
                 stop_timeout_s: float = 10.0, listen: str = "127.0.0.1:0") -> None:
        self.python = python
        self.ready_timeout_s = ready_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.listen = listen
        self.address: Optional[str] = None
        self.process: Optional[subprocess.Popen] = None
        self._workdir: Optional[tempfile.TemporaryDirectory] = None
        self.log_path: Optional[Path] = None

    def __enter__(self) -> "LocalAgent":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def command(self, files: AgentFiles, store: Path, ready_file: Path,
                extra_args: Sequence[str] = ()) -> List[str]:
        return [self.python, "-m", "edgetune.device", "serve", "--listen", self.listen,
                "--ca", str(files.ca), "--cert", str(files.cert), "--key", str(files.key),
                "--passphrase-file", str(files.passphrase_file), "--store", str(store),
                "--ready-file", str(ready_file), *extra_args]

    def start(self, files: AgentFiles, store: Path, extra_args: Sequence[str] = ()) -> str:
        """Start the agent and wait until it serves; its ``host:port``. AgentError with the
        agent's own log when it exits or does not get ready within ``ready_timeout_s``."""
        if self.process is not None:
            raise UsageError("this LocalAgent runs already; stop() it first")
        for path in (files.ca, files.cert, files.key, files.passphrase_file):
            if not Path(path).is_file():
                raise UsageError(f"the agent needs {path}, which does not exist")
        self._workdir = tempfile.TemporaryDirectory(prefix="edgetune-agent-")
        work = Path(self._workdir.name)
        ready = work / "ready"
        self.log_path = work / "agent.log"
        Path(store).mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.pop("EDGETUNE_PASSPHRASE", None)      # the passphrase file is the one source
        env.setdefault("PYTHONUNBUFFERED", "1")
        with open(self.log_path, "wb") as log_file:
            self.process = subprocess.Popen(
                self.command(files, Path(store), ready, extra_args), stdin=subprocess.DEVNULL,
                stdout=log_file, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            text = ready.read_text().strip() if ready.is_file() else ""
            if text:
                self.address = text
                log.info("local agent (pid %d) serves at %s", self.process.pid, text)
                return text
            code = self.process.poll()
            if code is not None:
                output = self.output()
                self._cleanup()
                raise AgentError(f"the local agent exited with status {code} before it was ready:"
                                 f"\n{output}")
            if time.monotonic() > deadline:
                output = self.output()
                self.stop()
                raise AgentError(f"the local agent was not ready within {self.ready_timeout_s:g} s:"
                                 f"\n{output}")
            time.sleep(0.05)

    def output(self, last_lines: int = 40) -> str:
        """The tail of the agent's combined stdout/stderr."""
        if self.log_path is None or not self.log_path.is_file():
            return ""
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-last_lines:])

    def kill(self) -> None:
        """SIGKILL, as a crash would (the ready-made way to test recovery)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> Optional[int]:
        """SIGTERM, wait up to ``stop_timeout_s``, then SIGKILL; the exit status (None if it
        never ran)."""
        process, self.process = self.process, None
        code = None
        if process is not None:
            if process.poll() is None:
                process.terminate()             # SIGTERM: the agent shuts down gracefully
                try:
                    process.wait(self.stop_timeout_s)
                except subprocess.TimeoutExpired:
                    log.warning("the local agent did not stop within %g s; killing it",
                                self.stop_timeout_s)
                    process.kill()
                    process.wait()
            code = process.returncode
        self._cleanup()
        return code

    def _cleanup(self) -> None:
        self.process = None
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None
            self.log_path = None
