"""Judge a quantized model by a real metric: locally in onnxruntime, or on a board's agent.

Datasets follow the agent's convention: an ``.npz`` with one array per model input (keyed by
the input's name, first axis = samples), an optional integer ``labels`` array, and optional
reference outputs keyed by the model's output names. Metrics, all "higher is better":

- ``top1`` / ``top5``: the share of samples whose label is among the k highest scores of the
  first class-shaped output ([N, C], C > 1); needs ``labels``;
- ``fidelity``: how faithfully the model reproduces the FLOAT model's outputs, the cosine
  similarity of each sample's output to the float output, averaged over samples (and over
  outputs when there are several): the agent's ``cosine``. The float outputs come from
  ``baseline(float_model)`` (computed once), else from reference arrays in the dataset;
- ``auto``: ``top1`` when the dataset has labels, else ``fidelity``.

Both evaluators have ``baseline(float_model, dataset, metric) -> float`` (the float model's
own score; for fidelity it also fixes the reference outputs) and ``evaluate(model, dataset,
metric) -> float``; ``last_latency_ms`` holds the mean time per sample of the last evaluation
(batched local runs, or the agent's evaluation time), ``metric_name`` the resolved metric.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edgetune.device.metrics import Fidelity, TopK, as_class_scores, sample_cosines, topk_correct
from edgetune.host.errors import AgentError, BadInputError, NotFoundError, UsageError
from edgetune.host.quant.calibsources import LABEL_KEYS

METRICS = ("auto", "top1", "top5", "fidelity")


# ---------------------------------------------------------------------- datasets

def dataset_keys(path: Path) -> Tuple[str, ...]:
    """The array names of an ``.npz`` (headers only); NotFoundError / BadInputError."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"evaluation dataset {path} does not exist", hint="check --eval")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return tuple(npz.files)
    except Exception as exc:  # noqa: BLE001 - zipfile, ValueError, OSError
        raise BadInputError(f"evaluation dataset {path} is not an .npz file ({exc})",
                            hint="save it with numpy.savez(path, INPUT_NAME=x, labels=y)") from None


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise UsageError(f"unknown metric {metric!r}", hint=f"choose one of: {', '.join(METRICS)}")


def resolve_metric(metric: str, keys: Sequence[str], path: Path) -> str:
    """``auto`` -> top1 with labels, else fidelity; a label metric without labels is an error."""
    _check_metric(metric)
    has_labels = any(k in keys for k in LABEL_KEYS)
    if metric == "auto":
        return "top1" if has_labels else "fidelity"
    if metric in ("top1", "top5") and not has_labels:
        raise BadInputError(f"metric {metric} needs labels, but {path} has no 'labels' array "
                            f"(it has: {', '.join(keys)})",
                            hint="add integer class labels, or use --metric fidelity")
    return metric


@dataclass(frozen=True)
class EvalDataset:
    path: Path
    inputs: Dict[str, np.ndarray]
    labels: Optional[np.ndarray]
    references: Dict[str, np.ndarray]
    samples: int


def load_eval_dataset(path: Path, input_names: Sequence[str],
                      output_names: Sequence[str] = ()) -> EvalDataset:
    """The arrays a model needs from ``path`` (pickle disabled); BadInputError naming what is
    missing or inconsistent."""
    path = Path(path)
    keys = dataset_keys(path)
    missing = [n for n in input_names if n not in keys]
    if missing:
        raise BadInputError(
            f"evaluation dataset {path} has no array for model input(s) {', '.join(missing)} "
            f"(it has: {', '.join(keys) or 'nothing'})",
            hint="save one array per model input, named like the input")
    with np.load(path, allow_pickle=False) as npz:
        inputs = {n: npz[n] for n in input_names}
        label_key = next((k for k in LABEL_KEYS if k in keys), None)
        labels = npz[label_key] if label_key else None
        references = {n: npz[n] for n in output_names if n in keys and n not in input_names}
    counts = {k: len(v) for k, v in inputs.items()}
    counts.update({k: len(v) for k, v in references.items()})
    if labels is not None:
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise BadInputError(f"{path}: 'labels' must be a 1-D integer array of class "
                                f"indices, got {labels.dtype} {list(labels.shape)}")
        counts["labels"] = len(labels)
    if len(set(counts.values())) > 1:
        raise BadInputError(f"{path}: arrays disagree on the number of samples: {counts}",
                            hint="every array's first axis is the sample index")
    samples = next(iter(counts.values()), 0)
    if samples == 0:
        raise BadInputError(f"evaluation dataset {path} holds 0 samples")
    return EvalDataset(path, inputs, labels, references, samples)


