"""No code runs from a results directory: a resume checkpoint is read with ``weights_only=True``;
one that would run code when unpickled, or a truncated one, is ignored with one warning line and the
run trains from scratch to the numbers of a clean run."""
import json
from pathlib import Path

import pytest
from conftest import invoke_cli
import torch
from safetensors.torch import load_file
import yaml

from rkbench.suite import expand, suite_from_dict

from test_runs_survive import TIMING  # the metrics allowed to differ between two executions

pytestmark = pytest.mark.usefixtures("one_thread")

SUITE = {
    "name": "safe",
    "dataset": {"name": "digits"},
    "threat": {"norm": "linf", "eps": 0.1, "step_size": 0.025, "steps": 2},
    "students": ["cnn_tiny"],
    "methods": {"natural": {}},
    "training": {"epochs": 2, "batch_size": 128, "optimizer": {"lr": 0.05}, "seeds": [0]},
    "evaluation": {"attacks": [{"name": "pgd", "label": "pgd3", "steps": 3}], "n_examples": 100},
}


class CreatesAFile:
    """Unpickling this calls ``open(path, "w")``: a stand-in for any code a crafted file could run."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def suite_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("suite") / "safe.yaml"
    path.write_text(yaml.safe_dump(SUITE, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def run_id():
    (run,) = expand(suite_from_dict(SUITE))[1]
    return run.run_id


def run_suite(suite_file: Path, results: Path):
    return invoke_cli("run", suite_file, "--results-dir", results, "--quiet")


def outcome(results: Path, run_id: str) -> tuple[dict, dict]:
    directory = results / "runs" / run_id
    metrics = {k: v for k, v in json.loads((directory / "metrics.json").read_text()).items() if k not in TIMING}
    return metrics, load_file(directory / "model.safetensors")


@pytest.fixture(scope="module")
def clean(suite_file, run_id, tmp_path_factory):
    results = tmp_path_factory.mktemp("clean") / "results"
    result = run_suite(suite_file, results)
    assert result.exit_code == 0, result.output
    return outcome(results, run_id)


def a_real_checkpoint(tmp_path: Path) -> bytes:
    """The bytes of a genuine one-epoch checkpoint of the suite's run (what a killed run leaves)."""
    from rkbench.data import load_dataset
    from rkbench.methods import build_method
    from rkbench.models import build_model
    from rkbench.suite import TrainingConfig
    from rkbench.threat import ThreatModel
    from rkbench.train import Trainer

    data = load_dataset("digits")
    work = tmp_path / "work"
    work.mkdir()
    Trainer(TrainingConfig(epochs=1, batch_size=128), torch.device("cpu"), work).fit(
        build_model("cnn_tiny", 10, data.input_shape), build_method("natural", {}, ThreatModel(eps=0.1)), data)
    return (work / "checkpoint.pt").read_bytes()


@pytest.mark.parametrize("kind", ["code", "truncated"])
def test_a_crafted_or_truncated_checkpoint_is_never_unpickled_and_the_run_starts_over(
        kind, suite_file, run_id, clean, tmp_path):
    results = tmp_path / "results"
    directory = results / "runs" / run_id
    directory.mkdir(parents=True)
    marker = tmp_path / "code_ran"
    checkpoint = directory / "checkpoint.pt"
    if kind == "code":
        torch.save({"epoch": 1, "model": CreatesAFile(marker), "losses": [0.0]}, checkpoint)
        assert not marker.exists()
    else:
        whole = a_real_checkpoint(tmp_path)
        checkpoint.write_bytes(whole[:len(whole) // 2])
    bystander = directory / "notes.txt"  # something else in the directory: left as it is
    bystander.write_text("mine")

    result = run_suite(suite_file, results)

    assert not marker.exists(), "unpickling the checkpoint ran code"
    assert result.exit_code == 0, result.output
    log = (directory / "log.txt").read_text()
    warnings = [line for line in log.splitlines() if "ignored checkpoint" in line]
    assert len(warnings) == 1 and str(checkpoint) in warnings[0] and "from epoch 0" in warnings[0]
    assert "resumed from epoch" not in log
    assert bystander.read_text() == "mine"
    metrics, weights = outcome(results, run_id)
    clean_metrics, clean_weights = clean
    assert metrics["status"] == "finished"
    assert metrics == clean_metrics  # trained from scratch: the numbers of a clean run
    assert all(torch.equal(weights[k], clean_weights[k]) for k in clean_weights)
    assert not checkpoint.exists()  # replaced while training, removed when the run finished


def test_a_checkpoint_of_another_shape_leaves_no_half_loaded_state(tmp_path):
    """A checkpoint that unpickles safely but does not fit (another architecture) is also ignored,
    and nothing of it stays in the model: the run equals one that never saw it."""
    from rkbench.data import load_dataset
    from rkbench.methods import build_method
    from rkbench.models import build_model
    from rkbench.suite import TrainingConfig
    from rkbench.threat import ThreatModel
    from rkbench.train import Trainer

    data = load_dataset("digits")
    config = TrainingConfig(epochs=1, batch_size=256)

    def train(work_dir):
        torch.manual_seed(0)
        model = build_model("cnn_tiny", 10, data.input_shape)
        Trainer(config, torch.device("cpu"), work_dir).fit(model, build_method("natural", {}, ThreatModel(eps=0.1)),
                                                           data)
        return model.state_dict()

    reference = train(None)
    state = {k: torch.full_like(v, 7.0) if v.is_floating_point() else v for k, v in reference.items()}
    state["extra.weight"] = torch.zeros(1)  # a strict load copies the matching tensors, then raises
    work = tmp_path / "run"
    work.mkdir()
    torch.save({"epoch": 1, "model": state, "losses": [1.0]}, work / "checkpoint.pt")
    lines = []
    torch.manual_seed(0)
    model = build_model("cnn_tiny", 10, data.input_shape)
    Trainer(config, torch.device("cpu"), work, log=lines.append).fit(
        model, build_method("natural", {}, ThreatModel(eps=0.1)), data)
    assert any("ignored checkpoint" in line for line in lines), lines
    assert all(torch.equal(model.state_dict()[k], reference[k]) for k in reference)
