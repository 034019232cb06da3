"""Policy-optimisation losses: PPO (policy and value), DPO, and group baselines.

Pure functions on tensors. Shapes: B rows (responses), T response tokens,
V vocabulary; ``mask`` [B, T] is 1 on response tokens, 0 on padding. Stats
dicts hold detached 0-dim tensors (call ``.item()`` when logging, so a GPU
run syncs once per log line rather than per statistic).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from alignloop.reward.losses import preference_accuracy
from alignloop.reward.model import last_token_index
from alignloop.rl.advantages import masked_mean, masked_var

__all__ = [
    "ppo_policy_loss",
    "last_token_value_error",
    "ppo_value_loss",
    "entropy_from_logits",
    "explained_variance",
    "dpo_loss",
    "implicit_reward_accuracy",
    "group_advantages",
]


def ppo_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_range: float,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped surrogate objective of PPO (Schulman et al. 2017, eq. 7), as a loss.

    L = -mean_t min(rho_t * A_t, clip(rho_t, 1 - eps, 1 + eps) * A_t),
    rho_t = exp(logprobs_t - old_logprobs_t), averaged over masked tokens.

    logprobs: [B, T] under the policy being trained (with grad);
    old_logprobs: [B, T] recorded at rollout; advantages: [B, T]; mask: [B, T].
    Returns (loss scalar, stats): ``clipfrac`` (fraction of tokens whose
    clipped term was the one used, i.e. gradient cut off), ``approx_kl``
    (KL(old || new) by the k3 estimator mean((rho - 1) - log rho)), and
    ``ratio`` (mean rho; 1 on the first minibatch of an epoch).
    """
    log_ratio = logprobs - old_logprobs.detach()
    ratio = torch.exp(log_ratio)
    advantages = advantages.detach()
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).to(logprobs.dtype), mask),
            "approx_kl": masked_mean((ratio - 1.0) - log_ratio, mask),
            "ratio": masked_mean(ratio, mask),
        }
    return loss, stats


def ppo_value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip_range_value: float,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped value loss: 0.5 * mean max((V - R)^2, (V_clip - R)^2).

    V_clip = old_values + clip(values - old_values, -c, c). Not in the PPO
    paper's equations: it is the value clipping of OpenAI baselines' ppo2 that
    Ziegler et al. 2019 and InstructGPT-style RLHF inherited (Huang et al.
    2022, "The 37 implementation details of PPO", detail 9). It keeps the value
    head from moving far from the values the advantages were computed with.

    values: [B, T] (with grad); old_values, returns: [B, T]; mask: [B, T].
    Returns (loss scalar, stats): ``vf_clipfrac`` (fraction of tokens where
    the clipped error was larger, so the clipped term was used).
    """
    old_values, returns = old_values.detach(), returns.detach()
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    error = (values - returns).square()
    clipped_error = (clipped_values - returns).square()
    loss = 0.5 * masked_mean(torch.maximum(error, clipped_error), mask)
    with torch.no_grad():
        stats = {"vf_clipfrac": masked_mean((clipped_error > error).to(values.dtype), mask)}
    return loss, stats


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of softmax(logits) at every position.

    logits: [B, T, V]. Returns [B, T]: H = logsumexp(l) - sum_v softmax(l)_v * l_v
    (equal to -sum p log p, without forming log p). Tokens with logit -inf
    count as probability 0.
    """
    logits = logits.float()
    probs = torch.softmax(logits, dim=-1)
    # A -inf logit (a banned token) has p = 0 and contributes 0, not 0 * -inf.
    weighted = torch.where(probs > 0, probs * logits, torch.zeros((), dtype=logits.dtype, device=logits.device))
    return torch.logsumexp(logits, dim=-1) - weighted.sum(-1)


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """1 - Var(returns - values) / Var(returns) over masked tokens.

    values, returns, mask: [B, T]. 1 = the value head predicts returns
    perfectly, 0 = no better than a constant, < 0 = worse. NaN when the
    returns have no variance (nothing to explain).
    """
    values, returns = values.detach(), returns.detach()
    var_returns = masked_var(returns, mask)
    var_residual = masked_var(returns - values, mask)
    if float(var_returns) == 0.0:
        return torch.tensor(float("nan"), dtype=values.dtype, device=values.device)
    return 1.0 - var_residual / var_returns


