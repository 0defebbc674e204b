"""Paired comparisons on identical examples: ``rkbench report --baseline`` and ``rkbench compare``.

Runs are compared on their per-example correctness (``per_example.npz``) for one metric, at one
of two levels (column ``level``):

- ``model``: one seed on either side (two trained models): Δ (points), its 95 % interval
  (Newcombe's hybrid score for paired proportions) and the exact McNemar p-value (``stats``);
- ``method``: both sides have 2 or more seeds, paired by seed: Δ is the mean over seeds of the
  per-seed differences; its interval, its p-value and ``prob_improvement`` come from the two-level
  bootstrap over seeds and shared test examples (``seeds``), so they cover training randomness
  as well as the sampling of test examples.

Over a table the p-values are Holm-adjusted and give the verdict (better / worse / within noise).
Runs evaluated on different examples or threat models are never compared: that is an error, in
one line.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import RkbenchError
from ..record import load_valid_record
from ..store import CLEAN, RUNS, read_config
from .examples import correctness, labels, read_arrays
from .frame import NO_TEACHER, Results
from .seeds import BOOTSTRAP_SEED, RESAMPLES, compare_methods, describe
from .stats import holm, paired, verdict, wilson

PAIRED_COLUMNS = ["level", "delta", "delta_lo", "delta_hi", "prob_improvement", "prob_improvement_lo",
                  "prob_improvement_hi", "p", "p_holm", "verdict"]
MODEL, METHOD = "model", "method"  # the levels: one trained model per side; seeds as replications
BASELINE = "baseline"
NO_BASELINE = "-"


@dataclass
class RunArrays:
    """One run's per-example correctness and what defines its examples."""

    run_id: str
    directory: Path
    name: str  # student/teacher/method seed s, for messages
    seed: int | None
    correct: dict[str, np.ndarray | None]
    labels: np.ndarray | None
    threat: dict | None
    dataset: dict | None
    n: int = field(init=False)

    def __post_init__(self):
        self.n = len(self.correct["clean"])


def load_run(directory: Path) -> RunArrays:
    directory = Path(directory)
    record = load_valid_record(directory)
    if record is None:
        raise RkbenchError(f"{directory}: no valid metrics.json (not a finished rkbench run)")
    if not record.finished:
        raise RkbenchError(f"{directory}: the run failed ({record.error}); nothing to compare")
    arrays = read_arrays(directory)
    if arrays is None or CLEAN not in arrays:
        raise RkbenchError(f"{directory}: no readable per_example.npz (per-example results are needed for a "
                           f"paired test)")
    identity = (read_config(directory) or {}).get("identity") or {}
    name = "/".join(str(value or NO_TEACHER) for value in (record.student, record.teacher, record.method))
    name += f" seed {record.seed}"
    return RunArrays(record.run_id, directory, name, record.seed, correctness(arrays, record),
                     labels(arrays), record.threat, identity.get("dataset"))


def check_same_examples(a: RunArrays, b: RunArrays) -> None:
    """Raise unless both runs were evaluated on the same examples under the same threat model."""
    where = f"{a.name} ({a.directory}) and {b.name} ({b.directory})"
    if a.threat and b.threat and a.threat != b.threat:
        raise RkbenchError(f"{where} differ in threat model ({_threat(a.threat)} vs {_threat(b.threat)}): not comparable")
    if a.dataset and b.dataset and a.dataset != b.dataset:
        raise RkbenchError(f"{where} were evaluated on different datasets ({a.dataset} vs {b.dataset})")
    if a.n != b.n:
        raise RkbenchError(f"{where} were not evaluated on the same examples ({a.n} vs {b.n} examples)")
    if a.labels is not None and b.labels is not None and not np.array_equal(a.labels, b.labels):
        raise RkbenchError(f"{where} were not evaluated on the same examples (their labels differ)")


def _threat(threat: dict) -> str:
    return " ".join(f"{k} {v}" for k, v in threat.items() if v is not None)


