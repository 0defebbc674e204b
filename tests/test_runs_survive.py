"""Runs that survive: SIGKILL in the middle of training, then a rerun that resumes and ends with the
same numbers as an uninterrupted run; the same suite on parallel worker processes and through
submitit (its local executor, so CI needs no cluster) gives the same leaderboard."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
import yaml
from click.testing import CliRunner

from rkbench.cli import main
from rkbench.suite import expand, suite_from_dict

ROOT = Path(__file__).resolve().parents[1]

SUITE = {
    "name": "survive",
    "dataset": {"name": "digits"},
    "threat": {"norm": "linf", "eps": 0.1, "step_size": 0.025, "steps": 2},
    "teachers": [{"name": "t", "source": "train", "model": "cnn_tiny", "method": "natural", "training": {"epochs": 2}}],
    "students": ["cnn_tiny"],
    # runs in this order: natural, kd (teacher t), at (the slow one, killed in the middle)
    "methods": {"natural": {}, "kd": {"t": 4}, "at": {"attack_steps": 2, "training": {"epochs": 6}}},
    "training": {"epochs": 2, "batch_size": 128, "optimizer": {"lr": 0.05}, "seeds": [0], "threads": 1},
    "evaluation": {"attacks": [{"name": "pgd", "label": "pgd3", "steps": 3}], "n_examples": 100},
}
TIMING = {"train_seconds", "attack_seconds", "versions"}  # allowed to differ between two executions


@pytest.fixture(scope="module")
def suite_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("suite") / "survive.yaml"
    path.write_text(yaml.safe_dump(SUITE, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def reference(suite_file, tmp_path_factory):
    """The suite run once, uninterrupted, sequentially in this process."""
    results = tmp_path_factory.mktemp("reference") / "results"
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        result = CliRunner().invoke(main, ["run", str(suite_file), "--results-dir", str(results), "--quiet"])
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    assert result.exit_code == 0, result.output
    return results


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "rkbench.cli", *map(str, args)]


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def metrics_of(results: Path) -> dict:
    out = {}
    for path in sorted((results / "runs").glob("*/metrics.json")):
        data = json.loads(path.read_text())
        out[path.parent.name] = {k: v for k, v in data.items() if k not in TIMING}
    return out


def board(results: Path) -> pd.DataFrame:
    frame = pd.read_csv(results / "leaderboard.csv")
    return frame.drop(columns=[c for c in frame.columns if c.startswith("train_s")]).sort_values("run_id") \
        .reset_index(drop=True)


def job_dirs(results: Path) -> list[Path]:
    return [p for p in (results / "slurm").iterdir() if p.is_dir() and p.name[0].isdigit()]


def test_sigkill_mid_training_then_rerun_resumes_and_matches(suite_file, reference, tmp_path):
    runs = expand(suite_from_dict(yaml.safe_load(suite_file.read_text())))[1]
    assert [r.method.label for r in runs] == ["natural", "kd", "at"]
    slow = tmp_path / "results" / "runs" / runs[2].run_id
    process = subprocess.Popen(cli("run", suite_file, "--results-dir", tmp_path / "results", "--quiet"),
                               env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (slow / "checkpoint.pt").is_file():  # the slow run has finished an epoch, not all 6
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "the slow run never wrote a checkpoint"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()
    assert not (slow / "metrics.json").exists(), "the kill came too late: the run had finished"
    finished = {p: p.stat().st_mtime_ns for p in (tmp_path / "results" / "runs").glob("*/model.safetensors")}
    assert len(finished) == 2  # natural and kd were done before the kill

    rerun = subprocess.run(cli("run", suite_file, "--results-dir", tmp_path / "results", "--quiet"),
                           env=env(), capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stderr
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # finished runs were not redone
    assert "resumed from epoch" in (slow / "log.txt").read_text()
    assert not (slow / "checkpoint.pt").exists() and not list(slow.glob(".*.tmp"))
    assert metrics_of(tmp_path / "results") == metrics_of(reference)  # as if never interrupted
    for run in runs:  # and bit for bit the same weights
        resumed = load_file(tmp_path / "results" / "runs" / run.run_id / "model.safetensors")
        uninterrupted = load_file(reference / "runs" / run.run_id / "model.safetensors")
        assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted), run.method.label


def test_parallel_workers_give_the_local_leaderboard(suite_file, reference, tmp_path):
    result = CliRunner().invoke(main, ["run", str(suite_file), "--results-dir", str(tmp_path / "r"), "--quiet",
                                       "--executor", "local", "--workers", "2"])
    assert result.exit_code == 0, result.output
    pd.testing.assert_frame_equal(board(tmp_path / "r"), board(reference))
    assert len(list((tmp_path / "r" / "teachers").iterdir())) == 1  # the teacher trained once, in the parent


def test_submitit_local_executor_gives_the_local_leaderboard(suite_file, reference, tmp_path):
    """--executor slurm through submitit's own local executor: a teacher job, then a job array."""
    results = tmp_path / "r"
    result = CliRunner().invoke(main, ["run", str(suite_file), "--results-dir", str(results), "--quiet",
                                       "--executor", "slurm", "--set", "executor.cluster=local",
                                       "--set", "executor.runs_per_job=2", "--timeout-min", "10"])
    assert result.exit_code == 0, result.output
    pd.testing.assert_frame_equal(board(results), board(reference))
    assert metrics_of(results) == metrics_of(reference)
    assert len(job_dirs(results)) == 3  # one teacher job, then two array tasks (3 runs, 2 per job)

    again = CliRunner().invoke(main, ["run", str(suite_file), "--results-dir", str(results), "--quiet",
                                      "--executor", "slurm", "--set", "executor.cluster=local"])
    assert again.exit_code == 0 and len(job_dirs(results)) == 3  # everything cached: no new job


def test_slurm_without_a_cluster_is_one_line(suite_file, tmp_path, monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    result = CliRunner().invoke(main, ["run", str(suite_file), "--results-dir", str(tmp_path / "r"), "--quiet",
                                       "--executor", "slurm"])
    assert result.exit_code == 2 and "no sbatch" in result.stderr and result.stderr.count("\n") == 1


def test_unknown_executor_gets_did_you_mean(suite_file, tmp_path):
    result = CliRunner().invoke(main, ["run", str(suite_file), "--results-dir", str(tmp_path), "--executor", "slurn"])
    assert result.exit_code == 2 and "did you mean 'slurm'" in result.stderr
