"""The validation split (dataset.validation) and checkpoint selection (training.checkpoint: best):
carved stratified from the training split for every source, in a run's identity only when set;
a best-checkpoint run records its validation curve and selected epoch, never reads the test split
before the final evaluation, and resumes to the very weights and curve of an uninterrupted run."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rkbench.data import DATASETS, TensorDataset, carve_validation, load_dataset
from rkbench.errors import ConfigError
from rkbench.record import read_record
from rkbench.runner import Reporter, SuiteRunner
from rkbench.suite import expand, suite_from_dict

from conftest import tiny_suite_dict

pytestmark = pytest.mark.usefixtures("one_thread")


def best_suite(**training) -> dict:
    return {
        "name": "best", "dataset": {"name": "digits", "validation": 0.2},
        "threat": {"norm": "linf", "eps": 0.1, "step_size": 0.025, "steps": 2},
        "students": [{"name": "mlp", "model": "mlp", "hidden": 32}], "methods": {"at": {"attack_steps": 1}},
        "training": {"epochs": 4, "batch_size": 256, "optimizer": {"lr": 0.05}, "seeds": [0], "threads": 1,
                     "checkpoint": "best", "selection": {"attack": "pgd10"}, **training},
        "evaluation": {"attacks": [{"name": "pgd", "label": "pgd3", "steps": 3}], "n_examples": 60}}


# -- the validation split -----------------------------------------------------------------------

def test_validation_is_stratified_seeded_disjoint_and_leaves_the_test_split_alone(digits):
    from dataclasses import replace

    from rkbench.data.digits import DigitsParams

    full = digits
    data = load_dataset("digits", {"validation": 0.2})
    assert data.x_val.shape[0] == 270 and data.x_train.shape[0] == 1347 - 270
    assert torch.equal(data.x_test, full.x_test) and torch.equal(data.y_test, full.y_test)
    # the two parts are exactly the source's training split, cut at validation_indices
    index = data.validation_indices
    assert torch.equal(full.x_train[index], data.x_val)
    rest = torch.ones(1347, dtype=torch.bool)
    rest[index] = False
    assert torch.equal(full.x_train[rest], data.x_train)
    # stratified: each class in the validation split in its training proportion (+-1 example)
    expected = torch.bincount(full.y_train, minlength=10) * 0.2
    assert (torch.bincount(data.y_val, minlength=10) - expected).abs().max() <= 1
    # the same draw for the same seed, another for another seed
    carve = lambda **options: carve_validation(replace(full), DigitsParams(**options)).validation_indices  # noqa: E731
    assert torch.equal(carve(validation=0.2), index)
    assert not torch.equal(carve(validation=0.2, validation_seed=1), index)


def test_validation_is_carved_for_other_sources_too(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (40, 3, 4, 4), dtype=np.uint8), "y_train": np.arange(40) % 4,
              "x_test": rng.integers(0, 256, (8, 3, 4, 4), dtype=np.uint8), "y_test": np.arange(8) % 4}
    np.savez(tmp_path / "d.npz", **arrays)
    data = load_dataset("npz", {"path": str(tmp_path / "d.npz"), "validation": 8})
    assert data.x_train.shape[0] == 32 and torch.bincount(data.y_val).tolist() == [2, 2, 2, 2]
    with pytest.raises(ConfigError, match="dataset.validation: 3 cannot be drawn stratified"):
        load_dataset("npz", {"path": str(tmp_path / "d.npz"), "validation": 3})  # fewer than the 4 classes


@pytest.mark.parametrize("name", ["digits", "npz", "cifar10", "cifar100", "svhn", "tinyimagenet", "imagefolder"])
def test_every_source_takes_a_validation_option(name):
    params = DATASETS.get(name).Params
    assert "validation" in params.model_fields and "validation_seed" in params.model_fields


def test_validation_enters_the_run_id_only_when_set():
    plain = expand(suite_from_dict(tiny_suite_dict()))[1]
    assert all("validation" not in run.identity()["dataset"]["options"] for run in plain)
    held = expand(suite_from_dict(tiny_suite_dict(dataset={"name": "digits", "validation": 0.1})))[1]
    assert {r.run_id for r in plain}.isdisjoint(r.run_id for r in held)
    best = expand(suite_from_dict(best_suite()))[1][0]
    last = expand(suite_from_dict(best_suite(checkpoint="last")))[1][0]
    assert best.run_id != last.run_id and "checkpoint" not in last.identity()["training"]


def test_checkpoint_best_without_a_validation_split_is_one_line():
    raw = best_suite()
    raw["dataset"] = {"name": "digits"}
    with pytest.raises(ConfigError, match=r"best: training.checkpoint: 'best' selects on the validation split; "
                                          r"set dataset.validation"):
        suite_from_dict(raw, source="best")
    raw = best_suite(selection={"attack": "pgd21"})
    with pytest.raises(ConfigError, match="training.selection.attack.*pgd21"):
        suite_from_dict(raw)


# -- checkpoint: best ---------------------------------------------------------------------------

class SplitGuard(TensorDataset):
    """A dataset whose test tensors raise until the final evaluation opens them."""

    opened = False
    reads = 0

    def _guard(self):
        if not type(self).opened:
            raise AssertionError("the test split was read before the final evaluation")
        type(self).reads += 1

    x_test = property(lambda self: (self._guard(), self._x)[1], lambda self, v: setattr(self, "_x", v))
    y_test = property(lambda self: (self._guard(), self._y)[1], lambda self, v: setattr(self, "_y", v))


def test_best_records_curve_and_epoch_and_reads_the_test_split_only_in_the_final_evaluation(tmp_path, monkeypatch):
    import rkbench.runner as runner_module
    from rkbench.suite_evaluation import SuiteEvaluation

    def guarded(name, options):
        data = load_dataset(name, options)
        return SplitGuard(data.name, data.x_train, data.y_train, data.x_test, data.y_test,
                              data.num_classes, data.augment, data.x_val, data.y_val, data.validation_indices)

    final_run = SuiteEvaluation.run

    def final_evaluation(self, *args, **kwargs):
        SplitGuard.opened = True  # from here on the test split may be read
        return final_run(self, *args, **kwargs)

    SplitGuard.opened, SplitGuard.reads = False, 0
    monkeypatch.setattr(runner_module, "load_dataset", guarded)
    monkeypatch.setattr(SuiteEvaluation, "run", final_evaluation)
    runner = SuiteRunner(suite_from_dict(best_suite()), tmp_path / "results")
    [outcome] = runner.run_many(runner.runs)
    assert outcome.status == "finished", outcome.error
    assert SplitGuard.reads > 0  # the guard was live: the final evaluation did read the test split
    record, _ = read_record(tmp_path / "results" / "runs" / runner.runs[0].run_id)
    curve = record.validation_curve
    assert [entry["epoch"] for entry in curve] == [1, 2, 3, 4]
    best = max(curve, key=lambda entry: entry["robust"])  # max() keeps the first of equal values
    assert record.selected_on == "validation" and record.epoch == best["epoch"]
    assert record.selection["value"] == best["robust"] and record.selection["n_examples"] == 270
    assert record.selection["attack"] == {"name": "pgd10"} and record.selection["split"] == "validation"
    from rkbench.report.leaderboard import leaderboard_frame

    row = leaderboard_frame(tmp_path / "results").iloc[0]  # reports show what was chosen, and on what
    assert (row["epoch"], row["selected_on"]) == (best["epoch"], "validation")


class Killed(BaseException):
    """Stands for SIGKILL right after an epoch's checkpoint (no handler catches a BaseException)."""


