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
from .device import device_info
from .methods import build_method
from .errors import RkbenchError
from .models import build_model, count_parameters
from .models.complexity import try_count_madds
from .record import RunRecord, current_record, write_record
from .suite import RunSpec, Suite, TeacherPlan, plan_teacher
from .suite_evaluation import Source, Sources, SuiteEvaluation
from .teachers import TEACHER_SOURCES, TeacherContext
from .train import Trainer
from .weights import fit_weights, load_state_dict, model_config, save_model


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
        if TEACHER_SOURCES.get(plan.spec.source).trains and store.weights_file(directory, store.TEACHER) is None:
            return False
        return self.evaluation.current(current_record(directory), self.sources(plan))

    def needed(self, runs: list[RunSpec], plans: list[TeacherPlan]) -> list[TeacherPlan]:
        """The single teachers of ``plans`` that some run of ``runs`` distills from."""
        wanted = {plan.teacher_id for run in runs if run.teacher for plan in run.teacher.single_teachers()}
        return [plan for plan in plans if plan.teacher_id in wanted]

    def _load(self, plan: TeacherPlan) -> torch.nn.Module:
        directory = self.directory(plan)
        source = TEACHER_SOURCES.get(plan.spec.source)()
        params = source.Params(**plan.spec.options)
        weights = store.weights_file(directory, store.TEACHER)  # model.safetensors (teacher.pt: older runs)
        data = self._data()
        context = TeacherContext(data, self.suite.threat, self.device, plan.training, directory)
        record = current_record(directory)
        if source.trains and weights is not None:
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
                self._save(model, source.model_spec(params), data, directory)
                (directory / store.CHECKPOINT).unlink(missing_ok=True)
        model = model.to(self.device).eval()
        model.requires_grad_(False)
        sources = self.sources(plan, model)
        if not self.evaluation.current(record, sources):
            result = self.evaluation.run(model, directory, f"teacher {plan.spec.name}", seed=0, sources=sources)
            protocol = ({"protocol": self.suite.protocol.attack_mode, "attack_mode": plan.attack_mode}
                        if plan.training is not None else {})  # a teacher trained in the suite
            write_record(directory, RunRecord(
                run_id=plan.teacher_id, status="finished", teacher=plan.spec.name, source=plan.spec.source,
                model=source.model_label(params), **protocol, parameters=count_parameters(model),
                train_seconds=train_seconds, train_device=train_device, madds=try_count_madds(model, data.input_shape),
                **self.evaluation.record_fields(result, sources)))
        self._loaded[plan.teacher_id] = model
        return model

    @staticmethod
    def _save(model: torch.nn.Module, spec: tuple[str, dict] | None, data: TensorDataset, directory: Path) -> None:
        """A trained teacher as ``model.safetensors`` and ``model.json`` (docs/sharing.md)."""
        architecture, options = spec or (None, {})
        config = model_config(model, architecture, options, data.num_classes, data.input_shape)
        save_model(model, directory / store.MODEL, config)
        store.write_json(directory / store.MODEL_CONFIG, config)

    # -- the source models of transfer attacks (suite_evaluation.Source) ----------------------
    def sources(self, teacher: TeacherPlan | None, itself: torch.nn.Module | None = None) -> Sources:
        """What a transfer attack's ``source`` names for a model distilled from ``teacher`` (or, with
        ``itself``, for the teacher ``teacher`` itself): "teacher" is that teacher (none for a
        teacher-free run or a group of teachers), a teacher's name is that teacher of the suite, and
        any other name is a run id of this results directory."""

        def resolve(name: str) -> Source | None:
            if name == "teacher":
                if teacher is None or teacher.members is not None:
                    return None
                plan = teacher
            else:
                plan = next((plan_teacher(self.suite, spec) for spec in self.suite.teachers
                             if spec.name == name and spec.group is None), None)
            if plan is not None:
                if itself is not None and plan.teacher_id == teacher.teacher_id:
                    return Source(plan.teacher_id, self.directory(plan), lambda: itself)
                return Source(plan.teacher_id, self.directory(plan), lambda: self.get(plan))
            return Source(name, store.run_dir(self.results_dir, name), lambda: self._run_model(name))

        return resolve

    def _run_model(self, run_id: str) -> torch.nn.Module:
        """Another run's student (a transfer source named by its run id), from its files."""
        directory = store.run_dir(self.results_dir, run_id)
        config = store.read_json_or_none(directory / store.CONFIG) or {}
        student = (config.get("identity") or {}).get("student")
        weights = store.weights_file(directory, store.STUDENT)
        if not student or weights is None:
            raise RkbenchError(f"transfer source {run_id!r}: no finished run with that id under "
                               f"{self.results_dir / store.RUNS} (config.json and model.safetensors are needed)")
        data = self._data()
        model = build_model(student["model"], data.num_classes, data.input_shape, **student.get("options", {}))
        fit_weights(model, load_state_dict(weights, strip_prefix=""), weights, f"transfer source {run_id}")
        return model.to(self.device).eval().requires_grad_(False)

    def _trainer_for(self, plan: TeacherPlan) -> Callable:
        """``TeacherContext.train`` for a source that trains: the shared trainer with the plan's
        training section, checkpointing in the teacher's directory (a killed teacher resumes)."""

        def train(model, method_name: str, method_params: dict, seed: int, work_dir: Path | None):
            method = build_method(method_name, method_params, self.suite.threat, seed, self.suite.protocol.attack_mode)
            log_path = work_dir / store.LOG if work_dir else None
            board = None
            if self.suite.logging.tensorboard and work_dir:  # the teacher's curves beside the runs' (tensorboard_log.py)
                from .tensorboard_log import TensorBoardLog

                board = TensorBoardLog(work_dir)
            trainer = Trainer(plan.training, self.device, work_dir, on_epoch=self.on_epoch(f"teacher {plan.spec.name}"),
                              log=(lambda line: store.append_log(log_path, line)) if log_path else None,
                              on_epoch_end=board.epoch if board else None)
            try:
                return trainer.fit(model, method, self._data(), seed=seed).model
            finally:
                if board is not None:
                    board.close()

        return train
