"""Run directories on disk: atomic writes, the file layout, and reading results back.

A run directory is the unit of truth: reports, resume and merges read these files, never the
in-memory state of a run. Nothing here imports torch (reports must not need it).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

RUNS = "runs"
TEACHERS = "teachers"
CONFIG = "config.json"
METRICS = "metrics.json"
PER_EXAMPLE = "per_example.npz"
STUDENT = "student.pt"
TEACHER = "teacher.pt"
CHECKPOINT = "checkpoint.pt"
LOG = "log.txt"


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


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda h: json.dump(data, h, indent=2, sort_keys=True, default=str))


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda h: h.write(text))


def read_json(path: Path) -> Any:
    with open(path) as handle:
        return json.load(handle)


def run_dir(results_dir: Path, run_id: str) -> Path:
    return Path(results_dir) / RUNS / run_id


def teacher_dir(results_dir: Path, teacher_id: str) -> Path:
    return Path(results_dir) / TEACHERS / teacher_id


def append_log(path: Path, line: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(line.rstrip("\n") + "\n")


def iter_result_dirs(results_dir: Path, kind: str = RUNS):
    base = Path(results_dir) / kind
    if base.is_dir():
        yield from sorted(p for p in base.iterdir() if p.is_dir())
