"""The leaderboard frame, built from result files alone (pandas; never torch).

One or several results directories are read (``runs/*/metrics.json`` + ``config.json``,
``teachers/*/metrics.json`` + ``config.json``) and merged; a run id seen twice (the same run in
two directories) is counted once. Every run gets its derived columns (its teacher's own
accuracy, the transfer ratio, the difference to adversarial training of the same student), and
runs that differ only by their seed are aggregated into mean and sample standard deviation.

Accuracies are in %. Columns (``<attack>`` is one per attack label of the evaluation; every
accuracy X has ``X_lo`` / ``X_hi`` beside it: its 95 % Wilson interval over the examples, of all
seeds in the aggregated view; ``worst_class`` is the lowest per-class worst case):

per seed:   [suite] teacher student method attack_mode seed clean clean_lo clean_hi <attack>...
            worst_case worst_case_lo worst_case_hi worst_class teacher_clean teacher_worst_case
            transfer_ratio delta_at train_s params madds [diagnostics] epoch selected_on protocol flags
            status cascade run_id
aggregated: [suite] teacher student method attack_mode seeds clean clean_std clean_lo clean_hi
            <attack> ... worst_case worst_case_std worst_case_lo worst_case_hi worst_class
            worst_class_std teacher_clean teacher_worst_case transfer_ratio delta_at train_s params
            madds [diagnostics with _std] epoch selected_on protocol flags status cascade seed_list run_id

``epoch`` is the epoch whose weights were evaluated (per seed in the aggregated view) and
``selected_on`` what chose it: ``last`` (the final epoch) or ``validation`` (``training.checkpoint:
best``, the best epoch on the validation split; docs/tuning.md). Both columns appear when some
run of the table was selected on validation or tuned. ``trials`` and ``hyperparameters``: a tuned
suite's runs, the tuning trials their method had and the values they chose; a table whose rows
had different numbers of trials (untuned rows: 0) flags every row ``!unequal_budget``.

``protocol`` is the suite's training-attack protocol (official | eval | train; ``?`` for results
written before protocols existed); ``attack_mode`` the student's BatchNorm mode while the run's
training examples were crafted (train, eval, ``n/a (free)`` for the exempt free family, ``-`` for
a method that crafts none). A table whose rows come from more than one protocol flags every row
``!mixed_protocols``.

``device`` is where a run was evaluated (and trained, when that differs): ``cpu``, or
``cuda (<GPU name>)``, `` tf32`` appended when its attacks ran with TF32 on; ``?`` for results
written before records named the device. A table whose rows come from more than one known device
flags every row ``!mixed_devices`` (robust accuracies may differ in the last digits between devices).

Columns whose name starts with ``_`` are internal (grouping keys) and never written.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import RkbenchError
from ..record import RunRecord, load_valid_record
from ..store import CLEAN, RUNS, TEACHERS, holds_results, iter_result_dirs, read_config
from .examples import class_counts, correctness, read_arrays
from .seeds import mean_interval
from .stats import wilson

SCHEMA_VERSION = 4  # 3: the protocol and attack_mode columns; 4: the device column
ID_COLUMNS = ["teacher", "student", "method"]
PROTOCOL_UNKNOWN = "?"  # results written before training-attack protocols existed
MIXED_PROTOCOLS = "mixed_protocols"
UNEQUAL_BUDGET = "unequal_budget"
TEACHER_TRANSFER = "teacher_transfer"
DEVICE_UNKNOWN = "?"  # results written before records named the device
MIXED_DEVICES = "mixed_devices"
NO_TEACHER = "-"
AT_METHOD = "at"  # the baseline of delta_at: the same student trained with plain adversarial training
# metrics.json "diagnostics" key -> (column, scale): agreement and accuracies in %, as everywhere
DIAGNOSTICS = {"grad_cosine": 1.0, "adv_agreement": 100.0, "transfer_accuracy": 100.0, "local_linearity": 1.0}
FLAG_HELP = {
    "robust_above_clean": "an attack scored above clean accuracy (a broken attack?)",
    "stronger_attack_weaker": "a stronger attack scored above a weaker one (a broken attack?)",
    "square_beats_whitebox": "the black-box Square attack broke examples every white-box attack missed "
                             "(gradient masking?)",
    "zero_gradients": "many examples have a zero or non-finite input gradient (gradient masking?)",
    "autoattack_check": "one of AutoAttack's own sanity checks fired",
    UNEQUAL_BUDGET: "the table's methods had different tuning budgets (column trials): a row may lead because "
                    "it was tuned more, not because its method is better",
    TEACHER_TRANSFER: "PGD-20 examples crafted on the teacher break the student more than its own white-box "
                      "PGD-20 (the student inherits its teacher's adversarial directions)",
    MIXED_PROTOCOLS: "the table mixes training-attack protocols (column protocol): rows differ in the BatchNorm "
                     "mode their training examples were crafted in, not only in method",
    MIXED_DEVICES: "the table mixes devices (column device): accuracies measured on different hardware",
}


@dataclass
class Results:
    """Everything read from the result directories, one row per run and per teacher."""

    runs: pd.DataFrame  # per run: display columns + internal "_" columns
    teachers: pd.DataFrame
    attacks: list[str] = field(default_factory=list)  # attack labels, in order of first appearance
    diagnostics: list[str] = field(default_factory=list)  # diagnostic columns present
    duplicates: list[str] = field(default_factory=list)  # run ids met more than once
    sources: list[str] = field(default_factory=list)  # the result directories read
    suites: list[str] = field(default_factory=list)
    # run id -> its per-epoch losses from metrics.json: {"title", "losses", "loss_terms"} (the HTML's curves)
    curves: dict[str, dict] = field(default_factory=dict)

    @property
    def several_suites(self) -> bool:
        return len(self.suites) > 1


# ----------------------------------------------------------------------------------------------
# reading files


def result_dirs(paths) -> list[Path]:
    """The result directories named: each path itself when it holds runs/ or teachers/, else its
    sub-directories that do (``results/`` with one directory per suite)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.is_dir():
            raise RkbenchError(f"results directory not found: {path}")
        if holds_results(path):
            found.append(path)
            continue
        children = sorted(p for p in path.iterdir() if p.is_dir() and holds_results(p))
        if not children:
            raise RkbenchError(f"{path} holds no rkbench results (no runs/ or teachers/ directory in it "
                               f"or in its sub-directories)")
        found.extend(children)
    return found


def digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def percent(value) -> float:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return np.nan
    return 100.0 * float(value)


def _number(value) -> float:
    return np.nan if value is None else float(value)


def interval(accuracy: float, n) -> tuple[float, float]:
    """95 % Wilson interval (in %) of an accuracy (in %) measured on n examples."""
    if n is None or n <= 0 or accuracy is None or math.isnan(accuracy):
        return np.nan, np.nan
    lo, hi = wilson(round(accuracy * n / 100.0), int(n))
    return 100.0 * lo, 100.0 * hi


def _accuracies(record: RunRecord, attacks: list[str]) -> tuple[dict, list[str]]:
    row, cascade = {"clean": percent(record.clean_accuracy)}, []
    for label, value in (record.robust_accuracy or {}).items():
        if label not in attacks:
            attacks.append(label)
        row[label] = percent(value)
        if value is None:  # run by the cascade on the examples still robust: no accuracy of its own
            cascade.append(label)
    row["worst_case"] = percent(record.worst_case_accuracy)
    n = record.n_examples
    for metric in list(row):
        row[f"{metric}_lo"], row[f"{metric}_hi"] = interval(row[metric], n)
    row["_n"] = n if n else np.nan
    return row, cascade


def teacher_transfer_flag(record: RunRecord) -> tuple[str, str] | None:
    """``!teacher_transfer``: the accuracy under PGD-20 crafted on the run's teacher (an attack named
    ``transfer-teacher``, or ``transfer`` with source ``teacher``) falls below the run's white-box PGD-20
    (``pgd20``, or ``pgd`` with 20 steps, one restart, CE) by more than sampling noise (2 examples or
    0.5 %, the evaluator's margin). Read from the record's attack configurations, never from labels."""
    configs, accuracies = record.attacks or {}, record.robust_accuracy or {}

    def labels(test) -> list[str]:
        return [label for label, config in configs.items() if test(config) and accuracies.get(label) is not None]

    transfer = labels(lambda c: c.get("name") == "transfer-teacher"
                      or (c.get("name") == "transfer" and c.get("source") == "teacher"))
    white_box = labels(lambda c: c.get("name") == "pgd20" or (c.get("name") == "pgd" and c.get("steps") == 20 and
                                                              c.get("restarts", 1) == 1 and c.get("loss", "ce") == "ce"))
    if not transfer or not white_box or not record.n_examples:
        return None
    margin = max(2.0 / record.n_examples, 0.005)
    t_label = min(transfer, key=lambda label: accuracies[label])
    w_label = max(white_box, key=lambda label: accuracies[label])
    if accuracies[t_label] < accuracies[w_label] - margin:
        return (TEACHER_TRANSFER, f"{t_label} {accuracies[t_label]:.2%} < white-box {w_label} "
                                  f"{accuracies[w_label]:.2%}")
    return None