# ---------------------------------------------------------------------- metrics
# The board's own definitions (edgetune.device.metrics, pure numpy), so a local top-1 or
# cosine is the number a board would report for the same outputs: one implementation.

class_scores = as_class_scores      # the name this module has always exported


def _batches(samples: int, batch: int) -> List[Tuple[int, int]]:
    """(begin, end) of each batch, as the board's evaluation loop walks them."""
    return [(b, min(b + batch, samples)) for b in range(0, samples, batch)]


# ---------------------------------------------------------------------- local

def _session_options(session: Any) -> Tuple[Any, List[str]]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    providers = ["CPUExecutionProvider"]
    if session is not None:
        if session.intra_op_threads:
            options.intra_op_num_threads = session.intra_op_threads
        if session.inter_op_threads:
            options.inter_op_num_threads = session.inter_op_threads
        levels = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                  "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                  "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
        options.graph_optimization_level = levels.get(session.graph_optimization,
                                                      ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        if session.providers:
            providers = list(session.providers)
    return options, providers


def run_on_dataset(model_path: Path, path: Path, session: Any = None, batch_size: int = 64,
                   used: Optional[Dict[str, int]] = None
                   ) -> Tuple[EvalDataset, List[str], Dict[str, np.ndarray], float]:
    """Run ``model_path`` over the dataset at ``path``: (the dataset, output names, every
    output stacked, seconds spent in ``session.run``). A fixed batch dimension is honoured
    (the last batch padded with its last sample); ``used["batch"]`` is set to the batch
    size run."""
    import onnxruntime as ort

    model_path = Path(model_path)
    if not model_path.is_file():
        raise NotFoundError(f"model {model_path} does not exist")
    options, providers = _session_options(session)
    try:
        sess = ort.InferenceSession(str(model_path), sess_options=options, providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several types
        raise BadInputError(f"onnxruntime cannot load {model_path}: {exc}") from None
    inputs = sess.get_inputs()
    names = [o.name for o in sess.get_outputs()]
    dataset = load_eval_dataset(path, [i.name for i in inputs], names)
    fixed = None
    for arg in inputs:
        if arg.shape and isinstance(arg.shape[0], int) and arg.shape[0] > 0:
            fixed = arg.shape[0]
    batch = fixed or batch_size
    if used is not None:
        used["batch"] = batch
    parts: Dict[str, List[np.ndarray]] = {n: [] for n in names}
    run_s = 0.0
    for begin in range(0, dataset.samples, batch):
        real = min(batch, dataset.samples - begin)
        feed = {}
        for arg in inputs:
            part = dataset.inputs[arg.name][begin:begin + batch]
            if fixed and real < batch:
                part = np.concatenate([part, np.repeat(part[-1:], batch - real, axis=0)])
            feed[arg.name] = np.ascontiguousarray(part)
        t0 = time.perf_counter()
        try:
            results = sess.run(names, feed)
        except Exception as exc:  # noqa: BLE001
            raise BadInputError(f"onnxruntime failed to run {model_path} on {path}: {exc}",
                                hint="check that the dataset arrays match the model's input "
                                     "shapes and types") from None
        run_s += time.perf_counter() - t0
        for name, value in zip(names, results):
            parts[name].append(value[:real])
    outputs = {n: np.concatenate(v) for n, v in parts.items()}
    return dataset, names, outputs, run_s


class _Evaluator:
    """What both evaluators share: the default dataset and metric (checked here), the session
    options and batch size, and the last evaluation's resolved metric and numbers."""

    def __init__(self, dataset_path: Optional[Path], metric: str, session: Any,
                 batch_size: int) -> None:
        _check_metric(metric)
        self.dataset_path = Path(dataset_path) if dataset_path is not None else None
        self.metric = metric
        self.session = session
        self.batch_size = batch_size
        self.metric_name: Optional[str] = None
        self.last_latency_ms: Optional[float] = None
        self.last_details: Dict[str, float] = {}
        self.evaluations = 0

    def _args(self, dataset_path: Optional[Path], metric: Optional[str]) -> Tuple[Path, str]:
        path = Path(dataset_path) if dataset_path is not None else self.dataset_path
        if path is None:
            raise UsageError("no evaluation dataset given", hint="pass --eval D.npz")
        name = resolve_metric(metric or self.metric, dataset_keys(path), path)
        self.metric_name = name
        return path, name


class LocalEvaluator(_Evaluator):
    """Evaluates models with onnxruntime on this PC.

    ``dataset_path`` / ``metric``: defaults for calls that do not name them. ``session``: a
    ``edgetune.protos.messages.SessionOptions`` (providers, threads, optimization level), the same
    options an agent takes. ``batch_size``: samples per run (a model's fixed batch wins).
    """

    where = "local onnxruntime"

    def __init__(self, dataset_path: Optional[Path] = None, metric: str = "auto",
                 session: Any = None, batch_size: int = 64) -> None:
        super().__init__(dataset_path, metric, session, batch_size)
        if batch_size < 1:
            raise UsageError("the evaluation batch size must be at least 1")
        self._float_outputs: Dict[Path, Dict[str, np.ndarray]] = {}
        self._last_batch: Optional[int] = None          # the batch size of the last run

    def _run(self, model_path: Path, path: Path
             ) -> Tuple[EvalDataset, List[str], Dict[str, np.ndarray]]:
        """One run over the dataset, counted, its mean time per sample kept."""
        used: Dict[str, int] = {}
        dataset, names, outputs, seconds = run_on_dataset(model_path, path, self.session,
                                                          self.batch_size, used=used)
        self._last_batch = used["batch"]
        self.last_latency_ms = 1000.0 * seconds / dataset.samples
        self.evaluations += 1
        return dataset, names, outputs

    def _score(self, metric: str, dataset: EvalDataset, names: Sequence[str],
               outputs: Dict[str, np.ndarray], references: Dict[str, np.ndarray]) -> float:
        """The board's metrics (``edgetune.device.metrics`` accumulators, fed batch by batch
        as the board's loop feeds them, so the float sums add up in the same order)."""
        details: Dict[str, float] = {}
        batches = _batches(dataset.samples, self._last_batch or self.batch_size)
        if dataset.labels is not None:
            found = [n for n in names if class_scores(outputs[n]) is not None
                     and class_scores(outputs[n]).shape[1] > 1]  # type: ignore[union-attr]
            if found:
                scores = class_scores(outputs[found[0]])
                for k in (1, 5):
                    if scores.shape[1] > k:  # type: ignore[union-attr]
                        topk = TopK(k)
                        for begin, end in batches:
                            topk.update(scores[begin:end],  # type: ignore[index]
                                        dataset.labels[begin:end])
                        details[f"top{k}"] = topk.result()
            elif metric in ("top1", "top5"):
                shapes = ", ".join(f"{n} {list(outputs[n].shape)}" for n in names)
                raise BadInputError(f"{metric} needs an output shaped [N, classes]; the model's "
                                    f"outputs are {shapes}", hint="use --metric fidelity")
        if references:
            cosines = []
            for name, ref in references.items():
                if ref.shape != outputs[name].shape:
                    raise BadInputError(
                        f"reference output {name!r} has shape {list(ref.shape)} but the model "
                        f"produced {list(outputs[name].shape)}")
                fidelity = Fidelity()
                for begin, end in batches:
                    fidelity.update(ref[begin:end], outputs[name][begin:end])
                cosines.append(fidelity.result()["cosine"])
            details["fidelity"] = float(np.mean(cosines))
        self.last_details = details
        if metric not in details:
            if metric == "fidelity":
                raise BadInputError(
                    f"fidelity needs the float model's outputs: {dataset.path} holds no array "
                    "named after the model's outputs, and no baseline was computed",
                    hint="let the fallback compute it (it runs the float model first), or store "
                         "reference outputs in the dataset under the output names")
            raise BadInputError(f"metric {metric} cannot be computed on {dataset.path}: the model "
                                "has no class-shaped output with more than "
                                f"{metric[-1]} classes")
        return details[metric]

    def baseline(self, float_model: Path, dataset_path: Optional[Path] = None,
                 metric: Optional[str] = None) -> float:
        """The float model's score; its outputs become the fidelity reference."""
        path, name = self._args(dataset_path, metric)
        dataset, names, outputs = self._run(Path(float_model), path)
        self._float_outputs[path.resolve()] = outputs
        return self._score(name, dataset, names, outputs, outputs)

    def evaluate(self, model_path: Path, dataset_path: Optional[Path] = None,
                 metric: Optional[str] = None) -> float:
        path, name = self._args(dataset_path, metric)
        dataset, names, outputs = self._run(Path(model_path), path)
        references = self._float_outputs.get(path.resolve()) or dataset.references
        return self._score(name, dataset, names, outputs, references)


# ---------------------------------------------------------------------- on a board

_RESULT_KEYS = {"top1": "top1", "top5": "top5", "fidelity": "cosine"}


class AgentEvaluator(_Evaluator):
    """Evaluates models on a board: uploads the model (and once, the dataset) to its agent
    through ``board`` (a ``edgetune.host.board.BoardSession``, or an ``AgentClient`` that one
    is made over) and runs an evaluation job there, so the fallback is judged on the target's
    own kernels.

    For ``fidelity`` the float model's outputs are computed here once (onnxruntime on this PC)
    and uploaded inside the dataset as reference outputs; the float baseline itself is then
    evaluated on the board like any candidate.
    """

    def __init__(self, board: Any, dataset_path: Optional[Path] = None, metric: str = "auto",
                 session: Any = None, batch_size: int = 1, label: str = "edgetune fallback"
                 ) -> None:
        from edgetune.host.board import BoardSession

        super().__init__(dataset_path, metric, session, batch_size)
        self.board = board if isinstance(board, BoardSession) else BoardSession(board)
        self.last_run: Any = None                            # the last typed EvaluationRun
        self.label = label
        self._datasets: Dict[Tuple[Path, str], str] = {}     # (dataset, metric) -> sha256
        self._tmp: Optional[tempfile.TemporaryDirectory] = None

    @property
    def where(self) -> str:
        return f"agent at {self.board.address}"

    def _upload_dataset(self, path: Path, metric: str, float_model: Optional[Path]) -> str:
        from edgetune.protos.messages import BlobKind

        key = (path.resolve(), metric)
        if key in self._datasets:
            return self._datasets[key]
        upload = path
        if metric == "fidelity" and float_model is not None:
            upload = self._with_references(path, Path(float_model))
        outcome = self.board.upload(upload, BlobKind.DATASET, name=path.name)
        self._datasets[key] = outcome.blob.sha256
        return outcome.blob.sha256

    def _with_references(self, path: Path, float_model: Path) -> Path:
        """The dataset plus the float model's outputs under the output names (computed here)."""
        _, names, outputs, _ = run_on_dataset(float_model, path)
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files if k not in names}
        arrays.update(outputs)
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="edgetune-eval-")
        target = Path(self._tmp.name) / f"{path.stem}.with-reference.npz"
        np.savez(target, **arrays)
        return target

    def _run(self, model_path: Path, dataset_sha: str, metric: str) -> float:
        from edgetune.host.board import BlobRef
        from edgetune.protos.messages import BlobKind, EvaluateSpec, SessionOptions

        model_path = Path(model_path)
        if not model_path.is_file():
            raise NotFoundError(f"model {model_path} does not exist")
        spec = EvaluateSpec(model_sha256="", dataset_sha256="",
                            session=self.session or SessionOptions(), metrics=(metric,),
                            batch_size=self.batch_size)
        run = self.board.evaluate(model_path, BlobRef("", BlobKind.DATASET, sha256=dataset_sha),
                                  spec, label=f"{self.label}: {model_path.name}")
        if not run.ok or run.result is None:
            raise AgentError(f"the evaluation of {model_path.name} on {self.where} ended "
                             f"{run.state.value}: {run.error or 'no result'}",
                             hint=f"see the agent's log; job {run.job_id}")
        self.last_run = run
        metrics = run.result.metric_dict()
        self.last_details = dict(metrics)
        self.evaluations += 1
        samples = max(1, int(run.result.samples))
        self.last_latency_ms = 1000.0 * float(run.result.elapsed_s) / samples
        key = _RESULT_KEYS[metric]
        if key in metrics:
            return float(metrics[key])
        per_output = [v for k, v in metrics.items() if k.endswith("/" + key)]
        if per_output:
            return float(np.mean(per_output))
        raise AgentError(f"the agent returned no {key!r} metric (it returned: "
                         f"{', '.join(sorted(metrics)) or 'nothing'})")

    def baseline(self, float_model: Path, dataset_path: Optional[Path] = None,
                 metric: Optional[str] = None) -> float:
        path, name = self._args(dataset_path, metric)
        sha = self._upload_dataset(path, name, Path(float_model))
        return self._run(Path(float_model), sha, name)

    def evaluate(self, model_path: Path, dataset_path: Optional[Path] = None,
                 metric: Optional[str] = None) -> float:
        path, name = self._args(dataset_path, metric)
        sha = self._upload_dataset(path, name, None)
        return self._run(Path(model_path), sha, name)

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


__all__ = ["AgentEvaluator", "EvalDataset", "LocalEvaluator", "METRICS", "class_scores",
           "dataset_keys", "load_eval_dataset", "resolve_metric", "run_on_dataset",
           "sample_cosines", "topk_correct"]
