"""A suite, typed: pydantic models validated at load time, ``--set`` overrides, expansion into runs.

Every name is checked against its registry (with a did-you-mean) and every option block against
the ``Params`` model of the thing it configures, so a typo fails at ``rkbench validate``, not an
hour into a run. Errors are ``ConfigError`` with one line naming the field.
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import json
import os
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .attacks import ATTACKS
from .corruptions import CORRUPTIONS, SEVERITIES
from .data import DATASETS
from .errors import ConfigError, RkbenchError
from .methods import METHODS
from .store import Reference
from .methods.base import resolve_attack_mode
from .models import MODELS, check_model_options
from .teachers import TEACHER_SOURCES
from .threat import ThreatModel

SCHEMA_VERSION = 1  # bump when a change to training semantics must not reuse old run directories


def _kind(value: Any) -> str:
    """How a wrong value reads in an error: ``true (a boolean)``, ``-1 (a number)``, ``a list``."""
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, (int, float)):
        return f"{value!r} (a number)"
    if isinstance(value, str):
        return f"{value[:40]!r} (a string)"
    return {list: "a list", dict: "a mapping"}.get(type(value), f"a {type(value).__name__}")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ----------------------------------------------------------------------------------------------
# training and evaluation sections


class OptimizerConfig(Strict):
    name: Literal["sgd", "adam", "adamw"] = Field("sgd", description="the torch.optim optimizer")
    lr: float = Field(0.1, gt=0, description="learning rate (the schedule's peak)")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (adam and adamw do not use it)")
    weight_decay: float = Field(5e-4, ge=0, description="weight decay (adamw: decoupled)")
    nesterov: bool = Field(False, description="SGD: Nesterov momentum")


class ScheduleConfig(Strict):
    name: Literal["constant", "cosine", "cyclic", "multistep"] = Field(
        "cosine", description="cyclic: triangular, up from 0 to lr over the first half, back to 0 (Free-AT, FGSM-RS)")
    milestones: list[float] = Field(default_factory=lambda: [0.5, 0.75],
                                    description="multistep: fractions of the epochs (0.5) or epoch numbers (100)")
    gamma: float = Field(0.1, gt=0, description="multistep: the factor the learning rate is multiplied by at "
                                              "each milestone")


class SelectionConfig(Strict):
    """How ``checkpoint: best`` (and a tuning trial) measures an epoch: the student on the validation
    split (``dataset.validation``), clean and under one declared cheap attack, every ``every`` epochs
    (and always after the last)."""

    every: int = Field(1, ge=1, description="validate every k epochs (the last epoch always)")
    attack: str = Field("pgd10", description="a registered attack run on the validation split (pgd10, pgd20)")
    attack_options: dict = Field(default_factory=dict, description="options of that attack")
    metric: Literal["robust", "clean"] = Field("robust", description="what the best epoch maximizes: accuracy "
                                                                     "under the attack, or clean accuracy")


class TrainingConfig(Strict):
    epochs: int = Field(10, ge=1, description="training epochs of every run (a method or teacher may override)")
    batch_size: int = Field(128, ge=1, description="training batch size")
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig, description="see training.optimizer")
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig,
                                     description="learning-rate schedule, stepped per batch (see training.schedule)")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1,
                             description="one run per seed (seeds aggregate in reports: mean and std)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when available, else CPU")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's choice)")
    share_teacher: bool = Field(False, description="train runs with the same teacher, seed and training "
                                                   "in lock-step: one teacher pass per batch for all")
    # speed (rkbench/performance.py); only amp changes the numbers
    amp: Literal["off", "bf16"] = Field("off", description="bf16: the step under torch.autocast (evaluation "
                                                          "stays float32)")
    channels_last: bool = Field(False, description="NHWC models and batches (same arithmetic, faster convs)")
    compile: bool = Field(False, description="torch.compile the student and the teacher for training")
    data_on_device: bool = Field(True, description="the whole training set as tensors on the device")
    pin_memory: bool = Field(False, description="with data_on_device off: pinned host batches, "
                                                "non-blocking copies (CUDA)")
    deterministic: bool | None = Field(None, description="torch deterministic algorithms (default: on for CPU)")
    malloc_tuning: bool = Field(True, description="CPU, glibc: large tensors from the heap, freed memory kept "
                                                  "(no page fault per activation)")
    # which epoch's weights the run keeps (docs/tuning.md)
    checkpoint: Literal["last", "best"] = Field(
        "last", description="last: the final epoch; best: the epoch best on the validation split (dataset.validation)")
    selection: SelectionConfig = Field(default_factory=SelectionConfig,
                                       description="how checkpoint: best measures an epoch on the validation split")

    # fields that change how fast a run trains, never what it trains
    SPEED_ONLY: typing.ClassVar[frozenset] = frozenset(
        {"device", "threads", "share_teacher", "channels_last", "compile", "data_on_device", "pin_memory",
         "deterministic", "malloc_tuning"})

    @field_validator("amp", mode="before")
    @classmethod
    def _amp_off(cls, value):
        return "off" if value in (False, None) else value  # YAML reads a bare `off` as false

    def for_identity(self) -> dict:
        """The fields that change what is trained (seeds are per run; device, threads and the other
        speed options are not). ``amp`` enters only when on, so older run ids stay valid."""
        identity = self.model_dump(mode="json", exclude={"seeds", *self.SPEED_ONLY})
        if identity["amp"] == "off":
            del identity["amp"]
        if identity["checkpoint"] == "last":  # the default keeps older run ids; selection is then unused
            del identity["checkpoint"], identity["selection"]
        return identity

    def for_lockstep(self) -> dict:
        """Runs trained in one lock-step group share every field but the seeds."""
        return self.model_dump(mode="json", exclude={"seeds"})


class AttackSpec(Strict):
    name: str = Field(description="a registered attack (rkbench list attacks)")
    label: str = Field(description="the leaderboard column (default: the name); unique in the suite")
    exact: bool = Field(False, description="run on every example (an exact column) even when the evaluation "
                                           "cascades")
    options: dict = Field(default_factory=dict, description="the attack's parameters, written beside name "
                                                            "(docs/parameters.md#attacks)")


class CorruptionConfig(Strict):
    """Common corruptions (rkbench/corruptions.py): accuracy on each corruption at each severity."""

    names: list[str] = Field(default_factory=lambda: list(CORRUPTIONS), description="the corruptions (default: the 15 of CIFAR-10-C)")
    severities: list[int] = Field(default_factory=lambda: list(SEVERITIES), description="severities, 1 to 5")
    n_examples: int | None = Field(None, ge=1, description="first N test examples (default: the evaluation's)")
    files: Literal["cifar10", "cifar100"] | None = Field(
        None, description="read <data_dir>/CIFAR-10-C (or CIFAR-100-C) in RobustBench's layout when present")
    data_dir: str = Field("data", description="where the real CIFAR-10-C / CIFAR-100-C directories are looked for")

    @field_validator("names")
    @classmethod
    def _known(cls, value):
        for name in value:
            if name not in CORRUPTIONS:
                close = difflib.get_close_matches(name, CORRUPTIONS, n=1, cutoff=0.5)
                raise ValueError(f"unknown corruption {name!r}" + (f"; did you mean {close[0]!r}?" if close else
                                                                 f"; known: {', '.join(CORRUPTIONS)}"))
        if not value:
            raise ValueError("name at least one corruption")
        return value

    @field_validator("severities")
    @classmethod
    def _range(cls, value):
        if not value or any(s not in SEVERITIES for s in value) or len(set(value)) != len(value):
            raise ValueError("severities are distinct integers from 1 to 5")
        return sorted(value)


class EvaluationConfig(Strict):
    split: Literal["test", "none"] = Field("test", description="test: runs are evaluated on the test split; none: not evaluated (tuning trials, scored on the validation split only)")
    attacks: list[AttackSpec] = Field(default_factory=lambda: [AttackSpec(name="pgd20", label="pgd20")],
                                      description="attack names, or mappings {name, label, exact, <options>}")
    n_examples: int | None = Field(None, ge=1, description="first N test examples (default: all)")
    batch_size: int = Field(500, ge=1, description="examples per attack batch")
    cascade: bool = Field(True, description="attacks cheapest first, each on the examples still robust; "
                                            "columns not marked exact are reported as 'cascade'")
    diagnostics: bool = Field(False, description="transfer diagnostics of runs with a teacher (rkbench/diagnostics.py)")
    diagnostics_examples: int = Field(200, ge=1, description="first N test examples the diagnostics use")
    corruptions: CorruptionConfig | None = Field(None, description="common corruptions beside the attacks "
                                                                   "(rkbench/corruptions.py); true: all 15 x 5")

    @field_validator("corruptions", mode="before")
    @classmethod
    def _corruptions_shorthand(cls, value):
        if value is True:
            return {}
        return None if value is False else value

    @field_validator("attacks", mode="before")
    @classmethod
    def _attack_entries(cls, value):
        if value is None:
            return []
        if not isinstance(value, list):
            raise ValueError(f"expected a list of attacks (names such as pgd20, or {{name: ..., label: ...}} "
                             f"mappings), got {_kind(value)}")
        entries = []
        for item in value:
            if isinstance(item, str):
                item = {"name": item}
            if isinstance(item, dict):
                item = dict(item)
                name = item.pop("name", None)
                label = item.pop("label", None) or name
                exact = item.pop("exact", False)
                item = {"name": name, "label": label, "exact": exact, "options": item}
            entries.append(item)
        return entries


class Protocol(Strict):
    """The training-attack protocol of a suite: one switch for every training-time attack (methods,
    and teachers trained in the suite). Part of every run's identity."""

    attack_mode: Literal["official", "eval", "train"] = Field(
        "eval", description="the student's BatchNorm mode while training examples are crafted: eval or train "
                            "for every method, or official: each method as its official code does "
                            "(the free family crafts in the training pass itself and is exempt)")

    def mode_of(self, method: str) -> str | None:
        """The mode ``method`` crafts in under this protocol: train, eval, free (exempt) or None (crafts none)."""
        return resolve_attack_mode(METHODS.get(method), self.attack_mode)


