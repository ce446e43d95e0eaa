"""``analyze FLOAT QUANT --device B``: per-layer error of the board's own int8 kernels.

The host builds a copy of the quantized model that also outputs every analysed tensor (each
activation's DequantizeLinear output: what the next layer receives) and runs it itself with
onnxruntime's default session options, as the agent does: that is the host's INT8 run. The
board runs the same copy on the same samples. Nothing large comes back: each comparison is
an evaluation job whose dataset holds the samples and, as reference outputs, the host's
tensors (once the host INT8 run's, once the FP32 model's matching tensors), so the board
computes cosine and SQNR per tensor with the shared metrics (``edgetune.device.metrics``)
and returns numbers. The dataset must fit the board: its size is checked against the
memory the board has available (a quarter of it), and the error says how many of the
tensors would fit.

A tensor whose board output departs from the host's INT8 run by more than the stated
thresholds (SQNR below ``BOARD_SQNR_DB``, or cosine below ``BOARD_COSINE``) is flagged: the
board's kernels compute something other than the host's simulation there.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edgetune.host.errors import BadInputError

BOARD_SQNR_DB = 40.0          # board vs host INT8: below this, flagged
BOARD_COSINE = 0.9999         # board vs host INT8: below this, flagged
MEMORY_SHARE = 4              # a dataset may use 1/MEMORY_SHARE of the board's free memory


@dataclass(frozen=True)
class BoardTensor:
    tensor: str                         # the float model's name (what analyze reports)
    output: str                         # the quantized copy's output read on the board
    vs_fp32: Dict[str, float]           # board vs the host's FP32 tensor: cosine, sqnr_db
    vs_host_int8: Dict[str, float]      # board vs the host's own INT8 run
    flagged: bool

    def as_dict(self) -> Dict[str, Any]:
        return {"tensor": self.tensor, "output": self.output, "board_vs_fp32": self.vs_fp32,
                "board_vs_host_int8": self.vs_host_int8, "flagged": self.flagged}


@dataclass(frozen=True)
class BoardAnalysis:
    device: str
    samples: int
    tensors: Tuple[BoardTensor, ...]
    dataset_bytes: int
    thresholds: Dict[str, float]

    def flagged(self) -> List[BoardTensor]:
        return [t for t in self.tensors if t.flagged]

    def as_dict(self) -> Dict[str, Any]:
        return {"device": self.device, "samples": self.samples,
                "dataset_bytes": self.dataset_bytes, "thresholds": self.thresholds,
                "tensors": [t.as_dict() for t in self.tensors],
                "flagged": [t.tensor for t in self.flagged()]}


def _targets(fmodel: Any, qmodel: Any) -> List[Tuple[str, str]]:
    """(float tensor, quantized copy's tensor) for every activation Q/DQ pair whose float
    tensor exists in the float model, plus the model outputs."""
    from edgetune.host.quant.graphwalk import Graph, find_qdq
    pairs, _ = find_qdq(Graph(qmodel))
    float_names = {o for n in fmodel.graph.node for o in n.output} | \
        {i.name for i in fmodel.graph.input}
    out: List[Tuple[str, str]] = []
    seen = set()
    for pair in pairs:
        if pair.pre in float_names and pair.post not in seen:
            out.append((pair.pre, pair.post))
            seen.add(pair.post)
    for o in qmodel.graph.output:
        if o.name in float_names and o.name not in seen:
            out.append((o.name, o.name))
            seen.add(o.name)
    return out


def _augmented(model: Any, names: Sequence[str]) -> bytes:
    from edgetune.host.quant.analysis import _with_outputs
    return _with_outputs(model, names)


def _run_all(model_bytes: bytes, names: Sequence[str], feeds: Dict[str, np.ndarray]
             ) -> Dict[str, np.ndarray]:
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model_bytes, sess_options=options,
                                   providers=["CPUExecutionProvider"])
    outs: Dict[str, List[np.ndarray]] = {n: [] for n in names}
    count = len(next(iter(feeds.values())))
    for i in range(count):                 # one sample per run, as the board's batch 1
        values = session.run(list(names), {k: v[i:i + 1] for k, v in feeds.items()})
        for name, value in zip(names, values):
            outs[name].append(np.asarray(value, dtype=np.float32))
    return {n: np.concatenate(v) for n, v in outs.items()}


def check_fits(per_tensor: Dict[str, int], input_bytes: int, available: int,
               device: str) -> None:
    """BadInputError naming how many of the tensors fit when the dataset would not."""
    if available <= 0:
        return                             # the board does not say: let it refuse
    budget = available // MEMORY_SHARE
    total = input_bytes + sum(per_tensor.values())
    if total <= budget:
        return
    fit, used = 0, input_bytes
    for size in sorted(per_tensor.values()):
        if used + size > budget:
            break
        used += size
        fit += 1
    mib = 1 << 20
    raise BadInputError(
        f"the {len(per_tensor)} tensors asked for need {total / mib:.1f} MiB on the board "
        f"(inputs and reference tensors of every sample), more than {device} can hold: "
        f"{available / mib:.1f} MiB free, a quarter of it for a dataset "
        f"({budget / mib:.1f} MiB); {fit} of the {len(per_tensor)} tensors fit (smallest first)",
        hint="run fewer samples on the board (--board-samples) or fewer tensors "
             "(--board-tensors N)")


def board_analysis(float_model: Path, quant_model: Path, feeds: Dict[str, np.ndarray],
                   board: Any, *, max_tensors: int = 0, sent_model: Optional[bytes] = None,
                   workdir: Optional[Path] = None) -> BoardAnalysis:
    """Run the analysed tensors on ``board`` (a BoardSession) with ``feeds`` ([N, ...] per
    input) and compare them there with the host's FP32 and INT8 tensors.

    ``sent_model``: what the board runs instead of the host's copy (for tests: a model
    change that makes one layer differ on the "board"; same tensor names)."""
    import onnx

    from edgetune.protos.messages import EvaluateSpec
    fmodel = onnx.load(str(float_model))
    qmodel = onnx.load(str(quant_model))
    targets = _targets(fmodel, qmodel)
    if max_tensors:
        targets = targets[:max_tensors]
    if not targets:
        raise BadInputError(f"{quant_model} has no activation Q/DQ pair whose tensor the float "
                            "model has: nothing to compare on the board")
    samples = len(next(iter(feeds.values())))
    copy = _augmented(qmodel, [q for _, q in targets])
    host_int8 = _run_all(copy, [q for _, q in targets], feeds)
    float_names = [f for f, _ in targets if f not in feeds]
    fp32 = _run_all(_augmented(fmodel, float_names), float_names, feeds)
    fp32.update({f: feeds[f].astype(np.float32) for f, _ in targets if f in feeds})
    per_tensor = {q: int(host_int8[q].nbytes) for _, q in targets}
    input_bytes = sum(int(v.nbytes) for v in feeds.values())
    check_fits(per_tensor, input_bytes, int(getattr(board.board.agent,
                                                    "memory_available_bytes", 0) or 0),
               board.name)
    tmp = Path(tempfile.mkdtemp(prefix="edgetune-board-analysis-", dir=workdir))
    model_path = tmp / "analysed.onnx"
    model_path.write_bytes(sent_model if sent_model is not None else copy)
    results: Dict[str, Dict[str, Dict[str, float]]] = {}
    try:
        for which, refs in (("host_int8", {q: host_int8[q] for _, q in targets}),
                            ("fp32", {q: fp32[f].reshape(host_int8[q].shape)
                                      if fp32[f].size == host_int8[q].size else None
                                      for f, q in targets})):
            kept = {k: v for k, v in refs.items() if v is not None}
            path = tmp / f"{which}.npz"
            np.savez(str(path), **feeds, **kept)
            run = board.evaluate(model_path, path, EvaluateSpec(
                model_sha256="", dataset_sha256="", metrics=("fidelity",), batch_size=1),
                label=f"analyze: board vs {which}")
            if run.result is None:
                raise BadInputError(f"the board could not run the analysed model: "
                                    f"{getattr(run, 'error', '') or 'the job failed'}")
            metrics = run.result.metric_dict()
            single = len(kept) == 1
            results[which] = {
                name: {key: float(metrics[key if single else f"{name}/{key}"])
                       for key in ("cosine", "sqnr_db")
                       if (key if single else f"{name}/{key}") in metrics}
                for name in kept}
            path.unlink()
    finally:
        for leftover in tmp.iterdir():
            leftover.unlink()
        tmp.rmdir()
    tensors = []
    for f, q in targets:
        host = results["host_int8"].get(q, {})
        flagged = bool(host) and (host.get("sqnr_db", 200.0) < BOARD_SQNR_DB
                                  or host.get("cosine", 1.0) < BOARD_COSINE)
        tensors.append(BoardTensor(tensor=f, output=q, vs_fp32=results["fp32"].get(q, {}),
                                   vs_host_int8=host, flagged=flagged))
    return BoardAnalysis(device=board.name, samples=samples, tensors=tuple(tensors),
                         dataset_bytes=input_bytes + sum(per_tensor.values()),
                         thresholds={"board_sqnr_db": BOARD_SQNR_DB,
                                     "board_cosine": BOARD_COSINE})
