"""Configuration of stage 4: `alignloop ppo`, `grpo`, `dpo` and `bon`, field by field.

The sections are shared: every method names its models the same way
(`models.*`), reads prompts the same way (`prompts.*`), samples the same way
(`sampling.*`) and shapes the reward-model score the same way (`reward.*`).
Each method then has its own section of algorithm settings (`ppo.*`,
`grpo.*`, `dpo.*`, `bon.*`) and the loop settings of `run.*`.
"""

from __future__ import annotations

from os import PathLike
from typing import Annotated, Literal, Optional

from pydantic import Field, field_validator, model_validator

from alignloop.config.base import LearningRate, PrecisionSetting, Section
from alignloop.models.lora import LoraSettings
from alignloop.train.config import PretrainMixConfig


def min_lr_ratio_field():
    """The RL algorithms' learning-rate decay setting (one definition for PPO and GRPO/RLOO)."""
    return Field(1.0, ge=0, le=1, description="After warmup, decay the learning rate along a cosine to this "
                                              "fraction of it at the last iteration (1: constant). A smaller "
                                              "last step lets the KL settle where the controller holds it.")


class RLModelsConfig(Section):
    """Which checkpoints play which part. Unset paths come from the run directory."""

    policy: Optional[str] = Field(
        None, description="Checkpoint the policy starts from. Unset: the run's sft/final, else pretrain/final.")
    reference: Optional[str] = Field(
        None, description="Frozen reference for the KL penalty. Unset: the same checkpoint the policy starts "
                          "from (later rounds of the loop pass the SFT model here while the policy moves on).")
    reward: Optional[str] = Field(
        None, description="Reward-model checkpoint (frozen). Unset: the round's rounds/NNN/reward/final.")
    critic: Literal["reward", "policy"] = Field(
        "reward", description="PPO only: the critic starts from the reward model (backbone and head) or from the "
                              "policy (backbone, new zero head). Falls back to the policy when the reward model "
                              "has another tokenizer or is not a decoder.")
    lora: LoraSettings = Field(
        default_factory=LoraSettings, description="Train LoRA adapters on the policy (and PPO's critic) instead of "
                                                  "every weight; the reference is then the policy with its adapter "
                                                  "off when it is the policy's start checkpoint. Ignored by bon.")


class PromptFile(Section):
    """A prompt file; `prompts=FILE` is short for `prompts.path=FILE` (the same in every stage)."""

    path: Optional[str] = Field(
        None, description="JSONL (see `field`) or a text file with one prompt per line. Unset: the built-in "
                          "story openings of the run (data/stories.prompts.jsonl).")
    field: str = Field("prompt", description="Field holding the prompt in JSONL records.")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data):
        return prompt_file_shorthand(data)


def prompt_file_shorthand(value):
    """Raw `prompts` data as a section: a bare path (`prompts=FILE`) is its `path`, null its defaults."""
    if value is None:
        return {}
    if isinstance(value, (str, PathLike)):
        return {"path": str(value)}
    return value


class PromptsConfig(PromptFile):
    """The prompts the policy writes responses to."""

    limit: Optional[int] = Field(None, ge=1, description="Use at most this many prompts (the first ones).")
    max_tokens: int = Field(64, ge=1, description="Longer prompts keep their last this-many tokens (BOS first).")


class SamplingConfig(Section):
    """How responses are sampled (the same sampler for rollouts, best-of-n and evaluation)."""

    max_new_tokens: int = Field(48, ge=1, description="Longest response in tokens; longer ones are cut.")
    min_new_tokens: int = Field(0, ge=0, description="EOS cannot be sampled before this many tokens.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature; log-probs use the same one.")
    top_k: int = Field(0, ge=0, description="Sample among the k most likely tokens (0: all).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling threshold (1: off).")
    batch_size: int = Field(64, ge=1, description="Prompts sampled together in one batch.")

    @model_validator(mode="after")
    def _lengths(self):
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(f"min_new_tokens ({self.min_new_tokens}) exceeds max_new_tokens ({self.max_new_tokens})")
        return self


