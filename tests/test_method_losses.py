"""The methods after the spine (kd, ard, at: test_methods.py), each loss against an independent hand
computation from its formula.

Adversarial examples are replayed from the same seeded generator (as test_methods.py does for ARD)
or rebuilt here step by step; the losses themselves are recomputed with explicit loops.
"""
import copy
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from rkbench.errors import ConfigError
from rkbench.methods import METHODS, Batch, build_method, model_mode
from rkbench.methods.adversarial import kl_attack
from rkbench.models import build_model
from rkbench.suite import suite_from_dict
from rkbench.threat import ThreatModel

from conftest import builtin_names, scalar, tiny_suite_dict

TEACHER_METHODS = [name for name in builtin_names(METHODS) if METHODS.get(name).uses_teacher]
THREAT = ThreatModel(eps=0.1, step_size=0.03, steps=3)


# ---------------------------------------------------------------------------------------------
# hand computations: plain Python over rows


def softmax(row, t=1.0):
    exps = [math.exp(v / t) for v in row]
    return [v / sum(exps) for v in exps]


def kl_rows(student_logits, target_logits, t=1.0):
    """Per-example KL(softmax(target/t) || softmax(student/t))."""
    out = []
    for s_row, t_row in zip(student_logits.tolist(), target_logits.tolist()):
        p_s, p_t = softmax(s_row, t), softmax(t_row, t)
        out.append(sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s)))
    return out


def reduce(values, classes, reduction):
    return sum(values) / len(values) / (classes if reduction == "mean" else 1)


def ce_rows(logits, y):
    return [-row[label] + math.log(sum(math.exp(v) for v in row)) for row, label in zip(logits.tolist(), y.tolist())]


def mean(values):
    return sum(values) / len(values)


def cosine(a, b):
    dot = sum(u * v for u, v in zip(a, b))
    return dot / (math.sqrt(sum(u * u for u in a)) * math.sqrt(sum(v * v for v in b)))


def per_example_input_grads(model, x, y):
    """grad_x_i CE(model(x_i), y_i), one example at a time (no batch code involved)."""
    grads = []
    for i in range(x.shape[0]):
        xi = x[i:i + 1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(xi), y[i:i + 1]), xi)
        grads.append(g[0])
    return torch.stack(grads)


def in_ball(x_adv, x, eps):
    return bool((x_adv - x).abs().max() <= eps + 1e-12 and x_adv.min() >= 0 and x_adv.max() <= 1)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread (conftest.py)


def batch_for(teacher, x, y, **kw):
    with torch.no_grad():
        logits, features = teacher.forward_with_features(x)
    return Batch(x, y, teacher_logits=logits, teacher_features=features, teacher=teacher, **kw)


# ---------------------------------------------------------------------------------------------
# registry and parameters


@pytest.mark.parametrize("method, params, field", [
    ("iad", {"warmup": -1}, "warmup"), ("kdiga", {"grad_norm": "pixel"}, "grad_norm"),
    ("free_at", {"m": 0}, "m"), ("rslad", {"adv_wieght": 1}, "adv_wieght"), ("fgsm_rs", {"early_stop_drop": 2},
                                                                              "early_stop_drop")])
def test_bad_parameters_give_one_line_naming_the_field(method, params, field):
    suite = tiny_suite_dict(methods={method: params})
    with pytest.raises(ConfigError) as info:
        suite_from_dict(suite, "s.yaml")
    message = str(info.value)
    assert "\n" not in message and f"methods.{method}.{field}" in message


# ---------------------------------------------------------------------------------------------
# losses by hand


def test_trades_loss_matches_hand_computation(setup):
    student, _, x, y = setup
    method = build_method("trades", {"beta": 3.0}, THREAT, seed=2)
    loss = scalar(method.loss(student, Batch(x, y)))
    replay = build_method("trades", {"beta": 3.0}, THREAT, seed=2)
    with torch.no_grad(), model_mode(student, False):
        target = student(x)
    with model_mode(student, False):
        x_adv = kl_attack(student, x, THREAT, steps=3, step_size=0.03, generator=replay.generator,
                          target_logits=target)
    assert in_ball(x_adv, x, 0.1) and not torch.equal(x_adv, x)
    with torch.no_grad():
        clean, adv = student(x), student(x_adv)
    expected = mean(ce_rows(clean, y)) + 3.0 * mean(kl_rows(adv, clean))
    assert loss.item() == pytest.approx(expected, rel=1e-9)


