"""The training section's speed options: same results where they promise it, bf16 only in the step."""
import platform

import pytest
import torch

from rkbench.data import TensorDataset
from rkbench.errors import ConfigError, RkbenchError
from rkbench.evaluator import evaluate
from rkbench.attacks import build_attack
from rkbench.methods import build_method
from rkbench.models import build_model
from rkbench.performance import cpu_compiler
from rkbench.suite import TrainingConfig, expand, suite_from_dict
from rkbench.threat import ThreatModel
from rkbench.train import Trainer

from conftest import tiny_suite_dict

THREAT = ThreatModel(eps=0.1, step_size=0.025, steps=3)
CPU = torch.device("cpu")
ARD = {"t": 4, "attack_steps": 2}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread (conftest.py)


@pytest.fixture(scope="module")
def small_digits(digits):
    return TensorDataset("digits", digits.x_train[:256], digits.y_train[:256], digits.x_test[:64],
                         digits.y_test[:64], 10, augment="crop_flip")


def train(data, teacher, method="ard", params=None, epochs=2, seed=0, layouts=None, **options):
    torch.manual_seed(seed)
    student = build_model("cnn_tiny", 10, (1, 8, 8))
    if layouts is not None:  # per forward of the last conv (C > 1): whether input and weight are NHWC
        conv = [m for m in student.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        conv.register_forward_pre_hook(lambda module, args: layouts.append(
            (args[0].is_contiguous(memory_format=torch.channels_last),
             module.weight.is_contiguous(memory_format=torch.channels_last))))
    config = TrainingConfig(epochs=epochs, batch_size=64, optimizer={"lr": 0.05}, **options)
    result = Trainer(config, CPU).fit(student, build_method(method, ARD if params is None else params, THREAT),
                                      data, teacher=teacher, seed=seed)
    return result


def nhwc_weight(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1].weight


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("method, params", [("ard", {"t": 4, "attack_steps": 2}), ("rrm", {})])
def test_channels_last_trains_the_same_student_and_hands_back_default_layout(small_digits, trained_cnn, method,
                                                                            params):
    plain_layouts, nhwc_layouts = [], []
    plain = train(small_digits, trained_cnn, method, params, layouts=plain_layouts)
    nhwc = train(small_digits, trained_cnn, method, params, layouts=nhwc_layouts, channels_last=True)
    assert set(plain_layouts) == {(False, False)} and set(nhwc_layouts) == {(True, True)}
    assert nhwc.losses == pytest.approx(plain.losses, rel=1e-4)
    for name, value in weights(plain.model).items():
        torch.testing.assert_close(weights(nhwc.model)[name], value, rtol=1e-4, atol=1e-5)
    # evaluation, student.pt and later runs see the default layout again (a conv with C > 1: with one
    # channel a weight is contiguous in both layouts)
    assert not nhwc_weight(nhwc.model).is_contiguous(memory_format=torch.channels_last)
    assert not nhwc_weight(trained_cnn).is_contiguous(memory_format=torch.channels_last)


def test_the_run_log_names_the_speed_options_that_are_on(small_digits, trained_cnn):
    lines = []
    torch.manual_seed(0)
    config = TrainingConfig(epochs=1, batch_size=64, channels_last=True, amp="bf16")
    Trainer(config, CPU, log=lines.append).fit(build_model("cnn_tiny", 10, (1, 8, 8)),
                                               build_method("natural", {}, THREAT), small_digits)
    assert "speed options: channels_last, amp bf16" in lines
    lines.clear()
    Trainer(TrainingConfig(epochs=1, batch_size=64), CPU, log=lines.append).fit(
        build_model("cnn_tiny", 10, (1, 8, 8)), build_method("natural", {}, THREAT), small_digits)
    assert not any("speed options" in line for line in lines)


def test_host_batches_stay_on_the_host_and_move_one_batch_at_a_time():
    """On a CPU machine both placements are the same code; a second device ("meta": shapes, no data)
    shows where the training set lives and what ``transfer`` moves."""
    from rkbench.performance import Performance

    x, y = torch.rand(8, 1, 8, 8), torch.arange(8)
    resident = Performance(torch.device("meta"))
    assert {t.device.type for t in resident.place_dataset(x, y)} == {"meta"}  # the whole set, once
    host = Performance(torch.device("meta"), data_on_device=False, pin_memory=True)  # pinning: CUDA only
    placed_x, placed_y = host.place_dataset(x, y)
    assert placed_x is x and placed_y is y  # left on the host
    batch = host.transfer(placed_x[:4])
    assert batch.device.type == "meta" and batch.shape == (4, 1, 8, 8)  # each gathered batch is moved
    assert resident.transfer(batch) is batch  # already there: no copy


class AutocastSpy(torch.nn.Module):
    """Wraps a model and records whether each forward ran under CPU autocast."""

    def __init__(self, model):
        super().__init__()
        self.model, self.seen = model, []

    def forward(self, x):
        self.seen.append(torch.is_autocast_enabled("cpu"))
        return self.model(x)


def test_bf16_runs_the_step_under_autocast_and_evaluation_in_float32(small_digits, trained_cnn):
    plain = train(small_digits, trained_cnn)
    torch.manual_seed(0)
    spy = AutocastSpy(build_model("cnn_tiny", 10, (1, 8, 8)))
    teacher = AutocastSpy(trained_cnn)
    config = TrainingConfig(epochs=2, batch_size=64, optimizer={"lr": 0.05}, amp="bf16")
    seen_logits = []
    method = build_method("ard", {"t": 4, "attack_steps": 2}, THREAT)
    original_loss = method.loss

    def loss(student, batch):
        seen_logits.append(batch.teacher_logits.dtype)
        return original_loss(student, batch)

    method.loss = loss
    result = Trainer(config, CPU).fit(spy, method, small_digits, teacher=teacher, seed=0)
    assert spy.seen and all(spy.seen)  # attack steps and the training forward
    assert teacher.seen and all(teacher.seen)
    assert set(seen_logits) == {torch.float32}  # the trainer's teacher outputs reach methods in float32
    assert all(p.dtype == torch.float32 for p in spy.parameters())
    # bf16 changes the numbers a little, not the training
    assert result.losses != plain.losses
    assert result.losses == pytest.approx(plain.losses, rel=0.05)
    spy.seen.clear()
    attack = build_attack("pgd", THREAT, steps=2)
    evaluate(spy.eval(), small_digits.x_test, small_digits.y_test, {"pgd2": attack}, batch_size=64)
    assert spy.seen and not any(spy.seen)


@pytest.mark.skipif(cpu_compiler() is None, reason="torch.compile on the CPU needs a C++ compiler")
def test_compile_trains_like_eager_and_saves_plain_weights(small_digits, trained_cnn):
    from torch._dynamo.utils import counters

    eager = train(small_digits, trained_cnn, epochs=1)
    frames_before = counters["stats"]["unique_graphs"]
    compiled = train(small_digits, trained_cnn, epochs=1, compile=True)
    assert counters["stats"]["unique_graphs"] > frames_before  # dynamo did capture the step
    assert compiled.losses == pytest.approx(eager.losses, rel=1e-3)
    state = compiled.model.state_dict()
    assert not any("_orig_mod" in key for key in state)
    for name, value in weights(eager.model).items():
        torch.testing.assert_close(state[name], value, rtol=1e-3, atol=1e-4)


def test_compile_without_a_cpu_compiler_is_one_clear_error(small_digits, trained_cnn, monkeypatch):
    monkeypatch.setenv("PATH", "")
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(RkbenchError, match="training.compile on the CPU needs a C\\+\\+ compiler"):
        train(small_digits, trained_cnn, epochs=1, compile=True, channels_last=True)
    # the shared teacher goes back to the default layout even when training fails
    assert not nhwc_weight(trained_cnn).is_contiguous(memory_format=torch.channels_last)


def test_cpu_training_is_deterministic_without_nan_filling(small_digits, trained_cnn):
    train(small_digits, trained_cnn, epochs=1, deterministic=False)
    assert not torch.are_deterministic_algorithms_enabled()  # an explicit false is honoured
    train(small_digits, trained_cnn, epochs=1)
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.utils.deterministic.fill_uninitialized_memory is False


UNTUNED = """
import hashlib, sys, torch
sys.path.insert(0, {tests!r})
import rkbench.performance as performance
from conftest import tiny_digits_training
loss, digest = tiny_digits_training(malloc_tuning=False)
assert not performance._MALLOC_TUNED  # this process never tuned its allocator
print(repr(loss), digest)
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_cpu_training_tunes_glibc_malloc_and_trains_the_same_student(monkeypatch):
    """The tuning is process-wide and cannot be undone (earlier tests tuned this process): the
    untuned training runs in a fresh interpreter, the tuned one here, and both end bit-equal."""
    import subprocess
    import sys
    from pathlib import Path

    import rkbench.performance as performance
    from conftest import tiny_digits_training

    calls = []
    monkeypatch.setattr(performance, "tune_malloc", lambda: calls.append(1) or True)
    settings = lambda **options: performance.Performance.from_config(  # noqa: E731
        TrainingConfig(**options), torch.device("cpu")).apply_process_settings()
    settings(malloc_tuning=False)
    assert calls == []  # the switch is honoured
    settings()
    assert calls == [1]
    monkeypatch.undo()
    assert performance.tune_malloc() is True and performance.tune_malloc() is True  # real mallopt, idempotent
    tuned = tiny_digits_training()
    code = UNTUNED.format(tests=str(Path(__file__).parent))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-2:] == [repr(tuned[0]), tuned[1]]  # the allocator changes no arithmetic


def test_only_amp_enters_a_runs_identity():
    def run_ids(**training):
        suite = suite_from_dict(tiny_suite_dict(training={"epochs": 1, **training}))
        return [run.run_id for run in expand(suite)[1]]

    plain = run_ids()
    assert run_ids(channels_last=True, compile=True, data_on_device=False, pin_memory=True,
                   deterministic=False, malloc_tuning=False) == plain
    assert run_ids(amp="off") == plain
    assert set(run_ids(amp="bf16")).isdisjoint(plain)
    assert "amp" not in TrainingConfig().for_identity()  # ids from before these options stay valid


def test_amp_reads_yaml_off_and_rejects_fp16():
    assert TrainingConfig(amp=False).amp == "off"  # YAML 1.1 reads `amp: off` as false
    with pytest.raises(ConfigError, match="training.amp"):
        suite_from_dict(tiny_suite_dict(training={"epochs": 1, "amp": "fp16"}))