def metric_arrays(run: RunArrays, metric: str) -> np.ndarray:
    if metric not in run.correct:
        raise RkbenchError(f"--metric {metric!r}: {run.name} has no such metric; it has "
                           f"{', '.join(run.correct)}")
    values = run.correct[metric]
    if values is None:
        raise RkbenchError(f"--metric {metric!r}: the cascade ran {metric} only on the examples still robust in "
                           f"{run.name}: it has no per-example accuracy of its own (use worst_case or an exact "
                           f"attack)")
    return values


def pair_seeds(runs: list[RunArrays], baselines: list[RunArrays]) -> list[tuple[RunArrays, RunArrays]]:
    """Seed by seed; two single runs pair whatever their seeds."""
    if len(runs) == 1 and len(baselines) == 1:
        return [(runs[0], baselines[0])]
    by_seed = {b.seed: b for b in baselines}
    return [(run, by_seed[run.seed]) for run in runs if run.seed in by_seed]


def compare(runs: list[RunArrays], baselines: list[RunArrays], metric: str, alpha: float = 0.05,
            resamples: int = RESAMPLES) -> dict | None:
    """Δ and its test of ``runs`` against ``baselines`` on ``metric``; None without a common seed.
    Two or more paired seeds: the method level (two-level bootstrap); one: the model level (exact
    McNemar test, Newcombe's interval)."""
    pairs = sorted(pair_seeds(runs, baselines), key=lambda pair: (pair[0].seed is None, pair[0].seed or 0))
    if not pairs:
        return None
    for run, base in pairs:
        check_same_examples(run, base)
    arrays = [(metric_arrays(run, metric), metric_arrays(base, metric)) for run, base in pairs]
    if len(pairs) >= 2:
        result = compare_methods(arrays, alpha, resamples)
        return {"level": METHOD, "delta": 100.0 * result.delta, "delta_lo": 100.0 * result.delta_lo,
                "delta_hi": 100.0 * result.delta_hi, "p": result.p, "prob_improvement": result.prob_improvement,
                "prob_improvement_lo": result.prob_improvement_lo, "prob_improvement_hi": result.prob_improvement_hi,
                "seeds": len(pairs), "n": result.n * len(pairs), "accuracy": 100.0 * result.mean,
                "accuracy_lo": 100.0 * result.mean_lo, "accuracy_hi": 100.0 * result.mean_hi,
                "reference_accuracy": 100.0 * result.baseline_mean,
                "reference_accuracy_lo": 100.0 * result.baseline_lo,
                "reference_accuracy_hi": 100.0 * result.baseline_hi}
    result = paired(arrays, alpha)
    lo, hi = result.interval
    (correct, base), = arrays
    a, a_lo, a_hi = _wilson_percent(int(np.asarray(correct, bool).sum()), len(correct))
    b, b_lo, b_hi = _wilson_percent(int(np.asarray(base, bool).sum()), len(base))
    return {"level": MODEL, "delta": 100.0 * result.delta, "delta_lo": 100.0 * lo, "delta_hi": 100.0 * hi,
            "p": result.p, "prob_improvement": math.nan, "prob_improvement_lo": math.nan,
            "prob_improvement_hi": math.nan, "seeds": len(pairs), "n": result.n, "b": result.b, "c": result.c,
            "accuracy": a, "accuracy_lo": a_lo, "accuracy_hi": a_hi, "reference_accuracy": b,
            "reference_accuracy_lo": b_lo, "reference_accuracy_hi": b_hi}


def _wilson_percent(k: int, n: int) -> tuple[float, float, float]:
    lo, hi = wilson(k, n)
    return 100.0 * k / n, 100.0 * lo, 100.0 * hi