def test_kl_attack_raises_the_kl_and_stays_in_the_ball(setup):
    student, teacher, x, y = setup
    with torch.no_grad():
        target = teacher(x)
    x_adv = kl_attack(student, x, ThreatModel(eps=0.3), steps=5, step_size=0.1, generator=torch.Generator(),
                      target_logits=target)
    with torch.no_grad():
        assert mean(kl_rows(student(x_adv), target)) > mean(kl_rows(student(x), target))
    assert in_ball(x_adv, x, 0.3)
    both = kl_attack(student, x, ThreatModel(eps=0.3), steps=5, step_size=0.1, generator=torch.Generator(),
                     teacher=teacher)  # AdaAD: the teacher is queried on x' too
    with torch.no_grad():
        assert mean(kl_rows(student(both), teacher(both))) > mean(kl_rows(student(x), teacher(x)))
    assert in_ball(both, x, 0.3)


@pytest.mark.parametrize("reduction", ["mean", "batchmean"])
def test_rslad_loss_matches_hand_computation(setup, reduction):
    student, teacher, x, y = setup
    batch = batch_for(teacher, x, y)
    method = build_method("rslad", {"kl_reduction": reduction}, THREAT, seed=4)
    loss = method.loss(student, batch)
    replay = build_method("rslad", {}, THREAT, seed=4)
    with model_mode(student, False):
        x_adv = kl_attack(student, x, THREAT, steps=3, step_size=0.03, generator=replay.generator,
                          target_logits=batch.teacher_logits)
    assert in_ball(x_adv, x, 0.1)
    with torch.no_grad():
        adv, clean = student(x_adv), student(x)
    t = batch.teacher_logits  # the teacher on the clean x, in both terms
    expected = 5 / 6 * reduce(kl_rows(adv, t), 4, reduction) + 1 / 6 * reduce(kl_rows(clean, t), 4, reduction)
    assert loss.item() == pytest.approx(expected, rel=1e-9)


def test_adaad_loss_matches_hand_computation(setup):
    student, teacher, x, y = setup
    batch = batch_for(teacher, x, y)
    method = build_method("adaad", {"alpha": 0.7}, THREAT, seed=5)
    loss = method.loss(student, batch)
    replay = build_method("adaad", {}, THREAT, seed=5)
    with model_mode(student, False):
        x_adv = kl_attack(student, x, THREAT, steps=3, step_size=0.03, generator=replay.generator, teacher=teacher)
    assert in_ball(x_adv, x, 0.1)
    with torch.no_grad():
        expected = (0.7 * reduce(kl_rows(student(x_adv), teacher(x_adv)), 4, "mean")
                    + 0.3 * reduce(kl_rows(student(x), teacher(x)), 4, "mean"))
    assert loss.item() == pytest.approx(expected, rel=1e-9)


def test_adaad_at_alpha_one_runs_no_clean_student_pass(setup):
    student, teacher, x, y = setup
    seen = []
    handle = student.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    build_method("adaad", {}, THREAT).loss(student, batch_for(teacher, x, y))
    handle.remove()
    assert len(seen) == 3 + 1 and not any(torch.equal(s, x) for s in seen)


@pytest.mark.parametrize("epoch", [2, 7])
def test_iad_loss_matches_hand_computation_before_and_after_warmup(setup, epoch):
    student, teacher, x, y = setup
    params = {"t": 2.0, "alpha": 0.8, "beta": 0.5, "warmup": 0.5}
    batch = batch_for(teacher, x, y, epoch=epoch, epochs=10)
    loss = scalar(build_method("iad", params, THREAT, seed=6, attack_mode="eval").loss(student, batch))
    x_adv = build_method("iad", params, THREAT, seed=6, attack_mode="eval").craft(student, x, y)  # ARD's CE-PGD, replayed
    assert in_ball(x_adv, x, 0.1)
    with torch.no_grad():
        adv, clean, t_clean, t_adv = student(x_adv), student(x), teacher(x), teacher(x_adv)
    distill = 4 * mean(kl_rows(adv, t_clean, 2.0))
    ce = mean(ce_rows(clean, y))
    if epoch < 5:  # warm-up: plain ARD
        expected = 0.8 * distill + 0.2 * ce
    else:
        trust = [softmax(row)[label] ** 0.5 for row, label in zip(t_adv.tolist(), y.tolist())]
        introspect = mean([(1 - a) * kl for a, kl in zip(trust, kl_rows(adv, clean))])
        expected = 0.8 * (distill + introspect) + 0.2 * ce
    assert loss.item() == pytest.approx(expected, rel=1e-9)


def test_iad_warmup_is_a_fraction_or_an_epoch():
    fraction, absolute = build_method("iad", {}, THREAT), build_method("iad", {"warmup": 60}, THREAT)
    assert fraction.warmup_epochs(200) == 60 and fraction.warmup_epochs(20) == 6
    assert absolute.warmup_epochs(200) == 60


