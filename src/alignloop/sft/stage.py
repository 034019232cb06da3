"""`alignloop sft`: fine-tune a checkpoint on prompt/response pairs into `sft/final/`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

from alignloop.data.lm_batches import SupervisedPairs, build_supervised_example, read_supervised_records
from alignloop.data.split import split_indices
from alignloop.errors import DataError
from alignloop.models.causal_lm import check_checkpoint_dir, load_causal_lm
from alignloop.models.lora import describe, with_lora
from alignloop.provenance import DONE, DigestCache, StageInputs, plan_stage, record_finished, record_started
from alignloop.runs import RunDir
from alignloop.sft.config import SFTConfig
from alignloop.stages import builtin_data, sample_fn_for
from alignloop.tokenizer import load_tokenizer
from alignloop.train import distributed
from alignloop.train.checkpoints import latest_checkpoint, load_training_state
from alignloop.train.lm_loop import LoopResult, train_language_model
from alignloop.train.ptx import open_pretrain_mix

STAGE = "sft"


def start_checkpoint(run: RunDir, path: str | None) -> Path:
    """The checkpoint SFT starts from: explicit, else this run's pretraining result."""
    if path:
        return Path(path)
    final = run.final("pretrain")
    if not final.exists():
        raise DataError(f"no model to fine-tune: {final} does not exist; run `alignloop pretrain --run {run.root}` "
                        f"first or set model.path")
    return final


def default_sft_data(run: RunDir, log) -> Path:
    """The built-in story pairs, made with the same settings as this run's built-in corpus."""
    corpus = run.read_configs().get("pretrain", {}).get("data", {})
    return builtin_data(run, corpus.get("stories", 20000), corpus.get("seed", 0), log)["sft"]


def run_sft(run: RunDir, cfg: SFTConfig, log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
            force: bool = False) -> LoopResult | None:
    """Run (or resume, or skip if finished) supervised fine-tuning; returns None when skipped.

    A finished or half-done SFT made from other inputs (settings, start checkpoint, data) is refused unless
    `force`, which starts over.
    """
    distributed.start(cfg.train.device)  # under a launcher, join the other processes before touching files
    start = check_checkpoint_dir(start_checkpoint(run, cfg.model.path))
    data_path = Path(cfg.data.path) if cfg.data.path else default_sft_data(run, log)
    return fine_tune(run, cfg, key=STAGE, stage_dir=run.stage_dir(STAGE), final=run.final(STAGE), start=start,
                     data_path=data_path, new_run_hint="use a new --run directory", log=log, force=force)


def fine_tune(run: RunDir, cfg: SFTConfig, *, key: str, stage_dir: Path, final: Path, start: Path, data_path: Path,
              new_run_hint: str, log: Callable[[str], None], force: bool = False) -> LoopResult | None:
    """Fine-tune `start` on the prompt/response pairs of `data_path` as manifest stage `key`: checkpoints in
    `stage_dir`, the model in `final`. SFT itself, and the loop's best-of-n distillation (`alignloop.loop.distill`).

    Skipped (None) when done from the same inputs; resumed from `stage_dir`'s newest checkpoint; refused
    (unless `force`, which starts over) when finished or half-done work came from other inputs.
    """
    cache = DigestCache.for_run(run)
    inputs = StageInputs.of(cfg, exclude=("model.path", "data.path"))
    inputs.add_artifact("start", start, cache).add_artifact("data", data_path, cache)
    plan = plan_stage(run, key, inputs, final=final, work=[stage_dir / "checkpoints"], force=force,
                      log=log, new_run_hint=new_run_hint, cache=cache)
    if plan.action == DONE:
        log(f"{key}: already finished ({final}); nothing to do")
        return None
    pairs = read_supervised_records(data_path)

    checkpoint = latest_checkpoint(stage_dir)
    source = checkpoint or start
    tokenizer = load_tokenizer(source)
    if cfg.model.lora.enabled:  # a LoRA checkpoint holds the adapter: the frozen base is the start checkpoint
        model = with_lora(load_causal_lm(start), cfg.model.lora, "causal_lm", checkpoint, cfg.train.seed)
    else:
        model = load_causal_lm(source)
    state = load_training_state(checkpoint) if checkpoint else None

    train_ids, val_ids = split_indices(len(pairs), cfg.data.val_fraction, cfg.data.seed)
    examples = [build_supervised_example(tokenizer, prompt, response, cfg.data.max_len, ended)
                for prompt, response, ended in pairs]
    data = SupervisedPairs([examples[i] for i in train_ids], [examples[i] for i in val_ids], cfg.train.batch_size,
                           tokenizer.pad_token_id, cfg.train.seed)
    stage = key.split(":")[0]
    log(f"{stage}: {len(train_ids):,} training and {len(val_ids):,} validation pairs from {data_path}; "
        f"starting from {source}; {describe(model)}")

    run.record_config(stage, cfg)
    record_started(run, key, inputs)
    prompts = [p for p, *_ in pairs[: cfg.train.samples]] or None
    mix = open_pretrain_mix(run, cfg.ptx, tokenizer, log)
    result = train_language_model(
        stage=stage, stage_dir=stage_dir, model=model, tokenizer=tokenizer, data=data, cfg=cfg.train,
        resume_state=state, sample_fn=sample_fn_for(run, tokenizer, cfg.train, prompts), log=log, final_dir=final,
        mix=mix, mix_coef=cfg.ptx.coef)
    record_finished(run, key, inputs, result.final_dir, cache, final=str(result.final_dir), val_loss=result.val_loss)
    log(f"{stage}: done in {result.wall_s:.0f}s; checkpoint in {result.final_dir}")
    return result
