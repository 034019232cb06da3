"""Making experience: sample responses, score them, and record what the update needs.

Shared by PPO, GRPO/RLOO and best-of-n. One call to `make_experience`:

1. samples a response per prompt with the shared sampler (KV cache, left
   padding, per-row stop at EOS), which also returns each token's log-prob
   under the policy that sampled it;
2. scores each (prompt, response) with the frozen reward model: by token ids
   when the reward model reads the policy's tokenizer (no decode/re-encode
   round trip), else by text;
3. shapes the score: every estimate of the ensemble (heads, members)
   normalised with its own statistics, combined (`reward.uncertainty`), clipped,
   and penalised when the response was cut at the length limit without EOS;
4. computes the frozen reference's log-probs (for the KL penalty) and, for
   PPO, the critic's values, with one forward pass each.

`recompute_old_logprobs` then optionally replaces the sampler's log-probs by
those of the training forward (OpenRLHF's choice): under bf16 the sampler's
step-by-step decode and the update's full forward round differently, and the
PPO ratio would start away from 1 by that rounding alone.

Everything is per response token, [B, T], with `response_mask` 1 on response
tokens up to and including EOS: prompt tokens and padding are never in it.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field, fields, replace
from typing import Optional, Sequence

import torch
from torch import Tensor

from alignloop.data.formatting import decode_response, encode_prompt
from alignloop.generation.logprobs import sequence_logprobs
from alignloop.generation.sampler import RolloutBatch, Sampler
from alignloop.reward.model import load_reward_model, stats_warning
from alignloop.reward.ensemble import stacked_head_stats
from alignloop.reward.uncertainty import check_estimates, combine_estimates, normalise_estimates, spread_figures
from alignloop.rl.advantages import masked_mean
from alignloop.rl.config import RewardEstimatesConfig, RewardShapingConfig, SamplingConfig
from alignloop.rl.kl import kl_penalty
from alignloop.train.device import autocast

# ---------------------------------------------------------------------------
# Prompts


def encode_prompts(tokenizer, prompts: list[str], max_tokens: int) -> list[list[int]]:
    """Token ids of each prompt (BOS first); a long prompt keeps BOS and its last tokens."""
    encoded = []
    for prompt in prompts:
        ids = encode_prompt(tokenizer, prompt)
        if len(ids) > max_tokens:
            head = ids[:1] if tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id else []
            ids = head + ids[len(ids) - (max_tokens - len(head)):]
        encoded.append(ids)
    return encoded


def prompt_indices(iteration: int, batch: int, n_prompts: int, seed: int) -> list[int]:
    """Which prompts iteration `iteration` uses: a pure function of the iteration, so resuming is exact.

    The prompts are visited in a shuffled order, reshuffled (with a seed
    derived from the pass number) each time they have all been used.
    """
    out = []
    start = iteration * batch
    for position in range(start, start + batch):
        epoch, offset = divmod(position, n_prompts)
        order = list(range(n_prompts))
        random.Random(f"alignloop-prompts:{seed}:{epoch}").shuffle(order)
        out.append(order[offset])
    return out


# ---------------------------------------------------------------------------
# Scoring


def same_tokenizer(a, b) -> bool:
    """Whether two tokenizers turn text into the same ids (vocabulary, BOS/EOS, and a probe sentence)."""
    if a is b:
        return True
    probe = 'Once upon a time, Tom said: "Hello!" It was 3 o\'clock.'
    return (a.get_vocab() == b.get_vocab() and a.bos_token_id == b.bos_token_id
            and a.eos_token_id == b.eos_token_id
            and a.encode(probe, add_special_tokens=False) == b.encode(probe, add_special_tokens=False))


def reads_policy_ids(reward_model, policy_tokenizer) -> bool:
    """Whether `reward_model` can score a rollout by its token ids: a decoder that reads exactly what the policy
    wrote, `<bos> prompt response <eos>` (the layout reward training used), in the policy's tokenizer."""
    return bool(reward_model.is_decoder) and same_tokenizer(reward_model.tokenizer, policy_tokenizer)