@pytest.mark.parametrize("grad_norm", ["batch", "sample"])
def test_kdiga_loss_matches_hand_computation(setup, grad_norm):
    student, teacher, x, y = setup
    params = {"t": 2.0, "alpha": 0.6, "gamma": 3.0, "grad_norm": grad_norm}
    loss = scalar(build_method("kdiga", params, THREAT).loss(student, batch_for(teacher, x, y)))
    b = x.shape[0]
    # each example's own CE gradient; the code's batch-mean CE gives row i a 1/B factor
    diff = (per_example_input_grads(student, x, y) - per_example_input_grads(teacher, x, y)) / b
    rows = [math.sqrt(sum(v * v for v in row)) for row in diff.flatten(1).tolist()]
    align = math.sqrt(sum(r * r for r in rows)) / b if grad_norm == "batch" else sum(rows)
    with torch.no_grad():
        s, t = student(x), teacher(x)
    expected = 0.6 * 4 * reduce(kl_rows(s, t, 2.0), 4, "mean") + 0.4 * mean(ce_rows(s, y)) + 3.0 * align
    assert loss.item() == pytest.approx(expected, rel=1e-9)


def test_kdiga_alignment_is_zero_when_student_and_teacher_are_the_same_network(setup):
    student, _, x, y = setup
    twin = copy.deepcopy(student).eval().requires_grad_(False)
    method = build_method("kdiga", {"alpha": 0.0, "gamma": 100.0}, THREAT)
    loss = scalar(method.loss(student, batch_for(twin, x, y)))
    with torch.no_grad():
        assert loss.item() == pytest.approx(mean(ce_rows(student(x), y)), rel=1e-12)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in student.parameters())


def test_kdiga_alignment_reaches_the_student_weights_by_double_backprop(setup):
    student, teacher, x, y = setup
    grads = []
    for gamma in (0.0, 1.0):
        student.zero_grad()
        scalar(build_method("kdiga", {"gamma": gamma}, THREAT).loss(student, batch_for(teacher, x, y))).backward()
        grads.append(torch.cat([p.grad.flatten() for p in student.parameters()]))
    assert not torch.allclose(grads[0], grads[1])


@pytest.mark.parametrize("teacher_hidden", [8, 6])
def test_rrm_loss_matches_hand_computation(setup, teacher_hidden):
    student, _, x, y = setup
    teacher = build_model("mlp", 4, (1, 3, 3), hidden=teacher_hidden).double().eval().requires_grad_(False)
    method = build_method("rrm", {"ce_weight": 0.3}, THREAT)
    method.prepare(student, teacher)
    assert hasattr(student, "rrm_projection") == (teacher_hidden != 8)
    loss = method.loss(student, batch_for(teacher, x, y))
    with torch.no_grad():
        z_s, z_t, logits = student.features(x).tolist(), teacher.features(x).tolist(), student(x)
    if teacher_hidden != 8:  # P(z) = W z + b, by hand
        w, bias = student.rrm_projection.weight.tolist(), student.rrm_projection.bias.tolist()
        z_s = [[sum(wij * zj for wij, zj in zip(w_row, z)) + bi for w_row, bi in zip(w, bias)] for z in z_s]
    expected = 0.3 * mean(ce_rows(logits, y)) - mean([cosine(a, b) for a, b in zip(z_s, z_t)])
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    method.finish(student)
    assert not hasattr(student, "rrm_projection")


def test_rrm_makes_no_adversarial_example(setup, monkeypatch):
    student, teacher, x, y = setup

    def forbidden(*args, **kwargs):
        raise AssertionError("rrm crafted an adversarial example")

    import rkbench.methods.adversarial as adversarial
    monkeypatch.setattr(adversarial, "pgd_attack", forbidden)
    monkeypatch.setattr(adversarial, "kl_attack", forbidden)
    seen = []
    handle = student.body.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    build_method("rrm", {}, THREAT).loss(student, batch_for(teacher, x, y))
    handle.remove()
    assert len(seen) == 1 and torch.equal(seen[0], x)  # one clean student pass, nothing else


def test_free_at_ascends_delta_with_the_gradient_of_the_same_backward_pass(setup):
    student, _, x, y = setup
    method = build_method("free_at", {"m": 3}, THREAT)
    assert method.replays == 3
    delta = torch.zeros_like(x)
    for _ in range(3):
        loss = method.loss(student, Batch(x, y))
        x_in = (x + delta).detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(student(x_in), y), x_in)
        with torch.no_grad():
            assert loss.item() == pytest.approx(mean(ce_rows(student(x + delta), y)), rel=1e-9)
        loss.backward()  # the trainer's one backward pass: weights and delta
        delta = ((x + (delta + 0.1 * grad.sign()).clamp(-0.1, 0.1)).clamp(0, 1) - x)
    assert torch.allclose(method.state()["delta"], delta, atol=1e-12)
    assert in_ball(x + delta, x, 0.1) and delta.abs().max() > 0.05


