"""The agent's configuration and service on the board: ``agent.toml`` and the systemd unit
(package data templates), and starting, stopping and checking the agent either way: systemd
when it runs and deploy may use it (root or passwordless sudo), else a detached process with a
pid file and a log file (which will not start again after a reboot: deploy says so and prints
the line for the board's init system).
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from importlib import resources
from string import Template
from typing import Optional, Sequence

from edgetune.host.deploy.settings import SERVICE
from edgetune.host.deploy.ssh import SshSession
from edgetune.host.errors import BadInputError

UNIT_PATH = f"/etc/systemd/system/{SERVICE}"
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9_./+-]*$")


def template(name: str) -> Template:
    return Template(resources.files("edgetune.host.deploy").joinpath("templates", name)
                    .read_text(encoding="utf-8"))


def check_prefix(prefix: str, where: str) -> str:
    prefix = prefix.rstrip("/") or "/"
    if not _SAFE_PATH.match(prefix) or prefix == "/" or "/../" in prefix + "/":
        raise BadInputError(f"--prefix {prefix!r} on {where} is not a plain absolute path",
                            hint="letters, digits and / . _ - + only, e.g. /opt/edgetune")
    return prefix


@dataclass(frozen=True)
class Layout:
    """Where everything lives under the prefix on the board."""

    prefix: str

    @property
    def wheels(self) -> str:
        return f"{self.prefix}/wheels"

    @property
    def versions(self) -> str:
        return f"{self.prefix}/versions"

    def version(self, vid: str) -> str:
        return f"{self.prefix}/versions/{vid}"

    @property
    def current(self) -> str:
        return f"{self.prefix}/current"

    @property
    def etc(self) -> str:
        return f"{self.prefix}/etc"

    @property
    def pki(self) -> str:
        return f"{self.prefix}/etc/pki"

    @property
    def config(self) -> str:
        return f"{self.prefix}/etc/agent.toml"

    @property
    def store(self) -> str:
        return f"{self.prefix}/store"

    @property
    def log_dir(self) -> str:
        return f"{self.prefix}/log"

    @property
    def log(self) -> str:
        return f"{self.prefix}/log/agent.log"

    @property
    def run(self) -> str:
        return f"{self.prefix}/run"

    @property
    def state(self) -> str:
        return f"{self.prefix}/deploy.json"


def render_config(name: str, layout: Layout, listen: str,
                  allowed_clients: Sequence[str]) -> str:
    return template("agent.toml").substitute(
        name=name, prefix=layout.prefix, listen=listen,
        allowed_clients=json.dumps(list(allowed_clients)))


def render_unit(layout: Layout, user: str, group: str) -> str:
    return template("edgetune-agent.service").substitute(prefix=layout.prefix, user=user,
                                                         group=group)


def boot_line(layout: Layout, user: str) -> str:
    """What to add to a board without systemd so the agent starts at boot (e.g. rc.local or
    a crontab's @reboot)."""
    command = (f"{layout.current}/venv/bin/edgetune-agent serve --config {layout.config} "
               f">> {layout.log} 2>&1 &")
    if user and user != "root":
        return f"runuser -u {user} -- sh -c {shlex.quote(command)}"
    return command


class Service:
    """Start, stop and check the agent on one board, the systemd way or the detached way."""

    def __init__(self, session: SshSession, layout: Layout, *, systemd: bool, sudo: bool,
                 user: str) -> None:
        self.session = session
        self.layout = layout
        self.systemd = systemd
        self.sudo = "sudo -n " if sudo else ""
        self.user = user

    @property
    def mode(self) -> str:
        return "systemd" if self.systemd else "detached"

    def install_unit(self, text: str) -> None:
        self.session.run(f"{self.sudo}tee {UNIT_PATH} >/dev/null && {self.sudo}chmod 644 "
                         f"{UNIT_PATH} && {self.sudo}systemctl daemon-reload && "
                         f"{self.sudo}systemctl enable {SERVICE} >/dev/null 2>&1",
                         stdin=text.encode())

    def restart(self) -> None:
        if self.systemd:
            self.session.run(f"{self.sudo}systemctl restart {SERVICE}")
        else:
            self.stop()
            self.session.boardctl("start", self.layout.prefix, self.user)

    def stop(self) -> None:
        if self.systemd:
            self.session.run(f"{self.sudo}systemctl stop {SERVICE}", check=False)
        else:
            self.session.boardctl("stop", self.layout.prefix)

    def active(self) -> bool:
        if self.systemd:
            return self.session.run(f"systemctl is-active --quiet {SERVICE}",
                                    check=False).status == 0
        return bool(self.session.boardctl("alive", self.layout.prefix)["alive"])

    def disable(self) -> None:
        if self.systemd:
            self.session.run(f"{self.sudo}systemctl disable --now {SERVICE} >/dev/null 2>&1; "
                             f"{self.sudo}rm -f {UNIT_PATH} && {self.sudo}systemctl daemon-reload",
                             check=False)
        else:
            self.stop()

    def log_tail(self, lines: int = 20) -> Optional[Sequence[str]]:
        return self.session.boardctl("tail", self.layout.log, str(lines))["lines"]
