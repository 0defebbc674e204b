"""Filter, sort and pivot a leaderboard frame (``--where``, ``--sort``, ``--pivot``)."""
from __future__ import annotations

import dataclasses
import difflib

import numpy as np
import pandas as pd

from ..errors import RkbenchError
from .frame import Results, _columns, aggregate_frame, per_seed_frame, public

PIVOTS = ("method", "student", "teacher")


def _unknown(column: str, known, option: str) -> RkbenchError:
    known = [c for c in known if not str(c).startswith("_")]
    close = difflib.get_close_matches(column, known, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else f"; columns: {', '.join(known)}"
    return RkbenchError(f"{option}: unknown column {column!r}{hint}")


def parse_where(items) -> list[tuple[str, str, list[str]]]:
    """``key=value`` (value may list alternatives: ``method=ard,at``) or ``key!=value``."""
    conditions = []
    for item in items or ():
        if "=" not in item:
            raise RkbenchError(f"--where {item!r}: expected column=value (or column!=value)")
        key, value = item.split("=", 1)
        negate = key.endswith("!")
        key = key.rstrip("!").strip()
        if not key:
            raise RkbenchError(f"--where {item!r}: expected column=value (or column!=value)")
        conditions.append((key, "!=" if negate else "=", [v.strip() for v in value.split(",")]))
    return conditions


def _matches(series: pd.Series, values: list[str]) -> pd.Series:
    text = series.map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))
    hit = text.isin(values)
    numeric = pd.to_numeric(series, errors="coerce")
    for value in values:
        try:
            number = float(value)
        except ValueError:
            continue
        hit |= np.isclose(numeric.astype(float), number, rtol=0, atol=1e-9) & numeric.notna()
    return hit


def apply_where(frame: pd.DataFrame, conditions, extra_known=()) -> pd.DataFrame:
    for key, op, values in conditions:
        if key not in frame.columns:
            raise _unknown(key, [*frame.columns, *extra_known], "--where")
        hit = _matches(frame[key], values)
        frame = frame[~hit if op == "!=" else hit]
    return frame


def parse_sort(text: str | None) -> list[tuple[str, bool | None]]:
    """``col``, ``col:asc``, ``col:desc``, comma-separated; no direction: numbers descend, text ascends."""
    keys = []
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        column, _, direction = part.partition(":")
        if direction not in ("", "asc", "desc"):
            raise RkbenchError(f"--sort {part!r}: direction must be asc or desc")
        keys.append((column.strip(), None if not direction else direction == "asc"))
    return keys


def apply_sort(frame: pd.DataFrame, keys) -> pd.DataFrame:
    for column, _ in keys:
        if column not in frame.columns:
            raise _unknown(column, frame.columns, "--sort")
    for column, ascending in reversed(keys):  # stable sorts, last key first
        series = frame[column]
        numeric = pd.to_numeric(series, errors="coerce")
        is_numeric = numeric.notna().any() and numeric.notna().sum() >= series.notna().sum()
        if ascending is None:
            ascending = not is_numeric
        key = numeric if is_numeric else series.astype(str)
        order = key.sort_values(ascending=ascending, kind="stable", na_position="last").index
        frame = frame.loc[order]
    return frame


def pivot(frame: pd.DataFrame, by: str, value: str = "worst_case") -> pd.DataFrame:
    """One column per value of ``by`` (``method``: methods as columns, one row per student), cells
    ``value`` (with ``value``_std beside it where the frame has it). A method distilled from several
    teachers gets one column per teacher: ``kd@teacher``."""
    if by not in PIVOTS:
        raise RkbenchError(f"--pivot: pivot on one of {', '.join(PIVOTS)}, not {by!r}")
    if value not in frame.columns:
        raise _unknown(value, frame.columns, "--value")
    if "status" in frame.columns:  # a failed run has no value to show (and would collide with its seeds' row)
        frame = frame[~frame["status"].astype(str).str.startswith("failed")]
    frame = frame.copy()
    # suites merged into one table share rows: the point of a pivot is a new method beside its baselines
    index = [c for c in ["teacher", "student", "method"] if c != by and not (by == "method" and c == "teacher")]
    label = frame[by].astype(str)
    if by == "method":  # the teacher joins the column name where one method has several teachers
        teachers_per_method = frame.groupby("method")["teacher"].nunique()
        several = frame["method"].map(teachers_per_method) > 1
        label = label.where(~several | (frame["teacher"] == "-"), label + "@" + frame["teacher"].astype(str))
    frame["_column"] = label
    std = f"{value}_std" if f"{value}_std" in frame.columns else None
    duplicated = frame.duplicated(index + ["_column"], keep=False)
    if duplicated.any():
        example = frame[duplicated].iloc[0]
        raise RkbenchError(f"--pivot {by}: several rows for {', '.join(f'{c}={example[c]}' for c in index)}, "
                           f"{by}={example['_column']} (pick one with --where, e.g. --where suite=NAME)")
    columns = list(dict.fromkeys(frame["_column"]))
    rows = []
    for key, group in frame.groupby(index, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(index, key))
        for _, item in group.iterrows():
            row[item["_column"]] = item[value]
            if std:
                row[f"{item['_column']}_std"] = item[std]
        rows.append(row)
    ordered = index + [c for column in columns for c in ([column, f"{column}_std"] if std else [column])]
    out = pd.DataFrame(rows).reindex(columns=ordered)
    out.attrs["pivot"] = {"by": by, "value": value, "columns": columns}
    return out


def leaderboard(paths, per_seed: bool = False, where=(), sort: str | None = None, pivot_by: str | None = None,
                value: str = "worst_case", results: Results | None = None, internal: bool = False) -> pd.DataFrame:
    """The leaderboard of one or several results directories as a DataFrame (accuracies in %).

    per_seed: one row per run instead of mean (and ``_std``) over seeds; where: ``["student=mlp",
    "method=ard,at"]``; sort: ``"worst_case"`` or ``"student:asc,worst_case:desc"``; pivot_by:
    ``"method"`` for methods as columns (cells: ``value``)."""
    from .frame import collect

    results = results if results is not None else collect(paths)
    conditions = parse_where(where)
    runs = results.runs
    if conditions and not runs.empty:  # conditions on run columns filter runs before they are aggregated
        runs_view = per_seed_frame(results)
        on_runs = [c for c in conditions if c[0] in set(runs_view.columns) and (per_seed or c[0] != "seeds")]
        later = [c for c in conditions if c not in on_runs]
        keep = apply_where(runs_view, on_runs)["run_id"]
        results = dataclasses.replace(results, runs=runs[runs["run_id"].isin(set(keep))].reset_index(drop=True))
        conditions = later
    frame = per_seed_frame(results) if per_seed else aggregate_frame(results)
    frame = apply_where(frame, conditions, extra_known=_columns(results, "per_seed") if not per_seed else ())
    frame = apply_sort(frame, parse_sort(sort)).reset_index(drop=True)
    if pivot_by:
        return pivot(public(frame), pivot_by, value)
    return frame if internal else public(frame)
