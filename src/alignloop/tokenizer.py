"""Byte-level BPE tokenizers: trained on the corpus, or taken from a checkpoint.

Our tokenizers have three special tokens (`<|bos|>`, `<|eos|>`, `<|pad|>`) and
are saved as `PreTrainedTokenizerFast`, so `AutoTokenizer.from_pretrained`
opens them with nothing but the directory.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from alignloop.errors import CheckpointError, DataError

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"


def train_tokenizer(documents: Iterable[str], vocab_size: int = 8192):
    """Train a byte-level BPE tokenizer on `documents` and wrap it for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 300:
        raise DataError(f"tokenizer.vocab_size must be at least 300 (256 bytes + specials), got {vocab_size}")
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(documents, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD)


def prepare_tokenizer(tokenizer):
    """Make any causal-LM tokenizer usable here: a pad token (EOS if none) and left padding for sampling."""
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise CheckpointError("the tokenizer has neither a pad nor an eos token; cannot batch")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_tokenizer(path: Path | str):
    """Open a tokenizer saved with `save_pretrained`; a clear error if there is none."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"no tokenizer directory at {path}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # transformers raises OSError, ValueError, JSON errors...
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"cannot load the tokenizer in {path}: {first}") from None
    return prepare_tokenizer(tokenizer)
