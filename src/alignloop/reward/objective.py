"""The reward model's training objective on one batch, built from the losses of `losses.py`.

A batch scores every response once (`rewards`: [N, heads]) and lists the
comparisons among them by index. The loss of one head is the mean, weighted
by how many comparisons of each kind the batch holds, of

- Bradley-Terry on pairs, with a margin from preference strength when asked;
- soft-label cross-entropy toward 0.5 on ties;
- the ranking loss over all C(K,2) pairs of each ranking;
- rating regression of sigmoid(r) onto the rating mapped to [0, 1], times its weight;

plus the optional reward-centering term. With several heads each one trains on
its own bootstrap share of the groups (Lakshminarayanan et al. 2017's
ensembles; Eisenstein et al. 2023 for reward models), so they disagree where
the data leaves the reward uncertain.

Keeping length out of the reward (`loss.length`, `alignloop.reward.debias`):
a batch may carry `pair_offset` (the length covariate: beta x is added to each
pair's logit), `pair_weight` (length-balanced pair weights) and
`response_length` (log length of every response). With ODIN the rewards have
trailing length-head columns: each reward head trains as reward + length head,
and ODIN's correlation and orthogonality terms are added once.
"""

from __future__ import annotations

from typing import Optional

import torch

from alignloop.reward import losses
from alignloop.reward.data import strength_margin


def bootstrap_mask(uids: torch.Tensor, head: int, heads: int, share: float) -> torch.Tensor:
    """Which groups head `head` trains on: a fixed pseudo-random `share` of them (all with one head)."""
    if heads == 1 or share >= 1.0:
        return torch.ones_like(uids, dtype=torch.bool)
    mixed = (uids * 1_000_003 + (head + 1) * 7_919) * 2_654_435_761 % (2 ** 32)
    return (mixed.double() / 2 ** 32) < share


def pair_margins(batch: dict[str, torch.Tensor], keep: torch.Tensor, margin: float) -> Optional[torch.Tensor]:
    """The margin of each kept pair: from its strength (`margin` > 0), minus its length-covariate offset."""
    out = strength_margin(batch["pair_strength"][keep], margin) if margin > 0 else None
    if "pair_offset" in batch:
        offset = batch["pair_offset"][keep]
        out = -offset if out is None else out - offset
    return out


def batch_objective(rewards: torch.Tensor, batch: dict[str, torch.Tensor], *, margin: float = 0.0,
                    centering: float = 0.0, rating_weight: float = 1.0, bootstrap: float = 1.0,
                    length_heads: int = 0, odin: float = 0.0, orthogonality: Optional[torch.Tensor] = None,
                    orthogonal: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """(loss, figures) of one batch. `rewards`: [N, heads + length_heads], one row per encoded response.

    `orthogonality`: ODIN's orthogonality term of the model's head (`RewardModel.head_orthogonality`),
    added times `orthogonal`; `odin` weighs ODIN's correlation terms (needs `response_length`).
    """
    heads = rewards.shape[1] - length_heads
    quality = rewards[:, :heads]
    length_reward = rewards[:, heads:].sum(dim=1) if length_heads else None
    trained = quality + length_reward.unsqueeze(1) if length_reward is not None else quality
    total = rewards.new_zeros(())
    counted = 0
    for head in range(heads):
        r = trained[:, head]
        parts: list[tuple[torch.Tensor, int]] = []
        keep = bootstrap_mask(batch["pair_uid"], head, heads, bootstrap)
        if keep.any():
            chosen, rejected = r[batch["pair_index"][keep, 0]], r[batch["pair_index"][keep, 1]]
            weights = batch["pair_weight"][keep] if "pair_weight" in batch else None
            term = losses.bradley_terry_loss(chosen, rejected, pair_margins(batch, keep, margin), weights)
            if centering > 0:
                term = term + centering * losses.reward_centering_loss(chosen, rejected)
            parts.append((term, int(keep.sum())))
        keep = bootstrap_mask(batch["tie_uid"], head, heads, bootstrap)
        if keep.any():
            a, b = r[batch["tie_index"][keep, 0]], r[batch["tie_index"][keep, 1]]
            parts.append((losses.soft_label_loss(a, b, 0.5), int(keep.sum())))
        keep = bootstrap_mask(batch["ranking_uid"], head, heads, bootstrap)
        if keep.any():
            index, mask = batch["ranking_index"][keep], batch["ranking_mask"][keep]
            n_pairs = int((mask.sum(1) * (mask.sum(1) - 1) // 2).sum())
            parts.append((losses.ranking_loss(r[index], mask=mask), n_pairs))
        keep = bootstrap_mask(batch["rating_uid"], head, heads, bootstrap)
        if keep.any() and rating_weight > 0:
            predicted = torch.sigmoid(r[batch["rating_index"][keep]])
            term = losses.rating_regression_loss(predicted, batch["rating_target"][keep])
            parts.append((rating_weight * term, int(keep.sum())))
        count = sum(n for _, n in parts)
        counted += count
        if count:
            total = total + sum(term * (n / count) for term, n in parts)
    loss = total / heads
    if length_reward is not None and odin > 0:
        loss = loss + odin * losses.odin_length_loss(quality, length_reward, batch["response_length"])
    if orthogonality is not None and orthogonal > 0:
        loss = loss + orthogonal * orthogonality

    # The figures are of the reward the model scores with: its reward heads, without a length head.
    mean_reward = quality.detach().mean(dim=1)
    # `comparisons`: what the loss is a mean over (per head, averaged over heads), to weigh batches by.
    figures: dict[str, float] = {"pairs": float(batch["pair_index"].shape[0]), "comparisons": counted / heads}
    if batch["pair_index"].shape[0]:
        chosen, rejected = mean_reward[batch["pair_index"][:, 0]], mean_reward[batch["pair_index"][:, 1]]
        figures["accuracy"] = float(losses.preference_accuracy(chosen, rejected))
        figures["reward_margin"] = float((chosen - rejected).mean())
    if "response_length" in batch and mean_reward.numel() > 1:
        figures["length_corr"] = float(losses.pearson_correlation(mean_reward, batch["response_length"]))
    return loss, figures
