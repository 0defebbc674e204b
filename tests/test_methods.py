"""Each loss against an independent hand computation from its formula (not by calling the method)."""
import math

import pytest
import torch
import torch.nn.functional as F

from rkbench.methods import Batch, build_method
from rkbench.threat import ThreatModel

from conftest import scalar


def hand_kl(student_logits, teacher_logits, t):
    """Per-sample KL(p_T || p_S) at temperature t, averaged over the batch, by explicit loops."""
    total = 0.0
    for s_row, t_row in zip(student_logits.tolist(), teacher_logits.tolist()):
        s_exp = [math.exp(v / t) for v in s_row]
        t_exp = [math.exp(v / t) for v in t_row]
        p_s = [v / sum(s_exp) for v in s_exp]
        p_t = [v / sum(t_exp) for v in t_exp]
        total += sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s))
    return total / len(student_logits)


def hand_ce(logits, y):
    total = 0.0
    for row, label in zip(logits.tolist(), y.tolist()):
        total += -row[label] + math.log(sum(math.exp(v) for v in row))
    return total / len(y)


def test_kd_loss_matches_hand_computation(setup):
    student, teacher, x, y = setup
    method = build_method("kd", {"t": 3.0, "alpha": 0.7}, ThreatModel())
    with torch.no_grad():
        teacher_logits = teacher(x)
    loss = method.loss(student, Batch(x, y, teacher_logits=teacher_logits))
    s = student(x).detach()
    expected = 0.7 * 9 * hand_kl(s, teacher_logits, 3.0) + 0.3 * hand_ce(s, y)
    assert loss.item() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("reduction, scale", [("batchmean", 1.0), ("mean", 1 / 4)])
def test_ard_loss_matches_hand_computation(setup, reduction, scale):
    student, teacher, x, y = setup
    threat = ThreatModel(eps=0.1, step_size=0.03, steps=3)
    params = {"t": 5.0, "alpha": 0.6, "kl_reduction": reduction}
    method = build_method("ard", params, threat, seed=3, attack_mode="eval")
    with torch.no_grad():
        teacher_logits = teacher(x)
    loss = scalar(method.loss(student, Batch(x, y, teacher_logits=teacher_logits)))
    # replay the same attack: same generator seed, PGD maximizing CE on the student
    replay = build_method("ard", params, threat, seed=3, attack_mode="eval")
    x_adv = replay.craft(student, x, y)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-12 and not torch.equal(x_adv, x)
    with torch.no_grad():
        s_adv, s_clean = student(x_adv), student(x)
    # 'mean' divides the summed KL by batch x classes (nn.KLDivLoss default), 'batchmean' by batch
    expected = 0.6 * 25 * hand_kl(s_adv, teacher_logits, 5.0) * scale + 0.4 * hand_ce(s_clean, y)
    assert loss.item() == pytest.approx(expected, rel=1e-9)


def test_ard_crafts_on_the_student_to_raise_its_ce(setup):
    student, teacher, x, y = setup
    method = build_method("ard", {}, ThreatModel(eps=0.3, step_size=0.1, steps=5), attack_mode="eval")
    x_adv = method.craft(student, x, y)
    with torch.no_grad():
        assert F.cross_entropy(student(x_adv), y) > F.cross_entropy(student(x), y)


def test_ard_at_alpha_one_skips_the_clean_forward(setup):
    student, teacher, x, y = setup
    calls = []
    handle = student.register_forward_hook(lambda m, i, o: calls.append(i[0]))
    method = build_method("ard", {"alpha": 1.0, "attack_steps": 2}, ThreatModel(eps=0.1))
    method.loss(student, Batch(x, y, teacher_logits=teacher(x).detach()))
    handle.remove()
    assert len(calls) == 2 + 1  # attack steps + one adversarial forward, no clean forward
    assert not any(torch.equal(c, x) for c in calls[2:])


def test_gradients_reach_the_student_only(setup):
    student, teacher, x, y = setup
    teacher.requires_grad_(False)
    before = [p.clone() for p in teacher.parameters()]
    for name in ("kd", "ard"):
        student.zero_grad()
        loss = scalar(build_method(name, {}, ThreatModel(eps=0.1)).loss(
            student, Batch(x, y, teacher_logits=teacher(x).detach(), teacher=teacher)))
        loss.backward()
        assert all(p.grad is not None for p in student.parameters())
        assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters()))


def test_at_trains_on_adversarial_examples(setup):
    student, _, x, y = setup
    method = build_method("at", {}, ThreatModel(eps=0.1, steps=3), seed=1, attack_mode="eval")
    loss = method.loss(student, Batch(x, y))
    x_adv = build_method("at", {}, ThreatModel(eps=0.1, steps=3), seed=1, attack_mode="eval").craft(student, x, y)
    with torch.no_grad():
        assert loss.item() == pytest.approx(hand_ce(student(x_adv), y), rel=1e-9)
