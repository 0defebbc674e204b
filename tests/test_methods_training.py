"""The new methods on the shared trainer: replay schedule, short runs, resume, early stopping, RRM's projection."""
import pytest
import torch

from rkbench.data import TensorDataset
from rkbench.methods import build_method
from rkbench.methods.base import Method
from rkbench.models import build_model, count_parameters
from rkbench.suite import TrainingConfig
from rkbench.threat import ThreatModel
from rkbench.train import Trainer

from conftest import Interrupted, interrupt_after

THREAT = ThreatModel(eps=0.1, step_size=0.025, steps=3)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread (conftest.py)


@pytest.fixture(scope="module")
def small_digits(digits):
    """400 training digits, enough for a loss to fall in a few epochs."""
    return TensorDataset("digits", digits.x_train[:400], digits.y_train[:400], digits.x_test[:50],
                         digits.y_test[:50], 10)


@pytest.fixture(scope="module")
def teacher(small_digits):
    """A naturally trained MLP with 32 features (the 16-feature students need RRM's projection)."""
    torch.manual_seed(0)
    model = build_model("mlp", 10, (1, 8, 8), hidden=32)
    config = TrainingConfig(epochs=10, batch_size=50, optimizer={"lr": 0.05})
    Trainer(config, torch.device("cpu")).fit(model, build_method("natural", {}, THREAT), small_digits)
    return model.eval()


def student(seed=0):
    torch.manual_seed(seed)
    return build_model("mlp", 10, (1, 8, 8), hidden=16)


def config(epochs, batch_size=100, **changes):
    return TrainingConfig(epochs=epochs, batch_size=batch_size, optimizer={"lr": 0.05}, **changes)