def add_verdicts(rows: list[dict], alpha: float) -> None:
    """Holm over the rows' p-values (NaN rows not counted), then a verdict each."""
    adjusted = holm([row.get("p", math.nan) for row in rows])
    for row, p_adjusted in zip(rows, adjusted):
        row["p_holm"] = p_adjusted
        row["verdict"] = verdict(row.get("delta", math.nan), p_adjusted, alpha)


# ----------------------------------------------------------------------------------------------
# rkbench report --baseline LABEL


def parse_baseline(label: str) -> tuple[str | None, str]:
    """``at`` -> (None, "at"); ``teacher/method`` -> (teacher, method)."""
    parts = [p.strip() for p in label.split("/")]
    if len(parts) == 1 and parts[0]:
        return None, parts[0]
    if len(parts) == 2 and all(parts):
        return parts[0], parts[1]
    raise RkbenchError(f"--baseline {label!r}: expected a method label (at) or teacher/method (at_cnn/kd)")


def _run_directory(record) -> Path:
    return Path(record["_source"]) / RUNS / record["run_id"]


def baseline_runs(runs: pd.DataFrame, row_runs: pd.DataFrame, teacher: str | None, method: str) -> pd.DataFrame:
    """The baseline's runs for a row: same student (dataset, threat, model), the teacher named, else
    the row's own teacher, else none (a teacher-free baseline such as ``at`` serves every teacher)."""
    first = row_runs.iloc[0]
    candidates = runs[runs["_finished"] & (runs["method"] == method) & (runs["_student_key"] == first["_student_key"])]
    if teacher is not None:
        return candidates[candidates["teacher"] == teacher]
    same = candidates[candidates["teacher"] == first["teacher"]]
    return same if not same.empty else candidates[candidates["teacher"] == NO_TEACHER]


def with_baseline(frame: pd.DataFrame, runs: pd.DataFrame, label: str, metric: str = "worst_case",
                  alpha: float = 0.05, resamples: int = RESAMPLES) -> pd.DataFrame:
    """The leaderboard frame (internal columns kept) with the paired columns against ``label``."""
    teacher, method = parse_baseline(label)
    finished = runs[runs["_finished"]] if not runs.empty else runs
    known = finished[finished["method"] == method] if not finished.empty else finished
    if teacher is not None and not known.empty:
        known = known[known["teacher"] == teacher]
    if known.empty:
        methods = sorted(set(finished["method"])) if not finished.empty else []
        raise RkbenchError(f"--baseline {label!r}: no finished run of that method"
                           + (f" with teacher {teacher!r}" if teacher else "") + f"; methods: {', '.join(methods)}")
    by_id = finished.set_index("run_id", drop=False)
    cache: dict[str, RunArrays] = {}

    def arrays(record) -> RunArrays:
        if record["run_id"] not in cache:
            cache[record["run_id"]] = load_run(_run_directory(record))
        return cache[record["run_id"]]

    rows = []
    for _, row in frame.iterrows():
        ids = [i for i in str(row.get("run_id", "")).split() if i in by_id.index]
        out = {column: math.nan for column in PAIRED_COLUMNS}
        out["verdict"], out["level"] = NO_BASELINE, NO_BASELINE
        if ids and row.get("_finished", True):
            own = by_id.loc[ids]
            base = baseline_runs(finished, own, teacher, method)
            # prefer the baseline's copy in the row's own results directory
            base = base.sort_values("_source", key=lambda s: s != own.iloc[0]["_source"], kind="stable")
            base = base.drop_duplicates("seed")
            if set(ids) <= set(base["run_id"]):
                out.update(delta=0.0, verdict=BASELINE)
            elif not base.empty:
                result = compare([arrays(r) for _, r in own.iterrows()], [arrays(r) for _, r in base.iterrows()],
                                 metric, alpha, resamples)
                if result:
                    out.update({k: result[k] for k in PAIRED_COLUMNS if k in result})
        rows.append(out)
    compared = [r for r in rows if r["verdict"] not in (BASELINE,) and not math.isnan(r["p"])]
    add_verdicts(compared, alpha)
    for r in rows:
        if r["verdict"] == BASELINE:
            r["p_holm"] = math.nan
    frame = frame.copy()
    for column in PAIRED_COLUMNS:
        frame[column] = [r[column] for r in rows]
    frame = _move_after(frame, PAIRED_COLUMNS, "worst_class_std" if "worst_class_std" in frame.columns else "worst_class")
    levels = {r["level"] for r in compared}
    frame.attrs["baseline"] = method_meta({"label": label, "metric": metric, "alpha": alpha, "tests": len(compared)},
                                          levels, resamples)
    frame.attrs["legend"] = [legend(f"{metric} minus that of the baseline `{label}` (same student, teacher and "
                                    f"seed)", metric, len(compared), alpha, levels, resamples)]
    return frame


