"""`alignloop ppo`: RLHF with PPO and a KL leash, read top to bottom.

Each iteration (Ziegler et al. 2019; Ouyang et al. 2022; the implementation
details follow Huang et al. 2022, "The N implementation details of RLHF with
PPO", and CleanRL's ppo.py):

1. Rollout: sample one response per prompt with the shared sampler; it
   records each token's log-prob under the policy that sampled it
   (`old_logprobs`), or, with `ppo.recompute_logprobs` (auto: under bf16), a
   forward of the policy as the update runs it replaces them. Score each
   response with the frozen reward model; normalise, clip, and penalise a
   response cut off without EOS.
2. Reference and critic: the frozen reference's log-probs of the same tokens
   and the critic's value of every prefix.
3. Rewards per token: r_t = -beta * KL_t on every response token, plus the
   shaped score on the last one (`alignloop.rl.kl.token_rewards`). beta is
   fixed or adapted towards a KL target.
4. Advantages: GAE(gamma, lambda) over response tokens, then whitened.
5. Update: `epochs` passes over the rollouts in `minibatches` minibatches
   (each accumulated over `grad_accum` micro-batches): the clipped surrogate
   for the policy, the clipped value loss for the critic, gradient-norm
   clipping, and an early stop when the approximate KL to the rollout policy
   passes `target_kl`.
6. Log, sample table, checkpoint.

Dropout stays off (models in eval mode) in every pass, so that on the first
minibatch the ratio pi/pi_old is exactly 1 (logged as `ratio_dev`).

Under a launcher (torchrun, accelerate launch) each process rolls out its
share of the prompts; advantages are whitened with the whole batch's
statistics, the KL controller sees the global mean KL, and each minibatch
loss is the mean over all processes' response tokens
(`alignloop.train.distributed`). Each process draws its minibatches from its
own rollouts, so with `ppo.minibatches` > 1 the global minibatches are
grouped differently from a single process's (with one minibatch they are the same).
"""

from __future__ import annotations

import math
import sys
import time
from typing import Callable, Optional

import torch

from alignloop.errors import TrainingError
from alignloop.generation.fused_logprobs import token_logprobs_and_entropy
from alignloop.generation.logprobs import logprobs_from_logits, response_logits
from alignloop.models.lora import describe, with_lora
from alignloop.models.memory import enable_gradient_checkpointing
from alignloop.provenance import DONE, DigestCache
from alignloop.rl.advantages import gae, masked_mean, masked_whiten, masked_whiten_across
from alignloop.rl.config import PPOConfig
from alignloop.rl.critic import Critic, critic_from_policy, critic_from_reward_model, load_critic
from alignloop.rl.inputs import open_models, plan_round_stage, resolve_stage_inputs, stage_inputs
from alignloop.rl.kl import kl_penalty, token_rewards
from alignloop.rl.losses import (
    entropy_from_logits,
    explained_variance,
    last_token_value_error,
    ppo_policy_loss,
    ppo_value_loss,
)
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
from alignloop.train.ptx import PretrainMix, mix_backward, open_pretrain_mix

STAGE = "ppo"


def stage_key(round_number: int) -> str:
    """The manifest entry of PPO in a round."""
    return round_stage_key(STAGE, round_number)


def ppo_state(policy, reference, critic: Critic, scorer: RewardScorer, tokenizer, cfg: PPOConfig) -> RLState:
    """Optimizers for the policy and the critic, the KL controller and the sampling generator."""
    return new_state(policy, reference, scorer, tokenizer, lr=cfg.ppo.lr, weight_decay=cfg.ppo.weight_decay,
                     shaping=cfg.reward, seed=cfg.run.seed, critic=critic, critic_lr=cfg.ppo.critic_lr)


# ---------------------------------------------------------------------------
# The update