def attack_mode_label(mode) -> str:
    """How tables show the mode a run crafted its training examples in (metrics.json ``attack_mode``)."""
    return {None: "-", "free": "n/a (free)"}.get(mode, str(mode))


def _protocol_columns(record: RunRecord) -> dict:
    if record.protocol is None:  # written before protocols existed
        return {"protocol": PROTOCOL_UNKNOWN, "attack_mode": PROTOCOL_UNKNOWN}
    return {"protocol": record.protocol, "attack_mode": attack_mode_label(record.attack_mode)}


def protocols(frame: pd.DataFrame) -> list[str]:
    """The training-attack protocols of the rows of a frame, sorted."""
    return sorted(set(frame["protocol"].dropna().astype(str))) if "protocol" in frame.columns else []


def _mark_unequal_budgets(frame: pd.DataFrame) -> pd.DataFrame:
    """``!unequal_budget`` on every row when some row was tuned and the rows' trial counts differ
    (an untuned row counts 0 trials)."""
    if "trials" not in frame.columns or not frame["trials"].notna().any():
        return frame
    budgets = sorted(set(frame["trials"].fillna(0).astype(int)))
    if len(budgets) > 1:
        _flag_every_row(frame, UNEQUAL_BUDGET, f"tuning trials per method in this table: "
                                               f"{', '.join(map(str, budgets))}")
    return frame


def _mark_mixed_protocols(frame: pd.DataFrame) -> pd.DataFrame:
    """``!mixed_protocols`` on every row when the rows come from more than one protocol; then
    ``!unequal_budget`` when the rows had different tuning budgets."""
    frame = _mark_unequal_budgets(frame)
    found = protocols(frame)
    if len(found) > 1:
        _flag_every_row(frame, MIXED_PROTOCOLS, f"protocols in this table: {', '.join(found)}")
    return frame


def _flag_every_row(frame: pd.DataFrame, code: str, detail: str) -> None:
    """A table-wide flag: ``!code`` in every row's flags, with its detail."""
    frame["flags"] = [f"{text} !{code}".strip() for text in frame["flags"].fillna("")]
    frame["_flags"] = [[*flags, (code, detail)] for flags in frame["_flags"]]


def device_label(record: RunRecord) -> str:
    """The ``device`` cell of a run: where it was evaluated, and trained when that differs."""
    if record.eval_device is None:
        return DEVICE_UNKNOWN
    label = record.eval_device.label()
    if record.eval_ieee_fp32 is False:
        label += " tf32"
    if record.train_device is not None and record.train_device.label() != record.eval_device.label():
        label = f"train {record.train_device.label()}, eval {label}"
    return label


def devices(frame: pd.DataFrame) -> list[str]:
    """The known devices of the rows of a frame, sorted (an aggregated row may list several, ``; ``)."""
    if "device" not in frame.columns:
        return []
    found = {part for cell in frame["device"].dropna().astype(str) for part in cell.split("; ")}
    return sorted(found - {DEVICE_UNKNOWN})


def _mark_mixed_devices(frame: pd.DataFrame) -> pd.DataFrame:
    """``!mixed_devices`` on every row when the rows come from more than one known device."""
    found = devices(frame)
    if len(found) > 1:
        _flag_every_row(frame, MIXED_DEVICES, f"devices in this table: {'; '.join(found)}")
    return frame


