"""Configuration of `alignloop sft`."""

from __future__ import annotations

from typing import Optional

from pydantic import Field

from alignloop.config.base import Section
from alignloop.models.lora import LoraSettings
from alignloop.train.config import PretrainMixConfig, TrainConfig


class StartConfig(Section):
    """The checkpoint fine-tuning starts from."""

    path: Optional[str] = Field(None, description="A local HF causal-LM checkpoint. Unset: this run's pretrain/final.")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="Train LoRA adapters instead of every weight.")


class SupervisedSplitConfig(Section):
    """How prompt/response pairs are cut and split for fine-tuning."""

    val_fraction: float = Field(0.05, ge=0, lt=1, description="Share of pairs held out for validation.")
    max_len: int = Field(256, ge=8, description="Longest example in tokens (the prompt is cut first).")
    seed: int = Field(0, description="Seed of the split.")


class SupervisedDataConfig(SupervisedSplitConfig):
    """The prompt/response pairs."""

    path: Optional[str] = Field(
        None, description='JSONL of {"prompt", "response"} or {"messages": [...]}. Unset: the built-in story pairs.')


class SFTTrainConfig(TrainConfig):
    """The shared training settings with fine-tuning defaults (shorter, gentler than pretraining)."""

    max_steps: int = Field(300, ge=1, description="Optimizer steps to run in all (the schedule spans these).")
    lr: float = Field(3e-4, gt=0, description="Peak learning rate.")
    warmup_steps: int = Field(
        20, ge=0, description="Linear warmup steps before cosine decay (at most a fifth of max_steps).")
    eval_every: int = Field(100, ge=1, description="Validate every N steps (and at the end).")
    save_every: int = Field(100, ge=1, description="Write a resumable checkpoint every N steps.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay on matrices (not norms or biases).")


class SFTConfig(Section):
    """Everything `alignloop sft` does, field by field."""

    model: StartConfig = Field(default_factory=StartConfig)
    data: SupervisedDataConfig = Field(default_factory=SupervisedDataConfig)
    train: SFTTrainConfig = Field(default_factory=SFTTrainConfig)
    ptx: PretrainMixConfig = Field(
        default_factory=PretrainMixConfig,
        description="Pretraining text's next-token loss added to every step (ptx.coef > 0): keeps the model's "
                    "plain-text perplexity while it fine-tunes.")
