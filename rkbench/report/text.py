"""Writers for Markdown (GitHub), CSV and JSON, and the cell formatting they share with HTML."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from .frame import FLAG_HELP, PROTOCOL_UNKNOWN, SCHEMA_VERSION, devices, protocols, public
from .seeds import describe

# how numbers are shown (Markdown, HTML, the console); CSV and JSON keep full numbers, rounded
COUNTS = {"params", "madds"}
INTEGERS = {"seed", "seeds", "n", "rank", "blocks"}
DECIMALS = {"transfer_ratio": 3, "grad_cosine": 3, "train_s": 1, "local_linearity": 4, "worst_class": 1}
SIGNED = {"delta_at", "delta", "difference"}
P_VALUES = {"p", "p_holm"}
PROBABILITIES = {"prob_improvement"}  # shown as 0.92 [0.80, 1.00]
FOLDED = ("_std", "_lo", "_hi")  # shown inside their column's cell: mean ±interval (sd std)
ROUND = {"transfer_ratio": 4, "grad_cosine": 4, "local_linearity": 6, "prob_improvement": 4, "mean_rank": 4}  # CSV/JSON; everything else 2 (and %)
HIDDEN_IN_TABLES = {"cascade", "seed_list", "run_id"}  # Markdown, console and HTML (run ids as tooltips there)


def missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def human(value: float) -> str:
    """26122 -> 26.1k, 2237770 -> 2.24M, 89025024 -> 89.0M."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            number = value / scale
            return f"{number:.3g}{suffix}" if number < 100 else f"{number:.0f}{suffix}"
    return f"{value:.0f}"


def format_number(column: str, value) -> str:
    if missing(value):
        return "-"
    if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, bool):
        return str(value)
    value = float(value)
    if column in COUNTS:
        return human(value)
    if column in INTEGERS:
        return f"{value:.0f}"
    if column in SIGNED:
        return f"{value:+.2f}"
    return f"{value:.{DECIMALS.get(column, 2)}f}"


def folded(frame: pd.DataFrame, column) -> bool:
    """``X_std``, ``X_lo``, ``X_hi`` beside a column ``X``: shown inside X's cell."""
    return any(str(column).endswith(suffix) and str(column)[:-len(suffix)] in frame.columns for suffix in FOLDED)


def display_columns(frame: pd.DataFrame, hidden=HIDDEN_IN_TABLES) -> list[str]:
    """The columns a table shows: ``X_std``, ``X_lo``, ``X_hi`` fold into ``X``, internals go."""
    return [c for c in public(frame).columns if c not in hidden and not folded(frame, c)]


def interval_of(frame: pd.DataFrame, row, column: str) -> tuple[float, float] | None:
    lo, hi = f"{column}_lo", f"{column}_hi"
    if lo in frame.columns and hi in frame.columns and not missing(row[lo]) and not missing(row[hi]):
        return float(row[lo]), float(row[hi])
    return None


def format_p(value) -> str:
    if missing(value):
        return "-"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def display_cell(frame: pd.DataFrame, row, column: str) -> str:
    """One cell as text: ``78.4 ±3.8`` (± half the 95 % interval) with ``(sd 0.5)`` over seeds, a
    difference as ``+1.3 [-0.4, +3.1]``, ``mean ± std`` where there is no interval, ``cascade``
    where the attack ran on survivors only, ``-``."""
    value = row[column]
    if missing(value) and "cascade" in frame.columns and column in str(row.get("cascade", "")).split():
        return "cascade"
    if column in P_VALUES:
        return format_p(value)
    bounds = interval_of(frame, row, column) if not missing(value) else None
    std = f"{column}_std"
    has_std = std in frame.columns and not missing(row[std]) and not missing(value)
    if bounds and column in SIGNED:
        return f"{value:+.1f} [{bounds[0]:+.1f}, {bounds[1]:+.1f}]"
    if bounds and column in PROBABILITIES:
        return f"{value:.2f} [{bounds[0]:.2f}, {bounds[1]:.2f}]"
    if bounds:
        text = f"{float(value):.1f} ±{(bounds[1] - bounds[0]) / 2:.1f}"
        return text + (f" (sd {float(row[std]):.1f})" if has_std else "")
    text = format_number(column, value)
    if has_std:
        text += f" ± {format_number(column, row[std]).lstrip('+')}"
    return text


def is_numeric_column(frame: pd.DataFrame, column: str) -> bool:
    """Numbers (or nothing but missing values in a float column: an attack run by the cascade only)."""
    values = [v for v in frame[column] if not missing(v)]
    if not values:
        return pd.api.types.is_float_dtype(frame[column])
    return all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
                                for v in values)


