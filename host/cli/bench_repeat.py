"""``edgetune bench --repeat N``: N independent measurements of each model, one job (a fresh
onnxruntime session on the board) per repetition, the models interleaved (A B A B ...) so that
drift hits them alike.

Prints the median p50 of the repetitions with their run-to-run spread (min-max and IQR), and
flags the repetitions whose board state changed against the first one
(``edgetune.host.results.repeat``: the thresholds). Every repetition is recorded; the
repetitions of one model share one ``run_id``, and each record keeps its repetition
(``options.repeat``) and its flags (``board_state.flags``, ``board_state.change``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, List, Optional

from edgetune.host.errors import ExitStatus
from edgetune.host.results.location import recording
from edgetune.host.results.repeat import RepeatSet, describe_flags, thresholds
from edgetune.host.target import open_session, resolve_target


def _new_run_id() -> str:
    from ulid import ULID
    return str(ULID())


def run_repeated(args: argparse.Namespace, settings: Any, repeat: int) -> int:
    """Run ``repeat`` repetitions of every model of ``settings`` (a bench ``JobSettings``)."""
    import contextlib
    import dataclasses

    from edgetune.host import render
    from edgetune.host.leases import lease_scope

    target = resolve_target(args)
    entries: List[Dict[str, Any]] = []
    failed = 0
    with recording(args, label=settings.label) as recorder, \
            open_session(args, target, recorder=recorder) as board, \
            render.ProgressView.auto(quiet=settings.json) as view, \
            contextlib.ExitStack() as measuring:
        dataset_sha = board.resolve(settings.dataset, view) if settings.dataset else ""
        shas = [board.resolve(ref, view) for ref in settings.models]
        measuring.enter_context(lease_scope(board, settings.lease_ttl_s))   # after uploading
        sets = [RepeatSet(model=ref.text, sha256=sha, device=board.name, run_id=_new_run_id())
                for ref, sha in zip(settings.models, shas)]
        for index in range(1, repeat + 1):
            for ref, sha, rset in zip(settings.models, shas, sets):
                spec = dataclasses.replace(settings.template, model_sha256=sha,
                                           dataset_sha256=dataset_sha)
                name = ref.path.name if ref.path is not None else sha[:12]
                label = f"{settings.label or name} (repeat {index}/{repeat})"
                job, _ = board.submit(spec, label=label)
                jobs = board.wait_all([(job.id, label)], view, {job.id: job.state.value})
                if jobs is None:
                    return int(ExitStatus.INTERRUPTED)
                done = jobs[0]
                result = done.result if getattr(done.result, "latency", None) else None
                state = ({"cpu_freq_mhz": result.cpu_freq_mhz,
                          "temperature_c": result.temperature_c} if result is not None else {})
                change = rset.add(result.latency.p50_ms if result is not None else None, state)
                if recorder is not None:
                    recorder.annotate(board.name, done.id, run_id=rset.run_id,
                                      options={"repeat": {"index": index, "of": repeat}},
                                      board_state={"flags": change["flags"], "change": {
                                          k: change[k] for k in ("cpu_freq_change_pct",
                                                                 "temperature_change_c")}})
                run = board.result(done, ref.text, ref.path)
                result_id = recorder.result_id(run) if recorder is not None else None
                rset.result_ids.append(result_id)
                failed += 0 if run.ok else 1
                entry = render.result_entries([run], samples=settings.samples,
                                              result_id=lambda r: result_id)[0]
                entry.update({"repeat": index, "run_id": rset.run_id if recorder else None,
                              "flags": change["flags"],
                              "state_change": {k: change[k] for k in ("cpu_freq_change_pct",
                                                                      "temperature_change_c")}})
                entries.append(entry)
                if not run.ok:
                    print(f"edgetune: job {run.job_id} ({run.model}, repeat {index}) "
                          f"{run.state.value}: {run.error}", file=sys.stderr)
    summaries = [s.summary() for s in sets]
    if recorder is None:
        for summary in summaries:
            summary["run_id"] = None
    if settings.json:
        render.print_json({"results": entries, "repeats": summaries})
    else:
        render.stdout_console().print(render.plain_table(
            f"benchmark, {repeat} repetitions each (p50 of each repetition)", REPEAT_COLUMNS,
            [repeat_row(s) for s in summaries], right=REPEAT_COLUMNS[2:-1]))
        for rset in sets:
            for i in rset.flagged:
                print(f"edgetune: warning: {rset.model} repeat {i}: board state changed since "
                      f"repeat 1 ({describe_flags(rset.changes[i - 1])}); its numbers may not "
                      "compare", file=sys.stderr)
        if any(s.flagged for s in sets):
            t = thresholds()
            print(f"edgetune: flagged: CPU frequency more than {t['cpu_freq_drop_pct']:g} % "
                  f"below, or temperature more than {t['temperature_rise_c']:g} degC above, "
                  "the first repetition's", file=sys.stderr)
    return int(ExitStatus.AGENT) if failed else 0


REPEAT_COLUMNS = ("model", "device", "runs", "median p50 ms", "min-max ms", "IQR ms",
                  "spread %", "flagged")


def _num(value: Optional[float], digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def repeat_row(summary: Dict[str, Any]) -> List[str]:
    """One table row of a ``RepeatSet.summary()``."""
    from edgetune.host.render import _short

    p50 = summary["p50_ms"]
    runs = f"{summary['succeeded']}/{summary['repeats']}"
    flagged = (", ".join(f"#{i}" for i in summary["flagged"]) if summary["flagged"] else "none")
    if p50 is None:
        return [_short(summary["model"]), summary["device"], runs, "-", "-", "-", "-", flagged]
    return [_short(summary["model"]), summary["device"], runs, _num(p50["median"]),
            f"{_num(p50['min'])}-{_num(p50['max'])}", _num(p50["iqr"]),
            f"{p50['range_pct']:.1f}", flagged]
