"""Configuration of `alignloop sft`."""

from __future__ import annotations

from typing import Optional

from pydantic import Field

from alignloop.config.base import Section
from alignloop.train.config import TrainConfig


class StartConfig(Section):
    """The checkpoint fine-tuning starts from."""

    path: Optional[str] = Field(None, description="A local HF causal-LM checkpoint. Unset: this run's pretrain/final.")


class SupervisedDataConfig(Section):
    """The prompt/response pairs."""

    path: Optional[str] = Field(
        None, description='JSONL of {"prompt", "response"} or {"messages": [...]}. Unset: the built-in story pairs.')
    val_fraction: float = Field(0.05, ge=0, lt=1, description="Share of pairs held out for validation.")
    max_len: int = Field(256, ge=8, description="Longest example in tokens (the prompt is cut first).")
    seed: int = Field(0, description="Seed of the split.")


def _sft_train_defaults() -> TrainConfig:
    return TrainConfig(max_steps=300, lr=3e-4, warmup_steps=20, eval_every=100, save_every=100, batch_size=16,
                       weight_decay=0.0)


class SFTConfig(Section):
    """Everything `alignloop sft` does, field by field."""

    model: StartConfig = Field(default_factory=StartConfig)
    data: SupervisedDataConfig = Field(default_factory=SupervisedDataConfig)
    train: TrainConfig = Field(default_factory=_sft_train_defaults)
