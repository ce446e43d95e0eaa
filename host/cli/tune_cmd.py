"""``edgetune tune``: find the fastest quantization and runtime configuration of a model that
keeps accuracy within a bound, measured on the board (an Optuna study kept in the results
database; docs/tuning.md).

    edgetune tune MODEL --calib DATA --dataset NPZ (--device NAME | --devices SEL)
                  [--max-drop PTS] [--objective p50|p90|...] [--trials N] [--timeout S]
                  [--space tune.toml] [--set KEY=V,...] [--study NAME] [--db URL] [-o DIR]
    edgetune tune show STUDY [--json]
    edgetune tune list [--json]

Running the same command again resumes the study (only the remaining trials run; a trial a
killed host left running re-attaches to its board job). Open the study in optuna-dashboard:
``optuna-dashboard sqlite:///PATH/results.db`` (the --db URL).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Dict, List

from edgetune.host.cli.common import (add_identity_flags, add_json_flag, check_count,
                                      parse_shape)
from edgetune.host.errors import ExitStatus, TargetNotMetError, UsageError

ACTIONS = ("show", "list")


def _db_url(args: argparse.Namespace) -> str:
    from edgetune.host.inventory import find_config, load_inventory
    from edgetune.host.results.location import DB_ENV, resolve_location

    inventory_path = None if args.db or os.environ.get(DB_ENV) else find_config(args.inventory)
    inventory_db = load_inventory(inventory_path).results_db if inventory_path else None
    return resolve_location(args.db, os.environ, inventory_path, inventory_db).url


def tune_settings(args: argparse.Namespace) -> Any:
    from edgetune.host.cli.quantize_flags import calib_sources_from_args
    from edgetune.host.tune.report import check_out_dir
    from edgetune.host.tune.settings import TuneSettings
    from edgetune.host.tune.space import Space, apply_set_flags, load_space_file

    if not args.dataset:
        raise UsageError("--dataset NPZ is needed (the accuracy is measured on it)",
                         hint="what `edgetune eval --dataset` takes")
    if not args.calib:
        raise UsageError("--calib SOURCE is needed (what `edgetune quantize --calib` takes)")
    check_count("--trials", args.trials, maximum=100_000)
    check_count("--iterations", args.iterations)
    check_count("--short-iterations", args.short_iterations)
    check_count("--warmup", args.warmup, minimum=0)
    check_count("--final-rounds", args.final_rounds, minimum=0, maximum=100)
    space = load_space_file(args.space) if args.space else Space.default()
    space = apply_set_flags(space, args.set or ())
    if args.out is not None:
        check_out_dir(args.out)
    if not Path(args.dataset).is_file():
        from edgetune.host.errors import NotFoundError
        raise NotFoundError(f"dataset {args.dataset} does not exist", hint="check --dataset")
    shapes = tuple(sorted(dict(parse_shape(s) for s in args.shape or ()).items()))
    full = args.iterations or 100
    settings = TuneSettings(
        model=Path(args.model), calib=calib_sources_from_args(args), dataset=Path(args.dataset),
        db_url=_db_url(args), space=space, study=args.study, new_study=args.new_study,
        max_drop=args.max_drop, objective=args.objective, accuracy=args.accuracy,
        trials=args.trials or 20, timeout_s=args.study_timeout, out_dir=args.out,
        sampler=args.sampler, seed=args.seed or 0,
        warmup=10 if args.warmup is None else args.warmup,
        short_iterations=args.short_iterations or max(1, min(full, full // 5 or 1)),
        full_iterations=full, final_rounds=5 if args.final_rounds is None else args.final_rounds,
        input_shapes=shapes, cache_dir=args.cache_dir, lease=not args.no_lease,
        label=args.label or "")
    settings.check()
    return settings


def cmd_tune(args: argparse.Namespace) -> int:
    words: List[str] = list(args.words)
    if words and words[0] in ACTIONS and not Path(words[0]).is_file():
        if words[0] == "list":
            if len(words) != 1:
                raise UsageError("`edgetune tune list` takes no argument")
            return cmd_list(args)
        if len(words) != 2:
            raise UsageError("`edgetune tune show STUDY`: name one study",
                             hint="see `edgetune tune list`")
        return cmd_show(args, words[1])
    if len(words) != 1:
        raise UsageError("`edgetune tune MODEL --calib DATA --dataset NPZ --device NAME`: "
                         "give one model" if not words else
                         f"one model, not {len(words)} ({' '.join(words)})",
                         hint="or `edgetune tune show STUDY`, `edgetune tune list`")
    args.model = words[0]
    return run_tune(args)


def run_tune(args: argparse.Namespace) -> int:
    from edgetune.host import render
    from edgetune.host.tune.boards import specs_from_args
    from edgetune.host.tune.report import write_outputs
    from edgetune.host.tune.run import run_study

    settings = tune_settings(args)
    boards = specs_from_args(args)
    say = None if args.json else _say
    result = run_study(settings, boards, say=say)
    written = write_outputs(result, settings.out_dir) if settings.out_dir else []
    if args.json:
        doc = result.as_json()
        doc["outputs"] = [str(p) for p in written]
        if written and doc.get("best"):            # the chosen model as written (-o DIR)
            doc["best"] = {**doc["best"], "model": str(settings.out_dir / "model.onnx")}
        render.print_json(doc)
        return 0 if result.target_met else int(ExitStatus.TARGET_NOT_MET)
    print_result(result, written, settings.db_url)
    if not result.target_met:
        raise TargetNotMetError(result.summary, hint="relax --max-drop, widen the space "
                                "(--space, --set) or run more trials (the same command with a "
                                "higher --trials resumes the study)")
    return 0


def _say(text: str) -> None:
    print(f"edgetune: {text}", file=sys.stderr, flush=True)


def print_result(result: Any, written: List[Path], url: str) -> None:
    from edgetune.host.results.engine import safe_url
    from edgetune.host.tune.report import markdown

    print(markdown(result))
    if written:
        print("wrote " + ", ".join(str(p) for p in written))
    print(f"study {result.study} in {safe_url(url)}: `edgetune tune show {result.study}`; "
          f"`optuna-dashboard {safe_url(url)}` opens it")


def _storage(args: argparse.Namespace) -> Any:
    from edgetune.host.results.store import ResultsStore
    from edgetune.host.tune.study import open_storage

    url = _db_url(args)
    ResultsStore.open(url).close()          # refuses a file that is not a results database
    return url, open_storage(url)


def show_doc(study: Any) -> Dict[str, Any]:
    from edgetune.host.tune import study as studies
    from edgetune.host.tune.final import trial_doc

    meta = studies.meta(study)
    max_drop = meta.get("max_drop")
    trials = study.get_trials(deepcopy=False)
    answer = dict(study.user_attrs.get("answer") or {})
    doc = {"study": study.study_name, "run_id": meta.get("run_id"),
           "objective": meta.get("objective"), "metric": meta.get("metric"),
           "board_kind": meta.get("board_kind"), "max_drop": max_drop,
           "model": meta.get("model"), "space": meta.get("space"),
           "target_met": answer.get("target_met"),
           "trials": studies.count_states(trials, max_drop),
           "baselines": answer.get("baselines") or {}, "best": answer.get("best"),
           "pareto": answer.get("pareto") or [], "summary": answer.get("summary")}
    doc["trial_list"] = [trial_doc(t, max_drop) for t in trials]
    return doc


def cmd_show(args: argparse.Namespace, name: str) -> int:
    from edgetune.host import render
    from edgetune.host.tune.study import load_existing

    url, storage = _storage(args)
    doc = show_doc(load_existing(storage, name, url))
    if args.json:
        render.print_json(doc)
        return 0
    t = doc["trials"]
    print(f"study {doc['study']} ({doc['model']}; {doc['objective']} latency, {doc['metric']}; "
          f"run id {doc['run_id']})")
    print(f"trials: {t['complete']} complete, {t['infeasible']} infeasible, {t['pruned']} "
          f"stopped early, {t['failed']} failed on a board")
    if doc["summary"]:
        print(doc["summary"])
    rows = []
    key = doc["objective"] or "p50"
    for d in doc["trial_list"]:
        lat = (d.get("latency_ms") or {}).get(key)
        rows.append((str(d["number"]), d["state"], d.get("board") or "-",
                     "-" if lat is None else f"{lat:.4g}",
                     "-" if d.get("accuracy") is None else f"{100 * d['accuracy']:.2f}",
                     d.get("result_id") or "-",
                     ", ".join(f"{k}={v}" for k, v in d["params"].items())))
    print(render.markdown_table(("trial", "state", "board", f"{key} (ms)",
                                 f"{doc['metric']} (%)", "result", "params"), rows))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from edgetune.host import render
    from edgetune.host.tune.study import summaries

    _, storage = _storage(args)
    docs = summaries(storage)
    if args.json:
        render.print_json({"studies": docs})
        return 0
    if not docs:
        print("no tuning study in this results database (start one with `edgetune tune MODEL "
              "...`)")
        return 0
    rows = [(d["study"], Path(d["model"] or "-").name, d["objective"] or "-",
             str(sum(d["trials"].values())), str(d["trials"]["complete"]),
             d["summary"] or "-") for d in docs]
    print(render.markdown_table(("study", "model", "objective", "trials", "complete",
                                 "answer"), rows))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from edgetune.host.cli.quantize_flags import add_calibration_flags
    from edgetune.host.tune.settings import ACCURACY, OBJECTIVES, SAMPLERS

    p = sub.add_parser("tune", help="search quantization x runtime options on the board "
                                    "(Optuna study; show, list)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("words", nargs="*", metavar="MODEL | show STUDY | list",
                   help="the FP32 model to tune; or `show STUDY`, `list`")
    p.add_argument("--dataset", metavar="NPZ",
                   help="the evaluation set (what `edgetune eval --dataset` takes)")
    s = p.add_argument_group("the search")
    s.add_argument("--max-drop", type=float, metavar="PTS",
                   help="accuracy points the tuned model may lose against FP32 (a constraint)")
    s.add_argument("--objective", choices=OBJECTIVES, default="p50",
                   help="the latency statistic to minimize (default p50)")
    s.add_argument("--accuracy", choices=ACCURACY, default="auto",
                   help="the accuracy objective (default: top1 with labels, else fidelity)")
    s.add_argument("--trials", type=int, metavar="N",
                   help="the study's total number of trials (default 20; a resumed study "
                        "runs the remainder)")
    s.add_argument("--timeout", dest="study_timeout", type=float, metavar="S",
                   help="start no trial after S seconds (running ones finish)")
    s.add_argument("--space", type=Path, metavar="tune.toml",
                   help="narrow or widen the space (docs/tuning.md lists the keys)")
    s.add_argument("--set", action="append", metavar="KEY=V,...",
                   help="one dimension of the space, e.g. --set method=minmax,percentile "
                        "(repeatable; over --space)")
    s.add_argument("--study", metavar="NAME",
                   help="the study's name (default: MODEL-<hash of model, space, board kind>)")
    s.add_argument("--new-study", action="store_true",
                   help="replace a study of that name made with another model or space")
    s.add_argument("--sampler", choices=SAMPLERS, default="tpe",
                   help="Optuna sampler (default tpe, multi-objective)")
    m = p.add_argument_group("measurement")
    m.add_argument("--iterations", type=int, metavar="N",
                   help="timed runs of the full measurement (default 100)")
    m.add_argument("--short-iterations", type=int, metavar="N",
                   help="timed runs of the short first measurement (default iterations/5)")
    m.add_argument("--warmup", type=int, metavar="N", help="untimed runs first (default 10)")
    m.add_argument("--final-rounds", type=int, metavar="N",
                   help="rounds of the closing interleaved comparison (default 5; 0: none)")
    m.add_argument("--shape", action="append", metavar="NAME=1x3x224x224",
                   help="fix an input's dynamic dimensions (repeatable)")
    add_calibration_flags(p)
    b = p.add_argument_group("boards", "--device NAME or --address (one board), or --devices "
                                       "SEL (several of one kind, trials in parallel)")
    b.add_argument("--device", metavar="NAME", help="a board named in edgetune.toml")
    b.add_argument("--devices", metavar="SEL",
                   help="several boards from edgetune.toml: names, tag:T, attribute=value")
    b.add_argument("--address", metavar="HOST:PORT", help="the agent's address")
    add_identity_flags(b)
    b.add_argument("--server-name", metavar="NAME",
                   help="the name to expect in the agent certificate's SAN")
    b.add_argument("--call-timeout", dest="timeout", type=float, metavar="S", default=30.0,
                   help="deadline of each call to a board in seconds (default 30)")
    b.add_argument("--no-lease", action="store_true",
                   help="do not hold a lease on each board for the study")
    o = p.add_argument_group("results")
    o.add_argument("--db", metavar="URL", help="the results database (the study lives there)")
    o.add_argument("-o", "--out", type=Path, metavar="DIR",
                   help="write model.onnx, session.json, report.md, pareto.png, trials.csv")
    o.add_argument("--cache-dir", type=Path, metavar="DIR",
                   help="where quantized variants are kept (default: the user cache directory)")
    o.add_argument("--label", help="a note on every record")
    add_json_flag(p)
    p.set_defaults(func=cmd_tune)
