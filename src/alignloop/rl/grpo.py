"""`alignloop grpo`: critic-free policy optimisation with group baselines (GRPO, or RLOO as an option).

Each iteration samples `group_size` responses to each of `rollout_prompts`
prompts with the shared rollout code (same sampler, same reward shaping as
PPO), then replaces PPO's critic by a baseline computed inside each prompt's
group:

- GRPO (Shao et al. 2024, DeepSeekMath §4.1): A = (r - mean(group)) / std(group);
  the KL to the reference is a loss term beta * KL_k3(pi || pi_ref) on every
  token (`grpo.kl_loss_estimator`), not a reward penalty.
- RLOO (Ahmadian et al. 2024): A = r - mean of the other k-1 responses'
  rewards, with the KL penalty in the reward, beta * sum_t (log pi - log pi_ref)
  (set `grpo.kl_in_loss=false`). In the reward only k1 is allowed: the
  reward's policy gradient E[R grad log pi] is the KL's gradient for k1 alone
  (for k3 it is ~0 near the reference and can raise the KL).

Every token of a response gets the response's advantage. The loss is PPO's
clipped surrogate, averaged over tokens (one epoch makes it plain REINFORCE
with a baseline: the ratio is 1 throughout the first minibatch).

Under a launcher each process samples whole groups for its share of the
prompts, so group baselines need nothing from the others; the loss is
normalised by the global token count as in PPO (`alignloop.rl.ppo`).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from alignloop.errors import TrainingError
from alignloop.models.lora import describe
from alignloop.provenance import DONE, DigestCache
from alignloop.rl.advantages import masked_mean
from alignloop.rl.config import GRPOConfig
from alignloop.rl.inputs import open_models, plan_round_stage, resolve_stage_inputs, stage_inputs
from alignloop.rl.kl import kl_penalty
from alignloop.rl.losses import group_advantages, ppo_policy_loss
from alignloop.rl.ppo import chunks, clip_gradients, minibatch_tokens, policy_forward, sum_across
from alignloop.rl.rollout import (
    Experience,
    RewardScorer,
    make_experience,
    make_sampler,
    open_reward_scorer,
    recompute_logprobs_on,
    recompute_old_logprobs,
    reward_figures,
)
from alignloop.rl.state import LoopResult, RLState, new_state, restore_checkpoint, run_rl_stage
from alignloop.runs import RunDir, round_stage_key
from alignloop.train import distributed
from alignloop.train.device import active_precision, autocast

STAGE = "grpo"


def stage_key(round_number: int) -> str:
    return round_stage_key(STAGE, round_number)


def grpo_state(policy, reference, scorer: RewardScorer, tokenizer, cfg: GRPOConfig) -> RLState:
    """The optimizer, KL controller and sampling generator of a critic-free run."""
    return new_state(policy, reference, scorer, tokenizer, lr=cfg.grpo.lr, weight_decay=cfg.grpo.weight_decay,
                     shaping=cfg.reward, seed=cfg.run.seed)


def grpo_update(state: RLState, exp: Experience, cfg: GRPOConfig, beta: float) -> dict[str, float]:
    """`epochs` x `minibatches` steps of the clipped surrogate (+ beta * KL when `kl_in_loss`)."""
    algo = cfg.grpo
    device = exp.input_ids.device
    totals: dict[str, float] = {}
    count = 0
    order_generator = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, (1,)).item()))
    for _epoch in range(algo.epochs):
        permutation = torch.randperm(len(exp), generator=order_generator)
        for minibatch_rows in chunks(permutation, algo.minibatches):
            tokens = minibatch_tokens(exp, minibatch_rows)
            state.policy_optimizer.zero_grad(set_to_none=True)
            step: dict[str, float] = {}
            for micro_rows in chunks(minibatch_rows, algo.grad_accum):
                micro = exp.select(micro_rows)
                weight = float(micro.response_mask.sum()) / tokens
                with autocast(device):
                    logprobs, entropy = policy_forward(state.policy, micro, cfg.sampling.temperature)
                    policy_loss, pg_stats = ppo_policy_loss(logprobs, micro.logprobs, micro.advantages,
                                                            micro.response_mask, algo.clip_range)
                    kl = masked_mean(kl_penalty(logprobs, micro.ref_logprobs, algo.kl_loss_estimator),
                                     micro.response_mask)
                    loss = policy_loss + (beta * kl if algo.kl_in_loss else 0.0)
                if not torch.isfinite(loss):
                    raise TrainingError(f"{STAGE}: the loss became {float(loss)}; lower grpo.lr")
                distributed.backward(loss * weight * distributed.gradient_scale())  # averaging divides it out
                for name, value in (("policy_loss", policy_loss), ("kl_loss", kl),
                                    ("entropy", masked_mean(entropy, micro.response_mask)),
                                    ("clipfrac", pg_stats["clipfrac"]), ("approx_kl", pg_stats["approx_kl"]),
                                    ("ratio", pg_stats["ratio"])):
                    step[name] = step.get(name, 0.0) + float(value.detach()) * weight
            step = sum_across(step)
            step["policy_grad_norm"] = clip_gradients(state.policy, algo.grad_clip)
            state.policy_optimizer.step()
            for name, value in step.items():
                totals[name] = totals.get(name, 0.0) + value
            count += 1
    return {name: value / max(count, 1) for name, value in totals.items()}


def grpo_iteration(state: RLState, prompts: list[str], prompt_ids: list[list[int]], cfg: GRPOConfig
                   ) -> tuple[Experience, dict[str, float]]:
    """Sample a group per prompt, score, compute group advantages, update; returns experience and statistics."""
    group = cfg.grpo.group_size
    started = time.perf_counter()
    with state.rollout_weights():
        exp = make_experience(policy=state.sampling_policy, reference=state.reference, critic=None,
                              scorer=state.scorer, tokenizer=state.tokenizer,
                              sampler=make_sampler(cfg.sampling, state.tokenizer),
                              prompts=[p for p in prompts for _ in range(group)],
                              prompt_ids=[ids for ids in prompt_ids for _ in range(group)],
                              generator=state.generator, shaping=cfg.reward, batch_size=cfg.sampling.batch_size)
    gap = {}
    precision = active_precision(exp.input_ids.device)
    if recompute_logprobs_on(cfg.grpo.recompute_logprobs, precision, precision):  # as PPO (`alignloop.rl.ppo`)
        gap = recompute_old_logprobs(state.policy, exp, cfg.sampling.temperature, cfg.sampling.batch_size)
    experience_seconds = time.perf_counter() - started
    mask = exp.response_mask
    beta = state.kl_controller.beta
    kl_per_response = ((exp.logprobs - exp.ref_logprobs) * mask).sum(-1)
    sequence_rewards = exp.rewards
    if not cfg.grpo.kl_in_loss:
        penalty = (kl_penalty(exp.logprobs, exp.ref_logprobs, cfg.reward.kl_estimator) * mask).sum(-1)
        sequence_rewards = sequence_rewards - beta * penalty
    scale = cfg.grpo.scale_by_std if cfg.grpo.estimator == "grpo" else False
    advantages = group_advantages(sequence_rewards, group, cfg.grpo.estimator, scale=scale)
    exp.advantages = advantages.unsqueeze(-1) * mask

    update_started = time.perf_counter()
    update = grpo_update(state, exp, cfg, beta)
    update_seconds = time.perf_counter() - update_started
    mean_kl = distributed.global_mean(float(kl_per_response.mean()), len(exp))
    state.kl_controller.update(mean_kl, len(exp) * distributed.world_size())
    grouped = exp.scores.view(-1, group)
    tokens = float(mask.sum())
    stats = {
        "score": float(exp.scores.mean()),
        "reward": float(exp.rewards.mean()),
        **reward_figures(exp, state.scorer, cfg.reward),
        "reward_with_kl": float(sequence_rewards.mean()),
        "kl": mean_kl,
        "kl_coef": beta,
        **update,
        "group_score_std": float(grouped.std(-1).mean()),
        **gap,
        "response_length": float(exp.response_lengths.mean()),
        "eos_rate": float(exp.ended_with_eos.float().mean()),
        "rollout_tokens_per_s": tokens / max(exp.rollout_seconds, 1e-9),
        "update_tokens_per_s": tokens * cfg.grpo.epochs / max(update_seconds, 1e-9),
        "rollout_s": exp.rollout_seconds,
        "experience_s": experience_seconds,
        "update_s": update_seconds,
    }
    # Means over every process (their shares are equal); throughputs added up.
    return exp, distributed.mean_across(stats, summed=("rollout_tokens_per_s", "update_tokens_per_s"))


def run_grpo(run: RunDir, cfg: GRPOConfig, log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
             force: bool = False, final: Optional[Path] = None) -> LoopResult | None:
    """Run (or resume, or skip if finished) GRPO/RLOO in a round; the policy goes to rounds/NNN/grpo/final
    (or `final`: the loop's rounds/NNN/policy/final)."""
    round_number, paths, prompt_file, prompts = resolve_stage_inputs(run, cfg.models, cfg.prompts, cfg.run.round)
    stage_dir = run.round_dir(round_number) / STAGE
    final = final or stage_dir / "final"
    cache = DigestCache.for_run(run)
    inputs = stage_inputs(cfg, paths, cache, prompt_file)
    plan = plan_round_stage(run, stage_key(round_number), inputs, round_number, stage_dir, final, force, log, cache)
    if plan.action == DONE:
        log(f"{STAGE}: round {round_number} already finished ({final}); nothing to do")
        return None
    run.record_config(STAGE, cfg)

    models = open_models(paths, stage_dir, cfg.run.device, cfg.run.threads, cfg.run.seed, cfg.models.lora,
                         cfg.run.gradient_checkpointing)
    device, checkpoint, source = models.device, models.checkpoint, models.source
    tokenizer, policy, reference = models.tokenizer, models.policy, models.reference
    scorer = open_reward_scorer(paths.reward, device, tokenizer, cfg.reward, cfg.sampling.batch_size, STAGE, log)
    state = grpo_state(policy, reference, scorer, tokenizer, cfg)
    start = restore_checkpoint(state, checkpoint) if checkpoint is not None else 0
    if start:
        log(f"{STAGE}: resuming round {round_number} from iteration {start}")
    log(f"{STAGE}: round {round_number}: {cfg.grpo.estimator} with groups of {cfg.grpo.group_size}; policy {source}, "
        f"reward model {paths.reward}, {len(prompts):,} prompts; {describe(policy)}")

    return run_rl_stage(run, stage_key(round_number), inputs, device, cfg, cfg.grpo, stage=STAGE, state=state,
                        prompts=prompts, iteration_fn=lambda st, p, ids: grpo_iteration(st, p, ids, cfg),
                        stage_dir=stage_dir, final=final, start=start, log=log)
