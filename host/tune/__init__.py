"""The tuner: an Optuna study of quantization x onnxruntime session options, measured on
boards, kept in the results database (``edgetune tune``; docs/tuning.md).

The Python entry point (``edgetune demo`` and the CLI call it)::

    from edgetune.host.tune import BoardSpec, TuneSettings, run_study
    settings = TuneSettings(model=Path("digits_cnn.onnx"),
                            calib=(CalibSource(Path("digits_calib.npz")),),
                            dataset=Path("digits_test.npz"), db_url="sqlite:///results.db",
                            trials=12, max_drop=1.0)
    result = run_study(settings, [BoardSpec("board1", "127.0.0.1:50051", identity)])
    print(result.summary)             # "tuning improved p50 by 38% over default INT8 ..."
    write_outputs(result, Path("tuned"))   # edgetune.host.tune.report

Modules: ``space`` (the space, tune.toml, candidates), ``variants`` (quantized variants cached
by content, the sensitivity ranking), ``objective`` (metrics, constraint, early stopping,
Pareto front), ``trials`` (one trial on one board), ``scheduler`` (parallel, resumable, fault
tolerant), ``study`` (Optuna storage on the results database), ``final`` (the interleaved
check of the answer), ``report`` (the output directory), ``run`` (``run_study``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["BoardSpec", "StudyResult", "TuneSettings", "run_study", "write_outputs"]

_WHERE = {"BoardSpec": "boards", "StudyResult": "final", "TuneSettings": "settings",
          "run_study": "run", "write_outputs": "report"}


def __getattr__(name: str) -> Any:      # imports on first use: `edgetune --help` stays fast
    if name in _WHERE:
        import importlib
        return getattr(importlib.import_module(f"edgetune.host.tune.{_WHERE[name]}"), name)
    raise AttributeError(name)
