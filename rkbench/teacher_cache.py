"""The teachers a suite's runs distill from: each built (or trained) once, saved under
``results/<suite>/teachers/<teacher_id>/``, evaluated once, and shared by every run in the process.

A teacher comes from its source (``rkbench/teachers/``): ``build`` makes it, and a source that
trains it restores it from the weights saved here through its own ``restore`` hook; the cache knows
no source's options. Another process that needs a teacher being prepared waits on its lock.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch

from . import store
from .data import TensorDataset
from .device import device_info, on_cpu
from .methods import build_method
from .models import count_parameters
from .models.complexity import try_count_madds
from .record import RunRecord, current_record, write_record
from .suite import RunSpec, Suite, TeacherPlan
from .suite_evaluation import SuiteEvaluation
from .teachers import TEACHER_SOURCES, TeacherContext
from .train import Trainer


class TeacherCache:
    def __init__(self, suite: Suite, results_dir: Path, data: Callable[[], TensorDataset],
                 device: torch.device | Callable[[], torch.device],
                 evaluation: SuiteEvaluation, message: Callable[[str], None] = lambda text: None,
                 on_epoch: Callable[[str], Callable | None] = lambda title: None):
        self.suite = suite
        self.results_dir = Path(results_dir)
        self._data = data
        self._device = device  # a device, or a function resolving it on first use
        self.evaluation = evaluation
        self.message = message
        self.on_epoch = on_epoch  # title -> the reporter's epoch progress callback
        self._loaded: dict[str, torch.nn.Module] = {}

    @property
    def device(self) -> torch.device:
        return self._device() if callable(self._device) else self._device

    def directory(self, plan: TeacherPlan) -> Path:
        return store.teacher_dir(self.results_dir, plan.teacher_id)

    def of(self, plan: TeacherPlan) -> torch.nn.Module | dict[str, torch.nn.Module]:
        """What a run distills from: its teacher, or its group's teachers by role (each loaded once)."""
        if plan.members is not None:
            return {role: self.get(member) for role, member in plan.members.items()}
        return self.get(plan)

    def get(self, plan: TeacherPlan) -> torch.nn.Module:
        """The teacher, frozen and in eval mode on the suite's device."""
        if plan.teacher_id in self._loaded:
            return self._loaded[plan.teacher_id]
        if self.ready(plan):
            return self._load(plan)
        # one process trains and evaluates it; another one that needs it waits, then loads it
        lock = store.DirectoryLock(self.directory(plan))
        if not lock.acquire():
            self.message(f"teacher {plan.spec.name} is being prepared by another process; waiting")
            lock.acquire(blocking=True)
        try:
            return self._load(plan)
        finally:
            lock.release()

    def ready(self, plan: TeacherPlan) -> bool:
        """Whether the teacher's files are complete (weights if trained, a current evaluation)."""
        directory = self.directory(plan)
        if TEACHER_SOURCES.get(plan.spec.source).trains and not (directory / store.TEACHER).is_file():
            return False
        return self.evaluation.current(current_record(directory))

    def needed(self, runs: list[RunSpec], plans: list[TeacherPlan]) -> list[TeacherPlan]:
        """The single teachers of ``plans`` that some run of ``runs`` distills from."""
        wanted = {plan.teacher_id for run in runs if run.teacher for plan in run.teacher.single_teachers()}
        return [plan for plan in plans if plan.teacher_id in wanted]

    def _load(self, plan: TeacherPlan) -> torch.nn.Module:
        directory = self.directory(plan)
        source = TEACHER_SOURCES.get(plan.spec.source)()
        params = source.Params(**plan.spec.options)
        weights = directory / store.TEACHER
        data = self._data()
        context = TeacherContext(data, self.suite.threat, self.device, plan.training, directory)
        record = current_record(directory)
        if source.trains and weights.is_file():
            model = source.restore(params, context, weights)
            train_seconds = record.train_seconds if record else None
            train_device = record.train_device.model_dump() if record and record.train_device else None
        else:
            started = time.perf_counter()
            store.write_json(directory / store.CONFIG, {"teacher": plan.spec.name, "identity": plan.identity})
            if source.trains:
                self.message(f"training teacher {plan.spec.name} ({source.describe(params)})")
                context.train = self._trainer_for(plan)
            model = source.build(params, context)
            train_seconds = time.perf_counter() - started if source.trains else None
            train_device = device_info(self.device) if source.trains else None
            if source.trains:
                store.atomic_write(weights, lambda h: torch.save(on_cpu(model.state_dict()), h), mode="wb")
                (directory / store.CHECKPOINT).unlink(missing_ok=True)
        model = model.to(self.device).eval()
        model.requires_grad_(False)
        if not self.evaluation.current(record):
            result = self.evaluation.run(model, directory, f"teacher {plan.spec.name}", seed=0)
            protocol = ({"protocol": self.suite.protocol.attack_mode, "attack_mode": plan.attack_mode}
                        if plan.training is not None else {})  # a teacher trained in the suite
            write_record(directory, RunRecord(
                run_id=plan.teacher_id, status="finished", teacher=plan.spec.name, source=plan.spec.source,
                model=source.model_label(params), **protocol, parameters=count_parameters(model),
                train_seconds=train_seconds, train_device=train_device, madds=try_count_madds(model, data.input_shape),
                **self.evaluation.record_fields(result)))
        self._loaded[plan.teacher_id] = model
        return model

    def _trainer_for(self, plan: TeacherPlan) -> Callable:
        """``TeacherContext.train`` for a source that trains: the shared trainer with the plan's
        training section, checkpointing in the teacher's directory (a killed teacher resumes)."""

        def train(model, method_name: str, method_params: dict, seed: int, work_dir: Path | None):
            method = build_method(method_name, method_params, self.suite.threat, seed, self.suite.protocol.attack_mode)
            log_path = work_dir / store.LOG if work_dir else None
            trainer = Trainer(plan.training, self.device, work_dir, on_epoch=self.on_epoch(f"teacher {plan.spec.name}"),
                              log=(lambda line: store.append_log(log_path, line)) if log_path else None)
            return trainer.fit(model, method, self._data(), seed=seed).model

        return train