def policy_forward(policy, batch: Experience, temperature: float, with_entropy: bool = True,
                   entropy_grad: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Log-probs [B, T] of the batch's response tokens under the current policy (with grad), and entropy."""
    logits = response_logits(policy, batch.input_ids, batch.attention_mask, batch.prompt_length, temperature)
    if with_entropy and not (entropy_grad and torch.is_grad_enabled()) and logits.dtype == torch.float32:
        # Logged only: both from one pass over the logits, the entropy without a graph.
        logprobs, entropy = token_logprobs_and_entropy(logits, batch.response_ids, overwrite=True)
        return logprobs * batch.response_mask, entropy
    logprobs = logprobs_from_logits(logits, batch.response_ids) * batch.response_mask
    entropy = None
    if with_entropy:
        # Logged only (unless there is an entropy bonus): no graph, which saves two [B, T, V] tensors.
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            entropy = entropy_from_logits(logits)
    return logprobs, entropy


def shape_token_rewards(exp: Experience, cfg: PPOConfig, beta: float) -> torch.Tensor:
    """Per-token KL estimate [B, T]; fills `exp.token_rewards` (KL penalty + score on the last token)."""
    kl = kl_penalty(exp.logprobs, exp.ref_logprobs, cfg.reward.kl_estimator) * exp.response_mask
    exp.token_rewards = token_rewards(exp.rewards, kl, exp.response_mask, beta)
    return kl


def compute_advantages(exp: Experience, cfg: PPOConfig) -> None:
    """GAE over response tokens, then (optionally) whitening; fills `exp.advantages` and `exp.returns`."""
    advantages, returns = gae(exp.token_rewards, exp.values, exp.response_mask, cfg.ppo.gamma, cfg.ppo.lam)
    if cfg.ppo.whiten_advantages and distributed.world_size() > 1:
        advantages = masked_whiten_across(advantages, exp.response_mask, distributed.all_reduce_sum)
    elif cfg.ppo.whiten_advantages:
        advantages = masked_whiten(advantages, exp.response_mask)
    exp.advantages, exp.returns = advantages, returns


def chunks(rows: torch.Tensor, parts: int) -> list[torch.Tensor]:
    """`rows` split into `parts` nearly equal pieces (fewer when there are fewer rows)."""
    size = math.ceil(len(rows) / parts)
    return [rows[i:i + size] for i in range(0, len(rows), size)]


def clip_gradients(model, max_norm: float) -> float:
    """Clip the global gradient norm (0: no clipping); returns the norm before clipping."""
    return distributed.clip_grad_norm(model, max_norm)


def minibatch_tokens(exp: Experience, rows: torch.Tensor) -> float:
    """Response tokens of a global minibatch: this process's `rows` and every other process's share (at least 1).

    Micro-batch losses are weighted by their tokens over this count, so the
    minibatch loss is its token mean however it is split, over micro-batches
    and over processes.
    """
    local = float(exp.response_mask[rows.to(exp.input_ids.device)].sum())
    return max(distributed.all_reduce_sum([local])[0], 1.0)


def sum_across(step: dict[str, float]) -> dict[str, float]:
    """A minibatch step's token-weighted statistics added up over processes (the same on every one)."""
    return dict(zip(step, distributed.all_reduce_sum(list(step.values()))))


def ppo_update(state: RLState, exp: Experience, cfg: PPOConfig, first_values: Optional[torch.Tensor] = None,
               mix: Optional[PretrainMix] = None) -> dict[str, float]:
    """`epochs` x `minibatches` PPO steps on one iteration's experience; returns mean statistics.

    `first_values`: the critic's values of the whole batch, with their graph, already computed by
    `ppo_iteration` (one minibatch, no accumulation): the first step reuses them instead of a new pass.
    `mix`: pretraining text whose next-token loss (times `ptx.coef`) joins every policy step (PPO-ptx).
    """
    algo = cfg.ppo
    device = exp.input_ids.device
    totals: dict[str, float] = {}
    count = 0
    ratio_dev = float("nan")
    epochs_run = 0
    stop = False
    order_generator = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, (1,)).item()))
    for epoch in range(algo.epochs):
        epochs_run = epoch + 1
        permutation = torch.randperm(len(exp), generator=order_generator)
        for minibatch_rows in chunks(permutation, algo.minibatches):
            tokens = minibatch_tokens(exp, minibatch_rows)
            state.policy_optimizer.zero_grad(set_to_none=True)
            state.critic_optimizer.zero_grad(set_to_none=True)
            step: dict[str, float] = {}
            for micro_rows in chunks(minibatch_rows, algo.grad_accum):
                micro = exp.select(micro_rows)
                # Token-weighted: the minibatch loss is the mean over its tokens, however it is split.
                weight = float(micro.response_mask.sum()) / tokens
                with autocast(device):
                    logprobs, entropy = policy_forward(state.policy, micro, cfg.sampling.temperature,
                                                       entropy_grad=algo.entropy_coef > 0)
                    policy_loss, pg_stats = ppo_policy_loss(logprobs, micro.logprobs, micro.advantages,
                                                            micro.response_mask, algo.clip_range)
                    entropy_mean = masked_mean(entropy, micro.response_mask)
                    loss = policy_loss - algo.entropy_coef * entropy_mean
                if not torch.isfinite(loss):
                    raise TrainingError(f"ppo: policy loss became {float(loss)}; lower ppo.lr")
                # Gradient averaging over processes divides by their number: scale it back.
                distributed.backward(loss * weight * distributed.gradient_scale())
                with autocast(device):
                    if first_values is not None and epoch == 0 and count == 0:
                        values = first_values[micro_rows.to(device)][:, :micro.response_mask.shape[1]]
                    else:
                        values = state.critic(micro.input_ids, micro.attention_mask, micro.prompt_length)
                    value_loss, vf_stats = ppo_value_loss(values, micro.values, micro.returns, micro.response_mask,
                                                          algo.value_clip if algo.value_clip is not None else 1e9)
                distributed.backward(value_loss * weight * distributed.gradient_scale())
                if epoch == 0 and count == 0:
                    deviation = ((logprobs.detach() - micro.logprobs).exp() - 1).abs() * micro.response_mask
                    ratio_dev = max(0.0 if math.isnan(ratio_dev) else ratio_dev, float(deviation.max()))
                for name, value in (("policy_loss", policy_loss), ("value_loss", value_loss),
                                    ("entropy", entropy_mean), ("clipfrac", pg_stats["clipfrac"]),
                                    ("approx_kl", pg_stats["approx_kl"]), ("ratio", pg_stats["ratio"]),
                                    ("value_clipfrac", vf_stats["vf_clipfrac"])):
                    step[name] = step.get(name, 0.0) + float(value.detach()) * weight
            step = sum_across(step)  # the same on every process, so all of them stop early together
            if mix is not None:
                step["ptx_loss"] = mix_backward(state.policy, mix, cfg.ptx.coef, device, STAGE)
            step["policy_grad_norm"] = clip_gradients(state.policy, algo.grad_clip)
            step["value_grad_norm"] = clip_gradients(state.critic, algo.grad_clip)
            state.policy_optimizer.step()
            state.critic_optimizer.step()
            for name, value in step.items():
                totals[name] = totals.get(name, 0.0) + value
            count += 1
            if algo.target_kl is not None and step["approx_kl"] > algo.target_kl:
                stop = True  # the policy moved far from the one that sampled: stale data from here on
                break
        if stop:
            break
    out = {name: value / max(count, 1) for name, value in totals.items()}
    ratio_dev = distributed.all_reduce_max(ratio_dev) if distributed.world_size() > 1 else ratio_dev
    out.update(ratio_dev=ratio_dev, epochs_run=epochs_run, minibatch_steps=count)
    return out


