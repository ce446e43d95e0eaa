"""The access log's status for a call that ended without a gRPC status code."""

from __future__ import annotations

import asyncio

from edgetune.device.auth import _status_of


class _NoCode:
    def code(self):
        return None


def test_streaming_caller_that_left_is_logged_as_cancelled_not_unknown():
    assert _status_of(_NoCode(), GeneratorExit()) == "CANCELLED"
    assert _status_of(_NoCode(), asyncio.CancelledError()) == "CANCELLED"
    assert _status_of(_NoCode(), None) == "OK"
    assert _status_of(_NoCode(), RuntimeError("boom")) == "UNKNOWN"
