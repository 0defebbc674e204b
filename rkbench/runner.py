"""Run execution: every student run of a planned suite, skipping finished ones and resuming
unfinished ones, fresh runs with one teacher trained in lock-step. Teachers come from the
``TeacherCache``, the evaluation from ``SuiteEvaluation``, and every outcome is written as one
``RunRecord``. Failures are recorded, never fatal."""
from __future__ import annotations

import platform
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from . import store
from .data import TensorDataset, load_dataset
from .device import device_info
from .methods import build_method
from .models import build_model, count_parameters
from .models.complexity import try_count_madds
from .record import RunRecord, UnreadableRecord, current_record, write_record
from .suite import RunSpec, Suite, expand
from .selection import ValidationScore, record_fields as selection_fields
from .suite_evaluation import SuiteEvaluation
from .teacher_cache import TeacherCache
from .train import TrainJob, Trainer, resolve_device
from .weights import fit_weights, load_state_dict, model_config, save_model


@dataclass
class RunOutcome:
    run: RunSpec
    status: str  # "finished", "cached" (nothing to do), "failed"
    error: str | None = None


@dataclass
class _Pending:
    """A run between its start (student built, teacher loaded) and its finish (evaluated)."""

    run: RunSpec
    directory: Path
    title: str
    reuse: bool  # finished weights exist: evaluate only
    student: torch.nn.Module
    teacher: torch.nn.Module | dict[str, torch.nn.Module] | None  # a group's teachers by role
    method: object
    train_seconds: float | None = None
    error: BaseException | None = None
    error_traceback: str | None = None  # the formatted traceback (a lock-step student's error keeps no frames)
    loss_terms: list | None = None  # per epoch, the mean of each named loss term (methods that name them)
    losses: list | None = None  # per epoch, the mean total loss
    tensorboard: object | None = None  # its TensorBoardLog while it trains (logging.tensorboard)
    selection: dict = field(default_factory=dict)  # the record's epoch, selected_on, selection, validation_curve
    train_device: dict | None = None  # where it trained (record.train_device)


@dataclass
class SuiteOutcome:
    results_dir: Path
    outcomes: list[RunOutcome] = field(default_factory=list)

    @property
    def failed(self) -> list[RunOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]


class Reporter:
    """What the runner tells the user; the CLI plugs rich progress bars in, tests stay silent."""

    def message(self, text: str) -> None:
        pass

    def epoch_callback(self, title: str) -> Callable[[int, int, float], None] | None:
        return None

    def attack_callback(self, title: str) -> Callable[[str, int], Callable[[int], None] | None] | None:
        return None


def versions() -> dict:
    import rkbench

    return {"rkbench": rkbench.__version__, "torch": torch.__version__, "python": platform.python_version()}


