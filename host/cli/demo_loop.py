"""``edgetune demo`` (the default): the loop this tool exists for, on this PC, in under a minute.

A throw-away PKI and a local agent reached over mutual TLS (as ``demo --quick`` makes them,
``edgetune.host.cli.demo_cmd``), then, on the 32x32 digits sample (host/samples/digits32_*,
where INT8 pays off on a CPU):

1. ``edgetune quantize``'s defaults make the default INT8 model;
2. a short tuning study on the agent (``edgetune.host.tune.run_study``: ``DEMO_TRIALS`` trials
   over a small space of quantization and onnxruntime options, top-1 may drop at most
   ``DEMO_MAX_DROP`` points), every trial recorded in the results database;
3. the study's answer: FP32 (default session), default INT8 and the tuned model measured again
   in interleaved rounds on the agent, recorded too;
4. one closing table, FP32 / default INT8 / tuned, with the 95 % confidence intervals of the
   speed-ups from those rounds (``edgetune.host.results.compare.ratio_interval``).

With ``--no-record`` the study still needs a database: a throw-away SQLite file beside the PKI,
removed with it.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

if TYPE_CHECKING:  # pragma: no cover
    import argparse

DEMO_TRIALS = 8
DEMO_MAX_DROP = 1.0                      # top-1 points the tuned model may lose
DEMO_FINAL_ROUNDS = 5
INPUT_SHAPE = (1, 1, 32, 32)
SAMPLES = ("digits32_cnn.onnx", "digits32_test.npz", "digits32_calib.npz")
# The demo's space (12 configurations x 2 methods + FP32): small enough for 8 trials to see
# most of it, wide enough to show what tuning is (two calibrations, two calibration sizes,
# threads, graph optimisation). `edgetune tune` searches the full default space.
DEMO_SPACE: Dict[str, Any] = {
    "quantization.method": ["minmax", "percentile"], "quantization.percentile": [99.99],
    "quantization.per_channel": [True], "quantization.act_type": ["uint8"],
    "quantization.weight_type": ["int8"], "quantization.symmetric_act": [False],
    "quantization.calib_count": [32, 100], "quantization.keep_k": [0],
    "runtime.intra_op_threads": "cores", "runtime.inter_op_threads": [1],
    "runtime.execution_mode": ["sequential"], "runtime.graph_optimization": ["basic", "all"],
}
COLUMNS = ("fp32", "int8_default", "tuned")
TITLES = {"fp32": "FP32", "int8_default": "default INT8", "tuned": "tuned"}


def demo_space() -> Any:
    from edgetune.host.tune.space import Space

    return Space.default().updated(DEMO_SPACE, "edgetune demo")


def _round_p50s(store: Any, ids: Sequence[Optional[str]]) -> List[float]:
    """The p50 of each interleaved round, from its record."""
    out = []
    for rid in ids:
        record = store.get(rid) if rid else None
        latency = (record.metrics or {}).get("latency_ms") if record is not None else None
        if latency and latency.get("p50"):
            out.append(float(latency["p50"]))
    return out


def _interval(a: Sequence[float], b: Sequence[float]) -> Optional[Dict[str, Any]]:
    """Speed-up of ``a`` over ``b`` (b/a per round), with its 95 % interval."""
    from edgetune.host.results.compare import ratio_interval

    pairs = [(x, y) for x, y in zip(a, b) if x > 0 and y > 0]
    if not pairs:
        return None
    iv = ratio_interval([x / y for x, y in pairs])         # latency ratio a/b
    ci = None
    if iv.low is not None and iv.high is not None:
        ci = [1.0 / iv.high, 1.0 / iv.low]
    return {"speedup": 1.0 / iv.ratio, "ci": ci, "rounds": len(pairs),
            "significant": iv.significant}


def comparison(result: Any, store: Any, sizes: Dict[str, int]) -> Dict[str, Any]:
    """The closing table's numbers: size, accuracy and p50 of the three models (p50: the
    median of the interleaved rounds), the speed-ups with their intervals."""
    base = result.baselines
    best = result.best or {}
    rounds = {"fp32": _round_p50s(store, base.get("fp32", {}).get("result_ids", ())),
              "int8_default": _round_p50s(store, base.get("int8_default", {})
                                          .get("result_ids", ())),
              "tuned": _round_p50s(store, best.get("final_result_ids", ()))}
    accuracy = {"fp32": base.get("fp32", {}).get("accuracy", {}).get("value"),
                "int8_default": base.get("int8_default", {}).get("accuracy", {}).get("value"),
                "tuned": best.get("accuracy", {}).get("value")}
    p50 = {k: (base.get(k, {}).get("latency_ms", {}).get("p50") if k != "tuned"
               else best.get("latency_ms", {}).get("p50")) for k in COLUMNS}
    return {
        "metric": result.metric, "rounds": {k: len(v) for k, v in rounds.items()},
        "size_bytes": dict(sizes), "accuracy": accuracy, "p50_ms": p50,
        "speedup_vs_fp32": {k: _interval(rounds[k], rounds["fp32"])
                            for k in ("int8_default", "tuned")},
        "tuned_vs_int8_default": _interval(rounds["tuned"], rounds["int8_default"]),
    }


def _x(value: Optional[Dict[str, Any]], digits: int = 2) -> str:
    if not value:
        return "-"
    text = f"{value['speedup']:.{digits}f}x"
    if value.get("ci"):
        low, high = value["ci"]
        text += f" ({low:.{digits}f}-{high:.{digits}f})"
    return text


def _latency_ratio(c: Dict[str, Any]) -> str:
    tuned, base = c["p50_ms"].get("tuned"), c["p50_ms"].get("int8_default")
    return f"{tuned / base:.2f}x" if tuned and base else "-"


def table_rows(c: Dict[str, Any]) -> List[Tuple[str, ...]]:
    """Rows of the closing table (header first). Speed-ups are against FP32 in the model
    columns and against default INT8 in the last one, each the geometric mean of the
    per-round ratios with its 95 % interval."""
    def acc(k: str) -> str:
        v = c["accuracy"].get(k)
        return "-" if v is None else f"{100 * v:.2f}%"

    def ms(k: str) -> str:
        v = c["p50_ms"].get(k)
        return "-" if v is None else f"{v:.3f}"

    sizes = c["size_bytes"]
    fp32_acc, tuned_acc = c["accuracy"].get("fp32"), c["accuracy"].get("tuned")
    int8_acc = c["accuracy"].get("int8_default")
    gain = c.get("tuned_vs_int8_default")
    title = {"top1": "top-1 accuracy", "top5": "top-5 accuracy"}.get(c["metric"], c["metric"])
    return [
        ("", "FP32", "default INT8", "tuned", "tuned vs default INT8"),
        ("size (KiB)", *(f"{sizes[k] / 1024:.1f}" if sizes.get(k) else "-" for k in COLUMNS),
         f"{sizes['tuned'] / sizes['int8_default']:.2f}x"
         if sizes.get("tuned") and sizes.get("int8_default") else "-"),
        (title, acc("fp32"), acc("int8_default"), acc("tuned"),
         f"{100 * (tuned_acc - int8_acc):+.2f} pts"
         if tuned_acc is not None and int8_acc is not None else "-"),
        (f"p50 latency (ms), median of {c['rounds'].get('tuned', 0)} rounds",
         ms("fp32"), ms("int8_default"), ms("tuned"), _latency_ratio(c)),
        ("speed-up (95% CI)", "1.00x", _x(c["speedup_vs_fp32"].get("int8_default")),
         _x(c["speedup_vs_fp32"].get("tuned")), _x(gain)),
        (f"{title} vs FP32", "", f"{100 * (int8_acc - fp32_acc):+.2f} pts"
         if int8_acc is not None and fp32_acc is not None else "-",
         f"{100 * (tuned_acc - fp32_acc):+.2f} pts"
         if tuned_acc is not None and fp32_acc is not None else "-", ""),
    ]


def markdown(rows: List[Tuple[str, ...]]) -> str:
    from edgetune.host.render import markdown_table

    return markdown_table(rows[0], rows[1:])


@dataclasses.dataclass(frozen=True)
class LoopOutcome:
    doc: Dict[str, Any]
    rows: List[Tuple[str, ...]]


def run_loop_demo(workdir: Path, as_json: bool, agents: Optional[List[Any]], db_url: str,
                  trials: int = DEMO_TRIALS) -> LoopOutcome:
    """The loop in ``workdir`` with the study in ``db_url``; its JSON document and table.
    ``agents`` gets the agent's process once it serves (stopped when this returns)."""
    from ulid import ULID

    from edgetune.host import render
    from edgetune.host.cli.demo_cmd import DEVICE, KEY_TYPE, make_pki, sample_files
    from edgetune.host.localagent import AgentFiles, LocalAgent
    from edgetune.host.quant.settings import CalibSource
    from edgetune.host.results.store import ResultsStore
    from edgetune.host.target import load_host_identity
    from edgetune.host.tune import BoardSpec, TuneSettings, run_study
    from edgetune.host.tune.space import candidate

    started = time.monotonic()
    view = render.ProgressView.auto(quiet=as_json)
    view.line(f"demo: making a throw-away PKI ({KEY_TYPE}) in {workdir / 'pki'}")
    pki = make_pki(workdir / "pki")
    files = AgentFiles(ca=pki["ca"], cert=pki["device_cert"], key=pki["device_key"],
                       passphrase_file=pki["passphrase_file"])
    with LocalAgent() as agent, sample_files(SAMPLES) as samples:
        address = agent.start(files, workdir / "store")
        if agents is not None and agent.process is not None:
            agents.append(agent.process)
        view.line(f"demo: local agent (pid {agent.process.pid}) serves at {address}")
        identity = load_host_identity(pki["ca"], pki["host_cert"], pki["host_key"],
                                      pki["passphrase_file"])
        view.line(f"demo: 1. quantizing {samples.model.name} with edgetune quantize's "
                  f"defaults, calibrated on {samples.calib.name}")
        int8 = quantize_default(samples.model, samples.calib, workdir / "variants")
        view.line(f"demo: default INT8: {render.fmt_bytes(int8['size_bytes'])} "
                  f"({int8['size_ratio']:.2f}x), {int8['int8_nodes']} of "
                  f"{int8['quantizable_nodes']} nodes int8, in {int8['elapsed_s']:.1f} s")
        study = f"demo-{str(ULID()).lower()}"
        tune = TuneSettings(
            model=samples.model, calib=(CalibSource(path=samples.calib),),
            dataset=samples.dataset, db_url=db_url, space=demo_space(), study=study,
            max_drop=DEMO_MAX_DROP, trials=trials, final_rounds=DEMO_FINAL_ROUNDS,
            input_shapes=(("input", INPUT_SHAPE),), cache_dir=workdir / "variants",
            label="demo")
        view.line(f"demo: 2. tuning study {study}: {trials} trials on the agent (quantization "
                  f"x onnxruntime options, top-1 may drop {DEMO_MAX_DROP:g} pt), then FP32, "
                  f"default INT8 and the best measured again in {DEMO_FINAL_ROUNDS} "
                  "interleaved rounds")
        board = BoardSpec(DEVICE, address, identity)
        result = run_study(tune, [board], say=None if as_json else view.line)
        info = agent_info(board)
    sizes = {"fp32": samples.model.stat().st_size,
             "int8_default": _size(result.baselines.get("int8_default", {}).get("model")),
             "tuned": _size((result.best or {}).get("model"))}
    with ResultsStore.open(db_url) as store:
        compared = comparison(result, store, sizes)
    rows = table_rows(compared)
    best = result.best or {}
    tuned = None
    if best.get("params"):
        tuned = candidate(best["params"]).describe()
    doc = {
        "device": f"{DEVICE} ({address})", "address": address, "key_type": KEY_TYPE,
        "info": info,
        "models": {
            "fp32": {"file": samples.model.name, "size_bytes": sizes["fp32"]},
            "int8_default": {"file": int8["file"], "size_bytes": int8["size_bytes"],
                             "sha256": int8["sha256"], "quantize": int8},
            "tuned": {"trial": best.get("trial"), "description": tuned,
                      "params": best.get("params"), "session": best.get("session"),
                      "sha256": best.get("model_sha256"), "size_bytes": sizes["tuned"]},
        },
        "study": result.as_json(),
        "comparison": compared,
        "summary": result.summary,
        "elapsed_s": round(time.monotonic() - started, 2),
    }
    return LoopOutcome(doc, rows)


