"""``edgetune-agent``: run the board agent, or check its configuration.

    edgetune-agent serve --config agent.toml
    edgetune-agent serve --listen 0.0.0.0:50051 --ca ca-cert.pem --cert board1-cert.pem \\
        --key board1-key.pem --passphrase-file pass.txt --store /var/lib/edgetune
    edgetune-agent check --config agent.toml      # validate, load the keys, print the plan
    edgetune-agent --version

Flags override agent.toml. ``main(argv=None)`` returns the exit status (testable in-process).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from edgetune.exitcodes import ExitStatus, help_table  # one table for both CLIs

log = logging.getLogger("edgetune.agent")


def _version() -> str:
    from edgetune.device.server import agent_version
    return agent_version()


class _VersionAction(argparse.Action):
    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        print(f"edgetune-agent {_version()} (Python {sys.version.split()[0]})")
        parser.exit()


def _add_settings(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="agent.toml; flags given here override it")
    parser.add_argument("--listen", metavar="HOST:PORT",
                        help="address to serve on (default 0.0.0.0:50051; port 0 picks a "
                             "free port, see --ready-file)")
    parser.add_argument("--ca", type=Path, metavar="FILE",
                        help="the CA certificate clients must chain to")
    parser.add_argument("--cert", type=Path, metavar="FILE", help="this board's certificate")
    parser.add_argument("--key", type=Path, metavar="FILE", help="this board's private key")
    parser.add_argument("--passphrase-file", type=Path, metavar="FILE",
                        help="first line is the key's passphrase (else EDGETUNE_PASSPHRASE, "
                             "else a prompt when run in a terminal)")
    parser.add_argument("--store", type=Path, metavar="DIR",
                        help="where models, datasets and jobs.db live (default ./edgetune-store)")
    parser.add_argument("--ready-file", type=Path, metavar="FILE",
                        help="written with the bound HOST:PORT once the agent is SERVING")
    parser.add_argument("--allowed-client", action="append", dest="allowed_clients",
                        metavar="NAME", help="certificate name allowed to call (repeatable; "
                                             "default: any certificate of the CA)")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                        help="default info")
    parser.add_argument("--sysfs-root", type=Path, metavar="DIR",
                        help="where the board's CPU frequency and thermal zones are read "
                             "(default /sys; a test points it at a fake tree)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgetune-agent",
        description="The edgetune board agent: stores models and datasets, benchmarks and\n"
                    "evaluates them with onnxruntime, over mutual TLS only.",
        epilog=help_table(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser("serve", help="run the agent until SIGTERM or Ctrl-C")
    _add_settings(serve)
    check = sub.add_parser("check", help="validate the config, load the credentials, and print "
                                         "what would be served")
    _add_settings(check)
    check.add_argument("--json", action="store_true", help="print JSON")
    return parser


def _config(args: argparse.Namespace) -> Any:
    from edgetune.device.config import build_config
    overrides = {k: getattr(args, k) for k in (
        "listen", "ca", "cert", "key", "passphrase_file", "store", "ready_file",
        "allowed_clients", "log_level", "sysfs_root")}
    return build_config(args.config, overrides)


def check_key_file(config: Any) -> None:
    """Refuse a private key file that other users may read or write (as OpenSSH refuses an
    unprotected identity file): ConfigError, unless agent.toml says
    ``allow_readable_key = true``, which logs a warning instead."""
    import stat

    from edgetune.device.config import ConfigError
    try:
        mode = stat.S_IMODE(os.stat(config.key).st_mode)
    except OSError:
        return                      # the identity loader says what is wrong with the path
    if not mode & 0o077:
        return
    what = (f"the private key file {config.key} has mode {mode:04o}: other users of this board "
            "can read it")
    if config.allow_readable_key:
        log.warning("%s; serving anyway (allow_readable_key = true in agent.toml)", what)
        return
    raise ConfigError(f"{what}; run `chmod 600 {config.key}` (or set allow_readable_key = true "
                      "in agent.toml to serve anyway)")


def load_identity(config: Any) -> Any:
    """Load CA, certificate and key with the one identity loader both sides use (the
    passphrase asked only if the key is encrypted); refuse a certificate that cannot serve
    TLS (no serverAuth usage) or has no name."""
    from edgetune.certs.identity import open_identity
    return open_identity(config.ca, config.cert, config.key, config.passphrase_file,
                         usage="serverAuth", require_name=True)


def _drop_stale_ready_file(path: Optional[Path]) -> None:
    """Remove a ready file an earlier run left (a crash cannot remove it) as early as
    possible, before the passphrase prompt and the slow imports: a script waiting for the file
    must not read the old address. ``AgentServer.start`` checks again and fails if it stays."""
    if path is not None:
        try:
            os.unlink(path)
            log.info("removed the ready file %s left by an earlier run", path)
        except OSError:
            pass


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("grpc").setLevel(max(logging.WARNING, getattr(logging, level.upper())))


def _describe(config: Any, identity: Any) -> Dict[str, Any]:
    import edgetune.certs
    info = edgetune.certs.describe_certificate(identity.cert_pem)
    d = config.describe()
    d["identity"] = {"common_name": identity.common_name,
                     "sans": [str(s) for s in getattr(info, "sans", ())],
                     "not_after": str(getattr(info, "not_after", ""))}
    return d


def _run(args: argparse.Namespace) -> int:
    config = _config(args)
    if args.command == "serve":
        _setup_logging(config.log_level)
        _drop_stale_ready_file(config.ready_file)
        os.umask(0o077)             # what the agent creates is its own (device.safefs)
    check_key_file(config)
    identity = load_identity(config)
    if args.command == "check":
        d = _describe(config, identity)
        if args.json:
            print(json.dumps(d, indent=2))
        else:
            print(f"config ok: would serve {d['identity']['common_name']!r} on {config.listen}")
            for key, value in d.items():
                if key != "identity":
                    if value is None:
                        value = "(none, flags only)" if key == "config" else "(none)"
                    print(f"  {key}: {value}")
            print(f"  certificate: {d['identity']}")
        return ExitStatus.OK
    from edgetune.device.server import describe_platform, serve
    log.info("edgetune-agent %s on %s", _version(), describe_platform())
    asyncio.run(serve(config, identity))
    return ExitStatus.OK


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(sys.stderr)
        return ExitStatus.USAGE
    from edgetune.certs.errors import CertError, CertFileNotFoundError
    from edgetune.device.config import ConfigError
    from edgetune.device.server import ServerError
    # Exit codes come with the errors (edgetune.exitcodes: the same as edgetune's).
    try:
        return int(_run(args))
    except ConfigError as exc:
        print(f"edgetune-agent: config error: {exc}", file=sys.stderr)
        return int(exc.exit_status)
    except CertFileNotFoundError as exc:
        print(f"edgetune-agent: {exc}", file=sys.stderr)
        return int(exc.exit_status)
    except CertError as exc:
        print(f"edgetune-agent: certificate error: {exc}", file=sys.stderr)
        return int(exc.exit_status)
    except ServerError as exc:
        print(f"edgetune-agent: {exc}", file=sys.stderr)
        return ExitStatus.ERROR
    except KeyboardInterrupt:
        print("edgetune-agent: interrupted", file=sys.stderr)
        return ExitStatus.INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
