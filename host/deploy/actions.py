"""``deploy status``, ``deploy logs`` and ``deploy remove`` on one board: each one SSH session
(strict host keys, as deploy), the probe, then what it asks for. Nothing here installs.
"""

from __future__ import annotations

from typing import Any, Dict, List

from edgetune.host.deploy.health import check_once
from edgetune.host.deploy.service import Layout, check_prefix
from edgetune.host.deploy.settings import DeploySettings
from edgetune.host.deploy.steps import Say, agent_address, connect_and_probe, service_for
from edgetune.host.errors import BadInputError


def status(settings: DeploySettings, identity: Any, say: Say) -> Dict[str, Any]:
    """What is installed and whether it serves (nothing changes on the board)."""
    address = agent_address(settings)
    session, facts = connect_and_probe(settings.ssh, settings.prefix, say, settings.python)
    with session:
        state = facts.state or {}
        health = check_once(address, identity, 5.0) if state else "not installed"
        return {"device": settings.name, "ssh": settings.ssh.label, "prefix": facts.prefix,
                "installed": state.get("version"), "vid": state.get("vid"),
                "previous": state.get("previous"), "mode": state.get("mode"),
                "running": facts.service_active, "health": health, "address": address,
                "board": facts.describe()}


def logs(settings: DeploySettings, lines: int, say: Say) -> List[str]:
    session, facts = connect_and_probe(settings.ssh, settings.prefix, say, settings.python)
    with session:
        if not facts.state:
            raise BadInputError(f"no edgetune install under {facts.prefix} on "
                                f"{settings.ssh.label}")
        return list(service_for(session, facts).log_tail(lines) or [])


def remove(settings: DeploySettings, purge: bool, say: Say) -> Dict[str, Any]:
    """Stop and disable the agent, remove the install; the store and certificates only with
    ``purge`` (then the whole prefix)."""
    session, facts = connect_and_probe(settings.ssh, settings.prefix, say, settings.python)
    with session:
        layout = Layout(check_prefix(facts.prefix, settings.ssh.label))
        leftovers = session.run(f"test -e {layout.prefix}", check=False).status == 0
        if not facts.state and not (purge and leftovers):
            raise BadInputError(f"no edgetune install under {facts.prefix} on "
                                f"{settings.ssh.label}")
        service = service_for(session, facts)
        service.disable()
        if purge:
            session.run(f"rm -rf -- {layout.prefix}")
            removed = [layout.prefix]
        else:
            removed = [layout.versions, layout.current, layout.wheels, layout.config,
                       layout.run, layout.state]
            session.run("rm -rf -- " + " ".join(removed))
        kept = [] if purge else [layout.store, layout.pki, layout.log_dir]
        return {"removed": removed, "kept": kept, "mode": service.mode}
