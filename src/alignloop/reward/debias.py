"""Length features of the training data for a reward model that should not pay for length (`loss.length`).

Pure functions of lengths first (each pinned by a hand-worked test), then `LengthInputs`, which computes them
once for the training groups and hands each batch its share, in the order `collate_groups` lists responses and
pairs. Lengths are in characters, as `reward eval`'s length diagnostics measure them.

- `covariate_fit`: the fixed length term of the covariate-adjusted Bradley-Terry logit,
  r_c - r_r + beta * tanh((len_c - len_r) / sd), beta fitted to the training pairs alone before training
  (AlpacaEval's length feature, `alignloop.evaluation.statistics.length_feature`). Like a product of experts
  with a length-only expert (Shen et al. 2023, "Loose lips sink ships"), the reward then learns what length
  does not explain; scoring uses the reward alone.
- `balance_weights`: weights under which "the longer reply wins" is right half the time within each bin of
  |length difference|, so length alone predicts nothing on the reweighted training set.
- `log_lengths`: log(1 + characters) of each response, what ODIN's correlation terms correlate with (a log
  keeps a few very long replies from deciding Pearson's correlation).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch

from alignloop.evaluation import statistics


def log_lengths(texts: Sequence[str]) -> list[float]:
    """log(1 + number of characters) of each text."""
    return [math.log1p(len(text)) for text in texts]


def covariate_fit(differences: Sequence[float]) -> tuple[np.ndarray, float]:
    """(feature x of each pair, fitted beta) of the length covariate, from len(chosen) - len(rejected) per pair.

    x = tanh(d / sd), sd over the pairs read both ways round (d and -d, so it is the root mean square of d
    with n - 1 in the denominator over 2n values); beta maximises the likelihood of P(chosen) = sigmoid(beta x)
    with every pair also entered the other way round (-x, not chosen), which fixes the intercept at 0
    (`statistics.fit_logistic`, whose tiny ridge only matters on separable data).
    """
    d = np.asarray(differences, dtype=np.float64)
    if d.size == 0:
        return d, 0.0
    both = statistics.length_feature(np.concatenate([d, -d]))
    outcomes = np.concatenate([np.ones(d.size), np.zeros(d.size)])
    _, beta = statistics.fit_logistic(both, outcomes)
    return both[:d.size], float(beta[0])


def balance_weights(differences: Sequence[float], bins: int) -> np.ndarray:
    """A weight per pair, from len(chosen) - len(rejected): within each bin, chosen-longer and chosen-shorter
    pairs weigh the same in total.

    Pairs of unequal length are cut into `bins` bins at the quantiles of |d|; in a bin with n pairs, n_long
    chosen-longer and n_short chosen-shorter, each chosen-longer pair weighs n / (2 n_long) and each
    chosen-shorter one n / (2 n_short), so the bin keeps its weight n and the weights average 1. A bin with
    only one side, and pairs of equal length, keep weight 1.
    """
    d = np.asarray(differences, dtype=np.float64)
    weights = np.ones_like(d)
    unequal = d != 0
    if bins < 1 or not unequal.any():
        return weights
    size = np.abs(d)
    inner = np.quantile(size[unequal], np.linspace(0.0, 1.0, bins + 1)[1:-1])
    which = np.searchsorted(inner, size, side="left")
    for b in range(bins):
        inside = unequal & (which == b)
        longer, shorter = inside & (d > 0), inside & (d < 0)
        n_long, n_short = int(longer.sum()), int(shorter.sum())
        if n_long and n_short:
            n = n_long + n_short
            weights[longer] = n / (2 * n_long)
            weights[shorter] = n / (2 * n_short)
    return weights


class LengthInputs:
    """The length features of a set of training groups, handed out batch by batch.

    `batch(groups)` gives `response_length` ([responses], log length, in the order the batch encodes them),
    and, when asked for, `pair_offset` (beta x of each pair, to be subtracted from its margin) and
    `pair_weight` ([pairs]), in the order `collate_groups` lists the pairs. `scale` multiplies the fitted beta
    (`loss.length.covariate_scale`).
    """

    def __init__(self, groups: Sequence, covariate: bool = False, balance: int = 0, scale: float = 1.0):
        order = [(g.uid, i) for g in groups for i in range(len(g.group.pairs))]
        differences = [len(g.group.responses[a]) - len(g.group.responses[b]) for g in groups
                       for a, b, _ in g.group.pairs]
        self.beta: Optional[float] = None
        self._offsets: Optional[dict[tuple[int, int], float]] = None
        self._weights: Optional[dict[tuple[int, int], float]] = None
        if covariate:
            x, self.beta = covariate_fit(differences)
            self._offsets = {key: scale * self.beta * float(v) for key, v in zip(order, x)}
        if balance:
            self._weights = {key: float(w) for key, w in zip(order, balance_weights(differences, balance))}

    def batch(self, groups: Sequence) -> dict[str, torch.Tensor]:
        out = {"response_length": torch.tensor([v for g in groups for v in log_lengths(g.group.responses)],
                                               dtype=torch.float32)}
        keys = [(g.uid, i) for g in groups for i in range(len(g.group.pairs))]
        if self._offsets is not None:
            out["pair_offset"] = torch.tensor([self._offsets[k] for k in keys], dtype=torch.float32)
        if self._weights is not None:
            out["pair_weight"] = torch.tensor([self._weights[k] for k in keys], dtype=torch.float32)
        return out
