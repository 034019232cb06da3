"""Configuration of `alignloop sample`.

Prompts and sampling are named as in every other stage that reads prompts
(`prompts.path`, or `prompts=FILE`; `sampling.max_new_tokens`...). The flat
names of earlier versions (`n_prompts`, `prompt_field`, `max_new_tokens`,
`temperature`, `top_p`, `top_k`, `batch_size`) are still read, as aliases.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from alignloop.config.base import Section, rename_keys
from alignloop.feedback.limits import MAX_OVERLAP
from alignloop.rl.config import PromptFile, SamplingConfig, prompt_file_shorthand

RENAMED = {"prompt_field": "prompts.field", "n_prompts": "prompts.limit",
           "max_new_tokens": "sampling.max_new_tokens", "temperature": "sampling.temperature",
           "top_p": "sampling.top_p", "top_k": "sampling.top_k", "batch_size": "sampling.batch_size"}


class SamplePromptsConfig(PromptFile):
    """The prompts to answer."""

    limit: Optional[int] = Field(None, ge=1, description="Use at most this many prompts (the first ones).")


class SampleSamplingConfig(SamplingConfig):
    """How responses are sampled; longer by default than in RL, since people read them."""

    max_new_tokens: int = Field(96, ge=1, description="Longest response in tokens; longer ones are cut.")


class SampleConfig(Section):
    """Which prompts, how many responses, how they are sampled and how they become items."""

    prompts: SamplePromptsConfig = Field(default_factory=SamplePromptsConfig)
    k: int = Field(4, ge=1, description="Responses sampled per prompt.")
    item_kind: Literal["pair", "ranking", "rating"] = Field(
        "pair", description="pair: comparisons of the K responses; ranking: one K-way item; rating: one item each.")
    pairs_per_prompt: Optional[int] = Field(
        None, ge=1, description="With item_kind=pair: this many random pairs per prompt (unset: all K(K-1)/2).")
    overlap: Optional[int] = Field(None, ge=1, le=MAX_OVERLAP,
                                   description="Annotators per item (unset: the store's setting).")
    sampling: SampleSamplingConfig = Field(default_factory=SampleSamplingConfig)
    round: Optional[int] = Field(None, ge=1, description="Round number (rounds/NNN). Unset: the next new round.")
    seed: int = Field(0, description="Sampling seed.")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")

    @model_validator(mode="before")
    @classmethod
    def _old_names(cls, data):
        if isinstance(data, dict) and "prompts" in data:
            data = {**data, "prompts": prompt_file_shorthand(data["prompts"])}
        return rename_keys(data, RENAMED)
