"""Perplexity on held-out text: the forgetting check of RL fine-tuning.

RLHF moves the policy towards what the reward model likes; if it moves far,
the model gets worse at plain language modelling (the "alignment tax",
Ouyang et al. 2022, §4.3). Comparing the perplexity of the model before and
after RL on text neither was tuned on measures that cost.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import torch

from alignloop.data.corpus import read_corpus, train_val_split
from alignloop.data.lm_batches import pack_blocks, tokenize_documents
from alignloop.errors import DataError
from alignloop.runs import RunDir
from alignloop.stages import builtin_paths
from alignloop.train.device import autocast


def held_out_documents(run: RunDir, path: Optional[str], text_field: str = "text") -> tuple[list[str], str]:
    """Held-out documents and where they came from: a given file, or the run's pretraining validation split.

    The split is recomputed exactly as `alignloop pretrain` made it (same
    corpus, fraction and seed from run.yaml), so these documents were never
    trained on.
    """
    if path:
        return read_corpus(Path(path), text_field), str(path)
    settings = run.read_configs().get("pretrain", {}).get("data", {})
    corpus = settings.get("path") or str(builtin_paths(run)["corpus"])
    if not Path(corpus).exists():
        raise DataError(f"no held-out text: the run's pretraining corpus {corpus} is missing; set text.path")
    fraction = float(settings.get("val_fraction", 0.05))
    if fraction <= 0:
        raise DataError("the run's pretraining kept no validation split (data.val_fraction=0); set text.path")
    docs = read_corpus(Path(corpus), settings.get("text_field", "text"))
    _, val = train_val_split(docs, fraction, int(settings.get("seed", 0)))
    if not val:
        raise DataError(f"the validation split of {corpus} is empty; set text.path")
    return val, f"{corpus} (validation split, {len(val)} documents)"


def text_blocks(tokenizer, documents: list[str], seq_len: int, blocks: int) -> torch.Tensor:
    """The first `blocks` packed blocks [N, seq_len] of `<bos> doc <eos>` token streams."""
    packed = pack_blocks(tokenize_documents(tokenizer, documents), seq_len)
    if packed.shape[0] == 0:
        raise DataError(f"held-out text is shorter than one block of {seq_len} tokens; lower text.seq_len")
    return packed[:blocks]


@torch.no_grad()
def perplexity(model, blocks: torch.Tensor, batch_size: int = 16) -> float:
    """exp(mean next-token loss) over every predicted token of `blocks` [N, L]."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, blocks.shape[0], batch_size):
        batch = blocks[start:start + batch_size].to(device)
        with autocast(device):
            loss = model(input_ids=batch, labels=batch).loss
        tokens = batch.shape[0] * (batch.shape[1] - 1)
        total += float(loss) * tokens
        count += tokens
    model.train(was_training)
    return math.exp(min(total / max(count, 1), 50.0))
