"""`alignloop sample`: K responses per prompt from a checkpoint, into `rounds/NNN/samples.jsonl` and the store.

With `select.mode` uncertain or diverse (or a `select.budget`), the pairs that
become items are chosen among all pairs of each prompt's responses and listed,
with why, in `rounds/NNN/selection.jsonl` (see `alignloop.sample.selection`);
samples.jsonl still holds every sampled response.

Crash safety: the stage is recorded as running, the responses are written to
samples.jsonl atomically, then (with selection) the chosen pairs to
selection.jsonl, then loaded into the store in one transaction, then
recorded as done. A rerun after a crash reuses the file (no resampling), loads
it only if the round holds no items yet, and records a load that a crash cut
off from its record. Items in the store are never replaced.
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
from alignloop.provenance import (
    DONE,
    RESUME,
    DigestCache,
    StageInputs,
    StageInputsChanged,
    decide,
    plan_stage,
    record_finished,
    record_started,
)
from alignloop.runs import RunDir, round_stage_key
from alignloop.sample.config import SampleConfig
from alignloop.sample.selection import (
    SELECTION_FILE,
    add_selection_inputs,
    choose_pairs,
    plan_selection,
    read_selection,
    selected_records,
    selection_summary,
    write_selection,
)
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


def next_round_number(store, run: RunDir | None = None) -> int:
    """One past the newest round of the store and of the run directory (one counter for both)."""
    with store.read() as session:
        newest = session.scalar(select(func.max(Round.number))) or 0
    if run is not None:
        newest = max([newest, *run.round_numbers()])
    return newest + 1


def interrupted_round(run: RunDir) -> int | None:
    """A round whose sampling started and never finished (rerunning `sample` carries on with it)."""
    stages = run.read_manifest()["stages"]
    started = [number for number in run.round_numbers()
               if stages.get(round_stage_key("sample", number), {}).get("status") == "running"]
    return started[-1] if started else None


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


def _stage_inputs(cfg: SampleConfig, checkpoint: Path, prompt_file: Path, cache: DigestCache) -> StageInputs:
    inputs = StageInputs.of(cfg, exclude=("prompts.path",))
    return inputs.add_artifact("policy", checkpoint, cache).add_artifact("prompts", prompt_file, cache)


def _check_store_holds(run: RunDir, number: int, loaded: int | None, target) -> None:
    """Refuse a store that lost a round the manifest says was loaded into it (a replaced or emptied file)."""
    entry = run.read_manifest()["stages"].get(round_stage_key("sample", number), {})
    if entry.get("status") == "done" and not loaded:
        raise DataError(f"manifest.json says round {number}'s {entry.get('items', 'sampled')} items were loaded into "
                        f"{target}, but it holds none: the store was replaced or emptied; restore it from a backup "
                        f"or use a new run directory")


def _summary(selection, path: Path, rows: list[dict]) -> dict:
    """The manifest's record of how the round's pairs were chosen."""
    if selection is None:
        return {"mode": "random"}
    if not rows and path.exists():
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return selection_summary(selection, rows)


def run_sample(run: RunDir, cfg: SampleConfig, checkpoint: Path, db: str | None = None,
               log: Callable[[str], None] = lambda m: print(m, file=sys.stderr), force: bool = False) -> dict:
    """Sample, write samples.jsonl, load the items; returns a summary (round, prompts, items).

    Without `cfg.round` the items go to a new round (or to one whose sampling was interrupted). A round that
    already holds items sampled from other inputs is refused: items people may have judged are never replaced.
    """
    prompt_file = Path(cfg.prompts.path) if cfg.prompts.path else builtin_paths(run)["prompts"]
    prompts = read_prompts(prompt_file, cfg.prompts.field, cfg.prompts.limit)
    if cfg.item_kind in ("pair", "ranking") and cfg.k < 2:
        raise DataError(f"item_kind={cfg.item_kind} needs k >= 2 responses per prompt")
    target = db or run.feedback_db
    store = open_store(target)
    try:
        number = cfg.round or interrupted_round(run) or next_round_number(store, run)
        key = round_stage_key("sample", number)
        loaded = round_items(store, number)
        _check_store_holds(run, number, loaded, target)
        samples_path = run.round_dir(number) / "samples.jsonl"
        selection_path = run.round_dir(number) / SELECTION_FILE
        cache = DigestCache.for_run(run)
        inputs = _stage_inputs(cfg, checkpoint, prompt_file, cache)
        selection = plan_selection(run, cfg, number) if cfg.selects else None
        if selection is not None:
            add_selection_inputs(inputs, selection, cache)
        if loaded:
            entry = run.read_manifest()["stages"].get(key)
            plan = decide(entry, inputs, has_work=True, outputs_intact=True)
            if plan.action == "changed":
                why = "that this run did not sample" if not entry else f"sampled from other inputs ({'; '.join(plan.changes)})"
                raise StageInputsChanged(f"round {number} of {target} already holds {loaded} items {why}; items in the "
                                         f"store are never replaced: sample into a new round "
                                         f"(round={next_round_number(store, run)})")
            if plan.action != DONE:  # killed between loading the items and recording it
                record_finished(run, key, inputs, samples_path, cache, items=loaded,
                                select=_summary(selection, selection_path, []))
            log(f"sample: round {number} already holds {loaded} items; nothing to do")
            return {"round": number, "prompts": len(prompts), "items": loaded, "skipped": True}
        plan = plan_stage(run, key, inputs, final=samples_path, work=[samples_path, selection_path], force=force,
                          log=log,
                          new_run_hint=f"sample into a new round (round={next_round_number(store, run)})", cache=cache)
        run.record_config("sample", cfg)
        resumed = plan.action == RESUME and samples_path.exists()
        if resumed:
            log(f"sample: reusing {samples_path} written before an interruption")
            records = [json.loads(line) for line in samples_path.read_text(encoding="utf-8").splitlines() if line]
        else:
            record_started(run, key, inputs)
            log(f"sample: {cfg.k} responses for each of {len(prompts):,} prompts from {checkpoint}")
            torch.manual_seed(cfg.seed)
            records = sample_responses(checkpoint, prompts, cfg, log)
            settings = sampling_settings(cfg)
            for record in records:
                record.update({"model": str(checkpoint), "sampling": settings})
            atomic.write_text(samples_path, "".join(json.dumps(r) + "\n" for r in records))
            crash_point("sample:written")
        rows: list[dict] = []
        if selection is not None:
            if resumed and selection_path.exists():
                log(f"sample: reusing the pairs chosen before an interruption ({selection_path})")
                rows = read_selection(selection_path, records)
            else:
                if selection.note:
                    log(f"sample: select={selection.asked}: {selection.note}, so this round's pairs are drawn at random")
                rows = choose_pairs(records, cfg, selection, log)
                write_selection(selection_path, rows)
                crash_point("sample:selected")
        round_id = store.round_id(number) if loaded is not None else store.create_round(
            f"round {number}", model_name=str(checkpoint), sampling=sampling_settings(cfg), number=number)
        items = store.add_samples(round_id, selected_records(records, rows) if selection else records, cfg.item_kind,
                                  model_name=str(checkpoint), sampling=sampling_settings(cfg), overlap=cfg.overlap,
                                  pairs_per_prompt=cfg.pairs_per_prompt, seed=cfg.seed)
        crash_point("sample:loaded")
        record_finished(run, key, inputs, samples_path, cache, items=len(items),
                        select=_summary(selection, selection_path, rows))
        log(f"sample: round {number}: {len(items):,} {cfg.item_kind} items from {len(records):,} prompts "
            f"in {target}")
        return {"round": number, "prompts": len(records), "items": len(items), "skipped": False}
    finally:
        store.close()
