"""The CUDA-only code paths, proven on the CPU with stand-ins (issue 23, docs/gpu.md): a device that
resolves where the runs train, Slurm jobs that request their GPU, one GPU per job, and the rest of
what a GPU user meets first. No test here needs a GPU: CUDA is patched in where it is asked for."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from rkbench import api
from rkbench.api import check_executor
from rkbench.cli import main
from rkbench.errors import ConfigError, RkbenchError
from rkbench.executors import SlurmExecutor
from rkbench.runner import SuiteRunner
from rkbench.suite import ExecutorConfig, load_suite, suite_from_dict

from conftest import tiny_suite_dict

ROOT = Path(__file__).resolve().parents[1]
PAPER_SUITES = [ROOT / "suites" / "cifar10.yaml", ROOT / "suites" / "cifar100.yaml"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def three_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def slurm_suite(device="cuda", seeds=(0,), **executor):
    return suite_from_dict(tiny_suite_dict(teachers=[], methods={"natural": {}}, students=["cnn_tiny"],
                                           training={"epochs": 1, "device": device, "seeds": list(seeds)},
                                           executor={"name": "slurm", "gpus_per_job": 1, **executor}))


# -- 1. device resolution --------------------------------------------------------------------------


def test_slurm_dry_run_of_the_paper_suite_on_cuda_plans_on_a_cpu_machine(no_gpu, tmp_path):
    result = CliRunner().invoke(main, ["run", str(PAPER_SUITES[0]), "--executor", "slurm", "--dry-run",
                                       "--set", "training.device=cuda", "--results-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "error" not in result.output


def test_the_device_is_resolved_in_the_process_that_trains(no_gpu, monkeypatch, tmp_path):
    runner = SuiteRunner(slurm_suite(), tmp_path)  # planning on a login node: no GPU, no error
    assert "Slurm jobs (1 GPU(s) per job" in api.where_runs(runner) and "cpu" not in api.where_runs(runner)
    with pytest.raises(RkbenchError, match="no CUDA device"):
        runner.device  # a job that finds no GPU says so, in the job
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the job's node
    job_runner = SuiteRunner(slurm_suite(), tmp_path)
    assert job_runner.device == torch.device("cuda")
    assert job_runner.evaluation.device == job_runner.teachers.device == torch.device("cuda")


def test_slurm_jobs_without_a_gpu_refuse_cuda_and_warn_once_for_auto():
    with pytest.raises(ConfigError, match="gpus_per_job is 0.*training.device: cpu"):
        check_executor(slurm_suite(gpus_per_job=0))
    lines = []
    check_executor(slurm_suite("auto", gpus_per_job=0), warn=lines.append)
    assert len(lines) == 1 and lines[0].startswith("warning: executor.gpus_per_job is 0")
    for fine in (slurm_suite(), slurm_suite(gpus_per_job=0, slurm_additional={"gres": "gpu:1"})):
        lines.clear()
        check_executor(fine, warn=lines.append)
        assert lines == []


def test_the_cli_prints_the_warning_line_for_slurm_jobs_without_gpus(tmp_path):
    result = CliRunner().invoke(main, ["validate", str(ROOT / "suites" / "digits.yaml"),
                                       "--set", "executor.name=slurm"])
    assert result.exit_code == 0
    assert sum(line.startswith("warning: executor.gpus_per_job is 0") for line in result.output.splitlines()) == 1


@pytest.mark.parametrize("path", PAPER_SUITES, ids=lambda p: p.name)
def test_the_paper_suites_request_a_gpu_per_slurm_job(path):
    suite = load_suite(path, ["executor.name=slurm"])
    assert suite.executor.gpus_per_job >= 1 and suite.executor.cpus_per_job >= 4
    check_executor(suite, warn=pytest.fail)  # no warning
    assert load_suite(path).executor.name == "local"  # `rkbench run` without --executor still runs here


class _FakeSubmitit:
    """submitit's AutoExecutor as far as the Slurm executor uses it: what each job was given."""

    def __init__(self):
        self.parameters, self.given = {}, []

    def update_parameters(self, **parameters):
        self.parameters.update(parameters)

    def submit(self, function, *args):
        self.given.append(self.parameters.get("local_visible_gpus"))
        return _FakeJob(str(len(self.given)))

    def map_array(self, function, *columns):
        return [self.submit(function, *args) for args in zip(*columns)]


class _FakeJob:
    def __init__(self, job_id):
        self.job_id = job_id


def test_submitit_local_jobs_get_the_gpus_in_turn_not_all_gpu_0(three_gpus, monkeypatch, tmp_path):
    suite = slurm_suite(seeds=(0, 1, 2, 3), cluster="local", wait=False)
    fake = _FakeSubmitit()
    monkeypatch.setattr(SlurmExecutor, "executor", lambda self, runner: fake)
    outcome = SlurmExecutor(suite.executor).run(SuiteRunner(suite, tmp_path))
    assert len(outcome.outcomes) == 4
    assert fake.given == [(0,), (1,), (2,), (0,)]
    two = SlurmExecutor(ExecutorConfig(name="slurm", cluster="local", gpus_per_job=2))
    fake = _FakeSubmitit()
    two.submit(fake, print, [(1,), (2,)])
    assert fake.given == [(0, 1), (2, 0)]
