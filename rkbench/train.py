"""The one training loop: epochs, optimizer, schedule, checkpoints and resume, NaN guard, progress.

Methods only provide a loss over a batch; the loop feeds them clean batches (augmented on the
whole batch), the teacher's outputs computed once per batch, and replays batches for the "free"
family. Each epoch ends with an atomic checkpoint (model, optimizer, schedule, every RNG), so a
killed run resumes where it stopped and finishes with the same weights.
"""
from __future__ import annotations

import copy
import math
import sys
import time
import warnings
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Union

import torch
from torch import nn

from .data import TensorDataset
from .data.augment import augment
from .device import on_cpu
from .errors import RkbenchError
from .methods import Batch, Method, total_loss
from .methods.base import model_mode
from .performance import Performance
from .store import CHECKPOINT, atomic_write


class TrainingDiverged(RkbenchError):
    """The loss became NaN or infinite."""


# what a run distills from: one frozen teacher, or a teacher group's by role (multi-teacher methods)
Teachers = Union[nn.Module, Mapping[str, nn.Module], None]


def teacher_models(teacher: Teachers) -> list[nn.Module]:
    if teacher is None:
        return []
    return list(teacher.values()) if isinstance(teacher, Mapping) else [teacher]


@dataclass
class TrainResult:
    model: nn.Module
    train_seconds: float
    epochs: int
    steps: int
    losses: list[float] = field(default_factory=list)  # mean loss per epoch
    loss_terms: list[dict[str, float]] = field(default_factory=list)  # mean of each named term per epoch
    # validation (TrainJob.validate): one entry per validated epoch, {"epoch": e, "clean": a, "robust": b}
    curve: list[dict[str, float]] = field(default_factory=list)
    selected_epoch: int | None = None  # the epoch (1-based) whose weights the model holds
    selected_value: float | None = None  # checkpoint: best: the selection metric at that epoch


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RkbenchError("training.device is 'cuda' but torch sees no CUDA device")
    return torch.device(name)


def without_frames(exc: BaseException) -> tuple[BaseException, str]:
    """``exc`` with the traceback of it and of its causes dropped, and that traceback as text. A
    stored exception keeps every frame of its traceback alive, and with them the failed step's graph
    and activations: the next students of a lock-step group would run out of memory too."""
    text = "".join(traceback.format_exception(exc))
    seen, current = set(), exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current.__traceback__ = None
        current = current.__cause__ or current.__context__
    return exc, text


def make_optimizer(model: nn.Module, config) -> torch.optim.Optimizer:
    opt = config.optimizer
    if opt.name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay,
                               nesterov=opt.nesterov and opt.momentum > 0)
    cls = torch.optim.Adam if opt.name == "adam" else torch.optim.AdamW
    return cls(model.parameters(), lr=opt.lr, weight_decay=opt.weight_decay)


def lr_factor(schedule, epoch: float, epochs: int) -> float:
    """Learning-rate multiplier at (fractional) epoch ``epoch`` of ``epochs``."""
    if schedule.name == "constant":
        return 1.0
    if schedule.name == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(epoch / epochs, 1.0)))
    if schedule.name == "cyclic":  # triangular, 0 -> 1 -> 0 (locuslab's CyclicLR from lr-min 0 to lr-max)
        return 1.0 - abs(2.0 * min(epoch / epochs, 1.0) - 1.0)
    milestones = [m * epochs if m < 1 else m for m in schedule.milestones]  # fractions or epoch numbers
    return schedule.gamma ** sum(epoch >= m for m in milestones)


