"""Shared pieces of the speed benchmarks in bench/ (not a test, not part of the package).

- ``trainer_step``: one batch of rkbench's training loop: ``augment``, the teacher forward once
  (``rkbench.train.teacher_outputs``) and the trainer's own per-student step
  (``rkbench.train.train_step``), each timed.
- ``Probe``: counts passes with hooks, per phase (attack / teacher / update): student and teacher
  forwards (with and without a graph), and backward traversals of each forward's graph.
- ``timed_attacks``: monkeypatches the training attacks (``pgd_attack``, ``kl_attack``) wherever a
  module of ``rkbench.methods`` calls them, so that their time and passes are booked as "attack".
"""
from __future__ import annotations

import ast
import contextlib
import functools
import json
import math
import os
import platform
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

from rkbench.data import TensorDataset, load_dataset
from rkbench.data.augment import augment
from rkbench.methods import Batch
from rkbench.models import build_model
from rkbench.performance import Performance
from rkbench.suite import TrainingConfig
from rkbench.train import teacher_outputs as train_teacher_outputs
from rkbench.train import train_step

DEFAULT_NPZ = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-slice.npz"
RESULTS = Path(__file__).resolve().parent / "results"


# ----------------------------------------------------------------------------------------------
# options, machine, data, models


def parse_options(pairs: list[str] | None) -> dict:
    """["width_mult=0.5", "base_width=32"] -> {"width_mult": 0.5, "base_width": 32}."""
    options = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"expected KEY=VALUE, got {pair!r}")
        try:
            options[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            options[key.strip()] = value.strip()
    return options


def set_threads(threads: int | None) -> int:
    torch.set_num_threads(threads or os.cpu_count() or 1)
    return torch.get_num_threads()


def machine() -> dict:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"python": sys.version.split()[0], "torch": torch.__version__, "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "loadavg_1_5_15": [round(v, 2) for v in load] if load else None}


def load_data(npz: Path | None, n_train: int, seed: int = 0) -> tuple[TensorDataset, str]:
    """The npz slice through rkbench's ``npz`` dataset when present, else random CIFAR-shaped data."""
    if npz is not None and Path(npz).is_file():
        data = load_dataset("npz", {"path": str(npz), "n_train": n_train, "augment": "crop_flip"})
        if data.x_train.shape[0] < n_train:
            raise SystemExit(f"{npz} has only {data.x_train.shape[0]} training images, asked for {n_train}")
        return data, f"npz:{npz} (first {n_train} training images)"
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n_train, 3, 32, 32), generator=generator, dtype=torch.uint8).float() / 255
    y = torch.randint(0, 10, (n_train,), generator=generator)
    return TensorDataset("random", x, y, x[:1], y[:1], num_classes=10, augment="crop_flip"), \
        f"random uint8 images ({n_train}; {npz} not found)"


def build(name: str, options: dict, num_classes: int = 10, input_shape=(3, 32, 32)) -> nn.Module:
    return build_model(name, num_classes, input_shape, **options)


