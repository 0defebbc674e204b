"""Where the runs of a suite execute: in this process, in parallel worker processes, or as Slurm
jobs through submitit. One registry; every executor does the same three things:

1. teachers first: each teacher a run needs is trained (or loaded) and evaluated once, cached
   under ``results/<suite>/teachers/``, before any run that depends on it starts;
2. each pending run goes to ``SuiteRunner.run_one`` in some process (a run directory is written by
   exactly one process; a finished run is skipped, an unfinished one resumes from its checkpoint);
3. the leaderboard is rebuilt from the run files, never from in-memory results.

Options live in the suite's ``executor:`` section (or on the command line: ``--executor``,
``--workers``, ``--partition``, ``--gpus-per-job``, ``--timeout-min``, or ``--set executor.KEY=VALUE``)::

    executor:
      name: slurm             # local (default) | slurm
      partition: gpu
      gpus_per_job: 1
      timeout_min: 240
      array_parallelism: 16   # at most this many array tasks at once
      runs_per_job: 1         # several short runs may share one job

The runner never imports this module (``api.run_planned`` hands a planned ``SuiteRunner`` to an executor), and
its configuration, ``ExecutorConfig``, lives in ``suite.py``: no import cycle.
"""
from __future__ import annotations

import os
import shutil
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import RkbenchError
from .registry import Registry
from .suite import ExecutorConfig  # noqa: F401  (the suite's executor section; re-exported)

if TYPE_CHECKING:  # pragma: no cover
    from .runner import RunOutcome, SuiteOutcome, SuiteRunner
    from .suite import Suite


class Executor(ABC):
    """Runs a planned suite. ``run(runner)`` returns the suite's outcome."""

    def __init__(self, config: ExecutorConfig):
        self.config = config

    @abstractmethod
    def run(self, runner: "SuiteRunner") -> "SuiteOutcome":
        """Teachers first, then the pending runs; returns the outcome of every run."""


EXECUTORS: Registry[type[Executor]] = Registry("executor", base=Executor)


def build_executor(config: ExecutorConfig) -> Executor:
    return EXECUTORS.get(config.name)(config)


# ----------------------------------------------------------------------------------------------
# what a worker process or a job runs


def execute_runs(suite: "Suite", results_dir: str, run_ids: list[str], retry_failed: bool = False,
                 threads: int | None = None) -> list[tuple[str, str, str | None]]:
    """Run ``run_ids`` of ``suite`` in this process with ``SuiteRunner.run_one``; returns
    (run_id, status, error) per run. The entry point of worker processes and Slurm jobs."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    runner = _runner(suite, results_dir, retry_failed)
    by_id = {run.run_id: run for run in runner.runs}
    unknown = [run_id for run_id in run_ids if run_id not in by_id]
    if unknown:
        raise RkbenchError(f"run {unknown[0]} is not in suite {suite.name!r} as planned here "
                           f"(did the suite or a teacher file change after submission?)")
    results = []
    for run_id in run_ids:
        outcome = runner.run_one(by_id[run_id])
        results.append((run_id, outcome.status, outcome.error))
    return results


def prepare_teachers(suite: "Suite", results_dir: str, teacher_ids: list[str], threads: int | None = None) -> list[str]:
    """Train/load and evaluate the given teachers once (a Slurm job before the runs' array)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    runner = _runner(suite, results_dir, False)
    plans = {plan.teacher_id: plan for plan in runner.teacher_plans}
    for teacher_id in teacher_ids:
        runner.teacher(plans[teacher_id])
    return teacher_ids


_RUNNERS: dict[tuple, "SuiteRunner"] = {}


def _runner(suite: "Suite", results_dir: str, retry_failed: bool) -> "SuiteRunner":
    """One SuiteRunner per worker process and suite: the dataset and teachers load once per worker."""
    from .runner import SuiteRunner

    key = (suite.model_dump_json(), str(results_dir), retry_failed)
    if key not in _RUNNERS:
        _RUNNERS.clear()
        _RUNNERS[key] = SuiteRunner(suite, results_dir, retry_failed=retry_failed)
    return _RUNNERS[key]


def _worker_init(threads: int) -> None:
    import torch

    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


def _collect(runner: "SuiteRunner", results: list[tuple[str, str, str | None]], outcome: "SuiteOutcome") -> None:
    from .runner import RunOutcome

    by_id = {run.run_id: run for run in runner.runs}
    for run_id, status, error in results:
        outcome.outcomes.append(RunOutcome(by_id[run_id], status, error))


def pending_runs(runner: "SuiteRunner", outcome: "SuiteOutcome") -> list:
    """Runs with work left; the others (finished, or failed without --retry-failed) go straight
    into the outcome."""
    pending = []
    for run in runner.runs:
        skipped = runner.skip(run)
        if skipped is None:
            pending.append(run)
        else:
            outcome.outcomes.append(skipped)
    return pending


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[-1] if text else ''}".rstrip(": ")


# ----------------------------------------------------------------------------------------------
# executors


@EXECUTORS.register("local", description="this machine: sequential, or --workers N parallel processes",
                    source="concurrent.futures")