# ---------------------------------------------------------------------------
# One iteration


def ppo_iteration(state: RLState, prompts: list[str], prompt_ids: list[list[int]], cfg: PPOConfig,
                  mix: Optional[PretrainMix] = None) -> tuple[Experience, dict[str, float]]:
    """Rollout, rewards, advantages and update on one batch of prompts; returns the experience and statistics."""
    sampler = make_sampler(cfg.sampling, state.tokenizer)
    # With one minibatch and no accumulation, the update's first critic pass would see exactly the
    # rollout's inputs and weights: it runs once, here, with grad; its detached values are the old
    # values of GAE, and the update reuses its graph (one critic forward fewer per iteration).
    fuse_critic = cfg.ppo.minibatches == 1 and cfg.ppo.grad_accum == 1
    started = time.perf_counter()
    with state.rollout_weights():
        exp = make_experience(policy=state.sampling_policy, reference=state.reference,
                              critic=None if fuse_critic else state.scoring_critic, scorer=state.scorer,
                              tokenizer=state.tokenizer, sampler=sampler, prompts=prompts, prompt_ids=prompt_ids,
                              generator=state.generator, shaping=cfg.reward, batch_size=cfg.sampling.batch_size)
    gap = {}
    precision = active_precision(exp.input_ids.device)  # the sampler's and the update's: one run.precision
    if recompute_logprobs_on(cfg.ppo.recompute_logprobs, precision, precision):
        gap = recompute_old_logprobs(state.policy, exp, cfg.sampling.temperature, cfg.sampling.batch_size)
    first_values = None
    if fuse_critic:
        with autocast(exp.input_ids.device):
            first_values = state.critic(exp.input_ids, exp.attention_mask, exp.prompt_length)
        exp.values = first_values.detach() * exp.response_mask
    experience_seconds = time.perf_counter() - started

    beta = state.kl_controller.beta
    kl = shape_token_rewards(exp, cfg, beta)
    compute_advantages(exp, cfg)
    mask = exp.response_mask
    # Whatever the estimator in the penalty, the KL reported and controlled is k1 summed over the
    # response: an unbiased estimate of KL(policy || reference) per response, in nats.
    kl_per_response = ((exp.logprobs - exp.ref_logprobs) * mask).sum(-1)
    mean_kl = distributed.global_mean(float(kl_per_response.mean()), len(exp))

    update_started = time.perf_counter()
    update = ppo_update(state, exp, cfg, first_values, mix)
    update_seconds = time.perf_counter() - update_started
    state.kl_controller.update(mean_kl, len(exp) * distributed.world_size())

    response_tokens = float(mask.sum())
    stats = {
        "score": float(exp.scores.mean()),
        "reward": float(exp.rewards.mean()),
        **reward_figures(exp, state.scorer, cfg.reward),
        "reward_with_kl": float(exp.token_rewards.sum(-1).mean()),
        "kl": mean_kl,
        "kl_penalty": float((kl * mask).sum(-1).mean()),
        "kl_coef": beta,
        **update,
        "explained_variance": float(explained_variance(exp.values, exp.returns, mask)),
        "value_mean": float(masked_mean(exp.values, mask)),
        "value_error_last_token": float(last_token_value_error(exp.values, exp.returns, mask)),
        **gap,
        "advantage_mean": float(masked_mean(exp.advantages, mask)),
        "response_length": float(exp.response_lengths.mean()),
        "eos_rate": float(exp.ended_with_eos.float().mean()),
        "rollout_tokens_per_s": response_tokens / max(exp.rollout_seconds, 1e-9),
        "update_tokens_per_s": response_tokens * update["epochs_run"] / max(update_seconds, 1e-9),
        "rollout_s": exp.rollout_seconds,
        "experience_s": experience_seconds,
        "update_s": update_seconds,
    }
    # Means over every process (their shares are equal); throughputs added up.
    return exp, distributed.mean_across(stats, summed=("rollout_tokens_per_s", "update_tokens_per_s"))


