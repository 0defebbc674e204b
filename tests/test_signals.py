"""Ctrl-C and SIGTERM during ``rkbench run`` (issue 22), with real signals to a real ``rkbench run``
in its own session: in process and with ``--workers 2``, the run stops with one line
``interrupted: N of M runs finished; the same command resumes``, exit 130 (SIGINT) or 143
(SIGTERM), no traceback, no process of the run left behind (workers, multiprocessing's resource
tracker), finished runs and the running run's last checkpoint kept; the same command then resumes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from rkbench.store import lock_owner
from rkbench.suite import expand, suite_from_dict

ROOT = Path(__file__).resolve().parents[1]

SUITE = {
    "name": "signals",
    "dataset": {"name": "digits"},
    "threat": {"norm": "linf", "eps": 0.1, "step_size": 0.05, "steps": 1},
    "students": [{"name": "mlp", "model": "mlp", "hidden": 16}],
    # natural finishes in one epoch; at is still training when the signal comes (sent at its first checkpoint)
    "methods": {"natural": {"training": {"epochs": 1}}, "at": {"attack_steps": 1}},
    # 400 epochs (about 3 s of training on a quiet machine; 40 could finish before the signal arrived)
    "training": {"epochs": 400, "batch_size": 256, "optimizer": {"lr": 0.05}, "seeds": [0], "threads": 1},
    "evaluation": {"attacks": [{"name": "pgd", "label": "pgd1", "steps": 1}], "n_examples": 40},
}
LINE = "interrupted: 1 of 2 runs finished; the same command resumes"


def start(tmp_path: Path, workers: int) -> tuple[subprocess.Popen, Path, dict]:
    suite_file = tmp_path / "signals.yaml"
    suite_file.write_text(yaml.safe_dump(SUITE, sort_keys=False))
    results = tmp_path / "results"
    command = [sys.executable, "-m", "rkbench.cli", "run", str(suite_file), "--results-dir", str(results), "--quiet",
               "--workers", str(workers)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    # as a terminal's foreground job: SIGINT at its default (a shell running pytest in the background,
    # as CI may, ignores SIGINT, and an ignored SIGINT is inherited and rightly respected)
    process = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    runs = {run.method.label: results / "runs" / run.run_id for run in expand(suite_from_dict(SUITE))[1]}
    return process, results, runs


def wait_for(process: subprocess.Popen, *paths: Path, timeout: float = 120) -> None:
    """Until every path exists (a file in the results directory, not a blind sleep)."""
    deadline = time.monotonic() + timeout
    while not all(path.exists() for path in paths):
        if process.poll() is not None:
            pytest.fail(f"rkbench run ended before the signal:\n{process.stdout.read()}")
        assert time.monotonic() < deadline, f"none of {paths} appeared in {timeout} s"
        time.sleep(0.02)


def interrupt(tmp_path: Path, workers: int, signum: int, to_group: bool) -> tuple[str, Path, dict]:
    process, results, runs = start(tmp_path, workers)
    try:
        wait_for(process, runs["natural"] / "metrics.json", runs["at"] / "checkpoint.pt")
        children = psutil.Process(process.pid).children(recursive=True)
        if workers > 1:  # two workers and multiprocessing's resource tracker
            assert len(children) >= 3, [child.cmdline() for child in children]
        if to_group:  # as a terminal sends Ctrl-C: to the whole foreground process group
            os.killpg(process.pid, signum)
        else:  # `kill PID`
            process.send_signal(signum)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 128 + signum, output
    assert "Traceback" not in output and "KeyboardInterrupt" not in output and "Aborted" not in output, output
    assert output.strip().splitlines()[-1] == LINE, output
    _, alive = psutil.wait_procs(children, timeout=5)
    assert not alive, f"left behind: {[(child.pid, child.cmdline()) for child in alive]}"
    # the finished run and the running run's last checkpoint are kept; nothing holds a lock
    assert json.loads((runs["natural"] / "metrics.json").read_text())["status"] == "finished"
    assert (runs["at"] / "checkpoint.pt").is_file() and not (runs["at"] / "metrics.json").exists()
    assert lock_owner(runs["at"]) is None
    return output, results, runs


def test_ctrl_c_to_the_process_group_stops_the_workers_and_exits_130(tmp_path):
    interrupt(tmp_path, workers=2, signum=signal.SIGINT, to_group=True)


def test_sigterm_stops_the_workers_and_the_resource_tracker_and_exits_143(tmp_path):
    interrupt(tmp_path, workers=2, signum=signal.SIGTERM, to_group=False)


def test_sigterm_in_process_exits_143_and_the_same_command_resumes(tmp_path):
    _, results, runs = interrupt(tmp_path, workers=1, signum=signal.SIGTERM, to_group=False)
    finished = (runs["natural"] / "metrics.json").read_bytes()
    rerun = subprocess.run([sys.executable, "-m", "rkbench.cli", "run", str(tmp_path / "signals.yaml"),
                            "--results-dir", str(results), "--quiet", "--workers", "1"],
                           env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)},
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "resumed from epoch" in (runs["at"] / "log.txt").read_text()
    assert json.loads((runs["at"] / "metrics.json").read_text())["status"] == "finished"
    assert (runs["natural"] / "metrics.json").read_bytes() == finished  # not redone
