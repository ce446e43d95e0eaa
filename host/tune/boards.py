"""The boards a study runs on: which ones (``--device`` / ``--devices``), how each is opened
(a ``BoardSession``, the only path to a board), and their kind.

Latency is only compared between boards of one kind: the same architecture, CPU model and
onnxruntime version (``board_kind``). A study records its kind and refuses boards of another.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

from edgetune.host.errors import BadInputError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    from edgetune.host.board import BoardSession

KIND_FIELDS = ("arch", "cpu_model", "onnxruntime_version")


@dataclass(frozen=True)
class BoardSpec:
    """How to open one board: its name in results, its address, this PC's identity (an
    ``edgetune.certs.Identity``), the TLS server name to expect, the call deadline."""

    name: str
    address: str
    identity: Any
    server_name: Optional[str] = None
    timeout_s: float = 30.0

    def open(self, recorder: Any = None) -> "BoardSession":
        from edgetune.host.board import BoardSession
        from edgetune.host.client import AgentClient, ClientSettings

        settings = ClientSettings(timeout_s=self.timeout_s,
                                  connect_timeout_s=min(10.0, self.timeout_s))
        client = AgentClient(self.address, self.identity, server_name=self.server_name,
                             settings=settings)
        return BoardSession(client, self.name, recorder=recorder)


def board_kind(agent: Any) -> Dict[str, str]:
    """What makes two boards' latencies comparable (from ``AgentInfo``)."""
    return {k: str(getattr(agent, k, "") or "") for k in KIND_FIELDS}


def kind_text(kind: Dict[str, str]) -> str:
    return f"{kind['arch']}, {kind['cpu_model'] or 'unknown CPU'}, onnxruntime " \
           f"{kind['onnxruntime_version']}"


def check_one_kind(kinds: Dict[str, Dict[str, str]]) -> Dict[str, str]:
    """The one kind of these boards (name -> kind); BadInputError listing them otherwise."""
    distinct = {tuple(sorted(k.items())) for k in kinds.values()}
    if len(distinct) > 1:
        listed = "; ".join(f"{name}: {kind_text(kind)}" for name, kind in kinds.items())
        raise BadInputError(
            f"these boards are of different kinds, and latency is only compared between "
            f"boards of one kind (arch, CPU model, onnxruntime version): {listed}",
            hint="select boards of one kind with --devices (e.g. arch=aarch64+tag:lab2), and "
                 "run one study per kind")
    return next(iter(kinds.values()))


def specs_from_args(args: argparse.Namespace) -> List[BoardSpec]:
    """``--device NAME`` / ``--address`` (one board) or ``--devices SEL`` (several from the
    inventory), with this PC's identity loaded once."""
    from edgetune.host.target import (load_identity_files, load_target_identity,
                                      resolve_fleet, resolve_target)

    if getattr(args, "devices", None):
        if args.device or args.address:
            raise UsageError("pass --device NAME (one board) or --devices SEL (several), "
                             "not both")
        from edgetune.host.fleet.selectors import Selector, select

        selector = Selector.parse(args.devices)
        inventory, files = resolve_fleet(args)
        if selector.reported_keys(inventory):
            raise UsageError(f"--devices {args.devices!r} selects on what boards report; tune "
                             "selects by name, tag or inventory attribute",
                             hint="e.g. --devices tag:lab2 or --devices board1,board2 (the "
                                  "study checks that they are of one kind)")
        chosen, _ = select(inventory, selector)
        identity = load_identity_files(files)
        return [BoardSpec(d.name, d.address, identity, d.server_name, args.timeout)
                for d in chosen]
    target = resolve_target(args)
    return [BoardSpec(target.device, target.address, load_target_identity(target),
                      target.server_name, target.timeout_s)]


def names(specs: Sequence[BoardSpec]) -> str:
    return ", ".join(s.name for s in specs)