class RewardEstimatesConfig(Section):
    """Which estimates of the reward a response gets, and how they become one (the ensemble's uncertainty)."""

    members: Optional[bool] = Field(
        None, description="Score with the other members of the reward model's ensemble too (reward/ensemble/"
                          "member-*/final next to its final/, from ensemble.models>=2) besides its own heads. "
                          "Unset: yes when they exist.")
    uncertainty: Literal["mean", "mean_minus_std", "min"] = Field(
        "mean", description="How the estimates (every head of every member, each normalised by its own "
                            "reward_stats.json) become the reward: their mean; mean - uncertainty_coef * std "
                            "(uncertainty-weighted); or min (worst case), the conservative rewards of Coste et "
                            "al. 2023. The last two need ensemble.heads>=2 or ensemble.models>=2.")
    uncertainty_coef: float = Field(1.0, ge=0, description="k in mean - k * std (reward.uncertainty=mean_minus_std).")


class RewardShapingConfig(RewardEstimatesConfig):
    """From a reward-model score to the reward the policy maximises."""

    normalise: bool = Field(
        True, description="Use (score - mean) / std with the reward model's reward_stats.json (each head and "
                          "ensemble member with its own), so a KL coefficient means the same for every reward model.")
    clip: Optional[float] = Field(
        5.0, gt=0, description="Clip the (normalised) score to [-clip, clip] before the KL penalty is added.")
    missing_eos_penalty: float = Field(
        1.0, ge=0, description="Subtracted from the score of a response cut at max_new_tokens without EOS.")
    kl_estimator: Literal["k1", "k2", "k3"] = Field(
        "k1", description="Per-token KL estimate in the reward penalty: k1 = log pi - log pi_ref, the only one "
                          "whose policy gradient as a reward is the KL's (k2 and k3 are refused here; they "
                          "belong in a loss term: grpo.kl_in_loss).")
    kl_coef: float = Field(0.05, ge=0, description="Initial (or fixed) KL coefficient beta.")

    @field_validator("kl_estimator")
    @classmethod
    def _penalty_in_the_reward_is_k1(cls, kind: str) -> str:
        # The reward is held fixed when its policy gradient is taken (score function), and only
        # E_pi[k1 * grad log pi] is grad KL; k2 and k3 give ~0 near the reference and can raise the KL.
        if kind != "k1":
            raise ValueError(f"a KL penalty in the reward must be k1: the policy gradient of a {kind} reward "
                             f"penalty is not the KL's gradient (it can raise the KL); {kind} belongs in a loss "
                             f"term (grpo.kl_in_loss=true, grpo.kl_loss_estimator)")
        return kind
    adaptive_kl: bool = Field(
        True, description="Adapt beta towards kl_target (Ziegler et al. 2019); false keeps beta = kl_coef.")
    kl_target: float = Field(4.0, gt=0, description="Adaptive controller: wanted KL per response, in nats.")
    kl_horizon: int = Field(10000, ge=1, description="Adaptive controller: horizon in responses (larger = slower).")


RecomputeLogprobs = Annotated[Literal["auto", True, False], Field(
    description="Old log-probs of the ratio from a forward of the policy as the update runs it, after the "
                "rollout, instead of the sampler's (OpenRLHF's choice). auto: on when the sampler is not exact "
                "fp32 (bf16, on CUDA), where its step-by-step decode rounds differently from the training "
                "forward; logs logprob_gap_kl.")]