TEST = "exact McNemar test on per-example correctness, seeds as strata (discordant pairs pooled); Holm over the rows"
INTERVAL = "95 % interval of the paired difference: Newcombe's hybrid score (1998, method 10)"
METHOD_TEST = ("two-sided bootstrap p-value of the mean paired difference over seeds (two-level bootstrap: seeds "
               "and shared test examples); Holm over the rows")
METHOD_INTERVAL = "95 % percentile interval of the two-level bootstrap over seeds and shared test examples"


def method_meta(meta: dict, levels: set, resamples: int) -> dict:
    """The JSON ``baseline`` entry: the test and interval of each level present, the resamples."""
    meta = {**meta, "test": TEST, "interval": INTERVAL}
    if METHOD in levels:
        meta.update({"method_test": METHOD_TEST, "method_interval": METHOD_INTERVAL, "resamples": resamples,
                     "bootstrap_seed": BOOTSTRAP_SEED})
    return meta


def legend(what: str, metric: str, tests: int, alpha: float, levels=frozenset({MODEL}),
           resamples: int = RESAMPLES) -> str:
    parts = [f"`delta`: {what}, in points on identical examples"]
    if MODEL in levels:
        parts.append(f"level `model` (one seed a side: two trained models): 95 % interval by Newcombe's hybrid score "
                     f"for paired proportions, `p` the exact McNemar test on the per-example {metric}")
    if METHOD in levels:
        parts.append(f"level `method` (2 or more seeds a side, paired by seed): `delta` the mean over seeds of the "
                     f"per-seed differences, its 95 % interval and `p` from the {describe(resamples)}, "
                     f"`prob_improvement` the probability that a seed of the row beats a seed of the baseline "
                     f"(ties count half) with its interval")
    parts.append(f"`p_holm`: Holm-adjusted over the {tests} comparisons; `verdict`: better or worse when "
                 f"p_holm < {alpha:g}, else within noise (the difference may be noise)")
    return "; ".join(parts)


def _move_after(frame: pd.DataFrame, moved: list[str], anchor: str) -> pd.DataFrame:
    columns = [c for c in frame.columns if c not in moved]
    at = columns.index(anchor) + 1 if anchor in columns else len(columns)
    return frame[columns[:at] + moved + columns[at:]]


# ----------------------------------------------------------------------------------------------
# rkbench compare A B [C ...]


@dataclass
class Item:
    label: str
    runs: list[RunArrays]


