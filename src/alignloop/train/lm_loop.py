"""The training loop of a causal language model, shared by pretraining and SFT.

Read it top to bottom: batch, forward, backward, clip, step, log, evaluate,
checkpoint. The data decides what the loss covers (labels of -100 are
ignored), so pretraining (every token) and SFT (response tokens only) run the
same loop. Batches are a pure function of the step, so a resumed run sees
exactly the data the uninterrupted run would have seen.

Under a launcher (torchrun, accelerate launch) each process takes its share
of every batch (`train.batch_size` stays the global batch) and the loss is
normalised by the global token count (`alignloop.train.distributed`), so N
processes take the same steps as one.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import torch

from alignloop.errors import TrainingError
from alignloop.train import distributed
from alignloop.train.checkpoints import restore_rng_state, save_final, save_training_checkpoint
from alignloop.train.config import TrainConfig
from alignloop.train.crash import crash_point
from alignloop.train.device import autocast, precision_scope, route_cpu_products
from alignloop.train.metrics import MetricsLog
from alignloop.train.progress import StepTimer, training_progress
from alignloop.train.ptx import PretrainMix, mix_backward
from alignloop.train.schedule import capped_warmup_logged, learning_rate


class BatchSource(Protocol):
    """Training batches addressed by index, and a fixed validation pass."""

    def train_batch(self, index: int) -> dict[str, torch.Tensor]: ...

    def val_batches(self, limit: int) -> list[dict[str, torch.Tensor]]: ...


@dataclass
class LoopResult:
    final_dir: Path
    steps: int
    val_loss: float | None
    tokens_per_s: float
    wall_s: float


def backward_checked(loss: torch.Tensor, stage: str, step: int, stage_dir: Path) -> float:
    """Backpropagate this rank's share of a micro-batch loss; returns the loss summed over ranks.

    The sum is what every rank checks, so all stop together on a NaN or inf
    (with a one-line error that says the last checkpoint is intact) instead
    of one rank hanging in the next collective.
    """
    reported = distributed.all_reduce_sum([float(loss.detach())])[0]
    if not math.isfinite(reported):
        raise TrainingError(f"{stage}: loss became {reported} at step {step + 1}; lower train.lr "
                            f"(the last checkpoint in {stage_dir / 'checkpoints'} is intact)")
    distributed.backward(loss * distributed.gradient_scale())
    return reported


def make_optimizer(model, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (norm gains and biases are not decayed)."""
    decay, no_decay, seen = [], [], set()
    for parameter in model.parameters():
        if not parameter.requires_grad or id(parameter) in seen:
            continue
        seen.add(id(parameter))
        (decay if parameter.dim() >= 2 else no_decay).append(parameter)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def target_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Tokens that carry loss: each label after the first that is not -100 (the model shifts by one)."""
    return int((batch["labels"][:, 1:] != -100).sum())


@torch.no_grad()
def evaluate_loss(model, batches: list[dict[str, torch.Tensor]], device: torch.device) -> float:
    """Mean token loss over validation batches, weighted by their counted tokens.

    With several processes each scores its share of every batch with the
    unwrapped model (no collective inside, so shares may differ in size) and
    the sums are added up.
    """
    model = distributed.unwrap(model)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with distributed.full_params(model):  # shares may differ in size (or be empty): no collective inside
        for batch in batches:
            if distributed.world_size() > 1:
                rows = distributed.uneven_slice(batch["input_ids"].shape[0])
                batch = {key: value[rows] for key, value in batch.items()}
                if batch["input_ids"].shape[0] == 0:
                    continue
            batch = _to(batch, device)
            with autocast(device):
                loss = model(**batch).loss
            tokens = target_tokens(batch)
            total += float(loss) * tokens
            count += tokens
    model.train(was_training)
    total, count = distributed.all_reduce_sum([total, count])
    return total / max(count, 1)


def micro_batch_loss(model, batch: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
    """This process's part of the global token-mean loss of a micro-batch (the loss itself alone).

    Each rank's token mean is weighted by its share of the global target
    tokens, so the ranks' parts add up to the mean over the whole batch
    however the tokens fall (see `alignloop.train.distributed`).
    """
    tokens = target_tokens(batch)
    share = distributed.global_share(tokens)
    with autocast(device):
        output = model(**batch)
    if tokens == 0 and distributed.world_size() > 1:
        # A share with no target: the model's loss is 0/0; it adds nothing, but DDP still needs a graph.
        return output.logits.sum() * 0.0
    return output.loss * share


def _status(loss: float, lr: float, tokens_per_s: float) -> str:
    return f"loss {loss:.3f}  lr {lr:.2e}  {tokens_per_s:,.0f} tok/s"


def train_language_model(*, stage: str, stage_dir: Path, model, tokenizer, data: BatchSource, cfg: TrainConfig,
                         resume_state: dict[str, Any] | None = None,
                         sample_fn: Callable[[Any], list[str]] | None = None,
                         log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
                         final_dir: Path | None = None, mix: PretrainMix | None = None,
                         mix_coef: float = 0.0) -> LoopResult:
    """Train `model` on `data` for `cfg.max_steps`, checkpointing into `stage_dir`; write `final/`
    (`stage_dir/final`, or `final_dir`).

    `model` may carry LoRA adapters (`alignloop.models.lora`): then only they train, checkpoints hold
    them alone, and `final/` is the merged model. `mix`: pretraining text whose next-token loss, times
    `mix_coef`, joins every micro-batch's (`alignloop.train.ptx`).
    """
    device = distributed.start(cfg.device)
    with precision_scope(device, cfg.precision):
        return _train(stage=stage, stage_dir=stage_dir, model=model, tokenizer=tokenizer, data=data, cfg=cfg,
                      device=device, resume_state=resume_state, sample_fn=sample_fn, log=log,
                      final_dir=final_dir or stage_dir / "final", mix=mix if mix_coef > 0 else None,
                      mix_coef=mix_coef)


def _train(*, stage: str, stage_dir: Path, model, tokenizer, data: BatchSource, cfg: TrainConfig,
           device: torch.device, resume_state: dict[str, Any] | None, sample_fn, log, final_dir: Path,
           mix: PretrainMix | None, mix_coef: float) -> LoopResult:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model.to(device)
    route_cpu_products(model, device)
    if cfg.gradient_checkpointing:
        from alignloop.models.memory import enable_gradient_checkpointing

        enable_gradient_checkpointing(model)
    model.train()
    optimizer = make_optimizer(model, cfg)
    start_step = 0
    model, optimizer = distributed.prepare(model, optimizer)
    if resume_state is not None:
        distributed.load_optimizer_state(optimizer, resume_state["optimizer"])  # after prepare: FSDP's shards
        restore_rng_state(resume_state["rng"])
        start_step = int(resume_state["step"])
        log(f"{stage}: resuming from step {start_step}")
    else:
        torch.manual_seed(cfg.seed)
    metrics = MetricsLog(stage_dir / "metrics.jsonl", resume_step=start_step if resume_state else None)

    warmup = capped_warmup_logged(cfg.warmup_steps, cfg.max_steps, stage, "train.warmup_steps", log)
    started = time.monotonic()
    tokens_seen, val_loss, step = 0, None, start_step
    window_tokens, window_start = 0, time.monotonic()
    interactive = sys.stderr.isatty()
    timer = StepTimer(cfg.max_steps, start_step)
    with training_progress(stage) as progress:
        task = progress.add_task(stage, total=cfg.max_steps, completed=start_step, status="")
        for step in range(start_step, cfg.max_steps):
            lr = learning_rate(step, cfg.max_steps, cfg.lr, warmup, cfg.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            step_loss, ptx_loss = 0.0, 0.0
            for micro in range(cfg.grad_accum):
                batch = data.train_batch(step * cfg.grad_accum + micro)
                batch = _to(distributed.shard_batch(batch, "train.batch_size"), device)
                loss = micro_batch_loss(model, batch, device) / cfg.grad_accum
                step_loss += backward_checked(loss, stage, step, stage_dir)
                if mix is not None:
                    ptx_loss += mix_backward(model, mix, mix_coef / cfg.grad_accum, device, f"{stage} step {step + 1}")
                window_tokens += int(batch["attention_mask"].sum()) if "attention_mask" in batch \
                    else batch["input_ids"].numel()
            grad_norm = distributed.clip_grad_norm(model, cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            done = step + 1
            progress.update(task, completed=done)  # every step, so the bar and its ETA move

            if done % cfg.log_every == 0 or done == cfg.max_steps:
                elapsed = max(time.monotonic() - window_start, 1e-9)
                tokens_per_s = distributed.all_reduce_sum([window_tokens / elapsed])[0]
                tokens_seen += window_tokens
                window_tokens, window_start = 0, time.monotonic()
                extra = {"ptx_loss": ptx_loss / cfg.grad_accum} if mix is not None else {}
                metrics.log(done, loss=step_loss, lr=lr, grad_norm=grad_norm, tokens_per_s=tokens_per_s, **extra)
                progress.update(task, status=_status(step_loss, lr, tokens_per_s))
                if not interactive and timer.line_due(done, cfg.log_every * 10):
                    log(f"{stage} step {done}/{cfg.max_steps}  {_status(step_loss, lr, tokens_per_s)}  "
                        f"{timer.eta(done)}")

            out_of_time = cfg.max_minutes is not None and (time.monotonic() - started) / 60 >= cfg.max_minutes
            if cfg.max_minutes is not None:
                out_of_time = distributed.broadcast_object(out_of_time)  # every rank stops at the same step
            last = done == cfg.max_steps or out_of_time
            if done % cfg.eval_every == 0 or last:
                val_loss = evaluate_loss(model, data.val_batches(cfg.eval_batches), device)
                perplexity = math.exp(min(val_loss, 50))
                metrics.log(done, val_loss=val_loss, val_perplexity=perplexity)
                log(f"{stage} step {done}: validation loss {val_loss:.4f}, perplexity {perplexity:.2f}")
                if sample_fn is not None and cfg.samples:
                    with distributed.full_params(model):  # every process gathers; rank 0 samples alone
                        for text in sample_fn(distributed.unwrap(model)) if distributed.is_main() else []:
                            log(f"  sample: {text}")
            # The last step is saved too, so a rerun with a larger max_steps continues from it.
            if done % cfg.save_every == 0 or last:
                save_training_checkpoint(stage_dir, done, model, tokenizer, optimizer, keep_last=cfg.keep_last)
                crash_point(f"{stage}:saved:{done}")
            if out_of_time:
                log(f"{stage}: stopping at step {done} after {cfg.max_minutes} minutes (train.max_minutes)")
                break
    metrics.close()
    wall = time.monotonic() - started
    save_final(final_dir, model, tokenizer)
    return LoopResult(final_dir=final_dir, steps=step + 1 if cfg.max_steps > start_step else start_step,
                      val_loss=val_loss, tokens_per_s=tokens_seen / max(wall, 1e-9), wall_s=wall)
