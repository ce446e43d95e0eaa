"""What ``edgetune compare`` prints for a comparison job, also when ``edgetune jobs watch`` or
``jobs show`` meets one: the A / B / change table (Markdown), the rounds' ratios and the
verdict, or the ``--json`` document. The numbers are ``edgetune.host.results.compare``'s.
"""

from __future__ import annotations

import sys
from typing import Any, Optional

from edgetune.host.errors import ExitStatus


def print_comparison(run: Any, recorder: Optional[Any], as_json: bool) -> int:
    """Print a ``ComparisonRun`` (its records from ``recorder`` when it kept them); the exit
    status (AGENT when the job did not succeed)."""
    from edgetune.host import render
    from edgetune.host.results import compare

    if not run.ok or run.result is None:
        message = f"the comparison job {run.job_id} {run.state.value}: {run.error}"
        if as_json:
            render.print_json({"error": {"type": "AgentError", "message": message,
                                         "exit_status": int(ExitStatus.AGENT)}})
        else:
            print(f"edgetune: {message}", file=sys.stderr)
        return int(ExitStatus.AGENT)
    stored = recorder.comparisons.get((run.board.name, run.job_id)) if recorder else None
    a, b = stored or compare.comparison_records(run) or (None, None)
    assert a is not None and b is not None
    interval = compare.ratio_interval(compare.round_ratios(run.result))
    change = compare.change(a, b, interval)
    result_id = b.id or None
    if as_json:
        render.print_json(compare.comparison_json(a, b, change, result_id))
        return 0
    spec = run.options
    per = (f"{spec.iterations} runs" if spec.iterations else f"{spec.min_duration_s:g} s")
    print(f"A: {a.model.name or run.model_a} ({run.model_a_sha256[:12]})\n"
          f"B: {b.model.name or run.model_b} ({run.model_b_sha256[:12]})\n"
          f"on {run.board.name}: {spec.rounds} rounds A B, B A, ... of one fresh session per "
          f"model ({per} after {spec.warmup} warm-up each)\n")
    print(render.markdown_table(("", "A", "B", "B vs A"), compare.table_rows(a, b, change)))
    ratios = " ".join(f"{r:.3f}" for r in compare.round_ratios(run.result))
    print(f"\np50 ratio B/A per round: {ratios}")
    print(compare.verdict(interval))
    if run.note:
        print(f"edgetune: note: {run.note}", file=sys.stderr)
    if result_id:
        print(f"recorded as {a.id} (A) and {b.id} (B); `edgetune results compare {a.id} "
              f"{b.id}` shows them again")
    return 0