def run_row(record: RunRecord, config: dict | None, source: Path, attacks: list[str], diagnostics: list[str]) -> dict:
    """A run's row of the results frame: its record, its identity (config.json) and derived columns."""
    identity = (config or {}).get("identity") or {}
    teacher = record.teacher or NO_TEACHER
    row = {"suite": (config or {}).get("suite") or source.name, "teacher": teacher,
           "student": record.student, "method": record.method, "seed": record.seed, **_protocol_columns(record)}
    accuracies, cascade = _accuracies(record, attacks)
    row.update(accuracies)
    for key, scale in DIAGNOSTICS.items():
        value = (record.diagnostics or {}).get(key)
        if value is not None:
            if key not in diagnostics:
                diagnostics.append(key)
            row[key] = scale * float(value)
    row.update(corruption_columns(record, diagnostics))
    row.update({"train_s": _number(record.train_seconds), "params": _number(record.parameters),
                "madds": _number(record.madds)})
    # the epoch whose weights were evaluated, and on what it was chosen (older records: the last epoch)
    row.update({"epoch": _number(record.epoch), "selected_on": record.selected_on or "last"})
    # a tuned suite's run: the trials its method had and the values they chose (rkbench/tuning.py)
    tuning = record.tuning or {}
    row.update({"trials": _number(tuning.get("trials")),
                "hyperparameters": " ".join(f"{k}={v}" for k, v in (tuning.get("chosen") or {}).items())})
    failed = not record.finished
    row["status"] = f"failed: {record.error}" if failed else record.status
    row["cascade"] = " ".join(cascade)
    row["run_id"] = record.run_id
    row["device"] = device_label(record)
    row["_flags"] = [(flag.code, flag.detail) for flag in record.flags or []]
    transfer = teacher_transfer_flag(record)
    if transfer is not None:
        row["_flags"].append(transfer)
    if identity:
        row["_group"] = digest({k: v for k, v in identity.items() if k != "seed"})
        row["_student_key"] = digest({k: identity.get(k) for k in ("dataset", "threat", "student")})
        row["_teacher_key"] = digest(identity["teacher"]) if identity.get("teacher") else None
        method = identity.get("method")
        row["_method_name"] = (method.get("name") if isinstance(method, dict) else None) or row["method"]
    else:  # no config.json (older or copied results): fall back on the names shown
        row["_group"] = digest([row["suite"], teacher, row["student"], row["method"], record.model])
        row["_student_key"] = digest([row["student"], record.model])
        row["_teacher_key"] = None
        row["_method_name"] = row["method"]
    row["_finished"] = not failed and row["status"] == "finished"
    row["_source"] = str(source)
    return row


CORRUPTIONS = "corruptions"  # the column: mean accuracy over every corruption and severity (%)


def corruption_columns(record: RunRecord, columns: list[str] | None = None) -> dict:
    """``corruptions`` (the mean corruption accuracy, %) and ``_corruptions`` (corruption -> its
    accuracy averaged over severities, %) of a record evaluated on common corruptions."""
    if record.corruptions is None:
        return {}
    if columns is not None and CORRUPTIONS not in columns:
        columns.append(CORRUPTIONS)
    return {CORRUPTIONS: 100.0 * record.corruptions.mean,
            "_corruptions": {name: 100.0 * float(np.mean(values))
                             for name, values in record.corruptions.accuracy.items()}}


def teacher_row(record: RunRecord, config: dict | None, source: Path, attacks: list[str]) -> dict:
    """A teacher's row of the teachers frame."""
    identity = (config or {}).get("identity")
    row = {"teacher": record.teacher, "model": record.model, "source": record.source,
           "attack_mode": attack_mode_label(record.attack_mode)}  # "-": not trained in the suite
    accuracies, cascade = _accuracies(record, attacks)
    row.update(accuracies)
    row.update({k: v for k, v in corruption_columns(record).items() if not k.startswith("_")})
    row.update({"params": _number(record.parameters), "madds": _number(record.madds),
                "flags": flag_markers([[(flag.code, "") for flag in record.flags or []]]),
                "cascade": " ".join(cascade), "teacher_id": record.run_id,
                "_key": digest(identity) if identity else None, "_source": str(source)})
    return row


