"""Where the runs of a suite execute: in this process, in parallel worker processes, or as Slurm
jobs through submitit. One registry; every executor does the same three things:

1. a graph of work, not phases: each teacher a run needs is trained (or loaded) and evaluated
   once, cached under ``results/<suite>/teachers/``; a run starts as soon as its teacher is ready
   (runs without a teacher at once), on a free worker or as a Slurm job depending (``afterok``)
   on its teacher's job;
2. each pending run goes to ``SuiteRunner.run_one`` in some process (a run directory is claimed by
   exactly one process through its lock file; a finished run is skipped, an unfinished one
   resumes from its checkpoint: a Slurm job that hits its time limit or is preempted requeues
   itself and goes on from the run's last epoch);
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
import signal
import time
from abc import ABC, abstractmethod
from concurrent.futures import ProcessPoolExecutor
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

    def check_submit(self) -> None:
        """Raise ``RkbenchError`` (one line) when this machine cannot start the executor's work."""


EXECUTORS: Registry[type[Executor]] = Registry("executor", base=Executor)


def build_executor(config: ExecutorConfig) -> Executor:
    return EXECUTORS.get(config.name)(config)


# ----------------------------------------------------------------------------------------------
# what a worker process or a job runs


def execute_runs(suite: "Suite", results_dir: str, run_ids: list[str], retry_failed: bool = False,
                 threads: int | None = None) -> list[tuple[str, str, str | None]]:
    """Run ``run_ids`` of ``suite`` in this process with ``SuiteRunner.run_one``; returns
    (run_id, status, error) per run. The entry point of worker processes and Slurm jobs."""
    from .device import cuda_determinism_env

    cuda_determinism_env()
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
    """Train/load and evaluate the given teachers once (a worker task, or a Slurm job that arrays of runs depend on)."""
    from .device import cuda_determinism_env

    cuda_determinism_env()
    import torch

    if threads:
        torch.set_num_threads(threads)
    runner = _runner(suite, results_dir, False)
    plans = {plan.teacher_id: plan for plan in runner.teacher_plans}
    for teacher_id in teacher_ids:
        runner.teachers.get(plans[teacher_id])
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


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries ([] without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [entry.strip() for entry in listed.split(",") if entry.strip()]
    return [str(index) for index in range(torch.cuda.device_count())]


def _worker_init(threads: int, gpus=None) -> None:
    """A worker process's first act: its GPU (one per worker, taken from the queue ``gpus``),
    before anything touches CUDA, and its thread count."""
    # Ctrl-C reaches the whole process group: the main process stops the workers (WorkerPool),
    # a worker never prints a KeyboardInterrupt traceback of its own
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus.get()
    from .device import cuda_determinism_env

    cuda_determinism_env()  # before anything runs a matmul (docs/gpu.md)
    import torch

    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


def worker_pool(workers: int, threads: int, gpus: list[str]):
    """``workers`` spawned processes of ``threads`` threads; with GPUs, worker i sees only GPU
    ``gpus[i % len(gpus)]`` (as its cuda:0)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch thread pools
    queue = None
    if gpus:
        queue = context.Queue()
        for index in range(workers):
            queue.put(gpus[index % len(gpus)])
    return WorkerPool(workers, mp_context=context, initializer=_worker_init, initargs=(threads, queue))


class WorkerPool(ProcessPoolExecutor):
    """A process pool that leaves no worker behind when its ``with`` block ends in an exception
    (Ctrl-C, SIGTERM, an error): the workers are terminated, not waited for. Workers are spawned
    with SIGINT blocked, so a Ctrl-C never interrupts one that is still starting (``_worker_init``
    then ignores SIGINT for good); the parent gets the signal as soon as the spawn is done."""

    def submit(self, *args, **kwargs):
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})  # spawned children inherit it
        try:
            return super().submit(*args, **kwargs)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.stop_workers()
        return super().__exit__(exc_type, exc, tb)

    def stop_workers(self, grace_s: float = 5.0) -> None:
        """SIGTERM to every worker (SIGKILL after ``grace_s``), and wait for them. A run killed
        mid-epoch keeps its last epoch checkpoint (written atomically); its lock dies with it."""
        processes = list((self._processes or {}).values())
        for process in processes:
            if process.is_alive():
                process.terminate()
        self.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + grace_s
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join(1.0)


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


@EXECUTORS.register("local", description="this machine: sequential, or --workers N parallel processes "
                    "(one GPU each)", source="concurrent.futures")
class LocalExecutor(Executor):
    def workers(self, runner) -> tuple[int, list[str]]:
        """(worker count, GPUs to pin): --workers, else one worker per visible GPU."""
        gpus = visible_gpus() if runner.suite.training.device != "cpu" else []
        return self.config.workers or max(1, len(gpus)), gpus

    def run(self, runner):
        from .report import write_leaderboard
        from .runner import SuiteOutcome

        outcome = SuiteOutcome(runner.results_dir)
        workers, gpus = self.workers(runner)
        if workers <= 1:
            runner.prepare_teachers()  # teachers first, in this process
            outcome.outcomes.extend(runner.run_many(runner.runs))
        else:
            self._parallel(runner, outcome, workers, gpus)
        write_leaderboard(runner.results_dir)
        return outcome

    def _parallel(self, runner, outcome, workers: int, gpus: list[str]) -> None:
        """A graph of work: teachers and the runs that need none start at once; a run whose
        teacher is being prepared starts when that teacher is ready, on the next free worker."""
        from concurrent.futures import FIRST_COMPLETED, wait
        from concurrent.futures.process import BrokenProcessPool

        from .report import write_leaderboard
        from .runner import RunOutcome

        pending = pending_runs(runner, outcome)
        teachers = [plan for plan in runner.needed_teachers() if not runner.teachers.ready(plan)]
        if not pending and not teachers:
            return
        threads = self.config.threads(runner.suite.training.threads, workers)
        workers = min(workers, len(pending) + len(teachers))
        results_dir, suite = str(runner.results_dir), runner.suite
        waiting: dict[str, list] = {plan.teacher_id: [] for plan in teachers}
        ready = []
        for run in pending:
            (waiting[run.teacher.teacher_id] if run.teacher and run.teacher.teacher_id in waiting else ready).append(run)
        runner.reporter.message(f"{len(pending)} runs and {len(teachers)} teacher(s) on {workers} worker processes "
                                f"({threads} threads each{', one GPU each' if gpus else ''})")
        failed_teachers = []
        with worker_pool(workers, threads, gpus) as pool:
            def submit_runs(runs):
                return {pool.submit(execute_runs, suite, results_dir, [run.run_id], runner.retry_failed, threads):
                        ("run", run) for run in runs}

            # teachers first in the queue: they hold up the runs that wait for them
            futures = {pool.submit(prepare_teachers, suite, results_dir, [plan.teacher_id], threads): ("teacher", plan)
                       for plan in teachers}
            futures.update(submit_runs(ready))
            while futures:
                done, _ = wait(futures, return_when=FIRST_COMPLETED)
                for future in done:
                    kind, item = futures.pop(future)
                    try:
                        result = future.result()
                        error = None
                    except BrokenProcessPool as exc:  # a worker died (killed, out of memory): resumable
                        result, error = None, f"worker process died: {_first_line(exc)}"
                    except Exception as exc:
                        result, error = None, _first_line(exc)
                    if kind == "teacher":
                        if error is None:
                            runner.reporter.message(f"teacher {item.spec.name} ready")
                            futures.update(submit_runs(waiting.pop(item.teacher_id)))
                        else:
                            failed_teachers.append(f"teacher {item.spec.name} failed: {error} "
                                                   f"({len(waiting.pop(item.teacher_id))} runs not started)")
                        continue
                    if error is None:
                        _collect(runner, result, outcome)
                    else:
                        outcome.outcomes.append(RunOutcome(item, "failed", error))
                    last = outcome.outcomes[-1]
                    runner.reporter.message(f"{last.status}: {item.student.name} <- {item.method.label} "
                                            f"({item.run_id})" + (f": {last.error}" if last.error else ""))
                    write_leaderboard(runner.results_dir)
        if failed_teachers:
            write_leaderboard(runner.results_dir)
            raise RkbenchError("; ".join(failed_teachers))


def _survive_own_requeue() -> None:
    """Wrap submitit's handler of the warning signal: it runs ``scontrol requeue`` on the job itself,
    and Slurm, requeueing, may kill that very scontrol before it returns. The error would surface in
    the middle of a training step and be recorded as the run's failure; the job is being requeued,
    so it exits instead. Anything else the handler raises (no requeue left) goes on as before."""
    import signal
    import subprocess

    try:
        from submitit.core.job_environment import JobEnvironment

        number = JobEnvironment._usr_sig()
    except Exception:  # another submitit: its default signal
        number = signal.SIGUSR2
    handler = signal.getsignal(number)
    if not callable(handler) or getattr(handler, "rkbench_wrapped", False):
        return

    def requeue(signum, frame):
        try:
            handler(signum, frame)
        except subprocess.CalledProcessError as exc:
            raise SystemExit(f"requeue interrupted: {exc}") from None

    requeue.rkbench_wrapped = True
    signal.signal(number, requeue)


class Requeueable:
    """A Slurm job's function that survives its time limit and preemption: warned by Slurm before
    the limit (``signal_delay_s``), submitit calls ``checkpoint``, which resubmits the same call;
    the job requeues itself (at most ``max_requeues`` times) and the run resumes from its last
    epoch checkpoint, ending with the numbers of an uninterrupted run. A job requeued from outside
    (``scontrol requeue``, a preempting partition) runs the same call again, with the same effect."""

    def __init__(self, function):
        self.function = function

    def __call__(self, *args):
        from .device import cuda_determinism_env

        cuda_determinism_env()  # a Slurm job's first act, before anything runs a matmul (docs/gpu.md)
        _survive_own_requeue()
        return self.function(*args)

    def checkpoint(self, *args):
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args)


def _sacct_answers() -> bool:
    import subprocess

    try:
        return subprocess.run(["sacct", "-n", "-j", "1"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL",
                "DEADLINE", "SPECIAL_EXIT"}


def _squeue_watcher():
    """A submitit job watcher that reads job states from ``squeue`` (which lists finished jobs for
    MinJobAge seconds) instead of ``sacct``, for clusters without accounting."""
    import getpass

    from submitit.slurm.slurm import SlurmInfoWatcher

    class SqueueInfoWatcher(SlurmInfoWatcher):
        def _make_command(self):
            if not self._registered - self._finished:
                return None
            return ["squeue", "-h", "-r", "-t", "all", "-u", getpass.getuser(), "-o", "%i|%T|%N"]

        def is_done(self, job_id, mode="standard"):
            # only a final state ends a job (a requeued one passes through COMPLETING, REQUEUED, ...)
            return self.get_state(job_id, mode=mode).split()[0] in FINAL_STATES

        def read_info(self, string):
            text = string.decode() if isinstance(string, bytes) else string
            info = {}
            for line in text.splitlines():
                parts = line.strip().split("|")
                if len(parts) == 3:
                    info[parts[0]] = {"JobID": parts[0], "State": parts[1], "NodeList": parts[2]}
            return info

    return SqueueInfoWatcher(delay_s=60)


def watch_without_sacct(say) -> None:
    """Without accounting (no slurmdbd, as on many small clusters) sacct fails on every status
    poll, and sacct and submitit each print a line about it, twice a poll: ask sacct once, and
    when it does not answer read job states from squeue, saying so in one line."""
    from submitit.slurm import slurm

    if type(slurm.SlurmJob.watcher) is not slurm.SlurmInfoWatcher:  # already chosen in this process
        return
    if not _sacct_answers():
        slurm.SlurmJob.watcher = _squeue_watcher()
        say("note: sacct does not answer here (no Slurm accounting): job states come from squeue")


@EXECUTORS.register("slurm", description="Slurm jobs through submitit: a job per teacher, job arrays of runs "
                    "depending on them (partition, timeout_min, gpus_per_job, array_parallelism, runs_per_job)",
                    source="submitit")
class SlurmExecutor(Executor):
    def check_submit(self) -> None:
        if self.config.cluster == "slurm" and shutil.which("sbatch") is None:
            raise RkbenchError("--executor slurm: no sbatch on this machine (run from a Slurm login node; "
                               "executor.cluster=local runs the same jobs as local processes)")

    def executor(self, runner):
        try:
            import submitit
        except ImportError:
            raise RkbenchError("--executor slurm needs submitit: pip install submitit") from None
        config = self.config
        self.check_submit()
        executor = submitit.AutoExecutor(folder=self.folder(runner) / "%j", cluster=config.cluster,
                                         slurm_max_num_timeout=config.max_requeues)
        parameters = {"timeout_min": config.timeout_min, "gpus_per_node": config.gpus_per_job,
                      "cpus_per_task": config.cpus_per_job, "name": f"rkbench-{runner.suite.name}",
                      "slurm_array_parallelism": config.array_parallelism,
                      "slurm_signal_delay_s": config.signal_delay_s}
        if config.mem_gb:
            parameters["mem_gb"] = config.mem_gb
        if config.partition:
            parameters["slurm_partition"] = config.partition
        if config.slurm_additional:
            parameters["slurm_additional_parameters"] = dict(config.slurm_additional)
        if config.setup:
            parameters["slurm_setup" if config.cluster == "slurm" else "local_setup"] = list(config.setup)
        executor.update_parameters(**parameters)
        if config.cluster == "slurm":
            watch_without_sacct(runner.reporter.message)
        return executor

    def gpu_slots(self) -> list[int]:
        """submitit's local backend (``cluster: local``) hands every job the first ``gpus_per_job``
        GPUs of the machine ("0" for each job asked for one): the GPUs visible here, to be dealt to
        the jobs in turn instead ([] on a real cluster, where Slurm gives each job its own)."""
        if self.config.cluster != "local" or not self.config.gpus_per_job:
            return []
        return [int(gpu) for gpu in visible_gpus() if gpu.isdigit()]

    def submit(self, executor, function, calls: list[tuple], array: bool = True) -> list:
        """One job per call (a job array when ``array``); under submitit's local backend with GPUs,
        each job gets the next ``gpus_per_job`` of them."""
        slots = self.gpu_slots()
        if not slots:
            if array:
                return executor.map_array(function, *(list(column) for column in zip(*calls)))
            return [executor.submit(function, *call) for call in calls]
        jobs, n = [], self.config.gpus_per_job
        for call in calls:
            start = self._dealt * n
            self._dealt += 1
            executor.update_parameters(local_visible_gpus=tuple(slots[(start + k) % len(slots)] for k in range(n)))
            jobs.append(executor.submit(function, *call))
        return jobs

    _dealt = 0  # jobs given GPUs so far (submitit's local backend)

    def folder(self, runner) -> Path:
        return Path(self.config.folder).expanduser() if self.config.folder else runner.results_dir / "slurm"

    def run(self, runner):
        from .report import write_leaderboard
        from .runner import RunOutcome, SuiteOutcome

        config = self.config
        executor = self.executor(runner)
        threads = runner.suite.training.threads or config.cpus_per_job
        results_dir = str(runner.results_dir.resolve())
        outcome = SuiteOutcome(runner.results_dir)
        graph = config.cluster == "slurm"  # submitit's local backends know no job dependencies

        # 1. one job per teacher that is not ready yet
        teachers = [plan for plan in runner.needed_teachers() if not runner.teachers.ready(plan)]
        submitted = self.submit(executor, Requeueable(prepare_teachers),
                                [(runner.suite, results_dir, [plan.teacher_id], threads) for plan in teachers],
                                array=False)
        teacher_jobs = {plan.teacher_id: job for plan, job in zip(teachers, submitted)}
        if teacher_jobs:
            runner.reporter.message(f"teachers: {len(teacher_jobs)} job(s) "
                                    f"{', '.join(job.job_id for job in teacher_jobs.values())}")

        def wait_teachers(plans):
            for plan in plans:
                job = teacher_jobs[plan.teacher_id]
                try:
                    job.result()
                except Exception as exc:
                    raise RkbenchError(f"teacher {plan.spec.name} failed in job {job.job_id}: {_first_line(exc)} "
                                       f"(log: {job.paths.stderr})") from None

        # 2. the runs, as job arrays (runs_per_job runs per task): the runs free to start now, and
        # one array per teacher being prepared, started by Slurm when that teacher's job succeeded
        pending = pending_runs(runner, outcome)
        groups: dict[str | None, list] = {}
        for run in pending:
            key = run.teacher.teacher_id if run.teacher and run.teacher.teacher_id in teacher_jobs else None
            groups.setdefault(key, []).append(run)
        if not graph:
            wait_teachers(teachers)
        arrays = []  # (teacher_id or None, chunks, jobs)
        for teacher_id, runs in sorted(groups.items(), key=lambda item: item[0] is not None):
            chunks = [[run.run_id for run in runs[i:i + config.runs_per_job]]
                      for i in range(0, len(runs), config.runs_per_job)]
            if graph:
                after = teacher_jobs[teacher_id].job_id if teacher_id else None
                # a teacher that fails cancels its runs instead of leaving them pending forever
                executor.update_parameters(slurm_dependency=f"afterok:{after}" if after else None,
                                           slurm_additional_parameters={**config.slurm_additional,
                                                                        **({"kill_on_invalid_dep": "yes"} if after else {})})
            jobs = self.submit(executor, Requeueable(execute_runs),
                               [(runner.suite, results_dir, chunk, runner.retry_failed, threads) for chunk in chunks])
            arrays.append((teacher_id, chunks, jobs))
            runner.reporter.message(f"{len(runs)} runs in {len(jobs)} job(s): {jobs[0].job_id.split('_')[0]}"
                                    + (" (array)" if len(jobs) > 1 else "")
                                    + (f", after teacher job {teacher_jobs[teacher_id].job_id}" if teacher_id else ""))
        record_jobs(runner.results_dir, teacher_jobs, arrays)

        by_id = {run.run_id: run for run in pending}
        if not config.wait:
            runner.reporter.message(f"not waiting (executor.wait=false): `rkbench status {runner.results_dir}` "
                                    f"shows the jobs; `rkbench report {runner.results_dir}` the leaderboard")
            outcome.outcomes.extend(RunOutcome(by_id[i], "submitted") for _, chunks, _ in arrays
                                    for chunk in chunks for i in chunk)
            return outcome
        if graph:
            wait_teachers(teachers)
        for _, chunks, jobs in arrays:
            for chunk, job in zip(chunks, jobs):
                try:
                    _collect(runner, job.result(), outcome)
                except Exception as exc:  # the job died (node failure, too many time limits): resumable
                    reason = f"job {job.job_id} failed: {_first_line(exc)} (log: {job.paths.stderr})"
                    outcome.outcomes.extend(RunOutcome(by_id[i], "failed", reason) for i in chunk)
                write_leaderboard(runner.results_dir)
        write_leaderboard(runner.results_dir)
        return outcome


def record_jobs(results_dir: Path, teacher_jobs: dict, arrays: list) -> None:
    """``<results>/slurm/jobs.json``: the Slurm job of every teacher and run submitted (what
    ``rkbench status`` reads; later submissions add to it)."""
    from . import store

    path = Path(results_dir) / "slurm" / "jobs.json"
    known = store.read_json_or_none(path) or {}
    for teacher_id, job in teacher_jobs.items():
        known[teacher_id] = {"kind": "teacher", "job": job.job_id}
    for _, chunks, jobs in arrays:
        for chunk, job in zip(chunks, jobs):
            for run_id in chunk:
                known[run_id] = {"kind": "run", "job": job.job_id}
    if known:
        store.write_json(path, known)
