"""The CUDA-only code paths, proven on the CPU with stand-ins (issue 23, docs/gpu.md): a device that
resolves where the runs train, Slurm jobs that request their GPU, one GPU per job, and the rest of
what a GPU user meets first. No test here needs a GPU: CUDA is patched in where it is asked for."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from rkbench import api
from rkbench.api import check_executor
from rkbench.cli import main
from rkbench.errors import ConfigError, RkbenchError
from rkbench.executors import SlurmExecutor
from rkbench.runner import SuiteRunner
from rkbench.suite import ExecutorConfig, load_suite, suite_from_dict

from conftest import tiny_suite_dict

ROOT = Path(__file__).resolve().parents[1]
PAPER_SUITES = [ROOT / "suites" / "cifar10.yaml", ROOT / "suites" / "cifar100.yaml"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def three_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def slurm_suite(device="cuda", seeds=(0,), **executor):
    return suite_from_dict(tiny_suite_dict(teachers=[], methods={"natural": {}}, students=["cnn_tiny"],
                                           training={"epochs": 1, "device": device, "seeds": list(seeds)},
                                           executor={"name": "slurm", "gpus_per_job": 1, **executor}))


# -- 1. device resolution --------------------------------------------------------------------------


def test_slurm_dry_run_of_the_paper_suite_on_cuda_plans_on_a_cpu_machine(no_gpu, tmp_path):
    result = CliRunner().invoke(main, ["run", str(PAPER_SUITES[0]), "--executor", "slurm", "--dry-run",
                                       "--set", "training.device=cuda", "--results-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "error" not in result.output


def test_the_device_is_resolved_in_the_process_that_trains(no_gpu, monkeypatch, tmp_path):
    runner = SuiteRunner(slurm_suite(), tmp_path)  # planning on a login node: no GPU, no error
    assert "Slurm jobs (1 GPU(s) per job" in api.where_runs(runner) and "cpu" not in api.where_runs(runner)
    with pytest.raises(RkbenchError, match="no CUDA device"):
        runner.device  # a job that finds no GPU says so, in the job
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the job's node
    job_runner = SuiteRunner(slurm_suite(), tmp_path)
    assert job_runner.device == torch.device("cuda")
    assert job_runner.evaluation.device == job_runner.teachers.device == torch.device("cuda")


def test_slurm_jobs_without_a_gpu_refuse_cuda_and_warn_once_for_auto():
    with pytest.raises(ConfigError, match="gpus_per_job is 0.*training.device: cpu"):
        check_executor(slurm_suite(gpus_per_job=0))
    lines = []
    check_executor(slurm_suite("auto", gpus_per_job=0), warn=lines.append)
    assert len(lines) == 1 and lines[0].startswith("warning: executor.gpus_per_job is 0")
    for fine in (slurm_suite(), slurm_suite(gpus_per_job=0, slurm_additional={"gres": "gpu:1"})):
        lines.clear()
        check_executor(fine, warn=lines.append)
        assert lines == []


def test_the_cli_prints_the_warning_line_for_slurm_jobs_without_gpus(tmp_path):
    result = CliRunner().invoke(main, ["validate", str(ROOT / "suites" / "digits.yaml"),
                                       "--set", "executor.name=slurm"])
    assert result.exit_code == 0
    assert sum(line.startswith("warning: executor.gpus_per_job is 0") for line in result.output.splitlines()) == 1


@pytest.mark.parametrize("path", PAPER_SUITES, ids=lambda p: p.name)
def test_the_paper_suites_request_a_gpu_per_slurm_job(path):
    suite = load_suite(path, ["executor.name=slurm"])
    assert suite.executor.gpus_per_job >= 1 and suite.executor.cpus_per_job >= 4
    check_executor(suite, warn=pytest.fail)  # no warning
    assert load_suite(path).executor.name == "local"  # `rkbench run` without --executor still runs here


class _FakeSubmitit:
    """submitit's AutoExecutor as far as the Slurm executor uses it: what each job was given."""

    def __init__(self):
        self.parameters, self.given = {}, []

    def update_parameters(self, **parameters):
        self.parameters.update(parameters)

    def submit(self, function, *args):
        self.given.append(self.parameters.get("local_visible_gpus"))
        return _FakeJob(str(len(self.given)))

    def map_array(self, function, *columns):
        return [self.submit(function, *args) for args in zip(*columns)]


