"""``rkbench rank``: which method wins overall, over every setting present (pandas, autorank; never torch).

As Demšar ("Statistical Comparisons of Classifiers over Multiple Data Sets", JMLR 7, 2006) ranks
classifiers over data sets, methods are ranked within each *setting* (a student, a teacher and a
dataset with its threat model; the value: the method's mean over seeds of the metric, higher is
better), and the ranks averaged. The Friedman test asks whether the average ranks differ more than
chance would make them; the Nemenyi post-hoc test gives the critical difference (CD) two average
ranks must exceed to differ, drawn as a CD diagram. The statistics and the diagram come from
``autorank`` (Herbold, JOSS 2020), forced to its non-parametric branch (Friedman + Nemenyi), the
branch Demšar recommends.

A teacher-free method (``at``, ``trades``) belongs to every teacher's setting of its student, as it
serves as every teacher's baseline in ``--baseline``. The Friedman test needs a complete table: the
methods present in every setting are ranked, or the settings that hold every method, whichever ranks
more methods in enough settings (``complete_table``); methods left out are named in ``dropped``.

``per_seed``: the blocks are (setting, seed) instead of settings: every seed is a block, so a suite of
few settings but several seeds can be ranked. The ranking then speaks for the training randomness of
these settings, not for other students, teachers or datasets.
"""
from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..errors import RkbenchError
from .frame import NO_TEACHER, Results, aggregate_frame

MIN_BLOCKS = 5  # autorank's minimum; Demšar's chi-square approximation wants more
MIN_METHODS = 3  # the Friedman test compares three or more


@dataclass
class Ranking:
    table: pd.DataFrame  # rank, method, mean_rank, mean, median, blocks (+ cd_group)
    blocks: pd.DataFrame  # one row per block, one column per method: the values ranked
    metric: str
    per_seed: bool
    friedman_p: float
    cd: float
    alpha: float
    dropped: list[str] = field(default_factory=list)
    result: object = None  # autorank's RankResult (for the diagram)

    @property
    def significant(self) -> bool:
        return self.friedman_p < self.alpha

    def lines(self) -> list[str]:
        unit = "settings x seeds" if self.per_seed else "settings (student x teacher x dataset)"
        verdict = ("the average ranks differ (p < alpha)" if self.significant else
                   "no difference between the average ranks is detected (p >= alpha): read the ranks as noise")
        lines = [f"ranked on {self.metric} (higher is better) in {len(self.blocks)} {unit}, {len(self.table)} methods; "
                 f"Friedman test p = {self.friedman_p:.4g}: {verdict} at alpha {self.alpha:g}; Nemenyi critical "
                 f"difference CD = {self.cd:.3f} (two methods whose mean ranks differ by less are not "
                 f"distinguished); autorank, Demšar (JMLR 2006)"]
        if self.dropped:
            lines.append(f"not ranked (missing from some {'blocks' if self.per_seed else 'settings'}): "
                         f"{', '.join(self.dropped)}")
        return lines


def settings_frame(results: Results, metric: str = "worst_case", per_seed: bool = False) -> pd.DataFrame:
    """Rows: blocks (settings, or settings x seeds); columns: method labels; values: the metric."""
    runs = results.runs
    if runs.empty or not runs["_finished"].any():
        raise RkbenchError(f"{', '.join(results.sources)}: no finished runs to rank")
    finished = runs[runs["_finished"]]
    if metric not in finished.columns or finished[metric].isna().all():
        known = ["clean", *[a for a in results.attacks if finished[a].notna().any()], "worst_case"]
        raise RkbenchError(f"--metric {metric!r}: no run has this accuracy; choose from {', '.join(known)}")
    rows = aggregate_frame(Results(finished, results.teachers, results.attacks, results.diagnostics))
    values: dict[str, dict[str, float]] = {}
    for student_key, group in (finished.groupby("_student_key", sort=False)):
        first = group.iloc[0]
        teachers = sorted(set(group["teacher"]) - {NO_TEACHER}) or [NO_TEACHER]
        for teacher in teachers:
            setting = f"{first['suite']}:{first['student']}/{teacher}"
            members = group[group["teacher"].isin({teacher, NO_TEACHER})]
            if per_seed:
                for (method, seed), runs_of in members.groupby(["method", "seed"], sort=False):
                    values.setdefault(f"{setting} seed {seed}", {}).setdefault(method, float(runs_of[metric].mean()))
            else:
                own = rows[(rows["_student_key"] == student_key) & rows["teacher"].isin({teacher, NO_TEACHER})]
                for _, row in own.iterrows():
                    values.setdefault(setting, {}).setdefault(row["method"], float(row[metric]))
    return pd.DataFrame.from_dict(values, orient="index")


