"""Several processes, one results directory; several GPUs, one node; files lab-mates can read:
run directories claimed by one process (a dead owner's lock recovered), one GPU per local worker,
and every written file following the umask."""
import multiprocessing
import os
import re
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from rkbench import store
from rkbench.executors import ExecutorConfig, LocalExecutor, worker_pool
from rkbench.api import run_suite
from rkbench.suite import suite_from_dict

from conftest import tiny_suite_dict

ROOT = Path(__file__).resolve().parents[1]


# -- locks -------------------------------------------------------------------------------------


def test_a_held_lock_names_its_owner_and_keeps_others_out(tmp_path):
    first = store.DirectoryLock(tmp_path)
    assert first.acquire()
    assert not store.DirectoryLock(tmp_path).acquire()  # another open file: flock says no
    owner = store.lock_owner(tmp_path)
    assert owner["host"] == socket.gethostname() and owner["pid"] == os.getpid()
    first.release()
    assert store.lock_owner(tmp_path) is None and not (tmp_path / store.LOCK).exists()


def test_the_stale_lock_of_a_dead_process_is_recovered(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / store.LOCK).write_text(f'{{"host": "{socket.gethostname()}", "pid": {dead.pid}}}')
    assert store.lock_owner(tmp_path) is None  # nobody holds it: a file left behind
    lock = store.DirectoryLock(tmp_path)
    assert lock.acquire()
    assert lock.previous == {"host": socket.gethostname(), "pid": dead.pid}
    assert store.lock_owner(tmp_path)["pid"] == os.getpid()
    lock.release()


def test_a_lock_of_a_killed_process_is_recovered(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from rkbench import store; "
                               f"store.DirectoryLock({str(tmp_path)!r}).acquire(); print('held', flush=True); "
                               "time.sleep(60)"], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert holder.stdout.readline().strip() == "held"
    assert not store.DirectoryLock(tmp_path).acquire()
    holder.kill()
    holder.wait()
    lock = store.DirectoryLock(tmp_path)
    assert lock.acquire() and lock.previous["pid"] == holder.pid
    lock.release()


def test_two_rkbench_run_processes_train_every_run_exactly_once(tmp_path):
    suite = tiny_suite_dict(name="twice", methods={"natural": {}, "kd": {"t": 4}, "at": {"attack_steps": 2}},
                            training={"epochs": 2, "batch_size": 128, "optimizer": {"lr": 0.05}, "seeds": [0],
                                      "threads": 1})
    path = tmp_path / "twice.yaml"
    path.write_text(yaml.safe_dump(suite))
    results = tmp_path / "results"
    command = [sys.executable, "-m", "rkbench.cli", "run", str(path), "--results-dir", str(results), "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    processes = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for _ in range(2)]
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    runs = list((results / "runs").iterdir())
    assert len(runs) == 6
    for directory in [*runs, *(results / "teachers").iterdir()]:
        log = (directory / store.LOG).read_text()
        assert len(re.findall(r"^epoch 1/", log, re.M)) == 1, f"{directory.name} trained more than once:\n{log}"
        assert not (directory / store.LOCK).exists()
    assert any("another process" in output for output in outputs)  # they did meet (at the teacher at least)
    # both processes end with the whole leaderboard, the one that waited included
    for output in outputs:
        assert output.count("mlp_small") >= 3 and "failed" not in output


# -- a graph of work, not phases -----------------------------------------------------------------


def test_runs_without_a_teacher_start_while_it_trains(tmp_path):
    teacher = {"name": "t_at", "source": "train", "model": "cnn_tiny", "method": "at", "training": {"epochs": 6}}
    suite = suite_from_dict(tiny_suite_dict(name="graph", teachers=[teacher], methods={"natural": {}, "kd": {"t": 4}},
                                            executor={"workers": 2}))
    run_suite(suite, tmp_path)
    (teacher_dir,) = (tmp_path / store.TEACHERS).iterdir()
    ready = (teacher_dir / store.MODEL).stat().st_mtime
    started, finished = {}, {}  # config.json is written when a run starts, metrics.json when it ends
    for directory in (tmp_path / store.RUNS).iterdir():
        method = store.read_json(directory / store.CONFIG)["method"]
        started.setdefault(method, []).append((directory / store.CONFIG).stat().st_mtime)
        finished.setdefault(method, []).append((directory / store.METRICS).stat().st_mtime)
    assert len(finished["natural"]) == len(finished["kd"]) == 2
    # a natural run started while the teacher was still training (in phases, none could start
    # before it was ready); which of them also finishes first is a race that depends on the load
    assert min(started["natural"]) < ready < min(started["kd"]) <= min(finished["kd"])


# -- one GPU per local worker ------------------------------------------------------------------


def _visible(barrier) -> str:
    barrier.wait(timeout=60)  # every worker answers once: none can take two tasks
    return os.environ.get("CUDA_VISIBLE_DEVICES", "")


class _Runner:
    def __init__(self, device="auto"):
        self.suite = suite_from_dict(tiny_suite_dict(training={"epochs": 1, "device": device}))


@pytest.fixture
def three_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_workers_default_to_the_visible_gpus(three_gpus, monkeypatch):
    assert LocalExecutor(ExecutorConfig()).workers(_Runner()) == (3, ["0", "1", "2"])
    assert LocalExecutor(ExecutorConfig(workers=2)).workers(_Runner()) == (2, ["0", "1", "2"])
    assert LocalExecutor(ExecutorConfig()).workers(_Runner("cpu")) == (1, [])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    assert LocalExecutor(ExecutorConfig()).workers(_Runner()) == (2, ["4", "6"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert LocalExecutor(ExecutorConfig()).workers(_Runner()) == (1, [])


@pytest.mark.parametrize("listed, workers, expected", [(None, 3, ["0", "1", "2"]), ("4,6", 4, ["4", "4", "6", "6"])])
def test_each_worker_process_sees_one_gpu(three_gpus, monkeypatch, listed, workers, expected):
    if listed:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", listed)
    gpus = LocalExecutor(ExecutorConfig(workers=workers)).workers(_Runner())[1]
    with multiprocessing.get_context("spawn").Manager() as manager:
        barrier = manager.Barrier(workers)
        with worker_pool(workers, 1, gpus) as pool:
            seen = sorted(pool.map(_visible, [barrier] * workers))
    assert seen == expected


# -- files follow the umask --------------------------------------------------------------------


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_every_written_file_follows_the_umask(tmp_path, mask):
    suite = suite_from_dict(tiny_suite_dict(name="umask", teachers=[], students=["cnn_tiny"],
                                            methods={"natural": {}}))
    old = os.umask(mask)
    try:
        run_suite(suite, tmp_path)
    finally:
        os.umask(old)
    files = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert {"config.json", "metrics.json", "per_example.npz", "model.safetensors", "log.txt",
            "leaderboard.md"} <= {path.name for path in files}
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path
    for path in tmp_path.rglob("*"):
        if path.is_dir():
            assert stat.S_IMODE(path.stat().st_mode) == 0o777 & ~mask, path
