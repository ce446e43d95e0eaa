"""``edgetune certs``: make the PKI (init, issue device/host), show a certificate, verify a PKI.

Also ``add_passphrase_flag(parser)`` (``certs`` errors become the CLI's exit codes through
``edgetune.host.errors.cert_errors``; a host loads its own identity with
``edgetune.host.target.load_host_identity``).
Nothing heavy at import time: ``certs`` (cryptography) loads when a command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from edgetune.host.errors import AuthError, ExitStatus, UsageError, cert_errors

if TYPE_CHECKING:  # pragma: no cover
    from edgetune.certs import CertInfo

KEY_TYPES = ("rsa3072", "rsa4096", "ecdsa-p256")    # = certs.KEY_TYPES, without importing it
CIPHERS = ("aes256", "aes128")
PASSPHRASE_HELP = (
    "read the key passphrase from the first line of FILE. Without it: $EDGETUNE_PASSPHRASE, "
    "else a prompt (twice when a new key is written). One passphrase protects the CA key and "
    "every leaf key; new keys need at least 8 characters. Never given on the command line.")


# --- helpers for other host commands ---------------------------------------------------------

def add_passphrase_flag(parser: argparse.ArgumentParser) -> None:
    """Add ``--passphrase-file FILE`` (dest ``passphrase_file``, a Path or None)."""
    parser.add_argument("--passphrase-file", type=Path, metavar="FILE", help=PASSPHRASE_HELP)


def _interactive() -> bool:
    return sys.stdin is not None and sys.stdin.isatty()


def passphrase_from_args(passphrase_file: Optional[Path], *, confirm: bool) -> bytes:
    """The passphrase from ``--passphrase-file``, ``$EDGETUNE_PASSPHRASE`` or a prompt."""
    from edgetune.certs.passphrase import resolve_passphrase

    with cert_errors():
        return resolve_passphrase(passphrase_file, confirm=confirm, interactive=_interactive())


# --- settings --------------------------------------------------------------------------------

@dataclass(frozen=True)
class KeySettings:
    directory: Path
    key_type: str = "rsa3072"
    days: int = 365
    cipher: str = "aes256"
    force: bool = False
    passphrase_file: Optional[Path] = None


@dataclass(frozen=True)
class InitSettings:
    keys: KeySettings
    subject: str = "/CN=edgetune CA"


@dataclass(frozen=True)
class IssueSettings:
    keys: KeySettings
    profile: str                      # "device" or "host"
    name: str
    ips: Tuple[str, ...] = ()
    dns: Tuple[str, ...] = ()


def _key_settings(args: argparse.Namespace) -> KeySettings:
    if args.days < 1:
        raise UsageError(f"--days {args.days}: give a positive number of days")
    return KeySettings(directory=args.dir, key_type=args.key_type, days=args.days,
                       cipher=args.cipher, force=args.force, passphrase_file=args.passphrase_file)


# --- parser ----------------------------------------------------------------------------------

def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    certs = subparsers.add_parser(
        "certs", help="make and check the PKI for mutual TLS (CA, board and host certificates)",
        description="Make the PKI that mutual TLS between this PC and the boards needs: a CA, a "
                    "server certificate per board (device) and a client certificate per PC "
                    "(host). Keys are written encrypted (0600). The passphrase: --passphrase-file FILE, "
                    "else $EDGETUNE_PASSPHRASE, else a prompt (twice when a new key is written). "
                    "One passphrase protects the CA key and every leaf key; new keys need at least 8 "
                    "characters. Never given on the command line.")
    sub = certs.add_subparsers(dest="certs_command", metavar="SUBCOMMAND")
    certs.set_defaults(func=lambda args: _help(certs))

    init = sub.add_parser("init", help="create a CA: DIR/ca-cert.pem and DIR/ca-key.pem",
                          description="Create a CA in DIR: ca-cert.pem and the encrypted "
                                      "ca-key.pem (0600).")
    _add_key_options(init)
    init.add_argument("--subject", default="/CN=edgetune CA",
                      help="openssl-style subject, e.g. /C=CN/ST=Guangdong/L=Shenzhen/O=Acme/OU=AI/"
                           "CN=Acme edge CA (default: %(default)s)")
    init.set_defaults(func=run_init)

    issue = sub.add_parser("issue", help="issue a board (device) or PC (host) certificate",
                           description="Issue a certificate signed by the CA in DIR.")
    kinds = issue.add_subparsers(dest="profile", metavar="device|host")
    issue.set_defaults(func=lambda args: _help(issue))
    device = kinds.add_parser(
        "device", help="a board's server certificate (serverAuth, SAN with its IPs/names)",
        description="Write DIR/NAME-cert.pem and DIR/NAME-key.pem for a board's agent: "
                    "serverAuth, with every --ip and --dns in its subjectAltName (the host "
                    "checks the address it dials against them).")
    host = kinds.add_parser(
        "host", help="a PC's client certificate (clientAuth)",
        description="Write DIR/NAME-cert.pem and DIR/NAME-key.pem for a PC: clientAuth.")
    for parser in (device, host):
        parser.add_argument("name", metavar="NAME",
                            help="the certificate's CN and file name: letters, digits, . _ -")
        parser.add_argument("--ip", action="append", default=[], metavar="IP",
                            help="an IP address for the subjectAltName (repeatable)")
        parser.add_argument("--dns", action="append", default=[], metavar="HOST",
                            help="a DNS name for the subjectAltName (repeatable)")
        _add_key_options(parser)
        parser.set_defaults(func=run_issue)

    show = sub.add_parser("show", help="print what a certificate says (and whether it expires)",
                          description="Print subject, issuer, SANs, usages, validity and "
                                      "fingerprint; warns within 30 days of expiry.")
    show.add_argument("file", type=Path, metavar="FILE")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(func=run_show)

    verify = sub.add_parser(
        "verify", help="check every certificate in a PKI directory",
        description="Check that each DIR/*-cert.pem is signed by DIR/ca-cert.pem, is in date, "
                    "and matches its *-key.pem. Exits non-zero when any check fails.")
    _add_dir(verify)
    add_passphrase_flag(verify)
    verify.add_argument("--json", action="store_true", help="print JSON")
    verify.set_defaults(func=run_verify)


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return int(ExitStatus.USAGE)


def _add_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", "--pki", dest="dir", type=Path, required=True, metavar="DIR",
                        help="the PKI directory")


def _add_key_options(parser: argparse.ArgumentParser) -> None:
    _add_dir(parser)
    parser.add_argument("--key-type", choices=KEY_TYPES, default="rsa3072",
                        help="default: %(default)s")
    parser.add_argument("--days", type=int, default=365, help="validity (default: %(default)s)")
    parser.add_argument("--cipher", choices=CIPHERS, default="aes256",
                        help="how the key file is encrypted (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="replace existing files")
    add_passphrase_flag(parser)
    parser.add_argument("--json", action="store_true", help="print JSON")


# --- commands --------------------------------------------------------------------------------

def run_init(args: argparse.Namespace) -> int:
    settings = InitSettings(keys=_key_settings(args), subject=args.subject)
    from edgetune.certs.describe import describe_certificate
    from edgetune.certs.files import cert_path, key_path, refuse_existing
    from edgetune.certs.pki import CertificateAuthority

    keys = settings.keys
    with cert_errors():
        # Fail on existing files before asking for a passphrase or generating a key.
        refuse_existing([cert_path(keys.directory, "ca"), key_path(keys.directory, "ca")], keys.force)
        passphrase = passphrase_from_args(keys.passphrase_file, confirm=True)
        ca = CertificateAuthority.create(settings.subject, key_type=keys.key_type, days=keys.days)
        cert_file, key_file = ca.write(keys.directory, passphrase, keys.cipher, force=keys.force)
    info = describe_certificate(ca.certificate)
    _report_written(args, cert_file, key_file, info, keys.cipher, [
        f"next: edgetune certs issue device BOARD --ip BOARD_IP --dir {keys.directory}",
        f"      edgetune certs issue host {_this_host()} --dir {keys.directory}",
    ])
    return int(ExitStatus.OK)


def run_issue(args: argparse.Namespace) -> int:
    settings = IssueSettings(keys=_key_settings(args), profile=args.profile, name=args.name,
                             ips=tuple(args.ip), dns=tuple(args.dns))
    from edgetune.certs.describe import describe_certificate
    from edgetune.certs.files import cert_path, key_path, read_file, refuse_existing
    from edgetune.certs.keys import is_encrypted_pem
    from edgetune.certs.names import check_leaf_name, parse_dns, parse_ips
    from edgetune.certs.pki import CertificateAuthority

    keys = settings.keys
    with cert_errors():
        check_leaf_name(settings.name)
        parse_ips(settings.ips)
        parse_dns(settings.dns)
        if settings.profile == "device" and not (settings.ips or settings.dns):
            raise UsageError("a device certificate needs at least one --ip (or --dns): the host "
                             "checks the board's address against it, e.g. --ip 192.168.1.20")
        refuse_existing([cert_path(keys.directory, settings.name),
                         key_path(keys.directory, settings.name)], keys.force)
        ca_key = read_file(key_path(keys.directory, "ca"), "CA key")
        # Decrypting the CA key proves the passphrase, so it is asked once; an unencrypted
        # (openssl -nodes) CA key means the new key's passphrase is new: ask twice.
        passphrase = passphrase_from_args(keys.passphrase_file,
                                          confirm=not is_encrypted_pem(ca_key))
        ca = CertificateAuthority.load(keys.directory, passphrase)
        issue = ca.issue_device if settings.profile == "device" else ca.issue_host
        leaf = issue(settings.name, ips=settings.ips, dns=settings.dns, days=keys.days,
                     key_type=keys.key_type)
        cert_file, key_file = leaf.write(keys.directory, passphrase, keys.cipher, force=keys.force)
    info = describe_certificate(leaf.certificate)
    if settings.profile == "device":
        hints = [f"copy {cert_path(keys.directory, 'ca').name}, {cert_file.name} and "
                 f"{key_file.name} to the board (scp will do) and start the agent there with "
                 f"`edgetune-agent serve --ca ... --cert {cert_file.name} --key {key_file.name}`"]
    else:
        hints = [f"use --pki {keys.directory} (ca-cert.pem, {cert_file.name}, {key_file.name}) "
                 "in this PC's edgetune.toml"]
    _report_written(args, cert_file, key_file, info, keys.cipher, hints)
    return int(ExitStatus.OK)


def _this_host() -> str:
    import re
    import socket

    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname().split(".")[0]).strip("-.")
    return name if name and name.lower() != "ca" else "laptop"


def _report_written(args: argparse.Namespace, cert_file: Path, key_file: Path, info: "CertInfo",
                    cipher: str, hints: List[str]) -> None:
    if args.json:
        print(json.dumps({"cert": str(cert_file), "key": str(key_file), "cipher": cipher,
                          "certificate": info.as_dict()}, indent=2))
        return
    print(f"wrote {cert_file}")
    print(f"wrote {key_file} (encrypted, {cipher}, mode 0600)")
    for line in _info_lines(info):
        print(f"  {line}")
    for hint in hints:
        print(hint)


def _info_lines(info: "CertInfo") -> List[str]:
    if info.eku is None:
        eku = "(none: any usage)"
    else:
        eku = ", ".join(info.eku) or "(empty)"
    days = info.days_left()
    return [
        f"subject      {info.subject}",
        f"issuer       {info.issuer}",
        f"SANs         {', '.join(info.sans) or '(none)'}",
        f"key usage    {', '.join(info.key_usage) or '(none)'}",
        f"ext. usage   {eku}",
        f"CA           {'yes' if info.is_ca else 'no'}",
        f"key          {info.key_type}",
        f"not before   {info.not_before.isoformat()}",
        f"not after    {info.not_after.isoformat()} ({days:.0f} days left)" if days >= 0 else
        f"not after    {info.not_after.isoformat()}",
        f"sha256       {info.fingerprint_sha256}",
    ]


def _expiry_message(info: "CertInfo") -> Optional[str]:
    status = info.status()
    if status == "expired":
        return f"EXPIRED on {info.not_after.isoformat()}: re-issue it (edgetune certs issue ... --force)"
    if status == "expiring":
        return (f"WARNING: expires in {info.days_left():.0f} days, on {info.not_after.isoformat()}: "
                "re-issue it soon (edgetune certs issue ... --force)")
    if status == "not yet valid":
        return f"NOT YET VALID: starts {info.not_before.isoformat()} (check this machine's clock)"
    return None


def run_show(args: argparse.Namespace) -> int:
    from edgetune.certs.describe import describe_certificate
    from edgetune.certs.files import parse_certs_pem, read_file

    with cert_errors():
        certificates = parse_certs_pem(read_file(args.file, "certificate"), str(args.file))
    infos = [describe_certificate(cert) for cert in certificates]
    if args.json:
        doc: Dict[str, Any] = {"file": str(args.file), "certificates": [
            dict(info.as_dict(), message=_expiry_message(info)) for info in infos]}
        print(json.dumps(doc, indent=2))
        return int(ExitStatus.OK)
    for index, info in enumerate(infos):
        title = f"{args.file}" + (f" [{index + 1}/{len(infos)}]" if len(infos) > 1 else "")
        print(title)
        for line in _info_lines(info):
            print(f"  {line}")
        message = _expiry_message(info)
        if message:
            print(message)
    return int(ExitStatus.OK)


def run_verify(args: argparse.Namespace) -> int:
    from edgetune.certs.verify import encrypted_keys, verify_pki

    with cert_errors():
        passphrase = (passphrase_from_args(args.passphrase_file, confirm=False)
                      if encrypted_keys(args.dir) else None)
        report = verify_pki(args.dir, passphrase)
    status = ExitStatus.OK if report.ok else ExitStatus.AUTH
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
        return int(status)
    print(f"PKI {report.directory}")
    width = max(len(check.name) for check in report.checks)
    for check in report.checks:
        print(f"  {'ok' if check.ok else 'FAILED':<6} {check.name:<{width}}  {check.cert.name}"
              + (f" + {check.key.name}" if check.key else ""))
        for problem in check.problems:
            print(f"         problem: {problem}")
        for warning in check.warnings:
            print(f"         warning: {warning}")
    for warning in report.warnings:
        print(f"  warning: {warning}")
    failed = report.failed
    if failed:
        raise AuthError(f"{len(failed)} of {len(report.checks)} certificates in {report.directory} "
                        f"failed: {', '.join(check.name for check in failed)}",
                        hint="see the problems above; re-issue a bad certificate with "
                             "edgetune certs issue ... --force")
    print(f"{len(report.checks)} certificates ok")
    return int(status)
