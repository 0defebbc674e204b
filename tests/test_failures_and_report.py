"""A run that diverges or raises is recorded as failed (with its reason) and the suite goes on;
--retry-failed reruns it. Result files are validated when read back: a corrupt or foreign file is
reported on stderr and skipped, never a crash."""
import io
import json

import pandas as pd
import pytest
import torch.nn.functional as F
import yaml
from click.testing import CliRunner

from rkbench.cli import main
from rkbench.record import RunRecord
from rkbench.methods import METHODS
from rkbench.methods.base import Method
from rkbench.registry import Entry

from conftest import records

BROKEN = {"raise": True}


class NanLoss(Method):
    """Diverges at once."""

    def loss(self, student, batch):
        return student(batch.x).sum() * float("nan")


class Flaky(Method):
    """Raises while BROKEN['raise'], else trains like natural."""

    def loss(self, student, batch):
        if BROKEN["raise"]:
            raise RuntimeError("disk on fire")
        return F.cross_entropy(student(batch.x), batch.y)


@pytest.fixture
def broken_methods(monkeypatch):
    monkeypatch.setitem(METHODS._entries, "nan_loss", Entry("nan_loss", NanLoss, "test: diverges"))
    monkeypatch.setitem(METHODS._entries, "flaky", Entry("flaky", Flaky, "test: raises"))
    monkeypatch.setitem(BROKEN, "raise", True)


def suite_file(tmp_path):
    suite = {"name": "failing", "dataset": {"name": "digits"}, "threat": {"eps": 0.1, "steps": 2},
             "students": ["cnn_tiny"], "methods": {"natural": {}, "nan_loss": {}, "flaky": {}},
             "training": {"epochs": 1, "batch_size": 256},
             "evaluation": {"attacks": [{"name": "pgd", "label": "pgd2", "steps": 2}], "n_examples": 50}}
    path = tmp_path / "failing.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


def run(path, results, *extra):
    return CliRunner().invoke(main, ["run", str(path), "--results-dir", str(results), "--quiet", *extra])


def by_method(results) -> dict:
    return {record.method: record.model_dump() for record in records(results).values()}


def test_diverging_and_raising_runs_are_failed_with_their_reason_and_retried(broken_methods, tmp_path):
    path, results = suite_file(tmp_path), tmp_path / "results"
    result = run(path, results)
    assert result.exit_code == 1 and "2 run(s) failed" in result.stderr
    metrics = by_method(results)
    assert metrics["natural"]["status"] == "finished"  # the suite went on
    assert metrics["nan_loss"]["status"] == "failed"
    assert metrics["nan_loss"]["error"].startswith("TrainingDiverged: loss became nan at epoch 1")
    assert metrics["flaky"]["status"] == "failed" and metrics["flaky"]["error"] == "RuntimeError: disk on fire"
    board = pd.read_csv(results / "leaderboard.csv").set_index("method")
    assert board.loc["flaky", "status"] == "failed: RuntimeError: disk on fire"
    assert board.loc["nan_loss", "status"].startswith("failed: TrainingDiverged")
    assert any("disk on fire" in p.read_text() for p in (results / "runs").glob("*/log.txt"))  # the traceback

    BROKEN["raise"] = False  # the cause is fixed; a plain rerun leaves failed runs alone
    assert run(path, results).exit_code == 1 and by_method(results)["flaky"]["status"] == "failed"

    result = run(path, results, "--retry-failed")
    metrics = by_method(results)
    assert metrics["flaky"]["status"] == "finished" and metrics["flaky"]["error"] is None
    assert metrics["nan_loss"]["status"] == "failed"  # still diverges: still failed, exit 1
    assert result.exit_code == 1 and "1 run(s) failed" in result.stderr


def write_metrics(results, run_id: str, text: str) -> None:
    (results / "runs" / run_id).mkdir(parents=True)
    (results / "runs" / run_id / "metrics.json").write_text(text)


def valid(run_id: str, **changes) -> str:
    record = RunRecord(run_id=run_id, status="finished", teacher="-", student="mlp", method="natural", seed=0,
                       n_examples=10, clean_accuracy=0.9, robust_accuracy={"pgd20": 0.5}, worst_case_accuracy=0.5,
                       train_seconds=1.0, parameters=100)
    return json.dumps({**record.model_dump(mode="json", exclude_none=True), **changes})


def test_report_skips_corrupt_and_foreign_result_files(tmp_path):
    results = tmp_path / "results"
    write_metrics(results, "good", valid("good"))
    write_metrics(results, "truncated", valid("truncated")[:40])
    write_metrics(results, "foreign", json.dumps({"loss": [1, 2, 3]}))
    write_metrics(results, "alist", json.dumps([1, 2]))
    write_metrics(results, "badtype", valid("badtype", clean_accuracy=1.7))
    write_metrics(results, "copied", valid("good"))  # another run's file under the wrong directory
    write_metrics(results, "binary", "\x00\x01\x02")
    (results / "runs" / "inprogress").mkdir()  # no metrics yet: silently nothing
    result = CliRunner().invoke(main, ["report", str(results), "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert list(pd.read_csv(io.StringIO(result.stdout))["run_id"]) == ["good"]
    for fmt in ("md", "json"):  # every format survives them (warned once per process and file)
        assert CliRunner().invoke(main, ["report", str(results), "--format", fmt]).exit_code == 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 6 and all(line.startswith("warning: skipped ") for line in lines)
    problems = dict(line.removeprefix("warning: skipped ").split("/metrics.json: ") for line in lines)
    assert "not JSON" in problems[str(results / "runs" / "truncated")]
    assert "run_id" in problems[str(results / "runs" / "foreign")]
    assert "clean_accuracy" in problems[str(results / "runs" / "badtype")]
    assert "does not match its directory" in problems[str(results / "runs" / "copied")]
