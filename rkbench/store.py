"""Run directories on disk: atomic writes, the file layout, and reading results back.

A run directory is the unit of truth: reports, resume and merges read these files, never the
in-memory state of a run. Nothing here imports torch (reports must not need it).
"""
from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any, Callable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

RUNS = "runs"
TEACHERS = "teachers"
CONFIG = "config.json"
METRICS = "metrics.json"
PER_EXAMPLE = "per_example.npz"
MODEL = "model.safetensors"  # a student's or an in-suite teacher's weights (docs/sharing.md)
MODEL_CONFIG = "model.json"  # ... and how to rebuild the network around them
STUDENT = "student.pt"  # weights written before model.safetensors (still read, weights_only=True)
TEACHER = "teacher.pt"
CHECKPOINT = "checkpoint.pt"
LOG = "log.txt"
REFERENCES = "references.json"  # per results directory: the published numbers of each suite's rows
LOCK = "lock"


def current_umask() -> int:
    """The process's umask (read from /proc where it can be, without changing it)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
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
        # mkstemp makes the file 0600; the final file follows the umask like any other (lab-mates read it)
        os.chmod(tmp, 0o666 & ~current_umask())
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


def weights_file(directory: Path, legacy: str) -> Path | None:
    """A run's (or teacher's) weights: ``model.safetensors``, else the ``legacy`` torch file
    (``student.pt`` / ``teacher.pt`` of older runs), else None."""
    for name in (MODEL, legacy):
        if (Path(directory) / name).is_file():
            return Path(directory) / name
    return None


_WARNED: set[str] = set()


def read_config(directory: Path) -> dict | None:
    """A run's or teacher's ``config.json`` as a mapping, or None when it is missing or is not one
    (truncated, garbled, of another shape: readers then fall back on the record's names; a line on
    stderr names the file, once per process)."""
    path = Path(directory) / CONFIG
    data = read_json_or_none(path)
    nested = ("identity", "evaluation")  # the run's identity, and the protocol it was evaluated with (export)
    scalars = isinstance(data, dict) and all(value is None or isinstance(value, (str, int, float))
                                             for key, value in data.items() if key not in nested) \
        and all(isinstance(data.get(key) or "", str) for key in ("suite", "teacher", "student", "method"))
    if scalars and all(data.get(key) is None or isinstance(data.get(key), dict) for key in nested):
        return data
    if path.exists() and str(path) not in _WARNED:
        _WARNED.add(str(path))
        import sys

        print(f"warning: ignored {path}: not an rkbench run config (a JSON object with an 'identity' "
              f"object)", file=sys.stderr)
    return None


def check_writable(directory: Path) -> None:
    """Create ``directory`` if needed and write a file into it; one line (``RkbenchError``) when it
    cannot be, before any training starts."""
    from .errors import RkbenchError

    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".write-check.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise RkbenchError(f"results directory {directory} is not writable ({exc.strerror or exc}); "
                           f"free it or choose another with --results-dir") from None


def run_dir(results_dir: Path, run_id: str) -> Path:
    return Path(results_dir) / RUNS / run_id


def teacher_dir(results_dir: Path, teacher_id: str) -> Path:
    return Path(results_dir) / TEACHERS / teacher_id


def append_log(path: Path, line: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(line.rstrip("\n") + "\n")


def _owner() -> dict:
    job = os.environ.get("SLURM_JOB_ID")
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    return {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job": job,
            "since": time.strftime("%Y-%m-%dT%H:%M:%S")}


class DirectoryLock:
    """A run (or teacher) directory claimed by exactly one process: an exclusive ``flock`` on
    ``<dir>/lock``, which names its owner (host, pid, Slurm job). The kernel drops the lock when
    the owner dies however it dies (SIGKILL, a requeued job), so the next process takes over the
    stale file of a dead owner; ``previous`` then names that owner. Works across hosts wherever
    the file system supports ``flock`` (local disks; NFS on Linux)."""

    def __init__(self, directory: Path):
        self.path = Path(directory) / LOCK
        self._fd: int | None = None
        self.previous: dict | None = None  # the dead owner whose lock was recovered

    def acquire(self, blocking: bool = False) -> bool:
        import fcntl

        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                os.close(fd)
                return False
            try:  # the owner we waited for removes the file as it releases: then lock the new one
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        left = os.read(fd, 4096)
        try:
            self.previous = json.loads(left) if left.strip() else None
        except ValueError:
            self.previous = None
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(_owner()).encode())
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # still holding it: nobody locks a file about to go
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "DirectoryLock":
        self.acquire(blocking=True)
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def lock_owner(directory: Path) -> dict | None:
    """Who holds ``<directory>/lock`` now (host, pid, slurm_job), or None when nobody does."""
    import fcntl

    path = Path(directory) / LOCK
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 4096)
            try:
                return json.loads(text) if text.strip() else {}
            except ValueError:
                return {}
        return None  # a stale file: its owner is gone
    finally:
        os.close(fd)


def holds_results(path: Path) -> bool:
    """A results directory: it has runs/ or teachers/ in it."""
    return (Path(path) / RUNS).is_dir() or (Path(path) / TEACHERS).is_dir()


def iter_result_dirs(results_dir: Path, kind: str = RUNS):
    base = Path(results_dir) / kind
    if base.is_dir():
        yield from sorted(p for p in base.iterdir() if p.is_dir())


# ----------------------------------------------------------------------------------------------
# published numbers: a suite's ``references`` (validated at load), copied into the results
# directory so that reports, which read files only, can put them beside the measured ones

Percent = Annotated[float, Field(ge=0, le=100)]
REFERENCE_METRICS = ("clean", "pgd20", "autoattack")  # leaderboard columns (accuracy in %)


class Reference(BaseModel):
    """The published accuracy (in %) of one suite row: teacher x student x method label
    (``teacher`` omitted or ``-`` for a method without a teacher)."""

    model_config = ConfigDict(extra="forbid")

    teacher: str | None = Field(None, description="the teacher's name (omitted or '-' without one)")
    student: str = Field(min_length=1, description="the student's name")
    method: str = Field(min_length=1, description="the method label")
    paper: str = Field(min_length=1, description="e.g. 'ARD (Goldblum et al., AAAI 2020)'")
    table: str = Field(min_length=1, description="where in the paper, e.g. 'Table 2'")
    clean: Percent | None = Field(None, description="published clean accuracy, %")
    pgd20: Percent | None = Field(None, description="published PGD-20 accuracy, %")
    autoattack: Percent | None = Field(None, description="published AutoAttack accuracy, %")
    note: str = Field("", description="free text, e.g. how the published setting differs")

    @model_validator(mode="after")
    def _some_number(self):
        if self.teacher == "-":
            self.teacher = None
        if all(getattr(self, metric) is None for metric in REFERENCE_METRICS):
            raise ValueError(f"give at least one of {', '.join(REFERENCE_METRICS)}")
        return self

    @property
    def row(self) -> tuple[str, str, str]:
        return (self.teacher or "-", self.student, self.method)


def write_references(results_dir: Path, suite: str, references: list[Reference]) -> None:
    """Record ``suite``'s references in ``results_dir/references.json`` (other suites' entries kept)."""
    path = Path(results_dir) / REFERENCES
    document = read_json_or_none(path)
    document = document if isinstance(document, dict) else {}
    document[suite] = [reference.model_dump(mode="json") for reference in references]
    if not references:
        del document[suite]
    if document or path.exists():
        write_json(path, document)


def read_references(results_dir: Path) -> tuple[dict[str, list[Reference]], str | None]:
    """({suite: [Reference]}, None), or ({}, reason) for a file that is not a references file."""
    path = Path(results_dir) / REFERENCES
    if not path.is_file():
        return {}, None
    try:
        document = read_json(path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return {}, f"unreadable ({type(exc).__name__})"
    if not isinstance(document, dict):
        return {}, "not a mapping of suite names to references"
    found = {}
    for suite, entries in document.items():
        try:
            found[suite] = [Reference.model_validate(entry) for entry in entries]
        except (ValidationError, TypeError) as exc:
            detail = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
            return {}, f"suite {suite!r}: {detail}"
    return found, None