def last_token_value_error(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """Mean over responses of V(s_last) - G_last at each response's last token.

    values, returns, mask: [B, T] (right-padded responses). At the last token the
    GAE return is that token's reward, the shaped score minus its KL penalty, so
    this is the critic's bias exactly where the score arrives: ~0 for a critic on
    the reward's scale, the normalisation's mean and scale error for one that is
    not. Rows without a token are left out; none at all gives 0.
    """
    rows = mask.sum(-1) > 0
    last = last_token_index(mask)[rows]
    picked = torch.arange(mask.shape[0], device=mask.device)[rows]
    error = (values.detach() - returns.detach())[picked, last]
    return error.mean() if error.numel() else torch.zeros((), dtype=values.dtype, device=values.device)


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Direct preference optimisation loss (Rafailov et al. 2023, eq. 7).

    h = (log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))
    L = -(1 - s) * log sigmoid(beta * h) - s * log sigmoid(-beta * h)
    s = ``label_smoothing`` is the conservative DPO of Mitchell (2023, "A note
    on DPO with noisy preferences"): each label is assumed flipped with
    probability s. s = 0 is plain DPO.

    Each input: [B] summed log-probs of the whole response (mask padding
    before summing). Returns (loss scalar, chosen_rewards [B],
    rejected_rewards [B]); the implicit rewards beta * (log pi - log ref) are
    detached, for logging (reward margin, reward accuracy).
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    chosen_log_ratio = policy_chosen_logps - ref_chosen_logps.detach()
    rejected_log_ratio = policy_rejected_logps - ref_rejected_logps.detach()
    logits = beta * (chosen_log_ratio - rejected_log_ratio)
    losses = -(1.0 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return losses.mean(), (beta * chosen_log_ratio).detach(), (beta * rejected_log_ratio).detach()


def implicit_reward_accuracy(chosen_rewards: Tensor, rejected_rewards: Tensor, resolution: Tensor | float = 0.0
                             ) -> Tensor:
    """Share of pairs whose chosen response has the higher implicit reward, ties counting one half.

    A margin within ``resolution`` (scalar or [B]) is a tie: at the first step
    the policy is the reference, every margin is 0 up to float rounding, and the
    accuracy is 0.5, not 0 (strict >) or a coin toss on rounding noise.
    chosen_rewards, rejected_rewards: [B].
    """
    margin = chosen_rewards - rejected_rewards
    margin = torch.where(margin.abs() <= resolution, torch.zeros_like(margin), margin)
    return preference_accuracy(margin, torch.zeros_like(margin))


def group_advantages(
    scores: Tensor,
    group_size: int,
    kind: Literal["grpo", "rloo"] = "grpo",
    scale: bool | None = None,
    eps: float = 1e-4,
) -> Tensor:
    """Advantages from a baseline computed within each prompt's group of samples.

    scores: [B] one score per response, grouped contiguously: rows
    [g*G, (g+1)*G) are the G = ``group_size`` responses to prompt g (the order
    of ``prompts.repeat_interleave(G)``). Returns [B].
    - ``grpo`` (Shao et al. 2024, DeepSeekMath §4.1.2): A_i = r_i - mean(r).
    - ``rloo`` (Ahmadian et al. 2024, leave-one-out baseline; Kool et al.
      2019): A_i = r_i - mean_{j != i} r_j = G / (G - 1) * (r_i - mean(r)).
    scale: divide by the group's standard deviation (unbiased) + ``eps``.
    None takes each paper's choice: GRPO scales, RLOO does not. GRPO without
    scaling is Dr. GRPO (Liu et al. 2025), which avoids favouring prompts whose
    samples all score alike.
    """
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 for a group baseline, got {group_size}")
    if scores.dim() != 1 or scores.shape[0] % group_size:
        raise ValueError(f"scores of shape {tuple(scores.shape)} do not split into groups of {group_size}")
    if kind not in ("grpo", "rloo"):
        raise ValueError(f"unknown group baseline {kind!r}: expected grpo or rloo")
    grouped = scores.detach().view(-1, group_size)
    mean = grouped.mean(-1, keepdim=True)
    if kind == "grpo":
        advantages = grouped - mean
    else:
        baseline = (grouped.sum(-1, keepdim=True) - grouped) / (group_size - 1)
        advantages = grouped - baseline
    if scale if scale is not None else kind == "grpo":
        advantages = advantages / (grouped.std(-1, keepdim=True) + eps)
    return advantages.reshape(-1)
