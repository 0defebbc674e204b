"""Equal tuning budgets (rkbench/tuning.py): every method gets the same number of trials, scored on
the validation split; trials are ordinary runs in <results>/tuning with an Optuna study in SQLite;
only the chosen configurations run with the suite's seeds; reports show what was chosen and flag
tables whose methods had different budgets."""
from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from rkbench.cli import main
from rkbench.errors import ConfigError
from rkbench.record import read_record
from rkbench.suite import suite_from_dict

pytestmark = pytest.mark.usefixtures("one_thread")


def tuned_suite(**changes) -> dict:
    suite = {
        "name": "tuned", "dataset": {"name": "digits", "validation": 0.2},
        "threat": {"norm": "linf", "eps": 0.1, "step_size": 0.025, "steps": 2},
        "students": [{"name": "mlp", "model": "mlp", "hidden": 16}],
        "methods": {"natural": {"search": {"training.optimizer.lr": [0.01, 0.2, 0.05]}},
                    "at": {"attack_steps": 1, "search": {"attack_steps": [1, 2]}}},
        "tuning": {"budget": 2, "sampler": "grid", "seed": 0, "trial_epochs": 1},
        "training": {"epochs": 2, "batch_size": 512, "optimizer": {"lr": 0.05}, "seeds": [0, 1], "threads": 1},
        "evaluation": {"attacks": [{"name": "pgd", "label": "pgd2", "steps": 2}], "n_examples": 30}}
    suite.update(changes)
    return suite


def test_validate_prints_the_same_trials_for_every_method(tmp_path):
    path = tmp_path / "tuned.yaml"
    path.write_text(yaml.safe_dump(tuned_suite()))
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert "natural: 2 trials of 3 configuration(s)" in result.output
    assert "at: 2 trials of 2 configuration(s)" in result.output
    # 2 methods x 2 trials x 1 epoch; 2 methods x 2 seeds x 2 epochs
    assert "full runs: 4 (8 student-epochs); cost: 4 trial + 8 full = 12 student-epochs" in result.output


@pytest.mark.parametrize("change, message", [
    ({"methods": {"natural": {}, "at": {"search": {"attack_steps": [1]}}}},
     "methods.natural.search: a tuned suite gives every method the same budget"),
    ({"methods": {"at": {"search": {"attack_steps": [1]}}}},
     "methods.at.search: the grid has 1 configuration(s), fewer than tuning.budget 2"),
    ({"methods": {"at": {"search": {"attack_steps": [1, -3]}}}}, "methods.at.search.attack_steps: Input should be"),
    ({"methods": {"at": {"search": {"training.optimizer.lr": [0.1, 0]}}}}, "lr"),
    ({"dataset": {"name": "digits"}}, "tuning: trials are scored on the validation split"),
    ({"tuning": None}, "methods.natural.search: a search space needs a tuning section"),
])
def test_bad_tuning_sections_are_one_line(change, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        suite_from_dict(tuned_suite(**change))


def test_run_ids_ignore_search_spaces():
    from rkbench.suite import expand

    plain = tuned_suite(tuning=None, methods={"natural": {}, "at": {"attack_steps": 1}})
    searched = tuned_suite()
    assert [r.run_id for r in expand(suite_from_dict(plain))[1]] == \
        [r.run_id for r in expand(suite_from_dict(searched))[1]]


def test_a_tuned_suite_trials_on_validation_then_runs_the_chosen_configurations(tmp_path, monkeypatch):
    from rkbench.suite_evaluation import SuiteEvaluation

    evaluated = []  # the methods whose runs the test split was read for
    final_run = SuiteEvaluation.run

    def final_evaluation(self, model, directory, title, seed, **options):
        evaluated.append(title)
        return final_run(self, model, directory, title, seed, **options)

    monkeypatch.setattr(SuiteEvaluation, "run", final_evaluation)
    path = tmp_path / "tuned.yaml"
    path.write_text(yaml.safe_dump(tuned_suite()))
    results = tmp_path / "results"
    result = CliRunner().invoke(main, ["run", str(path), "--results-dir", str(results), "--quiet"])
    assert result.exit_code == 0, result.output
    # the trials: 2 per method, ordinary runs with records, never evaluated on the test split
    trials = [read_record(d)[0] for d in sorted((results / "tuning" / "runs").iterdir())]
    assert sorted(r.method for r in trials) == ["at~trial0", "at~trial1", "natural~trial0", "natural~trial1"]
    assert all(r.clean_accuracy is None and r.selected_on == "validation" and r.validation_curve for r in trials)
    assert (results / "tuning" / "study.sqlite").is_file()
    assert sorted(evaluated) == ["mlp <- at"] * 2 + ["mlp <- natural"] * 2  # only the final runs
    # the final runs: each method's chosen configuration, both seeds, the choice in the record
    finals = [read_record(d)[0] for d in sorted((results / "runs").iterdir())]
    assert sorted((r.method, r.seed) for r in finals) == [("at", 0), ("at", 1), ("natural", 0), ("natural", 1)]
    for record in finals:
        tuning = record.tuning
        assert tuning["trials"] == tuning["budget"] == 2 and tuning["split"] == "validation"
        mine = [r for r in trials if r.method.startswith(record.method + "~")]
        assert tuning["value"] == max(r.selection["value"] for r in mine)
    csv = CliRunner().invoke(main, ["report", str(results), "--format", "csv"]).stdout.splitlines()
    assert "trials" in csv[0] and "hyperparameters" in csv[0] and "unequal_budget" not in "\n".join(csv)

    # run again: the study and every run are reused, nothing is trained, the same choice
    again = CliRunner().invoke(main, ["run", str(path), "--results-dir", str(results), "--quiet"])
    assert again.exit_code == 0 and "training mlp" not in again.output
    assert [read_record(d)[0].tuning for d in sorted((results / "runs").iterdir())] == [r.tuning for r in finals]

    # a method tuned more than the others: every row of the table is flagged
    record_path = next((results / "runs").iterdir()) / "metrics.json"
    data = json.loads(record_path.read_text())
    data["tuning"]["trials"] = 5
    record_path.write_text(json.dumps(data))
    flagged = CliRunner().invoke(main, ["report", str(results), "--format", "json"]).stdout
    rows = json.loads(flagged)["rows"]
    assert rows and all("!unequal_budget" in row["flags"] for row in rows)


def test_a_method_counts_only_the_first_budget_trials_of_its_study(tmp_path):
    """An untuned counterpart (budget 0) or a smaller budget reusing a study counts its own trials only."""
    import optuna

    from rkbench.tuning import Tuner

    suite = suite_from_dict(tuned_suite())
    spec = suite.methods[1]  # at: attack_steps in [1, 2]
    study = optuna.create_study(direction="maximize")
    for steps, value in ((1, 0.5), (2, 0.7), (1, 0.6)):
        study.add_trial(optuna.trial.create_trial(params={"attack_steps": steps}, value=value,
                                                  distributions={"attack_steps": optuna.distributions
                                                                 .CategoricalDistribution([1, 2])}))
    chosen = lambda budget: Tuner(suite.model_copy(update={"tuning": suite.tuning.model_copy(  # noqa: E731
        update={"budget": budget})}), tmp_path, execute=None).chosen(spec, study)
    assert chosen(0) == ({}, {**chosen(0)[1], "trials": 0, "chosen": {}, "value": None})
    values, info = chosen(1)
    assert values == {"attack_steps": 1} and info["trials"] == 1 and info["value"] == 0.5
    values, info = chosen(3)
    assert values == {"attack_steps": 2} and info["trials"] == 3 and info["value"] == 0.7
