"""The measured numbers beside the published ones: ``rkbench report DIR --against-paper``.

A suite's ``references`` (teacher x student x method label -> paper, table, clean / PGD-20 /
AutoAttack in %) are validated when the suite loads and copied by the runner into
``references.json`` of the results directory; this module reads that file and the runs, never
torch. One row per published number: the paper's value, the measured mean over the row's finished
seeds, the difference (measured - paper, in points) and the flag ``!off`` when the difference is
larger than the tolerance in absolute value.
"""
from __future__ import annotations

import sys

import numpy as np
import pandas as pd

from ..store import REFERENCE_METRICS, REFERENCES, read_references
from .frame import Results

DEFAULT_TOLERANCE = 2.0  # points
OFF = "!off"
COLUMNS = ["teacher", "student", "method", "metric", "paper_value", "measured", "difference", "flag", "seeds",
           "paper", "table"]


def reference_rows(results: Results) -> list[dict]:
    """Every reference of every results directory read, with its suite and directory."""
    from pathlib import Path

    rows = []
    for source in results.sources:
        found, problem = read_references(Path(source))
        if problem:
            print(f"warning: skipped {Path(source) / REFERENCES}: {problem}", file=sys.stderr)
        for suite, references in found.items():
            for reference in references:
                rows.append({"suite": suite, "_source": source, "reference": reference})
    return rows


def measured_mean(results: Results, suite: str, source: str, row: tuple[str, str, str], metric: str):
    """(mean over the finished seeds of the row, number of seeds); (nan, 0) when none finished or
    the attack was not run on every example (a cascade column)."""
    runs = results.runs
    if runs.empty or metric not in runs.columns:
        return np.nan, 0
    teacher, student, method = row
    chosen = runs[runs["_finished"] & (runs["_source"] == source) & (runs["suite"] == suite)
                  & (runs["teacher"] == teacher) & (runs["student"] == student) & (runs["method"] == method)]
    values = chosen[metric].astype(float).dropna()
    return (float(values.mean()), len(values)) if len(values) else (np.nan, 0)


def against_paper(results: Results, tolerance: float = DEFAULT_TOLERANCE) -> pd.DataFrame:
    """One row per published number (see the module docstring); accuracies in %."""
    rows = []
    several = len({r["suite"] for r in reference_rows(results)}) > 1 or len(results.sources) > 1
    for entry in reference_rows(results):
        reference = entry["reference"]
        for metric in REFERENCE_METRICS:
            published = getattr(reference, metric)
            if published is None:
                continue
            measured, seeds = measured_mean(results, entry["suite"], entry["_source"], reference.row, metric)
            difference = measured - published if seeds else np.nan
            row = {"suite": entry["suite"], "teacher": reference.row[0], "student": reference.student,
                   "method": reference.method, "metric": metric, "paper_value": float(published),
                   "measured": measured, "difference": difference,
                   "flag": OFF if seeds and abs(difference) > tolerance else "", "seeds": seeds,
                   "paper": reference.paper, "table": reference.table}
            rows.append(row)
    columns = (["suite"] if several else []) + COLUMNS
    return pd.DataFrame(rows, columns=["suite", *COLUMNS]).reindex(columns=columns)


def legend(frame: pd.DataFrame, tolerance: float) -> str:
    off = int((frame["flag"] == OFF).sum()) if not frame.empty else 0
    unmeasured = int((frame["seeds"] == 0).sum()) if not frame.empty else 0
    text = (f"\nAccuracy in %; difference = measured - paper (points); `{OFF}`: |difference| > {tolerance:g} "
            f"points ({off} of {len(frame)} numbers).")
    if unmeasured:
        text += f" {unmeasured} published number(s) have no finished run (or only a cascade column) yet."
    return text + "\n"
