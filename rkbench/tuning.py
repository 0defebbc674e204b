"""Equal tuning budgets: every method of a suite with a ``tuning:`` section gets the same number of
trials over its own search space, scored on the validation split; then only each method's chosen
configuration is trained with the suite's seeds and evaluated on the test split.

A trial is an ordinary run of a derived suite (``trial_suite``): the method's label becomes
``<label>~trial<n>``, its parameters those Optuna asked for, its training ``trial_epochs`` long
with the tuning seed and ``checkpoint: best`` (so its record holds the validation curve and the
best value), and ``evaluation.split: none`` (its record holds no test numbers; the test split is
never read for it). Trials live in ``<results>/tuning/`` (``runs/``, a leaderboard, the Optuna
study ``study.sqlite``), share the suite's teachers (``tuning/teachers`` links to ``teachers/``),
resume, and run on the suite's executor (workers, Slurm) round by round: each round asks every
method's study for one trial, runs the round's trials together, and tells each study its score.

The chosen configurations form ``final_suite``: the suite's own method labels, their parameters
merged with the chosen values, and ``MethodSpec.tuning`` (budget, trials used, sampler, metric,
chosen values, their validation score), which the runner writes into every final run's record.
This module speaks in suites and run records; it never imports the runner or the executors
(``execute`` runs a suite wherever the caller's executor runs it).
"""
from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Callable

from . import store
from .errors import ConfigError
from .methods import METHODS
from .record import read_record
from .suite import MethodSpec, Suite, deep_merge, expand, validate_options

TRIAL = "~trial"
TUNING_DIR = "tuning"
STUDY_FILE = "study.sqlite"


def split_values(values: dict) -> tuple[dict, dict]:
    """Search values -> (method parameters, training overrides) (``training.a.b: v`` -> ``{a: {b: v}}``)."""
    params, training = {}, {}
    for key, value in values.items():
        if key.startswith("training."):
            node = training
            parts = key.split(".")[1:]
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = value
        else:
            params[key] = value
    return params, training


def configured(spec: MethodSpec, values: dict, label: str | None = None, training: dict | None = None,
               tuning: dict | None = None) -> MethodSpec:
    """``spec`` with ``values`` applied: parameters normalized as the suite normalizes them (so a
    chosen configuration equal to the defaults has the default run's id)."""
    params, overrides = split_values(values)
    merged = validate_options(METHODS.get(spec.method).Params, {**spec.params, **params},
                              f"methods.{spec.label}").model_dump(mode="json")
    return MethodSpec(label=label or spec.label, method=spec.method, params=merged,
                      training=deep_merge(deep_merge(spec.training, overrides), training or {}), tuning=tuning)


def trial_training(suite: Suite) -> dict:
    tuning = suite.tuning
    overrides = {"seeds": [tuning.seed], "checkpoint": "best", "selection": {"metric": tuning.metric}}
    if tuning.trial_epochs:
        overrides["epochs"] = tuning.trial_epochs
    return overrides


def trial_suite(suite: Suite, trials: list[tuple[MethodSpec, int, dict]]) -> Suite:
    """One round of trials as a suite of its own: (method, trial number, values) each a method."""
    methods = [configured(spec, values, f"{spec.label}{TRIAL}{number}", trial_training(suite))
               for spec, number, values in trials]
    evaluation = suite.evaluation.model_copy(update={"split": "none", "diagnostics": False})
    teachers = [t.model_copy(update={"methods": None if t.methods is None else
                                     [f"{spec.label}{TRIAL}{number}" for spec, number, _ in trials
                                      if spec.label in t.methods]}) for t in suite.teachers]
    return suite.model_copy(update={"methods": methods, "evaluation": evaluation, "tuning": None,
                                    "references": [], "teachers": teachers})


def final_suite(suite: Suite, chosen: dict[str, tuple[dict, dict]]) -> Suite:
    """The suite with each method at its chosen values (label -> (values, tuning info))."""
    methods = [configured(spec, chosen[spec.label][0], tuning=chosen[spec.label][1]) for spec in suite.methods]
    return suite.model_copy(update={"methods": methods, "tuning": None})


def grid_size(spec: MethodSpec) -> int:
    return math.prod(len(values) for values in spec.search.values())


# ----------------------------------------------------------------------------------------------
# the search (Optuna)


