"""`alignloop pretrain`: corpus -> tokenizer -> causal LM checkpoint in `pretrain/final/`.

Rerunning the same command resumes from the newest checkpoint; rerunning it
after the stage finished does nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import torch

from alignloop import atomic
from alignloop.data.corpus import read_corpus, train_val_split
from alignloop.data.lm_batches import PackedBlocks, pack_blocks, tokenize_documents
from alignloop.errors import CheckpointError, ConfigError, DataError
from alignloop.models.causal_lm import build_model, load_causal_lm
from alignloop.models.lora import describe, with_lora
from alignloop.pretrain.config import PretrainConfig
from alignloop.runs import RunDir, hash_inputs
from alignloop.stages import builtin_data, sample_fn_for, tokenizer_for
from alignloop.tokenizer import load_tokenizer, train_tokenizer
from alignloop.train import distributed
from alignloop.train.checkpoints import latest_checkpoint, load_training_state
from alignloop.train.lm_loop import LoopResult, train_language_model

STAGE = "pretrain"


def _corpus_path(run: RunDir, cfg: PretrainConfig, log) -> Path:
    if cfg.data.path:
        return Path(cfg.data.path)
    return builtin_data(run, cfg.data.stories, cfg.data.seed, log)["corpus"]


def _tokenizer(run: RunDir, cfg: PretrainConfig, train_docs: list[str], log):
    # With several processes rank 0 trains and saves it; the others then load what it saved.
    with distributed.main_first():
        return _load_or_train_tokenizer(run, cfg, train_docs, log)


def _load_or_train_tokenizer(run: RunDir, cfg: PretrainConfig, train_docs: list[str], log):
    existing = tokenizer_for(run, cfg.tokenizer.path, cfg.model.path)
    if existing is not None:
        return existing
    log(f"{STAGE}: training a byte-level BPE tokenizer (vocab {cfg.tokenizer.vocab_size}) on {len(train_docs)} documents")
    tokenizer = train_tokenizer(train_docs, cfg.tokenizer.vocab_size)
    with atomic.atomic_directory(run.tokenizer) as tmp:
        tokenizer.save_pretrained(str(tmp))
    return load_tokenizer(run.tokenizer)


def _check_compatible(run: RunDir, cfg: PretrainConfig) -> None:
    previous = run.read_configs().get(STAGE)
    if previous and previous.get("model") != cfg.model.model_dump(mode="json") \
            and latest_checkpoint(run.stage_dir(STAGE)) is not None:
        raise CheckpointError(f"{run.root} already holds a pretraining run with another model config; "
                              f"use a new --run directory (nothing was changed)")


def run_pretrain(run: RunDir, cfg: PretrainConfig, log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)
                 ) -> LoopResult | None:
    """Run (or resume, or skip if finished) the pretraining stage; returns None when skipped."""
    distributed.start(cfg.train.device)  # under a launcher, join the other processes before touching files
    corpus_path = _corpus_path(run, cfg, log)
    inputs = hash_inputs(cfg, str(corpus_path))
    final = run.final(STAGE)
    if run.stage_done(STAGE, inputs) and final.exists():
        log(f"{STAGE}: already finished ({final}); nothing to do")
        return None
    _check_compatible(run, cfg)
    if cfg.model.lora.enabled and not cfg.model.path:
        raise ConfigError("model.lora needs model.path: LoRA adapts a trained model, and a model built from "
                          "scratch must train every weight")
    docs = read_corpus(corpus_path, cfg.data.text_field)
    train_docs, val_docs = train_val_split(docs, cfg.data.val_fraction, cfg.data.seed)
    run.record_config(STAGE, cfg)

    stage_dir = run.stage_dir(STAGE)
    checkpoint = latest_checkpoint(stage_dir)
    state = None
    if checkpoint is not None:
        tokenizer = load_tokenizer(checkpoint)
        # A LoRA checkpoint holds the adapter alone: the frozen base is model.path.
        model = load_causal_lm(cfg.model.path if cfg.model.lora.enabled else checkpoint)
        state = load_training_state(checkpoint)
    else:
        tokenizer = _tokenizer(run, cfg, train_docs, log)
        torch.manual_seed(cfg.train.seed)  # the initial weights depend on the seed alone
        if cfg.model.path:
            model = load_causal_lm(cfg.model.path)
        else:
            model = build_model(cfg.model, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id,
                                tokenizer.pad_token_id)
        if model.get_input_embeddings().num_embeddings < len(tokenizer):
            model.resize_token_embeddings(len(tokenizer))
    model = with_lora(model, cfg.model.lora, "causal_lm", checkpoint, cfg.train.seed)

    train_blocks = pack_blocks(tokenize_documents(tokenizer, train_docs), cfg.data.seq_len)
    val_blocks = pack_blocks(tokenize_documents(tokenizer, val_docs), cfg.data.seq_len) if val_docs \
        else train_blocks[:0]
    if train_blocks.shape[0] == 0:
        raise DataError(f"corpus {corpus_path} is too small: fewer than {cfg.data.seq_len} tokens "
                        f"(lower data.seq_len or add text)")
    data = PackedBlocks(train_blocks, val_blocks, cfg.train.batch_size, cfg.train.seed)
    log(f"{STAGE}: {describe(model)}, {len(train_docs):,} documents, "
        f"{data.tokens:,} training tokens in {train_blocks.shape[0]:,} blocks of {cfg.data.seq_len}")

    run.mark_stage(STAGE, "running", inputs)
    prompts = [""] if cfg.data.path else None
    result = train_language_model(
        stage=STAGE, stage_dir=stage_dir, model=model, tokenizer=tokenizer, data=data, cfg=cfg.train,
        resume_state=state, sample_fn=sample_fn_for(run, tokenizer, cfg.train, prompts), log=log)
    run.mark_stage(STAGE, "done", inputs, final=str(result.final_dir), val_loss=result.val_loss)
    log(f"{STAGE}: done in {result.wall_s:.0f}s; checkpoint in {result.final_dir}")
    return result