# ----------------------------------------------------------------------------------------------
# what is distilled into what


class DatasetSpec(Strict):
    """``dataset: {name: digits, <options>}``: a registered dataset and its options."""

    name: str = Field(description="a registered dataset (rkbench list datasets)")
    options: dict = Field(default_factory=dict, description="the dataset's options, written beside name "
                                                            "(docs/parameters.md#datasets)")

    @model_validator(mode="before")
    @classmethod
    def _split(cls, value):
        if isinstance(value, str):
            return {"name": value}
        if isinstance(value, dict) and "options" not in value:
            rest = dict(value)
            return {"name": rest.pop("name", None), "options": rest}
        return value


class TeacherSpec(Strict):
    """One teacher (``source`` and its options), or a ``group``: the suite's teachers by role, e.g.
    ``{clean: nat_cnn, robust: at_cnn}``, for the methods that distill from several (MTARD)."""

    name: str = Field(description="the teacher's name in the suite (the leaderboard's teacher column)")
    source: str | None = Field(None, description="a registered teacher source: train, checkpoint, robustbench, "
                                                 "pyautoattack, timm (rkbench list teachers)")
    group: dict[str, str] | None = Field(None, description="instead of a source: role -> the name of another "
                                                           "teacher of the suite, e.g. {clean: A, robust: B}")
    # the method labels distilled from this teacher (default: every method that uses a teacher of
    # its kind: one teacher, or a group with the method's roles)
    methods: list[str] | None = Field(None, description="the method labels distilled from this teacher "
                                                        "(default: every method that takes a teacher of its kind)")
    options: dict = Field(default_factory=dict, description="the source's options, written beside name "
                                                            "(docs/parameters.md#teacher-sources)")

    @model_validator(mode="before")
    @classmethod
    def _split(cls, value):
        if isinstance(value, dict) and "options" not in value:
            rest = dict(value)
            return {"name": rest.pop("name", None), "source": rest.pop("source", None),
                    "group": rest.pop("group", None), "methods": rest.pop("methods", None), "options": rest}
        return value

    @model_validator(mode="after")
    def _source_or_group(self):
        if (self.source is None) == (self.group is None):
            raise ValueError(f"teacher {self.name!r}: give a source (one teacher) or a group "
                             f"(role: teacher name, e.g. {{clean: A, robust: B}}), not {'both' if self.source else 'neither'}")
        if self.group is not None and (not self.group or self.options):
            raise ValueError(f"group {self.name!r}: " + (f"takes no options ({', '.join(self.options)})" if self.options
                                                          else "names no teachers"))
        return self