def sampler(suite: Suite, spec: MethodSpec):
    import optuna

    tuning = suite.tuning
    if tuning.sampler in ("grid", "random"):  # grid: the grid's points are enqueued, in a seeded order
        return optuna.samplers.RandomSampler(seed=tuning.seed)
        return optuna.samplers.RandomSampler(seed=tuning.seed)
    return optuna.samplers.TPESampler(seed=tuning.seed, n_startup_trials=min(4, tuning.budget))


def grid_points(spec: MethodSpec, seed: int) -> list[dict]:
    """Every point of the method's grid, in an order shuffled by ``seed`` (the first ``budget`` are tried).
    Optuna's GridSampler stops its study from inside ``tell``, which ask-and-tell cannot use."""
    import random

    keys = list(spec.search)
    points = [dict(zip(keys, values)) for values in itertools.product(*(spec.search[k] for k in keys))]
    random.Random(seed).shuffle(points)
    return points


def distributions(spec: MethodSpec) -> dict:
    import optuna

    return {key: optuna.distributions.CategoricalDistribution(values) for key, values in spec.search.items()}


class Tuner:
    """Runs a tuned suite's trials (``execute(suite, results_dir)`` runs a suite and returns its
    outcome) and returns the final suite."""

    def __init__(self, suite: Suite, results_dir: Path, execute: Callable[[Suite, Path], object],
                 say: Callable[[str], None] = lambda text: None):
        if suite.tuning is None:
            raise ConfigError(f"suite {suite.name!r} has no tuning section")
        self.suite, self.results_dir, self.execute, self.say = suite, Path(results_dir), execute, say
        self.directory = self.results_dir / TUNING_DIR

    def storage(self) -> str:
        return f"sqlite:///{(self.directory / STUDY_FILE).resolve()}"

    def study(self, spec: MethodSpec):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(study_name=f"{self.suite.name}:{spec.label}", storage=self.storage(),
                                    sampler=sampler(self.suite, spec), direction="maximize", load_if_exists=True)
        if self.suite.tuning.sampler == "grid" and not study.get_trials(deepcopy=False):
            for point in grid_points(spec, self.suite.tuning.seed)[:self.suite.tuning.budget]:
                study.enqueue_trial(point)
        return study

    def _prepare(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        teachers = self.results_dir / store.TEACHERS
        teachers.mkdir(parents=True, exist_ok=True)
        link = self.directory / store.TEACHERS
        if not link.exists() and not link.is_symlink():
            link.symlink_to(Path("..") / store.TEACHERS)  # the suite's teachers, trained once for both

    def run(self) -> Suite | None:
        """The final suite; None when a round's trials were submitted and not waited for (Slurm with
        ``executor.wait: false``): run the suite again once they have finished, and tuning goes on."""
        import optuna

        self._prepare()
        budget = self.suite.tuning.budget
        studies = {spec.label: self.study(spec) for spec in self.suite.methods}
        for round_number in itertools.count():
            asked = []
            for spec in self.suite.methods:
                study = studies[spec.label]
                trials = study.get_trials(deepcopy=False)
                done = [t for t in trials if t.state in (optuna.trial.TrialState.COMPLETE,
                                                         optuna.trial.TrialState.FAIL)]
                if len(done) >= budget:
                    continue
                running = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING and t.params]
                if running:  # asked before an interruption: its run resumes
                    asked.append((spec, running[0].number, dict(running[0].params)))
                else:
                    trial = study.ask(distributions(spec))
                    asked.append((spec, trial.number, dict(trial.params)))
            if not asked:
                break
            self.say(f"tuning round {round_number + 1}: {len(asked)} trial(s)")
            trial_suite_ = trial_suite(self.suite, asked)
            outcome = self.execute(trial_suite_, self.directory)
            if any(o.status == "submitted" for o in getattr(outcome, "outcomes", [])):
                self.say(f"tuning round {round_number + 1} submitted; run the suite again when its trials "
                         f"have finished (the study resumes with them)")
                return None
            runs: dict[str, list] = {}
            for run in expand(trial_suite_)[1]:
                runs.setdefault(run.method.label, []).append(run)
            for spec, number, values in asked:
                score = self.score(runs, f"{spec.label}{TRIAL}{number}")
                study = studies[spec.label]
                if score is None:
                    study.tell(number, state=optuna.trial.TrialState.FAIL)
                else:
                    study.tell(number, score)
        return final_suite(self.suite, {spec.label: self.chosen(spec, studies[spec.label])
                                        for spec in self.suite.methods})

    def score(self, runs: dict, label: str) -> float | None:
        """A trial's score: the mean over its runs (students, teachers) of the best validation value."""
        values = []
        for run in runs.get(label, []):
            record, _ = read_record(store.run_dir(self.directory, run.run_id))
            if record is None or not record.finished or not record.selection:
                return None
            values.append(float(record.selection["value"]))
        return sum(values) / len(values) if values else None

    def chosen(self, spec: MethodSpec, study) -> tuple[dict, dict]:
        import optuna

        tuning = self.suite.tuning
        # the first `budget` finished trials: a study run before with a larger budget (or shared by
        # an untuned counterpart, budget 0) counts only as many trials as this suite grants
        finished = sorted((t for t in study.get_trials(deepcopy=False)
                           if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL)),
                          key=lambda t: t.number)[:tuning.budget]
        complete = [t for t in finished if t.state == optuna.trial.TrialState.COMPLETE]
        used = len(finished)
        info = {"budget": tuning.budget, "trials": used, "sampler": tuning.sampler, "metric": tuning.metric,
                "trial_epochs": tuning.trial_epochs or self.suite.training.epochs, "split": "validation"}
        if not tuning.budget:  # the untuned counterpart: every method at its defaults
            return {}, {**info, "chosen": {}, "value": None}
        if not complete:
            self.say(f"[red]tuning {spec.label}: every trial failed; its default configuration runs[/red]")
            return {}, {**info, "chosen": {}, "value": None}
        best = max(complete, key=lambda t: (t.value, -t.number))  # ties: the earlier trial
        self.say(f"tuning {spec.label}: chose {best.params} (validation {tuning.metric} {best.value:.4f}, "
                 f"trial {best.number} of {used})")
        return dict(best.params), {**info, "chosen": dict(best.params), "value": best.value, "trial": best.number}