class _FakeJob:
    def __init__(self, job_id):
        self.job_id = job_id


def test_submitit_local_jobs_get_the_gpus_in_turn_not_all_gpu_0(three_gpus, monkeypatch, tmp_path):
    suite = slurm_suite(seeds=(0, 1, 2, 3), cluster="local", wait=False)
    fake = _FakeSubmitit()
    monkeypatch.setattr(SlurmExecutor, "executor", lambda self, runner: fake)
    outcome = SlurmExecutor(suite.executor).run(SuiteRunner(suite, tmp_path))
    assert len(outcome.outcomes) == 4
    assert fake.given == [(0,), (1,), (2,), (0,)]
    two = SlurmExecutor(ExecutorConfig(name="slurm", cluster="local", gpus_per_job=2))
    fake = _FakeSubmitit()
    two.submit(fake, print, [(1,), (2,)])
    assert fake.given == [(0, 1), (2, 0)]


# -- stand-ins ----------------------------------------------------------------------------------


class FakeCuda(torch.Tensor):
    """A CPU tensor that says it lives on cuda:0, as a GPU batch or weight does; pinning it fails as
    pinning a CUDA tensor does."""

    @property
    def device(self):
        return torch.device("cuda", 0)

    def cpu(self):
        return torch.Tensor.as_subclass(self, torch.Tensor)

    def pin_memory(self):
        raise RuntimeError("cannot pin 'torch.cuda.FloatTensor' only dense CPU tensors can be pinned")


def tensors_in(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from tensors_in(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from tensors_in(item)


def tiny_run_suite(**changes):
    suite = tiny_suite_dict(teachers=[], students=["cnn_tiny"], methods={"natural": {}},
                            evaluation={"attacks": [{"name": "pgd", "label": "pgd3", "steps": 3}], "n_examples": 60,
                                        "batch_size": 30})
    suite.update(changes)
    return suite_from_dict(suite)


# -- 2. the device in every record, and in reports -------------------------------------------------


def test_a_digits_run_records_the_device_it_trained_and_was_evaluated_on(tmp_path):
    from rkbench.api import run_suite
    from rkbench.report.leaderboard import leaderboard_frame

    suite = tiny_run_suite()
    run_suite(suite, tmp_path)
    run_id = SuiteRunner(suite, tmp_path).runs[0].run_id
    metrics = json.loads((tmp_path / "runs" / run_id / "metrics.json").read_text())
    assert metrics["train_device"] == metrics["eval_device"] == {"type": "cpu"}
    assert metrics["eval_ieee_fp32"] is True and metrics["record_version"] == 3
    assert "Device: cpu." in (tmp_path / "leaderboard.md").read_text()
    assert list(leaderboard_frame(tmp_path)["device"]) == ["cpu"]


def test_on_cuda_the_record_names_the_gpu_and_the_cuda_and_cudnn_versions(monkeypatch):
    from rkbench.device import device_info
    from rkbench.record import RunRecord

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: f"NVIDIA H200 #{index}")
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 90100)
    info = device_info(torch.device("cuda"))
    assert info == {"type": "cuda", "name": "NVIDIA H200 #0", "cuda": "12.4", "cudnn": "90100"}
    assert device_info("cuda:1")["name"] == "NVIDIA H200 #1"
    record = RunRecord(run_id="a", status="finished", eval_device=info, train_device={"type": "cpu"})
    assert record.eval_device.label() == "cuda (NVIDIA H200 #0)" and record.train_device.cuda is None