class StudentSpec(Strict):
    """A student: a model name (``cnn_tiny``) or ``{name, model, <model options>}``."""

    name: str = Field(description="the student's name in the suite (default: the model's)")
    model: str = Field(description="a registered model (rkbench list models)")
    options: dict = Field(default_factory=dict, description="the model's options, written beside model "
                                                            "(docs/parameters.md#models)")

    @model_validator(mode="before")
    @classmethod
    def _split(cls, value):
        if isinstance(value, str):
            return {"name": value, "model": value}
        if isinstance(value, dict) and "options" not in value:
            rest = dict(value)
            model = rest.pop("model", None)
            return {"name": rest.pop("name", None) or model, "model": model, "options": rest}
        return value


class MethodSpec(Strict):
    """``methods: {label: {method: <name, default the label>, training: {...}, <parameters>}}``."""

    label: str = Field(description="the mapping's key: the leaderboard's method column")
    method: str = Field(description="a registered method (rkbench list methods); default: the label")
    params: dict = Field(default_factory=dict, description="the method's parameters, written beside method "
                                                           "(docs/parameters.md#methods)")
    training: dict = Field(default_factory=dict, description="this method's overrides of the training section")
    search: dict[str, list] = Field(default_factory=dict, description="tuning: the values to search, per method "
                                    "parameter (t: [1, 4, 30]) or training field (training.optimizer.lr: [0.01, 0.05]); "
                                    "never part of a run id")
    tuning: dict | None = Field(None, description="on a tuned suite's final runs: what tuning chose (written by "
                                                  "rkbench, not by users)")


class TuningConfig(Strict):
    """Equal tuning budgets (docs/tuning.md): every method gets ``budget`` trials over its
    ``search`` space, each trial an ordinary run of ``trial_epochs`` scored on the validation split;
    then only each method's chosen configuration is trained with the suite's seeds and evaluated."""

    budget: int = Field(ge=0, description="trials per method, the same for every method (0: every method at "
                                          "its defaults, the untuned counterpart)")
    metric: Literal["robust", "clean"] = Field("robust", description="the trial score: the best validation "
                                               "accuracy under training.selection.attack (robust) or clean")
    sampler: Literal["grid", "random", "tpe"] = Field("tpe", description="Optuna's GridSampler, RandomSampler "
                                                      "or TPESampler")
    seed: int = Field(0, description="the sampler's seed and the trials' training seed")
    trial_epochs: int | None = Field(None, ge=1, description="epochs of a trial (default: training.epochs)")


class ExecutorConfig(BaseModel):
    """The suite's ``executor:`` section (not part of any run id: where a run executes does not
    change what it computes)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("local", description="local (this machine) or slurm (submitit)")
    # local
    workers: int | None = Field(None, ge=1, description="parallel worker processes (local; default: one "
                                "per visible GPU when CUDA is present, else 1)")
    threads_per_worker: int | None = Field(None, ge=1, description="torch threads per worker "
                                           "(default: training.threads, else CPU cores / workers)")
    # slurm (through submitit)
    partition: str | None = Field(None, description="Slurm partition (default: the cluster's)")
    timeout_min: int = Field(60, ge=1, description="each job's time limit in minutes")
    gpus_per_job: int = Field(0, ge=0, description="GPUs per job")
    cpus_per_job: int = Field(2, ge=1, description="CPUs per job")
    mem_gb: float | None = Field(None, gt=0, description="memory per job in GB (default: the cluster's)")
    array_parallelism: int = Field(32, ge=1, description="array tasks running at once")
    runs_per_job: int = Field(1, ge=1, description="runs one array task trains in turn (short runs may share a job)")
    cluster: Literal["slurm", "local", "debug"] = Field(
        "slurm", description="submitit backend: slurm, or local/debug to try the same path without a cluster")
    folder: str | None = Field(None, description="submitit logs and pickles (default: <results>/slurm)")
    setup: list[str] = Field(default_factory=list, description="shell lines run before each job, "
                             "e.g. 'source ~/venv/bin/activate'")
    slurm_additional: dict = Field(default_factory=dict, description="extra #SBATCH options, e.g. {account: x}")
    wait: bool = Field(True, description="wait for the jobs and rebuild the leaderboard (false: submit and exit)")
    max_requeues: int = Field(10, ge=0, description="times a job may requeue itself after its time limit")
    signal_delay_s: int = Field(90, ge=1, description="Slurm warns a job this many seconds before its time "
                                "limit; the job then checkpoints and requeues")

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value):
        return {"name": value} if isinstance(value, str) else value

    def threads(self, suite_threads: int | None, workers: int | None = None) -> int:
        if suite_threads:
            return suite_threads
        return self.threads_per_worker or max(1, (os.cpu_count() or 1) // (workers or self.workers or 1))



class LoggingConfig(Strict):
    """The suite's ``logging:`` section: live views of training (not part of any run id)."""

    tensorboard: bool = Field(False, description="per-epoch scalars (loss terms, learning rate, training "
                              "accuracy, validation values) under each run directory's tensorboard/; "
                              "`tensorboard --logdir results/<suite>` shows every run")


