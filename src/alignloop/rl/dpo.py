"""`alignloop dpo`: direct preference optimisation, offline, from the feedback export.

DPO (Rafailov et al. 2023) skips the reward model and the rollouts: it fits
the policy directly to the preference pairs, with the loss of
`alignloop.rl.losses.dpo_loss` on the summed log-probs of the chosen and the
rejected response under the policy and under the frozen reference. The
reference's log-probs never change, so they are computed once up front.

Pairs come from the run's feedback store (majority vote per pair, ties
dropped) or from a JSONL file read as the reward stage reads one: TRL's
`{"prompt", "chosen", "rejected"}`, Anthropic HH `{"chosen", "rejected"}`
transcripts, or rich records. Prompt and response are tokenized as everywhere else
(`alignloop.data.formatting`). Batches are a pure function of the step, so a
resumed run sees the same data. The policy goes to `rounds/NNN/dpo/final/`.

Under a launcher (torchrun, accelerate launch) each process takes an equal
share of every batch's pairs (`dpo.batch_size` stays the global batch); the
loss is a mean over pairs, so the gradient averaging over processes gives the
global batch's mean. The reference pass and the held-out evaluation run on
every process alike.
"""

from __future__ import annotations

import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from alignloop.data.formatting import encode_prompt, encode_response
from alignloop.errors import DataError, TrainingError
from alignloop.generation.logprobs import sequence_logprobs
from alignloop.models.lora import describe
from alignloop.provenance import DONE, DigestCache, StageInputs, digest_json, record_finished, record_started
from alignloop.rl.config import DPOConfig, PreferenceDataConfig
from alignloop.rl.inputs import (
    load_policy_and_reference,
    plan_round_stage,
    resolve_models,
    resolve_round,
    stage_inputs,
)
from alignloop.rl.losses import dpo_loss, implicit_reward_accuracy
from alignloop.rl.state import freeze
from alignloop.runs import RunDir, round_stage_key
from alignloop.tokenizer import load_tokenizer
from alignloop.train import distributed
from alignloop.train.checkpoints import (
    latest_checkpoint,
    load_training_state,
    restore_rng_state,
    save_final,
    save_training_checkpoint,
)
from alignloop.train.crash import crash_point
from alignloop.train.device import autocast, precision_scope, route_cpu_products
from alignloop.train.metrics import MetricsLog
from alignloop.train.progress import StepTimer
from alignloop.train.schedule import capped_warmup_logged, learning_rate

STAGE = "dpo"


def stage_key(round_number: int) -> str:
    return round_stage_key(STAGE, round_number)


# ---------------------------------------------------------------------------
# Data


def read_preference_pairs(run: RunDir, cfg: PreferenceDataConfig, log: Callable[[str], None] = lambda m: None
                          ) -> tuple[list[tuple[str, str, str]], str]:
    """The preference pairs and where they came from: a JSONL file, or the feedback store.

    A file is read as the reward stage reads it (`alignloop.reward.data.read_preference_file`):
    TRL, Anthropic HH transcripts or rich records, one per line, gzip or not; ties are dropped.
    """
    if cfg.path:
        from alignloop.reward.data import read_preference_file

        prefs = read_preference_file(cfg.path)
        if prefs.skipped:
            log(f"{STAGE}: {prefs.skipped_summary()}")
        pairs, source = [(c.prompt, c.chosen, c.rejected) for c in prefs.comparisons], cfg.path
    else:
        from alignloop.feedback import open_store

        target = cfg.store or str(run.feedback_db)
        if not cfg.store and not run.feedback_db.exists():
            raise DataError(f"no preferences: {run.feedback_db} does not exist; collect feedback first "
                            f"(`alignloop sample`, `alignloop annotate`) or set data.path")
        with open_store(target) as store:
            round_id = store.round_id(cfg.feedback_round) if cfg.feedback_round else None
            records = store.preference_records(round_id=round_id, aggregate="majority", ties="drop")
        pairs = [(r["prompt"], r["chosen"], r["rejected"]) for r in records]
        source = f"{target} (majority vote, ties dropped)"
    pairs = [p for p in pairs if p[1] != p[2]]
    if not pairs:
        raise DataError(f"no usable preference pairs in {source}")
    return pairs, source