def complete_table(data: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The Friedman test needs every method in every block: either the methods present in every
    block, or the blocks that hold every method, whichever ranks more methods in enough blocks."""
    by_methods = data[sorted(m for m in data.columns if data[m].notna().all())]
    by_blocks = data.dropna(axis=0)[sorted(data.columns)]
    usable = [t for t in (by_methods, by_blocks) if len(t) >= MIN_BLOCKS and t.shape[1] >= MIN_METHODS]
    best = max(usable, key=lambda t: (t.shape[1], len(t))) if usable else by_methods
    return best, sorted(set(data.columns) - set(best.columns))


def rank(results: Results, metric: str = "worst_case", per_seed: bool = False, alpha: float = 0.05) -> Ranking:
    """The average ranks, the Friedman test and the Nemenyi CD (autorank, non-parametric)."""
    from autorank import autorank

    data, dropped = complete_table(settings_frame(results, metric, per_seed))
    complete = list(data.columns)
    unit = "settings x seeds (blocks)" if per_seed else "settings (student x teacher x dataset)"
    if len(complete) < MIN_METHODS or len(data) < MIN_BLOCKS:
        hint = ("" if per_seed or results.runs["seed"].nunique() < 2 else
                "; with several seeds, rank seeds as blocks: --per-seed")
        raise RkbenchError(f"rank needs at least {MIN_METHODS} methods in at least {MIN_BLOCKS} {unit} (Friedman "
                           f"test; autorank); found {len(complete)} method(s) in every one of {len(data)}"
                           + (f" (not in all: {', '.join(dropped)})" if dropped else "") + hint)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # autorank prints its choices
        warnings.simplefilter("ignore")
        result = autorank(data, alpha=float(alpha), verbose=False, order="descending", force_mode="nonparametric")
    ranks = result.rankdf.sort_values("meanrank", kind="stable")  # rank 1: the highest values
    table = pd.DataFrame({
        "rank": np.arange(1, len(ranks) + 1),
        "method": list(ranks.index),
        "mean_rank": ranks["meanrank"].astype(float).to_numpy(),
        "mean": [float(data[m].mean()) for m in ranks.index],
        "median": ranks["median"].astype(float).to_numpy(),
        "blocks": len(data),
    })
    return Ranking(table, data, metric, per_seed, float(result.pvalue), float(result.cd or np.nan), alpha, dropped,
                   result)


def diagram_png(ranking: Ranking) -> bytes:
    """The critical-difference diagram (autorank's ``plot_stats``) as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from autorank import plot_stats

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        axis = plot_stats(ranking.result, allow_insignificant=True)
    figure = axis.get_figure()
    figure.suptitle(f"{ranking.metric}: Friedman p = {ranking.friedman_p:.3g}, CD = {ranking.cd:.2f} "
                    f"({len(ranking.blocks)} {'blocks' if ranking.per_seed else 'settings'})", fontsize=9, y=1.1)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


FORMATS = ("md", "csv", "json", "html", "png")


def rank_section(ranking: Ranking) -> str:
    """The ranking as a section of an HTML page: heading, table, notes, the CD diagram."""
    import base64
    import html

    from .html import table_html

    image = base64.b64encode(diagram_png(ranking)).decode("ascii")
    notes = "".join(f'<p class="note">{html.escape(line)}</p>' for line in ranking.lines())
    return (f"<h2>Ranking of the methods ({html.escape(ranking.metric)})</h2>" + table_html(ranking.table, "ranking")
            + notes + f'<p><img class="plot" alt="critical-difference diagram" src="data:image/png;base64,{image}"></p>')


def rank_report(paths, fmt: str = "md", metric: str = "worst_case", per_seed: bool = False, alpha: float = 0.05,
                out=None) -> tuple[str | bytes, Ranking]:
    """``rkbench rank``: the ranking as md, csv, json, html (text) or png (bytes; needs ``out``)."""
    import json
    from pathlib import Path

    from .frame import collect
    from .text import to_csv, to_json, to_markdown

    if fmt not in FORMATS:
        raise RkbenchError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if fmt == "png" and out is None:
        raise RkbenchError("--format png writes an image file: give --out FILE.png")
    results = collect(paths)
    ranking = rank(results, metric, per_seed, alpha)
    if fmt == "png":
        return diagram_png(ranking), ranking
    if fmt == "md":
        return to_markdown(ranking.table, legend=False) + "".join(f"\n{line}.\n" for line in ranking.lines()), ranking
    if fmt == "csv":
        return to_csv(ranking.table), ranking
    if fmt == "json":
        meta = {"view": "rank", "metric": metric, "per_seed": per_seed, "friedman_p": ranking.friedman_p,
                "critical_difference": ranking.cd, "alpha": alpha, "blocks": list(map(str, ranking.blocks.index)),
                "dropped": ranking.dropped, "sources": [str(Path(s)) for s in results.sources]}
        return to_json(ranking.table, None, json.loads(json.dumps(meta))), ranking
    import html

    from .html import page

    title = "rkbench ranking" + (f": {', '.join(results.suites)}" if results.suites else "")
    return page(title, [f"<h1>{html.escape(title)}</h1>", rank_section(ranking),
                        f'<p class="note">sources: {html.escape(", ".join(results.sources))}</p>']), ranking


def try_rank_section(results: Results, alpha: float = 0.05) -> str:
    """The ranking section of the report's HTML page: by settings, else by settings x seeds, else
    a note saying why there is none."""
    import html

    errors = []
    for per_seed in (False, True):
        try:
            return rank_section(rank(results, per_seed=per_seed, alpha=alpha))
        except RkbenchError as error:
            errors.append(str(error))
    return f'<h2>Ranking of the methods</h2><p class="note">no ranking: {html.escape(errors[0])}</p>'

