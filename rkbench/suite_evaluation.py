"""A suite's fixed evaluation, applied to one model (a student or a teacher): the test examples,
the attacks, whether a run's record already holds this evaluation, and the record's evaluation
fields. The attack engine itself is ``evaluator.py``; this binds it to a suite."""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Callable

import torch

from . import store
from .attacks import build_attack
from .data import TensorDataset
from .device import device_info
from .evaluator import CLEAN, EvalResult, evaluate, reusable_previous, save_per_example
from .record import RunRecord, current_record
from .suite import Suite


PROGRESS = "per_example.json"  # beside per_example.npz: whose arrays they are (weights, attacks)


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of a model's state (names and values): the arrays on disk belong to these weights."""
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class SuiteEvaluation:
    def __init__(self, suite: Suite, data: Callable[[], TensorDataset],
                 device: torch.device | Callable[[], torch.device],
                 on_attack: Callable[[str], Callable | None] = lambda title: None):
        self.suite = suite
        self._data = data  # the suite's dataset, loaded on first use
        self._device = device  # a device, or a function resolving it on first use
        self.on_attack = on_attack  # title -> the reporter's attack progress callback

    @property
    def device(self) -> torch.device:
        return self._device() if callable(self._device) else self._device

    def count(self) -> int:
        """How many test examples the evaluation uses (without copying them anywhere)."""
        n, available = self.suite.evaluation.n_examples, self._data().x_test.shape[0]
        return available if n is None else min(n, available)

    def examples(self) -> tuple[torch.Tensor, torch.Tensor]:
        n, data = self.count(), self._data()
        return data.x_test[:n].to(self.device), data.y_test[:n].to(self.device)

    def attacks(self) -> dict:
        return {a.label: build_attack(a.name, self.suite.threat, **a.options) for a in self.suite.evaluation.attacks}

    def attack_configs(self) -> dict:
        return {a.label: {"name": a.name, **a.options} for a in self.suite.evaluation.attacks}

    def threat(self) -> dict:
        return self.suite.threat.model_dump(mode="json")

    def exact_labels(self) -> set[str]:
        """The attacks that must have an accuracy of their own (all of them without the cascade)."""
        evaluation = self.suite.evaluation
        return {a.label for a in evaluation.attacks if a.exact or not evaluation.cascade}

    def current(self, record: RunRecord | None) -> bool:
        """Whether ``record`` already holds this suite's evaluation (same attacks, threat, examples)."""
        return record is not None and record.evaluated_with(self.count(), self.threat(), self.attack_configs(),
                                                            self.exact_labels())

    def run(self, model: torch.nn.Module, directory: Path, title: str, seed: int) -> EvalResult:
        """Evaluate ``model``, reusing the per-example arrays of attacks already run on it with the same
        configuration. The arrays are saved in ``directory`` after each attack, with ``PROGRESS``
        naming the weights and attack configurations they hold: killed (a Slurm time limit), the
        evaluation resumes at the next attack. The log says when the GPU ran out of memory."""
        x, y = self.examples()
        evaluation = self.suite.evaluation
        model = model.to(self.device)
        digest = weights_digest(model)
        record = current_record(directory)
        progress = store.read_json_or_none(directory / PROGRESS)
        if progress is not None and progress.get("weights") == digest:
            known = progress  # the arrays of this very model, saved after each attack
        else:
            known = record.model_dump(mode="json") if record else None
        previous = reusable_previous(directory / store.PER_EXAMPLE, known, self.threat(), self.attack_configs())
        configs = self.attack_configs()

        def save(result: EvalResult) -> None:
            save_per_example(directory / store.PER_EXAMPLE, result)
            store.write_json(directory / PROGRESS, {"weights": digest, "threat": self.threat(),
                                                    "attacks": {label: configs[label] for label in configs
                                                                if label in result.evaluated}})

        def log(line: str) -> None:
            store.append_log(directory / store.LOG, line)
            print(f"{title}: {line}", file=sys.stderr)

        torch.manual_seed(seed)  # attacks that draw from torch's global stream: the same in every process
        result = evaluate(model, x, y, self.attacks(), evaluation.batch_size, previous=previous,
                          exact=[a.label for a in evaluation.attacks if a.exact], cascade=evaluation.cascade,
                          on_attack=self.on_attack(title), on_attack_done=save, log=log)
        save(result)
        return result

    def record_fields(self, result: EvalResult) -> dict:
        """The evaluation's fields of a ``RunRecord``."""
        labels = [a.label for a in self.suite.evaluation.attacks]
        worst = result.worst_case([CLEAN, *labels])
        return {"n_examples": result.n_examples, "clean_accuracy": result.clean_accuracy,
                # None: run by the cascade on the examples still robust only (not an accuracy)
                "robust_accuracy": {label: result.accuracy(label) for label in labels},
                "attacked_fraction": {label: float(result.evaluated[label].mean()) for label in labels},
                "worst_case_accuracy": float(worst.mean()),
                "attack_seconds": {label: round(result.seconds.get(label, 0.0), 3) for label in labels},
                "attacks": self.attack_configs(), "cascade": self.suite.evaluation.cascade,
                "flags": result.flags, "threat": self.threat(),
                "eval_device": device_info(self.device), "eval_ieee_fp32": result.ieee_fp32}
