"""Against a live single-node Slurm cluster (scripts/slurm-cluster.sh, started here when it is not
running and stopped again afterwards): a digits suite whose runs wait for their teacher's job,
a job that outlives its 1-minute time limit by requeueing itself, a job requeued from outside
(`scontrol requeue`, what preemption does) and a run that fails for a reason of its own. The jobs
that take minutes are submitted together first and the uninterrupted reference trains here
meanwhile, so the file takes about as long as its slowest job (~3 minutes)."""
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
import yaml
from click.testing import CliRunner

from rkbench.cli import main

from conftest import records
from test_runs_survive import SUITE, metrics_of

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("one_thread")]

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "slurm-cluster.sh"

# one run of ~1-2 minutes of training on a 2-core machine: with a 1-minute limit it requeues itself
# at least once (Slurm warns it ~25-55 s after each start), several times on a busy machine
LONG = {
    "name": "requeue",
    "dataset": {"name": "digits"},
    "threat": {"norm": "linf", "eps": 0.1, "step_size": 0.025, "steps": 3},
    "students": ["cnn_tiny"],
    "methods": {"at": {"attack_steps": 10}},
    # 500 epochs: over 100 s of training even on a quiet machine (0.2-0.5 s an epoch here), so the
    # job with a 1-minute limit is always warned and requeued (80 epochs finished inside the limit)
    "training": {"epochs": 500, "batch_size": 128, "optimizer": {"lr": 0.05}, "seeds": [0], "threads": 1},
    "evaluation": {"attacks": [{"name": "pgd", "label": "pgd5", "steps": 5}], "n_examples": 100},
}
# a teacher and two runs, one of which distils from it (the suite of test_runs_survive, without AT)
SHORT = {**SUITE, "name": "graph", "methods": {"natural": {}, "kd": {"t": 4}}}
SLURM = ["--executor", "slurm", "--set", "executor.cpus_per_job=1", "--quiet"]


def cluster_command(action: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), action], capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def cluster():
    """The live cluster: started when it is not up (and stopped at the end), else a skip."""
    started = False
    if cluster_command("status").returncode != 0:
        result = cluster_command("start")
        if result.returncode != 0:
            reason = (result.stderr.strip().splitlines() or ["no reason given"])[-1]
            pytest.skip(f"no Slurm cluster: {reason}")
        started = True
    yield
    if started:
        cluster_command("stop")


def write_suite(directory: Path, suite: dict) -> Path:
    path = directory / f"{suite['name']}.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


def run_cli(*args):
    result = CliRunner().invoke(main, ["run", *map(str, args)])
    assert result.exit_code == 0, result.output + result.stderr
    return result


def jobs_of(results: Path) -> dict:
    return json.loads((results / "slurm" / "jobs.json").read_text())


