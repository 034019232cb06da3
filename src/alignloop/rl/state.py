"""What an online RL run (PPO, GRPO/RLOO) carries from one iteration to the next, and its loop.

`RLState` holds the models, the optimizers, the KL controller and the
sampling generator; `save_checkpoint` / `restore_checkpoint` write and read all
of it (with the RNG states) so a resumed run continues exactly where the
killed one was. `train_loop` is the outer loop both methods share: pick the
iteration's prompts, call the method's iteration function, log, write sample
tables and checkpoints, then the final policy.

Under a launcher (torchrun, accelerate launch) each process rolls out its
share of every iteration's prompts (`rollout_prompts` stays the global
number) with its own sampling generator, the policy and critic are wrapped
for gradient averaging (`alignloop.train.distributed`), and the iteration
function reports statistics over all processes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from alignloop.errors import TrainingError
from alignloop.provenance import StageInputs, record_finished, record_started
from alignloop.rl.config import RewardShapingConfig, RunLoopConfig
from alignloop.rl.guard import Guard, open_guard
from alignloop.rl.kl import AdaptiveKLController, FixedKLController
from alignloop.rl.rollout import Experience, RewardScorer, encode_prompts, prompt_indices
from alignloop.train import distributed
from alignloop.train.checkpoints import load_training_state, restore_rng_state, save_final, save_training_checkpoint
from alignloop.train.crash import crash_point
from alignloop.train.device import precision_scope, route_cpu_products
from alignloop.train.metrics import MetricsLog
from alignloop.train.progress import StepTimer
from alignloop.train.schedule import learning_rate


def make_kl_controller(cfg: RewardShapingConfig) -> AdaptiveKLController | FixedKLController:
    """Adaptive (Ziegler et al. 2019) or fixed beta, from the `reward` section."""
    if cfg.adaptive_kl:
        return AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
    return FixedKLController(cfg.kl_coef)


def make_adam(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; `peak_lr` is kept in the group for warmup (and saved with it)."""
    # eps 1e-5 as in the PPO reference implementations (Huang et al. 2022, detail 3). One process: torch's
    # fused kernel (one pass over each tensor; 2% of a CPU PPO iteration here); launchers keep the default,
    # which every way of sharding supports.
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, eps=1e-5,
                                  weight_decay=weight_decay, fused=True if distributed.world_size() == 1 else None)
    for group in optimizer.param_groups:
        group["peak_lr"] = lr
    return optimizer


def fuse_activations(model: torch.nn.Module) -> torch.nn.Module:
    """Replace transformers' Python-level tanh-GELU (GPT-2's `gelu_new`) by torch's fused kernel, in place.

    Both compute 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))); the fused
    one does it in one pass instead of six elementwise ops, which was ~8% of a
    CPU PPO iteration on a GPT-2. Outputs agree to float rounding, and the
    sampler and the update run the same modules, so the PPO ratio still starts at 1.
    """
    try:
        from transformers.activations import NewGELUActivation
    except ImportError:  # pragma: no cover - a transformers without it has nothing to replace
        return model
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is NewGELUActivation:
                setattr(module, name, torch.nn.GELU(approximate="tanh"))
    return model


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """Eval mode and no gradients: the reference and the reward model never change."""
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


@dataclass
class RLState:
    """The moving parts of an online RL run. `critic` and its optimizer are None for critic-free methods.

    Under a launcher `policy` and `critic` are wrapped for gradient averaging
    (DDP...); passes without gradient use `sampling_policy` / `scoring_critic`.
    """

    policy: Any
    reference: Any
    scorer: RewardScorer
    tokenizer: Any
    policy_optimizer: torch.optim.Optimizer
    kl_controller: AdaptiveKLController | FixedKLController
    generator: torch.Generator
    critic: Optional[Any] = None
    critic_optimizer: Optional[torch.optim.Optimizer] = None

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [o for o in (self.policy_optimizer, self.critic_optimizer) if o is not None]

    @property
    def sampling_policy(self):
        """The policy for passes without gradient (sampling): outside any launcher wrapper.

        Under FSDP its weights are whole only inside `rollout_weights()`.
        """
        return distributed.unwrap(self.policy)

    def rollout_weights(self):
        """A context in which the policy's and critic's weights are whole on every process (FSDP gathers
        them; collective), so that each process samples and scores its share alone."""
        return distributed.full_params(self.policy, self.critic)

    @property
    def scoring_critic(self):
        """The critic for passes without gradient: outside any launcher wrapper."""
        return distributed.unwrap(self.critic) if self.critic is not None else None


