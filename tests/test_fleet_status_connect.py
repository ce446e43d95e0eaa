"""fleet status: a board gets half its deadline to connect (TCP + TLS); one that takes the
connection and never speaks TLS is unreachable then, with a reason that says so, while a
refused connection still fails at once with its own reason (host/fleet/status.py)."""

from __future__ import annotations

import socket
import threading
from typing import Any, List

from edgetune.host.fleet.status import CONNECT_SHARE, fleet_status
from edgetune.host.inventory import Device


class _Silent:
    """Accepts TCP connections and never answers (a hung board)."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.held: List[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

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


def test_a_silent_board_is_unreachable_after_its_connect_share(pki: Any) -> None:
    silent = _Silent()
    with socket.create_server(("127.0.0.1", 0)) as s:
        closed_port = s.getsockname()[1]
    timeout_s = 4.0
    try:
        rows = fleet_status([Device("silent", f"127.0.0.1:{silent.port}"),
                             Device("closed", f"127.0.0.1:{closed_port}")],
                            pki.host.identity, timeout_s)
    finally:
        silent.close()
    by_name = {r.name: r for r in rows}
    hung = by_name["silent"]
    assert hung.state == "unreachable"
    assert "did not complete a connection (TCP and the TLS handshake)" in hung.reason
    # the connect share of the deadline, not the whole of it (generous margins: a shared CI)
    assert timeout_s * CONNECT_SHARE - 0.1 <= hung.elapsed_s < timeout_s - 0.5
    refused = by_name["closed"]
    assert refused.state == "unreachable"
    assert "no agent answers" in refused.reason and "TLS handshake" not in refused.reason
    assert refused.elapsed_s < timeout_s * CONNECT_SHARE
