"""MTARD's loss and its weight update against a hand computation over two steps (not by calling the method)."""
import math

import pytest
import torch
import torch.nn.functional as F

from rkbench.methods import Batch, build_method
from rkbench.models import build_model
from rkbench.threat import ThreatModel

THREAT = ThreatModel(eps=0.1, step_size=0.03, steps=3)
pytestmark = pytest.mark.usefixtures("one_thread")


def hand_kl_mean(student_logits, teacher_logits):
    """KL(softmax(teacher) || softmax(student)) per example, summed, / (batch x classes): loops."""
    total = 0.0
    for s_row, t_row in zip(student_logits.tolist(), teacher_logits.tolist()):
        p_s = [math.exp(v) / sum(math.exp(u) for u in s_row) for v in s_row]
        p_t = [math.exp(v) / sum(math.exp(u) for u in t_row) for v in t_row]
        total += sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s))
    return total / (len(s_row) * student_logits.shape[0])


def hand_attack(student, x, y, generator, steps, step_size, eps):
    """x + 0.001 N(0, 1) clipped, then signed steps on each example's own CE, projected and clipped."""
    x_adv = (x + 0.001 * torch.randn(x.shape, generator=generator).to(x.dtype)).clamp(0, 1)
    for _ in range(steps):
        rows = []
        for i in range(x.shape[0]):
            xi = x_adv[i:i + 1].clone().requires_grad_(True)
            (g,) = torch.autograd.grad(F.cross_entropy(student(xi), y[i:i + 1]), xi)
            rows.append(g[0])
        stepped = x_adv + step_size * torch.stack(rows).sign()
        x_adv = torch.min(torch.max(stepped, x - eps), x + eps).clamp(0, 1).detach()
    return x_adv


@pytest.fixture
def setup():
    torch.manual_seed(0)
    student = build_model("mlp", 4, (1, 3, 3), hidden=8).double()
    clean = build_model("mlp", 4, (1, 3, 3), hidden=8).double().eval().requires_grad_(False)
    robust = build_model("mlp", 4, (1, 3, 3), hidden=8).double().eval().requires_grad_(False)
    x = torch.rand(5, 1, 3, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 1])
    return student, clean, robust, x, y


def group_batch(clean, robust, x, y, epoch, epochs=10):
    with torch.no_grad():
        clean_logits = clean(x)
    return Batch(x, y, teachers={"clean": clean, "robust": robust}, teachers_logits={"clean": clean_logits},
                 epoch=epoch, epochs=epochs)


def test_mtard_loss_and_weight_update_over_two_steps_match_hand_computation(setup):
    student, clean, robust, x, y = setup
    params = {"weight_lr": 0.4, "beta": 2.0, "clean_weight": 0.3, "weight_lr_milestones": [0.5], "loss_scale": 10}
    method = build_method("mtard", params, THREAT, seed=4)
    replay = build_method("mtard", params, THREAT, seed=4).generator  # the same noise, drawn by hand
    optimizer = torch.optim.SGD(student.parameters(), lr=0.5)
    w, initial, eta = 0.3, None, 0.4
    for step, epoch in enumerate([0, 5]):  # the second step is past the milestone: eta x 0.1
        batch = group_batch(clean, robust, x, y, epoch)
        loss = method.loss(student, batch)
        x_adv = hand_attack(student, x, y, replay, 3, 0.03, 0.1)
        with torch.no_grad():
            adv = 10 * hand_kl_mean(student(x_adv), robust(x_adv))  # the robust teacher on x_adv
            nat = 10 * hand_kl_mean(student(x), clean(x))  # the clean teacher on x
        initial = initial or (adv, nat)
        r_adv, r_nat = (adv / initial[0]) ** 2, (nat / initial[1]) ** 2
        eta = 0.4 if epoch < 5 else 0.04
        w = w - eta * (w - r_nat / (r_adv + r_nat))
        assert method.clean_weight == pytest.approx(w, rel=1e-12)
        assert loss.item() == pytest.approx((1 - w) * adv + w * nat, rel=1e-9)
        if step == 0:
            assert w == pytest.approx(0.3 - 0.4 * (0.3 - 0.5))  # L/L0 = 1 for both: the target is 1/2
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert r_adv != pytest.approx(r_nat)  # the second step did move the weights by the loss ratio


def test_mtard_weight_lr_decays_at_fractions_or_epoch_numbers():
    fractions = build_method("mtard", {"weight_lr": 0.1, "weight_lr_milestones": [0.5, 0.75]}, THREAT)
    assert [fractions.weight_lr(e, 8) for e in (0, 3, 4, 6)] == pytest.approx([0.1, 0.1, 0.01, 0.001])
    official = build_method("mtard", {}, THREAT)  # 0.025, x0.1 after epochs 215, 260, 285 of 300
    assert [official.weight_lr(e, 300) for e in (214, 215, 260, 285)] == pytest.approx(
        [0.025, 0.0025, 0.00025, 0.000025])


def test_mtard_state_resumes_the_weights_exactly():
    method = build_method("mtard", {"weight_lr": 0.3}, THREAT)
    method.update_weights(0.8, 0.5, 0, 10)
    method.update_weights(0.4, 0.45, 0, 10)
    resumed = build_method("mtard", {"weight_lr": 0.3}, THREAT)
    resumed.load_state(method.state())
    assert resumed.update_weights(0.3, 0.4, 1, 10) == method.update_weights(0.3, 0.4, 1, 10)


def test_mtard_gradients_reach_the_student_only(setup):
    student, clean, robust, x, y = setup
    method = build_method("mtard", {}, THREAT, seed=1)
    method.loss(student, group_batch(clean, robust, x, y, 0)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for m in (clean, robust) for p in m.parameters())