def collect(paths) -> Results:
    """Read and merge the result directories; derive teacher columns, transfer ratio and delta_at."""
    dirs = result_dirs(paths)
    runs: dict[str, dict] = {}
    curves: dict[str, dict] = {}
    teachers: dict[tuple[str, str], dict] = {}  # per directory: a teacher evaluated in each suite
    duplicates: list[str] = []
    attacks: list[str] = []
    teacher_attacks: list[str] = []
    diagnostics: list[str] = []
    for directory in dirs:
        for run_directory in iter_result_dirs(directory, RUNS):
            record = load_valid_record(run_directory)
            if record is None:
                continue
            row = run_row(record, read_config(run_directory), directory, attacks, diagnostics)
            row.update(class_columns(run_directory if row["_finished"] else None, record))
            previous = runs.get(row["run_id"])
            if previous is not None:
                duplicates.append(row["run_id"])
                if previous["_finished"] or not row["_finished"]:
                    continue  # keep the first finished copy
            runs[row["run_id"]] = row
            curves[row["run_id"]] = loss_curves(record)
        for teacher_directory in iter_result_dirs(directory, TEACHERS):
            record = load_valid_record(teacher_directory)
            if record is not None and (str(directory), record.run_id) not in teachers:
                teachers[(str(directory), record.run_id)] = teacher_row(
                    record, read_config(teacher_directory), directory, teacher_attacks)
    teacher_frame = pd.DataFrame(list(teachers.values()))
    frame = pd.DataFrame(list(runs.values()))
    if not frame.empty and "_corruptions" not in frame.columns:  # no run evaluated on common corruptions
        frame["_corruptions"] = None
    suites = list(dict.fromkeys(frame["suite"])) if not frame.empty else []
    results = Results(frame, teacher_frame, attacks, diagnostics, sorted(set(duplicates)), [str(d) for d in dirs],
                      suites, {run_id: curve for run_id, curve in curves.items() if curve["losses"] or curve["loss_terms"]})
    if not frame.empty:
        _derive(results)
    return results


def loss_curves(record: RunRecord) -> dict:
    """A run's per-epoch training losses as its record holds them: the mean total loss (records
    since version 3) and the mean of each named term (methods that name them)."""
    teacher = f" ({record.teacher})" if record.teacher and record.teacher != NO_TEACHER else ""
    return {"title": f"{record.student} <- {record.method}{teacher}, seed {record.seed}",
            "losses": list(record.losses or []), "loss_terms": list(record.loss_terms or [])}


def class_columns(run_directory: Path | None, record: RunRecord) -> dict:
    """``worst_class`` (lowest per-class worst case, %) and the per-class counts behind it, from
    ``per_example.npz`` (NaN for runs written before labels were stored); ``_correct``: the run's
    per-example correctness by metric (None without the file), for the intervals over seeds."""
    arrays = read_arrays(run_directory) if run_directory is not None else None
    counts = class_counts(run_directory, record, arrays=arrays) if arrays is not None else None
    correct = None
    if arrays is not None and CLEAN in arrays:
        try:
            correct = correctness(arrays, record)
        except RkbenchError:
            correct = None
    if not counts:
        return {"worst_class": np.nan, "_class_counts": None, "_correct": correct}
    return {"worst_class": min(100.0 * k / n for k, n in counts.values()), "_class_counts": counts,
            "_correct": correct}


# ----------------------------------------------------------------------------------------------
# derived columns


def _match_teacher(row, teachers: list[dict]) -> dict | None:
    """A run's teacher: by identity (config.json), the copy in the run's own directory first; else
    by name in the same directory; else by a name that only one teacher has."""
    if row["teacher"] == NO_TEACHER:
        return None
    if row["_teacher_key"]:
        same = [t for t in teachers if t["_key"] == row["_teacher_key"]]
        same.sort(key=lambda t: t["_source"] != row["_source"])
        if same:
            return same[0]
    same_dir = [t for t in teachers if t["teacher"] == row["teacher"] and t["_source"] == row["_source"]]
    if len(same_dir) == 1:
        return same_dir[0]
    named = [t for t in teachers if t["teacher"] == row["teacher"]]
    return named[0] if len(named) == 1 else None


def at_references(frame: pd.DataFrame) -> dict[str, float]:
    """student key -> mean worst case of the same student trained with ``at`` (over its seeds).
    Several ``at`` configurations of one student: the one labelled ``at`` in the same suite first."""
    finished = frame[frame["_finished"] & (frame["_method_name"] == AT_METHOD)]
    references = {}
    for student_key, rows in finished.groupby("_student_key", sort=False):
        groups = list(rows.groupby("_group", sort=False))
        groups.sort(key=lambda item: (item[1]["method"].iloc[0] != AT_METHOD,))
        references[student_key] = float(groups[0][1]["worst_case"].mean())
    return references


