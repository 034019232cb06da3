"""Configuration of `alignloop eval`."""

from __future__ import annotations

from typing import Optional

from pydantic import Field

from alignloop.config.base import PrecisionSetting, Section
from alignloop.rl.config import PromptsConfig, SamplingConfig


class EvalModelsConfig(Section):
    """The models compared. Unset paths come from the run directory."""

    baseline: Optional[str] = Field(
        None, description="The model the policy is compared against. Unset: the run's sft/final, else pretrain/final.")
    reference: Optional[str] = Field(
        None, description="The model the KL is measured to. Unset: the baseline.")
    reward: Optional[str] = Field(
        None, description="Reward model for the reward-model win rate. Unset: the round's rounds/NNN/reward/final "
                          "(skipped when there is none).")


class HeldOutTextConfig(Section):
    """Held-out text for the forgetting check (perplexity before and after)."""

    path: Optional[str] = Field(
        None, description="A text/JSONL corpus file. Unset: the validation split of the run's pretraining corpus.")
    text_field: str = Field("text", description="Field holding the text in JSONL records.")
    blocks: int = Field(64, ge=1, description="Blocks of text to measure perplexity on (the first ones).")
    seq_len: int = Field(128, ge=8, description="Tokens per block.")


class EvalPromptsConfig(PromptsConfig):
    """Held-out prompts (unset path: the built-in evaluation openings, data/stories.eval_prompts.jsonl)."""

    limit: Optional[int] = Field(200, ge=1, description="Evaluate on at most this many prompts (the first ones).")


class StyleJudgeConfig(Section):
    """A hidden judge of plain story language, independent of the gold judge (`alignloop.judges.style`)."""

    path: Optional[str] = Field(
        None, description="A reference corpus (text, JSONL, gz) nothing was tuned on, e.g. real TinyStories: a "
                          "word-bigram model of it scores each response by its mean log-probability per word, "
                          "and eval reports the policy's style_win_rate over the baseline. Unset: off.")
    text_field: str = Field("text", description="Field holding the text in JSONL records.")
    documents: int = Field(0, ge=0, description="Use the corpus's first this-many documents (0: all).")


class EvalConfig(Section):
    """Everything `alignloop eval` does, field by field."""

    models: EvalModelsConfig = Field(default_factory=EvalModelsConfig)
    prompts: EvalPromptsConfig = Field(default_factory=EvalPromptsConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    text: HeldOutTextConfig = Field(default_factory=HeldOutTextConfig)
    style: StyleJudgeConfig = Field(default_factory=StyleJudgeConfig)
    round: Optional[int] = Field(None, ge=1, description="Round whose policy is evaluated. Unset: the newest round "
                                                         "with a policy (ignored with --checkpoint).")
    samples_per_prompt: int = Field(1, ge=1, le=64, description="Responses the policy and the baseline each "
                                    "sample per prompt, compared in pairs: the win rates' sampling noise shrinks "
                                    "(about 1/sqrt of this), the intervals still resample prompts, and the time "
                                    "grows with it.")
    seed: int = Field(0, description="Sampling seed (the policy and the baseline use the same one).")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")
    precision: PrecisionSetting = "auto"
    threads: Optional[int] = Field(None, ge=1, description="CPU threads for torch (default: torch's choice).")
