"""The leaderboard, built from run files alone (no torch, no in-memory state of a run)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from ..store import METRICS, RUNS, TEACHERS, iter_result_dirs, read_json, write_text

ID_COLUMNS = ["teacher", "student", "method", "seed"]
TAIL_COLUMNS = ["worst_case", "train_s", "params", "flags", "status", "run_id"]
CASCADE = "cascade"  # an attack the cascade ran on the still-robust examples only: no accuracy of its own


def load_metrics(directory: Path) -> dict | None:
    """A run's metrics, or None when the directory holds no readable result yet."""
    path = Path(directory) / METRICS
    if not path.is_file():
        return None
    try:
        metrics = read_json(path)
    except (OSError, json.JSONDecodeError):
        return None
    return metrics if isinstance(metrics, dict) and "run_id" in metrics else None


def leaderboard_frame(results_dir: str | Path) -> pd.DataFrame:
    """One row per run: teacher, student, method, seed, clean, one column per attack (accuracy in
    %), worst case, training time, parameters, status."""
    rows, attack_order = [], []
    for directory in iter_result_dirs(Path(results_dir), RUNS):
        metrics = load_metrics(directory)
        if metrics is None:
            continue
        row = {key: metrics.get(key) for key in ID_COLUMNS}
        row["clean"] = _percent(metrics.get("clean_accuracy"))
        for label, value in (metrics.get("robust_accuracy") or {}).items():
            if label not in attack_order:
                attack_order.append(label)
            row[label] = CASCADE if value is None else _percent(value)
        row["worst_case"] = _percent(metrics.get("worst_case_accuracy"))
        row["flags"] = " ".join(sorted({f"!{flag['code']}" for flag in metrics.get("flags") or []})) or None
        row["train_s"] = _round(metrics.get("train_seconds"), 1)
        row["params"] = metrics.get("parameters")
        row["status"] = metrics.get("status", "?") if not metrics.get("error") else f"failed: {metrics['error']}"
        row["run_id"] = metrics["run_id"]
        rows.append(row)
    columns = ID_COLUMNS + ["clean"] + attack_order + TAIL_COLUMNS
    frame = pd.DataFrame(rows, columns=columns)
    if frame.empty:
        return frame
    return frame.sort_values(["student", "teacher", "method", "seed"], kind="stable").reset_index(drop=True)


def teacher_frame(results_dir: str | Path) -> pd.DataFrame:
    rows = []
    for directory in iter_result_dirs(Path(results_dir), TEACHERS):
        metrics = load_metrics(directory)
        if metrics is None:
            continue
        row = {"teacher": metrics.get("teacher"), "model": metrics.get("model"), "source": metrics.get("source"),
               "clean": _percent(metrics.get("clean_accuracy"))}
        row.update({label: CASCADE if v is None else _percent(v)
                    for label, v in (metrics.get("robust_accuracy") or {}).items()})
        row["worst_case"] = _percent(metrics.get("worst_case_accuracy"))
        row["flags"] = " ".join(sorted({f"!{flag['code']}" for flag in metrics.get("flags") or []})) or None
        rows.append(row)
    return pd.DataFrame(rows)


def _percent(value) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return round(100 * float(value), 2)


def _round(value, digits: int):
    return None if value is None else round(float(value), digits)


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value).replace("|", "\\|")


def to_markdown(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured table; numbers right-aligned."""
    if frame.empty:
        return "_no finished runs_\n"
    header = "| " + " | ".join(frame.columns) + " |"
    align = "|" + "|".join("---:" if pd.api.types.is_numeric_dtype(frame[c]) else "---" for c in frame.columns) + "|"
    lines = [header, align]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join(_cell(row[c]) for c in frame.columns) + " |")
    return "\n".join(lines) + "\n"


def render(frame: pd.DataFrame, fmt: str) -> str:
    if fmt == "md":
        return to_markdown(frame)
    if fmt == "csv":
        return frame.to_csv(index=False)
    if fmt == "json":
        return json.dumps({"schema_version": 1, "rows": json.loads(frame.to_json(orient="records"))}, indent=2) + "\n"
    raise ValueError(f"unknown format {fmt!r}; use md, csv or json")


def write_leaderboard(results_dir: str | Path) -> pd.DataFrame:
    """Rebuild ``leaderboard.csv`` and ``leaderboard.md`` in the results directory."""
    results_dir = Path(results_dir)
    frame = leaderboard_frame(results_dir)
    write_text(results_dir / "leaderboard.csv", render(frame, "csv"))
    markdown = to_markdown(frame)
    teachers = teacher_frame(results_dir)
    if not teachers.empty:
        markdown += "\nTeachers (accuracy in %):\n\n" + to_markdown(teachers)
    write_text(results_dir / "leaderboard.md", markdown)
    return frame