# ----------------------------------------------------------------------------------------------
# planning (rkbench validate)


def plan(suite: Suite) -> dict:
    """What a tuned suite will run: trials per method, full runs, and the cost in student-epochs."""
    tuning = suite.tuning
    _, runs = expand(suite)
    trial_suite_ = trial_suite(suite, [(spec, 0, {k: v[0] for k, v in spec.search.items()})
                                       for spec in suite.methods])
    per_trial = {}
    for run in expand(trial_suite_)[1]:
        label = run.method.label.split(TRIAL)[0]
        per_trial[label] = per_trial.get(label, 0) + run.training.epochs
    methods = {spec.label: {"trials": tuning.budget, "configurations": grid_size(spec),
                            "search": {k: list(v) for k, v in spec.search.items()},
                            "trial_epochs": per_trial.get(spec.label, 0) * tuning.budget}
               for spec in suite.methods}
    trial_epochs = sum(m["trial_epochs"] for m in methods.values())
    full_epochs = sum(run.training.epochs for run in runs)
    return {"methods": methods, "full_runs": len(runs), "trial_epochs": trial_epochs, "full_epochs": full_epochs,
            "sampler": tuning.sampler, "metric": tuning.metric, "budget": tuning.budget}


def plan_lines(suite: Suite) -> list[str]:
    info = plan(suite)
    lines = [f"tuning: {info['budget']} trials per method ({info['sampler']} sampler, validation {info['metric']} "
             f"accuracy), chosen configurations then run with the suite's seeds"]
    for label, method in info["methods"].items():
        space = ", ".join(f"{k} {v}" for k, v in method["search"].items())
        lines.append(f"  {label}: {method['trials']} trials of {method['configurations']} configuration(s) "
                     f"[{space}], {method['trial_epochs']} student-epochs")
    total = info["trial_epochs"] + info["full_epochs"]
    share = 100.0 * info["trial_epochs"] / total if total else 0.0
    lines.append(f"full runs: {info['full_runs']} ({info['full_epochs']} student-epochs); cost: "
                 f"{info['trial_epochs']} trial + {info['full_epochs']} full = {total} student-epochs "
                 f"(trials {share:.0f} %), plus a validation pass every training.selection.every epochs of a trial "
                 f"(and of a full run with checkpoint: best)")
    return lines


def trial_count(suite: Suite) -> dict[str, int]:
    return {label: method["trials"] for label, method in plan(suite)["methods"].items()}

