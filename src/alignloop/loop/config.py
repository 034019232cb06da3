"""Configuration of `alignloop loop`: the settings of each stage a round runs, nested by stage."""

from __future__ import annotations

from typing import Literal, Optional, Union, get_args

from pydantic import Field, field_validator, model_validator

from alignloop.config.base import Section
from alignloop.evaluation.config import EvalConfig
from alignloop.feedback.limits import MAX_OVERLAP
from alignloop.feedback.simulate import SimulateConfig
from alignloop.reward.config import GoldEvalConfig, RewardConfig, RewardEvalConfig
from alignloop.rl.config import (
    DPOConfig,
    GRPOAlgorithmConfig,
    GRPOConfig,
    PPOConfig,
    PromptFile,
    PromptsConfig,
    RewardEstimatesConfig,
    SamplingConfig,
)
from alignloop.sample.config import SampleConfig, SamplePromptsConfig, SampleSamplingConfig
from alignloop.sft.config import SFTTrainConfig, SupervisedSplitConfig
from alignloop.train.config import PretrainMixConfig


# A round's sampling defaults are subclasses, not a default instance, so that overriding one key
# (`sample.k=2`) keeps these defaults for the others.
class RoundSamplePromptsConfig(SamplePromptsConfig):
    """The prompts each round answers for annotation."""

    limit: Optional[int] = Field(500, ge=1, description="Use at most this many prompts (the first ones).")


class RoundSampleSamplingConfig(SampleSamplingConfig):
    """How each round's responses for annotation are sampled."""

    max_new_tokens: int = Field(64, ge=1, description="Longest response in tokens; longer ones are cut.")


class RoundSampleConfig(SampleConfig):
    """Each round's responses for annotation (round and seed are set per round)."""

    prompts: RoundSamplePromptsConfig = Field(default_factory=RoundSamplePromptsConfig)
    pairs_per_prompt: Optional[int] = Field(
        2, ge=1, description="With item_kind=pair: this many random pairs per prompt (unset: all K(K-1)/2).")
    sampling: RoundSampleSamplingConfig = Field(default_factory=RoundSampleSamplingConfig)


class LoopPromptsConfig(PromptFile):
    """One prompt file for the whole round: sample, the RL step (ppo, grpo, rloo, bon) and eval take it unless
    they name their own (`sample.prompts`, `ppo.prompts`, `eval.prompts`; held-out prompts for eval, for
    instance)."""


def _round_reward_eval() -> RewardEvalConfig:
    # The validation split of the round's judgments is scored every round (seconds); sampling fresh pairs
    # for the gold judge costs minutes on a CPU, so it is asked for with reward_eval.gold.pairs=N.
    return RewardEvalConfig(gold=GoldEvalConfig(pairs=0))


class HumanFeedbackConfig(Section):
    """With `--human`: the web app is served and the round waits for people's judgments."""

    host: str = Field("127.0.0.1", description="Address the annotation app listens on.")
    port: int = Field(8000, ge=0, le=65535, description="Port of the annotation app (0: any free port).")
    quota: Optional[int] = Field(
        None, ge=1, description="Judgments to wait for per round. Unset: every item of the round times its overlap.")
    poll_seconds: float = Field(5.0, gt=0, description="How often progress is checked and shown.")
    linger_seconds: float = Field(
        5.0, ge=0, description="Keep serving this long after the quota is reached, so that annotators mid-request "
                               "are told the queue is empty instead of finding the server gone.")


class RLOOAlgorithmConfig(GRPOAlgorithmConfig):
    """RLOO (Ahmadian et al. 2024): leave-one-out baselines, with a k1 KL penalty in the reward."""

    estimator: Literal["rloo"] = Field("rloo", description="rloo: advantage = r - mean of the other k-1 rewards.")
    kl_in_loss: bool = Field(
        False, description="false (RLOO's choice): a k1 KL penalty in the reward, with reward.kl_* settings; true "
                           "adds beta * KL (kl_loss_estimator) to the loss instead.")


class RLOOConfig(GRPOConfig):
    """`loop.algorithm=rloo`: the GRPO stage with the RLOO estimator and RLOO's defaults."""

    grpo: RLOOAlgorithmConfig = Field(default_factory=RLOOAlgorithmConfig)


class DistillPromptsConfig(PromptsConfig):
    """The prompts whose best-of-n responses the policy is fine-tuned on."""

    limit: Optional[int] = Field(256, ge=1, description="Use at most this many prompts (the first ones).")


class DistillTrainConfig(SFTTrainConfig):
    """The SFT stage's training settings, gentler: the policy already writes these responses, nearly."""

    max_steps: int = Field(48, ge=1, description="Optimizer steps to run in all (the schedule spans these).")
    lr: float = Field(5e-5, gt=0, description="Peak learning rate.")
    warmup_steps: int = Field(
        4, ge=0, description="Linear warmup steps before cosine decay (at most a fifth of max_steps).")
    save_every: int = Field(16, ge=1, description="Write a resumable checkpoint every N steps.")
    samples: int = Field(0, ge=0, description="Samples printed at each evaluation.")


