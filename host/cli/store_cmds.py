"""``edgetune models`` and ``edgetune datasets``: list, upload and remove the blobs stored on a
board; and how the other commands name one (``BlobRef``), upload one (``upload_file``, with
a resume hint after Ctrl-C) or expand a hash prefix (``resolve_blob``).
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from edgetune.host.cli.common import add_connection_flags, add_json_flag, open_client, resolve_target
from edgetune.host.errors import NotFoundError, UsageError
from edgetune.protos.messages import BlobKind

HEX = re.compile(r"^[0-9a-f]{6,64}$")


@dataclass(frozen=True)
class BlobRef:
    """A model or dataset named on the command line: a local file, or a hash on the board."""

    text: str
    kind: BlobKind
    path: Optional[Path] = None
    sha256: str = ""                   # full or a prefix of at least 6 hex digits

    @classmethod
    def parse(cls, text: str, kind: BlobKind) -> "BlobRef":
        path = Path(text).expanduser()
        if path.is_file():
            return cls(text=text, kind=kind, path=path)
        if HEX.match(text.lower()):
            return cls(text=text, kind=kind, sha256=text.lower())
        raise NotFoundError(f"{text} is neither a file nor the sha256 of a {kind.value} on the "
                            "board", hint=f"check the path, or list the board's {kind.value}s "
                                          f"with `edgetune {kind.value}s list`")


def resolve_blob(client: Any, ref: BlobRef, view: Any) -> str:
    """The full sha256 of ``ref`` on the board: uploads a local file (dedup and resume are the
    client's), expands a hash prefix."""
    if ref.path is not None:
        return upload_file(client, ref.path, ref.kind, view).blob.sha256
    if len(ref.sha256) == 64:
        return ref.sha256
    matches = [b.sha256 for b in client.list_blobs(ref.kind) if b.sha256.startswith(ref.sha256)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise NotFoundError(f"no {ref.kind.value} on the board starts with {ref.sha256}",
                            hint=f"list them with `edgetune {ref.kind.value}s list`")
    raise UsageError(f"{ref.sha256} matches {len(matches)} {ref.kind.value}s on the board; "
                     "give more digits")


RESUME_HINT = "run the same command again to resume from the bytes the board kept"


def upload_file(client: Any, path: Path, kind: BlobKind, view: Any,
                name: Optional[str] = None) -> Any:
    """``client.upload`` with progress; after Ctrl-C, says how to resume (and re-raises)."""
    try:
        outcome = client.upload(path, kind, name=name,
                                progress=view.upload_callback(path.name, path.stat().st_size))
    except KeyboardInterrupt:
        view.__exit__(None, None, None)
        print(f"\nedgetune: upload of {path} interrupted; {RESUME_HINT}", file=sys.stderr)
        raise
    view.upload_done(path.name, outcome)
    return outcome


def cmd_blobs(args: argparse.Namespace) -> int:
    from edgetune.host import render

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
    with open_client(args, target) as client:
        if action == "list":
            blobs = client.list_blobs(kind)
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
                    outcome = upload_file(client, ref.path, kind, view, name=name)
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
                sha = resolve_blob(client, ref, view)
                client.delete_blob(kind, sha)
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
