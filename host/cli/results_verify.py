"""``edgetune results verify ID | --file EXPORTED.json [--ca CA_CERT] [--json]``.

Checks the boards' signatures of result records (``edgetune.host.results.verify``): one record
of the results database, or every record of a ``results export --format json`` file, against
the CA (``--ca``, else ``[host] ca`` of edgetune.toml). Prints one line per record (valid,
unsigned, or FAILED naming the field); exits 0 when none failed (unsigned records do not
fail), 6 (auth) when any signature or signed field does not check out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, List

from edgetune.exitcodes import ExitStatus
from edgetune.host.errors import BadInputError, UsageError, cert_errors


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("id", nargs="?", metavar="ID", help="a result id (or unique prefix) in the "
                   "results database")
    p.add_argument("--file", type=Path, metavar="EXPORTED.json",
                   help="verify every record of a `results export --format json` file instead")
    p.add_argument("--ca", type=Path, metavar="CA_CERT",
                   help="the CA certificate the boards' certificates must chain to (default: "
                        "[host] ca in edgetune.toml)")


def _ca_path(args: argparse.Namespace) -> Path:
    if args.ca is not None:
        return args.ca
    from edgetune.host.inventory import find_config, load_inventory

    path = find_config(getattr(args, "inventory", None))
    inventory = load_inventory(path) if path is not None else None
    if inventory is None or inventory.host is None:
        raise UsageError("no CA certificate to verify against",
                         hint="pass --ca CA_CERT (the ca-cert.pem of the PKI that issued the "
                              "boards' certificates), or set [host] ca in edgetune.toml")
    return inventory.host.ca


def load_cas(path: Path) -> List[Any]:
    from edgetune.certs.files import read_file
    from edgetune.certs.signing import load_cas as parse

    with cert_errors():
        return parse(read_file(path, "CA certificate"), str(path))


def records_of_file(path: Path) -> List[Any]:
    """The records of an exported JSON file; BadInputError naming what is wrong."""
    from edgetune.host.results.records import Record

    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        from edgetune.host.errors import NotFoundError
        raise NotFoundError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BadInputError(f"{path} is not a JSON file: {exc}",
                            hint="make it with `edgetune results export --format json -o FILE`"
                            ) from None
    entries = doc.get("results") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise BadInputError(f"{path} holds no \"results\" list",
                            hint="make it with `edgetune results export --format json -o FILE`")
    records = []
    for index, entry in enumerate(entries):
        try:
            records.append(Record.from_json(entry))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            ident = entry.get("id") if isinstance(entry, dict) else None
            raise BadInputError(f"{path}: record {ident or f'#{index + 1}'} cannot be read: "
                                f"{exc}") from None
    return records


def cmd_verify(args: argparse.Namespace) -> int:
    from edgetune.host import render
    from edgetune.host.results.verify import INVALID, UNSIGNED, verify_record

    if (args.id is None) == (args.file is None):
        raise UsageError("results verify takes a result ID or --file EXPORTED.json (one of them)")
    ca = _ca_path(args)
    cas = load_cas(ca)
    if args.file is not None:
        records = records_of_file(args.file)
        source = str(args.file)
    else:
        from edgetune.host.cli.results_cmd import open_store
        with open_store(args) as store:
            records = [store.get(args.id)]
            source = store.where
    verdicts = [verify_record(r, cas) for r in records]
    failed = [v for v in verdicts if v.status == INVALID]
    unsigned = [v for v in verdicts if v.status == UNSIGNED]
    if args.json:
        render.print_json({"ca": str(ca), "source": source, "ok": not failed,
                           "verified": len(verdicts) - len(failed) - len(unsigned),
                           "unsigned": len(unsigned), "failed": len(failed),
                           "results": [v.as_json() for v in verdicts]})
    else:
        for verdict in verdicts:
            print(verdict.describe())
        print(f"{len(verdicts) - len(failed) - len(unsigned)} valid, {len(unsigned)} unsigned, "
              f"{len(failed)} failed (CA {ca})", file=sys.stderr)
    if failed:
        if not args.json:
            print("edgetune: verification failed for result"
                  f"{'s' if len(failed) > 1 else ''} {', '.join(v.record_id for v in failed)}",
                  file=sys.stderr)
        return int(ExitStatus.AUTH)
    return 0


__all__ = ["arguments", "cmd_verify", "load_cas", "records_of_file"]
