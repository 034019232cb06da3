"""Reward-model losses and metrics, for every kind of feedback we collect.

Pairs (chosen vs rejected), rankings of K responses, soft labels (ties and
"slightly better"), and Likert ratings. Rewards are scalars per response:
[B] for pairs, [B, K] for rankings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "bradley_terry_loss",
    "ranking_pairs",
    "ranking_loss",
    "soft_label_loss",
    "normalize_ratings",
    "rating_regression_loss",
    "reward_centering_loss",
    "pearson_correlation",
    "odin_length_loss",
    "head_orthogonality_loss",
    "preference_accuracy",
    "expected_calibration_error",
]


def bradley_terry_loss(chosen_rewards: Tensor, rejected_rewards: Tensor, margin: Tensor | float | None = None,
                       weights: Tensor | None = None) -> Tensor:
    """Pairwise Bradley-Terry loss: mean of -log sigmoid(r_c - r_r - m), each pair times its weight.

    InstructGPT (Ouyang et al. 2022, eq. 1) without margin; with margin m, the
    Llama 2 form (Touvron et al. 2023, eq. 2), where m grows with how strongly
    the annotator preferred the chosen response, so clear preferences must be
    separated by more. A negative margin is an offset in the chosen side's
    favour (the length covariate, `alignloop.reward.debias`).
    chosen_rewards, rejected_rewards: [B]; margin: [B], a float, or None;
    weights: [B] or None (all 1). The mean is over pairs, not over weights, so
    weights that average 1 over the training set leave the loss's scale alone.
    Returns a scalar.
    """
    diff = chosen_rewards - rejected_rewards
    if margin is not None:
        diff = diff - margin
    losses = -F.logsigmoid(diff)
    return (losses * weights.to(losses.dtype)).mean() if weights is not None else losses.mean()


def ranking_pairs(k: int, device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """All C(k, 2) pairs of a best-first ranking of k responses.

    Returns (idx_better, idx_worse), each [k*(k-1)/2] long, with
    idx_better < idx_worse: response i beats every response ranked after it.
    """
    better, worse = torch.triu_indices(k, k, offset=1, device=device)
    return better, worse


def ranking_loss(rewards: Tensor, ranks: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
    """Bradley-Terry loss over every pair in each ranking (InstructGPT, eq. 1).

    -1/C(K,2) * sum over pairs (w better than l) of log sigmoid(r_w - r_l),
    averaged over prompts. Each response is scored once and appears in K-1
    pairs, instead of encoding each pair separately: InstructGPT §3.5 notes
    this avoids overfitting and is much cheaper.

    rewards: [B, K], one reward per response. Without ``ranks`` the responses
    are in rank order, best first. ranks: [B, K], lower = better (0 is best);
    equal ranks are ties and form no pair. mask: [B, K], 1 on real responses,
    so prompts can have different K. Each prompt weighs the same whatever its
    number of pairs; prompts with no pair are left out. Returns a scalar.
    """
    batch, k = rewards.shape
    if ranks is None:
        ranks = torch.arange(k, device=rewards.device).expand(batch, k)
    valid = ranks.unsqueeze(2) < ranks.unsqueeze(1)  # [B, K, K]: i ranked above j
    if mask is not None:
        m = mask.bool()
        valid = valid & m.unsqueeze(2) & m.unsqueeze(1)
    pair_losses = -F.logsigmoid(rewards.unsqueeze(2) - rewards.unsqueeze(1))
    valid_f = valid.to(rewards.dtype)
    n_pairs = valid_f.sum((1, 2))
    per_prompt = (pair_losses * valid_f).sum((1, 2)) / n_pairs.clamp(min=1.0)
    has_pairs = (n_pairs > 0).to(rewards.dtype)
    return (per_prompt * has_pairs).sum() / has_pairs.sum().clamp(min=1.0)


def soft_label_loss(chosen_rewards: Tensor, rejected_rewards: Tensor, target_prob: Tensor | float) -> Tensor:
    """Binary cross-entropy of sigmoid(r_c - r_r) against a soft target.

    target_prob: [B] or a float, the probability that "chosen" is better:
    1 for a clear preference, 0.5 for a tie (the loss then pulls the two
    rewards together), e.g. 0.75 for "slightly better". With target 1 this is
    ``bradley_terry_loss``. Returns a scalar.
    """
    diff = chosen_rewards - rejected_rewards
    target = torch.as_tensor(target_prob, dtype=diff.dtype, device=diff.device).expand_as(diff)
    return F.binary_cross_entropy_with_logits(diff, target)


def normalize_ratings(ratings: Tensor, low: float, high: float) -> Tensor:
    """Map Likert ratings on [low, high] linearly onto [0, 1]."""
    if high <= low:
        raise ValueError(f"rating scale [{low}, {high}] is empty")
    return (ratings.to(torch.float32) - low) / (high - low)


def rating_regression_loss(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean squared error between predicted and annotated ratings.

    pred, target: same shape ([B], or [B, A] for A aspects); target is
    normalised (``normalize_ratings``) so scales of different sizes weigh
    alike. mask: same shape, 1 where a rating was given (aspects are
    optional). Returns a scalar (0 if nothing is rated).
    """
    sq = (pred - target.to(pred.dtype)).square()
    if mask is None:
        return sq.mean()
    m = mask.to(pred.dtype)
    return (sq * m).sum() / m.sum().clamp(min=1.0)


