"""rkbench: a benchmark and leaderboard harness for robust knowledge distillation.

The Python API for scripts and notebooks (imported lazily, so ``rkbench report`` never loads torch):

- ``load_suite(path, overrides=())`` -> the typed ``Suite``;
- ``run_suite(suite_or_path, results_dir=None, overrides=(), plugins=())`` -> the outcome of every run;
- ``evaluate(model, dataset, attacks)`` -> one model under the suite protocol (``rkbench eval``);
  ``evaluate_as_recorded(dir)``: an exported folder or run directory with its suite's protocol;
- ``load_model(path)`` -> the network of an exported folder, a run directory or a model.safetensors
  (rebuilt from its config; never unpickled); ``export_run(run_dir, out)`` -> ``rkbench export``;
- ``leaderboard(dir_or_dirs, per_seed=False, where=(), sort=None, pivot_by=None)`` -> a pandas
  DataFrame, the table ``rkbench report`` prints (accuracies in %);
- ``load_plugins(paths)``: import plugin files that register methods, attacks, models, datasets.
"""
from __future__ import annotations

__version__ = "0.1.0"

_API = {
    "load_suite": ("rkbench.suite", "load_suite"),
    "run_suite": ("rkbench.api", "run_suite"),
    "evaluate": ("rkbench.api", "evaluate"),
    "evaluate_as_recorded": ("rkbench.api", "evaluate_as_recorded"),
    "load_model": ("rkbench.export", "load_model"),
    "export_run": ("rkbench.export", "export_run"),
    "leaderboard": ("rkbench.report", "leaderboard"),
    "load_plugins": ("rkbench.plugins", "load_plugins"),
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        import importlib

        module, attribute = _API[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'rkbench' has no attribute {name!r}")

