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
from alignloop.errors import ConfigError
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


class SelectConfig(Section):
    """Which pairs of the sampled responses people are asked to judge (item_kind=pair).

    `select=uncertain` is short for `select.mode=uncertain`. See `alignloop.sample.select` for the maths.
    """

    mode: Literal["random", "uncertain", "diverse"] = Field(
        "random", description="random: pairs_per_prompt random pairs of each prompt, as without selection; "
                              "uncertain: the pairs the reward ensemble disagrees on most (nearest 0.5 with one "
                              "estimate; random in a round with no reward model before it); diverse: pairs that "
                              "compare the responses in the most different ways (farthest-first over word counts).")
    budget: Optional[int] = Field(
        None, ge=1, description="Pair items to make. Unset: as many as without selection (each prompt's "
                                "pairs_per_prompt pairs, or all of them when fewer).")
    candidates: Optional[float] = Field(
        None, gt=1, description="Candidate pairs to choose from, as a multiple of the budget, drawn at random from "
                                "all K(K-1)/2 pairs of every prompt. Unset: every such pair (raise k for more).")
    random_fraction: float = Field(
        0.25, ge=0, le=1, description="Share of the budget drawn uniformly at random from the candidates, so the "
                                      "reward model's data stays an unbiased sample of what the policy writes.")
    reward: Optional[str] = Field(
        None, description="With mode=uncertain: the reward model that judges the candidates, a rounds/NNN/reward "
                          "folder (every head of final/ and ensemble/member-*/final/) or one checkpoint. Unset: "
                          "the newest round before this one that has a reward model.")
    score: Literal["information", "spread"] = Field(
        "information", description="With mode=uncertain, what 'disagrees most' means: information, the mutual "
                                   "information between a judgment and which estimate is right (BALD); spread, "
                                   "the standard deviation of the estimates' P(a preferred).")
    batch_size: int = Field(32, ge=1, description="Responses scored at a time by the reward model.")

    @model_validator(mode="before")
    @classmethod
    def _mode_alone(cls, data):
        # `select=uncertain` arrives as the string; with other select.* keys the override parser reads the lone
        # value as the section's `path` (as it does for `prompts=FILE`).
        if isinstance(data, str):
            return {"mode": data}
        if isinstance(data, dict) and "path" in data and "mode" not in data:
            data = {**data, "mode": data["path"]}
            del data["path"]
        return data


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
    select: SelectConfig = Field(default_factory=SelectConfig)

    @property
    def selects(self) -> bool:
        """Whether pairs are chosen by `select` rather than drawn per prompt by the store (today's random)."""
        return self.select.mode != "random" or self.select.budget is not None

    @model_validator(mode="after")
    def _select_needs_pairs(self):
        # ConfigError rather than ValueError: pydantic would name the whole config ('<root>') as the bad key.
        if self.selects and self.item_kind != "pair":
            raise ConfigError(f"select chooses pairs: it needs item_kind=pair, not {self.item_kind}")
        if self.select.mode != "random" and self.select.budget is None and self.pairs_per_prompt is None:
            raise ConfigError(f"select.mode={self.select.mode} chooses some of the pairs: set pairs_per_prompt=N "
                             f"(the budget is N pairs per prompt) or select.budget=N (pairs in all)")
        return self

    @model_validator(mode="before")
    @classmethod
    def _old_names(cls, data):
        if isinstance(data, dict) and "prompts" in data:
            data = {**data, "prompts": prompt_file_shorthand(data["prompts"])}
        return rename_keys(data, RENAMED)