@pytest.mark.parametrize("name, m", [("free_at", 4), ("fast_ard", 4), ("free_at", 3)])
def test_free_family_divides_epochs_and_steps_m_times_per_batch(small_digits, teacher, name, m):
    method = build_method(name, {"m": m}, THREAT)
    calls = []
    original = method.loss
    method.loss = lambda s, b: calls.append(b.x) or original(s, b)
    result = Trainer(config(8), torch.device("cpu")).fit(student(), method, small_digits, teacher=teacher)
    epochs = -(-8 // m)  # ceil(8 / m)
    assert result.epochs == epochs and len(result.losses) == epochs
    assert result.steps == len(calls) == epochs * 4 * m  # 4 batches of 100, each replayed m times
    assert all(torch.equal(calls[i], calls[i - i % m]) for i in range(len(calls)))  # the same batch m times


@pytest.mark.parametrize("name, params", [
    ("fast_ard", {"t": 4, "kl_reduction": "batchmean"}), ("kdiga", {"gamma": 10}), ("rrm", {}), ("trades", {}),
    ("free_at", {}), ("fgsm_rs", {}), ("rslad", {}), ("iad", {"warmup": 0}), ("adaad", {})])
def test_a_short_run_lowers_the_loss(small_digits, teacher, name, params):
    method = build_method(name, {**params, **({"m": 2} if name in ("free_at", "fast_ard") else {})}, THREAT)
    epochs = 6 if name in ("free_at", "fast_ard") else 3
    result = Trainer(config(epochs, 50), torch.device("cpu")).fit(student(), method, small_digits, teacher=teacher)
    assert result.losses[-1] < result.losses[0], result.losses


@pytest.mark.parametrize("name, params", [
    ("free_at", {"m": 2}), ("fast_ard", {"m": 2}), ("rrm", {}), ("fgsm_rs", {"early_stop": True,
                                                                              "early_stop_examples": 50})])
def test_a_killed_run_resumes_to_the_same_weights(small_digits, teacher, tmp_path, name, params):
    """Method state (the free family's delta, RRM's projection, FGSM-RS's early-stop memory) survives."""
    training = config(6 if name in ("free_at", "fast_ard") else 3)
    whole = student()
    Trainer(training, torch.device("cpu")).fit(whole, build_method(name, params, THREAT, seed=3), small_digits,
                                               teacher=teacher, seed=3)
    with pytest.raises(Interrupted):
        Trainer(training, torch.device("cpu"), tmp_path, on_epoch=interrupt_after(1)).fit(
            student(), build_method(name, params, THREAT, seed=3), small_digits, teacher=teacher, seed=3)
    resumed = student()
    Trainer(training, torch.device("cpu"), tmp_path).fit(resumed, build_method(name, params, THREAT, seed=3),
                                                         small_digits, teacher=teacher, seed=3)
    for (key, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), key


def test_rrm_projection_trains_and_the_saved_student_reloads_into_its_architecture(small_digits, teacher):
    model = student()
    method = build_method("rrm", {}, THREAT)
    seen = {}
    original = method.loss

    def loss(s, b):
        seen.setdefault("first", s.rrm_projection.weight.detach().clone())
        seen["last"] = s.rrm_projection.weight.detach().clone()
        return original(s, b)

    method.loss = loss
    Trainer(config(2), torch.device("cpu")).fit(model, method, small_digits, teacher=teacher)
    assert not torch.equal(seen["first"], seen["last"])  # the optimizer trained P(16 -> 32)
    assert not hasattr(model, "rrm_projection")
    fresh = build_model("mlp", 10, (1, 8, 8), hidden=16)
    fresh.load_state_dict(model.state_dict())  # strict: what runner.py and the teacher cache do
    assert count_parameters(fresh) == count_parameters(model)


class StopAtSecondEpoch(Method):
    """Records what it trains on; asks to stop after the second epoch."""

    holdout = 30

    def __init__(self):
        super().__init__(build_method("natural", {}, THREAT).params, THREAT)
        self.seen, self.held, self.epochs_seen = [], None, []

    def loss(self, student, batch):
        self.seen.append(batch.x)
        return torch.nn.functional.cross_entropy(student(batch.x), batch.y)

    def end_epoch(self, student, epoch, held):
        self.held = held
        self.epochs_seen.append(epoch)
        return epoch == 1


def test_trainer_withholds_examples_and_stops_when_the_method_asks(small_digits, tmp_path):
    method = StopAtSecondEpoch()
    result = Trainer(config(5), torch.device("cpu"), tmp_path).fit(student(), method, small_digits, seed=1)
    x_held, y_held = method.held
    assert x_held.shape[0] == 30 and method.epochs_seen == [0, 1] and len(result.losses) == 2
    trained = torch.cat(method.seen[: -(-370 // 100)])  # one epoch of the other 370 examples
    assert trained.shape[0] == 370
    flat_held, flat_trained = x_held.flatten(1), trained.flatten(1)
    assert not (flat_held[:, None, :] == flat_trained[None, :, :]).all(-1).any()  # never trained on
    again = StopAtSecondEpoch()  # a rerun finds the stopped checkpoint and trains nothing more
    Trainer(config(5), torch.device("cpu"), tmp_path).fit(student(), again, small_digits, seed=1)
    assert again.seen == [] and again.epochs_seen == []


def test_fgsm_rs_early_stop_restores_the_weights_before_the_collapse(small_digits):
    method = build_method("fgsm_rs", {"early_stop": True, "early_stop_examples": 40}, THREAT)
    assert method.holdout == 40
    model = student()
    x, y = small_digits.x_train[:40], small_digits.y_train[:40]
    kept = {k: v.clone() + 1.0 for k, v in model.state_dict().items()}
    method.previous_accuracy, method.previous_weights = 1.0, kept  # a robust previous epoch
    assert method.end_epoch(model, 3, (x, y)) is True  # an untrained MLP is far below 1.0 - 0.2
    assert all(torch.equal(v, kept[k]) for k, v in model.state_dict().items())
    fresh = build_method("fgsm_rs", {"early_stop": True}, THREAT)
    assert fresh.end_epoch(student(), 0, (x, y)) is False and fresh.previous_weights is not None
    assert build_method("fgsm_rs", {}, THREAT).holdout == 0  # off by default, as the official script


class CountingTeacher(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x):
        self.calls += 1
        return self.model(x)

    def forward_with_features(self, x):
        self.calls += 1
        return self.model.forward_with_features(x)


@pytest.mark.parametrize("name, reads, ignores", [("adaad", {"alpha": 0.5}, {"alpha": 1.0}),
                                                  ("kdiga", None, {})])
def test_the_trainer_runs_the_clean_teacher_pass_only_for_methods_that_read_it(small_digits, teacher, name, reads,
                                                                              ignores, monkeypatch):
    def teacher_calls(params, force_logits=False):
        counting = CountingTeacher(teacher)
        method = build_method(name, params, THREAT)
        if force_logits:
            monkeypatch.setattr(type(method), "needs_teacher_logits", True)
        result = Trainer(config(1), torch.device("cpu")).fit(student(), method, small_digits, teacher=counting)
        monkeypatch.undo()
        return counting.calls, result.steps

    ignored, steps = teacher_calls(ignores)
    read, _ = teacher_calls(ignores, force_logits=True) if reads is None else teacher_calls(reads)
    assert read - ignored == steps  # exactly one clean teacher pass per batch, and only when the loss reads it
