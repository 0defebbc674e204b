"""A suite's fixed evaluation, applied to one model (a student or a teacher): the test examples,
the attacks, whether a run's record already holds this evaluation, and the record's evaluation
fields. The attack engine itself is ``evaluator.py``; this binds it to a suite.

An attack that declares ``needs_source_model`` (a transfer attack) is applied only where its
``source`` resolves (``sources``: name -> ``Source``): a teacher-free run has no "teacher", so its
record has no such column. Its examples are crafted once per source and test set and cached in the
source's directory (``transfer-<hash>.npz``), shared by every model evaluated with them."""
from __future__ import annotations

import hashlib
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import store
from .attacks import ATTACKS, build_attack
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


@dataclass
class Source:
    """A model that transfer attacks craft on: its identity (hashed into the cache's name), the
    directory its crafted examples are cached in, and how to load it (only when nothing is cached)."""

    key: str
    directory: Path
    load: Callable[[], torch.nn.Module]


Sources = Callable[[str], "Source | None"]  # a source's name ("teacher", a teacher's name, a run id) -> Source


def no_sources(name: str) -> None:
    return None


def tensor_digest(*tensors: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(np.ascontiguousarray(tensor.detach().cpu().numpy()).tobytes())
    return digest.hexdigest()[:16]



class SuiteEvaluation:
    def __init__(self, suite: Suite, data: Callable[[], TensorDataset],
                 device: torch.device | Callable[[], torch.device],
                 on_attack: Callable[[str], Callable | None] = lambda title: None, cache_dir: Path | None = None,
                 message: Callable[[str], None] = lambda text: None):
        self.suite = suite
        self._data = data  # the suite's dataset, loaded on first use
        self._device = device  # a device, or a function resolving it on first use
        self.on_attack = on_attack  # title -> the reporter's attack progress callback
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None  # the corrupted set is cached here
        self.message = message
        self._corrupted = None

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

    def specs(self, sources: Sources = no_sources) -> list:
        """The suite's attacks that apply here: an attack crafted on a source model only where its
        source resolves (a teacher-free run has no teacher to transfer from)."""
        applicable = []
        for spec in self.suite.evaluation.attacks:
            cls = ATTACKS.get(spec.name)
            if cls.needs_source_model and sources(cls.Params(**spec.options).source) is None:
                continue
            applicable.append(spec)
        return applicable

    def attacks(self, sources: Sources = no_sources) -> dict:
        return {a.label: build_attack(a.name, self.suite.threat, **a.options) for a in self.specs(sources)}

    def attack_configs(self, sources: Sources = no_sources) -> dict:
        return {a.label: {"name": a.name, **a.options} for a in self.specs(sources)}

    def threat(self) -> dict:
        return self.suite.threat.model_dump(mode="json")

    def exact_labels(self, sources: Sources = no_sources) -> set[str]:
        """The attacks that must have an accuracy of their own (all of them without the cascade)."""
        evaluation = self.suite.evaluation
        return {a.label for a in self.specs(sources) if a.exact or not evaluation.cascade}

    def current(self, record: RunRecord | None, sources: Sources = no_sources) -> bool:
        """Whether ``record`` already holds this suite's evaluation (same attacks, threat, examples,
        and corrupted set)."""
        return (record is not None and record.evaluated_with(self.count(), self.threat(), self.attack_configs(sources),
                                                             self.exact_labels(sources))
                and self.corruptions_current(record))

    # -- common corruptions (rkbench/corruptions.py) ----------------------------------------------
    def corruption_examples(self) -> tuple[np.ndarray, np.ndarray]:
        config, data = self.suite.evaluation.corruptions, self._data()
        n = config.n_examples or self.count()
        return data.x_test[:n].cpu().numpy(), data.y_test[:n].cpu().numpy()

    def corruption_config(self) -> dict:
        return self.suite.evaluation.corruptions.model_dump(mode="json")

    def corruptions_current(self, record: RunRecord) -> bool:
        if self.suite.evaluation.corruptions is None:
            return True
        from .corruptions import key_of

        return record.corruptions is not None and record.corruptions.key == key_of(self.corruption_config(),
                                                                                 *self.corruption_examples())[0]

    def corrupted(self):
        """The suite's corrupted test set (cached on disk, and in memory for this process)."""
        if self._corrupted is None:
            from .corruptions import corrupted_set

            if self.cache_dir is None:
                raise RuntimeError("the corruption evaluation needs a cache directory")
            x, y = self.corruption_examples()
            self._corrupted = corrupted_set(self.corruption_config(), x, y, self.cache_dir, self.message)
        return self._corrupted

    def corruption_record(self, model: torch.nn.Module, previous: RunRecord | None) -> dict | None:
        """The record's ``corruptions``: reused from ``previous`` when it holds the same set."""
        if self.suite.evaluation.corruptions is None:
            return None
        if previous is not None and self.corruptions_current(previous):
            return previous.corruptions.model_dump(mode="json")
        from .corruptions import accuracies
        from .evaluator import predict

        corrupted, batch_size = self.corrupted(), self.suite.evaluation.batch_size
        model = model.to(self.device).eval()

        def classes(images: np.ndarray) -> np.ndarray:
            x = torch.from_numpy(images).to(self.device, torch.float32) / 255.0
            return predict(model, x, batch_size).cpu().numpy()

        accuracy = accuracies(classes, corrupted)
        values = [a for per_severity in accuracy.values() for a in per_severity]
        return {"key": corrupted.key, "source": corrupted.source, "n_examples": int(corrupted.labels.shape[0]),
                "severities": list(self.suite.evaluation.corruptions.severities), "accuracy": accuracy,
                "mean": float(np.mean(values)), "skipped": dict(corrupted.skipped)}

    def run(self, model: torch.nn.Module, directory: Path, title: str, seed: int,
            sources: Sources = no_sources) -> EvalResult:
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
        configs = self.attack_configs(sources)
        previous = reusable_previous(directory / store.PER_EXAMPLE, known, self.threat(), configs)
        attacks = self.attacks(sources)
        for label, attack in attacks.items():
            if attack.needs_source_model and (previous is None or label not in previous.evaluated
                                              or not previous.evaluated[label].all()):
                attack.use(self.crafted(attack, configs[label], sources(attack.source), x, y))

        def save(result: EvalResult) -> None:
            save_per_example(directory / store.PER_EXAMPLE, result)
            store.write_json(directory / PROGRESS, {"weights": digest, "threat": self.threat(),
                                                    "attacks": {label: configs[label] for label in configs
                                                                if label in result.evaluated}})

        def log(line: str) -> None:
            store.append_log(directory / store.LOG, line)
            print(f"{title}: {line}", file=sys.stderr)

        torch.manual_seed(seed)  # attacks that draw from torch's global stream: the same in every process
        result = evaluate(model, x, y, attacks, evaluation.batch_size, previous=previous,
                          exact=[a.label for a in self.specs(sources) if a.exact], cascade=evaluation.cascade,
                          on_attack=self.on_attack(title), on_attack_done=save, log=log)
        save(result)
        result.corruptions = self.corruption_record(model, record)
        return result

    def crafted(self, attack, config: dict, source: Source, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The attack's examples crafted on ``source`` for this test set: read from the source's
        directory, else crafted once and written there (atomically: a concurrent crafter writes the same)."""
        key = json.dumps({"attack": {k: v for k, v in config.items() if k != "source"}, "source": source.key,
                          "threat": self.threat(), "examples": tensor_digest(x, y)}, sort_keys=True)
        path = Path(source.directory) / f"transfer-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
        try:
            with np.load(path, allow_pickle=False) as stored:
                crafted = torch.from_numpy(stored["x_adv"])
            if crafted.shape == x.shape:
                return crafted.to(x.device, x.dtype)
        except (OSError, ValueError, KeyError, EOFError):
            pass
        except Exception:  # zipfile.BadZipFile and friends: crafted again, never trusted
            pass
        model = source.load().to(self.device).eval()
        crafted = attack.craft(model, x, y, self.suite.evaluation.batch_size)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, x_adv=crafted.detach().cpu().numpy().astype(np.float32))
        store.atomic_write(path, lambda handle: handle.write(buffer.getvalue()), mode="wb")
        return crafted

    def record_fields(self, result: EvalResult, sources: Sources = no_sources) -> dict:
        """The evaluation's fields of a ``RunRecord``."""
        labels = [a.label for a in self.specs(sources)]
        worst = result.worst_case([CLEAN, *labels])
        return {"n_examples": result.n_examples, "clean_accuracy": result.clean_accuracy,
                # None: run by the cascade on the examples still robust only (not an accuracy)
                "robust_accuracy": {label: result.accuracy(label) for label in labels},
                "attacked_fraction": {label: float(result.evaluated[label].mean()) for label in labels},
                "worst_case_accuracy": float(worst.mean()),
                "attack_seconds": {label: round(result.seconds.get(label, 0.0), 3) for label in labels},
                "attacks": self.attack_configs(sources), "cascade": self.suite.evaluation.cascade,
                "flags": result.flags, "threat": self.threat(), "corruptions": result.corruptions,
                "eval_device": device_info(self.device), "eval_ieee_fp32": result.ieee_fp32}