class SuiteRunner:
    def __init__(self, suite: Suite, results_dir: str | Path | None = None, reporter: Reporter | None = None,
                 retry_failed: bool = False):
        self.suite = suite
        self.results_dir = Path(results_dir) if results_dir else Path("results") / suite.name
        self.reporter = reporter or Reporter()
        self.retry_failed = retry_failed
        self.teacher_plans, self.runs = expand(suite)
        self._device: torch.device | None = None  # resolved where runs train (see ``device``)
        self._data: TensorDataset | None = None
        # the reporter is looked up at each call: the CLI plugs its own in after planning
        self.evaluation = SuiteEvaluation(suite, lambda: self.data, lambda: self.device,
                                          lambda title: self.reporter.attack_callback(title),
                                          cache_dir=self.results_dir, message=lambda text: self.reporter.message(text))
        self.teachers = TeacherCache(suite, self.results_dir, lambda: self.data, lambda: self.device, self.evaluation,
                                     lambda text: self.reporter.message(text),
                                     lambda title: self.reporter.epoch_callback(title))

    @property
    def device(self) -> torch.device:
        """The device runs train and are evaluated on, resolved on first use, in the process that
        trains (this one, a worker, or a Slurm job): planning and submitting from a machine without
        a GPU never resolves it, so ``training.device: cuda`` is checked where it matters."""
        if self._device is None:
            self._device = resolve_device(self.suite.training.device)
        return self._device

    @property
    def data(self) -> TensorDataset:
        if self._data is None:
            self._data = load_dataset(self.suite.dataset.name, self.suite.dataset.options)
        return self._data

    def needed_teachers(self):
        """The teachers some run of the suite distills from (a group's members one by one)."""
        return self.teachers.needed(self.runs, self.teacher_plans)

    def prepare_teachers(self) -> None:
        """Teachers first: every run that needs one then finds it cached (trained once, evaluated once)."""
        for plan in self.needed_teachers():
            self.teachers.get(plan)

    # -- student runs -------------------------------------------------------------------------
    def skip(self, run: RunSpec) -> RunOutcome | None:
        """The outcome of a run with nothing left to do (finished, or failed and not retried)."""
        try:
            record = current_record(store.run_dir(self.results_dir, run.run_id))
        except UnreadableRecord as exc:  # never overwritten: it may be a newer rkbench's finished run
            self.reporter.message(f"[red]run {run.run_id} skipped[/red]: {exc}")
            return RunOutcome(run, "failed", str(exc))
        if record is not None:
            if record.status == "failed" and not self.retry_failed:
                return RunOutcome(run, "failed", record.error)
            if record.finished and (not self.tests or self.evaluation.current(record, self.teachers.sources(run.teacher))) \
                    and self.diagnostics_current(run, record):
                return RunOutcome(run, "cached")
        return None

    def run_one(self, run: RunSpec) -> RunOutcome:
        return self.run_many([run], share_teacher=False)[0]

    def run_many(self, runs: list[RunSpec], share_teacher: bool | None = None) -> list[RunOutcome]:
        """Run ``runs`` in order. With ``share_teacher`` (default: the suite's training.share_teacher),
        fresh runs with the same teacher, seed and training config train in lock-step, so each
        batch's teacher outputs are computed once for all of them (results equal separate runs)."""
        from .report import write_leaderboard

        share_teacher = self.suite.training.share_teacher if share_teacher is None else share_teacher
        outcomes: dict[str, RunOutcome] = {}
        # plan the groups first, then build each group's students only when it trains: one group's
        # models in memory at a time, and each seeded right before its own training
        groups: dict[tuple, list[RunSpec]] = {}
        for run in runs:
            skipped = self.skip(run)
            if skipped is not None:
                outcomes[run.run_id] = skipped
                continue
            try:
                key = self._lockstep_key(run) if share_teacher and run.teacher else ("alone", run.run_id)
            except Exception as exc:  # recorded, reported, the suite goes on
                outcomes[run.run_id] = self._fail(run, exc)
                continue
            groups.setdefault(key, []).append(run)
        busy = []  # claimed by another process: waited for at the end
        for group_runs in groups.values():
            locks = []
            group = []
            try:
                for run in group_runs:
                    lock = self._claim(run)
                    if lock is None:
                        busy.append(run)
                        continue
                    locks.append(lock)
                    skipped = self.skip(run)  # finished by another process since it was planned
                    if skipped is not None:
                        outcomes[run.run_id] = skipped
                        continue
                    try:
                        group.append(self._start(run))
                    except Exception as exc:  # recorded, reported, the suite goes on
                        outcomes[run.run_id] = self._fail(run, exc)
                self._train_group([p for p in group if not p.reuse])
                for pending in group:
                    run = pending.run
                    outcome = (self._fail(run, pending.error, pending.error_traceback) if pending.error is not None
                               else self._finish(pending))
                    if pending.tensorboard is not None:  # a failed run: its curves so far stay on disk
                        pending.tensorboard.close()
                    outcomes[run.run_id] = outcome
                    if len(runs) > 1:
                        write_leaderboard(self.results_dir)
            finally:
                for lock in locks:
                    lock.release()
        for run in busy:
            directory = store.run_dir(self.results_dir, run.run_id)
            owner = store.lock_owner(directory) or {}
            self.reporter.message(f"run {run.run_id} is being run by another process "
                                  f"({owner.get('host')}:{owner.get('pid')}); waiting for it")
            with store.DirectoryLock(directory):
                pass
            outcomes[run.run_id] = self.run_one(run)  # "cached" when the other process finished it
        return [outcomes[run.run_id] for run in runs]

    def _claim(self, run: RunSpec) -> "store.DirectoryLock | None":
        """The run directory's lock, or None when another live process holds it."""
        directory = store.run_dir(self.results_dir, run.run_id)
        lock = store.DirectoryLock(directory)
        if not lock.acquire():
            return None
        if lock.previous:
            store.append_log(directory / store.LOG, f"took over the lock of a process that is gone: "
                                                    f"{lock.previous.get('host')}:{lock.previous.get('pid')}")
        return lock

    @staticmethod
    def _reusable(directory: Path, record: RunRecord | None) -> bool:
        """A finished run whose weights are on disk: evaluated again if needed, never retrained."""
        return record is not None and record.finished and store.weights_file(directory, store.STUDENT) is not None

    def _lockstep_key(self, run: RunSpec) -> tuple:
        """Fresh runs with equal keys train in lock-step; a run to reuse or resume trains alone."""
        import json

        directory = store.run_dir(self.results_dir, run.run_id)
        if self._reusable(directory, current_record(directory)) \
                or (directory / store.CHECKPOINT).exists():
            return ("alone", run.run_id)
        method = build_method(run.method.method, run.method.params, self.suite.threat, run.seed,
                              run.protocol.attack_mode)
        return (run.teacher.teacher_id, json.dumps(run.training.for_lockstep(), sort_keys=True),
                *Trainer.lockstep_key(method, run.seed))

    def _start(self, run: RunSpec) -> "_Pending":
        directory = store.run_dir(self.results_dir, run.run_id)
        record = current_record(directory)
        store.remove_stale_temporaries(directory)  # left by a process killed mid-write
        title = f"{run.student.name} <- {run.method.label}" + (f" ({run.teacher.label})" if run.teacher else "")
        store.write_json(directory / store.CONFIG, {**run.describe(), "identity": run.identity(),
                                                    "suite": self.suite.name,
                                                    # how it is evaluated: `rkbench eval` / export repeat it
                                                    "evaluation": self.suite.evaluation.model_dump(mode="json")})
        reuse = self._reusable(directory, record)
        # the teacher before the seed: loading it (fresh process, worker, job) must not move the
        # random stream the student's initialization and training draw from
        teacher = self.teachers.of(run.teacher) if run.teacher and not reuse else None
        torch.manual_seed(run.seed)
        student = build_model(run.student.model, self.data.num_classes, self.data.input_shape, **run.student.options)
        if reuse:  # model.safetensors, never unpickled (student.pt of older runs: weights_only=True)
            weights = store.weights_file(directory, store.STUDENT)
            fit_weights(student, load_state_dict(weights, strip_prefix=""), weights, f"student {run.student.model}")
        method = build_method(run.method.method, run.method.params, self.suite.threat, run.seed,
                              run.protocol.attack_mode)
        kept = ("epoch", "selected_on", "selection", "validation_curve")
        selection = {k: getattr(record, k) for k in kept if getattr(record, k) is not None} if record else {}
        return _Pending(run, directory, title, reuse, student, teacher, method,
                        record.train_seconds if record else None, loss_terms=record.loss_terms if record else None,
                        losses=record.losses if record else None, selection=selection,
                        train_device=record.train_device.model_dump() if record and record.train_device else None)

    def _train_group(self, group: list["_Pending"]) -> None:
        if not group:
            return
        first = group[0]
        for pending in group:
            extra = f" in lock-step with {len(group) - 1} other run(s)" if len(group) > 1 else ""
            self.reporter.message(f"training {pending.title}{extra}")
        jobs = []
        try:
            score = self.validation_score(first.run)
            for pending in group:
                log_path = pending.directory / store.LOG
                pending.tensorboard = self._tensorboard(pending.directory)
                jobs.append(TrainJob(pending.student, pending.method, pending.run.seed, pending.directory,
                                     log=lambda line, path=log_path: store.append_log(path, line),
                                     on_epoch=self.reporter.epoch_callback(pending.title),
                                     on_epoch_end=pending.tensorboard.epoch if pending.tensorboard else None,
                                     validate=score))
            trainer = Trainer(first.run.training, self.device)
            trainer.fit_many(jobs, self.data, teacher=first.teacher)
        except Exception as exc:  # the whole group failed before training (e.g. a bad hold-out)
            for pending in group:
                pending.error = exc
            return
        for pending, job in zip(group, jobs):
            pending.error, pending.error_traceback = job.error, job.error_traceback
            if job.error is None:
                pending.train_seconds = job.result.train_seconds
                pending.loss_terms = job.result.loss_terms or None
                pending.losses = job.result.losses or None
                pending.selection = selection_fields(job.result, first.run.training.checkpoint, score)
                pending.train_device = device_info(self.device)
                self._save_student(pending)

    def _save_student(self, pending: "_Pending") -> None:
        """The trained student as ``model.safetensors`` and ``model.json`` (docs/sharing.md); a
        ``student.pt`` left by an older rkbench is removed (it no longer holds these weights)."""
        run, directory = pending.run, pending.directory
        config = model_config(pending.student, run.student.model, run.student.options, self.data.num_classes,
                              self.data.input_shape)
        save_model(pending.student, directory / store.MODEL, config)
        store.write_json(directory / store.MODEL_CONFIG, config)
        (directory / store.STUDENT).unlink(missing_ok=True)

    @property
    def tests(self) -> bool:
        """Whether runs are evaluated on the test split (not tuning trials: evaluation.split none)."""
        return self.suite.evaluation.split == "test"

    def _finish(self, pending: "_Pending") -> RunOutcome:
        run, directory, student = pending.run, pending.directory, pending.student
        if not self.tests:  # a tuning trial: its score is on the validation split, the test split stays unread
            write_record(directory, RunRecord(**self._described(run), status="finished",
                                              train_seconds=pending.train_seconds, **pending.selection,
                                              train_device=pending.train_device,
                                              loss_terms=pending.loss_terms or None, losses=pending.losses or None,
                                              parameters=count_parameters(student)))
            (directory / store.CHECKPOINT).unlink(missing_ok=True)
            return RunOutcome(run, "finished")
        try:
            sources = self.teachers.sources(run.teacher)
            result = self.evaluation.run(student, directory, pending.title, seed=run.seed, sources=sources)
            record = RunRecord(
                **self._described(run), status="finished", train_seconds=pending.train_seconds,
                loss_terms=pending.loss_terms or None, losses=pending.losses or None, **pending.selection,
                train_device=pending.train_device,
                parameters=count_parameters(student), madds=try_count_madds(student, self.data.input_shape),
                diagnostics=self.diagnostics(run, student), **self.evaluation.record_fields(result, sources))
            write_record(directory, record)
            self._log_record(pending, record)
            # kept until now: killed while evaluating, the run resumes at its last epoch, not from scratch
            (directory / store.CHECKPOINT).unlink(missing_ok=True)
            return RunOutcome(run, "finished")
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # recorded, reported, the suite goes on
            return self._fail(run, exc)

    # -- TensorBoard (logging.tensorboard; rkbench/tensorboard_log.py) ---------------------------
    def _tensorboard(self, directory: Path):
        """A run's (or teacher's) TensorBoardLog, or None when the suite does not log to TensorBoard."""
        if not self.suite.logging.tensorboard:
            return None
        from .tensorboard_log import TensorBoardLog

        return TensorBoardLog(directory)

    def _log_record(self, pending: "_Pending", record: RunRecord) -> None:
        """The record's per-epoch series (validation values, if any) and test evaluation, then close."""
        try:
            board = pending.tensorboard or self._tensorboard(pending.directory)
            if board is None:
                return
            try:
                board.record(record.model_dump(mode="json"), len(record.losses or []) or pending.run.training.epochs)
            finally:
                board.close()
                pending.tensorboard = None
        except Exception as exc:  # a view of the run, never a reason to lose it
            store.append_log(pending.directory / store.LOG, f"warning: TensorBoard log not written: {exc}")
    def validation_score(self, run: RunSpec) -> ValidationScore | None:
        """What measures the run's student on the validation split while it trains (checkpoint: best),
        or None: the validation split is then never read."""
        if run.training.checkpoint != "best":
            return None
        return ValidationScore(self.data, self.suite.threat, run.training.selection, self.device,
                               self.suite.evaluation.batch_size)

    @staticmethod
    def _described(run: RunSpec) -> dict:
        """The record's fields that say what ran."""
        tuning = {"tuning": run.method.tuning} if run.method.tuning else {}
        return {**run.describe(), "model": run.student.model, "versions": versions(), **tuning}

    def _fail(self, run: RunSpec, exc: BaseException, details: str | None = None) -> RunOutcome:
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise exc
        directory = store.run_dir(self.results_dir, run.run_id)
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        try:
            store.append_log(directory / store.LOG, details or "".join(traceback.format_exception(exc)))
            write_record(directory, RunRecord(**self._described(run), status="failed", error=reason))
        except OSError as error:  # a full or read-only disk: no record (a rerun runs it again), one line
            reason += f" (its failed record not written either: {error.strerror or error}; a rerun runs it again)"
        self.reporter.message(f"[red]run {run.run_id} failed[/red]: {reason}")
        return RunOutcome(run, "failed", reason)

    # -- transfer diagnostics (evaluation.diagnostics; rkbench/diagnostics.py) -------------------
    def diagnostics_wanted(self, run: RunSpec) -> int:
        """How many examples the run's diagnostics use; 0 when the suite does not ask for them."""
        evaluation = self.suite.evaluation
        if not evaluation.diagnostics or run.teacher is None or run.teacher.members is not None:
            return 0  # the diagnostics compare a student with one teacher
        return min(evaluation.diagnostics_examples, self.evaluation.count())

    def diagnostics_current(self, run: RunSpec, record: RunRecord) -> bool:
        wanted = self.diagnostics_wanted(run)
        return not wanted or (record.diagnostics or {}).get("n_examples") == wanted

    def diagnostics(self, run: RunSpec, student) -> dict | None:
        """The record's ``diagnostics``, or None when the suite does not ask for them."""
        n = self.diagnostics_wanted(run)
        if not n:
            return None
        from .diagnostics import diagnose

        x, y = self.evaluation.examples()
        return diagnose(student.to(self.device), self.teachers.get(run.teacher), x[:n], y[:n],
                        self.suite.threat, self.suite.evaluation.batch_size, seed=run.seed)
