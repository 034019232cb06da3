"""Reward ensembles, and the pairs they disagree on most: what people should judge next.

An ensemble is every head of every member: `rounds/NNN/reward/final/` (with
`ensemble.heads` heads) plus `rounds/NNN/reward/ensemble/member-KK/final/`
(with `ensemble.models` > 1). For a pair of responses each estimate gives
P(a preferred) = sigmoid(r_a - r_b); the spread of those probabilities across
estimates is the ensemble's uncertainty about the pair. Asking people about
the most uncertain pairs first is uncertainty sampling for active learning
(Settles 2009, section 3.1; for reward ensembles see Gleave & Irving 2022,
"Uncertainty estimation for language reward models").
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Optional

import torch

from alignloop.errors import CheckpointError
from alignloop.reward.model import RewardModel, load_reward_model


class RewardEnsemble:
    """Several reward models (each with one or more heads) scored together."""

    def __init__(self, members: list[RewardModel]):
        if not members:
            raise CheckpointError("a reward ensemble needs at least one model")
        self.members = members

    @property
    def size(self) -> int:
        return sum(m.num_heads for m in self.members)

    def score_texts(self, prompts: list[str], responses: list[str], batch_size: int = 32) -> torch.Tensor:
        """Every estimate's reward of each response, shape [B, size]."""
        return torch.cat([m.score_texts(prompts, responses, batch_size, all_heads=True) for m in self.members],
                         dim=1)

    def head_stats(self) -> tuple[list[float], list[float]]:
        """(means, stds) that put each of the `size` estimates on its own scale (each member's `head_stats`)."""
        return stacked_head_stats(self.members)

    def normalised_scores(self, prompts: list[str], responses: list[str], batch_size: int = 32) -> torch.Tensor:
        """Every estimate's reward on its own scale, (r_e - mean_e) / std_e, shape [B, size]."""
        from alignloop.reward.uncertainty import normalise_estimates

        return normalise_estimates(self.score_texts(prompts, responses, batch_size), *self.head_stats())

    def spread_q95(self, prompts: list[str], responses: list[str], batch_size: int = 32) -> float:
        """95th percentile over the responses of the spread of the normalised estimates (validation yardstick)."""
        from alignloop.reward.uncertainty import spread_q95

        return spread_q95(self.normalised_scores(prompts, responses, batch_size))

    def mean_scores(self, prompts: list[str], responses: list[str], batch_size: int = 32) -> torch.Tensor:
        """The ensemble's reward of each response, shape [B]: the mean of the normalised estimates, what RL
        optimises with `reward.uncertainty=mean`."""
        return self._mean_normalised(self.score_texts(prompts, responses, batch_size))

    def _mean_normalised(self, raw: torch.Tensor) -> torch.Tensor:
        from alignloop.reward.uncertainty import normalise_estimates

        return normalise_estimates(raw, *self.head_stats()).mean(dim=1)

    def preference_probabilities(self, prompts: list[str], a: list[str], b: list[str],
                                 batch_size: int = 32) -> torch.Tensor:
        """sigmoid(r_a - r_b) for each pair and each estimate, shape [B, size]."""
        return pair_probabilities(self.score_texts(prompts, a, batch_size), self.score_texts(prompts, b, batch_size))

    # The reading below lets `alignloop.reward.evaluate` score the ensemble on batches the first member encodes,
    # as it scores one model; that is right only when every member reads a reply the same way.

    @cached_property
    def reader(self) -> RewardModel:
        """The member whose encoding every member shares; a one-line error when they read replies differently."""
        first = self.members[0]
        for member in self.members[1:]:
            if reading(member) != reading(first) or member.tokenizer.get_vocab() != first.tokenizer.get_vocab():
                raise CheckpointError(f"the ensemble's members read replies differently ({reading(first)} against "
                                      f"{reading(member)}, or another vocabulary): score them one at a time")
        return first

    def reading_problem(self) -> Optional[str]:
        """Why the ensemble cannot be scored as one model (its members read replies differently), or None."""
        try:
            self.reader  # noqa: B018 -- the check that the members read alike
        except CheckpointError as e:
            return str(e)
        return None

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 token_type_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The ensemble's reward of each sequence of a batch encoded by `reader`, shape [B] (`mean_scores`)."""
        return self._mean_normalised(
            torch.cat([m.heads(input_ids, attention_mask, token_type_ids).float() for m in self.members], dim=1))

    def encode(self, prompt: str, response: str) -> dict[str, list[int]]:
        """Token ids of one (prompt, response), as every member reads it."""
        return self.reader.encode(prompt, response)

    @property
    def tokenizer(self):
        return self.reader.tokenizer

    @property
    def max_length(self) -> int:
        return self.reader.max_length

    @property
    def is_decoder(self) -> bool:
        return self.reader.is_decoder

    @property
    def device(self) -> torch.device:
        return self.members[0].device

    @property
    def training(self) -> bool:
        return any(m.training for m in self.members)

    def eval(self) -> "RewardEnsemble":
        return self.train(False)

    def train(self, mode: bool = True) -> "RewardEnsemble":
        for member in self.members:
            member.train(mode)
        return self


