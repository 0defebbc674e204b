"""Run directories on disk: atomic writes, the file layout, and reading results back.

A run directory is the unit of truth: reports, resume and merges read these files, never the
in-memory state of a run. Nothing here imports torch (reports must not need it).
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

RUNS = "runs"
TEACHERS = "teachers"
CONFIG = "config.json"
METRICS = "metrics.json"
PER_EXAMPLE = "per_example.npz"
STUDENT = "student.pt"
TEACHER = "teacher.pt"
CHECKPOINT = "checkpoint.pt"
LOG = "log.txt"
# inside per_example.npz: one bool array per label ("clean", each attack), "<label>__evaluated"
# (was the attack run on that example), "__labels" (the true classes)
CLEAN = "clean"
EVALUATED = "__evaluated"
LABELS = "__labels"


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "w") -> None:
    """Write through a temporary file in the same directory and rename: a crash never leaves a
    half-written file under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temporaries(directory: Path) -> None:
    """Delete ``.<name>.*.tmp`` files that a process killed in the middle of ``atomic_write`` left
    (call it only where no other process writes)."""
    if Path(directory).is_dir():
        for path in Path(directory).glob(".*.tmp"):
            path.unlink(missing_ok=True)


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda h: json.dump(data, h, indent=2, sort_keys=True, default=str))


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda h: h.write(text))


def read_json(path: Path) -> Any:
    with open(path) as handle:
        return json.load(handle)


def read_json_or_none(path: Path) -> Any:
    """The file's JSON, or None when it is missing or unreadable (a result not written yet)."""
    try:
        return read_json(path) if Path(path).is_file() else None
    except (OSError, ValueError):
        return None


def run_dir(results_dir: Path, run_id: str) -> Path:
    return Path(results_dir) / RUNS / run_id


def teacher_dir(results_dir: Path, teacher_id: str) -> Path:
    return Path(results_dir) / TEACHERS / teacher_id


def append_log(path: Path, line: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(line.rstrip("\n") + "\n")


def holds_results(path: Path) -> bool:
    """A results directory: it has runs/ or teachers/ in it."""
    return (Path(path) / RUNS).is_dir() or (Path(path) / TEACHERS).is_dir()


def iter_result_dirs(results_dir: Path, kind: str = RUNS):
    base = Path(results_dir) / kind
    if base.is_dir():
        yield from sorted(p for p in base.iterdir() if p.is_dir())


# ----------------------------------------------------------------------------------------------
# the schema of metrics.json, checked whenever results are read back (reports, leaderboards)

Accuracy = Annotated[float, Field(ge=0, le=1)]


class RunMetrics(BaseModel):
    """What a run's (or a teacher's) ``metrics.json`` must hold to be reported. Fields the runner
    adds later are allowed; a file that breaks these types is not an rkbench result."""

    model_config = ConfigDict(extra="allow")

    run_id: str = Field(min_length=1)
    status: Literal["finished", "failed"]
    error: str | None = None
    teacher: str | None = None
    student: str | None = None
    method: str | None = None
    seed: int | None = None
    n_examples: int | None = Field(None, ge=0)
    clean_accuracy: Accuracy | None = None
    robust_accuracy: dict[str, Accuracy | None] = Field(default_factory=dict)
    worst_case_accuracy: Accuracy | None = None
    train_seconds: float | None = Field(None, ge=0)
    parameters: int | None = Field(None, ge=0)
    flags: list[dict] | None = None


def read_metrics(directory: Path) -> tuple[dict | None, str | None]:
    """(metrics, None) for a valid ``metrics.json``; (None, None) when there is none yet (a run in
    progress); (None, reason) for a corrupt or foreign file."""
    path = Path(directory) / METRICS
    if not path.is_file():
        return None, None
    try:
        data = read_json(path)
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"unreadable ({type(exc).__name__})"
    except json.JSONDecodeError as exc:
        return None, f"not JSON (line {exc.lineno}: {exc.msg})"
    if not isinstance(data, dict):
        return None, f"not an rkbench metrics file (a JSON {type(data).__name__}, not an object)"
    try:
        RunMetrics.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]) or "file"
        return None, f"not an rkbench metrics file ({where}: {error['msg']})"
    if data["run_id"] != Path(directory).name:
        return None, f"run_id {data['run_id']!r} does not match its directory (a copied file?)"
    return data, None


_REPORTED: set[tuple] = set()


def load_valid_metrics(directory: Path) -> dict | None:
    """Validated metrics or None; a corrupt or foreign file gets one line on stderr (once per
    process and file version) and is skipped, never an exception."""
    metrics, problem = read_metrics(directory)
    if problem:
        path = Path(directory) / METRICS
        try:
            key = (str(path), path.stat().st_mtime_ns)
        except OSError:
            key = (str(path), None)
        if key not in _REPORTED:
            _REPORTED.add(key)
            print(f"warning: skipped {path}: {problem}", file=sys.stderr)
    return metrics
