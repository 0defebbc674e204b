"""rkbench: a benchmark and leaderboard harness for robust knowledge distillation.

The Python API (imported lazily, so ``rkbench report`` never loads torch):
``load_suite``, ``run_suite``, ``leaderboard``.
"""
from __future__ import annotations

__version__ = "0.1.0"

_API = {
    "load_suite": ("rkbench.suite", "load_suite"),
    "run_suite": ("rkbench.runner", "run_suite"),
    "leaderboard": ("rkbench.report", "leaderboard_frame"),
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        import importlib

        module, attribute = _API[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'rkbench' has no attribute {name!r}")