def test_free_perturbation_persists_across_minibatches_and_a_short_last_batch(setup):
    student, _, x, y = setup
    method = build_method("free_at", {}, THREAT)
    method.loss(student, Batch(x, y)).backward()
    kept = method.state()["delta"].clone()
    x_small = torch.rand(3, 1, 3, 3, dtype=torch.float64)
    seen = []
    handle = student.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    method.loss(student, Batch(x_small, y[:3])).backward()
    handle.remove()
    assert torch.allclose(seen[0], (x_small + kept[:3]).clamp(0, 1))  # the first rows, valid pixels
    assert torch.equal(method.state()["delta"][3:], kept[3:])
    restored = build_method("free_at", {}, THREAT)
    restored.load_state(method.state())
    assert torch.equal(restored.state()["delta"], method.state()["delta"])


@pytest.mark.parametrize("delta_grad", ["ce", "ard"])
def test_fast_ard_loss_and_delta_update_match_hand_computation(setup, delta_grad):
    student, teacher, x, y = setup
    params = {"t": 3.0, "alpha": 0.6, "kl_reduction": "batchmean", "m": 2, "delta_grad": delta_grad}
    method = build_method("fast_ard", params, THREAT)
    batch = batch_for(teacher, x, y)
    delta = torch.zeros_like(x)
    for _ in range(3):
        loss = scalar(method.loss(student, batch))
        with torch.no_grad():
            adv, clean = student(x + delta), student(x)
        expected = 0.6 * 9 * mean(kl_rows(adv, batch.teacher_logits, 3.0)) + 0.4 * mean(ce_rows(clean, y))
        assert loss.item() == pytest.approx(expected, rel=1e-9)
        x_in = (x + delta).detach().requires_grad_(True)
        logits = student(x_in)
        if delta_grad == "ce":  # the paper: the student's CE to the labels
            objective = F.cross_entropy(logits, y)
        else:  # the ARD loss itself, written out here
            log_p_s = F.log_softmax(logits / 3.0, dim=1)
            p_t = F.softmax(batch.teacher_logits / 3.0, dim=1)
            objective = 0.6 * 9 * (p_t * (p_t.log() - log_p_s)).sum(1).mean()
        (grad,) = torch.autograd.grad(objective, x_in)
        loss.backward()
        delta = ((x + (delta + 0.1 * grad.sign()).clamp(-0.1, 0.1)).clamp(0, 1) - x)
    assert torch.allclose(method.state()["delta"], delta, atol=1e-12)


def test_fgsm_rs_loss_matches_a_hand_built_fgsm_step(setup):
    student, _, x, y = setup
    loss = build_method("fgsm_rs", {}, THREAT, seed=7, attack_mode="eval").loss(student, Batch(x, y))
    generator = torch.Generator().manual_seed(10_000 + 7)  # the method's per-run stream
    delta = (torch.rand(x.shape, generator=generator).double() * 2 - 1) * 0.1  # drawn in float32, like PGD
    delta = ((x + delta).clamp(0, 1) - x).requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(student(x + delta), y), delta)
    delta = (delta + 0.125 * grad.sign()).clamp(-0.1, 0.1)  # one step of 1.25 * eps
    x_adv = (x + delta).clamp(0, 1).detach()
    assert in_ball(x_adv, x, 0.1)
    with torch.no_grad():
        assert loss.item() == pytest.approx(mean(ce_rows(student(x_adv), y)), rel=1e-9)


# ---------------------------------------------------------------------------------------------
# properties shared by every new method


@pytest.mark.parametrize("name", TEACHER_METHODS)
def test_gradients_reach_the_student_only(setup, name):
    student, _, x, y = setup
    torch.manual_seed(1)
    teacher = build_model("cnn_tiny", 4, (1, 3, 3), width=4).double().eval().requires_grad_(False)  # BatchNorm
    before = copy.deepcopy(teacher.state_dict())
    method = build_method(name, {}, ThreatModel(eps=0.1), seed=1)
    method.prepare(student, teacher)
    batch = batch_for(teacher, x, y, epoch=9, epochs=10)
    roles = METHODS.get(name).teacher_roles  # a multi-teacher method: the teacher in each of its roles
    if roles:
        batch = dataclasses.replace(batch, teachers={role: teacher for role in roles},
                                    teachers_logits={role: batch.teacher_logits for role in roles})
    for _ in range(2):
        student.zero_grad()
        scalar(method.loss(student, batch)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters()) and not teacher.training
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())  # BN statistics too
