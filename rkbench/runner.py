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
from .errors import RkbenchError
from .evaluate import CLEAN, EvalResult, evaluate, reusable_previous, save_per_example
from .methods import build_method
from .models import build_model, count_parameters
from .report import write_leaderboard
from .suite import RunSpec, Suite, TeacherPlan, expand
from .teachers import TEACHER_SOURCES, TeacherContext
from .train import Trainer, resolve_device


@dataclass
class RunOutcome:
    run: RunSpec
    status: str  # "finished", "cached" (nothing to do), "failed"
    error: str | None = None


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
        n = self.suite.evaluation.n_examples
        x, y = self.data.x_test, self.data.y_test
        if n is not None:
            x, y = x[:n], y[:n]
        return x.to(self.device), y.to(self.device)

    def attacks(self) -> dict:
        return {a.label: build_attack(a.name, self.suite.threat, **a.options) for a in self.suite.evaluation.attacks}

    def train_model(self, model, method_name: str, method_params: dict, training, seed: int, work_dir: Path | None,
                    teacher=None, title: str = ""):
        method = build_method(method_name, method_params, self.suite.threat, seed)
        log_path = work_dir / store.LOG if work_dir else None
        trainer = Trainer(training, self.device, work_dir, on_epoch=self.reporter.epoch_callback(title),
                          log=(lambda line: store.append_log(log_path, line)) if log_path else None)
        return trainer.fit(model, method, self.data, teacher=teacher, seed=seed)

    def evaluate_model(self, model, directory: Path, title: str) -> EvalResult:
        x, y = self.eval_split()
        evaluation = self.suite.evaluation
        previous = reusable_previous(directory / store.PER_EXAMPLE, load_metrics_file(directory / store.METRICS),
                                     self.suite.threat.model_dump(mode="json"), self.attack_configs())
        result = evaluate(model.to(self.device), x, y, self.attacks(), evaluation.batch_size, previous=previous,
                          exact=[a.label for a in evaluation.attacks if a.exact], cascade=evaluation.cascade,
                          on_attack=self.reporter.attack_callback(title))
        save_per_example(directory / store.PER_EXAMPLE, result)
        return result

    def evaluation_current(self, metrics: dict | None) -> bool:
        """Whether recorded metrics already hold this suite's evaluation (same attacks, threat, examples)."""
        if not metrics or metrics.get("n_examples") != self.eval_split()[0].shape[0]:
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
    def teacher(self, plan: TeacherPlan) -> torch.nn.Module:
        if plan.teacher_id in self._teachers:
            return self._teachers[plan.teacher_id]
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

                def train(model, method, method_params, overrides, seed, work_dir):
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
        cached = load_metrics_file(metrics_path)
        if not self.evaluation_current(cached):
            result = self.evaluate_model(model, directory, f"teacher {plan.spec.name}")
            store.write_json(metrics_path, {
                "run_id": plan.teacher_id, "teacher": plan.spec.name, "source": plan.spec.source,
                "model": source.model_label(params),
                "parameters": count_parameters(model), "train_seconds": train_seconds, "status": "finished",
                **self.accuracy_fields(result)})
        self._teachers[plan.teacher_id] = model
        return model

    # -- student runs -------------------------------------------------------------------------
    def run_one(self, run: RunSpec) -> RunOutcome:
        directory = store.run_dir(self.results_dir, run.run_id)
        metrics = load_metrics_file(directory / store.METRICS)
        if metrics is not None:
            if metrics.get("status") == "failed" and not self.retry_failed:
                return RunOutcome(run, "failed", metrics.get("error"))
            if metrics.get("status") == "finished" and self.evaluation_current(metrics):
                return RunOutcome(run, "cached")
        title = f"{run.student.name} <- {run.method.label}" + (f" ({run.teacher.spec.name})" if run.teacher else "")
        store.write_json(directory / store.CONFIG, {**run.describe(), "identity": run.identity(),
                                                    "suite": self.suite.name})
        base = {**run.describe(), "model": run.student.model, "versions": versions()}
        try:
            torch.manual_seed(run.seed)
            student = build_model(run.student.model, self.data.num_classes, self.data.input_shape,
                                  **run.student.options)
            weights = directory / store.STUDENT
            train_seconds = metrics.get("train_seconds") if metrics else None
            if metrics is not None and metrics.get("status") == "finished" and weights.is_file():
                student.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
            else:
                teacher = self.teacher(run.teacher) if run.teacher else None
                self.reporter.message(f"training {title}")
                trained = self.train_model(student, run.method.method, run.method.params, run.training, run.seed,
                                           directory, teacher=teacher, title=title)
                train_seconds = trained.train_seconds
                store.atomic_write(weights, lambda h: torch.save(student.state_dict(), h), mode="wb")
                (directory / store.CHECKPOINT).unlink(missing_ok=True)
            result = self.evaluate_model(student, directory, title)
            store.write_json(directory / store.METRICS, {
                **base, "status": "finished", "error": None, "train_seconds": train_seconds,
                "parameters": count_parameters(student), **self.accuracy_fields(result)})
            return RunOutcome(run, "finished")
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # recorded, reported, the suite goes on
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
            store.append_log(directory / store.LOG, traceback.format_exc())
            store.write_json(directory / store.METRICS, {**base, "status": "failed", "error": reason})
            self.reporter.message(f"[red]run {run.run_id} failed[/red]: {reason}")
            return RunOutcome(run, "failed", reason)

    def run(self) -> SuiteOutcome:
        if self.suite.training.threads:
            torch.set_num_threads(self.suite.training.threads)
        self.results_dir.mkdir(parents=True, exist_ok=True)
        outcome = SuiteOutcome(self.results_dir)
        needed = {run.teacher.teacher_id for run in self.runs if run.teacher}
        for plan in self.teacher_plans:  # teachers first: every run that needs one finds it cached
            if plan.teacher_id in needed:
                self.teacher(plan)
        for run in self.runs:
            outcome.outcomes.append(self.run_one(run))
            write_leaderboard(self.results_dir)
        write_leaderboard(self.results_dir)
        return outcome


def load_metrics_file(path: Path) -> dict | None:
    try:
        return store.read_json(path) if path.is_file() else None
    except (OSError, ValueError):
        return None


def run_suite(suite: Suite, results_dir: str | Path | None = None, reporter: Reporter | None = None,
              retry_failed: bool = False) -> SuiteOutcome:
    return SuiteRunner(suite, results_dir, reporter, retry_failed).run()