def new_state(policy, reference, scorer: RewardScorer, tokenizer, *, lr: float, weight_decay: float,
              shaping: RewardShapingConfig, seed: int, critic=None, critic_lr: float | None = None) -> RLState:
    """Fresh optimizers, KL controller and generator around the given models; dropout off everywhere.

    Dropout stays off in every pass (eval mode), so the log-probs the sampler
    records and those the update recomputes are the same function: the ratio
    starts at exactly 1.
    """
    device = next(policy.parameters()).device
    for model in (policy, reference, scorer.reward_model, critic):
        if model is not None:
            fuse_activations(model)
            route_cpu_products(model, device)
    policy.eval()
    freeze(reference)
    freeze(scorer.reward_model)
    generator = torch.Generator(device=device)
    # Each process samples its own prompts with its own stream (rank 0's is the single-process one).
    generator.manual_seed(seed + 1_000_003 * distributed.rank())
    policy_optimizer = make_adam(policy, lr, weight_decay)
    critic_optimizer = None
    if critic is not None:
        critic.eval()
        critic_optimizer = make_adam(critic, critic_lr or lr, weight_decay)
        critic, critic_optimizer = distributed.prepare(critic, critic_optimizer)
    policy, policy_optimizer = distributed.prepare(policy, policy_optimizer)
    return RLState(policy=policy, reference=reference, scorer=scorer, tokenizer=tokenizer,
                   policy_optimizer=policy_optimizer, kl_controller=make_kl_controller(shaping),
                   generator=generator, critic=critic, critic_optimizer=critic_optimizer)


def save_checkpoint(state: RLState, stage_dir: Path, step: int, keep_last: int) -> Path:
    """A resumable checkpoint: policy (+ critic), optimizers, KL controller, generator and RNG states."""
    extra = {"kl_controller": state.kl_controller.state_dict(), "generator": state.generator.get_state()}
    if distributed.world_size() > 1:  # every rank's sampling stream, so that resuming continues each one
        extra["rank_generators"] = distributed.gather_objects(state.generator.get_state())
    if state.critic_optimizer is not None:
        extra["critic_optimizer"] = distributed.optimizer_state(state.critic_optimizer)
    return save_training_checkpoint(stage_dir, step, state.policy, state.tokenizer, state.policy_optimizer,
                                    keep_last=keep_last, extra_state=extra,
                                    extra_models={"critic": state.critic} if state.critic is not None else None)


def restore_checkpoint(state: RLState, checkpoint: Path) -> int:
    """Load what `save_checkpoint` wrote into `state` (whose policy and critic came from `checkpoint`); the step."""
    saved = load_training_state(checkpoint)
    distributed.load_optimizer_state(state.policy_optimizer, saved["optimizer"])
    if state.critic_optimizer is not None:
        distributed.load_optimizer_state(state.critic_optimizer, saved["critic_optimizer"])
    state.kl_controller.load_state_dict(saved["kl_controller"])
    state.generator.set_state(saved["generator"])
    streams = saved.get("rank_generators")
    if distributed.world_size() > 1:
        if streams is not None and len(streams) == distributed.world_size():
            state.generator.set_state(streams[distributed.rank()])
        else:  # saved by another number of processes: fresh, distinct streams from rank 0's
            state.generator.manual_seed(int(saved["step"]) * 7_919 + distributed.rank())
    restore_rng_state(saved["rng"])
    return int(saved["step"])


def set_learning_rates(state: RLState, iteration: int, iterations: int, warmup: int, min_ratio: float) -> None:
    """Linear warmup over `warmup` iterations, then each optimizer's peak rate along a cosine down to
    `min_ratio` of it at the last iteration (constant when `min_ratio` is 1)."""
    scale = learning_rate(iteration, iterations - 1, 1.0, warmup, min_ratio)
    for optimizer in state.optimizers():
        for group in optimizer.param_groups:
            group["lr"] = group["peak_lr"] * scale


def sample_rows(exp: Experience, rows: int) -> list[dict[str, Any]]:
    """The first `rows` samples of an iteration: prompt, response, raw score, KL (k1, summed)."""
    kl = ((exp.logprobs - exp.ref_logprobs) * exp.response_mask).sum(-1)
    return [{"prompt": exp.prompts[i], "response": exp.responses[i], "score": round(float(exp.scores[i]), 4),
             "kl": round(float(kl[i]), 4), "eos": bool(exp.ended_with_eos[i])} for i in range(min(rows, len(exp)))]


@dataclass
class LoopResult:
    final_dir: Path
    iterations: int
    last: dict[str, float]
    wall_s: float
    guard: dict[str, Any] = field(default_factory=dict)  # the stop and the iteration kept, when the guard stopped


IterationFn = Callable[[RLState, list[str], list[list[int]]], tuple[Experience, dict[str, float]]]