class LocalExecutor(Executor):
    def run(self, runner):
        from .report import write_leaderboard
        from .runner import SuiteOutcome

        runner.prepare_teachers()  # teachers first, in this process
        outcome = SuiteOutcome(runner.results_dir)
        if self.config.workers <= 1:
            outcome.outcomes.extend(runner.run_many(runner.runs))
        else:
            self._parallel(runner, outcome)
        write_leaderboard(runner.results_dir)
        return outcome

    def _parallel(self, runner, outcome) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed
        from concurrent.futures.process import BrokenProcessPool

        from .report import write_leaderboard
        from .runner import RunOutcome

        pending = pending_runs(runner, outcome)
        if not pending:
            return
        threads = self.config.threads(runner.suite.training.threads)
        workers = min(self.config.workers, len(pending))
        runner.reporter.message(f"{len(pending)} runs on {workers} worker processes ({threads} threads each)")
        context = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch thread pools
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init, initargs=(threads,)) as pool:
            futures = {pool.submit(execute_runs, runner.suite, str(runner.results_dir), [run.run_id],
                                   runner.retry_failed, threads): run for run in pending}
            for future in as_completed(futures):
                run = futures[future]
                try:
                    _collect(runner, future.result(), outcome)
                except BrokenProcessPool as exc:  # a worker died (killed, out of memory): resumable
                    outcome.outcomes.append(RunOutcome(run, "failed", f"worker process died: {_first_line(exc)}"))
                except Exception as exc:
                    outcome.outcomes.append(RunOutcome(run, "failed", _first_line(exc)))
                last = outcome.outcomes[-1]
                runner.reporter.message(f"{last.status}: {run.student.name} <- {run.method.label} ({run.run_id})"
                                        + (f": {last.error}" if last.error else ""))
                write_leaderboard(runner.results_dir)


@EXECUTORS.register("slurm", description="Slurm job arrays through submitit (partition, timeout_min, "
                    "gpus_per_job, array_parallelism, runs_per_job)", source="submitit")
class SlurmExecutor(Executor):
    def executor(self, runner):
        try:
            import submitit
        except ImportError:
            raise RkbenchError("--executor slurm needs submitit: pip install submitit") from None
        config = self.config
        if config.cluster == "slurm" and shutil.which("sbatch") is None:
            raise RkbenchError("--executor slurm: no sbatch on this machine (run from a Slurm login node; "
                               "executor.cluster=local runs the same jobs as local processes)")
        folder = Path(config.folder).expanduser() if config.folder else runner.results_dir / "slurm"
        executor = submitit.AutoExecutor(folder=folder / "%j", cluster=config.cluster)
        parameters = {"timeout_min": config.timeout_min, "gpus_per_node": config.gpus_per_job,
                      "cpus_per_task": config.cpus_per_job, "name": f"rkbench-{runner.suite.name}",
                      "slurm_array_parallelism": config.array_parallelism}
        if config.mem_gb:
            parameters["mem_gb"] = config.mem_gb
        if config.partition:
            parameters["slurm_partition"] = config.partition
        if config.slurm_additional:
            parameters["slurm_additional_parameters"] = dict(config.slurm_additional)
        if config.setup:
            parameters["slurm_setup" if config.cluster == "slurm" else "local_setup"] = list(config.setup)
        executor.update_parameters(**parameters)
        return executor

    def run(self, runner):
        from .report import write_leaderboard
        from .runner import RunOutcome, SuiteOutcome

        config = self.config
        executor = self.executor(runner)
        threads = runner.suite.training.threads or config.cpus_per_job
        results_dir = str(runner.results_dir.resolve())
        outcome = SuiteOutcome(runner.results_dir)

        # 1. teachers first: one job per teacher that is not cached yet; the runs wait for them
        teachers = [plan for plan in runner.needed_teachers() if not runner.teacher_ready(plan)]
        if teachers:
            jobs = [executor.submit(prepare_teachers, runner.suite, results_dir, [plan.teacher_id], threads)
                    for plan in teachers]
            runner.reporter.message(f"teachers: {len(jobs)} job(s) {', '.join(job.job_id for job in jobs)}")
            for plan, job in zip(teachers, jobs):
                try:
                    job.result()
                except Exception as exc:
                    raise RkbenchError(f"teacher {plan.spec.name} failed in job {job.job_id}: {_first_line(exc)} "
                                       f"(log: {job.paths.stderr})") from None

        # 2. the runs, as one job array (runs_per_job runs per task)
        pending = pending_runs(runner, outcome)
        chunks = [[run.run_id for run in pending[i:i + config.runs_per_job]]
                  for i in range(0, len(pending), config.runs_per_job)]
        if chunks:
            jobs = executor.map_array(execute_runs, [runner.suite] * len(chunks), [results_dir] * len(chunks),
                                      chunks, [runner.retry_failed] * len(chunks), [threads] * len(chunks))
            runner.reporter.message(f"{len(pending)} runs in {len(jobs)} job(s): "
                                    f"{jobs[0].job_id.split('_')[0]}{' (array)' if len(jobs) > 1 else ''}")
            if not config.wait:
                runner.reporter.message("not waiting (executor.wait=false): `rkbench report "
                                        f"{runner.results_dir}` rebuilds the leaderboard when they finish")
                by_id = {run.run_id: run for run in pending}
                outcome.outcomes.extend(RunOutcome(by_id[i], "submitted") for chunk in chunks for i in chunk)
                return outcome
            by_id = {run.run_id: run for run in pending}
            for chunk, job in zip(chunks, jobs):
                try:
                    _collect(runner, job.result(), outcome)
                except Exception as exc:  # the job died (timeout, preemption, node failure): resumable
                    reason = f"job {job.job_id} failed: {_first_line(exc)} (log: {job.paths.stderr})"
                    outcome.outcomes.extend(RunOutcome(by_id[i], "failed", reason) for i in chunk)
                write_leaderboard(runner.results_dir)
        write_leaderboard(runner.results_dir)
        return outcome
