"""Masked statistics, whitening and generalized advantage estimation.

Every tensor here is per token, [B, T], with a mask [B, T] that is 1 on
response tokens and 0 on padding; padding never contributes to a statistic.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["masked_sum", "masked_mean", "masked_var", "masked_whiten", "masked_whiten_across", "gae"]


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of ``x`` over positions where ``mask`` is 1 (all dims, or ``dim``)."""
    picked = torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))
    return picked.sum() if dim is None else picked.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over positions where ``mask`` is 1.

    x, mask: same shape (mask of any dtype, 0/1). dim=None: a scalar over all
    masked elements; otherwise the mean along ``dim``. Padding may hold
    anything (even NaN): it is selected out, not multiplied by 0. An empty
    selection gives 0 (not NaN), so a minibatch whose every token is masked
    adds nothing to a loss instead of poisoning it.
    """
    count = mask.to(x.dtype).sum() if dim is None else mask.to(x.dtype).sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1.0)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of the masked elements of ``x`` (scalar).

    unbiased: Bessel's correction n / (n - 1), as ``torch.var``. No element
    (or a single one when unbiased) gives 0: no spread was observed.
    """
    count = mask.to(x.dtype).sum()
    mean = masked_sum(x, mask) / count.clamp(min=1.0)
    sq = masked_sum((x - mean) ** 2, mask)
    denom = count - 1.0 if unbiased else count
    return torch.where(denom > 0, sq / denom.clamp(min=1.0), torch.zeros_like(sq))


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Normalise the masked elements to unit variance (and zero mean).

    Returns ``(x - mean) / sqrt(var + eps)`` with mean and (unbiased) variance
    over masked elements; with ``shift_mean=False`` the mean is added back, so
    only the scale changes (used for rewards, whose sign carries meaning).
    Padding positions are 0 in the result.
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask, unbiased=True)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_whiten_across(x: Tensor, mask: Tensor, all_reduce_sum, eps: float = 1e-8) -> Tensor:
    """`masked_whiten` (zero mean) with the statistics of every process's masked elements together.

    all_reduce_sum: list of floats -> their sums over processes
    (`alignloop.train.distributed.all_reduce_sum`). Each rank holds a share of
    the batch; whitening by the whole batch's mean and (unbiased) variance
    gives every rank the advantages one process would compute.
    """
    count, total = all_reduce_sum([float(mask.to(x.dtype).sum()), float(masked_sum(x, mask))])
    mean = total / max(count, 1.0)
    (squares,) = all_reduce_sum([float(masked_sum((x - mean) ** 2, mask))])
    var = squares / (count - 1.0) if count > 1 else 0.0
    whitened = (x - mean) / (var + eps) ** 0.5
    return torch.where(mask.bool(), whitened, torch.zeros((), dtype=x.dtype, device=x.device))


def gae(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016, eq. 16).

    A_t = sum_l (gamma * lam)^l * delta_{t+l}, with the TD residual
    delta_t = r_t + gamma * V(s_{t+1}) - V(s_t), computed backwards as
    A_t = delta_t + gamma * lam * A_{t+1}.

    rewards, values, mask: [B, T], one entry per response token; responses are
    right-padded to T and may have different lengths. The value after a row's
    last valid token is 0 (the episode ends with the response), and padding
    positions (mask 0) are ignored whatever they hold.
    Returns (advantages [B, T], returns [B, T] = advantages + values), both 0
    on padding. Both are targets, so they carry no gradient.
    """
    valid = mask.bool()
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    # torch.where, not a product: padding may hold anything, even inf or NaN.
    rewards = torch.where(valid, rewards.detach(), zero)
    values = torch.where(valid, values.detach(), zero)
    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])
    next_advantage = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        # Zeroing padding restarts the recursion at each row's last valid
        # token: what follows it contributes neither value nor advantage.
        advantage = torch.where(valid[:, t], delta + gamma * lam * next_advantage, zero)
        advantages[:, t] = advantage
        next_value, next_advantage = values[:, t], advantage
    return advantages, advantages + values
