"""The deploy sequence for one board, and upgrade, status, logs and remove.

    connect (strict host keys) -> probe -> wheelhouse -> certificate -> up to date? ->
    upload (resumable, sha256) -> venv + pip --no-index -> certificates, agent.toml ->
    switch ``current`` -> service (systemd or detached) -> health over mTLS -> deploy.json ->
    edgetune.toml

A new version is installed beside the old one (``versions/VID``) and ``current`` is switched
to it; when it does not come up, ``current`` goes back to the previous version, which is
restarted and checked, and the error says so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shlex
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from edgetune.host.deploy import transfer
from edgetune.host.deploy.device_certs import (DeviceCredentials, board_cert_still_good,
                                               from_files, issue_from_pki, need_source)
from edgetune.host.deploy.health import check_once, wait_serving
from edgetune.host.deploy.probe import BoardFacts, check_disk, probe
from edgetune.host.deploy.record import upsert_device
from edgetune.host.deploy.service import (Layout, Service, boot_line, check_prefix,
                                          render_config, render_unit)
from edgetune.host.deploy.settings import (ROOT_PREFIX, USER_PREFIX, DeploySettings,
                                           SshSettings, listen_port)
from edgetune.host.deploy.ssh import RemoteError, SshSession
from edgetune.host.deploy.wheelhouse import (Wheelhouse, build_wheelhouse, open_wheelhouse,
                                             requirements_for)
from edgetune.host.errors import (BadInputError, EdgetuneError, NotFoundError, TimeoutError_,
                                  UsageError)
from edgetune.host.inventory import HostIdentityFiles

log = logging.getLogger(__name__)

Say = Callable[[str], None]
_INVENTORY_LOCK = threading.Lock()     # boards deployed at once share one edgetune.toml
SERVICE_USER = "edgetune"
_NO_WHEEL = re.compile(r"(?:No matching distribution found for|Could not find a version that "
                       r"satisfies the requirement) ([A-Za-z0-9_.\-]+)")


class DeployFailed(EdgetuneError):
    """The agent did not come up; ``rolled_back`` says whether the old version serves again."""

    exit_status = TimeoutError_.exit_status

    def __init__(self, message: str, *, hint: str = "", rolled_back: bool = False) -> None:
        super().__init__(message, hint=hint)
        self.rolled_back = rolled_back


@dataclass(frozen=True)
class HostSide:
    """This PC's identity (for health over mTLS) and where the board's certificate comes from."""

    files: HostIdentityFiles
    identity: Any                     # edgetune.certs.Identity, decrypted once
    pki: Optional[Path]               # the CA folder, when its key is here


@dataclass
class Outcome:
    name: str
    action: str                        # "installed", "up to date", "upgraded", ...
    address: str
    version: str = ""
    mode: str = ""
    details: Dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> Dict[str, Any]:
        return {"device": self.name, "action": self.action, "address": self.address,
                "version": self.version, "mode": self.mode, **self.details}


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def default_prefix(root: bool) -> str:
    return ROOT_PREFIX if root else USER_PREFIX


def agent_address(settings: DeploySettings) -> str:
    port = listen_port(settings.listen)
    if settings.address:
        host, sep, given_port = settings.address.rpartition(":")
        if sep and given_port.isdigit() and (host.endswith("]") or ":" not in host):
            return settings.address
        return f"{settings.address}:{port}"
    host = settings.ssh.hostname
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _dial_host(address: str) -> str:
    host = address.rpartition(":")[0]
    return host[1:-1] if host.startswith("[") else host


class BoardDeploy:
    """Deploy to one board over one SSH session."""

    def __init__(self, settings: DeploySettings, host: HostSide, say: Say,
                 progress: Optional[Callable[[str, int, int], None]] = None) -> None:
        self.settings = settings
        self.host = host
        self.say = say
        self.progress = progress          # (wheel, bytes sent, its size), as the upload goes
        self.address = agent_address(settings)

    # -------------------------------------------------------------------- the sequence

    def run(self, *, upgrade_only: bool = False) -> Outcome:
        s = self.settings
        started = time.monotonic()
        with SshSession.connect(s.ssh, tell=self.say) as session:
            facts = probe(session, s.prefix or default_prefix_for(session), s.python,
                          ask_onnxruntime=s.onnxruntime != "pypi")
            layout = Layout(check_prefix(facts.prefix, s.ssh.label))
            self.say(f"{s.name}: {facts.arch}, {facts.os_name}, {facts.libc} {facts.libc_version}, "
                     f"Python {facts.python}, systemd "
                     f"{'usable' if facts.systemd_usable else 'not usable' if facts.systemd else 'absent'}"
                     + (f", edgetune {facts.state.get('version')} installed" if facts.state else ""))
            if upgrade_only and not facts.state:
                raise BadInputError(f"{s.name}: no edgetune install under {facts.prefix} on "
                                    f"{s.ssh.label}", hint=f"deploy it first: edgetune deploy {s.name}")
            user = self._service_user(facts)
            use_board_ort = self._onnxruntime_choice(facts)
            house = self._wheelhouse(facts, use_board_ort)
            creds = self._credentials(facts)
            config = render_config(s.name, layout, s.listen, s.allowed_clients)
            systemd = facts.systemd_usable
            unit = render_unit(layout, user, user) if systemd else ""
            vid = f"{house.version}-{house.digest[:12]}-{'board' if use_board_ort else 'pypi'}-py{facts.python_tag[2:]}"
            desired = {"version": house.version, "vid": vid, "config_sha256": _sha(config),
                       "unit_sha256": _sha(unit), "cert_sha256": creds.fingerprint if creds
                       else (facts.state or {}).get("cert_sha256"),
                       "mode": "systemd" if systemd else "detached", "service_user": user,
                       "onnxruntime": "board" if use_board_ort else "pypi"}
            service = Service(session, layout, systemd=systemd,
                              sudo=systemd and not facts.root, user=user)
            state = facts.state or {}
            same = all(state.get(k) == v for k, v in desired.items())
            if creds is None and same and facts.service_active and \
                    check_once(self.address, self.host.identity, 5.0) == "SERVING":
                changed = self._record(facts)
                return Outcome(s.name, "up to date", self.address, house.version, desired["mode"],
                               {"inventory_changed": changed,
                                "seconds": round(time.monotonic() - started, 2)})
            check_disk(facts, s.ssh.label, 0 if state.get("vid") == vid else
                       house.total_bytes * 4)
            previous = state.get("vid") if state.get("vid") != vid else state.get("previous")
            self._prepare(session, layout, facts, user)
            self._install(session, layout, facts, house, vid, use_board_ort)
            if creds is not None:
                self._send_credentials(session, layout, facts, user, creds)
            transfer.write_file(session, layout.config, config.encode(), 0o644)
            if systemd:
                service.install_unit(unit)
            if state.get("mode") and state.get("mode") != desired["mode"]:
                service_for(session, facts).disable()     # the old way must not hold the port
            self._switch(session, layout, vid)
            ok, why = self._restart_and_wait(service)
            if not ok:
                rolled_back = False
                if previous and previous != vid and self._installed(session, layout, previous):
                    self._switch(session, layout, previous)
                    rolled_back, _ = self._restart_and_wait(service)
                lines = service.log_tail(20) or ["(the log is empty)"]
                tail = "\n".join(f"    {line}" for line in lines)
                back = (f"; rolled back to {previous}, which serves again" if rolled_back else
                        f"; rolling back to {previous} failed too" if previous else "")
                raise DeployFailed(
                    f"{s.name}: the agent ({vid}) did not answer health over mutual TLS at "
                    f"{self.address} ({why}){back}. Last lines of {layout.log}:\n{tail}",
                    hint="see `edgetune deploy logs " + s.name + "`; check that this PC reaches "
                         f"port {listen_port(s.listen)} on the board",
                    rolled_back=rolled_back)
            done = dict(desired, previous=previous if previous != vid else None,
                        deployed_unix=int(time.time()))
            transfer.write_file(session, layout.state, json.dumps(done, indent=2).encode(), 0o644)
            if previous and previous != vid:
                self._prune(session, layout, keep=(vid, previous))
            if not systemd:
                self.say(f"{s.name}: the agent runs detached (pid file {layout.run}/agent.pid, "
                         f"log {layout.log}); it will NOT start again after a reboot. Add this "
                         f"to the board's init system (rc.local, or @reboot in root's crontab):\n"
                         f"    {boot_line(layout, user)}")
            changed = self._record(facts)
            action = ("upgraded" if state.get("vid") and state.get("vid") != vid else
                      "installed" if not state else "updated")
            return Outcome(s.name, action, self.address, house.version, desired["mode"],
                           {"vid": vid, "previous": previous, "inventory_changed": changed,
                            "certificate": creds.issued if creds else "kept",
                            "onnxruntime": desired["onnxruntime"],
                            "seconds": round(time.monotonic() - started, 2)})

    # -------------------------------------------------------------------- decisions

    def _service_user(self, facts: BoardFacts) -> str:
        wanted = self.settings.service_user
        if not facts.root:
            if wanted and wanted != facts.user:
                raise UsageError(f"--service-user {wanted}: only root can run the agent as "
                                 f"another user (logged in as {facts.user})")
            return facts.user
        return wanted or SERVICE_USER

    def _onnxruntime_choice(self, facts: BoardFacts) -> bool:
        choice = self.settings.onnxruntime
        ort = facts.onnxruntime
        if choice == "board" and ort is None:
            raise BadInputError("--onnxruntime board: the board's python3 imports no onnxruntime",
                                hint="install the vendor's onnxruntime there, or use "
                                     "--onnxruntime pypi")
        use_board = choice == "board" or (choice == "auto" and ort is not None)
        if use_board and ort is not None:
            self.say(f"{self.settings.name}: keeping the board's onnxruntime {ort.version} "
                     f"({ort.path}); the agent will use its providers: "
                     f"{', '.join(ort.providers) or 'none reported'}")
        return use_board

    def _wheelhouse(self, facts: BoardFacts, use_board_ort: bool) -> Wheelhouse:
        if self.settings.wheelhouse is not None:
            return open_wheelhouse(self.settings.wheelhouse)
        return build_wheelhouse(facts.platform_tags(), facts.python_tuple,
                                with_onnxruntime=not use_board_ort)

    def _credentials(self, facts: BoardFacts) -> Optional[DeviceCredentials]:
        """None when the board's certificate is kept."""
        s = self.settings
        ca_pem = self.host.identity.ca_pem
        host = _dial_host(self.address)
        if s.device_cert is None and board_cert_still_good(ca_pem, facts.ca_pem,
                                                           facts.cert_pem, host):
            return None
        need_source(self.host.pki, s.device_cert, s.device_key)
        if s.device_cert is not None and s.device_key is not None:
            creds = from_files(s.device_cert, s.device_key, host, s.passphrase_file, ca_pem)
            if facts.cert_pem and facts.cert_pem.encode() == creds.cert_pem and \
                    facts.ca_pem and facts.ca_pem.encode() == ca_pem:
                return None
            return creds
        assert self.host.pki is not None
        return issue_from_pki(self.host.pki, s.name, host, s.passphrase_file, ca_pem)

    # -------------------------------------------------------------------- board changes

    def _prepare(self, session: SshSession, layout: Layout, facts: BoardFacts, user: str) -> None:
        p = layout
        script = ["set -e", "umask 022",
                  f"mkdir -p {p.prefix} {p.wheels} {p.versions} {p.etc} {p.log_dir} {p.run}",
                  f"mkdir -p -m 700 {p.pki} {p.store}", f"chmod 700 {p.pki} {p.store}"]
        if facts.root and user != "root":
            if not facts.useradd:
                raise BadInputError(f"{self.settings.ssh.label} has no useradd to create the "
                                    f"service user {user}",
                                    hint="create it by hand, or pass --service-user root")
            script.insert(2, f"id -u {user} >/dev/null 2>&1 || useradd --system "
                             f"--no-create-home --home-dir {p.store} "
                             f"--shell /usr/sbin/nologin {user}")
            script.append(f"chown -R {user}: {p.pki} {p.store} {p.log_dir} {p.run}")
        session.run("; ".join(script))

    def _installed(self, session: SshSession, layout: Layout, vid: str) -> bool:
        return session.run(f"test -f {layout.version(vid)}/ok", check=False).status == 0

    def _install(self, session: SshSession, layout: Layout, facts: BoardFacts, house: Wheelhouse,
                 vid: str, use_board_ort: bool) -> None:
        s = self.settings
        if self._installed(session, layout, vid):
            return
        report = transfer.upload_wheelhouse(session, house, layout.wheels, self.progress)
        self.say(f"{s.name}: wheelhouse on the board: {report.sent_files} sent "
                 f"({report.sent_bytes / 1e6:.1f} MB, {report.resumed_files} resumed), "
                 f"{report.kept_files} already there, each checked by sha256")
        target = layout.version(vid)
        venv = f"{target}/venv"
        requirements = requirements_for(house, with_onnxruntime=not use_board_ort)
        flags = "--system-site-packages " if use_board_ort else ""
        reqs = " ".join(shlex.quote(r) for r in requirements)
        # the board's own pip configuration (an index, constraints) is not ours to use
        # pip sees exactly this wheelhouse (links to its files), not every wheel an earlier
        # deploy left in PREFIX/wheels
        links = f"{target}/wheels"
        names = " ".join(shlex.quote(w.name) for w in house.wheels)
        pip = (f"PIP_CONFIG_FILE=/dev/null {venv}/bin/python -m pip install --quiet --no-index "
               f"--no-cache-dir --disable-pip-version-check --find-links {links}")
        started = time.monotonic()
        try:
            session.run(
                f"set -e; rm -rf {target}; mkdir -p {links}; "
                f"for f in {names}; do ln -s {layout.wheels}/$f {links}/$f; done; "
                f"{shlex.quote(facts.python_executable)} -m venv {flags}{venv}; "
                f"{pip} {reqs} > {target}/pip.log 2>&1 || {{ cat {target}/pip.log >&2; exit 1; }}; "
                # edgetune itself always into the venv, even when the board's site has one
                f"{pip} --no-deps --ignore-installed {shlex.quote(requirements[0])} "
                f">> {target}/pip.log 2>&1 || {{ cat {target}/pip.log >&2; exit 1; }}; "
                f"{venv}/bin/edgetune-agent --version > {target}/ok",
                timeout_s=1800)
        except RemoteError as exc:
            missing = _NO_WHEEL.search(exc.message)
            if missing:
                raise NotFoundError(
                    f"{s.name}: no wheel of {missing.group(1)} for {facts.platform_label} in "
                    f"the wheelhouse {house.directory}",
                    hint="add one built for that platform and Python, or leave out "
                         "--wheelhouse to let deploy fetch them") from None
            raise
        self.say(f"{s.name}: installed {vid} in {time.monotonic() - started:.0f} s "
                 f"({'the board' if use_board_ort else 'PyPI'}'s onnxruntime)")

    def _send_credentials(self, session: SshSession, layout: Layout, facts: BoardFacts,
                          user: str, creds: DeviceCredentials) -> None:
        pki = layout.pki
        transfer.write_file(session, f"{pki}/agent-key.pem", creds.key_pem, 0o600)
        transfer.write_file(session, f"{pki}/passphrase", creds.passphrase + b"\n", 0o600)
        transfer.write_file(session, f"{pki}/agent-cert.pem", creds.cert_pem, 0o644)
        transfer.write_file(session, f"{pki}/ca-cert.pem", creds.ca_pem, 0o644)
        if facts.root and user != "root":
            session.run(f"chown -R {user}: {pki} && chmod 700 {pki}")
        self.say(f"{self.settings.name}: certificate for {_dial_host(self.address)} "
                 f"{creds.issued}; key and passphrase 0600 in {pki} (0700)")

    def _switch(self, session: SshSession, layout: Layout, vid: str) -> None:
        session.run(f"ln -sfn versions/{vid} {layout.current}.new && "
                    f"mv -T {layout.current}.new {layout.current}")

    def _restart_and_wait(self, service: Service) -> tuple:
        """(True, "SERVING") once the restarted agent serves, else (False, why)."""
        try:
            service.restart()
        except RemoteError as exc:
            return False, exc.message
        return wait_serving(self.address, self.host.identity, self.settings.timeout_s,
                            still_running=service.active)

    def _prune(self, session: SshSession, layout: Layout, keep: tuple) -> None:
        """Delete the versions not in ``keep``, then every file of ``PREFIX/wheels`` that no
        kept version's wheelhouse links to (wheels of deleted versions, ``.part`` leftovers):
        without it each upgrade's wheels (onnxruntime alone is tens of MB) stay forever."""
        keep_names = " ".join(shlex.quote(k) for k in keep)
        session.run(f"cd {layout.versions} && for d in *; do case \" {keep_names} \" in "
                    f"*\" $d \"*) ;; *) rm -rf -- \"$d\";; esac; done", check=False)
        session.run(f"cd {layout.wheels} && for f in *; do [ -e \"$f\" ] || continue; "
                    f"used=; for v in {layout.versions}/*/wheels; do "
                    f"if [ -L \"$v/$f\" ]; then used=1; break; fi; done; "
                    f"[ -n \"$used\" ] || rm -f -- \"$f\"; done", check=False)

    def _record(self, facts: BoardFacts) -> bool:
        s = self.settings
        ssh = s.ssh
        deploy = {"ssh": str(ssh.spec), "prefix": facts.prefix, "listen": s.listen,
                  "python": s.python if s.python != "python3" else "",
                  "wheelhouse": str(s.wheelhouse.resolve()) if s.wheelhouse else "",
                  "onnxruntime": s.onnxruntime if s.onnxruntime != "auto" else "",
                  "identity": str(ssh.explicit_identity.expanduser().resolve())
                  if ssh.explicit_identity else "",
                  "known_hosts": str(ssh.known_hosts.resolve()) if ssh.known_hosts else "",
                  "service_user": s.service_user or ""}
        with _INVENTORY_LOCK:
            return upsert_device(s.inventory, s.name, self.address, tags=s.tags, deploy=deploy,
                                 host=self.host.files)


def default_prefix_for(session: SshSession) -> str:
    """/opt/edgetune when logged in as root, else ~/.local/share/edgetune (expanded there)."""
    root = session.run("id -u", check=False).out.strip() == "0"
    return default_prefix(root)


# ------------------------------------------------------------------------ shared with actions

def connect_and_probe(ssh: SshSettings, prefix: Optional[str], say: Say,
                      python: str = "python3") -> tuple:
    session = SshSession.connect(ssh, tell=say)
    try:
        facts = probe(session, prefix or default_prefix_for(session), python)
    except BaseException:
        session.close()
        raise
    return session, facts


def service_for(session: SshSession, facts: BoardFacts) -> Service:
    state = facts.state or {}
    systemd = state.get("mode") == "systemd"
    return Service(session, Layout(check_prefix(facts.prefix, session.settings.label)),
                   systemd=systemd, sudo=systemd and not facts.root,
                   user=str(state.get("service_user") or facts.user))


__all__ = ["BoardDeploy", "DeployFailed", "HostSide", "Outcome", "RemoteError", "agent_address",
           "connect_and_probe", "default_prefix_for", "service_for"]