def _write_record(base, run_id, method, eval_device, train_device=None):
    from rkbench.record import RunRecord, write_record

    write_record(base / "runs" / run_id, RunRecord(
        run_id=run_id, status="finished", teacher="-", student="mlp", method=method, seed=0, model="mlp",
        protocol="eval", clean_accuracy=0.9, robust_accuracy={"pgd20": 0.5}, worst_case_accuracy=0.5,
        n_examples=100, eval_device=eval_device, train_device=train_device, eval_ieee_fp32=True))


def test_a_report_shows_the_device_and_flags_a_table_that_mixes_devices(tmp_path):
    from rkbench.report.leaderboard import render
    from rkbench.report.query import leaderboard

    gpu = {"type": "cuda", "name": "NVIDIA H200", "cuda": "12.4", "cudnn": "90100"}
    _write_record(tmp_path / "a", "r1", "at", {"type": "cpu"})
    _write_record(tmp_path / "a", "r2", "kd", {"type": "cpu"})
    _write_record(tmp_path / "b", "r3", "ard", gpu, train_device=gpu)
    _write_record(tmp_path / "b", "r4", "trades", gpu, train_device={"type": "cpu"})
    uniform = render(leaderboard(tmp_path / "a"), "md")
    assert "Device: cpu." in uniform and "mixed_devices" not in uniform and "| device |" not in uniform
    mixed = render(leaderboard([tmp_path / "a", tmp_path / "b"]), "md")
    assert "MIXED devices: cpu; cuda (NVIDIA H200); train cpu, eval cuda (NVIDIA H200)" in mixed
    rows = [line for line in mixed.splitlines() if line.startswith("| ")]
    assert "| device |" in rows[0] and all("!mixed_devices" in line for line in rows[2:])
    document = json.loads(render(leaderboard([tmp_path / "a", tmp_path / "b"]), "json"))
    assert document["mixed_devices"] is True and len(document["devices"]) == 3


# -- 3. pin_memory ----------------------------------------------------------------------------------


def test_pin_memory_leaves_a_batch_already_on_the_gpu_alone():
    from rkbench.performance import Performance

    performance = Performance(torch.device("cuda"), data_on_device=True, pin_memory=True)
    batch = torch.zeros(4, 3).as_subclass(FakeCuda)  # data_on_device: the gathered batch is on cuda:0
    assert performance.transfer(batch) is batch  # not pinned (that raised: cuda:0 != cuda)


# -- 4. compile ------------------------------------------------------------------------------------


@pytest.fixture
def light_compile(monkeypatch):
    """torch.compile through AOTAutograd without inductor's C++ build: what fails and what
    recompiles is the same, in a fraction of the time."""
    import torch._dynamo

    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **options: real(model, backend="aot_eager"))
    monkeypatch.setattr("rkbench.performance.cpu_compiler", lambda: "g++")
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_kdiga_trains_under_compile_with_its_student_eager(light_compile, digits):
    from rkbench.data import TensorDataset
    from rkbench.methods import build_method
    from rkbench.models import build_model
    from rkbench.suite import TrainingConfig
    from rkbench.threat import ThreatModel
    from rkbench.train import TrainJob, Trainer

    digits = TensorDataset("digits", digits.x_train[:64], digits.y_train[:64], digits.x_test[:8], digits.y_test[:8], 10)
    torch.manual_seed(0)
    teacher = build_model("cnn_tiny", 10, digits.input_shape)
    student = build_model("cnn_tiny", 10, digits.input_shape)
    lines = []
    job = TrainJob(student, build_method("kdiga", {}, ThreatModel(eps=0.1)), log=lines.append)
    config = TrainingConfig(epochs=1, batch_size=32, compile=True)
    Trainer(config, torch.device("cpu")).fit_many([job], digits, teacher=teacher)
    assert job.error is None, job.error_traceback
    assert any("runs eagerly" in line for line in lines)
    assert "forward" not in student.__dict__  # the class's own forward again after training


