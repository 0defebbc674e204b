"""The evaluation protocol proves itself: threat-model bounds, monotonicity, the cascade, flags, caching."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from rkbench.attacks import ATTACKS, build_attack, perturbation_norm
from rkbench.attacks.pgd import PGD
from rkbench.cli import main
from rkbench.evaluator import evaluate
from rkbench.threat import ThreatModel

QUICK = {  # every registered attack, configured small enough for CPU tests
    "pgd": {"steps": 10}, "pgd10": {}, "pgd20": {}, "pgd1000": {"steps": 50}, "pgd20-r10": {"restarts": 2}, "cw20": {},
    "mifgsm": {}, "deepfool": {"steps": 10}, "autoattack": {"version": "fast"}, "square": {"n_queries": 1000},
    "transfer": {"steps": 10}, "transfer-teacher": {},  # crafted on the attacked model itself here (bound())
}


def bound(name, threat, model, x, y):
    """The attack, with a transfer attack's examples crafted on ``model`` (its own white-box PGD)."""
    attack = build_attack(name, threat, **QUICK[name])
    if attack.needs_source_model:
        attack.use(attack.craft(model, x, y, batch_size=64))
    return attack


def test_quick_configs_cover_every_attack():
    assert set(QUICK) == set(ATTACKS.names())


@pytest.mark.parametrize("norm, eps", [("linf", 0.1), ("l2", 0.6)])
@pytest.mark.parametrize("name", sorted(QUICK))
def test_every_attack_stays_within_the_threat_model(trained_cnn, digits, name, norm, eps):
    x, y = digits.x_test[:32], digits.y_test[:32]
    x_adv = bound(name, ThreatModel(norm=norm, eps=eps), trained_cnn, x, y)(trained_cnn, x, y)
    assert perturbation_norm(x_adv - x, norm).max() <= eps + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        attacked = (trained_cnn(x_adv).argmax(1) == y).float().mean()
        clean = (trained_cnn(x).argmax(1) == y).float().mean()
    assert attacked < clean - 0.2  # each attack breaks a non-robust model


@pytest.mark.parametrize("name", sorted(QUICK))
def test_at_eps_zero_robust_accuracy_is_clean_accuracy(trained_cnn, digits, name):
    # eps 0 is refused in suites; built directly it must leave every input as it was
    threat = ThreatModel.model_construct(norm="linf", eps=0.0, step_size=0.0, steps=10)
    x, y = digits.x_test[:40], digits.y_test[:40]
    x_adv = bound(name, threat, trained_cnn, x, y)(trained_cnn, x, y)
    with torch.no_grad():
        assert torch.equal(trained_cnn(x_adv).argmax(1), trained_cnn(x).argmax(1))


@pytest.fixture(scope="module")
def protocol(trained_cnn, digits):
    threat = ThreatModel(eps=0.1)
    # AutoAttack seeds its random starts per call, not per example, so only the per-example
    # deterministic attacks (PGD draws each example's start from the example's own seed) take part
    attacks = lambda: {"pgd20": build_attack("pgd20", threat), "pgd1000": build_attack("pgd1000", threat, steps=200),  # noqa: E731
                       "pgd20-r": build_attack("pgd20-r10", threat, restarts=4), "cw20": build_attack("cw20", threat),
                       "mifgsm": build_attack("mifgsm", threat), "deepfool": build_attack("deepfool", threat)}
    x, y = digits.x_test[:200], digits.y_test[:200]
    full = evaluate(trained_cnn, x, y, attacks(), cascade=False)
    cascaded = evaluate(trained_cnn, x, y, attacks(), cascade=True)
    return full, cascaded


def test_stronger_attacks_score_lower_and_worst_case_is_lowest(protocol):
    full, _ = protocol
    acc = {label: full.accuracy(label) for label in ("pgd20", "pgd1000", "pgd20-r", "cw20", "mifgsm", "deepfool")}
    assert acc["pgd1000"] <= acc["pgd20"] and acc["pgd20-r"] <= acc["pgd20"]
    assert acc["pgd20"] < full.clean_accuracy - 0.5
    assert full.worst_case_accuracy <= min(acc.values())
    assert full.flags == []


def test_cascade_gives_the_same_worst_case_per_example(protocol):
    full, cascaded = protocol
    assert np.array_equal(full.worst_case(), cascaded.worst_case())
    assert cascaded.accuracy("pgd20") == full.accuracy("pgd20")  # the cheapest attack is always exact
    assert cascaded.accuracy("deepfool") is None  # run on survivors only: reported as "cascade"
    assert cascaded.evaluated["deepfool"].sum() < full.evaluated["deepfool"].sum()