@dataclass
class EncodedPair:
    prompt: list[int]
    chosen: list[int]
    rejected: list[int]


def _fit(prompt: list[int], response: list[int], max_len: int) -> tuple[list[int], list[int]]:
    """Cut the prompt's start (keeping its first token, BOS), then the response's end, to fit `max_len`."""
    keep_prompt = max(1, min(len(prompt), max_len // 2))
    response = response[: max_len - min(len(prompt), keep_prompt)]
    room = max_len - len(response)
    if len(prompt) > room:
        prompt = prompt[:1] + prompt[len(prompt) - (room - 1):] if room > 1 else prompt[:1]
    return prompt, response


def encode_pairs(tokenizer, pairs: list[tuple[str, str, str]], max_len: int) -> list[EncodedPair]:
    """Token ids of each pair, both responses after one shared prompt, every row at most `max_len`."""
    encoded = []
    for prompt, chosen, rejected in pairs:
        prompt_ids = encode_prompt(tokenizer, prompt)
        fitted = [_fit(prompt_ids, encode_response(tokenizer, prompt, r), max_len) for r in (chosen, rejected)]
        shared_prompt = min((f[0] for f in fitted), key=len)  # the shorter cut fits both rows
        encoded.append(EncodedPair(shared_prompt, fitted[0][1], fitted[1][1]))
    return encoded


def collate(pairs: list[EncodedPair], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Chosen rows then rejected rows, right-padded: ids, mask, and where each row's response starts."""
    rows = [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs]
    width = max(len(a) + len(b) for a, b in rows)
    ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    starts = torch.zeros(len(rows), dtype=torch.long)
    for i, (prompt, response) in enumerate(rows):
        sequence = prompt + response
        ids[i, :len(sequence)] = torch.tensor(sequence)
        mask[i, :len(sequence)] = 1
        starts[i] = len(prompt)
    return {"input_ids": ids, "attention_mask": mask, "response_start": starts}


def summed_logprobs(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """log pi(response | prompt) per row [2B]: the response tokens' log-probs, summed."""
    return sequence_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["response_start"]).sum(-1)


@torch.no_grad()
def reference_logprobs(reference, pairs: list[EncodedPair], pad_token_id: int, batch_size: int,
                       device: torch.device) -> torch.Tensor:
    """[N, 2]: the reference's summed log-probs of (chosen, rejected) for every pair, computed once."""
    out = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        batch = {k: v.to(device) for k, v in collate(chunk, pad_token_id).items()}
        with autocast(device):
            both = summed_logprobs(reference, batch).float()
        out.append(torch.stack([both[:len(chunk)], both[len(chunk):]], dim=-1).cpu())
    return torch.cat(out)


def batch_rows(step: int, batch_size: int, n: int, seed: int) -> list[int]:
    """The pair indices of optimizer step `step`: epochs of seeded shuffles, a pure function of the step."""
    rows = []
    for position in range(step * batch_size, (step + 1) * batch_size):
        epoch, offset = divmod(position, n)
        order = list(range(n))
        random.Random(f"alignloop-dpo:{seed}:{epoch}").shuffle(order)
        rows.append(order[offset])
    return rows


# ---------------------------------------------------------------------------
# Training


def dpo_step_loss(policy, pairs: list[EncodedPair], ref: torch.Tensor, cfg: DPOConfig, pad_token_id: int,
                  device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
    """The DPO loss of a micro-batch (with grad) and its statistics."""
    batch = {k: v.to(device) for k, v in collate(pairs, pad_token_id).items()}
    with autocast(device):
        both = summed_logprobs(policy, batch).float()
    n = len(pairs)
    ref = ref.to(device)
    loss, chosen_rewards, rejected_rewards = dpo_loss(both[:n], both[n:], ref[:, 0], ref[:, 1], cfg.dpo.beta,
                                                      cfg.dpo.label_smoothing)
    # Margins the four float32 sums cannot resolve (a few ulps of their size) are ties, not preferences.
    magnitude = both[:n].detach().abs() + both[n:].detach().abs() + ref[:, 0].abs() + ref[:, 1].abs()
    resolution = cfg.dpo.beta * 8 * torch.finfo(torch.float32).eps * magnitude
    return loss, {"loss": float(loss.detach()),
                  "reward_accuracy": float(implicit_reward_accuracy(chosen_rewards, rejected_rewards, resolution)),
                  "reward_margin": float((chosen_rewards - rejected_rewards).mean()),
                  "chosen_reward": float(chosen_rewards.mean()), "rejected_reward": float(rejected_rewards.mean())}


@torch.no_grad()
def evaluate_pairs(policy, pairs: list[EncodedPair], ref: torch.Tensor, cfg: DPOConfig, pad_token_id: int,
                   device: torch.device) -> dict[str, float]:
    """Loss and implicit-reward accuracy on held-out pairs."""
    totals: dict[str, float] = {}
    for start in range(0, len(pairs), cfg.dpo.batch_size):
        chunk = pairs[start:start + cfg.dpo.batch_size]
        _, stats = dpo_step_loss(policy, chunk, ref[start:start + len(chunk)], cfg, pad_token_id, device)
        for key, value in stats.items():
            totals[key] = totals.get(key, 0.0) + value * len(chunk)
    return {f"val_{k}": v / len(pairs) for k, v in totals.items()}


def run_dpo(run: RunDir, cfg: DPOConfig, log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
            force: bool = False, final: Optional[Path] = None) -> Path | None:
    """Run (or resume, or skip if finished) DPO; the policy goes to rounds/NNN/dpo/final (or `final`: the
    loop's rounds/NNN/policy/final)."""
    round_number = resolve_round(run, cfg.run.round)
    paths = resolve_models(run, cfg.models, round_number, need_reward=False)
    pairs, source = read_preference_pairs(run, cfg.data, log)
    stage_dir = run.round_dir(round_number) / STAGE
    final = final or stage_dir / "final"
    cache = DigestCache.for_run(run)
    inputs = stage_inputs(cfg, paths, cache).add_value("data", digest_json(pairs), f"{len(pairs)} pairs from {source}")
    plan = plan_round_stage(run, stage_key(round_number), inputs, round_number, stage_dir, final, force, log, cache)
    if plan.action == DONE:
        log(f"{STAGE}: round {round_number} already finished ({final}); nothing to do")
        return None
    run.record_config(STAGE, cfg)

    device = distributed.start(cfg.run.device)
    distributed.local_slice(cfg.dpo.batch_size, "dpo.batch_size")  # a clear error now if it does not split evenly
    with precision_scope(device, cfg.run.precision, "run.precision"):
        return _train(run, cfg, round_number, paths, pairs, source, stage_dir, final, inputs, device, log)


def _train(run: RunDir, cfg: DPOConfig, round_number: int, paths, pairs: list[tuple[str, str, str]], source: str,
           stage_dir: Path, final: Path, inputs: StageInputs, device: torch.device, log: Callable[[str], None]
           ) -> Path:
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    checkpoint = latest_checkpoint(stage_dir)
    source_model = checkpoint or paths.policy
    tokenizer = load_tokenizer(source_model)
    policy, reference = load_policy_and_reference(paths, checkpoint, cfg.models.lora, device,
                                                  cfg.run.gradient_checkpointing, cfg.run.seed)
    policy.eval()  # dropout off, as in the reference pass
    freeze(reference)
    for model in (policy, reference):
        route_cpu_products(model, device)

    order = list(range(len(pairs)))
    random.Random(cfg.run.seed).shuffle(order)
    n_val = int(round(len(pairs) * cfg.data.val_fraction))
    encoded = encode_pairs(tokenizer, [pairs[i] for i in order], cfg.data.max_len)
    train, val = encoded[n_val:], encoded[:n_val]
    if not train:
        raise DataError(f"no training pairs left after holding out {n_val}; lower data.val_fraction")
    pad = tokenizer.pad_token_id
    ref_train = reference_logprobs(reference, train, pad, cfg.dpo.batch_size, device)
    ref_val = reference_logprobs(reference, val, pad, cfg.dpo.batch_size, device) if val else None
    steps = cfg.dpo.epochs * -(-len(train) // cfg.dpo.batch_size)
    log(f"{STAGE}: {len(train):,} training and {len(val):,} held-out pairs from {source}; {steps} steps; "
        f"policy {source_model}, reference {paths.reference}; {describe(policy)}")

    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=cfg.dpo.lr,
                                  weight_decay=cfg.dpo.weight_decay)
    start = 0
    policy, optimizer = distributed.prepare(policy, optimizer)
    if checkpoint is not None:
        saved = load_training_state(checkpoint)
        distributed.load_optimizer_state(optimizer, saved["optimizer"])  # after prepare: FSDP's shards
        restore_rng_state(saved["rng"])
        start = int(saved["step"])
        log(f"{STAGE}: resuming from step {start}")
    record_started(run, stage_key(round_number), inputs)
    metrics = MetricsLog(stage_dir / "metrics.jsonl", resume_step=start if start else None)
    started = time.monotonic()
    timer = StepTimer(steps, start)
    stats: dict[str, float] = {}
    warmup = capped_warmup_logged(cfg.dpo.warmup_steps, steps, STAGE, "dpo.warmup_steps", log)
    for step in range(start, steps):
        lr = learning_rate(step, steps, cfg.dpo.lr, warmup, 0.1)
        for group in optimizer.param_groups:
            group["lr"] = lr
        rows = distributed.shard_list(batch_rows(step, cfg.dpo.batch_size, len(train), cfg.run.seed),
                                      "dpo.batch_size")
        micro = -(-len(rows) // cfg.dpo.grad_accum)
        optimizer.zero_grad(set_to_none=True)
        totals: dict[str, float] = {}
        for part in range(0, len(rows), micro):
            chunk = rows[part:part + micro]
            loss, part_stats = dpo_step_loss(policy, [train[i] for i in chunk], ref_train[chunk], cfg, pad, device)
            if not torch.isfinite(loss):
                raise TrainingError(f"{STAGE}: the loss became {float(loss)} at step {step + 1}; lower dpo.lr")
            # Equal shares of pairs: the averaging over processes turns this mean into the global one.
            distributed.backward(loss * len(chunk) / len(rows))
            for key, value in part_stats.items():
                totals[key] = totals.get(key, 0.0) + value * len(chunk) / len(rows)
        grad_norm = distributed.clip_grad_norm(policy, cfg.dpo.grad_clip)
        optimizer.step()
        done = step + 1
        stats = {**distributed.mean_across(totals), "lr": lr, "grad_norm": grad_norm}
        last = done == steps
        if val and last:
            with distributed.full_params(policy):  # every process evaluates all held-out pairs
                stats.update(evaluate_pairs(distributed.unwrap(policy), val, ref_val, cfg, pad, device))
        if done % cfg.run.log_every == 0 or last:
            metrics.log(done, **stats)
            log(f"{STAGE} step {done}/{steps}  loss {stats['loss']:.4f}  accuracy {stats['reward_accuracy']:.2f}  "
                f"margin {stats['reward_margin']:+.3f}" + (f"  held-out accuracy {stats['val_reward_accuracy']:.2f}"
                                                          if "val_reward_accuracy" in stats else "")
                + f"  {timer.eta(done)}")
        if done % cfg.run.save_every == 0 or last:
            save_training_checkpoint(stage_dir, done, policy, tokenizer, optimizer, keep_last=cfg.run.keep_last)
            crash_point(f"{STAGE}:saved:{done}")
    metrics.close()
    save_final(final, policy, tokenizer)
    record_finished(run, stage_key(round_number), inputs, final, final=str(final),
                    val_reward_accuracy=stats.get("val_reward_accuracy"))
    log(f"{STAGE}: done in {time.monotonic() - started:.0f}s; policy in {final}")
    return final