def _derive(results: Results) -> None:
    frame = results.runs
    teachers = results.teachers.to_dict("records") if not results.teachers.empty else []
    matched = [_match_teacher(row, teachers) for _, row in frame.iterrows()]
    frame["teacher_clean"] = [t["clean"] if t else np.nan for t in matched]
    frame["teacher_worst_case"] = [t["worst_case"] if t else np.nan for t in matched]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = frame["worst_case"] / frame["teacher_worst_case"]
    frame["transfer_ratio"] = ratio.where(frame["teacher_worst_case"] > 0)
    references = at_references(frame)
    frame["_at_worst_case"] = frame["_student_key"].map(references).astype(float)
    frame["delta_at"] = frame["worst_case"] - frame["_at_worst_case"]


# ----------------------------------------------------------------------------------------------
# the two views


def _columns(results: Results, view: str) -> list[str]:
    head = (["suite"] if results.several_suites else []) + ID_COLUMNS + ["attack_mode"]
    if view == "per_seed":
        metrics = [c for metric in ["clean", *results.attacks, "worst_case"]
                   for c in (metric, f"{metric}_lo", f"{metric}_hi")]
        return (head + ["seed"] + metrics + ["worst_class", "teacher_clean", "teacher_worst_case", "transfer_ratio",
                                             "delta_at", "train_s", "params", "madds"]
                + list(results.diagnostics) + selection_columns(results)
                + ["protocol", "device", "flags", "status", "cascade", "run_id"])
    columns = head + ["seeds"]
    for metric in ["clean", *results.attacks, "worst_case"]:
        columns += [metric, f"{metric}_std", f"{metric}_lo", f"{metric}_hi"]
    columns += ["worst_class", "worst_class_std"]
    columns += ["teacher_clean", "teacher_worst_case", "transfer_ratio", "delta_at", "train_s", "params", "madds"]
    for metric in results.diagnostics:
        columns += [metric, f"{metric}_std"]
    return columns + selection_columns(results) + ["protocol", "device", "flags", "status", "cascade", "seed_list",
                                                       "run_id"]


def selection_columns(results: Results) -> list[str]:
    """``epoch`` and ``selected_on`` when some run was chosen on the validation split (a table of
    last-epoch runs only keeps its columns as they were)."""
    runs = results.runs
    chosen = not runs.empty and "selected_on" in runs.columns and (runs["selected_on"] != "last").any()
    tuned = not runs.empty and "trials" in runs.columns and runs["trials"].notna().any()
    return (["epoch", "selected_on"] if chosen or tuned else []) + (["trials", "hyperparameters"] if tuned else [])


INTERNAL = ["_group", "_student_key", "_teacher_key", "_method_name", "_finished", "_source", "_flags",
            "_at_worst_case", "_n", "_class_counts", "_correct", "_corruptions"]


def flag_markers(flag_lists: list[list[tuple[str, str]]]) -> str:
    """``!code`` per integrity flag raised in any seed; ``!code(k/n)`` when only k of n seeds raised it."""
    n = len(flag_lists)
    counts: dict[str, int] = {}
    for flags in flag_lists:
        for code in {code for code, _ in flags}:
            counts[code] = counts.get(code, 0) + 1
    return " ".join(f"!{code}" + (f"({k}/{n})" if k < n else "") for code, k in sorted(counts.items()))


def per_seed_frame(results: Results) -> pd.DataFrame:
    """One row per run (the per-seed view)."""
    frame = results.runs.copy()
    if frame.empty:
        return pd.DataFrame(columns=_columns(results, "per_seed"))
    frame["flags"] = [flag_markers([flags]) for flags in frame["_flags"]]
    frame = _mark_mixed_devices(_mark_mixed_protocols(frame))
    frame = frame.sort_values(["student", "teacher", "method", "seed"], kind="stable")
    columns = _columns(results, "per_seed")
    return frame.reindex(columns=columns + INTERNAL).reset_index(drop=True)


