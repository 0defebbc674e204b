"""Method-level statistics: training seeds as replications (numpy only; never torch).

A run of one seed is one trained model; its per-example results answer "do these two models
differ on these test examples?" (the exact McNemar test, ``stats``). Several seeds of a method are
replications of its training, and a claim about the *method* must cover two sources of variation:

- the training seed (initialisation, data order, attack noise): seeds are resampled;
- the sampling of the test examples: examples are resampled, with the **same draw for every seed
  and both methods**, because every seed of every method is evaluated on the same examples.

This is a two-level (hierarchical) bootstrap, the resampling scheme of Bouthillier et al.,
"Accounting for Variance in Machine Learning Benchmarks" (MLSys 2021), which resamples both the
"learning" randomness (seeds) and the data sampling (test examples). Agarwal et al., "Deep RL at
the Edge of the Statistical Precipice" (NeurIPS 2021, the ``rliable`` package) give the
percentile-bootstrap intervals of aggregate scores and the probability of improvement used
here; rliable resamples runs within tasks, not runs and shared test examples jointly with one
draw for both methods, so the two-level paired resampling is written here (a few lines of numpy).

Per draw ``b``: example indices ``E_b`` (n of n, with replacement) and seed indices ``S_b`` (k of
k, with replacement, the same for the row and its baseline: seeds are paired). A seed's accuracy
under the draw is its mean correctness over ``E_b``; then

- mean accuracy: the mean over ``S_b`` of the row's accuracies;
- ``delta``: the mean over ``S_b`` of (row - baseline), seed by seed;
- ``prob_improvement``: P(X > Y) + P(X = Y) / 2 for X a seed of the row and Y a seed of the
  baseline, over the k x k pairs of the resampled seeds (the Mann-Whitney statistic, rliable's
  "probability of improvement").

Intervals are percentile intervals of the draws. The p-value of ``delta`` is the two-sided
bootstrap p-value, 2 x min(share of draws <= 0, share >= 0), each share counted as (m + 1) /
(B + 1): the smallest level at which the percentile interval excludes 0. Over a table the
p-values are Holm-adjusted (``paired.add_verdicts``).

Reproducible to the digit: the draws come from ``numpy.random.default_rng(BOOTSTRAP_SEED)`` and
depend only on (k, n, resamples), never on the order of rows; the example draws come from their own
stream and do not depend on k, so k identical copies of one seed give exactly the one-seed draws.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

RESAMPLES = 2000  # bootstrap draws per interval (the legend and the JSON say how many)
BOOTSTRAP_SEED = 0
CHUNK = 50  # example draws generated per step (bounds the memory; part of the stream's definition)


def _matrix(arrays) -> np.ndarray:
    matrix = np.asarray([np.asarray(a, bool) for a in arrays])
    if matrix.ndim != 2 or matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise ValueError("expected one non-empty per-example array per seed, all of one length")
    return matrix


def _draws(matrices: list[np.ndarray], resamples: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Every seed's accuracy under each example draw, (B, k) per matrix, and the seed draws (B, k)."""
    k, n = matrices[0].shape
    seed_stream, example_stream = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    seeds = seed_stream.integers(0, k, size=(resamples, k))
    accuracies = [np.empty((resamples, k)) for _ in matrices]
    for start in range(0, resamples, CHUNK):
        count = min(CHUNK, resamples - start)
        examples = example_stream.integers(0, n, size=(CHUNK, n))[:count]  # full chunks: the stream never depends on B
        for out, matrix in zip(accuracies, matrices):
            out[start:start + count] = matrix[:, examples].sum(axis=2, dtype=np.int64).T / n
    return accuracies, seeds


def _resampled(accuracy: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """(B, k): the accuracies of the resampled seeds of each draw."""
    return np.take_along_axis(accuracy, seeds, axis=1)


def _percentiles(values: np.ndarray, alpha: float) -> tuple[float, float]:
    lo, hi = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def probability_of_improvement(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P(X > Y) + P(X = Y) / 2 over every pair of the last axis of x and y (batched over the rest)."""
    x, y = np.asarray(x, float)[..., :, None], np.asarray(y, float)[..., None, :]
    return ((x > y).mean(axis=(-2, -1)) + 0.5 * (x == y).mean(axis=(-2, -1)))


@dataclass
class MeanInterval:
    """A method's mean accuracy over seeds (proportions) and its two-level bootstrap interval."""

    mean: float
    sd: float
    lo: float
    hi: float
    seeds: int
    resamples: int


def mean_interval(arrays, alpha: float = 0.05, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED) -> MeanInterval:
    """The mean accuracy over seeds of per-example correctness ``arrays`` (one per seed, same examples)."""
    matrix = _matrix(arrays)
    per_seed = matrix.mean(axis=1)
    (accuracy,), seeds = _draws([matrix], resamples, seed)
    lo, hi = _percentiles(_resampled(accuracy, seeds).mean(axis=1), alpha)
    sd = float(per_seed.std(ddof=1)) if len(per_seed) > 1 else math.nan
    return MeanInterval(float(per_seed.mean()), sd, lo, hi, len(per_seed), resamples)


@dataclass
class MethodComparison:
    """A row's seeds against its baseline's, paired by seed, on the same examples (proportions)."""

    seeds: int
    n: int  # examples per seed
    mean: float
    mean_lo: float
    mean_hi: float
    baseline_mean: float
    baseline_lo: float
    baseline_hi: float
    delta: float  # the mean over seeds of the per-seed differences
    delta_lo: float
    delta_hi: float
    p: float  # two-sided bootstrap p-value of delta
    prob_improvement: float
    prob_improvement_lo: float
    prob_improvement_hi: float
    resamples: int


def bootstrap_p(values: np.ndarray) -> float:
    """2 x min(share <= 0, share >= 0), each share (m + 1) / (B + 1); at most 1."""
    b = len(values)
    below, above = int((values <= 0).sum()), int((values >= 0).sum())
    return float(min(1.0, 2.0 * (min(below, above) + 1) / (b + 1)))


def compare_methods(pairs, alpha: float = 0.05, resamples: int = RESAMPLES,
                    seed: int = BOOTSTRAP_SEED) -> MethodComparison:
    """``pairs``: (row correctness, baseline correctness) per seed, paired by seed."""
    pairs = list(pairs)
    if len(pairs) < 1:
        raise ValueError("no paired seeds")
    row, base = _matrix([p[0] for p in pairs]), _matrix([p[1] for p in pairs])
    if row.shape != base.shape:
        raise ValueError(f"paired arrays differ in shape: {row.shape} vs {base.shape}")
    (row_acc, base_acc), seeds = _draws([row, base], resamples, seed)
    x, y = _resampled(row_acc, seeds), _resampled(base_acc, seeds)
    deltas = (x - y).mean(axis=1)
    probs = probability_of_improvement(x, y)
    row_seeds, base_seeds = row.mean(axis=1), base.mean(axis=1)
    return MethodComparison(
        len(pairs), row.shape[1], float(row_seeds.mean()), *_percentiles(x.mean(axis=1), alpha),
        float(base_seeds.mean()), *_percentiles(y.mean(axis=1), alpha),
        float((row_seeds - base_seeds).mean()), *_percentiles(deltas, alpha), bootstrap_p(deltas),
        float(probability_of_improvement(row_seeds, base_seeds)), *_percentiles(probs, alpha), resamples)


def describe(resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED) -> str:
    return (f"two-level bootstrap over seeds and shared test examples ({resamples} resamples, numpy seed {seed}; "
            f"Bouthillier et al. 2021)")
