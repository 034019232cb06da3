"""Reward uncertainty: combining an ensemble's estimates into one reward, and how much they disagree.

Every response gets E estimates of its reward: the heads of the reward model
(`ensemble.heads`) and of the other members of its ensemble
(`ensemble.models`). Each is first put on its own scale, (r_e - mean_e) /
std_e with the statistics of `reward_stats.json`: the heads of a
Bradley-Terry model are only defined up to an offset, so their raw values
cannot be compared. The normalised estimates [B, E] are then combined
(Coste et al. 2023, "Reward model ensembles help mitigate overoptimization"):

- mean: the ensemble's mean;
- mean_minus_std: mean - k * std (uncertainty-weighted optimisation, k = `reward.uncertainty_coef`);
- min: the worst case over the estimates.

The std is the population standard deviation over the E estimates (divide by
E), the same spread `alignloop.reward.ensemble.disagreement` measures.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor

from alignloop.errors import ConfigError

UNCERTAINTY_KINDS = ("mean", "mean_minus_std", "min")


def estimate_spread(estimates: Tensor) -> Tensor:
    """Population std across the estimates (dim 1) of each response, [B, E] -> [B]; 0 with one estimate."""
    if estimates.shape[1] < 2:
        return torch.zeros(estimates.shape[0], dtype=estimates.dtype, device=estimates.device)
    return estimates.std(dim=1, unbiased=False)


def combine_estimates(estimates: Tensor, kind: str = "mean", coef: float = 1.0) -> Tensor:
    """One reward per response from its E estimates, [B, E] -> [B]: mean, mean - coef * std, or min."""
    if kind == "mean":
        return estimates.mean(dim=1)
    if kind == "mean_minus_std":
        return estimates.mean(dim=1) - coef * estimate_spread(estimates)
    if kind == "min":
        return estimates.min(dim=1).values
    raise ConfigError(f"reward.uncertainty must be one of {', '.join(UNCERTAINTY_KINDS)}, not {kind!r}")


def check_estimates(kind: str, count: int) -> None:
    """A one-line error when a conservative reward is asked of a single estimate (it would be the plain mean)."""
    if kind != "mean" and count < 2:
        raise ConfigError(f"reward.uncertainty={kind} needs at least two reward estimates, and this reward model "
                          f"gives {count}: train it with ensemble.heads>=2 or ensemble.models>=2 "
                          f"(or set reward.uncertainty=mean)")


def normalise_estimates(raw: Tensor, means: Sequence[float], stds: Sequence[float]) -> Tensor:
    """(raw_e - mean_e) / std_e per column e of [B, E]."""
    mean = torch.tensor(list(means), dtype=raw.dtype, device=raw.device)
    std = torch.tensor(list(stds), dtype=raw.dtype, device=raw.device)
    return (raw - mean) / std


def spread_figures(estimates: Tensor, threshold: Optional[float]) -> dict[str, float]:
    """`reward_spread`: mean std across estimates; `ood_fraction`: share of responses whose spread exceeds
    `threshold` (the reward model's own validation figure, `spread_q95`), left out when there is none."""
    spread = estimate_spread(estimates.float())
    out = {"reward_spread": float(spread.mean()) if len(spread) else 0.0}
    if threshold is not None and math.isfinite(threshold) and len(spread):
        out["ood_fraction"] = float((spread > threshold).float().mean())
    return out


def spread_q95(estimates: Tensor) -> float:
    """The 95th percentile over responses of the spread of their normalised estimates [B, E]: the validation
    yardstick of `ood_fraction` (`spread_q95` in reward_stats.json)."""
    return quantile(estimate_spread(estimates), 0.95)


def quantile(values: Tensor, q: float) -> float:
    """The q-quantile of a 1-D tensor (linear interpolation), NaN when empty."""
    values = values.detach().double().flatten()
    return float(torch.quantile(values, q)) if values.numel() else float("nan")
