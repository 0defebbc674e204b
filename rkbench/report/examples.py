"""Per-example correctness read back from ``per_example.npz`` (numpy only; never torch).

The file holds, per attack label, a boolean array ``correct`` and ``<label>__evaluated`` (was the
attack run on that example), ``clean``, and ``__labels`` (the true classes; absent in files
written before labels were stored). The per-example worst case is recomputed here the way the
evaluator computes it: correct on clean inputs and under every attack where it ran.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import RkbenchError
from ..record import RunRecord
from ..store import CLEAN, EVALUATED, LABELS, PER_EXAMPLE


def read_arrays(run_directory: Path) -> dict[str, np.ndarray] | None:
    path = Path(run_directory) / PER_EXAMPLE
    if not path.is_file():
        return None
    try:
        with np.load(path) as arrays:
            return {key: arrays[key] for key in arrays.files}
    except Exception:  # damaged: nothing to read (the run's own numbers still come from metrics.json)
        return None


def correctness(arrays: dict[str, np.ndarray], record: RunRecord) -> dict[str, np.ndarray | None]:
    """metric -> per-example correctness: ``clean``, each attack of the run (None where the cascade
    ran it on survivors only: it has no accuracy of its own), ``worst_case``."""
    clean = arrays[CLEAN].astype(bool)
    out: dict[str, np.ndarray | None] = {CLEAN: clean}
    worst = clean.copy()
    for label in record.robust_accuracy or {}:
        if label not in arrays:
            raise RkbenchError(f"per_example.npz of run {record.run_id} has no array for attack {label!r}")
        correct = arrays[label].astype(bool)
        evaluated = arrays.get(label + EVALUATED, np.ones_like(correct)).astype(bool)
        out[label] = correct if evaluated.all() else None
        worst &= correct | ~evaluated
    out["worst_case"] = worst
    return out


def labels(arrays: dict[str, np.ndarray]) -> np.ndarray | None:
    value = arrays.get(LABELS)
    return None if value is None else value.astype(np.int64)


def class_counts(run_directory: Path, record: RunRecord, metric: str = "worst_case",
                 arrays: dict[str, np.ndarray] | None = None) -> dict[int, tuple[int, int]] | None:
    """class -> (examples correct under ``metric``, examples) of one run; None without labels.
    ``arrays``: the run's per_example.npz if already read."""
    arrays = read_arrays(run_directory) if arrays is None else arrays
    if arrays is None or LABELS not in arrays or CLEAN not in arrays:
        return None
    try:
        correct = correctness(arrays, record).get(metric)
    except RkbenchError:
        return None
    truth = labels(arrays)
    if correct is None or truth is None or len(truth) != len(correct):
        return None
    return {int(c): (int(correct[truth == c].sum()), int((truth == c).sum())) for c in np.unique(truth)}