def wait_for_metrics(results: Path, timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        found = list((results / "runs").glob("*/metrics.json"))
        if found and all(json.loads(path.read_text())["status"] for path in found):
            return
        time.sleep(2)
    subprocess.run(["squeue"])
    raise AssertionError(f"no results in {results} after {timeout_s} s")


def log_of(results: Path) -> str:
    return "".join(path.read_text() for path in (results / "runs").glob("*/log.txt"))


def same_weights(a: Path, b: Path) -> bool:
    first, second = (load_file(next(p.glob("runs/*/model.safetensors"))) for p in (a, b))
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


@pytest.fixture(scope="module")
def long_jobs(cluster, tmp_path_factory):
    """Submitted together (executor.wait=false): the run with a 1-minute limit, and the same run
    with room to spare, to be requeued from outside; then the reference, trained here meanwhile."""
    base = tmp_path_factory.mktemp("slurm")
    suite = write_suite(base, LONG)
    limited, preempted, reference = base / "limited", base / "preempted", base / "reference"
    run_cli(suite, "--results-dir", limited, *SLURM, "--timeout-min", 1, "--set", "executor.signal_delay_s=5",
            "--set", "executor.wait=false")
    run_cli(suite, "--results-dir", preempted, *SLURM, "--timeout-min", 10, "--set", "executor.wait=false")
    # requeue the second job once it has trained a few epochs (a preempting partition does the same)
    job = next(iter(jobs_of(preempted).values()))["job"]
    deadline = time.time() + 300
    while len(re.findall(r"^epoch ", log_of(preempted), re.M)) < 3:
        assert time.time() < deadline, "the job to requeue never started training"
        time.sleep(1)
    subprocess.run(["scontrol", "requeue", job], check=True)
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        run_cli(suite, "--results-dir", reference, "--quiet")
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    return limited, preempted, reference


def test_digits_subset_runs_wait_for_their_teacher_job_and_match_local(cluster, tmp_path):
    suite = write_suite(tmp_path, SHORT)
    local = tmp_path / "local"
    run_cli(suite, "--results-dir", local, "--quiet")
    results = tmp_path / "slurm"
    result = run_cli(suite, "--results-dir", results, *SLURM)
    assert metrics_of(results) == metrics_of(local)
    jobs = jobs_of(results)
    assert sorted(job["kind"] for job in jobs.values()) == ["run", "run", "teacher"]
    teacher_job = next(job["job"] for job in jobs.values() if job["kind"] == "teacher")
    assert f"after teacher job {teacher_job}" in result.output  # the kd run's array depended on it
    # quiet polling: at most one line about accounting (none on a cluster that has it)
    assert (result.output + result.stderr).count("sacct") <= 1
    status = CliRunner().invoke(main, ["status", str(results)])
    assert status.exit_code == 0 and "3 finished" in status.output
    for job in jobs.values():
        assert job["job"] in status.output


def test_submit_and_walk_away_then_status(cluster, tmp_path):
    suite = write_suite(tmp_path, {**SHORT, "name": "away"})
    results = tmp_path / "results"
    started = time.time()
    run_cli(suite, "--results-dir", results, *SLURM, "--set", "executor.wait=false")
    assert time.time() - started < 30  # returned at once, nothing trained yet in this process
    status = CliRunner().invoke(main, ["status", str(results)])
    assert status.exit_code == 0
    assert re.search(r"\d+ (pending|running)", status.output), status.output
    wait_for_metrics(results, 240)
    deadline = time.time() + 60
    while "3 finished" not in CliRunner().invoke(main, ["status", str(results)]).output:
        assert time.time() < deadline
        time.sleep(2)


def test_time_limit_requeues_and_finishes_like_an_uninterrupted_run(long_jobs):
    limited, _, reference = long_jobs
    wait_for_metrics(limited, 900)
    assert "resumed from epoch" in log_of(limited)  # it did hit its limit and came back
    assert metrics_of(limited) == metrics_of(reference)
    assert same_weights(limited, reference)
    job_logs = "".join(p.read_text() for p in (limited / "slurm").glob("*/*_log.*"))
    assert "Requeued job" in job_logs


def test_scontrol_requeue_resumes_and_finishes_like_an_uninterrupted_run(long_jobs):
    _, preempted, reference = long_jobs
    wait_for_metrics(preempted, 900)
    assert "resumed from epoch" in log_of(preempted)
    assert metrics_of(preempted) == metrics_of(reference)
    assert same_weights(preempted, reference)


def test_a_run_failing_for_its_own_reason_ends_failed_and_is_not_requeued(cluster, tmp_path):
    # fgsm_rs holds out more examples than digits has: an error of the run, not of time
    suite = write_suite(tmp_path, {**SHORT, "name": "broken", "teachers": [],
                                   "methods": {"fgsm_rs": {"early_stop": True, "early_stop_examples": 5000}}})
    results = tmp_path / "results"
    result = CliRunner().invoke(main, ["run", str(suite), "--results-dir", str(results), *SLURM])
    assert result.exit_code == 1
    (metrics,) = [record.model_dump() for record in records(results).values()]
    assert metrics["status"] == "failed" and "holds out 5000 examples" in metrics["error"]
    job_logs = "".join(p.read_text() for p in (results / "slurm").glob("*/*_log.*"))
    assert "Requeued" not in job_logs


def test_the_cluster_script_is_idempotent(cluster):
    assert cluster_command("start").returncode == 0  # already up: nothing started twice
    assert "already running" in cluster_command("start").stderr
    assert shutil.which("sbatch") and cluster_command("status").returncode == 0
    assert os.path.islink("/etc/slurm/slurm.conf") or os.path.isfile("/etc/slurm/slurm.conf")
