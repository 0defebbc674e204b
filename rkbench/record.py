"""The run record: one typed schema for every run's (and every teacher's) ``metrics.json``.

The runner builds a ``RunRecord`` and ``write_record`` is the only code that writes
``metrics.json``; resume, ``rkbench status``, reports and tests read it back with ``read_record``.
The schema has a version of its own, ``record_version``:

- 1: files written before the record had a version (the same fields, no ``record_version`` key);
  they read as they are;
- 2: ``record_version`` written;
- 3: this schema: ``losses`` (the mean total loss per epoch), ``corruptions`` (common corruptions,
  rkbench/corruptions.py), the checkpoint-selection fields (``epoch``, ``selected_on``,
  ``selection``, ``validation_curve``, ``tuning``) and the devices (``train_device``,
  ``eval_device``, ``eval_ieee_fp32``) added, all optional; files of version 1 and 2 read as they are.

A file with a newer version than this rkbench knows, a field of the wrong type or a field the
schema does not have is not read as a result: one line says which. Nothing here imports torch
(reports must not need it).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from . import store
from .errors import RkbenchError

RECORD_VERSION = 3

Accuracy = Annotated[float, Field(ge=0, le=1)]
Seconds = Annotated[float, Field(ge=0)]


class Flag(BaseModel):
    """An integrity flag of the evaluation: never changes a number, explains it."""

    model_config = ConfigDict(extra="forbid")

    code: str = Field(min_length=1)
    detail: str = ""


class CorruptionRecord(BaseModel):
    """The common-corruption evaluation of a model (rkbench/corruptions.py)."""

    model_config = ConfigDict(extra="forbid")

    key: str = Field(min_length=1)  # the corrupted set's hash: the record is current for this set only
    source: Literal["files", "generated"]
    n_examples: int = Field(ge=1)
    severities: list[int]
    accuracy: dict[str, list[Accuracy]]  # corruption -> accuracy at each severity
    mean: Accuracy  # over every corruption and severity
    skipped: dict[str, str] = Field(default_factory=dict)  # corruption -> why it could not be made


class DeviceInfo(BaseModel):
    """The device a run trained or was evaluated on (rkbench/device.py ``device_info``)."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(min_length=1)  # cpu, cuda, mps
    name: str | None = None  # the GPU's name (None on the CPU)
    cuda: str | None = None  # the CUDA version torch runs with (None on the CPU)
    cudnn: str | None = None  # the cuDNN version (None on the CPU)

    def label(self) -> str:
        """``cpu``, or ``cuda (NVIDIA A100-SXM4-40GB)``: how reports show it."""
        return f"{self.type} ({self.name})" if self.name else self.type


class RunRecord(BaseModel):
    """What one run (a student distilled with a method, or a teacher) produced."""

    model_config = ConfigDict(extra="forbid")

    record_version: int = Field(RECORD_VERSION, ge=1, le=RECORD_VERSION, strict=True)
    run_id: str = Field(min_length=1)
    status: Literal["finished", "failed"]
    error: str | None = None  # a failed run: the exception's first line

    # what ran: a student run names teacher (its label, "-" for none), student, method and seed;
    # a teacher names itself, its source and its model
    teacher: str | None = None
    student: str | None = None
    method: str | None = None
    seed: int | None = None
    model: str | None = None
    source: str | None = None  # teachers: where the teacher came from (train, robustbench, ...)
    protocol: Literal["official", "eval", "train"] | None = None  # the suite's training-attack protocol
    attack_mode: Literal["train", "eval", "free"] | None = None  # the BatchNorm mode examples were crafted in
    versions: dict[str, str] | None = None  # rkbench, torch, python
    # where it ran (absent in records before version 3): training and evaluation may differ, e.g.
    # a finished run evaluated again on another machine
    train_device: DeviceInfo | None = None
    eval_device: DeviceInfo | None = None
    eval_ieee_fp32: bool | None = None  # the attacks ran with TF32 off (IEEE float32)

    # training
    train_seconds: Seconds | None = None
    loss_terms: list[dict[str, float]] | None = None  # per epoch, the mean of each named loss term
    losses: list[float] | None = None  # per epoch, the mean total loss (every method; version 3)
    # which epoch's weights were evaluated (rkbench/selection.py, docs/tuning.md); absent in older files
    epoch: int | None = Field(None, ge=1)  # 1-based
    selected_on: Literal["last", "validation"] | None = None  # last epoch, or best on the validation split
    selection: dict[str, Any] | None = None  # metric, attack, every, n_examples, split, value (checkpoint: best)
    # per validated epoch {"epoch": e, "clean": a, "robust": b}, on the validation split (never the test split)
    validation_curve: list[dict[str, float | int]] | None = None
    # a tuned suite's final run (rkbench/tuning.py): budget, trials, sampler, metric, chosen, value, trial
    tuning: dict[str, Any] | None = None

    # the network
    parameters: int | None = Field(None, ge=0)
    madds: int | None = Field(None, ge=0)

    # the evaluation
    n_examples: int | None = Field(None, ge=0)
    clean_accuracy: Accuracy | None = None
    # None: the cascade ran the attack only on the examples still robust (not an accuracy)
    robust_accuracy: dict[str, Accuracy | None] | None = None
    attacked_fraction: dict[str, Accuracy] | None = None
    worst_case_accuracy: Accuracy | None = None
    attack_seconds: dict[str, Seconds] | None = None
    attacks: dict[str, dict[str, Any]] | None = None  # label -> {name, options}: what was run
    cascade: bool | None = None
    flags: list[Flag] | None = None
    threat: dict[str, Any] | None = None
    diagnostics: dict[str, float | int] | None = None  # evaluation.diagnostics (rkbench/diagnostics.py)
    corruptions: CorruptionRecord | None = None  # evaluation.corruptions (rkbench/corruptions.py)

    @model_validator(mode="after")
    def _complete(self):
        if self.status == "failed" and not self.error:
            raise ValueError("a failed run names its error")
        if self.status == "finished" and self.error:
            raise ValueError("a finished run has no error")
        return self

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    def evaluated_with(self, n_examples: int, threat: dict, attacks: dict[str, dict], exact: set[str]) -> bool:
        """Whether this record already holds an evaluation on ``n_examples`` examples under ``threat``
        with every attack of ``attacks`` (the ``exact`` ones with an accuracy of their own)."""
        recorded = self.attacks or {}
        return (self.n_examples == n_examples and self.threat == threat
                and all(recorded.get(label) == config for label, config in attacks.items())
                and all((self.robust_accuracy or {}).get(label) is not None for label in exact))


