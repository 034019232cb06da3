"""Configuration of `alignloop loop`: the settings of each stage a round runs, nested by stage."""

from __future__ import annotations

from typing import Optional

from pydantic import Field

from alignloop.config.base import Section
from alignloop.evaluation.config import EvalConfig
from alignloop.feedback.simulate import SimulateConfig
from alignloop.reward.config import GoldEvalConfig, RewardConfig, RewardEvalConfig
from alignloop.rl.config import PPOConfig
from alignloop.sample.config import SampleConfig


def _round_sampling() -> SampleConfig:
    return SampleConfig(n_prompts=500, k=4, pairs_per_prompt=2, max_new_tokens=64)


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
    sample: SampleConfig = Field(default_factory=_round_sampling)
    feedback: SimulateConfig = Field(default_factory=SimulateConfig)
    overlap: int = Field(1, ge=1, description="Annotators per item.")
    human: HumanFeedbackConfig = Field(default_factory=HumanFeedbackConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    reward_eval: RewardEvalConfig = Field(
        default_factory=_round_reward_eval, description="The round's reward model checked on its validation "
                                                        "judgments (accuracy, calibration, length) for the report.")
    ppo: PPOConfig = Field(default_factory=PPOConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    report: bool = Field(True, description="Write report.html after every round.")