class RewardScorer:
    """The frozen reward model (and the other members of its ensemble), fed the policy's rollouts the cheapest
    correct way. Each response gets `size` estimates: every head of every model, the reward model's first."""

    def __init__(self, reward_model, policy_tokenizer, batch_size: int = 64, members: Sequence = ()):
        self.reward_model = reward_model
        self.members = list(members)
        self.policy_tokenizer = policy_tokenizer
        self.batch_size = batch_size
        self.by_ids = reads_policy_ids(reward_model, policy_tokenizer)
        self._members_by_ids = [reads_policy_ids(m, policy_tokenizer) for m in self.members]
        self.estimate_means, self.estimate_stds = stacked_head_stats([reward_model, *self.members])

    @property
    def size(self) -> int:
        """Estimates per response: every head of the reward model and of its members."""
        return len(self.estimate_means)

    @property
    def spread_threshold(self) -> Optional[float]:
        """The spread of these estimates that the reward model's own validation responses stay under 95% of the
        time (`reward_stats.json`), or None when it was not recorded for this set of estimates."""
        stats = self.reward_model.stats
        if self.members:
            return stats.ensemble_spread_q95 if stats.ensemble_estimates == self.size else None
        return stats.spread_q95 if self.size > 1 else None

    @torch.no_grad()
    def _heads(self, model, by_ids: bool, batch: RolloutBatch, prompts: list[str], responses: list[str]) -> Tensor:
        device = batch.input_ids.device
        if not by_ids:
            return model.score_texts(prompts, responses, batch_size=self.batch_size, all_heads=True).to(device)
        rm_device = model.device
        limit = model.max_length
        scores = []
        for start in range(0, len(batch), self.batch_size):
            ids = batch.input_ids[start:start + self.batch_size]
            mask = batch.attention_mask[start:start + self.batch_size]
            if ids.shape[1] > limit:  # the score is read at the end: drop the oldest prompt tokens
                ids, mask = ids[:, -limit:], mask[:, -limit:]
            with autocast(rm_device):
                scores.append(model.heads(ids.to(rm_device), mask.to(rm_device)).float())
        return torch.cat(scores).to(device)

    def score(self, batch: RolloutBatch, prompts: list[str], responses: list[str]) -> Tensor:
        """Raw scores [B] of the reward model alone (the mean of its heads; float32, on the rollout's device)."""
        return self._heads(self.reward_model, self.by_ids, batch, prompts, responses).mean(dim=-1)

    def estimates(self, batch: RolloutBatch, prompts: list[str], responses: list[str]) -> Tensor:
        """Raw scores [B, size] of every estimate: the reward model's heads, then each member's."""
        parts = [self._heads(self.reward_model, self.by_ids, batch, prompts, responses)]
        parts += [self._heads(m, by_ids, batch, prompts, responses)
                  for m, by_ids in zip(self.members, self._members_by_ids)]
        return torch.cat(parts, dim=1)

    def normalised(self, raw: Tensor) -> Tensor:
        """Each estimate of [B, size] on its own scale, (r_e - mean_e) / std_e."""
        return normalise_estimates(raw, self.estimate_means, self.estimate_stds)

    def assess(self, batch: RolloutBatch, prompts: list[str], responses: list[str],
               cfg: RewardEstimatesConfig) -> "Assessment":
        """Every estimate of each response, normalised once, and the one reward `reward.uncertainty` makes of them
        (from the normalised estimates unless `reward.normalise=false`; `alignloop.reward.uncertainty`)."""
        raw = self.estimates(batch, prompts, responses).float()
        normalised = self.normalised(raw)
        combined = combine_estimates(normalised if getattr(cfg, "normalise", True) else raw, cfg.uncertainty,
                                     cfg.uncertainty_coef)
        return Assessment(scores=raw[:, :self.reward_model.num_heads].mean(dim=-1), estimates=normalised,
                          combined=combined)


@dataclass
class Assessment:
    """One scoring of B responses by a `RewardScorer`.

    - scores [B]: the reward model's own raw score (the mean of its heads), as logged;
    - estimates [B, size]: every estimate on its own scale, (r_e - mean_e) / std_e;
    - combined [B]: the reward they make (`reward.uncertainty`), before the clip and the no-EOS penalty.
    """

    scores: Tensor
    estimates: Tensor
    combined: Tensor