def train_loop(*, stage: str, state: RLState, prompts: list[str], iteration_fn: IterationFn, iterations: int,
               rollout_prompts: int, warmup: int, min_lr_ratio: float, max_prompt_tokens: int,
               loop: RunLoopConfig, stage_dir: Path, final: Path, start: int, log: Callable[[str], None],
               guard: Optional[Guard] = None) -> LoopResult:
    """Iterations `start`..`iterations`: rollout + update, log, sample tables, guard checks, checkpoints; then
    `final` (after a stop by the guard, its best policy).

    The prompts of an iteration are a pure function of its number
    (`prompt_indices`), so a resumed run sees the same prompts the
    uninterrupted one would have.
    """
    prompt_ids = encode_prompts(state.tokenizer, prompts, max_prompt_tokens)
    distributed.local_slice(rollout_prompts, f"{stage}.rollout_prompts")  # a clear error now if it cannot split
    metrics = MetricsLog(stage_dir / "metrics.jsonl", resume_step=start if start else None)
    samples = MetricsLog(stage_dir / "samples.jsonl", resume_step=start if start else None, tensorboard=False)
    started = time.monotonic()
    timer = StepTimer(iterations, start)
    stats: dict[str, float] = {}
    done = start
    if guard is not None and guard.stopped:
        log(f"{stage}: the over-optimisation guard stopped this run at iteration {start}; finishing it")
    try:
        for iteration in range(start if guard is None or not guard.stopped else iterations, iterations):
            set_learning_rates(state, iteration, iterations, warmup, min_lr_ratio)
            rows = prompt_indices(iteration, rollout_prompts, len(prompts), loop.seed)
            rows = distributed.shard_list(rows, f"{stage}.rollout_prompts")  # this process's share of the iteration
            exp, stats = iteration_fn(state, [prompts[i] for i in rows], [prompt_ids[i] for i in rows])
            done = iteration + 1
            if not all(math.isfinite(stats[k]) for k in ("policy_loss",) if k in stats):
                raise TrainingError(f"{stage}: the loss became non-finite at iteration {done}; lower the learning "
                                    f"rate (the last checkpoint in {stage_dir / 'checkpoints'} is intact)")

            if done % loop.log_every == 0 or done == iterations:
                metrics.log(done, **stats)
                log(f"{stage} it {done}/{iterations}  score {stats['score']:+.3f}  kl {stats['kl']:.2f}  "
                    f"beta {stats['kl_coef']:.3f}  entropy {stats['entropy']:.2f}  clipfrac {stats['clipfrac']:.3f}  "
                    f"len {stats['response_length']:.1f}  {stats['rollout_tokens_per_s']:,.0f} rollout tok/s  "
                    f"{timer.eta(done)}")
            if loop.sample_table_every and (done % loop.sample_table_every == 0 or done == iterations):
                for row in sample_rows(exp, loop.sample_table_rows):
                    samples.log(done, **row)
                    log(f"  sample [{row['score']:+.2f}] {row['prompt']} | {row['response']}")

            # Before the checkpoint: a run killed in between resumes before the check and makes it again.
            guard_stop = False
            if guard is not None and guard.due(done):
                guard_stop = guard.check(state, done)["stopped"]
                crash_point(f"{stage}:guard:{done}")
            out_of_time = loop.max_minutes is not None and (time.monotonic() - started) / 60 >= loop.max_minutes
            if loop.max_minutes is not None:
                out_of_time = distributed.broadcast_object(out_of_time)  # every rank stops at the same iteration
            if done % loop.save_every == 0 or done == iterations or out_of_time or guard_stop:
                save_checkpoint(state, stage_dir, done, loop.keep_last)
                if guard is not None:
                    guard.checkpointed(done)
                crash_point(f"{stage}:saved:{done}")
            if out_of_time:
                log(f"{stage}: stopping at iteration {done} after {loop.max_minutes} minutes (run.max_minutes)")
                break
            if guard_stop:
                break
    finally:
        metrics.close()
        samples.close()
    kept = guard.keep_best(final) if guard is not None else None
    if kept is None:
        save_final(final, state.policy, state.tokenizer)
    else:
        log(f"{stage}: the final policy is the guard's best check's, iteration {kept} ({guard.best_dir})")
    return LoopResult(final_dir=final, iterations=done, last=stats, wall_s=time.monotonic() - started,
                      guard=guard.summary() if guard is not None else {})


def run_rl_stage(run, key: str, inputs: StageInputs, device: torch.device, cfg, algorithm,
                 **loop_args: Any) -> LoopResult:
    """`train_loop` as a stage of the run: marked running, trained at `cfg.run.precision`, marked done with
    its score and KL. `algorithm` is the config section (`cfg.ppo`, `cfg.grpo`) that sets the iterations."""
    guard = open_guard(run, cfg, loop_args["stage"], loop_args["stage_dir"], loop_args["start"], device,
                       loop_args["log"])
    record_started(run, key, inputs)
    with precision_scope(device, cfg.run.precision, "run.precision"):
        result = train_loop(iterations=algorithm.iterations, rollout_prompts=algorithm.rollout_prompts,
                            warmup=algorithm.warmup_iterations, min_lr_ratio=algorithm.min_lr_ratio,
                            max_prompt_tokens=cfg.prompts.max_tokens,
                            loop=cfg.run, guard=guard, **loop_args)
    record_finished(run, key, inputs, result.final_dir, final=str(result.final_dir), score=result.last.get("score"),
                    kl=result.last.get("kl"), iterations=result.iterations, **result.guard)
    loop_args["log"](f"{loop_args['stage']}: done in {result.wall_s:.0f}s; policy in {result.final_dir}")
    return result