class BoNDistillConfig(Section):
    """`loop.algorithm=bon`: best-of-n distillation. The policy answers each training prompt n times, the
    round's reward model keeps the best answer, and the policy is fine-tuned (the SFT stage's training) on
    those (prompt, best answer) pairs."""

    n: int = Field(8, ge=2, description="Responses sampled per prompt; the reward model keeps the best.")
    seed: int = Field(0, description="Seed of the sampling.")
    prompts: DistillPromptsConfig = Field(default_factory=DistillPromptsConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    reward: RewardEstimatesConfig = Field(
        default_factory=RewardEstimatesConfig,
        description="How the reward model's estimates pick the best answer (reward.uncertainty, as in PPO).")
    data: SupervisedSplitConfig = Field(default_factory=SupervisedSplitConfig)
    train: DistillTrainConfig = Field(default_factory=DistillTrainConfig)
    ptx: PretrainMixConfig = Field(
        default_factory=PretrainMixConfig,
        description="Pretraining text's next-token loss added to every distillation step (ptx.coef > 0): "
                    "fine-tuning on the policy's own best answers narrows it, and this holds its perplexity.")


Algorithm = Literal["ppo", "grpo", "rloo", "dpo", "bon"]
KL_CONTROLLED = ("ppo", "grpo", "rloo")  # the algorithms whose section has a KL controller (reward.kl_*)


def entries(value) -> list:
    """The entries of a setting that is one value for every round or a list, one per round."""
    return value if isinstance(value, list) else [value]


def per_round(value, number: int):
    """Round `number`'s (1-based) entry of a setting that is one value or a list with its last entry repeating."""
    items = entries(value)
    return items[min(number, len(items)) - 1]


class LoopConfig(Section):
    """Each round: sample from the policy, collect feedback, retrain the reward model, RL (`algorithm`), evaluate."""

    rounds: int = Field(2, ge=1, description="Rounds to run in all (a rerun continues up to this number).")
    prompts: LoopPromptsConfig = Field(default_factory=LoopPromptsConfig)
    sample: RoundSampleConfig = Field(default_factory=RoundSampleConfig)
    feedback: SimulateConfig = Field(default_factory=SimulateConfig)
    overlap: int = Field(1, ge=1, le=MAX_OVERLAP, description="Annotators per item.")
    human: HumanFeedbackConfig = Field(default_factory=HumanFeedbackConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    reward_eval: RewardEvalConfig = Field(
        default_factory=_round_reward_eval, description="The round's reward model checked on its validation "
                                                        "judgments (accuracy, calibration, length) for the report.")
    algorithm: Union[Algorithm, list[Algorithm]] = Field(
        "ppo", description="Step 4 of every round: ppo (section ppo), grpo (section grpo), rloo (section rloo), "
                           "dpo (online DPO on the round's judgments, section dpo) or bon (best-of-n distillation, "
                           "section bon); or one per round, e.g. [bon,bon,ppo], the last repeating for later "
                           "rounds. A round keeps the algorithm it was started with.")
    reference: Literal["sft", "previous"] = Field(
        "sft", description="The frozen reference of step 4 (the KL leash of ppo, grpo and rloo, DPO's reference): "
                           "the SFT model every round, or the previous round's policy. Evaluation always "
                           "measures against SFT.")
    kl_target: Union[None, float, list[float]] = Field(
        None, description="The adaptive KL target of the rounds' ppo, grpo or rloo, in nats per response to the "
                          "round's reference: one for every round, or one per round with the last repeating, e.g. "
                          "[2,4,6] with reference=sft, a KL budget to SFT that grows round by round. Replaces that "
                          "section's reward.kl_target; unset: the section's own. Needs reward.adaptive_kl=true in "
                          "each of them the loop runs; dpo and bon rounds have no KL controller and ignore it.")
    ppo: PPOConfig = Field(default_factory=PPOConfig)
    grpo: GRPOConfig = Field(default_factory=GRPOConfig)
    rloo: RLOOConfig = Field(default_factory=RLOOConfig)
    dpo: DPOConfig = Field(default_factory=DPOConfig)
    bon: BoNDistillConfig = Field(default_factory=BoNDistillConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    report: bool = Field(True, description="Write report.html after every round.")

    @field_validator("algorithm", mode="before")
    @classmethod
    def _known_algorithms(cls, value):
        # Checked here so that a bad entry reads as one line, not as each branch of the union failing.
        names = entries(value)
        if not names:
            raise ValueError("an empty list names no algorithm: name one (algorithm=ppo) or one per round "
                             "(algorithm=[bon,ppo])")
        unknown = [name for name in names if name not in get_args(Algorithm)]
        if unknown:
            raise ValueError(f"{unknown[0]!r} is not one of {', '.join(get_args(Algorithm))}")
        return value

    @field_validator("kl_target")
    @classmethod
    def _positive_targets(cls, value):
        if value is not None and (not entries(value) or min(entries(value)) <= 0):
            raise ValueError(f"a KL target per round, each > 0 nats (e.g. [2,4,6]); got {value}")
        return value

    def algorithm_of(self, number: int) -> str:
        """The algorithm of round `number` (1-based): the one named, or its entry in the per-round list."""
        return per_round(self.algorithm, number)

    def kl_target_of(self, number: int) -> Optional[float]:
        """Round `number`'s KL target from `kl_target`; None when unset (the section's own applies)."""
        return per_round(self.kl_target, number)

    @model_validator(mode="after")
    def _kl_targets_need_the_controller(self):
        if self.kl_target is None:
            return self
        for name in dict.fromkeys(entries(self.algorithm)):
            if name in KL_CONTROLLED and not getattr(self, name).reward.adaptive_kl:
                raise ValueError(f"kl_target sets the adaptive KL controller's target, and {name}.reward."
                                 f"adaptive_kl is false: set {name}.reward.adaptive_kl=true, or drop kl_target")
        return self

    @model_validator(mode="after")
    def _shared_prompts(self):
        if self.prompts.path:
            for stage in (self.sample, self.ppo, self.grpo, self.rloo, self.bon, self.eval):
                if not stage.prompts.path:
                    stage.prompts.path, stage.prompts.field = self.prompts.path, self.prompts.field
        return self
