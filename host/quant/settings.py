"""Typed, frozen settings for quantization, built once at the edge (CLI flags, TOML, XQuant JSON).

This module is the contract between the parts of ``edgetune.host.quant``:
- ``edgetune.host.quant.config`` and ``edgetune.host.cli.quantize_cmd`` build a ``QuantizeSettings``;
- ``edgetune.host.quant.calibdata`` turns ``CalibSource``/``Preprocess`` into model feeds;
- ``edgetune.host.quant.pipeline`` quantizes with it; ``edgetune.host.quant.fallback`` derives variants with
  ``dataclasses.replace`` (other overrides, the same ranges file).
Nothing here imports onnx or onnxruntime.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Tuple

METHODS = ("minmax", "percentile", "entropy", "mse", "distribution")
ENTROPY_COMPAT = ("edgetune", "ort")                   # entropy's search (host.quant.entropy)
ACT_TYPES = ("uint8", "int8", "int16")
WEIGHT_TYPES = ("int8", "uint8")
LAYOUTS = ("nchw", "nhwc")
COLORS = ("rgb", "bgr")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "area")
FILE_TYPES = ("auto", "img", "npy", "npz", "raw")
FALLBACK_METRICS = ("auto", "top1", "top5", "fidelity")
# The fallback's search strategies and THE default (the CLI, TOML files and FallbackSettings all
# use this one): greedy with re-ranking met the planted-layer target with as many int8 layers
# as bisection and fewer evaluations (bench/fallback_strategies.py).
FALLBACK_STRATEGIES = ("greedy", "bisect")
DEFAULT_FALLBACK_STRATEGY = "greedy"
# What the fallback minimises among candidates that meet --max-drop: "accuracy" keeps the most
# int8 layers; "latency" benchmarks every candidate on the board and keeps the fastest
# (host.quant.fallback_latency).
FALLBACK_BY = ("accuracy", "latency")


@dataclass(frozen=True)
class Preprocess:
    """How image files become an input tensor (ignored for npy/npz/raw sources)."""

    input_size: Optional[Tuple[int, int]] = None      # (H, W); None: from the model's input
    interpolation: str = "bilinear"
    color: str = "rgb"                                 # channel order fed to the model
    mean: Tuple[float, ...] = (0.0, 0.0, 0.0)          # 0-255 scale: (x - mean) / std
    std: Tuple[float, ...] = (1.0, 1.0, 1.0)
    layout: Optional[str] = None                       # None: inferred from the input shape
    function: Optional[str] = None                     # "file.py:function" for anything else


@dataclass(frozen=True)
class CalibSource:
    """Calibration data for one model input."""

    path: Path                                         # folder, list file, .npy/.npz, raw file
    input_name: Optional[str] = None                   # None: the model's only input
    file_type: str = "auto"                            # one of FILE_TYPES
    preprocess: Preprocess = field(default_factory=Preprocess)
    shape: Optional[Tuple[int, ...]] = None            # full input shape incl. batch; fixes
                                                       # symbolic dims (raw files need it)


@dataclass(frozen=True)
class SubgraphOverride:
    """Every node between these boundary tensors gets ``precision`` (XQuant custom_setting)."""

    inputs: Tuple[str, ...]
    outputs: Tuple[str, ...]
    precision: str = "int16"                           # "int8", "int16" or "float"
    method: Optional[str] = None                       # per-subgraph calibration method
    percentile: Optional[float] = None


@dataclass(frozen=True)
class QuantizeSettings:
    model: Path
    output: Path
    calib: Tuple[CalibSource, ...] = ()
    calib_count: int = 100
    seed: int = 0
    method: str = "minmax"                             # one of METHODS
    percentile: float = 99.999
    histogram_bins: int = 2048                         # entropy/percentile/mse/distribution
    quantized_bins: Optional[int] = None               # entropy's cells per window; None: the
                                                       # act type's levels (255 with "ort")
    entropy_compat: str = "edgetune"                   # "ort": onnxruntime's exact KL search
    per_channel: bool = True
    per_channel_ops: Tuple[str, ...] = ()              # per-channel weights for these op kinds
                                                       # only ("Conv", "Conv/depthwise", "Gemm",
                                                       # "MatMul"; AIPU ops_per_channel)
    act_type: str = "uint8"                            # one of ACT_TYPES
    weight_type: str = "int8"                          # one of WEIGHT_TYPES
    symmetric_act: bool = False
    reduce_range: bool = False
    op_types: Tuple[str, ...] = ()                     # empty: every type onnxruntime quantizes
    exclude: Tuple[str, ...] = ()                      # node names, globs, or op types: stay float
    int16: Tuple[str, ...] = ()                        # node names, globs, or op types: int16
    subgraphs: Tuple[SubgraphOverride, ...] = ()
    truncate: Tuple[str, ...] = ()                     # everything after these tensors stays float
    ranges: Optional[Path] = None                      # reuse saved ranges; no calibration data
    calib_batch: int = 16                              # samples per calibration chunk
    skip_preprocess: bool = False                      # skip shape inference / fusion
    force: bool = False                                # overwrite an existing output
    source: str = "flags"                              # where the settings came from (record)
    notes: Tuple[str, ...] = ()                        # decisions taken while reading flags/config
                                                       # (for the record: what was mapped, how)


@dataclass(frozen=True)
class FallbackSettings:
    """``--max-drop``: repair accuracy by raising the precision of the most sensitive layers."""

    max_drop: float                                    # in the metric's own unit (top1: 0.01 = 1 point)
    eval_dataset: Path
    metric: str = "auto"                               # top1, top5, fidelity (cosine); auto: top1 if labels
    strategy: str = DEFAULT_FALLBACK_STRATEGY          # one of FALLBACK_STRATEGIES
    max_steps: int = 32
    device: Optional[str] = None                       # evaluate on this board instead of locally
    by: str = "accuracy"                               # one of FALLBACK_BY ("latency": needs a board)


def output_paths(output: Path) -> Tuple[Path, Path]:
    """(ranges path, record path) beside a quantized model: OUT.ranges.json, OUT.record.json
    (also how the results store finds the float model a quantized one was made from)."""
    output = Path(output)
    stem = output.name[:-5] if output.name.endswith(".onnx") else output.name
    return output.with_name(stem + ".ranges.json"), output.with_name(stem + ".record.json")
