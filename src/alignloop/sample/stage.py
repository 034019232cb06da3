"""`alignloop sample`: K responses per prompt from a checkpoint, into `rounds/NNN/samples.jsonl` and the store.

Crash safety: the responses are written to samples.jsonl atomically first, then
loaded into the store in one transaction. A rerun after a crash reuses the
file (no resampling) and loads it only if the round holds no items yet.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable

import torch
from sqlalchemy import func, select

from alignloop import atomic
from alignloop.errors import DataError
from alignloop.feedback import open_store
from alignloop.feedback.models import Item, Round
from alignloop.generation.text import complete
from alignloop.models.causal_lm import load_causal_lm
from alignloop.runs import RunDir, round_stage_key
from alignloop.sample.config import SampleConfig
from alignloop.stages import builtin_paths, read_prompts
from alignloop.tokenizer import load_tokenizer
from alignloop.train.crash import crash_point
from alignloop.train.device import pick_device


def round_items(store, number: int) -> int | None:
    """Items already loaded for round `number`, or None if the round does not exist."""
    with store.read() as session:
        round_id = session.scalar(select(Round.id).where(Round.number == number))
        if round_id is None:
            return None
        return session.scalar(select(func.count(Item.id)).where(Item.round_id == round_id)) or 0


def next_round_number(store) -> int:
    with store.read() as session:
        return (session.scalar(select(func.max(Round.number))) or 0) + 1


def sampling_settings(cfg: SampleConfig) -> dict:
    sampling = cfg.sampling
    return {"k": cfg.k, "max_new_tokens": sampling.max_new_tokens, "temperature": sampling.temperature,
            "top_p": sampling.top_p, "top_k": sampling.top_k, "seed": cfg.seed,
            **({"min_new_tokens": sampling.min_new_tokens} if sampling.min_new_tokens else {})}


def sample_responses(checkpoint: Path, prompts: list[str], cfg: SampleConfig,
                     log: Callable[[str], None]) -> list[dict]:
    """`{"prompt", "responses"}` records: K sampled continuations of every prompt."""
    model = load_causal_lm(checkpoint).to(pick_device(cfg.device)).eval()
    tokenizer = load_tokenizer(checkpoint)
    repeated = [p for p in prompts for _ in range(cfg.k)]
    responses: list[str] = []
    sampling = cfg.sampling
    chunk = max(sampling.batch_size, 1) * 4
    for start in range(0, len(repeated), chunk):
        responses += complete(model, tokenizer, repeated[start:start + chunk], max_new_tokens=sampling.max_new_tokens,
                              temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
                              seed=cfg.seed + start, batch_size=sampling.batch_size,
                              min_new_tokens=sampling.min_new_tokens)
        log(f"sample: {min(start + chunk, len(repeated)):,}/{len(repeated):,} responses")
    return [{"prompt": p, "responses": responses[i * cfg.k:(i + 1) * cfg.k]} for i, p in enumerate(prompts)]


def run_sample(run: RunDir, cfg: SampleConfig, checkpoint: Path, db: str | None = None,
               log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> dict:
    """Sample, write samples.jsonl, load the items; returns a summary (round, prompts, items)."""
    prompt_file = Path(cfg.prompts.path) if cfg.prompts.path else builtin_paths(run)["prompts"]
    prompts = read_prompts(prompt_file, cfg.prompts.field, cfg.prompts.limit)
    if cfg.item_kind in ("pair", "ranking") and cfg.k < 2:
        raise DataError(f"item_kind={cfg.item_kind} needs k >= 2 responses per prompt")
    store = open_store(db or run.feedback_db)
    try:
        number = cfg.round or next_round_number(store)
        loaded = round_items(store, number)
        if loaded:
            log(f"sample: round {number} already holds {loaded} items; nothing to do")
            return {"round": number, "prompts": len(prompts), "items": loaded, "skipped": True}
        samples_path = run.round_dir(number) / "samples.jsonl"
        run.record_config("sample", cfg)
        if samples_path.exists():
            log(f"sample: reusing {samples_path} written before an interruption")
            records = [json.loads(line) for line in samples_path.read_text(encoding="utf-8").splitlines() if line]
        else:
            log(f"sample: {cfg.k} responses for each of {len(prompts):,} prompts from {checkpoint}")
            torch.manual_seed(cfg.seed)
            records = sample_responses(checkpoint, prompts, cfg, log)
            settings = sampling_settings(cfg)
            for record in records:
                record.update({"model": str(checkpoint), "sampling": settings})
            atomic.write_text(samples_path, "".join(json.dumps(r) + "\n" for r in records))
            crash_point("sample:written")
        round_id = store.round_id(number) if loaded is not None else store.create_round(
            f"round {number}", model_name=str(checkpoint), sampling=sampling_settings(cfg), number=number)
        items = store.add_samples(round_id, records, cfg.item_kind, model_name=str(checkpoint),
                                  sampling=sampling_settings(cfg), overlap=cfg.overlap,
                                  pairs_per_prompt=cfg.pairs_per_prompt, seed=cfg.seed)
        run.mark_stage(round_stage_key("sample", number), "done", items=len(items))
        log(f"sample: round {number}: {len(items):,} {cfg.item_kind} items from {len(records):,} prompts "
            f"in {db or run.feedback_db}")
        return {"round": number, "prompts": len(records), "items": len(items), "skipped": False}
    finally:
        store.close()