class PPOAlgorithmConfig(Section):
    """The PPO update (Schulman et al. 2017), with the details of Huang et al. 2022 ('37 implementation details')."""

    iterations: int = Field(100, ge=1, description="Rollout + update iterations to run in all.")
    rollout_prompts: int = Field(64, ge=1, description="Prompts (one response each) per iteration.")
    epochs: int = Field(4, ge=1, description="Passes over each iteration's rollouts.")
    minibatches: int = Field(4, ge=1, description="Optimizer steps per epoch (the rollouts are split this many ways).")
    grad_accum: int = Field(1, ge=1, description="Micro-batches accumulated within one minibatch.")
    lr: LearningRate = Field(3e-5, description="Policy learning rate (AdamW; after warmup, see min_lr_ratio).")
    critic_lr: LearningRate = Field(1e-4, description="Critic learning rate.")
    warmup_iterations: int = Field(0, ge=0, description="Linear learning-rate warmup, in iterations.")
    min_lr_ratio: float = min_lr_ratio_field()
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    grad_clip: float = Field(1.0, ge=0, description="Clip each model's gradient norm to this (0 disables).")
    gamma: float = Field(1.0, ge=0, le=1, description="GAE discount.")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda.")
    clip_range: float = Field(0.2, gt=0, description="PPO ratio clip epsilon.")
    value_clip: Optional[float] = Field(0.2, gt=0, description="Clip new values to old values +- this (unset: off).")
    whiten_advantages: bool = Field(True, description="Normalise advantages to mean 0, std 1 over response tokens.")
    entropy_coef: float = Field(0.0, ge=0, description="Entropy bonus in the policy loss.")
    target_kl: Optional[float] = Field(
        None, gt=0, description="Stop an iteration's epochs early when a minibatch's approximate KL to the "
                                "rollout policy exceeds this (unset: never).")
    recompute_logprobs: RecomputeLogprobs = "auto"


class RunLoopConfig(Section):
    """Bookkeeping of a training run: round, seed, device, checkpoints, logging."""

    round: Optional[int] = Field(
        None, ge=1, description="Round whose folder (rounds/NNN) gets the outputs. Unset: the newest round with a "
                                "reward model, else 1.")
    seed: int = Field(0, description="Seed of the prompt order, the sampling and the new heads.")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")
    threads: Optional[int] = Field(None, ge=1, description="CPU threads for torch (default: torch's choice).")
    precision: PrecisionSetting = "auto"
    gradient_checkpointing: bool = Field(
        False, description="Recompute the policy's (and critic's) activations in the backward pass instead of "
                           "keeping them (less memory, more compute). Ignored by bon, which does not train.")
    save_every: int = Field(20, ge=1, description="Write a resumable checkpoint every N iterations (and at the end).")
    keep_last: int = Field(2, ge=1, description="Resumable checkpoints to keep.")
    log_every: int = Field(1, ge=1, description="Log metrics every N iterations.")
    sample_table_every: int = Field(
        10, ge=0, description="Write a table of samples (prompt, response, score) every N iterations (0: never).")
    sample_table_rows: int = Field(4, ge=1, description="Rows in each sample table.")
    max_minutes: Optional[float] = Field(None, gt=0, description="Stop cleanly after this much wall time.")


class GuardPrompts(PromptFile):
    """The guard's fixed held-out prompts; `guard.prompts=FILE` is short for `guard.prompts.path=FILE`."""

    path: Optional[str] = Field(
        None, description="JSONL (see `field`) or a text file with one prompt per line. Unset: the built-in "
                          "evaluation prompts of the run (data/stories.eval_prompts.jsonl).")
    limit: int = Field(64, ge=1, description="Use at most this many prompts (the first ones).")


