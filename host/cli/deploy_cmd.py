"""``edgetune deploy``: take a board from "reachable over SSH" to "serving over mutual TLS and
listed in edgetune.toml", in one command, again and again (nothing changed: "up to date").

    edgetune deploy NAME --ssh USER@HOST[:PORT] [--identity KEY] [--accept-new]
                    [--wheelhouse DIR] [--prefix DIR] [--listen ADDR:PORT] [--tag T]...
                    [--pki DIR | --cert F --key F] [--known-hosts FILE] [--json]
    edgetune deploy NAME                         again, the way edgetune.toml remembers
    edgetune deploy --devices SEL                several boards at once, one line each
    edgetune deploy status NAME|--devices SEL [--json]
    edgetune deploy upgrade NAME|--devices SEL [--wheelhouse DIR]
    edgetune deploy logs NAME [-n LINES]
    edgetune deploy remove NAME [--purge]

SSH: host keys are checked against ~/.ssh/known_hosts and --known-hosts FILE; an unknown host
is refused unless --accept-new; a changed key always. Keys from --identity, ssh-agent or the
default files; a password or key passphrase only from a prompt or $EDGETUNE_SSH_PASSWORD.
~/.ssh/config is honoured (HostName, Port, User, IdentityFile, ProxyJump). See docs/deploy.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from edgetune.host.errors import EdgetuneError, ExitStatus, NotFoundError, UsageError
from edgetune.host.inventory import CONFIG_NAME, Device, Inventory, find_config, load_inventory

ACTIONS = ("status", "upgrade", "logs", "remove")
MAX_PARALLEL = 16


# ------------------------------------------------------------------------ flags -> settings

@dataclass(frozen=True)
class Request:
    """What the command line asks, before any board is reached."""

    action: str                      # "deploy" or one of ACTIONS
    names: Tuple[str, ...]
    inventory_path: Path
    inventory: Optional[Inventory]


def _words(args: argparse.Namespace) -> Tuple[str, Optional[str]]:
    words = list(args.words)
    action = "deploy"
    if words and words[0] in ACTIONS:
        action = words.pop(0)
    if len(words) > 1:
        raise UsageError(f"deploy {action}: one NAME at a time (got {' '.join(words)})",
                         hint="several boards: --devices NAME,NAME or a selector")
    return action, (words[0] if words else None)


def _check_flags(action: str, args: argparse.Namespace) -> None:
    if args.purge and action != "remove":
        raise UsageError("--purge goes with `deploy remove`")
    if args.lines is not None and action != "logs":
        raise UsageError("-n/--lines goes with `deploy logs`")
    if args.lines is not None and args.lines < 1:
        raise UsageError(f"-n {args.lines}: give a positive number of lines")
    if action in ("logs", "remove") and args.devices:
        raise UsageError(f"deploy {action} takes one NAME, not --devices")
    if args.timeout <= 0:
        raise UsageError(f"--timeout must be a positive number of seconds (got {args.timeout})")


def _request(args: argparse.Namespace) -> Request:
    action, name = _words(args)
    _check_flags(action, args)
    if name and args.devices:
        raise UsageError("pass NAME or --devices SEL, not both")
    if not name and not args.devices:
        raise UsageError(f"which board? edgetune deploy {'' if action == 'deploy' else action + ' '}"
                         "NAME" + (" --ssh USER@HOST" if action == "deploy" else ""))
    found = args.inventory if args.inventory is not None else find_config(None)
    path = Path(found) if found is not None else Path(CONFIG_NAME)
    inventory = load_inventory(path) if path.is_file() else None
    if args.devices:
        if inventory is None:
            raise NotFoundError(f"--devices selects boards from edgetune.toml, and there is "
                                f"none ({path})")
        from edgetune.host.fleet.selectors import Selector, select

        chosen, _ = select(inventory, Selector.parse(args.devices))
        names = tuple(d.name for d in chosen)
        if args.ssh:
            raise UsageError("--ssh names one board; with --devices each board's SSH target "
                             "comes from edgetune.toml")
    else:
        names = (str(name),)
    return Request(action, names, path, inventory)


def _recorded(inventory: Optional[Inventory], name: str) -> Tuple[Optional[Device], Dict[str, str]]:
    if inventory is None:
        return None, {}
    for device in inventory.devices:
        if device.name == name:
            return device, dict(device.deploy)
    return None, {}


def _ssh_settings(args: argparse.Namespace, name: str, record: Dict[str, str]) -> Any:
    from edgetune.host.deploy.settings import SshSpec, resolve_ssh

    spec_text = args.ssh or record.get("ssh")
    if not spec_text:
        raise UsageError(f"how is {name} reached? pass --ssh USER@HOST[:PORT]",
                         hint=f"edgetune.toml remembers it after the first deploy of {name}")
    identity = args.identity or (Path(record["identity"]) if record.get("identity") else None)
    known = args.known_hosts or (Path(record["known_hosts"]) if record.get("known_hosts") else None)
    return resolve_ssh(SshSpec.parse(spec_text), identity=identity, known_hosts=known,
                       accept_new=args.accept_new, config_file=args.ssh_config,
                       connect_timeout_s=min(30.0, args.timeout))


def _host_side(args: argparse.Namespace, inventory: Optional[Inventory]) -> Any:
    """This PC's identity (health checks) and the CA folder, when its key is here."""
    from edgetune.host.deploy.steps import HostSide
    from edgetune.host.inventory import HostIdentityFiles
    from edgetune.host.target import _default_identity, load_identity_files

    pki = args.pki or (inventory.host.pki if inventory and inventory.host else None)
    if pki is None and inventory is not None and inventory.host is not None and \
            (inventory.host.ca.parent / "ca-key.pem").is_file():
        pki = inventory.host.ca.parent
    if inventory is not None and inventory.host is not None:
        files = inventory.host
        if args.passphrase_file and files.passphrase_file is None:
            files = HostIdentityFiles(files.ca, files.cert, files.key, args.passphrase_file,
                                      files.pki)
    elif args.pki is not None:
        ident = _default_identity(args.pki)
        files = HostIdentityFiles(ca=args.pki / "ca-cert.pem", cert=args.pki / f"{ident}-cert.pem",
                                  key=args.pki / f"{ident}-key.pem",
                                  passphrase_file=args.passphrase_file, pki=args.pki)
    else:
        raise UsageError("which certificates? this PC needs its own (to check the agent over "
                         "mutual TLS) and a CA to issue the board's",
                         hint="pass --pki DIR (the folder `edgetune certs init` made, with a "
                              "host certificate), or add [host] to edgetune.toml")
    for what, path in (("CA certificate", files.ca), ("certificate", files.cert),
                       ("key", files.key)):
        if not Path(path).is_file():
            raise NotFoundError(f"this PC's {what} {path} does not exist",
                                hint="make it with `edgetune certs issue host NAME --pki DIR`")
    return HostSide(files=files, identity=load_identity_files(files),
                    pki=Path(pki) if pki else None)