def quantize_default(model: Path, calib: Path, cache_dir: Path) -> Dict[str, Any]:
    """``edgetune quantize``'s defaults (MinMax, per-channel, uint8/int8, 100 calibration
    samples), made through the tuner's variant cache in ``cache_dir`` with the calibration data
    the study loads, so that the study's default-INT8 baseline is this very file (made once).
    What it is, from its record."""
    import json

    from edgetune.host.quant.calibdata import load_calibration
    from edgetune.host.quant.settings import CalibSource, QuantizeSettings
    from edgetune.host.tune.space import QuantParams
    from edgetune.host.tune.variants import VariantCache

    default = QuantParams()
    sources = (CalibSource(path=calib),)
    settings = QuantizeSettings(model=model, output=cache_dir / "unused.onnx", calib=sources,
                                calib_count=default.calib_count, seed=0)
    data = load_calibration(model, settings)
    started = time.monotonic()
    variant = VariantCache(model, sources, data, cache_dir, seed=0).get(default, ())
    record = json.loads(Path(variant.record_path or "").read_text(encoding="utf-8"))
    chosen = record.get("settings", {})
    return {"file": variant.path.name, "sha256": variant.sha256,
            "size_bytes": variant.path.stat().st_size, "size_ratio": record.get("size_ratio"),
            "method": record.get("method"), "act_type": chosen.get("act_type"),
            "weight_type": chosen.get("weight_type"), "per_channel": chosen.get("per_channel"),
            "calib": calib.name, "calib_samples": record.get("n_samples"),
            "int8_nodes": record.get("n_int8_nodes"),
            "quantizable_nodes": len(record.get("quantizable_nodes") or ()),
            "elapsed_s": round(time.monotonic() - started, 2)}