def test_compiled_models_each_have_a_recompile_budget_of_their_own(light_compile, monkeypatch):
    import torch._dynamo
    from torch._dynamo.utils import counters

    from rkbench.models import build_model
    from rkbench.performance import Performance

    counters.clear()
    performance = Performance(torch.device("cpu"), compile=True)
    x = torch.rand(4, 1, 8, 8)
    models = [build_model("cnn_tiny", 10, (1, 8, 8)), build_model("mlp", 10, (1, 8, 8), hidden=16),
              build_model("mlp", 10, (1, 8, 8), hidden=8)]
    # torch's own patch, undone on exit (monkeypatch's setattr on the config module leaves the
    # option hidden for later tests that compile)
    with torch._dynamo.config.patch(recompile_limit=1):
        for model in models:  # one shared Classifier.forward: the second class would exceed the limit
            performance.runnable(model)(x)
    assert counters["frames"]["ok"] == 3, dict(counters["frames"])


# -- 5. determinism on CUDA --------------------------------------------------------------------------


CUBLAS = "CUBLAS_WORKSPACE_CONFIG"


@pytest.fixture
def no_cublas_env(monkeypatch):
    monkeypatch.setenv(CUBLAS, "")
    monkeypatch.delenv(CUBLAS)


def test_deterministic_true_on_cuda_is_strict(monkeypatch, no_cublas_env):
    from rkbench.performance import Performance

    calls = []
    monkeypatch.setattr(torch, "use_deterministic_algorithms",
                        lambda mode, warn_only=False: calls.append((mode, warn_only)))
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    monkeypatch.setattr(torch.utils.deterministic, "fill_uninitialized_memory", True)
    Performance(torch.device("cuda"), deterministic=True).apply_determinism()
    assert calls == [(True, False)]  # an op without a deterministic kernel raises, not warns
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert __import__("os").environ[CUBLAS] == ":4096:8"
    assert Performance(torch.device("cuda"), deterministic=True).notes() == []
    assert "need not end bit-equal" in Performance(torch.device("cuda")).notes()[0]


def test_every_entry_point_sets_the_cublas_workspace_before_any_work(monkeypatch, no_cublas_env, tmp_path):
    import os

    from rkbench.executors import Requeueable, _worker_init

    assert Requeueable(lambda: os.environ.get(CUBLAS))() == ":4096:8"  # a Slurm job
    monkeypatch.delenv(CUBLAS)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    _worker_init(1)  # a local worker process
    assert os.environ[CUBLAS] == ":4096:8"
    monkeypatch.delenv(CUBLAS)
    assert CliRunner().invoke(main, ["list", "attacks"]).exit_code == 0  # the CLI
    assert os.environ[CUBLAS] == ":4096:8"
    monkeypatch.setenv(CUBLAS, ":16:8")  # the user's own choice stays
    Requeueable(lambda: None)()
    assert os.environ[CUBLAS] == ":16:8"


# -- 6. IEEE float32 during the attacks --------------------------------------------------------------


class FlagSpy(torch.nn.Module):
    """A model that records the TF32 flags at every forward."""

    def __init__(self, model):
        super().__init__()
        self.model, self.seen = model, set()

    def forward(self, x):
        self.seen.add((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))
        return self.model(x)


def test_attacks_run_with_tf32_off_and_the_flags_come_back(monkeypatch, digits):
    from rkbench.attacks import build_attack
    from rkbench.evaluator import evaluate
    from rkbench.models import build_model
    from rkbench.threat import ThreatModel

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    precision = torch.get_float32_matmul_precision()
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        spy = FlagSpy(build_model("cnn_tiny", 10, digits.input_shape))
        attack = build_attack("pgd", ThreatModel(eps=0.1), steps=2)
        result = evaluate(spy, digits.x_test[:20], digits.y_test[:20], {"pgd2": attack}, batch_size=10)
        assert spy.seen == {(False, False)} and result.ieee_fp32 is True
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32  # restored
    finally:
        torch.set_float32_matmul_precision(precision)


# -- 7. out of memory ------------------------------------------------------------------------------