def resolve(item: str, results: Results | None) -> Item:
    """A run directory, or ``student/method`` / ``student/teacher/method`` among ``results``' runs."""
    path = Path(item)
    if (path / "metrics.json").is_file():
        run = load_run(path)
        return Item(run.name, [run])
    parts = [p.strip() for p in item.split("/")]
    if results is None or len(parts) not in (2, 3) or not all(parts):
        hint = "" if results is not None else "; to name runs as student/method give --results-dir DIR"
        raise RkbenchError(f"{item}: not a run directory (no metrics.json) nor student/method or "
                           f"student/teacher/method{hint}")
    runs = results.runs
    finished = runs[runs["_finished"]] if not runs.empty else runs
    match = finished[(finished["student"] == parts[0]) & (finished["method"] == parts[-1])] if not finished.empty \
        else finished
    if len(parts) == 3:
        match = match[match["teacher"] == parts[1]]
    if match.empty:
        known = sorted({f"{r.student}/{r.method}" for r in finished.itertuples()})
        raise RkbenchError(f"{item}: no finished run of that student and method in {', '.join(results.sources)}; "
                           f"runs: {', '.join(known)}")
    groups = list(dict.fromkeys(match["_group"]))
    if len(groups) > 1:
        options = sorted({f"{r.student}/{r.teacher}/{r.method} ({Path(r._source).name})" for r in match.itertuples()})
        raise RkbenchError(f"{item}: several configurations match ({'; '.join(options)}); name one as "
                           f"student/teacher/method or pass its run directory")
    match = match.sort_values("seed", kind="stable").drop_duplicates("seed")
    return Item(item, [load_run(_run_directory(r)) for _, r in match.iterrows()])


def common_metrics(items: list[Item]) -> list[str]:
    """Metrics measured per example in every run of every item (cascade-only attacks drop out)."""
    metrics = None
    for item in items:
        for run in item.runs:
            present = [m for m, v in run.correct.items() if v is not None]
            metrics = present if metrics is None else [m for m in metrics if m in present]
    return metrics or []


def compare_frame(items: list[Item], metrics: list[str] | None = None, alpha: float = 0.05,
                  resamples: int = RESAMPLES) -> pd.DataFrame:
    """Every later item against the first, for every metric: accuracies, Δ, interval, p, Holm verdict."""
    if len(items) < 2:
        raise RkbenchError("compare needs at least two runs (the first is the reference)")
    reference, others = items[0], items[1:]
    for item in others:  # examples and threat model first: a mismatch is an error before any number
        pairs = pair_seeds(item.runs, reference.runs)
        if not pairs:
            raise RkbenchError(f"{item.label} and {reference.label} share no seed "
                               f"({_seeds(item.runs)} vs {_seeds(reference.runs)})")
        for run, base in pairs:
            check_same_examples(run, base)
    available = common_metrics(items)
    for metric in metrics or []:
        if metric not in available:
            raise RkbenchError(f"--metric {metric!r}: not measured per example in every run; choose from "
                               f"{', '.join(available)}")
    rows = []
    for item in others:
        pairs = pair_seeds(item.runs, reference.runs)
        runs, bases = [p[0] for p in pairs], [p[1] for p in pairs]
        for metric in metrics or available:
            result = compare(runs, bases, metric, alpha, resamples)
            rows.append({"compared": item.label, "reference": reference.label, "metric": metric,
                         **{k: result[k] for k in COMPARE_COLUMNS}})
    add_verdicts(rows, alpha)
    frame = pd.DataFrame(rows)
    levels = {r["level"] for r in rows}
    frame.attrs["baseline"] = method_meta({"label": reference.label, "metric": "every metric", "alpha": alpha,
                                           "tests": len(rows)}, levels, resamples)
    frame.attrs["legend"] = [legend(f"the row's metric minus that of the reference `{reference.label}`", "metric",
                                    len(rows), alpha, levels, resamples)
                             + "; `accuracy`: one seed, Wilson interval; several, the mean over seeds with its "
                               "two-level bootstrap interval"]
    return frame


COMPARE_COLUMNS = ["level", "seeds", "n", "accuracy", "accuracy_lo", "accuracy_hi", "reference_accuracy",
                   "reference_accuracy_lo", "reference_accuracy_hi", "delta", "delta_lo", "delta_hi",
                   "prob_improvement", "prob_improvement_lo", "prob_improvement_hi", "p"]


def _seeds(runs: list[RunArrays]) -> str:
    return "seeds " + ",".join(str(r.seed) for r in runs)