def _size(path: Optional[str]) -> Optional[int]:
    return Path(path).stat().st_size if path and Path(path).is_file() else None


def agent_info(board: Any) -> Dict[str, Any]:
    """What the agent says about itself (one more call: the study's sessions are closed)."""
    session = board.open()
    try:
        info = session.board.agent
        return info.as_dict() if info is not None else {}
    finally:
        session.close()


def print_loop(outcome: LoopOutcome, width: int) -> None:
    import textwrap

    doc = outcome.doc
    print()
    print(markdown(outcome.rows))
    print()
    tuned = doc["models"]["tuned"]
    lines = [doc["summary"] + "."]
    if tuned.get("description"):
        lines.append(f"Tuned (trial {tuned['trial']}): {tuned['description']}.")
    c = doc["comparison"]
    lines.append(f"Each p50 is the median of {c['rounds'].get('tuned', 0)} rounds in which "
                 "the three models were measured one after the other (order rotating). "
                 "Speed-ups are against FP32 (against default INT8 in the last column): the "
                 "geometric mean of the per-round ratios, with its 95% confidence interval. "
                 "FP32 and default INT8 run with onnxruntime's default session options.")
    for text in lines:
        print(textwrap.fill(text, width, break_long_words=False, break_on_hyphens=False))


def loop_db_url(args: argparse.Namespace, workdir: Path) -> str:
    """The results database the study goes to (``--db``, $EDGETUNE_DB, the inventory's, the
    default); with ``--no-record`` a throw-away SQLite file in ``workdir``."""
    if args.no_record:
        return f"sqlite:///{workdir / 'demo-results.db'}"
    from edgetune.host.inventory import find_config, load_inventory
    from edgetune.host.results.location import DB_ENV, resolve_location

    import os

    inventory_path = None if args.db or os.environ.get(DB_ENV) else find_config(None)
    inventory_db = load_inventory(inventory_path).results_db if inventory_path else None
    return resolve_location(args.db, os.environ, inventory_path, inventory_db).url


