"""Configuration of `alignloop pretrain`."""

from __future__ import annotations

from typing import Optional

from pydantic import Field

from alignloop.config.base import Section
from alignloop.models.causal_lm import ModelConfig
from alignloop.train.config import TrainConfig


class TokenizerConfig(Section):
    """The tokenizer: trained on the corpus (byte-level BPE) unless one is given."""

    vocab_size: int = Field(8192, ge=300, description="BPE vocabulary size, special tokens included.")
    path: Optional[str] = Field(None, description="Use this saved tokenizer instead of training one.")


class CorpusConfig(Section):
    """The pretraining text."""

    path: Optional[str] = Field(
        None, description="Text file or folder, JSONL, or local HF dataset. Unset: the built-in story corpus.")
    text_field: str = Field("text", description="Field holding the text in JSONL records and datasets.")
    val_fraction: float = Field(0.05, ge=0, lt=1, description="Share of documents held out for validation.")
    seq_len: int = Field(256, ge=8, description="Tokens per packed training block.")
    stories: int = Field(20000, ge=1, description="Stories to generate for the built-in corpus.")
    seed: int = Field(0, description="Seed of the split and of the built-in corpus.")


class PretrainConfig(Section):
    """Everything `alignloop pretrain` does, field by field."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    data: CorpusConfig = Field(default_factory=CorpusConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
