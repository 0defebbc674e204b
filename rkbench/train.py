"""The one training loop: epochs, optimizer, schedule, checkpoints and resume, NaN guard, progress.

Methods only provide a loss over a batch; the loop feeds them clean batches (augmented on the
whole batch), the teacher's outputs computed once per batch, and replays batches for the "free"
family. Each epoch ends with an atomic checkpoint (model, optimizer, schedule, every RNG), so a
killed run resumes where it stopped and finishes with the same weights.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .data import TensorDataset
from .data.augment import augment
from .errors import RkbenchError
from .methods import Batch, Method
from .store import CHECKPOINT, atomic_write


class TrainingDiverged(RkbenchError):
    """The loss became NaN or infinite."""


@dataclass
class TrainResult:
    model: nn.Module
    train_seconds: float
    epochs: int
    steps: int
    losses: list[float] = field(default_factory=list)  # mean loss per epoch


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RkbenchError("training.device is 'cuda' but torch sees no CUDA device")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)


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
    milestones = [m * epochs if m < 1 else m for m in schedule.milestones]  # fractions or epoch numbers
    return schedule.gamma ** sum(epoch >= m for m in milestones)


class Trainer:
    def __init__(self, config, device: torch.device, work_dir: Path | None = None,
                 on_epoch: Callable[[int, int, float], None] | None = None, log: Callable[[str], None] | None = None):
        self.config = config  # a suite TrainingConfig
        self.device = device
        self.work_dir = Path(work_dir) if work_dir else None
        self.on_epoch = on_epoch
        self.log = log or (lambda line: None)

    def epochs_for(self, method: Method) -> int:
        # the free family replays every batch m times: dividing epochs keeps the cost of plain training
        return max(1, math.ceil(self.config.epochs / method.replays))

    def fit(self, student: nn.Module, method: Method, data: TensorDataset, teacher: nn.Module | None = None,
            seed: int = 0) -> TrainResult:
        config, device = self.config, self.device
        if device.type == "cpu":  # a resumed run then ends with the same weights as an uninterrupted one
            torch.use_deterministic_algorithms(True, warn_only=True)
        student.to(device)
        if teacher is not None:
            teacher.to(device).eval()
            teacher.requires_grad_(False)  # gradients reach the student only
        method.prepare(student, teacher)
        student.to(device)
        optimizer = make_optimizer(student, config)
        epochs = self.epochs_for(method)
        x_train, y_train, held = data.x_train, data.y_train, None
        if method.holdout:  # a fixed seeded draw of training examples, never trained on, for end_epoch
            if method.holdout >= x_train.shape[0]:
                raise RkbenchError(f"the method holds out {method.holdout} examples of only {x_train.shape[0]}")
            pick = torch.randperm(x_train.shape[0], generator=torch.Generator().manual_seed(seed))
            held = (x_train[pick[:method.holdout]].to(device), y_train[pick[:method.holdout]].to(device))
            x_train, y_train = x_train[pick[method.holdout:]], y_train[pick[method.holdout:]]
        n_train = x_train.shape[0]
        batches_per_epoch = math.ceil(n_train / config.batch_size)
        steps_per_epoch = batches_per_epoch * method.replays
        total_steps = epochs * steps_per_epoch
        base_lrs = [group["lr"] for group in optimizer.param_groups]
        # data order and augmentation draw from their own stream, independent of model init
        data_generator = torch.Generator().manual_seed(seed)
        start_epoch, losses, train_seconds = 0, [], 0.0

        checkpoint_path = self.work_dir / CHECKPOINT if self.work_dir else None
        if checkpoint_path and checkpoint_path.is_file():
            state = torch.load(checkpoint_path, map_location=device, weights_only=False)
            student.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            # RNG states are CPU byte tensors whatever map_location did to them (a CUDA resume failed)
            data_generator.set_state(state["data_rng"].cpu())
            method.generator.set_state(state["method_rng"].cpu())
            torch.set_rng_state(state["torch_rng"].cpu())
            if device.type == "cuda" and state.get("cuda_rng") is not None:
                torch.cuda.set_rng_state(state["cuda_rng"].cpu(), device)
            if state.get("method_state") is not None and hasattr(method, "load_state"):
                method.load_state(state["method_state"])
            start_epoch, losses, train_seconds = state["epoch"], state["losses"], state["train_seconds"]
            if state.get("stopped"):  # stopped early by the method: nothing left to train
                start_epoch = epochs
            self.log(f"resumed from epoch {start_epoch}/{epochs}")

        x_train, y_train = x_train.to(device), y_train.to(device)
        step = start_epoch * steps_per_epoch
        for epoch in range(start_epoch, epochs):
            started = time.perf_counter()
            student.train()
            order = torch.randperm(n_train, generator=data_generator).to(device)
            loss_sum, loss_count = 0.0, 0
            for start in range(0, n_train, config.batch_size):
                index = order[start:start + config.batch_size]
                x = augment(x_train[index], data.augment, generator=data_generator)
                y = y_train[index]
                batch = Batch(x=x, y=y, teacher=teacher, epoch=epoch, epochs=epochs)
                if teacher is not None and (method.uses_teacher or method.uses_teacher_features):
                    # computed once per batch, shared by every replay and every loss term
                    with torch.no_grad():
                        if method.uses_teacher_features:
                            batch.teacher_logits, batch.teacher_features = teacher_forward_with_features(teacher, x)
                        else:
                            batch.teacher_logits = teacher(x)
                for _ in range(method.replays):
                    factor = lr_factor(config.schedule, step / steps_per_epoch, epochs)
                    for group, base_lr in zip(optimizer.param_groups, base_lrs):
                        group["lr"] = base_lr * factor
                    loss = method.loss(student, batch)
                    if not torch.isfinite(loss):
                        raise TrainingDiverged(f"loss became {loss.item()} at epoch {epoch + 1}, step {step}")
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    step += 1
                    loss_sum += loss.item()
                    loss_count += 1
            losses.append(loss_sum / max(loss_count, 1))
            train_seconds += time.perf_counter() - started
            self.log(f"epoch {epoch + 1}/{epochs} loss {losses[-1]:.4f} ({time.perf_counter() - started:.1f}s)")
            stopped = method.end_epoch(student, epoch, held)
            if stopped:
                self.log(f"stopped early by the method after epoch {epoch + 1}")
            if checkpoint_path:
                state = {"epoch": epoch + 1, "model": student.state_dict(), "optimizer": optimizer.state_dict(),
                         "data_rng": data_generator.get_state(), "method_rng": method.generator.get_state(),
                         "torch_rng": torch.get_rng_state(),
                         "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                         "method_state": method.state() if hasattr(method, "state") else None,
                         "losses": losses, "train_seconds": train_seconds, "stopped": stopped}
                atomic_write(checkpoint_path, lambda h: torch.save(state, h), mode="wb")
            if self.on_epoch:
                self.on_epoch(epoch + 1, epochs, losses[-1])
            if stopped:
                break
        method.finish(student)
        student.eval()
        return TrainResult(student, train_seconds, epochs, step, losses)


def teacher_forward_with_features(teacher: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if hasattr(teacher, "forward_with_features"):
        return teacher.forward_with_features(x)
    raise RkbenchError(f"teacher {type(teacher).__name__} exposes no penultimate features")