def open_reward_scorer(path, device: torch.device, policy_tokenizer, shaping: RewardEstimatesConfig,
                       batch_size: int, stage: str, log) -> RewardScorer:
    """The frozen reward model of an RL stage (with its ensemble's other members unless `reward.members=false`),
    with a warning when its normalisation statistics are thin; a one-line error when a conservative reward is
    asked of a single estimate."""
    from alignloop.rl.inputs import reward_members

    reward_model = load_reward_model(path, device)
    warning = stats_warning(path, reward_model.stats) if getattr(shaping, "normalise", True) else None
    if warning:
        log(f"{stage}: warning: {warning}")
    members = [load_reward_model(p, device) for p in reward_members(path, shaping.members)]
    scorer = RewardScorer(reward_model, policy_tokenizer, batch_size=batch_size, members=members)
    check_estimates(shaping.uncertainty, scorer.size)
    if scorer.size > 1:
        threshold = scorer.spread_threshold
        log(f"{stage}: {scorer.size} reward estimates ({reward_model.num_heads} head(s)"
            f"{f' + {len(members)} other ensemble member(s)' if members else ''}), reward = {shaping.uncertainty}; "
            + (f"validation spread q95 {threshold:.3f}" if threshold is not None
               else "no validation spread recorded (ood_fraction is not logged)"))
    return scorer


def clipped_share(rewards: Tensor, cfg: RewardShapingConfig) -> float:
    """Share of (normalised, combined) rewards outside [-clip, clip], i.e. that `shape_rewards` clips."""
    if cfg.clip is None or not len(rewards):
        return 0.0
    return float((rewards.abs() > cfg.clip).float().mean())


def shape_rewards(rewards: Tensor, ended_with_eos: Tensor, cfg: RewardShapingConfig) -> Tensor:
    """The sequence-level reward from a (normalised, combined) one: clip to [-clip, clip], then subtract the
    no-EOS penalty.

    The penalty comes after the clip so that a cut-off response is always
    worse than the same response scored at the clip boundary.
    """
    if cfg.clip is not None:
        rewards = rewards.clamp(-cfg.clip, cfg.clip)
    return rewards - cfg.missing_eos_penalty * (~ended_with_eos.bool()).to(rewards.dtype)


def reward_figures(exp: "Experience", scorer: RewardScorer, cfg: RewardShapingConfig) -> dict[str, float]:
    """Per-iteration figures of the reward: the clipped share, the estimates' mean spread (`reward_spread`) and
    the share of responses more uncertain than 95% of the validation ones (`ood_fraction`)."""
    return {"reward_clip_frac": clipped_share(exp.extra["combined"], cfg),
            **spread_figures(exp.extra["estimates"], scorer.spread_threshold)}


# ---------------------------------------------------------------------------
# Forward passes over a rollout


@torch.no_grad()
def rollout_logprobs(model, input_ids: Tensor, attention_mask: Tensor, prompt_length: int, temperature: float,
                     batch_size: int) -> Tensor:
    """Per-token log-probs [B, T] of a rollout's responses under `model`, in chunks, no grad."""
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, input_ids.shape[0], batch_size):
            with autocast(input_ids.device):
                out.append(sequence_logprobs(model, input_ids[start:start + batch_size],
                                             attention_mask[start:start + batch_size], prompt_length, temperature))
    finally:
        model.train(was_training)
    return torch.cat(out).float()


@torch.no_grad()
def rollout_values(critic, input_ids: Tensor, attention_mask: Tensor, prompt_length: int, batch_size: int) -> Tensor:
    """The critic's values [B, T] of a rollout's response positions, in chunks, no grad."""
    out = []
    for start in range(0, input_ids.shape[0], batch_size):
        with autocast(input_ids.device):
            out.append(critic(input_ids[start:start + batch_size], attention_mask[start:start + batch_size],
                              prompt_length))
    return torch.cat(out).float()


# ---------------------------------------------------------------------------
# Experience


