"""A board lease as both sides see it: the ``Lease`` message of agent.proto as a frozen
dataclass (``as_pb2``/``from_pb2``), so that the agent's lease book and the host's client
never hand a ``_pb2`` type further in.

Times are the agent's clock (``*_unix``); ``remaining_s`` is what the agent computed against
its own clock when it answered, for a host whose clock differs.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from typing import Any, Dict

from edgetune.protos import agent_pb2 as pb

# Trailing metadata of a FAILED_PRECONDITION caused by someone else's lease: who holds the
# board and until when (seconds since the epoch, the agent's clock), so a host can tell this
# refusal from the others without reading the message.
LEASE_HOLDER_METADATA = "x-edgetune-lease-holder"
LEASE_EXPIRES_METADATA = "x-edgetune-lease-expires-unix"


@dataclass(frozen=True)
class Lease:
    """One claim on a board, held by the certificate name ``holder``."""

    holder: str
    lease_id: str
    expires_unix: float
    ttl_s: float
    remaining_s: float = 0.0
    board_expires_unix: float = 0.0     # when the board is free again (the holder's last claim)
    claims: int = 1                     # the holder's claims (processes) on the board

    def as_pb2(self) -> Any:
        return pb.Lease(**dataclasses.asdict(self))

    @classmethod
    def from_pb2(cls, msg: Any) -> "Lease":
        return cls(**{f.name: getattr(msg, f.name) for f in dataclasses.fields(cls)})

    def as_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["expires"] = format_utc(self.expires_unix)
        d["board_expires"] = format_utc(self.board_expires_unix or self.expires_unix)
        return d


def format_utc(unix: float) -> str:
    """``1764883203.2`` -> ``"2025-12-04 21:20:03 UTC"`` ("" for 0)."""
    if not unix:
        return ""
    return dt.datetime.fromtimestamp(unix, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


__all__ = ["LEASE_EXPIRES_METADATA", "LEASE_HOLDER_METADATA", "Lease", "format_utc"]