def test_cascade_with_an_exact_column(trained_cnn, digits):
    threat = ThreatModel(eps=0.1)
    x, y = digits.x_test[:100], digits.y_test[:100]
    result = evaluate(trained_cnn, x, y, {"pgd20": build_attack("pgd20", threat),
                                          "pgd50": build_attack("pgd", threat, steps=50)}, exact=["pgd50"])
    assert result.accuracy("pgd50") is not None and result.evaluated["pgd50"].all()


def test_adding_an_attack_reuses_the_old_arrays(trained_cnn, digits):
    threat = ThreatModel(eps=0.1)
    x, y = digits.x_test[:100], digits.y_test[:100]
    first = evaluate(trained_cnn, x, y, {"pgd20": build_attack("pgd20", threat)})

    class Forbidden(PGD):
        def run(self, model, x, y):
            raise AssertionError("pgd20 was recomputed")

    second = evaluate(trained_cnn, x, y, {"pgd20": Forbidden(threat, steps=20),
                                          "pgd50": build_attack("pgd", threat, steps=50)}, previous=first)
    assert np.array_equal(second.correct["pgd20"], first.correct["pgd20"])
    assert second.worst_case_accuracy <= first.worst_case_accuracy


class Quantized(nn.Module):
    """Rounds its input before the network: the gradient is zero almost everywhere (masking)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(torch.round(x * 4) / 4)


def test_gradient_masking_trips_the_flags(trained_cnn, digits):
    masked = Quantized(trained_cnn).eval()
    threat = ThreatModel(eps=0.15)
    x, y = digits.x_test[:150], digits.y_test[:150]
    result = evaluate(masked, x, y, {"pgd20": build_attack("pgd20", threat),
                                     "square": build_attack("square", threat, n_queries=300)}, cascade=False)
    codes = {flag["code"] for flag in result.flags}
    assert "zero_gradients" in codes
    assert "square_beats_whitebox" in codes


def test_stronger_attack_scoring_higher_is_flagged(trained_cnn, digits):
    threat = ThreatModel(eps=0.1)
    x, y = digits.x_test[:150], digits.y_test[:150]
    # a "PGD-1000" whose steps are too small to move: broken, and the flag must say so
    result = evaluate(trained_cnn, x, y, {"pgd20": build_attack("pgd20", threat),
                                          "pgd1000": build_attack("pgd", threat, steps=1000 // 20, step_size=1e-7,
                                                                  random_start=False)}, cascade=False)
    assert any(f["code"] == "stronger_attack_weaker" for f in result.flags)


def test_robust_above_clean_is_flagged(trained_cnn, digits):
    class Helpful(PGD):
        """Descends the loss: it *fixes* misclassified examples, so its accuracy beats clean."""

        def run(self, model, x, y):
            delta = torch.zeros_like(x, requires_grad=True)
            loss = nn.functional.cross_entropy(model(x + delta), y)
            (grad,) = torch.autograd.grad(loss, delta)
            return (x - self.threat.eps * grad.sign()).clamp(0, 1)

    threat = ThreatModel(eps=0.1)
    result = evaluate(trained_cnn, digits.x_test, digits.y_test, {"helpful": Helpful(threat)}, cascade=False)
    assert any(f["code"] == "robust_above_clean" for f in result.flags)
    assert result.accuracy("helpful") > result.clean_accuracy  # the flag explains the number, never changes it


def test_cli_eval_caches_results(finished_run, tmp_path):
    args = ["eval", "--model", str(finished_run), "--eps", "0.1", "--attacks", "pgd20,pgd", "--cache-dir",
            str(tmp_path / "cache"), "--json"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    second = CliRunner().invoke(main, args)
    one, two = json.loads(first.output), json.loads(second.output)
    assert one["cached"] == [] and set(two["cached"]) == {"pgd20", "pgd"}
    assert one["robust_accuracy"] == two["robust_accuracy"] and one["clean_accuracy"] > 0.5


def test_cli_eval_bad_input_is_one_line(tmp_path):
    result = CliRunner().invoke(main, ["eval", "--model", "checkpoint:model=mlp,path=" + str(tmp_path / "x.pt"),
                                       "--no-cache"])
    assert result.exit_code == 2 and result.output.strip().startswith("error: checkpoint not found")
    result = CliRunner().invoke(main, ["eval", "--model", "nosuchsource", "--no-cache"])
    assert result.exit_code == 2 and "unknown teacher source 'nosuchsource'" in result.output
    result = CliRunner().invoke(main, ["eval", "--model", str(tmp_path), "--attacks", "pgd21", "--no-cache"])
    assert result.exit_code == 2 and "did you mean 'pgd20'" in result.output


@pytest.fixture
def finished_run(tmp_path, trained_cnn):
    """A directory shaped like a finished run holding the trained cnn_tiny."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"identity": {"student": {"model": "cnn_tiny", "options": {}},
                                                              "dataset": {"name": "digits"}}}))
    torch.save(trained_cnn.state_dict(), run / "student.pt")
    return run