class Suite(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="results go to results/<name>/")
    description: str = Field("", description="free text, for readers of the suite")
    dataset: DatasetSpec = Field(description="the dataset and its options (see dataset)")
    threat: ThreatModel = Field(default_factory=ThreatModel, description="the threat model (see threat)")
    teachers: list[TeacherSpec] = Field(default_factory=list, description="teachers and teacher groups "
                                                                          "(see teachers)")
    students: list[StudentSpec] = Field(min_length=1, description="the students every method trains (see students)")
    methods: list[MethodSpec] = Field(min_length=1, description="label -> method and its parameters (see methods)")
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="how every run trains "
                                                                                 "(see training)")
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig, description="the fixed attack "
                                                                                       "protocol (see evaluation)")
    protocol: Protocol = Field(default_factory=Protocol, description="the training-attack protocol (see protocol)")
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig,  # where runs execute (not in run ids)
                                     description="where runs execute; not part of run ids (see executor)")
    logging: LoggingConfig = Field(default_factory=LoggingConfig,
                                   description="live views of training; not part of run ids (see logging)")
    # published numbers of suite rows (not in run ids): reports show them beside the measured ones
    references: list[Reference] = Field(default_factory=list, description="published numbers of suite rows, "
                                                                          "shown beside the measured ones")
    tuning: TuningConfig | None = Field(None, description="equal tuning budgets (see tuning)")

    @field_validator("methods", mode="before")
    @classmethod
    def _methods_mapping(cls, value):
        """``methods: {label: {method: name, training: {...}, **params}}``; method defaults to the label."""
        if isinstance(value, list):  # a list of names is accepted too
            value = {item: {} for item in value} if all(isinstance(i, str) for i in value) else value
        if isinstance(value, dict):
            entries = []
            for label, params in value.items():
                if params is not None and not isinstance(params, dict):
                    raise ValueError(f"method {label!r}: expected a mapping of its options ({{}} for the "
                                     f"defaults, e.g. {{t: 4}}), got {_kind(params)}")
                params = dict(params or {})
                entries.append({"label": str(label), "method": params.pop("method", label),
                                "training": params.pop("training", {}) or {},
                                "search": params.pop("search", {}) or {}, "params": params})
            return entries
        return value

    @field_validator("threat", "protocol", "logging", "tuning", mode="before")
    @classmethod
    def _empty_section(cls, value, info):
        return value if value is not None else ({} if info.field_name != "tuning" else None)

    def teacher(self, name: str) -> TeacherSpec:
        return next(t for t in self.teachers if t.name == name)

    def training_for(self, overrides: dict, where: str) -> TrainingConfig:
        return validate_options(TrainingConfig, deep_merge(self.training.model_dump(mode="json"), overrides), where)

    def uses_teacher(self, spec: MethodSpec) -> bool:
        return METHODS.get(spec.method).uses_teacher or METHODS.get(spec.method).uses_teacher_features

    def pairs(self, method: MethodSpec, teacher: TeacherSpec) -> bool:
        """Whether ``method`` distills from ``teacher``: one teacher for a one-teacher method, a group
        with exactly the method's roles for a multi-teacher one; and the teacher's ``methods``, if given."""
        kind_matches = set(METHODS.get(method.method).teacher_roles) == set(teacher.group or ())
        return kind_matches and (teacher.methods is None or method.label in teacher.methods)


# ----------------------------------------------------------------------------------------------
# loading, overrides, errors


