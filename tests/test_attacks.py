import pytest

from rkbench.attacks import Attack, build_attack, perturbation_norm
from rkbench.errors import AttackError
from rkbench.evaluator import attack_correct, evaluate, predict
from rkbench.threat import ThreatModel


@pytest.mark.parametrize("norm, eps", [("linf", 0.1), ("l2", 0.5)])
def test_pgd_stays_in_the_ball_and_in_pixel_range(trained_cnn, digits, norm, eps):
    threat = ThreatModel(norm=norm, eps=eps)
    x, y = digits.x_test[:64], digits.y_test[:64]
    for options in ({"steps": 10}, {"steps": 5, "restarts": 3}, {"steps": 5, "loss": "cw"}):
        x_adv = build_attack("pgd", threat, **options)(trained_cnn, x, y)
        assert perturbation_norm(x_adv - x, norm).max() <= eps + 1e-6
        assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_pgd_lowers_accuracy_and_more_is_stronger(trained_cnn, digits):
    x, y = digits.x_test, digits.y_test
    clean = (predict(trained_cnn, x, 500) == y).float().mean().item()
    threat = ThreatModel(eps=0.1)
    result = evaluate(trained_cnn, x, y, {"pgd5": build_attack("pgd", threat, steps=5),
                                          "pgd20": build_attack("pgd20", threat),
                                          "pgd20r": build_attack("pgd20", threat, restarts=3)}, cascade=False)
    assert result.clean_accuracy == pytest.approx(clean) and clean > 0.9
    assert result.accuracy("pgd20") < clean - 0.3
    assert result.accuracy("pgd20") <= result.accuracy("pgd5") + 0.01
    assert result.accuracy("pgd20r") <= result.accuracy("pgd20") + 1e-9
    assert result.worst_case_accuracy <= min(result.accuracy(k) for k in result.correct)


def test_tiny_eps_robust_equals_clean(trained_cnn, digits):
    """An evaluation proves itself: with (almost) no budget, robust accuracy is clean accuracy."""
    x, y = digits.x_test, digits.y_test
    result = evaluate(trained_cnn, x, y, {"pgd20": build_attack("pgd20", ThreatModel(eps=1e-9))}, cascade=False)
    assert result.accuracy("pgd20") == result.clean_accuracy


def test_attack_returning_nothing_is_an_error_not_zero(trained_cnn, digits):
    class Broken(Attack):
        def run(self, model, x, y):
            return None

    with pytest.raises(AttackError, match="returned NoneType"):
        attack_correct(trained_cnn, Broken(ThreatModel()), digits.x_test[:8], digits.y_test[:8], 8)


def test_attack_leaving_the_ball_is_caught(trained_cnn, digits):
    class TooStrong(Attack):
        def run(self, model, x, y):
            return (x + 0.5).clamp(0, 1)

    with pytest.raises(AttackError, match="left the threat model"):
        attack_correct(trained_cnn, TooStrong(ThreatModel(eps=0.1)), digits.x_test[:8], digits.y_test[:8], 8)


def test_attacks_leave_mode_and_weight_gradients_alone(trained_cnn, digits):
    trained_cnn.eval()
    trained_cnn.zero_grad(set_to_none=True)  # training left gradients behind
    build_attack("pgd", ThreatModel(eps=0.1), steps=2)(trained_cnn, digits.x_test[:8], digits.y_test[:8])
    assert not trained_cnn.training
    assert all(p.grad is None for p in trained_cnn.parameters())