@dataclass
class TrainJob:
    """One student to train. Several jobs that share a teacher, a seed and a training config are
    trained in lock-step by ``Trainer.fit_many``: each batch is drawn, augmented and passed through
    the teacher once for all of them."""

    student: nn.Module
    method: Method
    seed: int = 0
    work_dir: Path | None = None
    log: Callable[[str], None] | None = None
    on_epoch: Callable[[int, int, float], None] | None = None
    # (epoch, {name: value}) after each epoch's checkpoint: loss, loss_terms/<name>, learning_rate,
    # train_accuracy (computed only when this is set); the TensorBoard log plugs in here
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None
    # measures the student on the validation split (rkbench/selection.py): every
    # config.selection.every epochs; with config.checkpoint == "best" the best epoch's weights are kept
    validate: Callable[[nn.Module], dict[str, float]] | None = None
    # filled while training
    error: BaseException | None = None  # without its traceback frames (see ``without_frames``)
    error_traceback: str | None = None  # the formatted traceback of ``error``
    result: TrainResult | None = None


class _JobState:
    """What the loop keeps per job: optimizer, schedule, losses, time, resume point."""

    def __init__(self, job: TrainJob, config, performance: Performance, teacher, epochs: int):
        self.job, self.log = job, job.log or (lambda line: None)
        job.method.prepare(job.student, teacher)
        performance.place_model(job.student)
        # what the method calls (maybe compiled; eager for a double backward through the student)
        self.runnable = performance.runnable(job.student, eager=job.method.double_backward)
        if performance.compile and job.method.double_backward:
            self.log(f"compile: {type(job.method).__name__} differentiates through the student's input "
                     f"gradient (double backward): the student runs eagerly, the teacher compiled")
        self.optimizer = make_optimizer(job.student, config)
        self.base_lrs = [group["lr"] for group in self.optimizer.param_groups]
        self.losses: list[float] = []
        self.train_seconds, self.start_epoch, self.stopped = 0.0, 0, False
        self.checkpoint = Path(job.work_dir) / CHECKPOINT if job.work_dir else None
        self.epochs = epochs
        self.loss_sum, self.loss_count = 0.0, 0
        self.loss_terms: list[dict[str, float]] = []  # per epoch: the mean of each named loss term
        self.term_sums: dict[str, float] = {}
        self.curve: list[dict[str, float]] = []  # validation, per validated epoch
        self.best: dict | None = None  # checkpoint: best: {"epoch", "value", "model" (a state dict)}

    def validate(self, epoch: int, config, last: bool) -> None:
        """After ``epoch`` (0-based): the validation entry of the curve, when due, and the best weights."""
        selection = getattr(config, "selection", None)
        every = selection.every if selection is not None else 1
        if self.job.validate is None or not ((epoch + 1) % every == 0 or last or self.stopped):
            return
        scores = self.job.validate(self.job.student)
        self.curve.append({"epoch": epoch + 1, **scores})
        self.log(f"validation after epoch {epoch + 1}: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
        if getattr(config, "checkpoint", "last") == "best":
            value = scores[selection.metric]
            if self.best is None or value > self.best["value"]:  # ties: the earlier epoch
                self.best = {"epoch": epoch + 1, "value": value,
                             "model": {k: v.detach().clone() for k, v in self.job.student.state_dict().items()}}

    def resume(self, device, data_generator: torch.Generator) -> None:
        """Continue from the checkpoint, if any. It is read with ``weights_only=True`` (tensors,
        numbers, strings, lists, dicts: nothing in it can run code). One that cannot be read that
        way, or is truncated, corrupt or of another shape, gets one warning line naming the file
        and the run trains from epoch 0 (the file is left alone until the first epoch replaces it)."""
        if not (self.checkpoint and self.checkpoint.is_file()):
            return
        fresh = self._snapshot(device, data_generator)
        try:
            with warnings.catch_warnings():  # a garbled file: torch warns about its "pickle protocol" first
                warnings.simplefilter("ignore")
                state = torch.load(self.checkpoint, map_location=device, weights_only=True)
            self._apply(state, device, data_generator)
        except Exception as exc:  # unpickling refused, bad zip, EOF, missing key, wrong shape: start over
            self._restore(fresh, device, data_generator)
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
            line = f"warning: ignored checkpoint {self.checkpoint} ({reason}); training from epoch 0"
            self.log(line)
            print(line, file=sys.stderr)
            return
        self.log(f"resumed from epoch {self.start_epoch}/{self.epochs}")

    def _apply(self, state: dict, device, data_generator: torch.Generator) -> None:
        job = self.job
        job.student.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        # RNG states are CPU byte tensors whatever map_location did to them (a CUDA resume failed)
        data_generator.set_state(state["data_rng"].cpu())
        job.method.generator.set_state(state["method_rng"].cpu())
        torch.set_rng_state(state["torch_rng"].cpu())
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), device)
        if state.get("method_state") is not None and hasattr(job.method, "load_state"):
            job.method.load_state(state["method_state"])
        start_epoch, losses, train_seconds = int(state["epoch"]), list(state["losses"]), float(state["train_seconds"])
        if not 0 <= start_epoch <= self.epochs or len(losses) != start_epoch:
            raise ValueError(f"epoch {start_epoch} with {len(losses)} losses does not fit a run of {self.epochs}")
        self.start_epoch, self.losses, self.train_seconds = start_epoch, losses, train_seconds
        self.loss_terms = list(state.get("loss_terms", []))
        self.curve = [dict(entry) for entry in state.get("curve", [])]
        self.best = dict(state["best"]) if state.get("best") is not None else None
        if state.get("stopped"):  # stopped early by the method: nothing left to train
            self.start_epoch = self.epochs

    def _snapshot(self, device, data_generator: torch.Generator) -> dict:
        """Everything ``_apply`` may change, as it is before resuming (restored if the checkpoint fails)."""
        job = self.job
        return {"model": copy.deepcopy(job.student.state_dict()),
                "optimizer": copy.deepcopy(self.optimizer.state_dict()),
                "data_rng": data_generator.get_state(), "method_rng": job.method.generator.get_state(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                "method_state": copy.deepcopy(job.method.state()) if hasattr(job.method, "state") else None}

    def _restore(self, fresh: dict, device, data_generator: torch.Generator) -> None:
        job = self.job
        job.student.load_state_dict(fresh["model"])
        self.optimizer.load_state_dict(fresh["optimizer"])
        data_generator.set_state(fresh["data_rng"])
        job.method.generator.set_state(fresh["method_rng"])
        torch.set_rng_state(fresh["torch_rng"])
        if fresh["cuda_rng"] is not None:
            torch.cuda.set_rng_state(fresh["cuda_rng"], device)
        if fresh["method_state"] is not None and hasattr(job.method, "load_state"):
            job.method.load_state(fresh["method_state"])
        self.start_epoch, self.losses, self.train_seconds, self.loss_terms = 0, [], 0.0, []
        self.curve, self.best = [], None

    def save(self, epoch: int, device, data_generator: torch.Generator) -> None:
        if not self.checkpoint:
            return
        job = self.job
        state = {"epoch": epoch + 1, "model": job.student.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "data_rng": data_generator.get_state(), "method_rng": job.method.generator.get_state(),
                 "torch_rng": torch.get_rng_state(),
                 "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                 "method_state": job.method.state() if hasattr(job.method, "state") else None,
                 "losses": self.losses, "loss_terms": self.loss_terms, "train_seconds": self.train_seconds,
                 "stopped": self.stopped, "curve": self.curve, "best": self.best}
        atomic_write(self.checkpoint, lambda h: torch.save(on_cpu(state), h), mode="wb")


class Trainer:
    def __init__(self, config, device: torch.device, work_dir: Path | None = None,
                 on_epoch: Callable[[int, int, float], None] | None = None, log: Callable[[str], None] | None = None,
                 on_epoch_end: Callable[[int, dict[str, float]], None] | None = None):
        self.config = config  # a suite TrainingConfig
        self.device = device
        self.work_dir = Path(work_dir) if work_dir else None
        self.on_epoch = on_epoch
        self.log = log or (lambda line: None)
        self.on_epoch_end = on_epoch_end

    def epochs_for(self, method: Method) -> int:
        # the free family replays every batch m times: dividing epochs keeps the cost of plain training
        return max(1, math.ceil(self.config.epochs / method.replays))

    def fit(self, student: nn.Module, method: Method, data: TensorDataset, teacher: Teachers = None,
            seed: int = 0) -> TrainResult:
        job = TrainJob(student, method, seed, self.work_dir, self.log, self.on_epoch, self.on_epoch_end)
        self.fit_many([job], data, teacher)
        if job.error is not None:
            job.error.add_note(f"the failed step's traceback:\n{job.error_traceback}")
            raise job.error
        return job.result

    @staticmethod
    def lockstep_key(method: Method, seed: int) -> tuple:
        """Jobs with equal keys (and the same teacher and training config) can share every batch."""
        return (seed, method.replays, method.holdout)

    def fit_many(self, jobs: list[TrainJob], data: TensorDataset, teacher: Teachers = None) -> list[TrainJob]:
        """Train ``jobs`` in lock-step on one data order: the batch, its augmentation and the
        teacher's outputs are computed once per batch for all of them (``teacher``: one model, or a
        teacher group's models by role, each run once per batch). The results equal those of
        separate runs with the same seed (each job keeps its own model, optimizer, method RNG and
        checkpoint). A job that raises is recorded in ``job.error`` and the others go on."""
        keys = {self.lockstep_key(job.method, job.seed) for job in jobs}
        if len(keys) != 1:
            raise ValueError(f"jobs trained in lock-step need one seed, replay count and hold-out; got {keys}")
        performance = Performance.from_config(self.config, self.device)
        # deterministic on CPU by default (a resumed run then ends with the same weights as an
        # uninterrupted one); on CPU, glibc's allocator tuned so that activations stop page-faulting
        performance.apply_process_settings()
        try:
            return self._fit_many(jobs, data, teacher, performance)
        finally:  # the teacher is shared with later runs and evaluations: always back to the default layout
            for model in teacher_models(teacher):
                performance.release_model(model)
            for job in jobs:
                performance.release_model(job.student)

    def _fit_many(self, jobs: list[TrainJob], data: TensorDataset, teacher: Teachers,
                  performance: Performance) -> list[TrainJob]:
        config, device = self.config, self.device
        first = jobs[0]
        seed, replays, holdout = self.lockstep_key(first.method, first.seed)
        for model in teacher_models(teacher):
            performance.place_model(model).eval()
            model.requires_grad_(False)  # gradients reach the students only
        group = isinstance(teacher, Mapping)
        runnable_group = {role: performance.runnable(model) for role, model in teacher.items()} if group else None
        runnable_teacher = performance.runnable(teacher) if teacher is not None and not group else None
        epochs = self.epochs_for(first.method)
        states = [_JobState(job, config, performance, teacher, epochs) for job in jobs]
        for state in states:
            if performance.describe():
                state.log(f"speed options: {performance.describe()}")
            for note in performance.notes():
                state.log(note)
        x_train, y_train, held = data.x_train, data.y_train, None
        if holdout:  # a fixed seeded draw of training examples, never trained on, for end_epoch
            if holdout >= x_train.shape[0]:
                raise RkbenchError(f"the method holds out {holdout} examples of only {x_train.shape[0]}")
            pick = torch.randperm(x_train.shape[0], generator=torch.Generator().manual_seed(seed))
            held = (x_train[pick[:holdout]].to(device), y_train[pick[:holdout]].to(device))
            x_train, y_train = x_train[pick[holdout:]], y_train[pick[holdout:]]
        n_train = x_train.shape[0]
        steps_per_epoch = math.ceil(n_train / config.batch_size) * replays
        # data order and augmentation draw from their own stream, independent of model init
        data_generator = torch.Generator().manual_seed(seed)
        for state in states:
            state.resume(device, data_generator)
        start_epoch = min(state.start_epoch for state in states)
        if any(state.start_epoch != start_epoch for state in states):
            raise ValueError("jobs trained in lock-step must resume from the same epoch")
        needs_logits = runnable_teacher is not None and any(j.method.needs_teacher_logits for j in jobs)
        needs_features = runnable_teacher is not None and any(j.method.uses_teacher_features for j in jobs)
        # a group: the roles whose clean-batch logits some method reads, each computed once per batch
        group_roles = [role for role in runnable_group or {}
                       if any(role in j.method.clean_logits_roles for j in jobs)]

        x_train, y_train = performance.place_dataset(x_train, y_train)
        step = start_epoch * steps_per_epoch
        for epoch in range(start_epoch, epochs):
            active = [s for s in states if s.job.error is None and not s.stopped]
            if not active:
                break
            for state in active:
                state.job.student.train()
                state.loss_sum, state.loss_count, state.epoch_seconds = 0.0, 0, 0.0
                state.term_sums = {}
            order = torch.randperm(n_train, generator=data_generator).to(x_train.device)
            for start in range(0, n_train, config.batch_size):
                shared_started = time.perf_counter()
                index = order[start:start + config.batch_size]
                x = augment(performance.transfer(x_train[index]), data.augment, generator=data_generator)
                x, y = performance.formatted(x), performance.transfer(y_train[index])
                batch = Batch(x=x, y=y, teacher=runnable_teacher, teachers=runnable_group, epoch=epoch, epochs=epochs)
                if needs_logits or needs_features:
                    # computed once per batch, shared by every replay, loss term and student
                    teacher_outputs(runnable_teacher, batch, needs_features, performance)
                if group_roles:
                    group_outputs(runnable_group, group_roles, batch, performance)
                running = [s for s in active if s.job.error is None]
                shared = (time.perf_counter() - shared_started) / max(len(running), 1)
                for state in running:
                    started = time.perf_counter()
                    try:
                        self._replays(state, batch, step, steps_per_epoch, epochs, performance)
                    except Exception as exc:  # this student fails; the others go on
                        state.job.error, state.job.error_traceback = without_frames(exc)
                    state.epoch_seconds += shared + time.perf_counter() - started
                step += replays
            for state in active:
                if state.job.error is not None:
                    continue
                job = state.job
                state.losses.append(state.loss_sum / max(state.loss_count, 1))
                terms = {name: total / max(state.loss_count, 1) for name, total in state.term_sums.items()}
                if terms:
                    state.loss_terms.append(terms)
                state.train_seconds += state.epoch_seconds
                named = " [" + ", ".join(f"{name} {value:.4f}" for name, value in terms.items()) + "]" if terms else ""
                state.log(f"epoch {epoch + 1}/{epochs} loss {state.losses[-1]:.4f}{named} ({state.epoch_seconds:.1f}s"
                          + (f", in lock-step with {len(active) - 1} other(s)" if len(active) > 1 else "") + ")")
                state.stopped = bool(job.method.end_epoch(job.student, epoch, held))
                if state.stopped:
                    state.log(f"stopped early by the method after epoch {epoch + 1}")
                try:
                    state.validate(epoch, config, last=epoch + 1 == epochs)
                except Exception as exc:  # this student fails; the others go on
                    job.error = exc
                    continue
                state.save(epoch, device, data_generator)
                if job.on_epoch:
                    job.on_epoch(epoch + 1, epochs, state.losses[-1])
                if job.on_epoch_end:
                    job.on_epoch_end(epoch + 1, {
                        "loss": state.losses[-1], **{f"loss_terms/{name}": value for name, value in terms.items()},
                        "learning_rate": state.optimizer.param_groups[0]["lr"],
                        "train_accuracy": train_accuracy(job.student, x_train, y_train, config.batch_size, performance)})
        for state in states:
            job = state.job
            performance.release_model(job.student)  # before finish(): methods may copy weights there
            if job.error is None:
                selected_epoch, selected_value = len(state.losses), None
                if state.best is not None:  # checkpoint: best (before finish: methods may hold extra modules)
                    job.student.load_state_dict(state.best["model"])
                    selected_epoch, selected_value = state.best["epoch"], state.best["value"]
                    state.log(f"kept epoch {selected_epoch} (best on validation: {selected_value:.4f})")
                job.method.finish(job.student)
                job.student.eval()
                job.result = TrainResult(job.student, state.train_seconds, epochs, step, state.losses, state.loss_terms,
                                         state.curve, selected_epoch, selected_value)
        return jobs

    def _replays(self, state: _JobState, batch: Batch, step: int, steps_per_epoch: int, epochs: int,
                 performance: Performance) -> None:
        for loss, terms in train_step(state.runnable, state.job.method, batch, state.optimizer, state.base_lrs,
                                      self.config.schedule, step, steps_per_epoch, epochs, performance):
            state.loss_sum += loss
            state.loss_count += 1
            for name, value in terms.items():
                state.term_sums[name] = state.term_sums.get(name, 0.0) + value


TRAIN_ACCURACY_EXAMPLES = 1000


def train_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                   performance: Performance) -> float:
    """The clean accuracy, in eval mode and without augmentation, on the first
    ``TRAIN_ACCURACY_EXAMPLES`` training examples (the held-out ones excluded): the same examples
    every epoch and for every method. No gradient, no random draw, no BatchNorm update: training
    goes on exactly as without it."""
    n = min(x.shape[0], TRAIN_ACCURACY_EXAMPLES)
    correct = 0
    with torch.no_grad(), model_mode(model, False):
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            xb = performance.formatted(performance.transfer(x[start:stop]))
            correct += int((model(xb).argmax(1) == performance.transfer(y[start:stop])).sum())
    return correct / max(n, 1)


