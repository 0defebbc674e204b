"""The statistics behind intervals, paired tests and sample-size planning (numpy and math only).

- ``wilson``: the Wilson score interval of a binomial proportion (no continuity correction); the
  interval of every accuracy cell.
- ``mcnemar``: the exact McNemar test of two classifiers on the same examples: under the null
  hypothesis an example that one gets right and the other wrong is equally likely to go either
  way, so the count ``b`` of examples only the second gets right is Binomial(b + c, 1/2). Seeds
  are strata: conditional on each seed's discordant count, the pooled count is Binomial(sum of
  the discordant counts, 1/2) under the null, so the test on discordant pairs pooled across
  seeds is exact (the stratified exact McNemar test, Mantel-Haenszel style with equal weights).
- ``paired_difference_interval``: Δ = (b - c) / N and Newcombe's hybrid score interval for a
  difference of paired proportions (Newcombe, Stat. Med. 1998, method 10: the two accuracies'
  Wilson intervals combined by "square and add", with their correlation φ, whose numerator
  ad - bc is shrunk by N/2 towards 0 when positive). It is not derived from the test, so at the
  margin the interval may exclude 0 while p is just above alpha (or the reverse).
- ``holm``: Holm's step-down adjustment of a family of p-values.
- ``detectable_difference``: the smallest difference a paired test detects (normal
  approximation of Connor, Biometrics 1987, for McNemar's test) given n and the discordance rate.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np


def z_value(alpha: float) -> float:
    """The two-sided normal quantile: 1.96 for alpha 0.05."""
    return NormalDist().inv_cdf(1 - alpha / 2)


def wilson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials (as proportions)."""
    if n <= 0:
        return math.nan, math.nan
    z = z_value(alpha)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def _log_pmf(n: int) -> np.ndarray:
    """log P(X = k) for X ~ Binomial(n, 1/2), k = 0..n."""
    k = np.arange(n + 1)
    return (math.lgamma(n + 1) - np.array([math.lgamma(i + 1) + math.lgamma(n - i + 1) for i in k])
            - n * math.log(2.0))


def mcnemar_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: b ~ Binomial(b + c, 1/2); 2 x the smaller tail, at most 1."""
    m = b + c
    if m == 0:
        return 1.0
    logs = _log_pmf(m)[: min(b, c) + 1]
    top = logs.max()
    return float(min(1.0, 2.0 * math.exp(top) * np.exp(logs - top).sum()))


@dataclass
class Paired:
    """A paired comparison of a run (or several seeds) against its baseline on the same examples."""

    n: int  # examples, summed over seeds
    b: int  # examples only the compared model gets right
    c: int  # examples only the baseline gets right
    a: int = 0  # examples both get right
    seeds: int = 1
    alpha: float = 0.05

    @property
    def delta(self) -> float:
        """Accuracy of the compared model minus the baseline's, as a proportion."""
        return (self.b - self.c) / self.n if self.n else math.nan

    @property
    def p(self) -> float:
        return mcnemar_p(self.b, self.c)

    @property
    def interval(self) -> tuple[float, float]:
        return paired_difference_interval(self.a, self.b, self.c, self.n - self.a - self.b - self.c, self.alpha)


def discordant(correct: np.ndarray, baseline: np.ndarray) -> tuple[int, int]:
    """(b, c): examples only ``correct`` gets right, examples only ``baseline`` gets right."""
    correct, baseline = np.asarray(correct, bool), np.asarray(baseline, bool)
    if correct.shape != baseline.shape:
        raise ValueError(f"paired arrays differ in shape: {correct.shape} vs {baseline.shape}")
    return int((correct & ~baseline).sum()), int((~correct & baseline).sum())


def paired(pairs, alpha: float = 0.05) -> Paired:
    """The stratified exact test over seeds: ``pairs`` is a list of (correct, baseline) arrays, one
    per seed; discordant counts are pooled (exact under the null, see the module docstring)."""
    n = a = b = c = 0
    for correct, baseline in pairs:
        bi, ci = discordant(correct, baseline)
        n, a, b, c = n + len(correct), a + int((np.asarray(correct, bool) & np.asarray(baseline, bool)).sum()), \
            b + bi, c + ci
    return Paired(n, b, c, a, len(pairs), alpha)