class GuardConfig(Section):
    """The over-optimisation guard: a fixed check of the policy every few iterations, and what to do when the
    proxy (the RL reward model) and the truth part ways (Gao et al. 2022)."""

    every: int = Field(0, ge=0, description="Check every this many iterations (0: the guard is off).")
    prompts: GuardPrompts = Field(default_factory=GuardPrompts)
    seed: int = Field(0, description="Seed of the check's sampling: every check draws the same way, so checks "
                                     "compare.")
    heldout: str = Field(
        "none", min_length=1,
        description="The held-out judge of each check: none, gold (the gold judge of the built-in task: mean "
                    "gold score, and gold win rate against the reference's responses), or the PATH of a reward "
                    "model the policy is not trained on (e.g. one trained on a disjoint half of the feedback; "
                    "its normalised mean score).")
    patience: int = Field(2, ge=1, description="Fire when the proxy rose while the held-out score fell from each "
                                               "check to the next this many times in a row.")
    max_kl: Optional[float] = Field(None, gt=0, description="Fire when a check's mean KL to the reference (nats "
                                                            "per response) exceeds this (unset: never).")
    max_spread: Optional[float] = Field(None, gt=0, description="Fire when a check's mean spread of the reward "
                                                                "estimates (normalised units) exceeds this.")
    max_ood_fraction: Optional[float] = Field(
        None, gt=0, le=1, description="Fire when the share of a check's responses more uncertain than 95% of the "
                                      "reward model's validation responses exceeds this.")
    max_length_ratio: Optional[float] = Field(
        None, gt=0, description="Fire when a check's mean response length exceeds this many times the first "
                                "check's.")
    min_length_ratio: Optional[float] = Field(
        None, gt=0, lt=1, description="Fire when a check's mean response length falls below this fraction of the "
                                      "first check's (a policy collapsing to short replies the proxy likes).")
    stop: bool = Field(False, description="On firing, stop the run; the stage's final policy is then the best "
                                          "check's by held-out score among those within the thresholds "
                                          "(guard/best-NNNNNN), not the last; with heldout=none, the last "
                                          "check's within them (max_kl is then a KL budget).")


