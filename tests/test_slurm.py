"""Against a live single-node Slurm cluster (scripts/slurm-cluster.sh, started here when it is not
running and stopped again afterwards): a digits suite whose runs wait for their teacher's job,
a job warned of its time limit that requeues itself, a job requeued from outside (`scontrol
requeue`, what preemption does) and a run that fails for a reason of its own.

The time limit is triggered, not raced: the job runs under a 1-minute limit (so submitit counts any
warning as a time-out) and, once it has trained a few epochs, the test sends it the warning signal
Slurm sends before a limit (`scancel --signal=USR2`, what submitit's own `_interrupt(timeout=True)`
does). The jobs are short (24 epochs), so no test waits for a job to outrun a real limit, and
whether the job is also warned by Slurm on a slow machine changes nothing the tests check. Slurm's own warning at a real limit is exercised by
`test_a_real_time_limit_warns_and_requeues` (opt-in, RKBENCH_SLOW_SLURM=1; `.ci/run` runs it).
The walk-away suite is submitted first, so its jobs run while the next test waits for its own."""
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

# one run of a few seconds of training (0.2-0.5 s an epoch on a 2-core machine); its jobs are
# interrupted on purpose once they have trained EPOCHS_BEFORE_SIGNAL epochs
LONG = {
    "name": "requeue",
    "dataset": {"name": "digits"},
    "threat": {"norm": "linf", "eps": 0.1, "step_size": 0.025, "steps": 3},
    "students": ["cnn_tiny"],
    "methods": {"at": {"attack_steps": 10}},
    "training": {"epochs": 24, "batch_size": 128, "optimizer": {"lr": 0.05}, "seeds": [0], "threads": 1},
    "evaluation": {"attacks": [{"name": "pgd", "label": "pgd5", "steps": 5}], "n_examples": 100},
}
EPOCHS_BEFORE_SIGNAL = 3
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


def epochs_trained(results: Path) -> int:
    return len(re.findall(r"^epoch ", log_of(results), re.M))


def interrupt_after_a_few_epochs(commands: dict) -> None:
    """commands: results directory -> a command; each is run with the directory's one job id as soon as
    that job has trained a few epochs (and not all): the jobs are watched together, so one that
    starts first is not left to finish while the test waits for the other."""
    jobs = {results: next(iter(jobs_of(results).values()))["job"] for results in commands}
    deadline = time.time() + 300
    while commands:
        for results in [r for r in commands if epochs_trained(r) >= EPOCHS_BEFORE_SIGNAL]:
            assert epochs_trained(results) < LONG["training"]["epochs"], f"{results.name}: finished before it " \
                                                                         f"could be interrupted"
            # not check=True: on a very slow machine Slurm's own warning may have requeued the job
            # already (a pending job takes no signal); the tests then see that requeue instead
            subprocess.run([*commands.pop(results), jobs[results]])
        assert time.time() < deadline, f"jobs {[jobs[r] for r in commands]} never started training"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def long_jobs(cluster, tmp_path_factory):
    """Submitted together (executor.wait=false): the run with a 1-minute limit, warned of it by the
    test, and the same run with room to spare, requeued from outside; then the reference, trained
    here meanwhile."""
    base = tmp_path_factory.mktemp("slurm")
    suite = write_suite(base, LONG)
    limited, preempted, reference = base / "limited", base / "preempted", base / "reference"
    run_cli(suite, "--results-dir", limited, *SLURM, "--timeout-min", 1, "--set", "executor.signal_delay_s=5",
            "--set", "executor.wait=false")
    run_cli(suite, "--results-dir", preempted, *SLURM, "--timeout-min", 10, "--set", "executor.wait=false")
    # limited: the warning Slurm sends signal_delay_s before the time limit (sbatch --signal=USR2@5), sent
    # now: submitit's handler checkpoints and requeues the job, which resumes from its last epoch;
    # preempted: requeued from outside, as a preempting partition does
    interrupt_after_a_few_epochs({limited: ["scancel", "--signal=USR2"], preempted: ["scontrol", "requeue"]})
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        run_cli(suite, "--results-dir", reference, "--quiet")
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    return limited, preempted, reference


@pytest.fixture(scope="module")
def walked_away(cluster, tmp_path_factory):
    """A suite submitted with executor.wait=false, first thing in the file, so that its jobs run while
    the next test trains locally and waits for its own: (results, seconds the submission took,
    `rkbench status` right after it)."""
    base = tmp_path_factory.mktemp("away")
    suite = write_suite(base, {**SHORT, "name": "away"})
    results = base / "results"
    started = time.time()
    run_cli(suite, "--results-dir", results, *SLURM, "--set", "executor.wait=false")
    took = time.time() - started
    return results, took, CliRunner().invoke(main, ["status", str(results)])


def test_digits_subset_runs_wait_for_their_teacher_job_and_match_local(cluster, walked_away, tmp_path):
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


def test_submit_and_walk_away_then_status(walked_away):
    results, took, status = walked_away
    assert took < 30  # returned at once, nothing trained yet in this process
    assert status.exit_code == 0
    assert re.search(r"\d+ (pending|running)", status.output), status.output
    wait_for_metrics(results, 240)
    deadline = time.time() + 60
    while "3 finished" not in CliRunner().invoke(main, ["status", str(results)]).output:
        assert time.time() < deadline
        time.sleep(2)


def test_time_limit_requeues_and_finishes_like_an_uninterrupted_run(long_jobs):
    limited, _, reference = long_jobs
    wait_for_metrics(limited, 600)
    assert "resumed from epoch" in log_of(limited)  # it was warned of its limit and came back
    assert metrics_of(limited) == metrics_of(reference)
    assert same_weights(limited, reference)
    job_logs = "".join(p.read_text() for p in (limited / "slurm").glob("*/*_log.*"))
    assert "this job is timed-out" in job_logs  # submitit took the warning for the time limit's
    assert "Requeued job" in job_logs


def test_scontrol_requeue_resumes_and_finishes_like_an_uninterrupted_run(long_jobs):
    _, preempted, reference = long_jobs
    wait_for_metrics(preempted, 600)
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


@pytest.mark.skipif(os.environ.get("RKBENCH_SLOW_SLURM") != "1",
                    reason="a real 1-minute time limit takes 1-2 minutes: set RKBENCH_SLOW_SLURM=1 (.ci/run does)")
def test_a_real_time_limit_warns_and_requeues(cluster, tmp_path):
    """Nothing is sent by the test: Slurm itself warns the job before its 1-minute limit, and the job
    requeues and resumes. The run is far too long to finish (2000 epochs), so it is cancelled then."""
    suite = write_suite(tmp_path, {**LONG, "name": "limit", "training": {**LONG["training"], "epochs": 2000}})
    results = tmp_path / "results"
    run_cli(suite, "--results-dir", results, *SLURM, "--timeout-min", 1, "--set", "executor.signal_delay_s=5",
            "--set", "executor.wait=false")
    job = next(iter(jobs_of(results).values()))["job"]
    try:
        deadline = time.time() + 400
        while "resumed from epoch" not in log_of(results):
            assert time.time() < deadline, "the job was never warned of its limit and resumed"
            time.sleep(2)
        job_logs = "".join(p.read_text() for p in (results / "slurm").glob("*/*_log.*"))
        assert "this job is timed-out" in job_logs and "Requeued job" in job_logs
    finally:
        subprocess.run(["scancel", job])