def load_suite(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Suite:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"suite file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the suite file ({exc.strerror or type(exc).__name__})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a text (UTF-8) file: byte {exc.start} is {exc.object[exc.start]:#04x}; "
                          f"a suite is a YAML file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        if isinstance(exc, yaml.reader.ReaderError):
            where = f" byte {exc.position}"
        raise ConfigError(f"{path}:{where} is not valid YAML: {problem}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a suite is a YAML mapping (name, dataset, students, methods, ...)")
    return suite_from_dict(apply_overrides(raw, overrides), source=str(path))


def suite_from_dict(raw: dict, source: str = "suite") -> Suite:
    suite = validate_options(Suite, raw, source, root=True)
    check_suite(suite, source)
    return suite


def apply_overrides(raw: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """``dotted.key=value`` (value parsed as YAML); list items by index: ``students.0.model=mlp``."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected dotted.key=value")
        key, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"--set {key}: the value {text!r} is not valid YAML: {problem}") from None
        node: Any = raw
        parts = key.strip().split(".")
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"--set {key}: {'.'.join(parts[:index]) or 'suite'} has no item {part!r}")
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    if node.get(part) is None:
                        node[part] = {}
                    node = node[part]
            else:
                raise ConfigError(f"--set {key}: {'.'.join(parts[:index])} is not a mapping")
    return raw


def validate_options(model: type[BaseModel], data: Any, where: str, root: bool = False):
    if not (isinstance(model, type) and issubclass(model, BaseModel)):  # a plugin's broken Params
        raise ConfigError(f"{where}: its options class (Params) is {model!r}, not a pydantic model "
                          f"(a broken plugin?)")
    try:
        return model.model_validate(data if data is not None else {})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, model, where, root)) from None
    except (ValueError, TypeError, AttributeError, KeyError, LookupError, ArithmeticError, RuntimeError,
            OSError) as exc:  # raised inside a validator (pydantic wraps ValueError only): still a bad option
        message = str(exc).splitlines()[0] if str(exc) else ""
        raise ConfigError(f"{where}: {type(exc).__name__} while checking the options of "
                          f"{model.__module__}.{model.__qualname__}{': ' + message if message else ''}") from None


def format_validation_error(exc: ValidationError, model: type[BaseModel], where: str, root: bool = False) -> str:
    error = exc.errors()[0]
    loc = [str(part) for part in error["loc"]]
    path = ".".join(loc)
    prefix = f"{where}: " if root else (f"{where}." if path else where)
    see = docs_link(model, error["loc"])
    see = f" (see {see})" if see else ""
    if error["type"] == "extra_forbidden":
        known = _fields_at(model, error["loc"][:-1])
        close = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else (f"; known: {', '.join(known)}" if known else "")
        return f"{prefix}{path}: unknown field{hint}{see}"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "missing":
        message = "required field is missing"
    return (f"{prefix}{path}: {message}" if path else f"{prefix}: {message}") + see


# ----------------------------------------------------------------------------------------------
# where the docs describe a field (docs/suites.md and docs/parameters.md, generated by
# rkbench/reference.py from these same models: the anchors below are the headings it writes)

SUITE_DOCS = "docs/suites.md"
PARAMETERS_DOCS = "docs/parameters.md"


def suite_sections() -> list[tuple[str, type[BaseModel]]]:
    """(dotted path, model) of the suite and of every section nested in it (through lists, mappings
    and optionals), root first; each is one section of docs/suites.md, anchored at the path."""
    found: list[tuple[str, type[BaseModel]]] = []
    seen: set[type] = set()

    def models_in(annotation: Any) -> list[type[BaseModel]]:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return [annotation]
        return [m for arg in typing.get_args(annotation) for m in models_in(arg)]

    def visit(path: str, model: type[BaseModel]) -> None:
        if model in seen:
            return
        seen.add(model)
        found.append((path, model))
        for name, field in model.model_fields.items():
            for inner in models_in(field.annotation):
                visit(f"{path}.{name}" if path else name, inner)

    visit("", Suite)
    return found


def _section_of(model: type[BaseModel], loc: tuple) -> str | None:
    """The anchor of the deepest suite section along ``loc`` inside ``model`` (a suite section)."""
    paths = {m: p for p, m in suite_sections()}
    if model not in paths:
        return None
    path, current = paths[model], model
    for part in loc:
        current = _unwrap(current, part)
        if isinstance(current, type) and issubclass(current, BaseModel) and current in paths:
            path = paths[current]
        elif current is None or not typing.get_args(current):
            break
    return path.replace(".", "-") if path else "top-level"


def docs_link(model: type[BaseModel], loc: tuple = ()) -> str | None:
    """The docs page (and anchor) that describes field ``loc`` of ``model``: a suite section, or the
    parameters of the one registered thing whose ``Params`` it is (of its kind when several share it)."""
    section = _section_of(model, loc)
    if section is not None:
        return f"{SUITE_DOCS}#{section}"
    for prefix, registry in (("method", METHODS), ("attack", ATTACKS), ("dataset", DATASETS),
                             ("teacher-source", TEACHER_SOURCES)):
        owners = [entry.name for entry in registry if getattr(entry.obj, "Params", None) is model]
        if len(owners) == 1:
            return f"{PARAMETERS_DOCS}#{prefix}-{owners[0]}".replace("_", "-").lower()
        if owners:
            return f"{PARAMETERS_DOCS}#{prefix}s"
    return None


def _fields_at(model: Any, loc: tuple) -> list[str]:
    """The field names of the (nested) pydantic model found along ``loc``, for did-you-mean."""
    current = model
    for part in loc:
        current = _unwrap(current, part)
        if current is None:
            return []
    return sorted(current.model_fields) if isinstance(current, type) and issubclass(current, BaseModel) else []


def _unwrap(annotation: Any, part: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        field = annotation.model_fields.get(str(part))
        return field.annotation if field else None
    origin = typing.get_origin(annotation)
    if origin in (list, tuple, dict) and isinstance(part, (int, str)):
        args = typing.get_args(annotation)
        return args[-1] if args else None
    for arg in typing.get_args(annotation):  # Optional / Union
        found = _unwrap(arg, part)
        if found is not None:
            return found
    return None


def _named(registry, name: str, where: str) -> None:
    try:
        registry.check(name)
    except RkbenchError as exc:
        anchor = registry.kind.replace(" ", "-") + "s"  # the registry's section: method -> #methods
        raise ConfigError(f"{where}: {exc} (see {PARAMETERS_DOCS}#{anchor})") from None


def check_suite(suite: Suite, source: str) -> None:
    """Names against registries, option blocks against their ``Params``; normalizes options."""
    _named(DATASETS, suite.dataset.name, f"{source}: dataset.name")
    params = validate_options(DATASETS.get(suite.dataset.name).Params, suite.dataset.options, f"{source}: dataset")
    suite.dataset.options = params.for_identity()  # dataset.validation only when set: older run ids hold

    for index, student in enumerate(suite.students):
        where = f"{source}: students.{index}"
        _named(MODELS, student.model, f"{where}.model")
        try:
            student.options = check_model_options(student.model, student.options)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    _unique([s.name for s in suite.students], f"{source}: students", "student name")

    for spec in suite.methods:
        where = f"{source}: methods.{spec.label}"
        _named(METHODS, spec.method, f"{where}.method" if spec.method != spec.label else where)
        _no_attack_mode(spec.params, where)
        params = validate_options(METHODS.get(spec.method).Params, spec.params, where)
        spec.params = params.model_dump(mode="json", exclude_unset=False)
        suite.training_for(spec.training, f"{where}.training")

    for index, teacher in enumerate(suite.teachers):
        if teacher.group is not None:
            continue  # checked below, once every teacher's name is known
        where = f"{source}: teachers.{index}"
        _named(TEACHER_SOURCES, teacher.source, f"{where}.source")
        option = TEACHER_SOURCES.get(teacher.source).name_option  # e.g. robustbench: model_name = the name
        options = {option: teacher.name, **teacher.options} if option else teacher.options
        params = validate_options(TEACHER_SOURCES.get(teacher.source).Params, options, where)
        teacher.options = params.model_dump(mode="json")
        if "model" in teacher.options:
            _named(MODELS, teacher.options["model"], f"{where}.model")
            try:
                teacher.options["model_options"] = check_model_options(teacher.options["model"],
                                                                       teacher.options.get("model_options", {}))
            except ConfigError as exc:
                raise ConfigError(f"{where}.model_options: {exc}") from None
        if "method" in teacher.options:
            _named(METHODS, teacher.options["method"], f"{where}.method")
            if METHODS.get(teacher.options["method"]).uses_teacher:
                raise ConfigError(f"{where}.method: {teacher.options['method']!r} needs a teacher itself; "
                                  f"train teachers with a teacher-free method such as 'at' or 'natural'")
            _no_attack_mode(teacher.options.get("method_params") or {}, f"{where}.method_params")
            method_params = validate_options(METHODS.get(teacher.options["method"]).Params,
                                             teacher.options.get("method_params", {}), f"{where}.method_params")
            teacher.options["method_params"] = method_params.model_dump(mode="json")
            suite.training_for(teacher.options.get("training", {}), f"{where}.training")
    _unique([t.name for t in suite.teachers], f"{source}: teachers", "teacher name")
    labels = [m.label for m in suite.methods]
    for index, teacher in enumerate(suite.teachers):
        for label in teacher.methods or []:
            if label not in labels:
                close = difflib.get_close_matches(label, labels, n=1, cutoff=0.5)
                hint = f"; did you mean {close[0]!r}?" if close else f"; the suite's methods: {', '.join(labels)}"
                raise ConfigError(f"{source}: teachers.{index}.methods: no method labelled {label!r}{hint}")
    _unique([m.label for m in suite.methods], f"{source}: methods", "method label")
    _check_groups(suite, source)

    needing = [m.label for m in suite.methods if suite.uses_teacher(m) and not METHODS.get(m.method).teacher_roles]
    if needing and not any(t.group is None for t in suite.teachers):
        raise ConfigError(f"{source}: teachers: methods {', '.join(needing)} distill from a teacher, "
                          f"but the suite names none")

    check_references(suite, source)

    check_selection(suite, source)
    check_tuning(suite, source)

    for index, attack in enumerate(suite.evaluation.attacks):
        where = f"{source}: evaluation.attacks.{index}"
        _named(ATTACKS, attack.name, f"{where}.name")
        cls = ATTACKS.get(attack.name)
        if not isinstance(cls.defaults, dict):  # a plugin's broken preset
            raise ConfigError(f"{where}.name: attack {attack.name!r} has defaults {cls.defaults!r}, not a mapping "
                              f"of options (a broken plugin?)")
        params = validate_options(cls.Params, {**cls.defaults, **attack.options}, where)
        attack.options = {k: v for k, v in params.model_dump(mode="json").items()}
        if cls.needs_source_model:
            _check_source(suite, attack.options.get("source"), f"{where}.source")
    _unique([a.label for a in suite.evaluation.attacks], f"{source}: evaluation.attacks", "attack label")


def check_selection(suite: Suite, source: str) -> None:
    """``checkpoint: best`` (the suite's or a method's) needs a validation split and a known attack."""
    trainings = [("training", suite.training)] + [
        (f"methods.{m.label}.training", suite.training_for(m.training, f"{source}: methods.{m.label}.training"))
        for m in suite.methods]
    for where, training in trainings:
        if training.checkpoint != "best":
            continue
        if suite.dataset.options.get("validation") is None:
            raise ConfigError(f"{source}: {where}.checkpoint: 'best' selects on the validation split; set "
                              f"dataset.validation (a count such as 1000, or a fraction such as 0.1)")
        _named(ATTACKS, training.selection.attack, f"{source}: {where}.selection.attack")
        cls = ATTACKS.get(training.selection.attack)
        validate_options(cls.Params, {**cls.defaults, **training.selection.attack_options},
                         f"{source}: {where}.selection.attack_options")


def check_tuning(suite: Suite, source: str) -> None:
    """A tuned suite: a validation split, and a search space for every method whose every value
    validates (as a method parameter, or as a ``training.`` field); a grid holds the budget."""
    tuning = suite.tuning
    searched = [m for m in suite.methods if m.search]
    if tuning is None:
        if searched:
            raise ConfigError(f"{source}: methods.{searched[0].label}.search: a search space needs a "
                              f"tuning section (tuning: {{budget: K}})")
        return
    if suite.dataset.options.get("validation") is None:
        raise ConfigError(f"{source}: tuning: trials are scored on the validation split; set dataset.validation "
                          f"(a count such as 1000, or a fraction such as 0.1)")
    for spec in suite.methods:
        where = f"{source}: methods.{spec.label}.search"
        if not spec.search:
            raise ConfigError(f"{where}: a tuned suite gives every method the same budget; give "
                              f"{spec.label!r} a search space too (e.g. search: {{param: [a, b]}})")
        size = 1
        for key, values in spec.search.items():
            if not values:
                raise ConfigError(f"{where}.{key}: give a non-empty list of values")
            size *= len(values)
            for value in values:
                if key.startswith("training."):
                    override: dict = {}
                    node = override
                    parts = key.split(".")[1:]
                    for part in parts[:-1]:
                        node = node.setdefault(part, {})
                    node[parts[-1]] = value
                    suite.training_for(deep_merge(spec.training, override), f"{where}.{key}")
                else:
                    validate_options(METHODS.get(spec.method).Params, {**spec.params, key: value}, where)
        if tuning.sampler == "grid" and size < tuning.budget:
            raise ConfigError(f"{where}: the grid has {size} configuration(s), fewer than tuning.budget "
                              f"{tuning.budget}; lower the budget or widen the search")


def _check_source(suite: Suite, name: str | None, where: str) -> None:
    """A transfer attack's source: "teacher", a single teacher of the suite, or a run id (12 hex digits)."""
    names = [t.name for t in suite.teachers if t.group is None]
    if name == "teacher" or name in names or re.fullmatch(r"[0-9a-f]{12}", str(name)):
        return
    close = difflib.get_close_matches(str(name), ["teacher", *names], n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"{where}: {name!r} is not 'teacher', a teacher of the suite ({', '.join(names) or 'none'}) "
                      f"or a run id (12 hex digits){hint}")


def check_references(suite: Suite, source: str) -> None:
    """Each reference names a row the suite runs: its student, its method label and, for a method
    that distills, one of the teachers that method is paired with (none for the others)."""
    seen = set()
    students = [s.name for s in suite.students]
    methods = {m.label: m for m in suite.methods}
    for index, reference in enumerate(suite.references):
        where = f"{source}: references.{index}"
        for field, name, known in (("student", reference.student, students), ("method", reference.method, methods)):
            if name not in known:
                close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
                hint = f"; did you mean {close[0]!r}?" if close else f"; the suite's: {', '.join(known)}"
                raise ConfigError(f"{where}.{field}: no {field} {name!r} in the suite{hint}")
        spec = methods[reference.method]
        if not suite.uses_teacher(spec):
            if reference.teacher is not None:
                raise ConfigError(f"{where}.teacher: method {spec.label!r} has no teacher; drop the teacher")
        else:
            paired = [t.name for t in suite.teachers if suite.pairs(spec, t)]
            if reference.teacher not in paired:
                raise ConfigError(f"{where}.teacher: {reference.teacher!r} is not a teacher of method "
                                  f"{spec.label!r}; its teachers: {', '.join(paired)}")
        if reference.row in seen:
            raise ConfigError(f"{where}: a second reference for {' x '.join(reference.row)}; give one per row")
        seen.add(reference.row)


def _check_groups(suite: Suite, source: str) -> None:
    """Groups name the suite's single teachers; each method is paired with teachers of its kind."""
    singles = [t.name for t in suite.teachers if t.group is None]
    by_label = {m.label: m for m in suite.methods}
    for index, teacher in enumerate(suite.teachers):
        where = f"{source}: teachers.{index}"
        for role, name in (teacher.group or {}).items():
            if name not in singles:
                close = difflib.get_close_matches(name, singles, n=1, cutoff=0.5)
                hint = (f"; did you mean {close[0]!r}?" if close
                        else f"; the suite's teachers: {', '.join(singles) or 'none'}")
                raise ConfigError(f"{where}.group.{role}: no teacher named {name!r} (a group names single "
                                  f"teachers){hint}")
        for label in teacher.methods or []:
            roles = METHODS.get(by_label[label].method).teacher_roles
            if set(roles) != set(teacher.group or ()):
                wanted = (f"distills from a group with roles {', '.join(roles)}" if roles
                          else "distills from one teacher, not a group")
                raise ConfigError(f"{where}.methods: {label!r} {wanted}")
    for spec in suite.methods:
        roles = METHODS.get(spec.method).teacher_roles
        if roles and not any(suite.pairs(spec, teacher) for teacher in suite.teachers):
            example = ", ".join(f"{role}: NAME" for role in roles)
            raise ConfigError(f"{source}: methods.{spec.label}: distills from teachers {', '.join(roles)}; add a "
                              f"teacher group for it, e.g. {{name: both, group: {{{example}}}}}")


def _no_attack_mode(params: dict, where: str) -> None:
    """A method's own ``attack_mode`` is gone: one switch, the suite's protocol, decides for every method."""
    if "attack_mode" in params:
        raise ConfigError(f"{where}.attack_mode: a method has no attack mode of its own; set the suite's "
                          f"`protocol: {{attack_mode: official | eval | train}}` (docs/methods.md)")


def _unique(names: list[str], where: str, what: str) -> None:
    seen = set()
    for name in names:
        if name in seen:
            raise ConfigError(f"{where}: {what} {name!r} appears twice; give each a distinct name")
        seen.add(name)


def deep_merge(base: dict, overrides: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


# ----------------------------------------------------------------------------------------------
# expansion into runs


def config_hash(identity: dict, length: int = 12) -> str:
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:length]


@dataclass
class TeacherPlan:
    spec: TeacherSpec
    identity: dict
    training: TrainingConfig | None  # for teachers trained in the suite
    attack_mode: str | None = None  # ... the mode their method crafts in under the suite's protocol
    members: dict[str, TeacherPlan] | None = None  # a group: its teachers by role

    @property
    def teacher_id(self) -> str:
        return config_hash(self.identity)

    @property
    def label(self) -> str:
        """The name reports show: the teacher's, or every member's with its role (clean=a,robust=b)."""
        if self.members is None:
            return self.spec.name
        return ",".join(f"{role}={plan.spec.name}" for role, plan in self.members.items())

    def single_teachers(self) -> list[TeacherPlan]:
        return list(self.members.values()) if self.members is not None else [self]


@dataclass
class RunSpec:
    suite: str
    dataset: DatasetSpec
    threat: ThreatModel
    teacher: TeacherPlan | None
    student: StudentSpec
    method: MethodSpec
    training: TrainingConfig
    seed: int
    protocol: Protocol

    @property
    def attack_mode(self) -> str | None:
        """The mode this run crafts its training examples in: train, eval, free (exempt) or None."""
        return self.protocol.mode_of(self.method.method)

    def identity(self) -> dict:
        """Everything that changes the trained student; the evaluation is not part of it, so a
        new attack is added to finished runs without retraining them."""
        return {
            "schema": SCHEMA_VERSION,
            "dataset": {"name": self.dataset.name, "options": self.dataset.options},
            "threat": self.threat.model_dump(mode="json"),
            "teacher": self.teacher.identity if self.teacher else None,
            "student": {"model": self.student.model, "options": self.student.options},
            "method": {"name": self.method.method, "params": self.method.params},
            "training": self.training.for_identity(),
            "protocol": self.protocol.model_dump(mode="json"),
            "seed": self.seed,
        }

    @property
    def run_id(self) -> str:
        return config_hash(self.identity())

    def describe(self) -> dict:
        return {"run_id": self.run_id, "teacher": self.teacher.label if self.teacher else "-",
                "student": self.student.name, "method": self.method.label, "seed": self.seed,
                "protocol": self.protocol.attack_mode, "attack_mode": self.attack_mode}


def plan_teacher(suite: Suite, spec: TeacherSpec) -> TeacherPlan:
    source = TEACHER_SOURCES.get(spec.source)()
    params = source.Params(**spec.options)
    identity = {"source": spec.source, **source.identity(params)}
    training, attack_mode = None, None
    if source.trains:
        attack_mode = suite.protocol.mode_of(params.method) if getattr(params, "method", None) else None
        training = suite.training_for(spec.options.get("training", {}), f"teachers.{spec.name}.training")
        # a teacher keeps its last epoch whatever the students' checkpoint (no validation pass trains it)
        identity = {**identity, "schema": SCHEMA_VERSION,
                    "training": {k: v for k, v in training.for_identity().items() if k not in ("checkpoint",
                                                                                               "selection")},
                    "dataset": {"name": suite.dataset.name, "options": suite.dataset.options},
                    "threat": suite.threat.model_dump(mode="json"),
                    "protocol": suite.protocol.model_dump(mode="json")}
    return TeacherPlan(spec, identity, training, attack_mode)


def plan_group(spec: TeacherSpec, singles: dict[str, TeacherPlan]) -> TeacherPlan:
    """A group's identity is its members' by role: a run of it names every teacher it distills from."""
    members = {role: singles[name] for role, name in spec.group.items()}
    return TeacherPlan(spec, {"group": {role: plan.identity for role, plan in members.items()}}, None,
                       members=members)


def expand(suite: Suite) -> tuple[list[TeacherPlan], list[RunSpec]]:
    """teacher x student x method x seed; methods without a teacher run once per student and seed.
    The teacher plans returned are the single teachers; a group's runs hold a plan of its members."""
    singles = {spec.name: plan_teacher(suite, spec) for spec in suite.teachers if spec.group is None}
    plans = [singles[spec.name] if spec.group is None else plan_group(spec, singles) for spec in suite.teachers]
    teachers = list(singles.values())
    runs: list[RunSpec] = []
    seen: set[str] = set()
    for method in suite.methods:
        training = suite.training_for(method.training, f"methods.{method.label}.training")
        paired = [t for t in plans if suite.pairs(method, t.spec)]
        for teacher in (paired if suite.uses_teacher(method) else [None]):
            for student in suite.students:
                for seed in training.seeds:
                    run = RunSpec(suite.name, suite.dataset, suite.threat, teacher, student, method, training, seed,
                                  suite.protocol)
                    if run.run_id not in seen:
                        seen.add(run.run_id)
                        runs.append(run)
    return teachers, runs
