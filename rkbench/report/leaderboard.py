"""Leaderboard files from result files alone: ``leaderboard.csv`` / ``leaderboard.md`` in a results
directory (rebuilt by the runner after every run) and ``rkbench report`` in every format."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..errors import RkbenchError
from ..store import holds_results, write_text
from .classes import per_class_frame
from .corruptions import per_corruption_frame
from .frame import Results, aggregate_frame, collect, devices, per_seed_frame, protocols, public
from .paired import compare_frame, resolve, with_baseline
from .paper import DEFAULT_TOLERANCE, against_paper, legend
from .query import apply_sort, leaderboard, parse_sort
from .seeds import RESAMPLES
from .text import display_frame, protocol_note, to_csv, to_json, to_markdown, without_uniform_protocol

FORMATS = ("md", "csv", "json", "html", "png")


def leaderboard_frame(results_dir) -> pd.DataFrame:
    """One row per run (the per-seed view) of one or several results directories."""
    return public(per_seed_frame(collect(results_dir)))


def teacher_frame(results_dir) -> pd.DataFrame:
    return teachers_table(collect(results_dir))


def teachers_table(results: Results) -> pd.DataFrame:
    teachers = results.teachers
    if teachers.empty:
        return teachers
    teachers = teachers.sort_values(["teacher", "teacher_id"], kind="stable").reset_index(drop=True)
    if teachers["_source"].nunique() > 1:  # one row per results directory it was evaluated in
        teachers.insert(0, "results", [Path(source).name for source in teachers["_source"]])
    return teachers.drop(columns=[c for c in teachers.columns if str(c).startswith("_")])


def render(frame: pd.DataFrame, fmt: str, teachers: pd.DataFrame | None = None, meta: dict | None = None,
           title: str = "rkbench leaderboard", images: list | None = None, curves: list | None = None,
           sections: list[str] | None = None) -> str:
    """The frame as md, csv, json or html text (the teachers' table joins md, json and html). Each
    names the training-attack protocol: a note line (md, html), a column (csv, json, and md and html
    when the rows mix protocols), ``protocols`` in the json document."""
    note = protocol_note(frame)
    if fmt == "md":
        text = (f"{note}\n\n" if note else "") + to_markdown(without_uniform_protocol(frame))
        if teachers is not None and not teachers.empty:
            text += "\nTeachers (accuracy in %):\n\n" + to_markdown(teachers, legend=False)
        return text
    if fmt == "csv":
        return to_csv(frame)
    if fmt == "json":
        found, on = protocols(frame), devices(frame)
        return to_json(frame, teachers, {**(meta or {}), "protocols": found, "mixed_protocols": len(found) > 1,
                                         "devices": on, "mixed_devices": len(on) > 1})
    if fmt == "html":
        from .html import to_html

        notes = ([note] if note else []) + ([f"sources: {', '.join(meta.get('sources', []))}"] if meta else [])
        return to_html(without_uniform_protocol(frame), teachers, title, notes, images=images, curves=curves,
                       sections=sections)
    raise RkbenchError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")


def paper_report(results: Results, fmt: str, tolerance: float = DEFAULT_TOLERANCE) -> tuple[str, pd.DataFrame]:
    """The published numbers beside the measured ones (report/paper.py) as md, csv or json."""
    if fmt not in ("md", "csv", "json"):
        raise RkbenchError(f"--against-paper writes md, csv or json, not {fmt}")
    if tolerance < 0:
        raise RkbenchError(f"--tolerance must be >= 0 points, got {tolerance:g}")
    frame = against_paper(results, tolerance)
    if frame.empty:
        raise RkbenchError(f"{', '.join(results.sources)}: no published numbers (references.json); give the "
                           f"suite a 'references:' section and run it again (finished runs are not retrained)")
    if fmt == "md":
        return to_markdown(frame, legend=False) + legend(frame, tolerance), frame
    if fmt == "csv":
        return to_csv(frame), frame
    return to_json(frame, None, {"view": "against_paper", "tolerance": tolerance, "sources": results.sources}), frame


def report(paths, fmt: str = "md", per_seed: bool = False, where=(), sort: str | None = None,
           pivot_by: str | None = None, value: str = "worst_case", out: str | Path | None = None,
           against_paper: bool = False, tolerance: float = DEFAULT_TOLERANCE, baseline: str | None = None,
           metric: str = "worst_case", alpha: float = 0.05, per_class: bool = False, resamples: int = RESAMPLES,
           per_corruption: bool = False):
    """Build a report; returns (text or None, the frame, Results). ``png`` writes the plots into
    ``out`` (a directory) and returns no text. ``against_paper``: the suites' published numbers
    beside the measured ones instead of the leaderboard. ``baseline``: paired tests of every row
    against that method (``paired.with_baseline``) on ``metric``; ``per_class``: the per-class
    worst-case table; ``per_corruption``: each corruption's accuracy (mean over severities)."""
    if per_corruption:
        if per_class or baseline or pivot_by:
            raise RkbenchError("--per-corruption works on the leaderboard itself; drop --pivot, --baseline, --per-class")
    if fmt not in FORMATS:
        raise RkbenchError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if (baseline or per_class) and pivot_by:
        raise RkbenchError(f"{'--baseline' if baseline else '--per-class'} works on the leaderboard itself; drop --pivot")
    results = collect(paths)
    if against_paper:
        if pivot_by or per_seed or where or sort:
            raise RkbenchError("--against-paper prints one row per published number; drop --pivot, --per-seed, "
                               "--where and --sort")
        text, frame = paper_report(results, fmt, tolerance)
        return text, frame, results
    frame = leaderboard(None, per_seed=per_seed, where=where, sort=None if baseline else sort, pivot_by=pivot_by,
                        value=value, results=results, internal=True)
    if baseline:
        frame = with_baseline(frame, results.runs, baseline, metric, alpha, resamples)
        attrs = dict(frame.attrs)
        frame = apply_sort(frame, parse_sort(sort)).reset_index(drop=True)
        frame.attrs.update(attrs)
    if per_class:
        frame = per_class_frame(frame)
    if per_corruption:
        frame = per_corruption_frame(frame)
        per_class = True  # a table of its own, as --per-class: no plots, no teachers' table
    if fmt == "png":
        from .plots import write_plots

        if pivot_by or per_class:
            raise RkbenchError("--format png plots the leaderboard itself; drop --pivot and --per-class")
        if out is None:
            raise RkbenchError("--format png writes image files: give --out DIR")
        plot_frame = frame if not per_seed else leaderboard(None, where=where, results=results, internal=True)
        return None, write_plots(plot_frame, results.attacks, out), results
    view = "pivot" if pivot_by else ("per_corruption" if per_corruption else ("per_class" if per_class else
                                                                           ("per_seed" if per_seed else "aggregated")))
    meta = {"view": view, "sources": results.sources, "attacks": results.attacks,
            "duplicates": results.duplicates}
    if pivot_by:
        meta["pivot"] = frame.attrs.get("pivot", {})
    if frame.attrs.get("baseline"):
        meta["baseline"] = frame.attrs["baseline"]
    title = "rkbench leaderboard" + (f": {', '.join(results.suites)}" if results.suites else "")
    images = curves = sections = None
    if fmt == "html" and not (pivot_by or per_class):
        from .rank import try_rank_section

        images = embedded_plots(frame if not per_seed else leaderboard(None, where=where, results=results,
                                                                       internal=True), results)
        curves = rows_curves(frame, results)
        sections = [try_rank_section(results, alpha)]
    text = render(frame, fmt, None if per_class else teachers_table(results), meta, title=title, images=images,
                  curves=curves, sections=sections)
    return text, frame, results


def rows_curves(frame: pd.DataFrame, results: Results) -> list[dict]:
    """The loss curves of the runs behind the page's rows (every seed of an aggregated row), in row order."""
    run_ids = [run_id for text in frame.get("run_id", pd.Series(dtype=object)).dropna()
               for run_id in str(text).split()]
    return [{"run_id": run_id, **results.curves[run_id]} for run_id in run_ids if run_id in results.curves]


def embedded_plots(frame: pd.DataFrame, results: Results) -> list[tuple[str, bytes]]:
    """The PNG plots of the page's rows, as (name, bytes), for an HTML page that stands alone."""
    import tempfile

    from .plots import write_plots

    if frame.empty:
        return []
    with tempfile.TemporaryDirectory(prefix="rkbench-plots-") as directory:
        return [(path.name, path.read_bytes()) for path in write_plots(frame, results.attacks, directory)]


def compare_report(items, results_dir=None, metrics=(), fmt: str = "md", alpha: float = 0.05,
                   resamples: int = RESAMPLES):
    """``rkbench compare``: every later item against the first (run directories, or student/method
    labels inside ``results_dir``), paired on their common examples. Returns (text, frame)."""
    if fmt not in ("md", "csv", "json"):
        raise RkbenchError(f"compare writes md, csv or json, not {fmt!r}")
    if len(items) < 2:
        raise RkbenchError("compare needs at least two runs (the first is the reference)")
    results = collect(results_dir) if results_dir is not None else None
    frame = compare_frame([resolve(item, results) for item in items], list(metrics) or None, alpha, resamples)
    meta = {"view": "compare", "baseline": frame.attrs["baseline"]}
    return render(frame, fmt, meta=meta), frame


def write_leaderboard(results_dir: str | Path) -> pd.DataFrame:
    """Rebuild ``leaderboard.csv`` and ``leaderboard.md`` in the results directory (mean ± std over
    seeds; the same text as ``rkbench report DIR --format csv|md``)."""
    results_dir = Path(results_dir)
    if not holds_results(results_dir):  # nothing finished yet: an empty leaderboard with its header
        frame = aggregate_frame(Results(pd.DataFrame(), pd.DataFrame()))
        write_text(results_dir / "leaderboard.csv", to_csv(frame))
        write_text(results_dir / "leaderboard.md", to_markdown(frame))
        return frame
    results = collect(results_dir)
    frame = leaderboard(None, results=results, internal=True)
    teachers = teachers_table(results)
    write_text(results_dir / "leaderboard.csv", render(frame, "csv"))
    text = render(frame, "md", teachers)
    compared = against_paper(results)
    if not compared.empty:  # the suite carries published numbers
        text += ("\nAgainst the papers (`rkbench report DIR --against-paper`):\n\n"
                 + to_markdown(compared, legend=False) + legend(compared, DEFAULT_TOLERANCE))
    write_text(results_dir / "leaderboard.md", text)
    return public(frame)


def console_tables(results_dir) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The leaderboard and the teachers as strings (mean ± std), for the terminal."""
    results = collect(results_dir)
    frame = leaderboard(None, results=results, internal=True)
    narrow = [f"{c}_std" for c in results.diagnostics]  # the terminal is narrow: means (± std over seeds) only
    narrow += [c for c in frame.columns if str(c).endswith(("_lo", "_hi"))]
    shown = display_frame(without_uniform_protocol(frame).drop(columns=narrow)).drop(
        columns=["params", "madds", "teacher_clean", "teacher_worst_case"], errors="ignore")
    shown.attrs["note"] = protocol_note(frame)
    teachers = teachers_table(results)
    return shown, (display_frame(teachers) if not teachers.empty else teachers)
