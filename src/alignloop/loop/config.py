"""Configuration of `alignloop loop`: the settings of each stage a round runs, nested by stage."""

from __future__ import annotations

from typing import Optional

from pydantic import Field, model_validator

from alignloop.config.base import Section
from alignloop.evaluation.config import EvalConfig
from alignloop.feedback.limits import MAX_OVERLAP
from alignloop.feedback.simulate import SimulateConfig
from alignloop.reward.config import GoldEvalConfig, RewardConfig, RewardEvalConfig
from alignloop.rl.config import PPOConfig, PromptFile
from alignloop.sample.config import SampleConfig, SamplePromptsConfig, SampleSamplingConfig


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
    """One prompt file for the whole round: sample, PPO and eval take it unless they name their own
    (`sample.prompts`, `ppo.prompts`, `eval.prompts`; held-out prompts for eval, for instance)."""


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


class LoopConfig(Section):
    """Each round: sample from the policy, collect feedback, retrain the reward model, PPO, evaluate."""

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
    ppo: PPOConfig = Field(default_factory=PPOConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    report: bool = Field(True, description="Write report.html after every round.")

    @model_validator(mode="after")
    def _shared_prompts(self):
        if self.prompts.path:
            for stage in (self.sample, self.ppo, self.eval):
                if not stage.prompts.path:
                    stage.prompts.path, stage.prompts.field = self.prompts.path, self.prompts.field
        return self