def display_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The table as strings, as Markdown and the console show it."""
    columns = display_columns(frame)
    rows = [[display_cell(frame, row, c) for c in columns] for _, row in frame.iterrows()]
    return pd.DataFrame(rows, columns=columns, dtype=object)


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(frame: pd.DataFrame, legend: bool = True) -> str:
    """A GitHub-flavoured table (numbers right-aligned), a legend of the integrity flags raised."""
    if frame.empty:
        return "_no finished runs_\n"
    columns = display_columns(frame)
    header = "| " + " | ".join(_escape(str(c)) for c in columns) + " |"
    align = "|" + "|".join("---:" if is_numeric_column(frame, c) else "---" for c in columns) + "|"
    lines = [header, align]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join(_escape(display_cell(frame, row, c)) for c in columns) + " |")
    text = "\n".join(lines) + "\n"
    if legend:
        text += interval_legend(frame) + flag_legend(frame)
    return text


def interval_legend(frame: pd.DataFrame) -> str:
    """What ``±``, ``sd`` and the verdict mean, under a table that shows them."""
    notes = []
    if any(folded(frame, c) and str(c).endswith("_lo") and not str(c).startswith("delta") for c in frame.columns):
        notes.append("`78.4 ±3.8`: accuracy and half the width of its 95 % interval: one seed, the Wilson interval "
                     "over the test examples; several seeds, the interval of the mean over seeds from a "
                     f"{describe()}; `(sd 0.5)`: sample std over seeds; exact bounds in the CSV/JSON columns "
                     "`X_lo`, `X_hi`")
    if "verdict" in frame.columns:
        notes += list(frame.attrs.get("legend") or [])
    return "".join(f"\n{note}.\n" for note in notes)


def flag_legend(frame: pd.DataFrame) -> str:
    if "flags" not in frame.columns:
        return ""
    codes = sorted({token.split("(")[0].lstrip("!") for cell in frame["flags"] if isinstance(cell, str)
                    for token in cell.split()})
    if not codes:
        return ""
    items = "; ".join(f"`!{code}`: {FLAG_HELP.get(code, 'see metrics.json')}" for code in codes)
    return f"\nIntegrity flags (they explain a number, never change it): {items}.\n"


def protocol_note(frame: pd.DataFrame) -> str:
    """One line naming the training-attack protocol of the table's rows, or saying that they mix
    protocols; and a second one naming their device, or saying that they mix devices (none when no
    row's record names its device)."""
    return "\n\n".join(note for note in (_protocol_line(frame), device_note(frame)) if note)


def device_note(frame: pd.DataFrame) -> str:
    found = devices(frame)
    if not found:
        return ""
    if len(found) == 1:
        return f"Device: {found[0]}."
    return f"MIXED devices: {'; '.join(found)} (column device); accuracies measured on different hardware."


def _protocol_line(frame: pd.DataFrame) -> str:
    found = protocols(frame)
    if not found:
        return ""
    what = "the student's BatchNorm mode while training examples were crafted (column attack_mode)"
    if len(found) == 1:
        known = found[0] != PROTOCOL_UNKNOWN
        return f"Training-attack protocol: {found[0] if known else 'unknown (older results)'}; {what}."
    return (f"MIXED training-attack protocols: {', '.join(found)} (column protocol); rows differ in {what}, "
            f"not only in method.")


def without_uniform_protocol(frame: pd.DataFrame) -> pd.DataFrame:
    """Tables with a note line drop the protocol column when every row has the same protocol, and
    the device column when the rows do not mix devices."""
    if "protocol" in frame.columns and len(protocols(frame)) <= 1:
        frame = frame.drop(columns=["protocol"])
    if "device" in frame.columns and len(devices(frame)) <= 1:
        frame = frame.drop(columns=["device"])
    return frame


def rounded(frame: pd.DataFrame) -> pd.DataFrame:
    """Public columns, numbers rounded for CSV/JSON (accuracies in % to 2 decimals)."""
    frame = public(frame).copy()
    for column in frame.columns:
        if column in P_VALUES:
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float).round(6)
        elif is_numeric_column(frame, column) and column not in INTEGERS | COUNTS:
            base = next((str(column)[:-len(s)] for s in FOLDED if str(column).endswith(s)), str(column))
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float).round(ROUND.get(base, 2))
        elif column in INTEGERS | COUNTS and is_numeric_column(frame, column):
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("Int64")
    return frame


def to_csv(frame: pd.DataFrame) -> str:
    return rounded(frame).to_csv(index=False)


def to_json(frame: pd.DataFrame, teachers: pd.DataFrame | None = None, meta: dict | None = None) -> str:
    """``{"schema_version": 3, "columns": [...], "rows": [...], "teachers": [...], ...}``; missing values null."""
    from .. import __version__

    def records(table):
        if table is None or table.empty:
            return []
        return json.loads(rounded(table).to_json(orient="records"))

    document = {"schema_version": SCHEMA_VERSION, "generator": f"rkbench {__version__}", **(meta or {}),
                "columns": [str(c) for c in public(frame).columns], "rows": records(frame),
                "teachers": records(teachers)}
    return json.dumps(document, indent=2) + "\n"
