"""KL estimators between the policy and the reference, and the KL coefficient.

RLHF maximises  score - beta * KL(policy || reference)  (Ziegler et al. 2019,
§2.2; Ouyang et al. 2022, eq. 2). The KL is estimated per token from the
sampled tokens, and beta is either fixed or adapted to hold the KL near a
target.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from alignloop.reward.model import last_token_index

__all__ = [
    "KLKind",
    "kl_penalty",
    "token_rewards",
    "AdaptiveKLController",
    "FixedKLController",
    "kl_controller_from_state",
]

KLKind = Literal["k1", "k2", "k3", "abs"]


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, kind: KLKind = "k1") -> Tensor:
    """Per-token estimate of KL(policy || reference) from tokens the policy sampled.

    logprobs, ref_logprobs: [B, T] log-probs of the sampled tokens under the
    policy and the reference. With log r = ref_logprobs - logprobs (J. Schulman,
    "Approximating KL divergence", 2020):
    - ``k1`` = -log r: unbiased, high variance, can be negative per token.
    - ``k2`` = (log r)^2 / 2: biased, low variance, >= 0.
    - ``k3`` = (r - 1) - log r: unbiased, low variance, >= 0.
    - ``abs`` = |log r|.
    Where each may be used depends on how its gradient is taken:
    - as a penalty in the reward (PPO, RLOO), the estimate is a number held
      fixed and the policy gradient is E_pi[k * grad log pi]: that is
      grad KL(pi || ref) for k1 alone (E_pi[grad log pi] = 0 absorbs the rest);
      for k3 it is grad KL + sum_x ref(x) grad log pi(x), ~0 near the reference;
    - as a loss term differentiated through log pi on the policy's own samples
      (GRPO), k2's expected gradient is grad KL(pi || ref) and k3's is
      grad KL(ref || pi); k1's is 0.
    Returns [B, T]; the caller masks padding.
    """
    log_ratio = ref_logprobs - logprobs
    if kind == "k1":
        return -log_ratio
    if kind == "k2":
        return 0.5 * log_ratio.square()
    if kind == "k3":
        return torch.expm1(log_ratio) - log_ratio
    if kind == "abs":
        return log_ratio.abs()
    raise ValueError(f"unknown KL estimator {kind!r}: expected one of k1, k2, k3, abs")


def token_rewards(score: Tensor, kl: Tensor, mask: Tensor, beta: float) -> Tensor:
    """Per-token rewards for PPO: a KL penalty on every token, the score at the end.

    r_t = -beta * kl_t on every response token, plus the reward model's score
    on the row's LAST valid token (Ziegler et al. 2019 §2.2; Ouyang et al.
    2022, eq. 2, split per token): the score judges the whole response, which
    is only complete there.
    score: [B]; kl, mask: [B, T] (right-padded responses). Returns [B, T],
    0 on padding; a row with no valid token gets no score.
    """
    m = mask.to(kl.dtype)
    rewards = -beta * kl * m
    last = last_token_index(mask)
    has_tokens = m.sum(-1) > 0
    rewards[torch.arange(mask.shape[0], device=mask.device), last] += score.to(kl.dtype) * has_tokens.to(kl.dtype)
    return rewards


class FixedKLController:
    """A constant KL coefficient."""

    def __init__(self, beta: float):
        self.beta = float(beta)

    def update(self, current_kl: float, n_steps: int) -> float:
        """Nothing to adapt; returns beta."""
        return self.beta

    def state_dict(self) -> dict:
        return {"kind": "fixed", "beta": self.beta}

    def load_state_dict(self, state: dict) -> None:
        self.beta = float(state["beta"])


class AdaptiveKLController:
    """Adapt beta so the observed KL tracks a target (Ziegler et al. 2019, §2.2).

    After each batch: e = clip(KL / target - 1, -0.2, 0.2) and
    beta <- beta * (1 + e * n_steps / horizon). The clip bounds how fast beta
    moves on a noisy KL estimate; ``horizon`` (in samples) sets the time scale.
    """

    def __init__(self, init_beta: float, target: float, horizon: int):
        if target <= 0:
            raise ValueError(f"KL target must be > 0, got {target}")
        if horizon <= 0:
            raise ValueError(f"KL horizon must be > 0, got {horizon}")
        self.beta = float(init_beta)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        """Move beta toward holding ``current_kl`` at the target; returns the new beta."""
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.beta *= 1.0 + error * n_steps / self.horizon
        return self.beta

    def state_dict(self) -> dict:
        return {"kind": "adaptive", "beta": self.beta, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        self.beta = float(state["beta"])
        self.target = float(state.get("target", self.target))
        self.horizon = int(state.get("horizon", self.horizon))


def kl_controller_from_state(state: dict) -> FixedKLController | AdaptiveKLController:
    """Rebuild a controller saved with ``state_dict()`` (for resuming a run)."""
    if state.get("kind") == "adaptive":
        return AdaptiveKLController(state["beta"], state["target"], state["horizon"])
    if state.get("kind") == "fixed":
        return FixedKLController(state["beta"])
    raise ValueError(f"unknown KL controller state {state!r}")
