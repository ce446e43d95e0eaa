"""Who is calling, whether they may, and one log line per call.

TLS (grpc's ``require_client_auth=True``) has already checked that the client certificate
chains to the CA and is in date. On top of that, every call of every service (ours, health,
reflection) goes through ``AuthInterceptor``, which:

- refuses a certificate whose extended key usage lacks clientAuth (a board's serverAuth-only
  certificate used as a client) with PERMISSION_DENIED;
- refuses a caller whose certificate name is not in ``allowed_clients`` (when that is set);
- logs ``"laptop GetInfo 3.2 ms OK"`` at INFO when the call ends.

The check runs inside the wrapped handler because only the call's context carries the peer's
certificate (``context.auth_context()``).
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from typing import Any, Callable, Iterable, Optional, Tuple

import grpc
import grpc.aio

log = logging.getLogger("edgetune.agent.calls")

LACKS_CLIENT_AUTH = ("client certificate lacks the clientAuth usage (a device certificate used "
                     "as a client?)")


def _first(context: Any, key: str) -> Optional[bytes]:
    try:
        values = context.auth_context().get(key) or ()
    except Exception:  # pragma: no cover - a context without auth data
        return None
    return values[0] if values else None


def peer_name(context: Any) -> str:
    """The common name on the caller's certificate ("" when there is none)."""
    value = _first(context, "x509_common_name")
    return value.decode("utf-8", "replace") if value else ""


@functools.lru_cache(maxsize=64)
def _pem_has_client_auth(pem: bytes) -> bool:
    from edgetune.certs import has_client_auth
    return bool(has_client_auth(pem))


def refusal(context: Any, allowed_clients: Tuple[str, ...]) -> Optional[str]:
    """Why this caller is refused, or None when it may call."""
    pem = _first(context, "x509_pem_cert")
    if not pem:
        return "no client certificate was presented"
    if not _pem_has_client_auth(pem):
        return LACKS_CLIENT_AUTH
    if allowed_clients:
        name = peer_name(context)
        if name not in allowed_clients:
            return (f"client {name!r} is not in this agent's allowed_clients "
                    f"({', '.join(allowed_clients)}); add it to allowed_clients in agent.toml "
                    "(or --allowed-client) on the board")
    return None


def _status_of(context: Any, exc: Optional[BaseException]) -> str:
    code = None
    try:
        code = context.code()
    except Exception:  # pragma: no cover
        pass
    if isinstance(code, grpc.StatusCode):
        return code.name
    if exc is None:
        return "OK"
    if isinstance(exc, grpc.aio.AbortError):
        return "ABORTED"
    if isinstance(exc, BaseException) and type(exc).__name__ == "CancelledError":
        return "CANCELLED"
    if isinstance(exc, GeneratorExit):  # a streaming caller went away after its last event
        return "CANCELLED"
    return "UNKNOWN"


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every handler with the client-certificate checks and the access log."""

    def __init__(self, allowed_clients: Iterable[str] = ()) -> None:
        self.allowed_clients = tuple(allowed_clients)

    async def intercept_service(self, continuation: Callable[..., Any],
                                handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method.rsplit("/", 1)[-1]
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=self._wrap_unary(method, handler.unary_unary))
        if handler.stream_unary is not None:
            return handler._replace(stream_unary=self._wrap_unary(method, handler.stream_unary))
        if handler.unary_stream is not None:
            return handler._replace(unary_stream=self._wrap_stream(method, handler.unary_stream))
        return handler._replace(stream_stream=self._wrap_stream(method, handler.stream_stream))

    async def _admit(self, context: Any, name: str) -> None:
        reason = refusal(context, self.allowed_clients)
        if reason is not None:
            log.warning("refused %s: %s", name or "a caller without a certificate name", reason)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, reason)

    def _wrap_unary(self, method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def wrapped(request: Any, context: Any) -> Any:
            start = time.perf_counter()
            name = peer_name(context)
            error: Optional[BaseException] = None
            try:
                await self._admit(context, name)
                return await behavior(request, context)
            except BaseException as exc:
                error = exc
                raise
            finally:
                _log_call(name, method, start, _status_of(context, error))
        return wrapped

    def _wrap_stream(self, method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.isasyncgenfunction(behavior):
            async def wrapped_gen(request: Any, context: Any) -> Any:
                start = time.perf_counter()
                name = peer_name(context)
                error: Optional[BaseException] = None
                try:
                    await self._admit(context, name)
                    async for item in behavior(request, context):
                        yield item
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    _log_call(name, method, start, _status_of(context, error))
            return wrapped_gen
        return self._wrap_unary(method, behavior)  # a coroutine that writes with context.write


def _log_call(name: str, method: str, start: float, status: str) -> None:
    elapsed_ms = (time.perf_counter() - start) * 1000.0
    level = logging.INFO
    if status in ("PERMISSION_DENIED", "UNAUTHENTICATED"):
        level = logging.WARNING
    elif status in ("INTERNAL", "UNKNOWN"):
        level = logging.ERROR
    log.log(level, "%s %s %.1f ms %s", name or "?", method, elapsed_ms, status)
