"""The statistics of evaluation: intervals, standard errors, a length-controlled win rate, rank correlation.

Pure functions of numbers (no models, no files), each pinned by a hand-worked test.

Intervals are percentile intervals of a paired bootstrap over prompts: draw
as many prompts as there are, with replacement, `RESAMPLES` times (numpy's
PCG64 generator seeded with `SEED`); recompute the figure on each draw; the
95% interval runs from the 2.5th to the 97.5th percentile of those figures
(numpy's default linear interpolation between order statistics). "Paired":
a drawn prompt brings everything measured on it (both responses, both
judges, all its comparisons), so the figures stay paired as they were
measured and a prompt with several comparisons is one unit, not several.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

RESAMPLES = 1000
SEED = 0
LEVEL = 0.95
# Keeps the logistic fit finite when the data are separable (every longer response won, say):
# negligible otherwise (the log-likelihood's curvature is about n/4 per parameter).
RIDGE = 1e-6


def bootstrap_settings() -> dict[str, object]:
    """How the intervals were computed, for the JSON beside them."""
    return {"method": "paired bootstrap over prompts, percentile interval", "resamples": RESAMPLES, "seed": SEED,
            "level": LEVEL}


def bootstrap_indices(n: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """[resamples, n] indices of units drawn with replacement (the same for the same n, resamples and seed)."""
    if n < 1:
        raise ValueError("need at least one unit to resample")
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def unit_bootstrap_indices(units: Sequence[object], resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """[resamples, n] indices of items, drawn as whole units: each draw of a unit brings all its items.

    Every unit must hold the same number of items (an evaluation's samples per prompt), so that each draw
    has n items. With one item per unit this is `bootstrap_indices(n)`, item for unit.
    """
    members = unit_members(units)
    if len({len(m) for m in members}) > 1:
        raise ValueError("every unit must hold the same number of items to be resampled whole")
    drawn = bootstrap_indices(len(members), resamples, seed)
    return np.asarray(members, dtype=np.int64)[drawn].reshape(resamples, -1)


def percentile_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float]:
    """The central `level` interval of `values`: their (1-level)/2 and (1+level)/2 quantiles, linear interpolation."""
    array = np.asarray(values, dtype=np.float64)
    array = array[~np.isnan(array)]
    if array.size == 0:
        raise ValueError("no finite values to take an interval of")
    low, high = np.quantile(array, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def resampled_ratios(numerators: Sequence[float], denominators: Sequence[float], indices: np.ndarray) -> np.ndarray:
    """For each row of `indices`: sum of the drawn numerators / sum of the drawn denominators (nan when 0).

    With denominators of 1 this is the mean of the drawn values; with per-prompt sums and counts it is
    the share over every comparison of the drawn prompts.
    """
    num = np.asarray(numerators, dtype=np.float64)[indices].sum(axis=1)
    den = np.asarray(denominators, dtype=np.float64)[indices].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def ratio_interval(numerators: Sequence[float], denominators: Sequence[float], resamples: int = RESAMPLES,
                   seed: int = SEED, level: float = LEVEL) -> tuple[float, float]:
    """Bootstrap interval of sum(numerators) / sum(denominators), one (numerator, denominator) per prompt."""
    indices = bootstrap_indices(len(numerators), resamples, seed)
    return percentile_interval(resampled_ratios(numerators, denominators, indices), level)


def mean_interval(values: Sequence[float], resamples: int = RESAMPLES, seed: int = SEED,
                  level: float = LEVEL) -> tuple[float, float]:
    """Bootstrap interval of the mean of one value per prompt."""
    return ratio_interval(values, np.ones(len(values)), resamples, seed, level)


def unit_members(units: Sequence[object]) -> list[list[int]]:
    """The positions of each unit's items, units in order of first appearance."""
    position: dict[object, int] = {}
    members: list[list[int]] = []
    for item, unit in enumerate(units):
        if unit not in position:
            position[unit] = len(members)
            members.append([])
        members[position[unit]].append(item)
    return members


def per_unit(values: Sequence[float], units: Sequence[object]) -> tuple[list[float], list[int]]:
    """(sum, count) of `values` per unit (prompt), units in order of first appearance."""
    values = list(values)
    members = unit_members(units)
    return [sum(float(values[i]) for i in m) for m in members], [len(m) for m in members]


def share_interval(values: Sequence[float], units: Sequence[object], resamples: int = RESAMPLES, seed: int = SEED,
                   level: float = LEVEL) -> tuple[float, float]:
    """Bootstrap interval of the mean of per-item `values` (e.g. 1 right, 0 wrong), resampling their units."""
    sums, counts = per_unit(values, units)
    return ratio_interval(sums, counts, resamples, seed, level)


def win_indicators(scores_a: Sequence[float], scores_b: Sequence[float], tolerance: float = 1e-6) -> list[float]:
    """Per pair: 1 when a scores higher than b, 0 when lower, 1/2 when within `tolerance` (a tie)."""
    if len(scores_a) != len(scores_b) or not len(scores_a):
        raise ValueError(f"need two equal, non-empty lists of scores, got {len(scores_a)} and {len(scores_b)}")
    return [1.0 if a - b > tolerance else 0.0 if b - a > tolerance else 0.5 for a, b in zip(scores_a, scores_b)]


def standard_error(values: Sequence[float]) -> Optional[float]:
    """Standard error of the mean: sample standard deviation (n - 1) / sqrt(n); None below two values."""
    array = np.asarray(values, dtype=np.float64)
    if array.size < 2:
        return None
    return float(array.std(ddof=1) / math.sqrt(array.size))


# ---- length-controlled win rate ----------------------------------------------------------------

def fit_logistic(x: np.ndarray, y: np.ndarray, ridge: float = RIDGE, iterations: int = 100
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Intercepts a and slopes b of P(y=1) = sigmoid(a + b x), fitted to each row of x, y ([rows, n]).

    Maximum likelihood with targets in [0, 1] (a tie is 1/2), a `ridge` penalty (a^2 + b^2) / 2 that keeps
    separable data finite, and Newton's method with step halving (the penalised loss is strictly convex,
    so it converges from 0).
    """
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    y = np.atleast_2d(np.asarray(y, dtype=np.float64))
    rows = x.shape[0]
    theta = np.zeros((rows, 2))

    def loss(t: np.ndarray) -> np.ndarray:
        z = t[:, :1] + t[:, 1:] * x
        return (np.logaddexp(0.0, z) - y * z).sum(axis=1) + 0.5 * ridge * (t ** 2).sum(axis=1)

    current = loss(theta)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(theta[:, :1] + theta[:, 1:] * x)))
        w = p * (1.0 - p)
        g0 = (p - y).sum(axis=1) + ridge * theta[:, 0]
        g1 = ((p - y) * x).sum(axis=1) + ridge * theta[:, 1]
        h00 = w.sum(axis=1) + ridge
        h01 = (w * x).sum(axis=1)
        h11 = (w * x * x).sum(axis=1) + ridge
        det = h00 * h11 - h01 * h01
        step = -np.stack([(h11 * g0 - h01 * g1) / det, (h00 * g1 - h01 * g0) / det], axis=1)
        scale = np.ones(rows)
        for _ in range(40):
            candidate = theta + scale[:, None] * step
            value = loss(candidate)
            worse = value > current + 1e-12 * np.abs(current)
            if not worse.any():
                break
            scale = np.where(worse, scale / 2, scale)
        theta, current = candidate, value
        if np.abs(scale[:, None] * step).max() < 1e-10:
            break
    return theta[:, 0], theta[:, 1]


def length_feature(length_difference: Sequence[float]) -> np.ndarray:
    """tanh(d / sd(d)) of the length differences d (as AlpacaEval's length-controlled win rate): 0 where the
    lengths are equal, bounded so that a few very long responses do not dominate the fit; all 0 when every
    difference is the same."""
    d = np.asarray(length_difference, dtype=np.float64)
    scale = d.std(ddof=1) if d.size > 1 else 0.0
    if not scale > 0:
        return np.zeros_like(d)
    return np.tanh(d / scale)


def length_controlled_win_rate(wins: Sequence[float], length_a: Sequence[float], length_b: Sequence[float],
                               resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL,
                               units: Optional[Sequence[object]] = None) -> dict[str, object]:
    """The win rate of a over b with the length difference regressed out, and its bootstrap interval.

    Fits P(a wins) = sigmoid(alpha + beta * tanh((len a - len b) / sd)) to the per-prompt outcomes `wins`
    (1, 0, or 1/2 for a tie) and reports sigmoid(alpha): the predicted win rate of a response exactly as long
    as the one it is compared with. With no length difference anywhere it is the plain win rate's fit,
    sigmoid(logit(mean win)). `slope` is beta: above 0 when the longer response tends to win. `units`
    (the prompt of each outcome; default: each outcome its own) are what the bootstrap resamples.
    """
    y = np.asarray(wins, dtype=np.float64)
    if y.size == 0 or y.size != len(length_a) or y.size != len(length_b):
        raise ValueError("need one outcome and two lengths per prompt")
    x = length_feature(np.asarray(length_a, dtype=np.float64) - np.asarray(length_b, dtype=np.float64))
    alpha, beta = fit_logistic(x, y)
    indices = (bootstrap_indices(y.size, resamples, seed) if units is None
               else unit_bootstrap_indices(units, resamples, seed))
    boot_alpha, _ = fit_logistic(x[indices], y[indices])
    return {"win_rate": _sigmoid(float(alpha[0])), "slope": float(beta[0]),
            "interval": percentile_interval(1.0 / (1.0 + np.exp(-boot_alpha)), level)}


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


# ---- rank correlation -----------------------------------------------------------------------------

def average_ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n of `values`, tied values sharing the mean of their ranks."""
    array = np.asarray(values, dtype=np.float64)
    order = np.argsort(array, kind="stable")
    ranks = np.empty(array.size)
    start = 0
    while start < array.size:
        end = start
        while end + 1 < array.size and array[order[end + 1]] == array[order[start]]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> Optional[float]:
    """Spearman's rank correlation (Pearson's of the average ranks); None when either side is constant."""
    if len(x) != len(y):
        raise ValueError(f"need two equal lists, got {len(x)} and {len(y)}")
    if len(x) < 2:
        return None
    rx, ry = average_ranks(x), average_ranks(y)
    dx, dy = rx - rx.mean(), ry - ry.mean()
    denominator = math.sqrt(float((dx * dx).sum()) * float((dy * dy).sum()))
    return float((dx * dy).sum() / denominator) if denominator > 0 else None