class RunsOutAbove(torch.nn.Module):
    """A model that raises the GPU's out-of-memory error on batches larger than ``limit``."""

    def __init__(self, model, limit):
        super().__init__()
        self.model, self.limit = model, limit

    def forward(self, x):
        if x.shape[0] > self.limit:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (batch {x.shape[0]})")
        return self.model(x)


def test_evaluation_halves_its_batch_on_out_of_memory_with_the_same_accuracies(digits):
    from rkbench.attacks import build_attack
    from rkbench.evaluator import evaluate
    from rkbench.models import build_model
    from rkbench.threat import ThreatModel

    torch.manual_seed(0)
    model = build_model("cnn_tiny", 10, digits.input_shape)
    x, y = digits.x_test[:64], digits.y_test[:64]

    def attacks():
        return {"pgd3": build_attack("pgd", ThreatModel(eps=0.1, step_size=0.05), steps=3, random_start=True)}

    normal = evaluate(RunsOutAbove(model, 10 ** 6), x, y, attacks(), batch_size=64)
    lines = []
    halved = evaluate(RunsOutAbove(model, 20), x, y, attacks(), batch_size=64, log=lines.append)
    assert lines[0] == "out of memory at an evaluation batch of 64: retrying with batch 32"
    assert len(lines) == 2  # 64 -> 32 -> 16, then 16 for the rest of the evaluation
    for label in ("clean", "pgd3"):
        assert (halved.correct[label] == normal.correct[label]).all()
    with pytest.raises(torch.cuda.OutOfMemoryError):  # nothing fits: the error, not a loop
        evaluate(RunsOutAbove(model, 0), x, y, attacks(), batch_size=4)


def test_a_failed_lockstep_student_releases_its_graph(digits):
    import gc
    import weakref

    from rkbench.methods import build_method
    from rkbench.models import build_model
    from rkbench.suite import TrainingConfig
    from rkbench.threat import ThreatModel
    from rkbench.train import TrainJob, Trainer

    alive = []

    def failing_loss(student, batch):
        activations = student(batch.x) * 2.0  # a graph that holds the step's activations
        alive.append(weakref.ref(activations))
        raise RuntimeError("CUDA out of memory (stand-in)")

    failing = build_method("natural", {}, ThreatModel(eps=0.1))
    failing.loss = failing_loss
    natural = build_method("natural", {}, ThreatModel(eps=0.1))
    jobs = [TrainJob(build_model("cnn_tiny", 10, digits.input_shape), failing),
            TrainJob(build_model("cnn_tiny", 10, digits.input_shape), natural)]
    Trainer(TrainingConfig(epochs=1, batch_size=512), torch.device("cpu")).fit_many(jobs, digits)
    gc.collect()
    assert jobs[1].error is None and isinstance(jobs[0].error, RuntimeError)
    assert alive and alive[0]() is None  # nothing holds the failed step's graph
    assert "failing_loss" in jobs[0].error_traceback and "stand-in" in jobs[0].error_traceback


# -- 8. a requeued evaluation resumes at the next attack ---------------------------------------------


class Killed(BaseException):
    """What a Slurm time limit is to the evaluation: the process ends in the middle of an attack."""


class Counted:
    """An attack that counts its batches (and is killed at its first one when it is ``kill``)."""

    def __init__(self, attack, label, calls, kill):
        self.attack, self.label, self.calls, self.kill = attack, label, calls, kill

    def __getattr__(self, name):
        return getattr(self.attack, name)

    def __call__(self, *args, **kwargs):
        self.calls[self.label] += 1
        if self.label == self.kill:
            raise Killed()
        return self.attack(*args, **kwargs)


