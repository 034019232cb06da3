"""How good a reward model is on held-out preferences: accuracy, loss, calibration, accuracy by margin.

- accuracy: share of pairs where r(chosen) > r(rejected) (ties of the model count half);
- loss: the Bradley-Terry loss -log sigmoid(r_c - r_r), averaged;
- ece: expected calibration error of P(chosen preferred) = sigmoid(r_c - r_r),
  measured symmetrically (each pair also enters as "rejected over chosen" with
  label 0), so a model is judged on every probability it states;
- accuracy by margin: the same accuracy within buckets of |r_c - r_r| (is a
  confident model right more often?) and, where annotators said how strongly
  they preferred, by that strength.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import torch

from alignloop.reward import losses
from alignloop.reward.data import EncodedGroup, MODEL_INPUTS, fixed_batches

MARGIN_EDGES = (0.0, 0.5, 1.0, 2.0, math.inf)


@torch.no_grad()
def score_groups(reward, groups: Sequence[EncodedGroup], batch_size: int = 32
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(r_chosen, r_rejected, strength) of every strict comparison in `groups` (rankings as their pairs)."""
    was_training = reward.training
    reward.eval()
    device = reward.device
    chosen, rejected, strength = [], [], []
    for batch in fixed_batches(list(groups), batch_size, reward.tokenizer.pad_token_id):
        inputs = {k: batch[k].to(device) for k in MODEL_INPUTS if k in batch}
        r = reward(**inputs).float().cpu()
        if batch["pair_index"].shape[0]:
            chosen.append(r[batch["pair_index"][:, 0]])
            rejected.append(r[batch["pair_index"][:, 1]])
            strength.append(batch["pair_strength"])
        for index, mask in zip(batch["ranking_index"], batch["ranking_mask"]):
            real = index[mask.bool()]
            better, worse = losses.ranking_pairs(len(real))
            chosen.append(r[real[better]])
            rejected.append(r[real[worse]])
            strength.append(torch.full((len(better),), float("nan")))
    reward.train(was_training)
    empty = torch.zeros(0)
    return (torch.cat(chosen) if chosen else empty, torch.cat(rejected) if rejected else empty,
            torch.cat(strength) if strength else empty)


def _bucket_name(low: float, high: float) -> str:
    return f"{low:g}+" if math.isinf(high) else f"{low:g}-{high:g}"


def preference_metrics(chosen: torch.Tensor, rejected: torch.Tensor, strength: Optional[torch.Tensor] = None,
                       bins: int = 10) -> dict[str, Any]:
    """Accuracy, loss, ECE, n, and accuracy by |reward margin| and by annotator strength."""
    n = int(chosen.numel())
    if n == 0:
        return {"n": 0, "accuracy": None, "loss": None, "ece": None, "accuracy_by_margin": {}}
    diff = (chosen - rejected).double()
    probs = torch.sigmoid(diff)
    ece = losses.expected_calibration_error(torch.cat([probs, 1 - probs]),
                                            torch.cat([torch.ones(n), torch.zeros(n)]), bins)
    out: dict[str, Any] = {
        "n": n,
        "accuracy": float(losses.preference_accuracy(chosen, rejected)),
        "loss": float(losses.bradley_terry_loss(chosen.double(), rejected.double())),
        "ece": float(ece),
        "mean_margin": float(diff.mean()),
    }
    by_margin = {}
    size = diff.abs()
    for low, high in zip(MARGIN_EDGES[:-1], MARGIN_EDGES[1:]):
        inside = (size >= low) & (size < high)
        if inside.any():
            by_margin[_bucket_name(low, high)] = {
                "n": int(inside.sum()), "accuracy": float(losses.preference_accuracy(chosen[inside], rejected[inside]))}
    out["accuracy_by_margin"] = by_margin
    if strength is not None and strength.numel() == n and not torch.isnan(strength).all():
        by_strength = {}
        for value in sorted({float(s) for s in strength[~torch.isnan(strength)].tolist()}):
            inside = strength == value
            by_strength[f"{value:g}"] = {
                "n": int(inside.sum()), "accuracy": float(losses.preference_accuracy(chosen[inside], rejected[inside]))}
        out["accuracy_by_strength"] = by_strength
    return out


def gold_agreement(reward, prompts: list[str], responses_a: list[str], responses_b: list[str],
                   batch_size: int = 32, bins: int = 10) -> dict[str, Any]:
    """The reward model against the gold judge on pairs of responses: metrics of the gold-chosen side.

    `reward`: a `RewardModel`, or a `RewardEnsemble` (scored by the mean of its estimates).
    Pairs the gold judge calls a tie are left out (and counted).
    """
    from alignloop.judges.gold import gold_preference

    labels = [gold_preference(p, a, b) for p, a, b in zip(prompts, responses_a, responses_b)]
    keep = [i for i, label in enumerate(labels) if label != 0.5]
    score = reward.mean_scores if hasattr(reward, "mean_scores") else reward.score_texts
    r_a = score([prompts[i] for i in keep], [responses_a[i] for i in keep], batch_size)
    r_b = score([prompts[i] for i in keep], [responses_b[i] for i in keep], batch_size)
    a_wins = torch.tensor([labels[i] == 1.0 for i in keep], dtype=torch.bool)
    chosen = torch.where(a_wins, r_a, r_b)
    rejected = torch.where(a_wins, r_b, r_a)
    metrics = preference_metrics(chosen, rejected, bins=bins)
    metrics["gold_ties_skipped"] = len(labels) - len(keep)
    return metrics