def paired_difference_interval(a: int, b: int, c: int, d: int, alpha: float = 0.05) -> tuple[float, float]:
    """Newcombe's hybrid score interval of Δ = p1 - p2 = (b - c) / n for paired proportions: a both
    right, b only the first, c only the second, d neither; p1 = (a + b) / n, p2 = (a + c) / n."""
    n = a + b + c + d
    if n <= 0:
        return math.nan, math.nan
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson(a + b, n, alpha)
    l2, u2 = wilson(a + c, n, alpha)
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    phi = 0.0
    if margins > 0:
        cross = a * d - b * c
        cross = cross - n / 2 if cross > n / 2 else (0.0 if cross >= 0 else cross)
        phi = cross / math.sqrt(margins)
    below = math.sqrt(max((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2, 0.0))
    above = math.sqrt(max((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2, 0.0))
    delta = p1 - p2
    return max(-1.0, delta - below), min(1.0, delta + above)


def holm(p_values) -> list[float]:
    """Holm's step-down adjusted p-values (same order as given; NaN stays NaN and is not counted)."""
    values = [(p, i) for i, p in enumerate(p_values) if p is not None and not math.isnan(p)]
    m = len(values)
    adjusted = [math.nan] * len(list(p_values))
    running = 0.0
    for rank, (p, i) in enumerate(sorted(values)):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def verdict(delta: float, p_adjusted: float, alpha: float = 0.05) -> str:
    if p_adjusted is None or math.isnan(p_adjusted) or math.isnan(delta):
        return "-"
    if p_adjusted < alpha:
        return "better" if delta > 0 else "worse"
    return "within noise"


def detectable_difference(n: int, discordance: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest accuracy difference Δ (a proportion) that a two-sided paired McNemar test on n
    examples detects with this power, when a fraction ``discordance`` of the examples are
    classified differently by the two models (Connor 1987: n Δ² = (z_a √ψ + z_b √(ψ - Δ²))²).
    NaN when even Δ = ψ (every discordant pair one way) is not detectable."""
    za, zb = z_value(alpha), NormalDist().inv_cdf(power)

    def needed(delta: float) -> float:
        return (za * math.sqrt(discordance) + zb * math.sqrt(max(discordance - delta * delta, 0.0))) ** 2 / delta ** 2

    if n <= 0 or discordance <= 0 or needed(discordance) > n:
        return math.nan
    lo, hi = 1e-9, discordance  # needed() falls as delta grows
    for _ in range(200):
        mid = (lo + hi) / 2
        if needed(mid) > n:
            lo = mid
        else:
            hi = mid
    return hi


DISCORDANCE_RATES = (0.05, 0.10, 0.20)


def planning_lines(n: int, seeds: int = 1, accuracy: float = 0.8, alpha: float = 0.05, power: float = 0.8,
                   rates=DISCORDANCE_RATES) -> list[str]:
    """What ``n`` test examples (per seed) can resolve: the 95 % interval of one accuracy, and the
    smallest difference a paired test detects at several discordance rates."""
    lo, hi = wilson(round(accuracy * n), n, alpha)
    lines = [f"{n} test examples x {seeds} seed(s): a {100 * accuracy:.0f} % accuracy has a 95 % Wilson interval of "
             f"±{50 * (hi - lo):.1f} points on one seed"]
    if seeds > 1:  # every seed is evaluated on the same examples: pooling them would not narrow anything real
        lines[0] += (f"; the interval of the mean over the {seeds} seeds is never narrower (they share these "
                     f"examples) and widens with the seeds' spread (method level, docs/seeds.md)")
    parts = []
    for rate in rates:
        one = detectable_difference(n, rate, alpha, power)
        text = f"{100 * one:.1f}" if not math.isnan(one) else "none"
        parts.append(f"{text} points if {100 * rate:.0f} % are discordant")
    lines.append(f"smallest difference a paired McNemar test of two models detects (two-sided alpha {alpha:g}, "
                 f"power {power:g}; Connor's approximation): " + "; ".join(parts))
    lines.append("discordant: examples that exactly one of the two models gets right (under the worst case); "
                 "methods that differ more disagree on more examples, and then need a larger difference")
    return lines