def _deploy_settings(args: argparse.Namespace, request: Request, name: str) -> Any:
    from edgetune.host.deploy.settings import DeploySettings, listen_port

    device, record = _recorded(request.inventory, name)
    listen = args.listen or record.get("listen") or "0.0.0.0:50051"
    listen_port(listen)
    address = args.address
    if address is None and device is not None and not args.ssh:
        address = device.address
    return DeploySettings(
        name=name, ssh=_ssh_settings(args, name, record), inventory=request.inventory_path,
        prefix=args.prefix or record.get("prefix"), listen=listen, address=address,
        tags=tuple(args.tag or ()),
        wheelhouse=args.wheelhouse or (Path(record["wheelhouse"]) if record.get("wheelhouse")
                                       else None),
        pki=args.pki, device_cert=args.cert, device_key=args.key,
        passphrase_file=args.passphrase_file,
        onnxruntime=args.onnxruntime or record.get("onnxruntime") or "auto",
        service_user=args.service_user or record.get("service_user") or None,
        timeout_s=args.timeout, allowed_clients=tuple(args.allow_client or ()),
        python=args.python or record.get("python") or "python3")


# ------------------------------------------------------------------------ running

def _say_for(args: argparse.Namespace, quiet: bool) -> Callable[[str], None]:
    import logging

    if quiet:
        log = logging.getLogger("edgetune.host.deploy")
        return lambda line: log.info("%s", line)
    stream = sys.stderr if args.json else sys.stdout
    return lambda line: print(line, file=stream, flush=True)


