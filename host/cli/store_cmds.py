"""``edgetune models`` and ``edgetune datasets``: list, upload and remove the blobs stored on a
board (through ``edgetune.host.board.BoardSession``).
"""

from __future__ import annotations

import argparse
import sys

from edgetune.host.cli.common import add_connection_flags, add_json_flag
from edgetune.host.errors import NotFoundError, UsageError
from edgetune.host.target import open_session, resolve_target
from edgetune.protos.messages import BlobKind


def cmd_blobs(args: argparse.Namespace) -> int:
    from edgetune.host import render
    from edgetune.host.board import HEX, BlobRef

    kind = BlobKind(args.blob_kind)
    action = args.blob_action
    if action == "upload":
        files = [BlobRef.parse(f, kind) for f in args.files]
        if any(ref.path is None for ref in files):
            bad = next(ref.text for ref in files if ref.path is None)
            raise NotFoundError(f"{bad} is not a file")
    elif action == "rm":
        refs = [BlobRef(text=s, kind=kind, sha256=s.lower()) for s in args.shas]
        for ref in refs:
            if not HEX.match(ref.sha256):
                raise UsageError(f"{ref.text} is not a sha256 (or a prefix of 6+ hex digits)")
    target = resolve_target(args)
    with open_session(args, target) as board:
        if action == "list":
            blobs = board.list_blobs(kind)
            if args.json:
                render.print_json({f"{kind.value}s": [b.as_dict() for b in blobs]})
            else:
                render.stdout_console().print(render.blobs_table(kind.value, blobs))
            return 0
        if action == "upload":
            uploads = []
            with render.ProgressView.auto(quiet=args.json) as view:
                for ref in files:
                    name = args.name if args.name and len(files) == 1 else None
                    assert ref.path is not None
                    outcome = board.upload(ref.path, kind, name=name, view=view)
                    entry = {"file": ref.text, **outcome.blob.as_dict(),
                             "sent_bytes": outcome.sent_bytes,
                             "already_present": outcome.already_present,
                             "resumed_from": outcome.resumed_from}
                    if name is not None and outcome.already_present \
                            and outcome.blob.name != name:
                        entry["note"] = (f"already stored on the board as "
                                         f"{outcome.blob.name or '(no name)'!r}; the name "
                                         f"{name!r} was not applied (the stored name stays)")
                    uploads.append(entry)
            if args.json:
                render.print_json({"uploads": uploads})
            else:
                for u in uploads:
                    print(f"{u['sha256']}  {u['file']}")
                    if u.get("note"):
                        print(f"edgetune: note: {u['file']}: {u['note']}", file=sys.stderr)
            return 0
        deleted = []
        with render.ProgressView("off") as view:
            for ref in refs:
                sha = board.resolve(ref, view)
                board.delete_blob(kind, sha)
                deleted.append(sha)
    if args.json:
        render.print_json({"deleted": deleted})
    else:
        for sha in deleted:
            print(f"deleted {kind.value} {sha}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    for kind in BlobKind:
        group = sub.add_parser(f"{kind.value}s", help=f"list, upload or remove {kind.value}s "
                                                      "stored on a board")
        actions = group.add_subparsers(dest="blob_action", metavar="ACTION", required=True)
        p = actions.add_parser("list", help=f"the {kind.value}s on the board")
        p.set_defaults(blob_kind=kind.value)
        a = actions.add_parser("upload", help="send files (skipped when stored, resumed when partial)")
        a.add_argument("files", nargs="+", metavar="FILE")
        a.add_argument("--name", help="a label for the board's listing (default: the file name)")
        r = actions.add_parser("rm", help=f"delete {kind.value}s by sha256 (or a unique prefix)")
        r.add_argument("shas", nargs="+", metavar="SHA")
        for each in (p, a, r):
            each.set_defaults(func=cmd_blobs, blob_kind=kind.value)
            add_connection_flags(each)
            add_json_flag(each)
