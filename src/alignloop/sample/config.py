"""Configuration of `alignloop sample`."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from alignloop.config.base import Section


class SampleConfig(Section):
    """Which prompts, how many responses, how they are sampled and how they become items."""

    prompts: Optional[str] = Field(None, description="JSONL (prompt field) or text file. Unset: the built-in story openings.")
    prompt_field: str = Field("prompt", description="Field of a JSONL prompt file that holds the prompt.")
    n_prompts: Optional[int] = Field(None, ge=1, description="Use only the first N prompts.")
    k: int = Field(4, ge=1, description="Responses sampled per prompt.")
    item_kind: Literal["pair", "ranking", "rating"] = Field(
        "pair", description="pair: comparisons of the K responses; ranking: one K-way item; rating: one item each.")
    pairs_per_prompt: Optional[int] = Field(
        None, ge=1, description="With item_kind=pair: this many random pairs per prompt (unset: all K(K-1)/2).")
    overlap: Optional[int] = Field(None, ge=1, description="Annotators per item (unset: the store's setting).")
    max_new_tokens: int = Field(96, ge=1, description="Longest response in tokens.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling threshold.")
    top_k: int = Field(0, ge=0, description="Sample among the k likeliest tokens (0: all).")
    batch_size: int = Field(64, ge=1, description="Sequences sampled at once.")
    round: Optional[int] = Field(None, ge=1, description="Round number (rounds/NNN). Unset: the next new round.")
    seed: int = Field(0, description="Sampling seed.")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")