def _many(names: Tuple[str, ...], work: Callable[[str], Dict[str, Any]]
          ) -> List[Tuple[str, Optional[Dict[str, Any]], Optional[EdgetuneError]]]:
    """``work`` for every board at once; a board's failure stays its own."""
    def one(name: str) -> Tuple[str, Optional[Dict[str, Any]], Optional[EdgetuneError]]:
        try:
            return name, work(name), None
        except EdgetuneError as exc:
            return name, None, exc
        except Exception as exc:   # a board's surprise must not take the others down
            return name, None, EdgetuneError(f"{type(exc).__name__}: {exc}")
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, max(1, len(names)))) as pool:
        return list(pool.map(one, names))


def _finish_many(args: argparse.Namespace, results: List[Tuple[str, Any, Any]],
                 line: Callable[[str, Dict[str, Any]], str]) -> int:
    failed = [(n, e) for n, _, e in results if e is not None]
    if args.json:
        print(json.dumps({"devices": [
            r if e is None else {"device": n, "error": {"type": type(e).__name__,
                                                        "message": e.message, "hint": e.hint,
                                                        "exit_status": int(e.exit_status)}}
            for n, r, e in results]}, indent=2))
    else:
        for name, result, error in results:
            if error is None:
                print(line(name, result))
            else:
                first = error.message.splitlines()[0]
                print(f"{name:<16} FAILED  {first}")
    if not failed:
        return int(ExitStatus.OK)
    if len(failed) == 1 and len(results) == 1:
        raise failed[0][1]
    return int(max(int(e.exit_status) for _, e in failed))


def cmd_deploy(args: argparse.Namespace) -> int:
    request = _request(args)
    if request.action == "status":
        return _status(args, request)
    if request.action == "logs":
        return _logs(args, request)
    if request.action == "remove":
        return _remove(args, request)
    from edgetune.host.deploy.steps import BoardDeploy

    host = _host_side(args, request.inventory)
    fleet = len(request.names) > 1 or bool(args.devices)
    say = _say_for(args, quiet=fleet)
    upgrade = request.action == "upgrade"

    def work(name: str) -> Dict[str, Any]:
        settings = _deploy_settings(args, request, name)
        return BoardDeploy(settings, host, say).run(upgrade_only=upgrade).as_json()

    if fleet:
        return _finish_many(args, _many(request.names, work), _deploy_line)
    started = time.monotonic()
    if args.json or not sys.stdout.isatty():
        result = work(request.names[0])
    else:
        with _upload_bars() as progress:
            name = request.names[0]
            result = BoardDeploy(_deploy_settings(args, request, name), host, say,
                                 progress).run(upgrade_only=upgrade).as_json()
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['device']}: {result['action']} (edgetune {result['version']}, "
          f"{result['mode']}) at {result['address']} in {time.monotonic() - started:.1f} s")
    _print_info(result["device"], result["address"], host.identity)
    return 0


