"""Transfer diagnostics on tiny models, against values computed independently."""
import numpy as np
import pytest
import torch
from torch import nn

from rkbench.attacks import pgd_attack
from rkbench.diagnostics import (adversarial_agreement, diagnose, generator, gradient_cosine, local_linearity,
                                 model_linearity, transfer_correct)
from rkbench.threat import ThreatModel

THREAT = ThreatModel(norm="linf", eps=0.1)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread (conftest.py)


def linear(weight: torch.Tensor) -> nn.Module:
    model = nn.Sequential(nn.Flatten(), nn.Linear(weight.shape[1], weight.shape[0], bias=False))
    with torch.no_grad():
        model[1].weight.copy_(weight)
    return model.eval()


@pytest.fixture()
def data():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(16, 1, 3, 3, generator=generator) * 0.6 + 0.2
    y = torch.randint(0, 4, (16,), generator=generator)
    return x, y


def test_gradient_cosine_of_linear_models_by_hand(data):
    x, y = data
    ws, wt = torch.randn(4, 9, generator=torch.Generator().manual_seed(1)), torch.randn(4, 9)
    cosine = gradient_cosine(linear(ws), linear(wt), x, y).numpy()
    # d CE / dx = W^T (softmax(Wx) - onehot(y)), in numpy
    X, Y = x.flatten(1).numpy().astype(np.float64), np.eye(4)[y.numpy()]

    def grad(w):
        w = w.numpy().astype(np.float64)
        z = X @ w.T
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        return (p - Y) @ w

    gs, gt = grad(ws), grad(wt)
    expected = (gs * gt).sum(1) / np.linalg.norm(gs, axis=1) / np.linalg.norm(gt, axis=1)
    np.testing.assert_allclose(cosine, expected, rtol=1e-4, atol=1e-5)
    assert gradient_cosine(linear(ws), linear(ws), x, y).numpy() == pytest.approx(np.ones(16), abs=1e-6)


def test_agreement_and_transfer_when_the_student_is_the_teacher(data):
    x, y = data
    model = linear(torch.randn(4, 9, generator=torch.Generator().manual_seed(2)))
    assert adversarial_agreement(model, model, x, y, THREAT).mean().item() == 1.0
    transfer = transfer_correct(model, model, x, y, THREAT, steps=20, generator=torch.Generator().manual_seed(5))
    # the teacher's own PGD-20 accuracy, with the same random start
    x_adv = pgd_attack(model, x, y, norm="linf", eps=0.1, step_size=0.025, steps=20,
                       generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        own = (model(x_adv).argmax(1) == y).float()
    assert torch.equal(transfer, own)


def test_agreement_of_models_that_never_agree(data):
    x, y = data
    class Constant(nn.Module):
        def __init__(self, label):
            super().__init__()
            self.bias = nn.Parameter(torch.zeros(4))
            self.label = label

        def forward(self, inputs):
            logits = torch.zeros(inputs.shape[0], 4) + self.bias + inputs.flatten(1).sum(1, keepdim=True) * 0
            return logits + 10 * nn.functional.one_hot(torch.tensor(self.label), 4)

    assert adversarial_agreement(Constant(0), Constant(1), x, y, THREAT).sum().item() == 0
    # a constant model is not moved by any attack: its transfer accuracy is its clean accuracy
    assert transfer_correct(Constant(2), Constant(1), x, y, THREAT).mean().item() == pytest.approx(
        (y == 2).float().mean().item())


def test_local_linearity_of_known_losses():
    x = torch.full((3, 1, 2, 2), 0.5)
    weights = torch.tensor([0.3, -2.0, 1.0, 0.5]).view(1, 1, 2, 2)
    linear_gap = local_linearity(lambda v: (v * weights).flatten(1).sum(1), x, "linf", 0.1)
    assert linear_gap.abs().max().item() < 1e-5  # a linear loss equals its linear approximation
    quadratic_gap = local_linearity(lambda v: (v ** 2).flatten(1).sum(1), x, "linf", 0.1)
    # |(x+d)^2 - x^2 - 2x.d| = |d|^2, largest at a corner of the Linf ball: 4 pixels x 0.1^2
    assert quadratic_gap.numpy() == pytest.approx(np.full(3, 4 * 0.1 ** 2), rel=1e-4)
    l2_gap = local_linearity(lambda v: (v ** 2).flatten(1).sum(1), x, "l2", 0.1, steps=20, step_size=0.05)
    assert l2_gap.numpy() == pytest.approx(np.full(3, 0.1 ** 2), rel=1e-3)  # |d|^2 <= eps^2 on the sphere


def test_diagnose_summarizes_the_four(data):
    x, y = data
    torch.manual_seed(0)
    student = nn.Sequential(nn.Flatten(), nn.Linear(9, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(9, 16), nn.ReLU(), nn.Linear(16, 4)).train()
    same = diagnose(student, student, x, y, THREAT, batch_size=5, seed=3)
    assert same["grad_cosine"] == pytest.approx(1.0, abs=1e-5) and same["adv_agreement"] == 1.0
    assert same["n_examples"] == 16
    result = diagnose(student, teacher, x, y, THREAT, batch_size=16, seed=3)  # one batch: each diagnostic by hand
    assert teacher.training and not student.training  # modes restored
    teacher.eval()
    assert result["grad_cosine"] == pytest.approx(gradient_cosine(student, teacher, x, y).mean().item(), abs=1e-6)
    expected = transfer_correct(student, teacher, x, y, THREAT, generator=generator(3, "transfer_accuracy"))
    assert result["transfer_accuracy"] == pytest.approx(expected.mean().item())
    expected = adversarial_agreement(student, teacher, x, y, THREAT, generator=generator(3, "adv_agreement"))
    assert result["adv_agreement"] == pytest.approx(expected.mean().item())
    gamma = model_linearity(student, x, y, THREAT, generator=generator(3, "local_linearity"))
    assert result["local_linearity"] == pytest.approx(gamma.mean().item(), rel=1e-5) and result["local_linearity"] > 0
