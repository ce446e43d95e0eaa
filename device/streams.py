"""How many calls may be open at once: per client certificate name and in total.

``StreamLimiter`` is a server interceptor placed after ``AuthInterceptor``. Every call of
every service (ours, health, reflection) counts while it is open: a unary call until it
answers, a stream (an upload, a ``WatchJob``) until it ends. A call beyond
``[limits] max_streams_per_client`` open calls of its caller's certificate name, or beyond
``max_streams_total`` open calls in all, is refused at once with RESOURCE_EXHAUSTED and a
message saying which limit and when to retry: back-pressure, not an error of the agent. So a
host that opens hundreds of idle streams (one leaked by a bug, or a slowloris) uses up its own
share, not the board: another certificate's calls are still answered, and the idle upload
streams are cut by ``upload_idle_timeout_s`` (``edgetune.device.servicer``).

The counts live on the event loop's thread (grpc.aio runs every handler there): no lock.
"""

from __future__ import annotations

import collections
import inspect
import logging
from typing import Any, Callable, Dict

import grpc
import grpc.aio

from edgetune.device.auth import peer_name

log = logging.getLogger("edgetune.agent.streams")

RETRY_HINT = "retry in a few seconds, or close calls this host keeps open"


class StreamLimiter(grpc.aio.ServerInterceptor):
    """Refuse a call beyond ``per_client`` open calls of one certificate name or ``total``
    open calls in all (RESOURCE_EXHAUSTED)."""

    def __init__(self, per_client: int, total: int) -> None:
        self.per_client = int(per_client)
        self.total = int(total)
        self.open: Dict[str, int] = collections.defaultdict(int)
        self.open_total = 0

    async def intercept_service(self, continuation: Callable[..., Any],
                                handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=self._wrap(handler.unary_unary))
        if handler.stream_unary is not None:
            return handler._replace(stream_unary=self._wrap(handler.stream_unary))
        if handler.unary_stream is not None:
            return handler._replace(unary_stream=self._wrap(handler.unary_stream))
        return handler._replace(stream_stream=self._wrap(handler.stream_stream))

    def refusal(self, name: str) -> str:
        """Why a new call of ``name`` is refused now ("" when it may open)."""
        if self.open_total >= self.total:
            return (f"the agent has {self.open_total} calls open, its limit ([limits] "
                    f"max_streams_total); {RETRY_HINT}")
        if self.open[name] >= self.per_client:
            return (f"{name or 'this caller'} has {self.open[name]} calls open on this agent, "
                    f"the limit per client ([limits] max_streams_per_client); {RETRY_HINT}")
        return ""

    def _enter(self, name: str) -> None:
        self.open[name] += 1
        self.open_total += 1

    def _leave(self, name: str) -> None:
        self.open_total -= 1
        self.open[name] -= 1
        if not self.open[name]:
            del self.open[name]

    async def _admit(self, context: Any, name: str) -> None:
        reason = self.refusal(name)
        if reason:
            log.warning("refused a call of %s: %s", name or "?", reason)
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, reason)

    def _wrap(self, behavior: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.isasyncgenfunction(behavior):
            async def wrapped_gen(request: Any, context: Any) -> Any:
                name = peer_name(context)
                await self._admit(context, name)
                self._enter(name)
                try:
                    async for item in behavior(request, context):
                        yield item
                finally:
                    self._leave(name)
            return wrapped_gen

        async def wrapped(request: Any, context: Any) -> Any:
            name = peer_name(context)
            await self._admit(context, name)
            self._enter(name)
            try:
                return await behavior(request, context)
            finally:
                self._leave(name)
        return wrapped


__all__ = ["StreamLimiter"]
