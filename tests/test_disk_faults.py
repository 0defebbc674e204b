"""Disk faults (issue 22): a results directory that cannot be written is one line before any
training; a write that fails mid-run (a full disk: ``write_record`` raising ENOSPC) marks that run
failed with one line, leaves no half-written metrics.json, and a rerun completes it."""
from __future__ import annotations

import errno
import json
import os

import pytest
from conftest import invoke_cli
import yaml

from rkbench import runner as runner_module
from rkbench.suite import expand, suite_from_dict

SUITE = {
    "name": "disk",
    "dataset": {"name": "digits"},
    "threat": {"norm": "linf", "eps": 0.1, "step_size": 0.05, "steps": 1},
    "students": [{"name": "mlp", "model": "mlp", "hidden": 16}],
    "methods": {"natural": {}, "at": {"attack_steps": 1}},
    "training": {"epochs": 2, "batch_size": 256, "optimizer": {"lr": 0.05}, "seeds": [0], "threads": 1},
    "evaluation": {"attacks": [{"name": "pgd", "label": "pgd1", "steps": 1}], "n_examples": 40},
    "executor": {"workers": 1},
}


@pytest.fixture
def suite_file(tmp_path):
    path = tmp_path / "disk.yaml"
    path.write_text(yaml.safe_dump(SUITE, sort_keys=False))
    return path


def run(suite_file, results):
    return invoke_cli("run", suite_file, "--results-dir", results, "--quiet")


def test_an_unwritable_results_directory_is_one_line_before_any_training(suite_file, tmp_path, monkeypatch):
    trained = []
    monkeypatch.setattr(runner_module.Trainer, "fit_many", lambda *args, **kwargs: trained.append(1))
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    results = blocker / "results"  # cannot be created, whoever runs the test (root included)
    result = run(suite_file, results)
    assert result.exit_code == 2 and not trained, result.output
    assert result.output.strip().splitlines() == [
        f"error: results directory {results} is not writable (Not a directory); free it or choose another "
        f"with --results-dir"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory")
def test_a_read_only_results_directory_is_one_line(suite_file, tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    results.chmod(0o500)
    try:
        result = run(suite_file, results)
    finally:
        results.chmod(0o700)
    assert result.exit_code == 2 and result.output.startswith("error: results directory"), result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_full_disk_mid_run_fails_that_run_in_one_line_and_a_rerun_completes_it(suite_file, tmp_path, monkeypatch):
    runs = {run.method.label: run.run_id for run in expand(suite_from_dict(SUITE))[1]}
    real = runner_module.write_record
    written = []

    def full_disk(directory, record):
        if directory.name == runs["at"]:  # every write of this run's record fails, as on a full disk
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written.append(directory.name)
        return real(directory, record)

    monkeypatch.setattr(runner_module, "write_record", full_disk)
    results = tmp_path / "results"
    result = run(suite_file, results)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    failed = [line for line in result.output.splitlines() if line.startswith(f"run {runs['at']} failed")]
    assert len(failed) == 1 and "No space left on device" in failed[0], result.output
    at_dir = results / "runs" / runs["at"]
    assert not (at_dir / "metrics.json").exists() and not list(at_dir.glob(".metrics.json.*"))  # nothing half-written
    assert json.loads((results / "runs" / runs["natural"] / "metrics.json").read_text())["status"] == "finished"

    monkeypatch.setattr(runner_module, "write_record", real)  # space again
    natural = (results / "runs" / runs["natural"] / "metrics.json").read_bytes()
    rerun = run(suite_file, results)
    assert rerun.exit_code == 0, rerun.output
    assert json.loads((at_dir / "metrics.json").read_text())["status"] == "finished"
    assert "resumed from epoch 2/2" in (at_dir / "log.txt").read_text()  # its training was not lost
    assert (results / "runs" / runs["natural"] / "metrics.json").read_bytes() == natural  # not redone