def reading(model: RewardModel) -> tuple:
    """What decides the ids a model reads for a (prompt, reply): kind, length limit, which end it keeps."""
    return ("decoder" if model.is_decoder else "encoder", model.max_length, model.keep_response)


def stacked_head_stats(models) -> tuple[list[float], list[float]]:
    """(means, stds) of every head of `models` in order: the statistics that put each estimate on its scale."""
    means: list[float] = []
    stds: list[float] = []
    for model in models:
        m, s = model.head_stats()
        means += m
        stds += s
    return means, stds


def pair_probabilities(rewards_a: torch.Tensor, rewards_b: torch.Tensor) -> torch.Tensor:
    """P(a preferred) = sigmoid(r_a - r_b) under Bradley-Terry, per pair and estimate (same shapes in and out)."""
    return torch.sigmoid(rewards_a - rewards_b)


def ensemble_members(reward_dir: Path | str) -> list[Path]:
    """The checkpoints of a round's reward ensemble: `final/` then `ensemble/member-*/final/` (or the folder
    itself when it is one checkpoint)."""
    reward_dir = Path(reward_dir)
    if (reward_dir / "config.json").is_file():
        return [reward_dir]
    found = [reward_dir / "final"] if (reward_dir / "final").exists() else []
    found += sorted(p / "final" for p in (reward_dir / "ensemble").glob("member-*") if (p / "final").exists())
    return found


def load_ensemble(reward_dir: Path | str, device: Optional[torch.device | str] = None) -> RewardEnsemble:
    """Every member of the reward ensemble in `rounds/NNN/reward/`."""
    paths = ensemble_members(reward_dir)
    if not paths:
        raise CheckpointError(f"no reward model in {reward_dir} (expected a checkpoint, or final/ or "
                              f"ensemble/member-*/final/ in it)")
    return RewardEnsemble([load_reward_model(p, device) for p in paths])


def disagreement(probabilities: torch.Tensor) -> torch.Tensor:
    """Standard deviation across estimates (dim 1) of P(a preferred): 0 when all agree, at most 0.5."""
    if probabilities.shape[1] < 2:
        return torch.zeros(probabilities.shape[0])
    return probabilities.std(dim=1, unbiased=False)


def bernoulli_entropy(p: torch.Tensor) -> torch.Tensor:
    """-p ln p - (1 - p) ln(1 - p), in nats (0 at p = 0 or 1)."""
    p = p.clamp(0.0, 1.0)
    return -(torch.xlogy(p, p) + torch.xlogy(1 - p, 1 - p))


def mutual_information(probabilities: torch.Tensor) -> torch.Tensor:
    """Per pair, the information a judgment would give about which estimate is right (BALD; Houlsby et al.
    2011): H(mean over estimates of P(a preferred)) - mean of H(P(a preferred)), in nats, over dim 1.

    0 when the estimates agree, whatever they say; large when each is confident and they contradict each
    other. A pair every estimate calls a coin flip scores 0: its judgment would be noise to all of them."""
    if probabilities.shape[1] < 2:
        return torch.zeros(probabilities.shape[0])
    information = bernoulli_entropy(probabilities.mean(dim=1)) - bernoulli_entropy(probabilities).mean(dim=1)
    return information.clamp_min(0.0)  # >= 0 by concavity; the clamp removes rounding below it


def most_uncertain(probabilities: torch.Tensor, k: int) -> list[int]:
    """Indices of the `k` pairs with the largest disagreement, most uncertain first (ties: lower index first)."""
    spread = disagreement(probabilities)
    order = sorted(range(len(spread)), key=lambda i: (-float(spread[i]), i))
    return order[:k]
