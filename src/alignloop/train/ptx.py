"""Pretraining text mixed into fine-tuning, so the policy keeps modelling plain text.

RL towards a reward model costs language-modelling quality (the held-out
perplexity `alignloop eval` reports rises with the KL). InstructGPT's fix
(Ouyang et al. 2022, section 3.5, eq. 2) adds gamma * E_pretrain[log pi(x)] to
the PPO objective: every PPO optimizer step also takes the next-token loss on a
batch of pretraining text, weighted by `ptx.coef`. SFT and best-of-n
distillation (`alignloop.train.lm_loop`) take the same term: fine-tuning on a
policy's own best replies narrows it as RL does.

The text is the train side of the run's pretraining split by default (the
validation side stays held out for `eval`'s perplexity), or any corpus file.
Batches are drawn with torch's global generator, which the checkpoints of PPO
and of the training loop save and restore, so a resumed run draws the same
batches as an uninterrupted one.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Optional

import torch

from alignloop.data.corpus import read_corpus
from alignloop.data.lm_batches import pack_blocks, tokenize_documents
from alignloop.errors import DataError, TrainingError
from alignloop.evaluation.perplexity import pretraining_split
from alignloop.runs import RunDir
from alignloop.train import distributed
from alignloop.train.config import PretrainMixConfig
from alignloop.train.device import autocast


class PretrainMix:
    """Fixed-length blocks of pretraining text, drawn `batch_size` at a time."""

    def __init__(self, blocks: torch.Tensor, batch_size: int, source: str):
        if blocks.ndim != 2 or blocks.shape[0] == 0:
            raise DataError(f"ptx: {source} holds no block of text; lower ptx.seq_len or use a larger corpus")
        self.blocks, self.batch_size, self.source = blocks, batch_size, source

    def batch(self) -> torch.Tensor:
        """`batch_size` blocks [B, seq_len] drawn uniformly (with torch's global generator)."""
        rows = torch.randint(0, self.blocks.shape[0], (self.batch_size,))
        return self.blocks[rows]


def lm_loss(model, blocks: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of `model` over every predicted token of `blocks` [B, L]."""
    return model(input_ids=blocks, attention_mask=torch.ones_like(blocks), labels=blocks).loss


def mix_backward(model, mix: PretrainMix, weight: float, device: torch.device, where: str) -> float:
    """Backpropagate `weight` times `model`'s next-token loss on one batch of `mix`; returns that loss averaged
    over processes. A loss that is not finite is a one-line error before it reaches the weights."""
    with autocast(device):
        loss = lm_loss(model, mix.batch().to(device))
    value = distributed.all_reduce_sum([float(loss.detach())])[0] / distributed.world_size()
    if not math.isfinite(value):
        raise TrainingError(f"{where}: the loss on pretraining text (ptx) became {value}; lower the learning rate "
                            f"or ptx.coef")
    # Each process its own blocks; the gradient averaging makes it the mean over processes.
    distributed.backward(weight * loss)
    return value


def open_pretrain_mix(run: RunDir, cfg: PretrainMixConfig, tokenizer,
                      log: Callable[[str], None]) -> Optional[PretrainMix]:
    """The pretraining text of a `ptx` section as packed blocks, or None when `ptx.coef` is 0."""
    if cfg.coef <= 0:
        return None
    if cfg.path:
        if not Path(cfg.path).exists():
            raise DataError(f"ptx.path {cfg.path} does not exist")
        documents, source = read_corpus(Path(cfg.path), cfg.text_field), cfg.path
    else:
        try:
            documents, source = pretraining_split(run, "train")
        except DataError as exc:
            raise DataError(f"ptx: {exc}; set ptx.path to a text corpus") from None
    # Tokenise only as much as max_blocks needs (a corpus can be large), assuming no block is shorter
    # than 4 characters per token.
    wanted_chars, kept, chars = cfg.max_blocks * cfg.seq_len * 4, [], 0
    for document in documents:
        kept.append(document)
        chars += len(document)
        if chars >= wanted_chars:
            break
    blocks = pack_blocks(tokenize_documents(tokenizer, kept), cfg.seq_len)[:cfg.max_blocks]
    log(f"ptx: {blocks.shape[0]:,} blocks of {cfg.seq_len} tokens from {source}, {cfg.batch_size} per step, "
        f"weight {cfg.coef}")
    return PretrainMix(blocks, cfg.batch_size, source)