def aggregate_frame(results: Results) -> pd.DataFrame:
    """Runs that differ only by their seed in one row: mean and sample std (n-1) of every metric.
    Failed runs stay rows of their own."""
    frame = results.runs
    columns = _columns(results, "aggregated")
    if frame.empty:
        return pd.DataFrame(columns=columns)
    keys = frame["_group"].where(frame["_finished"], "failed:" + frame["run_id"])
    accuracies = ["clean", *results.attacks, "worst_case"]
    metrics = [*accuracies, "worst_class", *results.diagnostics]
    rows = []
    for _, group in frame.groupby(keys, sort=False):
        first = group.iloc[0]
        row = {column: first[column] for column in ["suite", *ID_COLUMNS, "attack_mode", "protocol", "status",
                                                    "params", "madds", "teacher_clean", "teacher_worst_case",
                                                    *INTERNAL]}
        row["seeds"] = len(group)
        for metric in metrics:
            values = group[metric].astype(float)
            row[metric] = values.mean()
            row[f"{metric}_std"] = values.std(ddof=1) if values.notna().sum() > 1 else np.nan
        for metric in accuracies:
            row[f"{metric}_lo"], row[f"{metric}_hi"] = seeds_interval(group, metric)
        row["_n"] = group["_n"].astype(float).sum()
        row["_class_counts"] = pooled_class_counts(group["_class_counts"])
        row["_corruptions"] = mean_corruptions(list(group["_corruptions"]))
        row["train_s"] = group["train_s"].astype(float).mean()
        row["transfer_ratio"] = group["transfer_ratio"].astype(float).mean()
        row["delta_at"] = row["worst_case"] - first["_at_worst_case"]
        row["flags"] = flag_markers(list(group["_flags"]))
        row["_flags"] = [flag for flags in group["_flags"] for flag in flags]
        cascade = {label for text in group["cascade"] for label in str(text).split()}
        row["cascade"] = " ".join(label for label in results.attacks if label in cascade)
        row["seed_list"] = " ".join(str(s) for s in sorted(group["seed"].dropna().astype(int)))
        by_seed = group.sort_values("seed")
        row["epoch"] = " ".join("?" if pd.isna(e) else str(int(e)) for e in by_seed["epoch"])  # per seed
        row["selected_on"] = " ".join(dict.fromkeys(by_seed["selected_on"].astype(str)))
        row["trials"] = group["trials"].astype(float).max()  # seeds of one configuration share their tuning
        row["hyperparameters"] = first["hyperparameters"]
        row["run_id"] = " ".join(group.sort_values("seed")["run_id"])
        row["device"] = "; ".join(dict.fromkeys(group["device"].astype(str)))
        rows.append(row)
    out = _mark_mixed_devices(_mark_mixed_protocols(pd.DataFrame(rows)))
    out = out.sort_values(["student", "teacher", "method"], kind="stable")
    return out.reindex(columns=columns + INTERNAL).reset_index(drop=True)


def seeds_interval(group: pd.DataFrame, metric: str) -> tuple[float, float]:
    """The 95 % interval (in %) of a row's accuracy. One seed: Wilson over its examples. Several:
    the interval of the mean over seeds by the two-level bootstrap over seeds and shared test
    examples (``seeds``), from the runs' per-example arrays; NaN without them (the seeds' examples
    are the same examples, so pooling them as independent would claim a precision they lack)."""
    if len(group) == 1:
        first = group.iloc[0]
        value, n = float(first[metric]), first["_n"]
        return interval(value, None if pd.isna(n) else int(n)) if not math.isnan(value) else (np.nan, np.nan)
    arrays = [(correct or {}).get(metric) for correct in group.sort_values("seed", kind="stable")["_correct"]]
    if any(a is None for a in arrays) or len({len(a) for a in arrays}) != 1:
        return np.nan, np.nan
    result = mean_interval(arrays)
    return 100.0 * result.lo, 100.0 * result.hi


def mean_corruptions(per_run) -> dict | None:
    """corruption -> mean over runs (%); None unless every run has corruption accuracies."""
    runs = [r for r in per_run if isinstance(r, dict)]
    if not runs or len(runs) != len(per_run):
        return None
    return {name: float(np.mean([r[name] for r in runs if name in r])) for name in runs[0]}


def pooled_class_counts(per_run) -> dict | None:
    """class -> (correct, n) summed over runs; None when a run has no labels stored."""
    pooled: dict = {}
    for counts in per_run:
        if not counts:
            return None
        for label, (k, n) in counts.items():
            k0, n0 = pooled.get(label, (0, 0))
            pooled[label] = (k0 + k, n0 + n)
    return pooled or None


def public(frame: pd.DataFrame) -> pd.DataFrame:
    """Without the internal ``_`` columns."""
    return frame[[c for c in frame.columns if not str(c).startswith("_")]]