def write_result(path: Path, result: dict) -> None:
    """A benchmark's JSON, written where --out says, and the line that says so."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")


def median_ms(samples: list[float]) -> float:
    return 1000 * statistics.median(samples)


# ----------------------------------------------------------------------------------------------
# pass counting and phases


class Phases:
    """The phase the bench process is in: "other", "teacher", "attack" or "update"."""

    def __init__(self):
        self.current = "other"
        self.attack_seconds = 0.0
        self._depth = 0

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        previous, self.current = self.current, name
        try:
            yield
        finally:
            self.current = previous


def input_module(model: nn.Module, input_shape) -> nn.Module:
    """The first leaf module a forward pass runs: every forward (``__call__``, ``features``,
    ``forward_with_features``) goes through it, and a backward that reaches the input goes
    through its output."""
    order: list[nn.Module] = []
    handles = [m.register_forward_pre_hook(lambda m, _: order.append(m))
               for m in model.modules() if not list(m.children())]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(2, *input_shape))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    if not order:
        raise RuntimeError(f"{type(model).__name__} ran no leaf module")
    return order[0]


class Probe:
    """Counts a model's passes per phase: "F" forwards that build a graph, "F0" forwards without
    one (no_grad, or nothing requiring grad), "B" backward traversals reaching the first layer's
    output (one per forward whose graph a backward runs through: TRADES's update backward counts
    2), "W" backward runs that compute the first layer's weight gradient (0 inside the attack
    means input-only backward passes there). ``seconds`` sums the model's ``__call__`` time per
    phase (top-level calls only)."""

    def __init__(self, model: nn.Module, phases: Phases, input_shape=(3, 32, 32)):
        self.phases = phases
        self.counts: Counter = Counter()
        self.seconds: Counter = Counter()
        first = input_module(model, input_shape)
        self._handles = [first.register_forward_hook(self._forward)]
        weight = next((p for p in first.parameters() if p.requires_grad), None)
        if weight is not None:
            self._handles.append(weight.register_hook(self._weight_grad))
        self._started: list[float] = []
        self._handles.append(model.register_forward_pre_hook(lambda m, _: self._started.append(time.perf_counter())))
        self._handles.append(model.register_forward_hook(self._done))

    def _forward(self, module, inputs, output):
        phase = self.phases.current
        if isinstance(output, torch.Tensor) and output.requires_grad:
            self.counts[(phase, "F")] += 1
            output.register_hook(self._backward)
        else:
            self.counts[(phase, "F0")] += 1

    def _backward(self, grad):
        self.counts[(self.phases.current, "B")] += 1

    def _weight_grad(self, grad):
        self.counts[(self.phases.current, "W")] += 1

    def _done(self, module, inputs, output):
        if self._started:
            self.seconds[self.phases.current] += time.perf_counter() - self._started.pop()

    def reset(self) -> None:
        self.counts.clear()
        self.seconds.clear()

    def total(self, kind: str, phase: str | None = None) -> int:
        return sum(n for (p, k), n in self.counts.items() if k == kind and (phase is None or p == phase))

    def by_phase(self) -> dict:
        out: dict = {}
        for (phase, kind), n in sorted(self.counts.items()):
            out.setdefault(phase, {})[kind] = n
        return out

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


ATTACK_FUNCTIONS = ("pgd_attack", "kl_attack")


@contextlib.contextmanager
def timed_attacks(phases: Phases) -> Iterator[list[str]]:
    """Wrap ``pgd_attack`` and ``kl_attack`` in every loaded ``rkbench.methods`` module that calls
    them through a module attribute (``adversarial.craft`` / ``craft_kl``, and FGSM-RS's own import
    of ``pgd_attack``): their time goes to ``phases.attack_seconds``, their passes to the "attack"
    phase. Yields the patched ``module.name`` list; restores everything on exit."""
    import rkbench.methods  # noqa: F401  (loads the built-in methods)

    patched: list[tuple[object, str, Callable]] = []

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            if phases._depth:  # nested: the outer call books the time
                return fn(*args, **kwargs)
            phases._depth += 1
            started = time.perf_counter()
            try:
                with phases.phase("attack"):
                    return fn(*args, **kwargs)
            finally:
                phases.attack_seconds += time.perf_counter() - started
                phases._depth -= 1
        wrapper.__wrapped_by_bench__ = True
        return wrapper

    for name, module in list(sys.modules.items()):
        if not (name == "rkbench.methods" or name.startswith("rkbench.methods.")) or module is None:
            continue
        for attr in ATTACK_FUNCTIONS:
            fn = getattr(module, attr, None)
            if callable(fn) and not getattr(fn, "__wrapped_by_bench__", False):
                patched.append((module, attr, fn))
                setattr(module, attr, wrap(fn))
    try:
        yield [f"{m.__name__}.{a}" for m, a, _ in patched]
    finally:
        for module, attr, fn in patched:
            setattr(module, attr, fn)


# ----------------------------------------------------------------------------------------------
# the trainer's per-batch step


def teacher_outputs(teacher: nn.Module, method, batch: Batch, performance: Performance) -> None:
    """The teacher forward as rkbench/train.py runs it (its own ``teacher_outputs``): once per batch,
    no_grad, eval mode (the trainer sets eval mode and requires_grad_(False) once before training)."""
    if teacher is None or not (method.needs_teacher_logits or method.uses_teacher_features):
        return
    train_teacher_outputs(teacher, batch, method.uses_teacher_features, performance)


def training_config(options: dict, **fields) -> TrainingConfig:
    """A suite training section for a bench: ``fields`` plus the ``--training KEY=VALUE`` options
    (channels_last, amp, compile, deterministic ...), validated like a suite's."""
    return TrainingConfig(**{**fields, **options})


def trainer_step(student, method, teacher, optimizer, base_lrs, config, x_clean, y, data_augment, generator,
                 phases: Phases, step: int = 0, steps_per_epoch: int = 1, epochs: int = 1,
                 augment_batch: bool = True, performance: Performance | None = None) -> dict:
    """One batch of rkbench's training loop (augment, teacher once, each replay: lr, loss, finite
    check, zero_grad, backward, step, loss.item()); returns its wall times in seconds by part.
    ``performance``: the training section's speed options (the models are placed by the caller)."""
    performance = performance or Performance(torch.device("cpu"))
    attack_before = phases.attack_seconds
    started = time.perf_counter()
    x = augment(x_clean, data_augment, generator=generator) if augment_batch else x_clean
    batch = Batch(x=performance.formatted(x), y=y, teacher=teacher, epoch=0, epochs=epochs)
    data_done = time.perf_counter()
    with phases.phase("teacher"):
        teacher_outputs(teacher, method, batch, performance)
    teacher_done = time.perf_counter()
    with phases.phase("update"):  # the trainer's own step; a non-finite loss is reported, not raised
        losses = train_step(student, method, batch, optimizer, base_lrs, config.schedule, step, steps_per_epoch,
                            epochs, performance, check_finite=False)
    finite = all(math.isfinite(loss) for loss, _ in losses)
    done = time.perf_counter()
    return {"data": data_done - started, "teacher_block": teacher_done - data_done, "loss_phase": done - teacher_done,
            "attack": phases.attack_seconds - attack_before, "total": done - started, "finite": finite}