class KillAfter(Reporter):
    def __init__(self, epoch: int):
        self.epoch = epoch

    def epoch_callback(self, title):
        def on_epoch(epoch, epochs, loss):
            if epoch == self.epoch:
                raise Killed
        return on_epoch


def test_best_resumes_to_the_weights_and_curve_of_an_uninterrupted_run(tmp_path):
    suite = suite_from_dict(best_suite(epochs=4, selection={"every": 2, "attack": "pgd10"}))
    reference = SuiteRunner(suite, tmp_path / "reference")
    assert reference.run_many(reference.runs)[0].status == "finished"
    interrupted = SuiteRunner(suite, tmp_path / "resumed", reporter=KillAfter(3))
    with pytest.raises(Killed):
        interrupted.run_many(interrupted.runs)
    run_id = reference.runs[0].run_id
    directory = tmp_path / "resumed" / "runs" / run_id
    assert (directory / "checkpoint.pt").is_file() and not (directory / "metrics.json").exists()
    resumed = SuiteRunner(suite, tmp_path / "resumed")
    assert resumed.run_many(resumed.runs)[0].status == "finished"
    assert "resumed from epoch 3/4" in (directory / "log.txt").read_text()
    a, _ = read_record(tmp_path / "reference" / "runs" / run_id)
    b, _ = read_record(directory)
    assert [e["epoch"] for e in a.validation_curve] == [2, 4]
    assert (a.validation_curve, a.epoch, a.selection) == (b.validation_curve, b.epoch, b.selection)
    assert (a.clean_accuracy, a.robust_accuracy) == (b.clean_accuracy, b.robust_accuracy)
    from safetensors.torch import load_file

    weights_a = load_file(tmp_path / "reference" / "runs" / run_id / "model.safetensors")
    weights_b = load_file(directory / "model.safetensors")
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