def test_a_requeued_evaluation_resumes_at_the_next_attack(tmp_path, monkeypatch):
    from rkbench.models import build_model
    from rkbench.suite_evaluation import SuiteEvaluation

    suite = tiny_run_suite(evaluation={"attacks": [{"name": "pgd", "label": "pgd2", "steps": 2},
                                                   {"name": "pgd", "label": "pgd4", "steps": 4}],
                                       "n_examples": 40, "batch_size": 20, "cascade": False})
    from rkbench.data import load_dataset

    data = load_dataset("digits", {})
    torch.manual_seed(0)
    model = build_model("cnn_tiny", 10, data.input_shape)
    evaluation = SuiteEvaluation(suite, lambda: data, torch.device("cpu"))
    calls = {"pgd2": 0, "pgd4": 0}
    real_attacks = evaluation.attacks

    def counted(kill=None):
        return lambda *sources: {label: Counted(attack, label, calls, kill) for label, attack in real_attacks().items()}

    first = tmp_path / "first"
    monkeypatch.setattr(evaluation, "attacks", counted(kill="pgd4"))
    with pytest.raises(Killed):
        evaluation.run(model, first, "m", seed=0)
    assert calls["pgd2"] == 2  # two batches of 20
    calls.update(pgd2=0, pgd4=0)
    monkeypatch.setattr(evaluation, "attacks", counted())
    resumed = evaluation.run(model, first, "m", seed=0)
    assert calls == {"pgd2": 0, "pgd4": 2}  # pgd2 read from disk, not run again
    monkeypatch.setattr(evaluation, "attacks", real_attacks)
    whole = evaluation.run(model, tmp_path / "whole", "m", seed=0)
    for label in ("clean", "pgd2", "pgd4"):
        assert (resumed.correct[label] == whole.correct[label]).all()


# -- 9. weights on the CPU ---------------------------------------------------------------------------


def test_weights_and_checkpoints_are_saved_with_cpu_tensors(tmp_path, monkeypatch):
    from rkbench.api import run_suite

    real_state_dict, real_save = torch.nn.Module.state_dict, torch.save
    saved = []

    def gpu_state_dict(self, *args, **kwargs):  # what a model on the GPU hands to torch.save
        state = real_state_dict(self, *args, **kwargs)
        for key, value in state.items():
            state[key] = value.as_subclass(FakeCuda)
        return state

    def spy(obj, handle, *args, **kwargs):
        saved.append([t.device.type for t in tensors_in(obj)])
        return real_save(obj, handle, *args, **kwargs)

    import safetensors.torch

    real_safetensors_save = safetensors.torch.save

    def safetensors_spy(tensors, *args, **kwargs):  # model.safetensors of students and teachers
        saved.append([t.device.type for t in tensors.values()])
        return real_safetensors_save(tensors, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "state_dict", gpu_state_dict)
    monkeypatch.setattr(torch, "save", spy)
    monkeypatch.setattr(safetensors.torch, "save", safetensors_spy)
    suite = tiny_run_suite(teachers=[{"name": "t", "source": "train", "model": "cnn_tiny", "method": "natural",
                                      "training": {"epochs": 1}}], methods={"kd": {}})
    outcome = run_suite(suite, tmp_path)
    assert [o.status for o in outcome.outcomes] == ["finished"], outcome.outcomes
    assert len(saved) >= 4  # checkpoints (torch), the teacher's and the student's model.safetensors
    assert all(kind == "cpu" for devices in saved for kind in devices)
    checkpoint = tmp_path / "checkpoint.pt"
    torch.save({"w": torch.zeros(1)}, checkpoint)
    assert torch.load(checkpoint, weights_only=True)  # no map_location needed
    assert safetensors.torch.load_file(next(tmp_path.rglob("runs/*/model.safetensors")))


# -- 10. the GPU check script --------------------------------------------------------------------------


def test_the_gpu_check_script_runs_in_cpu_smoke_mode(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "gpu_check.json"
    assert script.main(["--cpu-smoke", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["checks"]) == {"pin_memory", "resume", "tf32", "pgd_memory"}
    assert all(check["ok"] for check in report["checks"].values())
    assert report["checks"]["resume"]["deterministic_true"]["bit_equal"] is True
    assert report["device"] == {"type": "cpu"} and report["checks"]["tf32"]["evaluation_recorded_ieee_fp32"]
