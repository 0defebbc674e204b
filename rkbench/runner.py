"""Plan a suite and run it: teachers first (trained once, cached), then every student run,
skipping finished ones and resuming unfinished ones. Failures are recorded, never fatal."""
from __future__ import annotations

import platform
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from . import store
from .attacks import build_attack
from .data import TensorDataset, load_dataset
from .evaluator import CLEAN, EvalResult, evaluate, reusable_previous, save_per_example
from .methods import build_method
from .models import build_model, count_parameters
from .models.complexity import try_count_madds
from .suite import RunSpec, Suite, TeacherPlan, expand
from .teachers import TEACHER_SOURCES, TeacherContext
from .train import TrainJob, Trainer, resolve_device


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
    loss_terms: list | None = None  # per epoch, the mean of each named loss term (methods that name them)


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
        self.device = resolve_device(suite.training.device)
        self._data: TensorDataset | None = None
        self._teachers: dict[str, torch.nn.Module] = {}

    # -- shared pieces ------------------------------------------------------------------------
    @property
    def data(self) -> TensorDataset:
        if self._data is None:
            self._data = load_dataset(self.suite.dataset.name, self.suite.dataset.options)
        return self._data

    def eval_split(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.eval_count()
        return self.data.x_test[:n].to(self.device), self.data.y_test[:n].to(self.device)

    def eval_count(self) -> int:
        """How many test examples the evaluation uses (without copying them anywhere)."""
        n, available = self.suite.evaluation.n_examples, self.data.x_test.shape[0]
        return available if n is None else min(n, available)

    def attacks(self) -> dict:
        return {a.label: build_attack(a.name, self.suite.threat, **a.options) for a in self.suite.evaluation.attacks}

    def train_model(self, model, method_name: str, method_params: dict, training, seed: int, work_dir: Path | None,
                    teacher=None, title: str = ""):
        method = build_method(method_name, method_params, self.suite.threat, seed, self.suite.protocol.attack_mode)
        log_path = work_dir / store.LOG if work_dir else None
        trainer = Trainer(training, self.device, work_dir, on_epoch=self.reporter.epoch_callback(title),
                          log=(lambda line: store.append_log(log_path, line)) if log_path else None)
        return trainer.fit(model, method, self.data, teacher=teacher, seed=seed)

    def evaluate_model(self, model, directory: Path, title: str) -> EvalResult:
        x, y = self.eval_split()
        evaluation = self.suite.evaluation
        previous = reusable_previous(directory / store.PER_EXAMPLE, store.read_json_or_none(directory / store.METRICS),
                                     self.suite.threat.model_dump(mode="json"), self.attack_configs())
        result = evaluate(model.to(self.device), x, y, self.attacks(), evaluation.batch_size, previous=previous,
                          exact=[a.label for a in evaluation.attacks if a.exact], cascade=evaluation.cascade,
                          on_attack=self.reporter.attack_callback(title))
        save_per_example(directory / store.PER_EXAMPLE, result)
        return result

    def evaluation_current(self, metrics: dict | None) -> bool:
        """Whether recorded metrics already hold this suite's evaluation (same attacks, threat, examples)."""
        if not metrics or metrics.get("n_examples") != self.eval_count():
            return False
        recorded = metrics.get("attacks", {})
        exact = {a.label for a in self.suite.evaluation.attacks if a.exact or not self.suite.evaluation.cascade}
        return (metrics.get("threat") == self.suite.threat.model_dump(mode="json")
                and all(recorded.get(label) == config for label, config in self.attack_configs().items())
                and all(metrics.get("robust_accuracy", {}).get(label) is not None for label in exact))

    def attack_configs(self) -> dict:
        return {a.label: {"name": a.name, **a.options} for a in self.suite.evaluation.attacks}

    def accuracy_fields(self, result: EvalResult) -> dict:
        labels = [a.label for a in self.suite.evaluation.attacks]
        worst = result.worst_case([CLEAN, *labels])
        return {"n_examples": result.n_examples, "clean_accuracy": result.clean_accuracy,
                # None: run by the cascade on the examples still robust only (not an accuracy)
                "robust_accuracy": {label: result.accuracy(label) for label in labels},
                "attacked_fraction": {label: float(result.evaluated[label].mean()) for label in labels},
                "worst_case_accuracy": float(worst.mean()),
                "attack_seconds": {label: round(result.seconds.get(label, 0.0), 3) for label in labels},
                "attacks": self.attack_configs(), "cascade": self.suite.evaluation.cascade,
                "flags": result.flags,
                "threat": self.suite.threat.model_dump(mode="json")}

    # -- teachers -----------------------------------------------------------------------------
    def teachers_of(self, plan: TeacherPlan) -> torch.nn.Module | dict[str, torch.nn.Module]:
        """What a run distills from: its teacher, or its group's teachers by role (each loaded once)."""
        if plan.members is not None:
            return {role: self.teacher(member) for role, member in plan.members.items()}
        return self.teacher(plan)

    def teacher(self, plan: TeacherPlan) -> torch.nn.Module:
        if plan.teacher_id in self._teachers:
            return self._teachers[plan.teacher_id]
        if self.teacher_ready(plan):
            return self._load_teacher(plan)
        # one process trains and evaluates it; another one that needs it waits, then loads it
        lock = store.DirectoryLock(store.teacher_dir(self.results_dir, plan.teacher_id))
        if not lock.acquire():
            self.reporter.message(f"teacher {plan.spec.name} is being prepared by another process; waiting")
            lock.acquire(blocking=True)
        try:
            return self._load_teacher(plan)
        finally:
            lock.release()

    def _load_teacher(self, plan: TeacherPlan) -> torch.nn.Module:
        directory = store.teacher_dir(self.results_dir, plan.teacher_id)
        source = TEACHER_SOURCES.get(plan.spec.source)()
        params = source.Params(**plan.spec.options)
        weights = directory / store.TEACHER
        context = TeacherContext(self.data, self.suite.threat, self.device, plan.training, directory)
        if source.trains and weights.is_file():
            model = build_model(params.model, self.data.num_classes, self.data.input_shape, **params.model_options)
            model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
            train_seconds = (store.read_json(directory / store.METRICS) if (directory / store.METRICS).is_file()
                             else {}).get("train_seconds")
        else:
            started = time.perf_counter()
            store.write_json(directory / store.CONFIG, {"teacher": plan.spec.name, "identity": plan.identity})
            if source.trains:
                self.reporter.message(f"training teacher {plan.spec.name} ({params.model}, {params.method})")

                def train(model, method, method_params, seed, work_dir):
                    return self.train_model(model, method, method_params, plan.training, seed, work_dir,
                                            title=f"teacher {plan.spec.name}").model

                context.train = train
            model = source.build(params, context)
            train_seconds = time.perf_counter() - started if source.trains else None
            if source.trains:
                store.atomic_write(weights, lambda h: torch.save(model.state_dict(), h), mode="wb")
                (directory / store.CHECKPOINT).unlink(missing_ok=True)
        model = model.to(self.device).eval()
        model.requires_grad_(False)
        metrics_path = directory / store.METRICS
        cached = store.read_json_or_none(metrics_path)
        if not self.evaluation_current(cached):
            torch.manual_seed(0)  # attacks that draw from torch's global stream: same in every process
            result = self.evaluate_model(model, directory, f"teacher {plan.spec.name}")
            store.write_json(metrics_path, {
                "run_id": plan.teacher_id, "teacher": plan.spec.name, "source": plan.spec.source,
                "model": source.model_label(params), **self.protocol_fields(plan),
                "parameters": count_parameters(model), "train_seconds": train_seconds, "status": "finished",
                "madds": try_count_madds(model, self.data.input_shape), **self.accuracy_fields(result)})
        self._teachers[plan.teacher_id] = model
        return model

    def protocol_fields(self, plan: TeacherPlan) -> dict:
        """A trained teacher's training-attack protocol and the mode its method crafted in; {} otherwise."""
        if plan.training is None:
            return {}
        return {"protocol": self.suite.protocol.attack_mode, "attack_mode": plan.attack_mode}

    # -- student runs -------------------------------------------------------------------------
    def skip(self, run: RunSpec) -> RunOutcome | None:
        """The outcome of a run with nothing left to do (finished, or failed and not retried)."""
        metrics = store.read_json_or_none(store.run_dir(self.results_dir, run.run_id) / store.METRICS)
        if metrics is not None:
            if metrics.get("status") == "failed" and not self.retry_failed:
                return RunOutcome(run, "failed", metrics.get("error"))
            if (metrics.get("status") == "finished" and self.evaluation_current(metrics)
                    and self.diagnostics_current(run, metrics)):
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
                    outcome = (self._fail(run, pending.error) if pending.error is not None else self._finish(pending))
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
    def _reusable(directory: Path, metrics: dict | None) -> bool:
        """A finished run whose weights are on disk: evaluated again if needed, never retrained."""
        return metrics is not None and metrics.get("status") == "finished" and (directory / store.STUDENT).is_file()

    def _lockstep_key(self, run: RunSpec) -> tuple:
        """Fresh runs with equal keys train in lock-step; a run to reuse or resume trains alone."""
        import json

        directory = store.run_dir(self.results_dir, run.run_id)
        if self._reusable(directory, store.read_json_or_none(directory / store.METRICS)) \
                or (directory / store.CHECKPOINT).exists():
            return ("alone", run.run_id)
        method = build_method(run.method.method, run.method.params, self.suite.threat, run.seed,
                              run.protocol.attack_mode)
        return (run.teacher.teacher_id, json.dumps(run.training.for_lockstep(), sort_keys=True),
                *Trainer.lockstep_key(method, run.seed))

    def _start(self, run: RunSpec) -> "_Pending":
        directory = store.run_dir(self.results_dir, run.run_id)
        metrics = store.read_json_or_none(directory / store.METRICS)
        store.remove_stale_temporaries(directory)  # left by a process killed mid-write
        title = f"{run.student.name} <- {run.method.label}" + (f" ({run.teacher.label})" if run.teacher else "")
        store.write_json(directory / store.CONFIG, {**run.describe(), "identity": run.identity(),
                                                    "suite": self.suite.name})
        weights = directory / store.STUDENT
        reuse = self._reusable(directory, metrics)
        # the teacher before the seed: loading it (fresh process, worker, job) must not move the
        # random stream the student's initialization and training draw from
        teacher = self.teachers_of(run.teacher) if run.teacher and not reuse else None
        torch.manual_seed(run.seed)
        student = build_model(run.student.model, self.data.num_classes, self.data.input_shape, **run.student.options)
        if reuse:
            student.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        method = build_method(run.method.method, run.method.params, self.suite.threat, run.seed,
                              run.protocol.attack_mode)
        return _Pending(run, directory, title, reuse, student, teacher, method,
                        metrics.get("train_seconds") if metrics else None,
                        loss_terms=metrics.get("loss_terms") if metrics else None)

    def _train_group(self, group: list["_Pending"]) -> None:
        if not group:
            return
        first = group[0]
        for pending in group:
            extra = f" in lock-step with {len(group) - 1} other run(s)" if len(group) > 1 else ""
            self.reporter.message(f"training {pending.title}{extra}")
        jobs = []
        for pending in group:
            log_path = pending.directory / store.LOG
            jobs.append(TrainJob(pending.student, pending.method, pending.run.seed, pending.directory,
                                 log=lambda line, path=log_path: store.append_log(path, line),
                                 on_epoch=self.reporter.epoch_callback(pending.title)))
        trainer = Trainer(first.run.training, self.device)
        try:
            trainer.fit_many(jobs, self.data, teacher=first.teacher)
        except Exception as exc:  # the whole group failed before training (e.g. a bad hold-out)
            for pending in group:
                pending.error = exc
            return
        for pending, job in zip(group, jobs):
            pending.error = job.error
            if job.error is None:
                pending.train_seconds = job.result.train_seconds
                pending.loss_terms = job.result.loss_terms or None
                store.atomic_write(pending.directory / store.STUDENT,
                                   lambda h, model=pending.student: torch.save(model.state_dict(), h), mode="wb")

    def _finish(self, pending: "_Pending") -> RunOutcome:
        run, directory, student = pending.run, pending.directory, pending.student
        try:
            torch.manual_seed(run.seed)  # attacks that draw from torch's global stream: same in every process
            result = self.evaluate_model(student, directory, pending.title)
            store.write_json(directory / store.METRICS, {
                **self._base(run), "status": "finished", "error": None, "train_seconds": pending.train_seconds,
                **({"loss_terms": pending.loss_terms} if pending.loss_terms else {}),
                "parameters": count_parameters(student), "madds": try_count_madds(student, self.data.input_shape),
                **self.diagnostics(run, student), **self.accuracy_fields(result)})
            # kept until now: killed while evaluating, the run resumes at its last epoch, not from scratch
            (directory / store.CHECKPOINT).unlink(missing_ok=True)
            return RunOutcome(run, "finished")
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # recorded, reported, the suite goes on
            return self._fail(run, exc)

    def _base(self, run: RunSpec) -> dict:
        return {**run.describe(), "model": run.student.model, "versions": versions()}

    def _fail(self, run: RunSpec, exc: BaseException) -> RunOutcome:
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise exc
        directory = store.run_dir(self.results_dir, run.run_id)
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        store.append_log(directory / store.LOG, "".join(traceback.format_exception(exc)))
        store.write_json(directory / store.METRICS, {**self._base(run), "status": "failed", "error": reason})
        self.reporter.message(f"[red]run {run.run_id} failed[/red]: {reason}")
        return RunOutcome(run, "failed", reason)

    # -- transfer diagnostics (evaluation.diagnostics; rkbench/diagnostics.py) -------------------
    def diagnostics_wanted(self, run: RunSpec) -> int:
        """How many examples the run's diagnostics use; 0 when the suite does not ask for them."""
        evaluation = self.suite.evaluation
        if not evaluation.diagnostics or run.teacher is None or run.teacher.members is not None:
            return 0  # the diagnostics compare a student with one teacher
        return min(evaluation.diagnostics_examples, self.eval_count())

    def diagnostics_current(self, run: RunSpec, metrics: dict) -> bool:
        wanted = self.diagnostics_wanted(run)
        return not wanted or (metrics.get("diagnostics") or {}).get("n_examples") == wanted

    def diagnostics(self, run: RunSpec, student) -> dict:
        """``{"diagnostics": {...}}`` for metrics.json, or {} when not asked for."""
        n = self.diagnostics_wanted(run)
        if not n:
            return {}
        from .diagnostics import diagnose

        x, y = self.eval_split()
        return {"diagnostics": diagnose(student.to(self.device), self.teacher(run.teacher), x[:n], y[:n],
                                        self.suite.threat, self.suite.evaluation.batch_size, seed=run.seed)}

    def needed_teachers(self) -> list[TeacherPlan]:
        needed = {plan.teacher_id for run in self.runs if run.teacher for plan in run.teacher.single_teachers()}
        return [plan for plan in self.teacher_plans if plan.teacher_id in needed]

    def prepare_teachers(self) -> None:
        """Teachers first: every run that needs one then finds it cached (trained once, evaluated once)."""
        for plan in self.needed_teachers():
            self.teacher(plan)

    def teacher_ready(self, plan: TeacherPlan) -> bool:
        """Whether the teacher's files are complete (weights if trained, a current evaluation)."""
        directory = store.teacher_dir(self.results_dir, plan.teacher_id)
        if TEACHER_SOURCES.get(plan.spec.source).trains and not (directory / store.TEACHER).is_file():
            return False
        return self.evaluation_current(store.read_json_or_none(directory / store.METRICS))
