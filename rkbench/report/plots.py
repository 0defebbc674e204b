"""Plots of a leaderboard (matplotlib, Agg backend, PNG).

- ``clean_vs_robust.png``: per student, clean accuracy against worst-case robust accuracy, one
  marker per method (error bars: the 95 % Wilson intervals over the test examples of all seeds;
  std over seeds where a frame has no interval), the Pareto front (no other method is better in
  both) drawn as a dashed line, the teacher as a star. With a baseline comparison, a method
  within noise of the baseline has a hollow marker.
- ``attacks_by_method.png``: per student, robust accuracy under each attack and the worst case,
  grouped by method (error bars: 95 % intervals as above). An attack the cascade ran on survivors
  only has no accuracy of its own and no bar.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "h", "p", "8", "H", "d"]  # "*" is the teacher


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def method_labels(frame: pd.DataFrame) -> pd.Series:
    """The method, with its teacher where one method was distilled from several teachers."""
    label = frame["method"].astype(str)
    teachers = frame.groupby("method")["teacher"].nunique()
    several = frame["method"].map(teachers) > 1
    return label.where(~several | (frame["teacher"] == "-"), label + " (" + frame["teacher"].astype(str) + ")")


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats in both coordinates (higher is better), by x."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any((x2 >= x and y2 >= y) and (x2 > x or y2 > y) for j, (x2, y2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def _students(frame: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(frame["student"].astype(str)))


def _grid(plt, n: int, width: float, height: float, columns: int = 3):
    columns = min(n, columns)
    rows = (n + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return figure, list(axes.flat)


def scatter_clean_vs_robust(frame: pd.DataFrame, path: Path) -> Path:
    plt = _pyplot()
    frame = frame[frame["clean"].notna() & frame["worst_case"].notna()].copy()
    frame["_label"] = method_labels(frame) if not frame.empty else []
    students = _students(frame) or ["(no runs)"]
    markers = {label: MARKERS[i % len(MARKERS)] for i, label in enumerate(dict.fromkeys(frame["_label"]))}
    palette = plt.get_cmap("tab10" if len(markers) <= 10 else "tab20")
    colors = {label: palette(i % palette.N) for i, label in enumerate(markers)}
    figure, axes = _grid(plt, len(students), 5.2, 4.4)
    for ax, student in zip(axes, students):
        rows = frame[frame["student"].astype(str) == student]
        points = []
        for _, row in rows.iterrows():
            x, y = float(row["clean"]), float(row["worst_case"])
            points.append((x, y))
            noise = str(row.get("verdict", "")) == "within noise"
            ax.errorbar(x, y, xerr=_err(row, "clean"), yerr=_err(row, "worst_case"), fmt=markers[row["_label"]],
                        color=colors[row["_label"]], markersize=8, capsize=3, label=row["_label"],
                        markeredgecolor="black", markeredgewidth=0.5,
                        markerfacecolor="none" if noise else colors[row["_label"]])
        front = pareto_front(points)
        if len(front) > 1:
            ax.plot([points[i][0] for i in front], [points[i][1] for i in front], "--", color="grey", lw=1.2,
                    zorder=0, label="Pareto front")
        elif front:
            ax.scatter([points[front[0]][0]], [points[front[0]][1]], s=220, facecolors="none", edgecolors="grey",
                       label="Pareto front")
        teachers = rows[rows["teacher_worst_case"].notna()].drop_duplicates("teacher") if not rows.empty else rows
        for _, row in teachers.iterrows():
            ax.scatter([row["teacher_clean"]], [row["teacher_worst_case"]], marker="*", s=180, color="gold",
                       edgecolors="black", linewidths=0.6, label=f"teacher {row['teacher']}", zorder=3)
        ax.set_title(f"student: {student}")
        ax.set_xlabel("clean accuracy (%)")
        ax.set_ylabel("worst-case robust accuracy (%)")
        ax.grid(True, alpha=0.3)
    unique = {}  # one legend for every panel (a method keeps its marker and colour across students)
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            unique.setdefault(label, handle)
    noise = "verdict" in frame.columns and (frame["verdict"].astype(str) == "within noise").any()
    figure.suptitle("Clean vs worst-case robust accuracy (error bars: 95 % intervals"
                    + ("; hollow: within noise of the baseline)" if noise else ")"))
    figure.tight_layout()
    if unique:
        figure.legend(unique.values(), unique.keys(), fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5),
                      frameon=False)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return path


def _err(row, column: str):
    """Error bar of one point: its 95 % interval as [[below], [above]], else the std over seeds."""
    value, lo, hi = row.get(column), row.get(f"{column}_lo"), row.get(f"{column}_hi")
    if lo is not None and hi is not None and not (pd.isna(lo) or pd.isna(hi) or pd.isna(value)):
        return [[max(float(value) - float(lo), 0.0)], [max(float(hi) - float(value), 0.0)]]
    std = row.get(f"{column}_std")
    return None if std is None or pd.isna(std) else float(std)


def _errors(rows: pd.DataFrame, metric: str, values: np.ndarray):
    """Error bars of a column of bars: 2 x n from the intervals, else the std over seeds, else None."""
    if f"{metric}_lo" in rows.columns and f"{metric}_hi" in rows.columns:
        lo = pd.to_numeric(rows[f"{metric}_lo"], errors="coerce").astype(float).to_numpy()
        hi = pd.to_numeric(rows[f"{metric}_hi"], errors="coerce").astype(float).to_numpy()
        return np.nan_to_num(np.clip(np.vstack([values - lo, hi - values]), 0, None))
    if f"{metric}_std" in rows.columns:
        return pd.to_numeric(rows[f"{metric}_std"], errors="coerce").astype(float).to_numpy()
    return None


def bars_by_attack(frame: pd.DataFrame, attacks: list[str], path: Path) -> Path:
    plt = _pyplot()
    frame = frame.copy()
    frame["_label"] = method_labels(frame) if not frame.empty else []
    present = [a for a in attacks if a in frame.columns]
    measured = [a for a in present if pd.to_numeric(frame[a], errors="coerce").notna().any()]
    cascade_only = [a for a in present if a not in measured]
    metrics = measured + ["worst_case"]
    students = _students(frame) or ["(no runs)"]
    per_student = max([int((frame["student"].astype(str) == s).sum()) for s in students] + [1])
    many = per_student * len(metrics) > 12  # wide panels, one per row
    width = min(max(5.0, 0.35 * per_student * (len(metrics) + 1) + 1.5), 16.0)
    figure, axes = _grid(plt, len(students), width, 3.8, columns=1 if many else 3)
    cmap = plt.get_cmap("tab10")
    for ax, student in zip(axes, students):
        rows = frame[frame["student"].astype(str) == student]
        x = np.arange(len(rows))
        width = 0.8 / max(len(metrics), 1)
        for k, metric in enumerate(metrics):
            values = pd.to_numeric(rows[metric], errors="coerce").astype(float).to_numpy() if len(rows) else []
            errors = _errors(rows, metric, values) if len(rows) else None
            shown = ~np.isnan(values) if len(rows) else []
            if not np.any(shown):
                continue
            ax.bar(x[shown] + (k - (len(metrics) - 1) / 2) * width, values[shown], width,
                   yerr=None if errors is None else errors[..., shown], capsize=2, label=metric.replace("_", " "),
                   color=cmap(k % 10), edgecolor="black", linewidth=0.4)
        ax.set_xticks(x)
        ax.set_xticklabels(list(rows["_label"]), rotation=30, ha="right")
        ax.set_ylabel("robust accuracy (%)")
        ax.set_ylim(0, 112)  # headroom for the legend above the bars
        ax.set_yticks(range(0, 101, 20))
        ax.set_title(f"student: {student}")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="upper center", ncol=len(metrics), frameon=False)
    figure.suptitle("Robust accuracy per attack and method (error bars: 95 % intervals)")
    if cascade_only:
        figure.text(0.5, 0.005, f"no bar: {', '.join(cascade_only)} (run by the cascade on the still-robust "
                    f"examples only: no accuracy of its own; it counts in the worst case)", ha="center", fontsize=8)
    figure.tight_layout(rect=(0, 0.03 if cascade_only else 0, 1, 1))
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def write_plots(frame: pd.DataFrame, attacks: list[str], directory: str | Path) -> list[Path]:
    """Both plots of an aggregated leaderboard frame into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    finished = frame[frame["status"].astype(str) == "finished"] if "status" in frame.columns else frame
    return [scatter_clean_vs_robust(finished, directory / "clean_vs_robust.png"),
            bars_by_attack(finished, attacks, directory / "attacks_by_method.png")]