def write_record(directory: Path, record: RunRecord) -> None:
    """``directory/metrics.json``, atomically (the one writer of the file)."""
    store.write_json(Path(directory) / store.METRICS, record.model_dump(mode="json", exclude_none=True))


def read_record(directory: Path) -> tuple[RunRecord | None, str | None]:
    """(record, None) for a valid ``metrics.json``; (None, None) when there is none yet (a run in
    progress); (None, reason) for a corrupt, foreign or newer file."""
    path = Path(directory) / store.METRICS
    if not path.is_file():
        return (None, "not a file") if path.exists() else (None, None)
    try:
        data = store.read_json(path)
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"unreadable ({type(exc).__name__})"
    except json.JSONDecodeError as exc:
        return None, f"not JSON (line {exc.lineno}: {exc.msg})"
    if not isinstance(data, dict):
        return None, f"not an rkbench metrics file (a JSON {type(data).__name__}, not an object)"
    version = data.get("record_version", 1)
    if isinstance(version, int) and version > RECORD_VERSION:
        return None, (f"written by a newer rkbench (record version {version}; this one reads up to "
                      f"{RECORD_VERSION}): upgrade rkbench to read it")
    try:
        record = RunRecord.model_validate({"record_version": 1, **data})
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]) or "file"
        return None, f"not an rkbench metrics file ({where}: {error['msg']})"
    if record.run_id != Path(directory).name:
        return None, f"run_id {record.run_id!r} does not match its directory (a copied file?)"
    return record, None


class UnreadableRecord(RkbenchError):
    """A metrics.json that is there but not a record this rkbench reads (never overwritten)."""


def current_record(directory: Path) -> RunRecord | None:
    """The directory's record, or None when there is none yet. A file that is there but cannot be
    read as a record (corrupt, foreign, written by a newer rkbench) raises ``UnreadableRecord``:
    the runner then leaves the run alone rather than train it again over what is there."""
    record, problem = read_record(directory)
    if problem:
        raise UnreadableRecord(f"{Path(directory) / store.METRICS}: {problem}; left as it is (move it away "
                               f"to run this again)")
    return record


_REPORTED: set[tuple] = set()


def load_valid_record(directory: Path) -> RunRecord | None:
    """The valid record or None; a corrupt, foreign or newer file gets one line on stderr (once per
    process and file version) and is skipped, never an exception."""
    record, problem = read_record(directory)
    if problem:
        path = Path(directory) / store.METRICS
        try:
            key = (str(path), path.stat().st_mtime_ns)
        except OSError:
            key = (str(path), None)
        if key not in _REPORTED:
            _REPORTED.add(key)
            print(f"warning: skipped {path}: {problem}", file=sys.stderr)
    return record
