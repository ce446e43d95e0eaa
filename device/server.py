"""The agent's grpc.aio server: mutual TLS, our service, health and reflection, lifecycle.

Start-up order (``AgentServer.start``):

0. remove a ready file left by an earlier run (a crash cannot remove it): until step 4, a
   script waiting for the file must not read an old address;
1. build the server with the auth interceptor; health says NOT_SERVING;
2. bind the secure port (there is no insecure port, and no switch for one) and start;
3. open the store and the job queue (recovering jobs a previous run left), load onnxruntime,
   then move every object alive by now out of the garbage collector's sight (``gc.freeze``:
   the runner's full ``gc.collect()`` before each timed loop then scans only what jobs made);
4. health says SERVING, then the ready file gets the bound ``host:port`` (atomically).

``stop`` reverses it: NOT_SERVING, the ready file goes, the running job is interrupted, the
server drains calls for ``grace`` seconds, the frozen objects are handed back to the collector.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import logging
import os
import platform
import signal
import socket
import sqlite3
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from edgetune.certs import Identity
from edgetune.certs.grpc_creds import identity_server_credentials
from edgetune.device.auth import AuthInterceptor
from edgetune.device.config import AgentConfig
from edgetune.device.jobs import JobQueue
from edgetune.device.leases import FILE_NAME as LEASES_FILE
from edgetune.device.leases import LeaseBook
from edgetune.device.servicer import SERVICE_NAME, AgentServicer, add_to_server
from edgetune.device.store import BlobStore
from edgetune.device.streams import StreamLimiter

log = logging.getLogger("edgetune.agent.server")

MiB = 1 << 20
SERVER_OPTIONS = (
    ("grpc.max_receive_message_length", 8 * MiB),      # upload chunks are up to 4 MiB
    ("grpc.so_reuseport", 0),                          # a port in use is an error, not shared
    ("grpc.keepalive_time_ms", 60_000),                # find dead watchers within minutes
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),  # clients may ping every 10 s
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.server_handshake_timeout_ms", 20_000),      # a TCP peer that never finishes TLS
)
SERVICE_NAMES = (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME)


class ServerError(Exception):
    """The agent cannot start; the message says why and what to do."""


def agent_version() -> str:
    from edgetune import __version__
    return __version__


def board_info() -> Dict[str, Any]:
    """The GetInfo fields that describe the board (``edgetune.device.sysinfo`` reads them). Imports
    onnxruntime, so the first call takes a moment."""
    import dataclasses

    from edgetune.device import sysinfo
    from edgetune.device import providers
    from edgetune.protos.messages import FEATURES
    info = dataclasses.asdict(sysinfo.system_info())
    info["available_providers"] = tuple(info["available_providers"])
    info["agent_version"] = agent_version()
    info["features"] = FEATURES
    info["onnxruntime_distribution"] = providers.onnxruntime_distribution()
    info["onnxruntime_build_info"] = providers.build_info()
    return info


def _memory_available() -> Dict[str, Any]:
    from edgetune.device import sysinfo
    return {"memory_available_bytes": sysinfo.memory_available_bytes()}


def write_ready_file(path: Path, address: str) -> None:
    """Write ``address`` to ``path`` atomically (a reader never sees a partial file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=str(path.parent), prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(address + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def remove_stale_ready_file(path: Path) -> None:
    """Delete the ready file an earlier run left behind (``kill -9``, power loss); ServerError
    if it exists and cannot be removed (scripts would read its old address)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ServerError(f"cannot remove the old ready file {path}: {exc.strerror or exc}; "
                          "remove it, or pass a --ready-file in a writable folder") from None
    log.info("removed the ready file %s left by an earlier run", path)


def freeze_long_lived_objects() -> int:
    """Collect, then freeze what survives (``gc.freeze``, Python >= 3.7): the modules,
    onnxruntime, grpc, the store and the queue live as long as the agent, and a full
    ``gc.collect()`` (the runner makes one before each timed loop) would otherwise scan them
    all every time (bench/request_overhead.py: the median overhead of a request outside the
    measured work fell from 14-16 ms to 2.3-3.1 ms). Returns the number of objects frozen
    (0 without ``gc.freeze``)."""
    if not hasattr(gc, "freeze"):  # pragma: no cover - Python < 3.7, or an interpreter without it
        return 0
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.debug("froze %d long-lived objects out of the garbage collector's scans", frozen)
    return frozen


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class AgentServer:
    """One agent: ``await start()`` returns the bound port, ``await stop()`` ends it."""

    def __init__(self, config: AgentConfig, identity: Identity, *,
                 info: Callable[[], Dict[str, Any]] = board_info,
                 refresh: Callable[[], Dict[str, Any]] = _memory_available) -> None:
        self.config = config
        self.identity = identity
        self.port = 0
        self.address = ""
        self._info = info
        self._refresh = refresh
        self._io = concurrent.futures.ThreadPoolExecutor(max_workers=4,
                                                         thread_name_prefix="edgetune-io")
        self._server: Optional[grpc.aio.Server] = None
        self._health: Any = None
        self._servicer = AgentServicer(config.limits, identity.common_name, io_executor=self._io,
                                       cert_not_after_unix=_not_after_unix(identity.cert_pem),
                                       runners=config.runners)
        self.queue: Optional[JobQueue] = None
        self.store: Optional[BlobStore] = None
        self._stopped = False
        self._froze = False

    async def start(self) -> int:
        config = self.config
        if config.ready_file is not None:
            remove_stale_ready_file(config.ready_file)
        self._health = health.aio.HealthServicer()      # made on the loop it will serve
        limits = config.limits
        interceptors = [AuthInterceptor(config.allowed_clients),
                        StreamLimiter(limits.max_streams_per_client, limits.max_streams_total)]
        server = grpc.aio.server(interceptors=interceptors, options=list(SERVER_OPTIONS))
        add_to_server(self._servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        for name in ("", SERVICE_NAME):
            await self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        reflection.enable_server_reflection(SERVICE_NAMES, server)
        try:
            port = server.add_secure_port(config.listen, identity_server_credentials(self.identity))
        except RuntimeError as exc:
            port = 0
            log.debug("add_secure_port(%s) failed: %s", config.listen, exc)
        if not port:
            raise ServerError(f"cannot listen on {config.listen}: the address is in use or not "
                              "on this board; pick another --listen HOST:PORT (port 0 picks a "
                              "free one)")
        self._server = server
        await server.start()
        self.port = port
        self.address = format_address(config.host, port)
        log.info("listening on %s (mutual TLS, as %r)", self.address, self.identity.common_name)
        try:
            await self._open_backends()
        except BaseException:
            await server.stop(None)
            self._io.shutdown(wait=False)
            raise
        self._froze = freeze_long_lived_objects() > 0
        for name in ("", SERVICE_NAME):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if config.ready_file is not None:
            write_ready_file(config.ready_file, self.address)
        log.info("SERVING on %s: store %s, queue capacity %d, allowed clients: %s",
                 self.address, config.store, config.limits.queue_capacity,
                 ", ".join(config.allowed_clients) or "any certificate of the CA")
        return port

    async def _open_backends(self) -> None:
        loop = asyncio.get_running_loop()
        config = self.config
        try:
            store = await loop.run_in_executor(self._io, BlobStore, config.store, config.limits)
        except OSError as exc:
            raise ServerError(f"cannot use the store folder {config.store}: {exc.strerror or exc}"
                              "; pass a writable --store DIR") from None
        from edgetune.device.providers import NO_ONNXRUNTIME, import_problem
        problem = await loop.run_in_executor(self._io, import_problem)
        if problem:
            raise ServerError(NO_ONNXRUNTIME.format(problem=problem))
        runner = await loop.run_in_executor(self._io, self._make_runner, store)
        info = await loop.run_in_executor(self._io, self._info)   # imports onnxruntime
        queue = JobQueue(Path(config.store) / "jobs.db", runner, config.limits.queue_capacity,
                         signer=self._signer(info))
        try:
            await queue.start()
        except sqlite3.Error as exc:
            raise ServerError(f"cannot open the job database {queue.db_path}: {exc}; move it "
                              "away to start with an empty job history") from None
        self.store, self.queue = store, queue
        refresh = self._refresh

        from edgetune.device.providers import ProviderChecks
        checks = ProviderChecks().start()     # once, beside serving: GetInfo never waits

        def system_info() -> Dict[str, Any]:
            return dict(info, **refresh(), provider_checks=checks.results())

        limits = config.limits
        leases = await loop.run_in_executor(
            self._io, lambda: LeaseBook(Path(config.store) / LEASES_FILE, limits.min_lease_ttl_s,
                                        limits.max_lease_ttl_s))
        self._servicer.attach(store, queue, system_info, leases)
        log.info("onnxruntime %s, providers: %s", info.get("onnxruntime_version", "?"),
                 ", ".join(info.get("available_providers", ())))

    def _signer(self, info: Dict[str, Any]) -> Any:
        """What signs succeeded jobs: the agent's own key (RSA or ECDSA P-256). Another key
        type leaves results unsigned (said once here), rather than the agent not starting."""
        from edgetune.certs.signing import SignatureError
        from edgetune.device.signing import ResultSigner

        versions = {"agent_version": agent_version(), "python_version": platform.python_version(),
                    "onnxruntime_version": str(info.get("onnxruntime_version", ""))}
        try:
            signer = ResultSigner.from_identity(self.identity, versions)
        except (SignatureError, ValueError, TypeError) as exc:
            log.warning("results will not be signed: %s", exc)
            return None
        log.info("results are signed with this agent's key (%s)", signer.algorithm)
        return signer

    def _make_runner(self, store: BlobStore) -> Any:
        from edgetune.device.runner import Runner
        return Runner(store, self.config.limits, sysfs_root=str(self.config.sysfs_root),
                      runners=self.config.runners)

    async def stop(self, grace: float = 5.0) -> None:
        """Graceful stop: NOT_SERVING, no ready file, interrupt the running job, drain calls."""
        if self._stopped:
            return
        self._stopped = True
        log.info("stopping (grace %.0f s)", grace)
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        if self.config.ready_file is not None:
            try:
                os.unlink(self.config.ready_file)
            except OSError:
                pass
        if self.queue is not None:
            await self.queue.stop(grace)
        if self._server is not None:
            await self._server.stop(grace)
        self._io.shutdown(wait=False)
        if self._froze and hasattr(gc, "unfreeze"):
            gc.unfreeze()           # in a longer-lived process (tests), collectable again
        log.info("stopped")

    async def wait_for_termination(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


def _not_after_unix(cert_pem: bytes) -> float:
    """When the agent's own certificate expires (seconds since the epoch)."""
    from edgetune.certs.describe import describe_certificate
    return describe_certificate(cert_pem).not_after.timestamp()


async def serve(config: AgentConfig, identity: Identity, *, grace: float = 5.0,
                stop_event: Optional[asyncio.Event] = None) -> None:
    """Run the agent until SIGTERM/SIGINT (or ``stop_event``), then stop it gracefully."""
    stop = stop_event or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(signum, stop.set)
            installed.append(signum)
        except (NotImplementedError, RuntimeError, ValueError):  # pragma: no cover
            pass
    agent = AgentServer(config, identity)
    try:
        await agent.start()
        await stop.wait()
        log.info("shutdown requested")
    finally:
        await agent.stop(grace)
        for signum in installed:
            loop.remove_signal_handler(signum)


def describe_platform() -> str:
    """A one-line summary for logs: host name, OS, Python."""
    return (f"{socket.gethostname()} {platform.system()} {platform.release()} "
            f"{platform.machine()}, Python {sys.version.split()[0]}")
