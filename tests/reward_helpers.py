"""Tiny backbones and preference files for the reward-model tests (built in a second or two)."""

from __future__ import annotations

import json
import random
from pathlib import Path

NAMES = ["Tom", "Mia", "Ben", "Lily", "Sam", "Anna", "Max", "Zoe"]
THINGS = ["ball", "kite", "cat", "boat", "cake", "tree", "book", "dog"]


def good_bad_pairs(n: int, seed: int = 0) -> list[dict]:
    """TRL records where the chosen story ends happily and the rejected one repeats itself."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        name, thing = rng.choice(NAMES), rng.choice(THINGS)
        out.append({"prompt": f"{name} found a {thing} ({i}).",
                    "chosen": f"{name} was happy. The end.",
                    "rejected": f"{thing} {thing} {thing} {thing}."})
    return out


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def tiny_decoder(directory: Path, pad_is_eos: bool = False) -> Path:
    """A 2-layer Llama causal LM with a 400-token BPE tokenizer, saved as an HF checkpoint."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from alignloop.tokenizer import train_tokenizer

    docs = [f"{r['prompt']} {r['chosen']} {r['rejected']}" for r in good_bad_pairs(200)]
    tokenizer = train_tokenizer(docs, 400)
    if pad_is_eos:
        tokenizer.pad_token = tokenizer.eos_token
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory


def tiny_encoder(directory: Path) -> Path:
    """A 2-layer random BERT with a WordPiece vocabulary of the test words, saved as an HF checkpoint."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = sorted({w.strip(".()").lower() for r in good_bad_pairs(200) for w in
                    f"{r['prompt']} {r['chosen']} {r['rejected']}".split()} | set("0123456789.()"))
    directory.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab={word: i for i, word in enumerate(vocab)})
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, pad_token_id=0)
    BertModel(config).save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory
