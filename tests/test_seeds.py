"""Method-level statistics (seeds as replications) on hand-made per-example arrays; every expected
number is computed here, independently of rkbench/report/seeds.py."""
import io
import itertools

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from scipy import stats as scipy_stats

from rkbench.cli import main
from rkbench.report import compare_report, report
from rkbench.report.seeds import compare_methods, mean_interval
from rkbench.report.stats import paired_difference_interval, wilson
from test_stats import write_run

N = 450  # the digits test set


def flip(mask: np.ndarray, gain: int, loss: int, rng) -> np.ndarray:
    out = mask.copy()
    out[rng.choice(np.flatnonzero(~mask), gain, replace=False)] = True
    out[rng.choice(np.flatnonzero(mask), loss, replace=False)] = False
    return out


def write_seeds(base, method: str, arrays: list[np.ndarray], teacher=None):
    for seed, correct in enumerate(arrays):
        write_run(base, f"{method}{seed}", method, seed, np.ones(N, bool), correct, teacher=teacher,
                  labels=np.arange(N) % 10)


def by_method(frame: pd.DataFrame) -> dict:
    return {row["method"]: row for _, row in frame.iterrows()}


def prob_improvement(x, y) -> float:
    """P(X > Y) + P(X = Y) / 2 over every pair, by hand."""
    pairs = list(itertools.product(x, y))
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs)


def test_identical_runs_give_delta_0_and_prob_improvement_one_half():
    rng = np.random.default_rng(1)
    seeds = [rng.random(N) < p for p in (0.6, 0.7, 0.8)]
    result = compare_methods([(a, a.copy()) for a in seeds])
    assert result.delta == 0.0 and (result.delta_lo, result.delta_hi) == (0.0, 0.0)
    assert result.prob_improvement == 0.5 and result.p == 1.0


def test_consistent_plus_3_points_on_every_seed_is_better_and_delta_is_the_mean_of_seed_differences(tmp_path):
    """Seeds differ by 20 points from one another; the row gains 3 points (14 examples of 450) on each."""
    rng = np.random.default_rng(2)
    base = tmp_path / "results"
    at = [rng.random(N) < p for p in (0.55, 0.65, 0.75)]
    ard = [flip(a, 16, 2, rng) for a in at]
    noise = [flip(a, 6, 6, rng) for a in at]  # same accuracy as at, other examples
    write_seeds(base, "at", at)
    write_seeds(base, "ard", ard, teacher="tA")
    write_seeds(base, "kd", noise, teacher="tA")
    result = CliRunner().invoke(main, ["report", str(base), "--baseline", "at", "--format", "csv"])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(io.StringIO(result.stdout))
    assert {"seeds", "delta", "delta_lo", "delta_hi", "prob_improvement", "verdict", "level"} <= set(table.columns)
    rows = {row["method"]: row for _, row in table.iterrows()}
    per_seed = [100 * (r.mean() - a.mean()) for r, a in zip(ard, at)]
    assert per_seed == pytest.approx([100 * 14 / N] * 3)
    assert rows["ard"]["delta"] == pytest.approx(np.mean(per_seed), abs=0.01)
    assert rows["ard"]["level"] == "method" and rows["ard"]["seeds"] == 3
    assert rows["ard"]["verdict"] == "better" and 0 < rows["ard"]["delta_lo"] < rows["ard"]["delta_hi"]
    # a seed of ard beats a seed of at only when it is the same seed or a better one: 6 of 9 pairs
    expected = prob_improvement([r.mean() for r in ard], [a.mean() for a in at])
    assert expected == pytest.approx(6 / 9) and rows["ard"]["prob_improvement"] == pytest.approx(expected, abs=1e-4)
    assert rows["ard"]["prob_improvement_lo"] - 1e-4 <= expected <= rows["ard"]["prob_improvement_hi"] + 1e-4
    assert rows["kd"]["verdict"] == "within noise" and rows["kd"]["delta"] == pytest.approx(0.0, abs=0.01)
    assert rows["at"]["verdict"] == "baseline"


def test_seed_variance_outweighs_a_significant_difference_of_one_pair_of_models(tmp_path):
    """Per seed the models differ clearly (one-sided discordance: McNemar says better on seed 0), but
    the difference changes sign from seed to seed: the method level says within noise."""
    rng = np.random.default_rng(3)
    base = tmp_path / "results"
    at = [rng.random(N) < 0.7 for _ in range(5)]
    changes = [(25, 0), (0, 22), (25, 0), (0, 20), (6, 0)]  # +5.6, -4.9, +5.6, -4.4, +1.3 points
    row = [flip(a, gain, loss, rng) for a, (gain, loss) in zip(at, changes)]
    write_seeds(base, "at", at)
    write_seeds(base, "ard", row, teacher="tA")
    assert scipy_stats.binomtest(25, 25).pvalue < 1e-6  # seed 0 alone: 25 discordant examples, all one way
    _, frame, _ = report(base, "md", baseline="at", where=["seed=0"])
    assert by_method(frame)["ard"]["level"] == "model" and by_method(frame)["ard"]["verdict"] == "better"
    _, frame, _ = report(base, "md", baseline="at")
    ard = by_method(frame)["ard"]
    assert ard["level"] == "method" and ard["verdict"] == "within noise"
    assert ard["delta"] == pytest.approx(100 * np.mean([(g - l) / N for g, l in changes]), abs=0.01)
    assert ard["delta_lo"] < 0 < ard["delta_hi"]


@pytest.mark.parametrize("copies", [2, 20])
def test_k_identical_copies_of_one_seed_give_the_one_seed_interval_never_narrower(tmp_path, copies):
    rng = np.random.default_rng(4)
    at = rng.random(N) < 0.75
    ard = flip(at, 20, 6, rng)
    one = compare_methods([(ard, at)])
    many = compare_methods([(ard.copy(), at.copy()) for _ in range(copies)])
    assert (many.delta_lo, many.delta_hi) == pytest.approx((one.delta_lo, one.delta_hi), abs=1e-12)
    assert (many.mean_lo, many.mean_hi) == pytest.approx((one.mean_lo, one.mean_hi), abs=1e-12)
    # and that one-seed interval is the width the examples can resolve: Newcombe's interval of the pair
    a, b, c = int((ard & at).sum()), int((ard & ~at).sum()), int((~ard & at).sum())
    lo, hi = paired_difference_interval(a, b, c, N - a - b - c)
    assert many.delta_hi - many.delta_lo >= 0.9 * (hi - lo)
    pooled_lo, pooled_hi = paired_difference_interval(copies * a, copies * b, copies * c, copies * (N - a - b - c))
    assert many.delta_hi - many.delta_lo > 0.9 * (pooled_hi - pooled_lo) * copies ** 0.5  # never the pooled one
    w_lo, w_hi = wilson(int(ard.sum()), N)
    assert many.mean_hi - many.mean_lo >= 0.9 * (w_hi - w_lo)
    # the report: the same verdict as the one seed's exact McNemar test, at the method level
    base = tmp_path / "results"
    write_seeds(base, "at", [at] * copies)
    write_seeds(base, "ard", [ard] * copies, teacher="tA")
    _, frame, _ = report(base, "md", baseline="at")
    row = by_method(frame)["ard"]
    assert row["level"] == "method" and row["verdict"] == "better" == \
        ("better" if scipy_stats.binomtest(b, b + c).pvalue < 0.05 else "within noise")
    aggregated = by_method(report(base, "md")[1])["ard"]
    assert aggregated["worst_case_hi"] - aggregated["worst_case_lo"] >= 0.9 * 100 * (w_hi - w_lo)


def test_mean_interval_covers_seed_spread_and_is_reproducible_to_the_digit():
    rng = np.random.default_rng(5)
    seeds = [rng.random(N) < p for p in (0.5, 0.6, 0.7, 0.8, 0.9)]
    first, second = mean_interval(seeds), mean_interval(seeds)
    assert (first.lo, first.hi) == (second.lo, second.hi)  # seeded: identical, not merely close
    accuracies = [s.mean() for s in seeds]
    assert first.mean == pytest.approx(np.mean(accuracies)) and first.sd == pytest.approx(np.std(accuracies, ddof=1))
    # 5 seeds 10 points apart: the interval of the mean is far wider than any one seed's Wilson interval
    w_lo, w_hi = wilson(int(seeds[2].sum()), N)
    assert first.hi - first.lo > 2 * (w_hi - w_lo)
    assert mean_interval(seeds, resamples=500).resamples == 500


def test_the_report_prints_its_resamples_and_compare_uses_the_method_level(tmp_path):
    rng = np.random.default_rng(6)
    base = tmp_path / "results"
    at = [rng.random(N) < 0.7 for _ in range(3)]
    write_seeds(base, "at", at)
    write_seeds(base, "ard", [flip(a, 20, 0, rng) for a in at], teacher="tA")
    result = CliRunner().invoke(main, ["report", str(base), "--baseline", "at", "--resamples", "700"])
    assert result.exit_code == 0, result.output
    assert "700 resamples" in result.stdout and "numpy seed 0" in result.stdout
    assert result.stdout == CliRunner().invoke(main, ["report", str(base), "--baseline", "at",
                                                      "--resamples", "700"]).stdout
    text, frame = compare_report(["mlp/at", "mlp/tA/ard"], base, ["worst_case"])
    assert frame["level"].tolist() == ["method"] and frame["verdict"].tolist() == ["better"]
    assert frame["accuracy"].iloc[0] == pytest.approx(100 * np.mean([a.mean() for a in at]) + 100 * 20 / N)
    assert "2000 resamples" in text


def test_the_methods_suite_reruns_the_digits_suite_seed_0_and_shares_its_teacher():
    from rkbench.suite import expand, load_suite

    def ids(path):
        teachers, runs = expand(load_suite(path))
        return ({(r.student.name, r.method.label, r.seed): r.run_id for r in runs},
                {t.spec.name: t.teacher_id for t in teachers})

    digits, digits_teachers = ids("suites/digits.yaml")
    methods, methods_teachers = ids("suites/digits-methods.yaml")
    assert {seed for (_, _, seed) in methods} == {0, 1, 2, 3, 4} and len(methods) == 70
    assert methods_teachers == {"at_cnn": digits_teachers["at_cnn"]}  # one teacher serves all five seeds
    for (student, method, seed), run_id in methods.items():
        if seed == 0:
            assert digits[(student, method, 0)] == run_id