def where(url: str) -> str:
    from edgetune.host.results.engine import safe_url

    return safe_url(url)


def finish_loop(args: argparse.Namespace, loop: Any, workdir: Path, keep: Optional[Path],
                 results_db: Optional[str]) -> int:
    import shutil
    import sys

    from edgetune.host import render

    doc = loop.doc
    doc["kept"] = str(workdir) if keep is not None else None
    if args.no_record:              # the study's throw-away database: nothing of it is kept
        for leftover in workdir.glob("demo-results.db*"):
            leftover.unlink()
    doc["results_db"] = results_db
    if args.json:
        render.print_json(doc)
        return 0
    width = shutil.get_terminal_size((100, 24)).columns if sys.stdout.isatty() else 100
    print(f"FP32 vs default INT8 vs tuned on {doc['device']}")
    print_loop(loop, min(width, 100))
    print(f"\ndemo finished in {doc['elapsed_s']:.1f} s; agent stopped.")
    if results_db is not None:
        study = doc["study"]["study"]
        print(f"results kept in {results_db}: `edgetune tune show {study}`, `edgetune results "
              "list` (--no-record keeps none)")
    if keep is not None:
        print(f"kept {workdir}: the PKI, the agent's store, the default INT8 model and the "
              "study's variants")
    return 0
