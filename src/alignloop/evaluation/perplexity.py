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


def pretraining_split(run: RunDir, part: str) -> tuple[list[str], str]:
    """The run's pretraining documents of one side of its split (`train` or `validation`), and their source.

    The split is recomputed exactly as `alignloop pretrain` made it (same
    corpus, fraction and seed from run.yaml), so the validation side was never
    trained on and the train side is what pretraining saw.
    """
    settings = run.read_configs().get("pretrain", {}).get("data", {})
    corpus = settings.get("path") or str(builtin_paths(run)["corpus"])
    if not Path(corpus).exists():
        raise DataError(f"the run's pretraining corpus {corpus} is missing")
    fraction = float(settings.get("val_fraction", 0.05))
    if part == "validation" and fraction <= 0:
        raise DataError("the run's pretraining kept no validation split (data.val_fraction=0)")
    docs = read_corpus(Path(corpus), settings.get("text_field", "text"))
    train, val = train_val_split(docs, fraction, int(settings.get("seed", 0))) if fraction > 0 else (docs, [])
    chosen = val if part == "validation" else train
    if not chosen:
        raise DataError(f"the {part} split of {corpus} is empty")
    return chosen, f"{corpus} ({part} split, {len(chosen)} documents)"


def held_out_documents(run: RunDir, path: Optional[str], text_field: str = "text") -> tuple[list[str], str]:
    """Held-out documents and where they came from: a given file, or the run's pretraining validation split."""
    if path:
        return read_corpus(Path(path), text_field), str(path)
    try:
        return pretraining_split(run, "validation")
    except DataError as exc:
        raise DataError(f"no held-out text: {exc}; set text.path") from None


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