@contextlib.contextmanager
def _upload_bars() -> Iterator[Callable[[str, int, int], None]]:
    """A bar per wheel while the wheelhouse goes to the board (a terminal only)."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    tasks: Dict[str, Any] = {}
    with Progress("{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  transient=True) as progress:
        def update(wheel: str, done: int, total: int) -> None:
            if wheel not in tasks:
                tasks[wheel] = progress.add_task(f"upload {wheel}", total=total)
            progress.update(tasks[wheel], completed=done)
        yield update


def _deploy_line(name: str, r: Dict[str, Any]) -> str:
    return (f"{name:<16} {r['action']:<10} edgetune {r['version']:<8} {r['mode']:<9} "
            f"{r['address']}  {r.get('seconds', 0):.1f} s")


def _print_info(name: str, address: str, identity: Any) -> None:
    """The `edgetune info --device NAME` summary of the agent just deployed."""
    from edgetune.host import render
    from edgetune.host.client import AgentClient, ClientSettings

    with AgentClient(address, identity, settings=ClientSettings(timeout_s=30.0,
                                                                connect_timeout_s=10.0)) as client:
        info = client.info()
    render.stdout_console().print(render.info_table({"device": name, "address": address,
                                                     **info.as_dict()}))
    print(f"next: edgetune info --device {name}; edgetune bench --device {name} MODEL.onnx")


def _status(args: argparse.Namespace, request: Request) -> int:
    from edgetune.host.deploy.actions import status

    host = _host_side(args, request.inventory)
    fleet = len(request.names) > 1 or bool(args.devices)
    say = _say_for(args, quiet=True)

    def work(name: str) -> Dict[str, Any]:
        return status(_deploy_settings(args, request, name), host.identity, say)

    results = _many(request.names, work)
    if not fleet and results[0][2] is None and not args.json:
        doc = results[0][1]
        for key in ("device", "ssh", "prefix", "installed", "previous", "mode", "running",
                    "health", "address"):
            print(f"{key:<10} {doc[key]}")
        board = doc["board"]
        print(f"{'board':<10} {board['arch']}, {board['os']}, {board['libc']}, "
              f"Python {board['python']}, {board['free_mb']} MiB free")
        return 0 if doc["health"] == "SERVING" else int(ExitStatus.UNREACHABLE)
    code = _finish_many(args, results, _status_line)
    down = [r for _, r, e in results if e is None and r["health"] != "SERVING"]
    return code or (int(ExitStatus.UNREACHABLE) if down else 0)


def _status_line(name: str, r: Dict[str, Any]) -> str:
    return (f"{name:<16} {r['health']:<10} edgetune {r['installed'] or '-':<8} "
            f"{r['mode'] or '-':<9} {r['address']}  ({r['ssh']})")


def _logs(args: argparse.Namespace, request: Request) -> int:
    from edgetune.host.deploy.actions import logs

    name = request.names[0]
    lines = logs(_deploy_settings(args, request, name), args.lines or 50,
                 _say_for(args, quiet=False))
    if args.json:
        print(json.dumps({"device": name, "lines": lines}, indent=2))
    else:
        print("\n".join(lines))
    return 0


def _remove(args: argparse.Namespace, request: Request) -> int:
    from edgetune.host.deploy.actions import remove

    name = request.names[0]
    result = remove(_deploy_settings(args, request, name), args.purge,
                    _say_for(args, quiet=False))
    if args.purge and request.inventory is not None and name in {d.name for d in request.inventory.devices}:
        from edgetune.host.fleet.inventory_edit import remove_device
        remove_device(request.inventory_path, name)
        result["inventory"] = f"removed {name} from {request.inventory_path}"
    if args.json:
        print(json.dumps({"device": name, **result}, indent=2))
        return 0
    print(f"{name}: stopped and disabled the agent ({result['mode']}); removed "
          + ", ".join(result["removed"]))
    if result["kept"]:
        print("kept (remove them with --purge): " + ", ".join(result["kept"]))
    if result.get("inventory"):
        print(result["inventory"])
    return 0


# ------------------------------------------------------------------------ parser

def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("deploy", help="install, start and check the agent on boards over SSH",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("words", nargs="*", metavar="[ACTION] NAME",
                   help="NAME to deploy, or one of status|upgrade|logs|remove and NAME")
    p.add_argument("--devices", metavar="SEL",
                   help="several boards of edgetune.toml at once (names, tag:T, ...; see "
                        "`edgetune fleet --help`)")
    ssh = p.add_argument_group("SSH")
    ssh.add_argument("--ssh", metavar="USER@HOST[:PORT]",
                     help="how to reach the board (default: what edgetune.toml remembers)")
    ssh.add_argument("--identity", metavar="KEY", type=Path,
                     help="the SSH private key (default: ~/.ssh/config, ssh-agent, ~/.ssh/id_*)")
    ssh.add_argument("--known-hosts", metavar="FILE", type=Path,
                     help="a known_hosts file trusted beside ~/.ssh/known_hosts (and where "
                          "--accept-new records)")
    ssh.add_argument("--accept-new", action="store_true",
                     help="record the host key of a board never seen before (a changed key "
                          "is refused all the same)")
    ssh.add_argument("--ssh-config", metavar="FILE", type=Path,
                     help="an OpenSSH client config (default ~/.ssh/config)")
    install = p.add_argument_group("install")
    install.add_argument("--wheelhouse", metavar="DIR", type=Path,
                         help="the wheels to install (default: made here with pip for the "
                              "board's platform and Python, cached)")
    install.add_argument("--prefix", metavar="DIR",
                         help="where on the board (default /opt/edgetune as root, else "
                              "~/.local/share/edgetune)")
    install.add_argument("--listen", metavar="ADDR:PORT",
                         help="where the agent listens (default 0.0.0.0:50051)")
    install.add_argument("--address", metavar="HOST[:PORT]",
                         help="what this PC dials (default: the SSH host and the --listen port)")
    install.add_argument("--tag", action="append", metavar="T", help="a tag (repeatable)")
    install.add_argument("--onnxruntime", choices=("auto", "pypi", "board"),
                         help="the board's own onnxruntime when its python3 imports one "
                              "(auto, board), or PyPI's (default auto)")
    install.add_argument("--python", metavar="PYTHON",
                         help="the board's Python 3.9+ (default python3 on its PATH)")
    install.add_argument("--service-user", metavar="USER",
                         help="who runs the agent (default: 'edgetune', created, as root; "
                              "else the SSH user)")
    install.add_argument("--allow-client", action="append", metavar="NAME",
                         help="only these client certificate names may call (repeatable)")
    install.add_argument("--timeout", metavar="S", type=float, default=120.0,
                         help="how long to wait for the agent to serve (default 120 s)")
    certs = p.add_argument_group("certificates")
    certs.add_argument("--pki", metavar="DIR", type=Path,
                       help="the CA folder (`edgetune certs init`) to issue the board's "
                            "certificate from, with this PC's host certificate "
                            "(default: [host] in edgetune.toml)")
    certs.add_argument("--cert", metavar="FILE", type=Path,
                       help="the board's certificate, issued elsewhere (with --key)")
    certs.add_argument("--key", metavar="FILE", type=Path, help="the board's key (with --cert)")
    certs.add_argument("--passphrase-file", metavar="FILE", type=Path,
                       help="the passphrase of this PC's keys (CA, host, --key); else "
                            "$EDGETUNE_PASSPHRASE, else a prompt. Never on the command line")
    certs.add_argument("--inventory", metavar="FILE", type=Path,
                       help=f"the edgetune.toml to read and update (default: the one in use, "
                            f"else ./{CONFIG_NAME})")
    other = p.add_argument_group("logs and remove")
    other.add_argument("-n", "--lines", type=int, metavar="LINES",
                       help="logs: how many of the last lines (default 50)")
    other.add_argument("--purge", action="store_true",
                       help="remove: also the store, the certificates and the inventory entry")
    p.add_argument("--json", action="store_true",
                   help="print one JSON document on stdout instead of lines")
    p.set_defaults(func=cmd_deploy)