def reward_centering_loss(chosen_rewards: Tensor, rejected_rewards: Tensor) -> Tensor:
    """Auxiliary loss mean((r_c + r_r)^2) that centres rewards on 0.

    Eisenstein et al. 2023 ("Helping or Herding? Reward model ensembles
    mitigate but do not eliminate reward hacking"): the Bradley-Terry loss
    only sees differences, so the reward's offset drifts freely; this pins it,
    which makes rewards comparable across models and runs. Add it with a small
    coefficient (they use 0.01). chosen_rewards, rejected_rewards: [B].
    """
    return (chosen_rewards + rejected_rewards).square().mean()


def pearson_correlation(x: Tensor, y: Tensor, eps: float = 1e-8) -> Tensor:
    """Pearson's correlation of two [N] vectors: cov(x, y) / (sd(x) sd(y)); 0 when either is constant.

    `eps` keeps the gradient finite where a side barely varies.
    """
    dx = x - x.mean()
    dy = y.to(dx.dtype) - y.to(dx.dtype).mean()
    denominator = (dx.square().sum() * dy.square().sum()).clamp(min=0).sqrt()
    return (dx * dy).sum() / (denominator + eps)


def odin_length_loss(quality_rewards: Tensor, length_rewards: Tensor, lengths: Tensor) -> Tensor:
    """ODIN's correlation terms (Chen et al. 2024, "ODIN: Disentangled Reward Mitigates Hacking in RLHF"), in
    reward units: mean over reward heads of sd(r_Q) rho(r_Q, L)^2, minus sd(r_L) rho(r_L, L), with rho
    Pearson's correlation and sd the standard deviation over the batch, the sd's held constant (no gradient).

    The reward a model is trained with is r_Q + r_L; this term pushes the reward r_Q to carry no (linear) trace
    of the length L and the length reward r_L to carry it all, so that dropping r_L at scoring time drops the
    length preference. ODIN penalises |rho(r_Q, L)| - rho(r_L, L) as such, but a correlation does not change
    when its variable is scaled, so its gradient grows as 1 / sd: on freshly initialised heads (sd ~ 0.01) it
    is many times the Bradley-Terry gradient and, clipped together with it, drowns the preference signal (on HH
    with MiniLM: gradient norm 16-19 in the first steps against 0.3 without ODIN, validation accuracy 0.43-0.53
    throughout; BENCHMARKS.md, "Length"). Weighed by the sd it pushes in reward units, like the Bradley-Terry loss. The reward's term is
    squared so that its push fades with the correlation: on a few dozen replies the sample correlation of two
    unrelated quantities is +-0.2 by chance, and |rho| would push as hard on that noise as on a real trace.
    quality_rewards: [N] or [N, H]; length_rewards, lengths: [N] (every response of the batch once).
    Returns a scalar.
    """
    quality = quality_rewards.unsqueeze(-1) if quality_rewards.dim() == 1 else quality_rewards
    decorrelate = torch.stack([quality[:, h].detach().std(unbiased=False)
                               * pearson_correlation(quality[:, h], lengths).square()
                               for h in range(quality.shape[1])])
    return decorrelate.mean() - length_rewards.detach().std(unbiased=False) * pearson_correlation(length_rewards,
                                                                                                   lengths)


def head_orthogonality_loss(quality_weights: Tensor, length_weights: Tensor) -> Tensor:
    """ODIN's orthogonality term: mean over (reward head, length head) of |w_Q . w_L|, the heads' weight vectors.

    The two heads then read different directions of the shared features. The plain dot product, as in the
    paper, rather than the cosine: a cosine ignores the weights' scale, so its gradient grows as 1 / |w| and,
    on freshly initialised heads (|w| ~ 0.4), outweighed the Bradley-Terry gradient (BENCHMARKS.md, "Length").
    quality_weights: [H, D]; length_weights: [K, D]. Returns a scalar.
    """
    return (quality_weights.float() @ length_weights.float().T).abs().mean()


def preference_accuracy(chosen_rewards: Tensor, rejected_rewards: Tensor) -> Tensor:
    """Fraction of pairs where the chosen response gets the higher reward.

    Ties count one half, so a reward model that scores everything alike gets
    0.5 (chance), not 0 or 1. chosen_rewards, rejected_rewards: [B].
    """
    wins = (chosen_rewards > rejected_rewards).to(torch.float32)
    ties = (chosen_rewards == rejected_rewards).to(torch.float32)
    return (wins + 0.5 * ties).mean()


def expected_calibration_error(probs: Tensor, labels: Tensor, n_bins: int = 10) -> Tensor:
    """Expected calibration error of predicted probabilities (Guo et al. 2017, §2).

    probs: [N] predicted P(label = 1), e.g. sigmoid(r_a - r_b) = P(a preferred);
    labels: [N] 0/1 outcomes. Predictions fall in ``n_bins`` equal-width bins
    on [0, 1] (1.0 in the last); ECE = sum_b (n_b / N) * |mean label_b -
    mean prob_b|. 0 = the stated probabilities match observed frequencies.
    """
    probs = probs.detach().to(torch.float64).flatten()
    labels = labels.detach().to(torch.float64).flatten()
    bins = (probs * n_bins).floor().long().clamp_(0, n_bins - 1)
    counts = torch.zeros(n_bins, dtype=torch.float64, device=probs.device).index_add_(0, bins, torch.ones_like(probs))
    prob_sums = torch.zeros_like(counts).index_add_(0, bins, probs)
    label_sums = torch.zeros_like(counts).index_add_(0, bins, labels)
    gaps = (label_sums - prob_sums).abs()  # n_b * |acc_b - conf_b|
    return (gaps.sum() / max(probs.numel(), 1)).to(torch.float32)
