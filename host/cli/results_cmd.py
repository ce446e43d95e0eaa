"""``edgetune results``: the measurements kept in the results database.

    edgetune results list [--kind K] [--model FILE|SHA] [--device NAME] [--label TEXT]
                          [--since DATE] [--limit N] [--json]
    edgetune results show ID [--json]
    edgetune results compare ID ID... [--json]
    edgetune results export [filters] --format csv|json|md [-o FILE]
    edgetune results report [filters] -o DIR [--force]
    edgetune results verify ID | --file EXPORTED.json [--ca CA_CERT] [--json]
    edgetune results rm ID...

Every subcommand takes ``--db URL`` (else $EDGETUNE_DB, ``[results] db`` in edgetune.toml,
``.edgetune/results.db`` beside it, or the user data directory) and ``--inventory FILE``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import sys
from pathlib import Path
from typing import Any, Optional

from edgetune.host.cli.common import DB_HELP, add_json_flag, check_count
from edgetune.host.errors import UsageError

KINDS = ("bench", "eval", "quantize", "compare", "demo")
FORMATS = ("csv", "json", "md")
_RELATIVE = re.compile(r"^(\d+)([mhdw])$")
_HEX = re.compile(r"^[0-9a-fA-F]{4,64}$")


def add_db_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("results database")
    group.add_argument("--db", metavar="URL", help=DB_HELP)
    group.add_argument("--inventory", metavar="FILE", type=Path,
                       help="the edgetune.toml whose results database to use")


def open_store(args: argparse.Namespace) -> Any:
    from edgetune.host.results.location import open_results_store
    return open_results_store(args.db, getattr(args, "inventory", None))


def parse_since(text: str, now: Optional[dt.datetime] = None) -> dt.datetime:
    """An ISO date or time (local time unless it names a zone), or an age: 30m, 12h, 3d, 2w."""
    now = now or dt.datetime.now(dt.timezone.utc)
    match = _RELATIVE.match(text.strip())
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        delta = {"m": dt.timedelta(minutes=amount), "h": dt.timedelta(hours=amount),
                 "d": dt.timedelta(days=amount), "w": dt.timedelta(weeks=amount)}[unit]
        return now - delta
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"--since {text!r} is neither a date nor an age",
                         hint="e.g. --since 2026-12-01, --since '2026-12-01 14:00' or "
                              "--since 3d (also 30m, 12h, 2w)") from None
    return when if when.tzinfo else when.astimezone()


def _model_filter(text: str) -> str:
    path = Path(text)
    if path.is_file():
        from edgetune.host.hashcache import file_sha256
        return file_sha256(path)[0]
    if _HEX.match(text):
        return text.lower()
    raise UsageError(f"--model {text!r} is neither a file nor a sha256 (prefix of 4+ hex digits)")


def build_filter(args: argparse.Namespace) -> Any:
    from edgetune.host.results.store import ResultFilter
    return ResultFilter(kind=args.kind, device=args.device, label=args.label,
                        model_sha256=_model_filter(args.model) if args.model else None,
                        since=parse_since(args.since) if args.since else None)


def cmd_list(args: argparse.Namespace) -> int:
    from edgetune.host import render
    from edgetune.host.results import view

    check_count("--limit", args.limit, minimum=1)
    where = build_filter(args)
    with open_store(args) as store:
        records = store.list(where, limit=args.limit)
        source = store.where
    if args.json:
        render.print_json({"results": [r.as_json(samples=False) for r in records]})
        return 0
    if not records:
        print(f"no results in {source} match", file=sys.stderr)
        return 0
    rows = [view.list_row(r) for r in records]
    if not sys.stdout.isatty():      # a pipe or a file gets plain lines: the Markdown table
        print(render.markdown_table(view.LIST_COLUMNS, rows))
        return 0
    render.stdout_console().print(render.plain_table(
        f"results ({source})", view.LIST_COLUMNS, rows, right=("p50 ms", "top1")))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from edgetune.host import render

    with open_store(args) as store:
        record = store.get(args.id)
    doc = record.as_json()
    if args.json:
        render.print_json({"result": doc})
        return 0
    samples = doc.pop("samples_ms", None)
    rows = []
    for key, value in doc.items():
        if isinstance(value, dict):
            rows += [(f"{key}.{k}", _cell(v)) for k, v in value.items()]
        else:
            rows.append((key, _cell(value)))
    if samples is not None:
        rows.append(("samples_ms", f"{len(samples)} samples (--json prints them)"))
    render.stdout_console().print(render.plain_table(f"result {record.id}", ("field", "value"),
                                                     rows))
    return 0


def _cell(value: Any) -> str:
    from edgetune.host import render
    if value is None:
        return "-"
    return render.json_text(value) if isinstance(value, (dict, list)) else str(value)


def cmd_compare(args: argparse.Namespace) -> int:
    from edgetune.host import render
    from edgetune.host.results import view

    if len(args.ids) < 2:
        raise UsageError("results compare needs two or more result ids",
                         hint="see `edgetune results list`")
    with open_store(args) as store:
        records = [store.get(i, samples=False) for i in args.ids]
    if args.json:
        render.print_json(view.compare_json(records))
        return 0
    columns, rows = view.compare_table(records)
    print(render.markdown_table(columns, rows))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from edgetune.host.results import view

    check_count("--limit", args.limit, minimum=1)
    where = build_filter(args)
    with open_store(args) as store:
        records = store.list(where, limit=args.limit, newest_first=False)
        if args.format == "json":      # the full records, raw samples included
            records = [store.get(r.id) for r in records]
    text = view.EXPORTERS[args.format](records)
    if args.output is None or str(args.output) == "-":
        sys.stdout.write(text)
        return 0
    _write_atomically(args.output, text)
    print(f"wrote {len(records)} results to {args.output}", file=sys.stderr)
    return 0


def _write_atomically(path: Path, text: str) -> None:
    import tempfile
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cmd_report(args: argparse.Namespace) -> int:
    """DIR/report.md with its plots (edgetune.host.results.report)."""
    from edgetune.host.results import report

    report.check_output_dir(args.output, args.force)
    if not args.no_plots:
        from edgetune.host.results.report_plots import pyplot
        pyplot()                          # matplotlib missing: say so before any work
    where = build_filter(args)
    with open_store(args) as store:
        records = store.list(where, limit=None, newest_first=False)
        samples = store.samples_for([r.id for r in records if r.kind == "bench"])
    selection = " ".join(f"--{k} {getattr(args, k)}" for k in
                         ("kind", "model", "device", "label", "since") if getattr(args, k))
    built = report.build_report(records, samples, selection=selection)
    files = report.write_report(built, args.output, force=args.force, plots=not args.no_plots)
    if args.json:
        from edgetune.host import render
        render.print_json({"report": str(files[-1]), "files": [str(f) for f in files],
                           "results": len(records)})
    else:
        print(f"wrote {args.output / report.REPORT_NAME} ({len(records)} results, "
              f"{len(files) - 1} plots)", file=sys.stderr)
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    from edgetune.host import render

    with open_store(args) as store:
        removed = store.delete(args.ids)
    if args.json:
        render.print_json({"deleted": removed})
    else:
        for record_id in removed:
            print(f"deleted result {record_id}")
    return 0


def _filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kind", choices=KINDS, help="only results of this kind")
    p.add_argument("--model", metavar="FILE|SHA", help="only results of this model (a file, "
                   "or its sha256 or a prefix of 4+ hex digits)")
    p.add_argument("--device", metavar="NAME", help="only results from this board")
    p.add_argument("--label", metavar="TEXT", help="only results with this label (* matches "
                   "anything)")
    p.add_argument("--since", metavar="DATE", help="only results since DATE (2026-12-01, "
                   "'2026-12-01 14:00') or within an age (30m, 12h, 3d, 2w)")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("results", help="the measurements kept in the results database",
                            description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="results_action", metavar="ACTION", required=True)

    def action(name: str, text: str, func: Any, *, json: bool = True) -> argparse.ArgumentParser:
        p = actions.add_parser(name, help=text)
        p.set_defaults(func=func)
        if json:
            add_json_flag(p)
        add_db_flags(p)
        return p

    p = action("list", "results, newest first", cmd_list)
    _filters(p)
    p.add_argument("--limit", type=int, default=50, metavar="N",
                   help="at most N results (default 50)")

    p = action("show", "one result, whole", cmd_show)
    p.add_argument("id", metavar="ID", help="a result id or any unique prefix of it")

    p = action("compare", "results side by side, with the change column", cmd_compare)
    p.add_argument("ids", nargs="+", metavar="ID", help="two or more result ids (prefixes)")

    p = action("export", "results as CSV, JSON or a Markdown table", cmd_export, json=False)
    _filters(p)
    p.add_argument("--limit", type=int, default=None, metavar="N", help="at most N results")
    p.add_argument("--format", choices=FORMATS, required=True)
    p.add_argument("-o", "--output", type=Path, metavar="FILE",
                   help="write here (atomically) instead of stdout")

    p = action("report", "a folder with report.md and PNG plots (matplotlib)", cmd_report)
    _filters(p)
    p.add_argument("-o", "--output", type=Path, metavar="DIR", required=True,
                   help="the folder to write (must not exist, or be empty)")
    p.add_argument("--force", action="store_true", help="write into a DIR that is not empty "
                   "(replacing report.md and its plots there)")
    p.add_argument("--no-plots", action="store_true", help="the Markdown only (no matplotlib)")

    p = action("rm", "remove results", cmd_rm)
    p.add_argument("ids", nargs="+", metavar="ID", help="result ids (prefixes)")

    from edgetune.host.cli import results_verify
    p = action("verify", "check the boards' signatures of results against the CA",
               results_verify.cmd_verify)
    results_verify.arguments(p)
