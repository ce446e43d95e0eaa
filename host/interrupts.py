"""Ctrl-C that never lands inside grpc: ``GATE``, the process's ``SigintGate``.

``edgetune.host.client`` wraps each grpc call in ``with GATE.deferred():`` and registers the call's
``cancel`` with ``GATE.on_interrupt``; a Ctrl-C then cancels the call and surfaces as a
KeyboardInterrupt in our code once grpc has returned. ``edgetune.host.client`` re-exports both names.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from typing import Any, Callable, Iterator, List, Optional

log = logging.getLogger(__name__)


class SigintGate:
    """Ctrl-C that never lands inside grpc.

    A KeyboardInterrupt raised while the main thread is inside grpc's code can leave the
    channel's ``close()`` waiting forever (grpc/grpc#19973: the command hangs after Ctrl-C).
    So while ``with GATE.deferred():`` is active in the main thread, SIGINT only records the
    interrupt, and a helper thread runs the callbacks given to ``on_interrupt`` (the calls'
    ``cancel``); grpc then returns CANCELLED, and leaving the block raises KeyboardInterrupt
    in our code. In other threads, or when SIGINT is not Python's default handler (ignored,
    or taken by the application), it changes nothing.
    """

    def __init__(self) -> None:
        self._depth = 0
        self._hit = False
        self._previous: Any = None
        self._callbacks: List[Callable[[], Any]] = []
        self._lock = threading.Lock()       # never taken by the signal handler
        self._wake = threading.Event()
        self._helper: Optional[threading.Thread] = None

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        outermost = self._depth == 0
        if outermost:
            if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
                yield                       # SIGINT ignored or someone else's: leave it be
                return
            self._start_helper()
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            hit = self._hit
            if outermost:
                signal.signal(signal.SIGINT, self._previous)
                with self._lock:
                    self._hit = False
                    self._callbacks = []
            if hit:
                raise KeyboardInterrupt

    def on_interrupt(self, callback: Callable[[], Any]) -> None:
        """Run ``callback`` (from a helper thread) if Ctrl-C comes inside this ``deferred``."""
        if self._depth == 0 or threading.current_thread() is not threading.main_thread():
            return
        with self._lock:
            self._callbacks.append(callback)
        if self._hit:
            callback()

    def _on_sigint(self, signum: int, frame: Any) -> None:
        # Runs in the main thread, possibly inside grpc's Python code: only record and wake.
        # (A second Ctrl-C must not touch the Event while the first may be setting it.)
        if not self._hit:
            self._hit = True
            self._wake.set()

    def _start_helper(self) -> None:
        if self._helper is None:
            self._helper = threading.Thread(target=self._run_callbacks, daemon=True,
                                            name="edgetune-sigint")
            self._helper.start()

    def _run_callbacks(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            with self._lock:                # a late wake-up must not cancel later calls
                callbacks = list(self._callbacks) if self._hit else []
            for callback in callbacks:
                try:
                    callback()
                except Exception as exc:  # noqa: BLE001 - cancelling is best effort
                    log.debug("cancelling after Ctrl-C: %s", exc)


GATE = SigintGate()


__all__ = ["GATE", "SigintGate"]