class PPOConfig(Section):
    """Everything `alignloop ppo` does."""

    models: RLModelsConfig = Field(default_factory=RLModelsConfig)
    prompts: PromptsConfig = Field(default_factory=PromptsConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    reward: RewardShapingConfig = Field(default_factory=RewardShapingConfig)
    ppo: PPOAlgorithmConfig = Field(default_factory=PPOAlgorithmConfig)
    guard: GuardConfig = Field(default_factory=GuardConfig)
    ptx: PretrainMixConfig = Field(default_factory=PretrainMixConfig)
    run: RunLoopConfig = Field(default_factory=RunLoopConfig)


class GRPOAlgorithmConfig(Section):
    """Critic-free policy gradient with group baselines: GRPO (Shao et al. 2024) or RLOO (Ahmadian et al. 2024)."""

    estimator: Literal["grpo", "rloo"] = Field(
        "grpo", description="grpo: advantage = (r - group mean) / group std; rloo: r - mean of the other k-1.")
    group_size: int = Field(8, ge=2, description="Responses sampled per prompt (the group).")
    iterations: int = Field(100, ge=1, description="Rollout + update iterations to run in all.")
    rollout_prompts: int = Field(16, ge=1, description="Prompts per iteration (each sampled group_size times).")
    epochs: int = Field(1, ge=1, description="Passes over each iteration's rollouts.")
    minibatches: int = Field(2, ge=1, description="Optimizer steps per epoch.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches accumulated within one minibatch.")
    lr: LearningRate = Field(3e-5, description="Learning rate (AdamW; after warmup, see min_lr_ratio).")
    warmup_iterations: int = Field(0, ge=0, description="Linear learning-rate warmup, in iterations.")
    min_lr_ratio: float = min_lr_ratio_field()
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    grad_clip: float = Field(1.0, ge=0, description="Clip the gradient norm to this (0 disables).")
    clip_range: float = Field(0.2, gt=0, description="Ratio clip epsilon.")
    kl_in_loss: bool = Field(
        True, description="Add beta * KL (kl_loss_estimator) to the loss, as GRPO does; false puts a k1 KL "
                          "penalty into the reward instead (as RLOO does), with reward.kl_* settings.")
    kl_loss_estimator: Literal["k2", "k3"] = Field(
        "k3", description="The KL term of the loss (kl_in_loss), differentiated through the policy's log-probs: "
                          "k3 (GRPO's; its expected gradient is that of KL(pi_ref || pi)) or k2 (that of "
                          "KL(pi || pi_ref), on the rollout policy's samples).")
    scale_by_std: bool = Field(True, description="grpo: divide by the group's std (Dr. GRPO sets this false).")
    recompute_logprobs: RecomputeLogprobs = "auto"


class GRPORewardShapingConfig(RewardShapingConfig):
    """Reward shaping for GRPO/RLOO: as PPO's, but a fixed beta by default (DeepSeekMath's choice).

    A subclass rather than a default instance, so that overriding one key keeps these defaults for the others.
    """

    adaptive_kl: bool = Field(False, description="Adapt beta towards kl_target; false keeps beta = kl_coef.")


class GRPOConfig(Section):
    """Everything `alignloop grpo` does."""

    models: RLModelsConfig = Field(default_factory=RLModelsConfig)
    prompts: PromptsConfig = Field(default_factory=PromptsConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    reward: GRPORewardShapingConfig = Field(default_factory=GRPORewardShapingConfig)
    grpo: GRPOAlgorithmConfig = Field(default_factory=GRPOAlgorithmConfig)
    guard: GuardConfig = Field(default_factory=GuardConfig)
    run: RunLoopConfig = Field(default_factory=RunLoopConfig)


class PreferenceDataConfig(Section):
    """Preference pairs for DPO: the run's feedback store, or a file."""

    path: Optional[str] = Field(
        None, description='JSONL (or .jsonl.gz) of preferences as `reward` reads them: TRL {"prompt", "chosen", '
                          '"rejected"}, Anthropic HH {"chosen", "rejected"} transcripts, or rich records. Unset: the '
                          'run\'s feedback store (majority vote per pair, ties dropped).')
    store: Optional[str] = Field(None, description="Feedback store path or URL. Unset: the run's feedback.db.")
    feedback_round: Optional[int] = Field(None, ge=1, description="Only this round's judgments (unset: all).")
    val_fraction: float = Field(0.05, ge=0, lt=1, description="Share of pairs held out to report accuracy on.")
    max_len: int = Field(160, ge=8, description="Longest prompt + response in tokens (the prompt is cut first).")


class DPOAlgorithmConfig(Section):
    """Direct preference optimisation (Rafailov et al. 2023)."""

    beta: float = Field(0.1, gt=0, description="Strength of the implicit KL constraint.")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="Conservative DPO: assumed share of flipped labels.")
    epochs: int = Field(2, ge=1, description="Passes over the preference pairs.")
    batch_size: int = Field(16, ge=1, description="Pairs per optimizer step.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    lr: LearningRate = Field(5e-5, description="Peak learning rate (AdamW, warmup then cosine).")
    warmup_steps: int = Field(10, ge=0, description="Linear warmup steps (at most a fifth of the run).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    grad_clip: float = Field(1.0, ge=0, description="Clip the gradient norm to this (0 disables).")


class DPORunConfig(RunLoopConfig):
    """Bookkeeping of a DPO run (steps are optimizer steps, not iterations)."""

    save_every: int = Field(100, ge=1, description="Write a resumable checkpoint every N steps (and at the end).")
    log_every: int = Field(5, ge=1, description="Log metrics every N steps.")


class DPOConfig(Section):
    """Everything `alignloop dpo` does."""

    models: RLModelsConfig = Field(default_factory=RLModelsConfig)
    data: PreferenceDataConfig = Field(default_factory=PreferenceDataConfig)
    dpo: DPOAlgorithmConfig = Field(default_factory=DPOAlgorithmConfig)
    run: DPORunConfig = Field(default_factory=DPORunConfig)


class BoNSettings(Section):
    """Best-of-n: sample n responses, keep the one the reward model scores highest."""

    n: int = Field(16, ge=1, description="Responses sampled per prompt.")


class BoNConfig(Section):
    """Everything `alignloop bon` does: best-of-n responses to prompts (default: the evaluation prompts)."""

    models: RLModelsConfig = Field(default_factory=RLModelsConfig)
    prompts: PromptsConfig = Field(default_factory=PromptsConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    reward: RewardEstimatesConfig = Field(default_factory=RewardEstimatesConfig)
    bon: BoNSettings = Field(default_factory=BoNSettings)
    run: RunLoopConfig = Field(default_factory=RunLoopConfig)
