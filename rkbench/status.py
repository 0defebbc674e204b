"""``rkbench status DIR``: where every teacher and run of a results directory stands (pending,
running, finished, failed), with its Slurm job, read from the files alone (plus ``squeue`` when
there is one). Nothing here imports torch.

A run's state, first match wins: its ``metrics.json`` says finished or failed; a live process
holds its lock (running, with host and pid); Slurm lists its job (pending or running, with the
reason); it has an epoch checkpoint (interrupted: a rerun resumes it); else pending when it was
submitted to Slurm, not started otherwise.
"""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from . import store
from .record import read_record

JOBS = Path("slurm") / "jobs.json"


@dataclass
class Row:
    kind: str  # teacher | run
    id: str
    name: str
    state: str  # finished | failed | running | pending | interrupted | not started
    job: str | None = None
    detail: str = ""


def slurm_queue(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """{job id: (Slurm state, reason)} for the jobs Slurm still lists ({} without squeue)."""
    jobs = sorted({job.split("_")[0] for job in job_ids})
    if not jobs or shutil.which("squeue") is None:
        return {}
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T|%r", "-j", ",".join(jobs)], capture_output=True,
                             text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    states = {}
    for line in out.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            states[parts[0]] = (parts[1], parts[2])
    return states


def _name(directory: Path, kind: str) -> str:
    config = store.read_config(directory) or {}
    if not config:
        return ""
    if kind == "teacher":
        return str(config.get("teacher", ""))
    label = f"{config.get('student', '')} <- {config.get('method', '')}"
    return label + (f" ({config['teacher']})" if config.get("teacher") not in (None, "", "-") else "")


def status_rows(results_dir: Path) -> list[Row]:
    results_dir = Path(results_dir)
    jobs = store.read_json_or_none(results_dir / JOBS) or {}
    entries = {entry.name: ("teacher", entry) for entry in store.iter_result_dirs(results_dir, store.TEACHERS)}
    entries.update({entry.name: ("run", entry) for entry in store.iter_result_dirs(results_dir, store.RUNS)})
    for key, job in jobs.items():
        if key not in entries:
            kind = job.get("kind", "run")
            where = store.teacher_dir if kind == "teacher" else store.run_dir
            entries[key] = (kind, where(results_dir, key))
    queue = slurm_queue([job["job"] for job in jobs.values() if job.get("job")])
    rows = []
    for key, (kind, directory) in sorted(entries.items(), key=lambda item: (item[1][0] != "teacher", item[0])):
        job = (jobs.get(key) or {}).get("job")
        record, problem = read_record(directory)
        owner = store.lock_owner(directory)
        row = Row(kind, key, _name(directory, kind), "not started", job)
        if problem:  # there, but not a record this rkbench reads (a run leaves it alone)
            row.state, row.detail = "unreadable", f"metrics.json: {problem}"
        elif record is not None:
            row.state = record.status
            row.detail = record.error or ""
        elif owner is not None:
            row.state = "running"
            row.detail = f"on {owner.get('host')} (pid {owner.get('pid')}" + (
                f", job {owner['slurm_job']})" if owner.get("slurm_job") else ")")
        elif job and job in queue:
            state, reason = queue[job]
            row.state = "running" if state in ("RUNNING", "COMPLETING", "CONFIGURING") else "pending"
            row.detail = state.lower() + (f" ({reason})" if reason and reason != "None" else "")
        elif (directory / store.CHECKPOINT).is_file():
            row.state = "interrupted"
            row.detail = "resumes from its last epoch when run again"
        elif job:
            row.state = "pending"
            row.detail = "submitted" + (" (not in squeue: ended without results?)" if shutil.which("squeue") else "")
        rows.append(row)
    return rows


def format_status(rows: list[Row]) -> str:
    if not rows:
        return "nothing submitted or started here yet\n"
    header = ("kind", "id", "name", "state", "slurm job", "detail")
    table = [header] + [(r.kind, r.id, r.name, r.state, r.job or "-", r.detail) for r in rows]
    widths = [max(len(str(line[i])) for line in table) for i in range(len(header) - 1)]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)) + "  " + line[-1]
             for line in table]
    counts = {}
    for row in rows:
        counts[row.state] = counts.get(row.state, 0) + 1
    order = ["pending", "running", "interrupted", "not started", "finished", "failed", "unreadable"]
    summary = ", ".join(f"{counts[state]} {state}" for state in order if counts.get(state))
    return "\n".join(line.rstrip() for line in lines) + f"\n{summary}\n"