def train_step(student: nn.Module, method: Method, batch: Batch, optimizer: torch.optim.Optimizer,
               base_lrs: list[float], schedule, step: int, steps_per_epoch: int, epochs: int,
               performance: Performance, check_finite: bool = True) -> list[tuple[float, dict[str, float]]]:
    """One student's training on one batch: for each of the method's replays (the free family
    replays a batch ``method.replays`` times), the scheduled learning rate, the method's loss (its
    attack included) under the training section's autocast, a finite check (``TrainingDiverged``),
    and one optimizer step. Returns each replay's loss and named loss terms.

    ``batch`` already holds the augmented clean inputs and the teacher's outputs (computed once per
    batch for every student trained in lock-step). The trainer runs this for every student and
    batch; bench/ runs it to time exactly the trainer's step."""
    done = []
    for replay in range(method.replays):
        factor = lr_factor(schedule, (step + replay) / steps_per_epoch, epochs)
        for group, base_lr in zip(optimizer.param_groups, base_lrs):
            group["lr"] = base_lr * factor
        with performance.autocast():  # attack, forward and loss; the backward runs outside
            loss, terms = total_loss(method.loss(student, batch))
        if check_finite and not torch.isfinite(loss):
            raise TrainingDiverged(f"loss became {loss.item()} at epoch {batch.epoch + 1}, step {step + replay}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        done.append((loss.item(), {name: term.item() for name, term in (terms or {}).items()}))
    return done


def teacher_outputs(teacher: nn.Module, batch: Batch, with_features: bool, performance: Performance) -> None:
    """The batch's teacher logits (and penultimate features), once, under no_grad and the training
    section's autocast, handed on in float32."""
    with torch.no_grad(), performance.autocast():
        if with_features:
            logits, features = teacher_forward_with_features(teacher, batch.x)
            batch.teacher_features = features.float()
        else:
            logits = teacher(batch.x)
        batch.teacher_logits = logits.float()


def group_outputs(teachers: Mapping[str, nn.Module], roles: list[str], batch: Batch,
                  performance: Performance) -> None:
    """A teacher group's logits on the clean batch, for ``roles``, once per batch like ``teacher_outputs``."""
    with torch.no_grad(), performance.autocast():
        batch.teachers_logits = {role: teachers[role](batch.x).float() for role in roles}


def teacher_forward_with_features(teacher: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if hasattr(teacher, "forward_with_features"):
        return teacher.forward_with_features(x)
    raise RkbenchError(f"teacher {type(teacher).__name__} exposes no penultimate features")
