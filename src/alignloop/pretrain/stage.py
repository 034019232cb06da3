"""`alignloop pretrain`: corpus -> tokenizer -> causal LM checkpoint in `pretrain/final/`.

Rerunning the same command resumes from the newest checkpoint; rerunning it
after the stage finished does nothing. Work made from other inputs (settings,
corpus, start model: see `alignloop.provenance`) is refused unless `--force`.
The tokenizer is saved only once the corpus has proved big enough, so a failed
first run leaves none behind.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import torch

from alignloop import atomic
from alignloop.data.corpus import read_corpus, train_val_split
from alignloop.data.lm_batches import PackedBlocks, pack_blocks, tokenize_documents
from alignloop.errors import ConfigError, DataError
from alignloop.models.causal_lm import build_model, load_causal_lm
from alignloop.models.lora import describe, with_lora
from alignloop.pretrain.config import PretrainConfig
from alignloop.provenance import DONE, DigestCache, StageInputs, plan_stage, record_finished, record_started
from alignloop.runs import RunDir
from alignloop.stages import builtin_data, sample_fn_for, tokenizer_for
from alignloop.tokenizer import load_tokenizer, prepare_tokenizer, train_tokenizer
from alignloop.train import distributed
from alignloop.train.checkpoints import latest_checkpoint, load_training_state
from alignloop.train.lm_loop import LoopResult, train_language_model

STAGE = "pretrain"


def _corpus_path(run: RunDir, cfg: PretrainConfig, log) -> Path:
    if cfg.data.path:
        return Path(cfg.data.path)
    return builtin_data(run, cfg.data.stories, cfg.data.seed, log)["corpus"]


def _new_tokenizer(cfg: PretrainConfig, train_docs: list[str], log):
    """A byte-level BPE trained on the corpus, in memory: it is saved only once the corpus proved usable."""
    log(f"{STAGE}: training a byte-level BPE tokenizer (vocab {cfg.tokenizer.vocab_size}) on {len(train_docs)} documents")
    return prepare_tokenizer(train_tokenizer(train_docs, cfg.tokenizer.vocab_size))


def _save_tokenizer(run: RunDir, tokenizer) -> None:
    with atomic.atomic_directory(run.tokenizer) as tmp:
        tokenizer.save_pretrained(str(tmp))


def _stage_inputs(cfg: PretrainConfig, corpus_path: Path, cache: DigestCache) -> StageInputs:
    inputs = StageInputs.of(cfg, exclude=("data.path", "model.path", "tokenizer.path"))
    inputs.add_artifact("corpus", corpus_path, cache)
    if cfg.model.path:
        inputs.add_artifact("start", cfg.model.path, cache)
    if cfg.tokenizer.path:
        inputs.add_artifact("tokenizer", cfg.tokenizer.path, cache)
    return inputs


def run_pretrain(run: RunDir, cfg: PretrainConfig, log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
                 force: bool = False) -> LoopResult | None:
    """Run (or resume, or skip if finished) the pretraining stage; returns None when skipped.

    A finished or half-done pretraining made from other inputs (settings, corpus, start model) is refused
    unless `force`, which starts over.
    """
    distributed.start(cfg.train.device)  # under a launcher, join the other processes before touching files
    if cfg.model.lora.enabled and not cfg.model.path:
        raise ConfigError("model.lora needs model.path: LoRA adapts a trained model, and a model built from "
                          "scratch must train every weight")
    corpus_path = _corpus_path(run, cfg, log)
    cache = DigestCache.for_run(run)
    inputs = _stage_inputs(cfg, corpus_path, cache)
    stage_dir, final = run.stage_dir(STAGE), run.final(STAGE)
    own_tokenizer = not (cfg.tokenizer.path or cfg.model.path)
    plan = plan_stage(run, STAGE, inputs, final=final, work=[stage_dir / "checkpoints", stage_dir / "best"]
                      + ([run.tokenizer] if own_tokenizer else []), force=force, log=log,
                      new_run_hint="use a new --run directory", cache=cache)
    if plan.action == DONE:
        log(f"{STAGE}: already finished ({final}); nothing to do")
        return None
    docs = read_corpus(corpus_path, cfg.data.text_field)
    train_docs, val_docs = train_val_split(docs, cfg.data.val_fraction, cfg.data.seed)

    checkpoint = latest_checkpoint(stage_dir)
    state = None
    new_tokenizer = None
    if checkpoint is not None:
        tokenizer = load_tokenizer(checkpoint)
        # A LoRA checkpoint holds the adapter alone: the frozen base is model.path.
        model = load_causal_lm(cfg.model.path if cfg.model.lora.enabled else checkpoint)
        state = load_training_state(checkpoint)
    else:
        tokenizer = tokenizer_for(run, cfg.tokenizer.path, cfg.model.path)
        if tokenizer is None:
            tokenizer = new_tokenizer = _new_tokenizer(cfg, train_docs, log) if distributed.is_main() else None
        model = None

    # Rank 0 alone trains a new tokenizer; it checks the corpus with it, records the stage and saves it,
    # and the other processes then load what it saved.
    with distributed.main_first():
        if tokenizer is None:
            tokenizer = load_tokenizer(run.tokenizer)
        train_blocks = pack_blocks(tokenize_documents(tokenizer, train_docs), cfg.data.seq_len)
        if train_blocks.shape[0] == 0:
            raise DataError(f"corpus {corpus_path} is too small: fewer than {cfg.data.seq_len} tokens "
                            f"(lower data.seq_len or add text)")
        if distributed.is_main():
            run.record_config(STAGE, cfg)
            record_started(run, STAGE, inputs)
            if new_tokenizer is not None:
                _save_tokenizer(run, new_tokenizer)
    val_blocks = pack_blocks(tokenize_documents(tokenizer, val_docs), cfg.data.seq_len) if val_docs \
        else train_blocks[:0]

    if model is None:
        torch.manual_seed(cfg.train.seed)  # the initial weights depend on the seed alone
        if cfg.model.path:
            model = load_causal_lm(cfg.model.path)
        else:
            model = build_model(cfg.model, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id,
                                tokenizer.pad_token_id)
        if model.get_input_embeddings().num_embeddings < len(tokenizer):
            model.resize_token_embeddings(len(tokenizer))
    model = with_lora(model, cfg.model.lora, "causal_lm", checkpoint, cfg.train.seed)
    data = PackedBlocks(train_blocks, val_blocks, cfg.train.batch_size, cfg.train.seed)
    log(f"{STAGE}: {describe(model)}, {len(train_docs):,} documents, "
        f"{data.tokens:,} training tokens in {train_blocks.shape[0]:,} blocks of {cfg.data.seq_len}")

    prompts = [""] if cfg.data.path else None
    result = train_language_model(
        stage=STAGE, stage_dir=stage_dir, model=model, tokenizer=tokenizer, data=data, cfg=cfg.train,
        resume_state=state, sample_fn=sample_fn_for(run, tokenizer, cfg.train, prompts), log=log)
    record_finished(run, STAGE, inputs, result.final_dir, cache, final=str(result.final_dir),
                    val_loss=result.val_loss)
    log(f"{STAGE}: done in {result.wall_s:.0f}s; checkpoint in {result.final_dir}")
    return result