@dataclass
class Experience:
    """One iteration's rollouts and everything the update reads. Shapes: B rows, P prompt width, T response width.

    - input_ids, attention_mask [B, P+T]: left-padded prompt then right-padded response.
    - response_mask [B, T] float: 1 on response tokens up to and including EOS.
    - logprobs [B, T]: log-probs of the sampled tokens under the policy that sampled them.
    - ref_logprobs [B, T]: the same tokens under the frozen reference.
    - values [B, T] or None: the critic's values (PPO only).
    - scores [B]: raw reward-model scores; rewards [B]: after `shape_rewards`.
    - extra["estimates"] [B, E]: every estimate of the reward, each normalised by its own statistics;
      extra["combined"] [B]: the reward they make (`reward.uncertainty`) before the clip and the penalty.
    - ended_with_eos [B] bool.
    - The update fills token_rewards, advantages and returns ([B, T]).
    """

    input_ids: Tensor
    attention_mask: Tensor
    prompt_length: int
    response_mask: Tensor
    logprobs: Tensor
    ref_logprobs: Tensor
    values: Optional[Tensor]
    scores: Tensor
    rewards: Tensor
    ended_with_eos: Tensor
    prompts: list[str]
    responses: list[str]
    rollout_seconds: float = 0.0
    token_rewards: Optional[Tensor] = None
    advantages: Optional[Tensor] = None
    returns: Optional[Tensor] = None
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def response_ids(self) -> Tensor:
        return self.input_ids[:, self.prompt_length:]

    @property
    def response_lengths(self) -> Tensor:
        return self.response_mask.sum(-1)

    def select(self, rows: Tensor) -> "Experience":
        """The rows `rows` (a minibatch), columns trimmed to the longest selected response."""
        picked = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor) and value.dim() >= 1 and value.shape[0] == len(self):
                picked[f.name] = value[rows.to(value.device)]
            elif isinstance(value, list):
                picked[f.name] = [value[i] for i in rows.tolist()]
        width = int(picked["response_mask"].sum(-1).max().clamp(min=1))
        for name in ("input_ids", "attention_mask"):
            picked[name] = picked[name][:, : self.prompt_length + width]
        for name in ("response_mask", "logprobs", "ref_logprobs", "values", "token_rewards", "advantages",
                     "returns"):
            if picked.get(name) is not None:
                picked[name] = picked[name][:, :width]
        return replace(self, **picked)


def make_sampler(cfg: SamplingConfig, tokenizer) -> Sampler:
    """The shared sampler, bound to the configured settings and the tokenizer's EOS/pad ids."""
    return Sampler(max_new_tokens=cfg.max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.pad_token_id, temperature=cfg.temperature, top_k=cfg.top_k,
                   top_p=cfg.top_p, min_new_tokens=cfg.min_new_tokens)


def sample(policy, tokenizer, sampler: Sampler, prompt_ids: list[list[int]], generator: torch.Generator,
           batch_size: int) -> RolloutBatch:
    """Sample one response per prompt, in batches of `batch_size`, joined into one `RolloutBatch`."""
    device = next(policy.parameters()).device
    parts = []
    for start in range(0, len(prompt_ids), batch_size):
        with autocast(device):
            parts.append(sampler(policy, prompt_ids[start:start + batch_size], generator=generator))
    return join_rollouts(parts, tokenizer.pad_token_id)


def join_rollouts(parts: list[RolloutBatch], pad_token_id: int) -> RolloutBatch:
    """Concatenate rollout batches: prompts left-padded to the widest, responses right-padded to the longest."""
    if len(parts) == 1:
        return parts[0]
    prompt_width = max(p.prompt_length for p in parts)
    response_width = max(p.response_ids.shape[1] for p in parts)

    def pad(tensor: Tensor, left: int, right: int, value) -> Tensor:
        return torch.nn.functional.pad(tensor, (left, right), value=value)

    ids, masks, responses, response_masks, logprobs, eos = [], [], [], [], [], []
    for p in parts:
        left, right = prompt_width - p.prompt_length, response_width - p.response_ids.shape[1]
        prompt_ids, prompt_mask = p.input_ids[:, :p.prompt_length], p.attention_mask[:, :p.prompt_length]
        response_ids = pad(p.response_ids, 0, right, pad_token_id)
        response_mask = pad(p.response_mask, 0, right, 0)
        ids.append(torch.cat([pad(prompt_ids, left, 0, pad_token_id), response_ids], dim=1))
        masks.append(torch.cat([pad(prompt_mask, left, 0, 0), response_mask], dim=1))
        responses.append(response_ids)
        response_masks.append(response_mask)
        logprobs.append(pad(p.logprobs, 0, right, 0.0))
        eos.append(p.ended_with_eos)
    return RolloutBatch(input_ids=torch.cat(ids), attention_mask=torch.cat(masks), prompt_length=prompt_width,
                        response_ids=torch.cat(responses), response_mask=torch.cat(response_masks),
                        logprobs=torch.cat(logprobs), ended_with_eos=torch.cat(eos))


def make_experience(*, policy, reference, critic, scorer: RewardScorer, tokenizer, sampler: Sampler,
                    prompts: list[str], prompt_ids: list[list[int]], generator: torch.Generator,
                    shaping: RewardShapingConfig, batch_size: int) -> Experience:
    """Sample, score, shape, and run the reference (and critic) over one batch of prompts."""
    started = time.perf_counter()
    batch = sample(policy, tokenizer, sampler, prompt_ids, generator, batch_size)
    rollout_seconds = time.perf_counter() - started
    responses = [decode_response(tokenizer, ids) for ids in batch.response_token_lists()]
    assessed = scorer.assess(batch, prompts, responses, shaping)
    rewards = shape_rewards(assessed.combined, batch.ended_with_eos, shaping)
    ref_logprobs = rollout_logprobs(reference, batch.input_ids, batch.attention_mask, batch.prompt_length,
                                    sampler.temperature, batch_size)
    values = None
    if critic is not None:
        values = rollout_values(critic, batch.input_ids, batch.attention_mask, batch.prompt_length, batch_size)
    mask = batch.response_mask.float()
    return Experience(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, prompt_length=batch.prompt_length,
        response_mask=mask, logprobs=batch.logprobs * mask, ref_logprobs=ref_logprobs * mask,
        values=None if values is None else values * mask, scores=assessed.scores, rewards=rewards.float(),
        ended_with_eos=batch.ended_with_eos, prompts=list(prompts), responses=responses,
        rollout_seconds=rollout_seconds,
        extra={"estimates": assessed.estimates, "combined": assessed.combined})


# ---------------------------------------------------------------------------
# Old log-probs from the training forward


def recompute_logprobs_on(setting: bool | str, rollout_precision: str, training_precision: str) -> bool:
    """Whether the update's old log-probs come from a training forward after the rollout instead of the sampler.

    `setting`: true, false or "auto". auto recomputes when the sampler's precision differs from the training
    forward's, or when the sampler is not fp32: in bf16 its step-by-step decode and the full forward round
    differently even at the same precision. Two fp32 passes agree to float rounding (`ratio_dev` below
    1e-5), and the extra forward would buy nothing.
    """
    if setting != "auto":
        return bool(setting)
    return rollout_precision != training_precision or rollout_precision != "fp32"


def logprob_gap(sampled: Tensor, recomputed: Tensor, mask: Tensor) -> dict[str, float]:
    """How far the sampler's log-probs are from the training forward's on the same tokens.

    - logprob_gap_kl: KL(sampler || forward) per token, k3 estimate (r - 1) - log r with
      r = p_forward / p_sampler on the sampler's own tokens (never negative; 0 when they agree);
    - logprob_gap_max: max |log p_sampler - log p_forward| over response tokens.
    sampled, recomputed, mask: [B, T].
    """
    picked = mask.bool()
    return {"logprob_gap_kl": float(masked_mean(kl_penalty(sampled, recomputed, "k3"), mask)),
            "logprob_gap_max": float((sampled - recomputed).abs()[picked].max()) if picked.any() else 0.0}


def recompute_old_logprobs(policy, exp: Experience, temperature: float, batch_size: int) -> dict[str, float]:
    """Replace `exp.logprobs` by the policy's training forward over the rollout (no grad); returns the gap.

    `policy` is the model the update differentiates (under a launcher, its wrapper), run as the update
    runs it, so that the ratio pi / pi_old starts at 1 up to that forward's own rounding.
    """
    recomputed = rollout_logprobs(policy, exp.input_ids, exp.attention_mask, exp.prompt_length, temperature,
                                  batch_size) * exp.response_mask
    gap = logprob_gap(exp.logprobs, recomputed, exp.response_mask)
    exp.extra["sampler_logprobs"] = exp.logprobs
    exp.logprobs = recomputed
    return gap