def _build_critic(cfg: PPOConfig, paths, scorer: RewardScorer, log) -> Critic:
    kind = cfg.models.critic
    if kind == "reward" and scorer.by_ids:
        # On the scale of the rewards it will predict: normalised when they are.
        return critic_from_reward_model(paths.reward, scorer.reward_model.stats if cfg.reward.normalise else None)
    if kind == "reward":
        log(f"{STAGE}: the reward model reads another tokenizer or is an encoder; the critic starts from the policy")
    return critic_from_policy(paths.policy)


def run_ppo(run: RunDir, cfg: PPOConfig, log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
            force: bool = False) -> LoopResult | None:
    """Run (or resume, or skip if finished) PPO in a round; the policy goes to rounds/NNN/policy/final."""
    round_number, paths, prompt_file, prompts = resolve_stage_inputs(run, cfg.models, cfg.prompts, cfg.run.round)
    round_dir = run.round_dir(round_number)
    stage_dir, final = round_dir / STAGE, round_dir / "policy" / "final"
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
    if cfg.models.lora.enabled:  # adapters on the critic too; its checkpoint holds them and the value head
        base = _build_critic(cfg, paths, scorer, log)
        critic_checkpoint = checkpoint / "critic" if checkpoint else None
        critic = Critic(with_lora(base.model, cfg.models.lora, "seq_cls", critic_checkpoint, cfg.run.seed))
    elif checkpoint is not None:
        critic = load_critic(checkpoint / "critic")
    else:
        critic = _build_critic(cfg, paths, scorer, log)
    critic.to(device)
    if cfg.run.gradient_checkpointing:
        enable_gradient_checkpointing(critic.model)
    state = ppo_state(policy, reference, critic, scorer, tokenizer, cfg)
    mix = open_pretrain_mix(run, cfg.ptx, tokenizer, log)
    start = restore_checkpoint(state, checkpoint) if checkpoint is not None else 0
    if start:
        log(f"{STAGE}: resuming round {round_number} from iteration {start}")
    log(f"{STAGE}: round {round_number}: policy {source}, reference {paths.reference}, reward model {paths.reward} "
        f"(scored by {'token ids' if scorer.by_ids else 'text'}), {len(prompts):,} prompts; policy: {describe(policy)}")

    return run_rl_stage(run, stage_key(round_number), inputs, device, cfg, cfg.ppo, stage=STAGE, state=state,
                        prompts=prompts, iteration_fn=lambda st, p, ids: ppo_iteration(st, p, ids, cfg, mix),
                        stage_dir=stage_dir, final=final, start=start, log=log)
