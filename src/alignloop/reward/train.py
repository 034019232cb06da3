"""The reward model's training loop: batch, score, loss, backward, clip, step, log, validate, checkpoint.

Read it top to bottom like the language-model loop it mirrors
(`alignloop.train.lm_loop`): batches are a pure function of the step, so a
resumed run sees the data the uninterrupted one would have; checkpoints carry
the optimizer, RNG and early-stopping state. Validation accuracy decides early
stopping, and the best model so far is kept in `best/`, which becomes `final/`.

Under a launcher (torchrun, accelerate launch) each process takes its share of
the preference groups of every batch (`train.batch_size` stays the global
batch) and its loss is weighted by its share of the batch's comparisons, so
the ranks together take the step one process would (`alignloop.train.distributed`).
Validation runs on every rank alike; rank 0's figures decide early stopping.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from alignloop.reward.config import RewardLossConfig, RewardTrainConfig
from alignloop.reward.data import MODEL_INPUTS, PACKED_INPUTS, EncodedGroup, PreferenceBatches
from alignloop.reward.debias import LengthInputs
from alignloop.reward.evaluate import preference_metrics, score_groups
from alignloop.reward.model import DEBIAS_KEY, MIN_STATS_RESPONSES, RewardModel, RewardStats
from alignloop.reward.objective import batch_objective
from alignloop.train import distributed
from alignloop.train.checkpoints import restore_rng_state, save_final, save_training_checkpoint
from alignloop.train.crash import crash_point
from alignloop.train.device import autocast, precision_scope, route_cpu_products
from alignloop.train.lm_loop import backward_checked, make_optimizer
from alignloop.train.metrics import MetricsLog
from alignloop.train.progress import StepTimer, training_progress
from alignloop.train.schedule import capped_warmup, capped_warmup_logged, learning_rate


@dataclass
class RewardTrainResult:
    steps: int
    val_accuracy: Optional[float]
    best_step: Optional[int]
    pairs_per_s: float
    wall_s: float
    stopped_early: bool


def total_steps(cfg: RewardTrainConfig, batches_per_epoch: int) -> int:
    """Optimizer steps: `epochs` passes (rounded up) capped by `max_steps`."""
    if cfg.epochs is None:
        return cfg.max_steps
    return max(1, min(cfg.max_steps, math.ceil(cfg.epochs * batches_per_epoch / cfg.grad_accum)))


def head_rewards(reward: RewardModel, encodings: Sequence[dict[str, list[int]]], batch_size: int = 32
                 ) -> torch.Tensor:
    """Every head's reward [N, heads] of tokenized responses (shortest first in batches; returned in order)."""
    from alignloop.reward.data import pad_batch

    order = sorted(range(len(encodings)), key=lambda i: len(encodings[i]["input_ids"]))
    out = torch.zeros((len(encodings), reward.num_heads))
    was_training = reward.training
    reward.eval()
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            chosen = order[start:start + batch_size]
            batch = pad_batch([encodings[i] for i in chosen], reward.tokenizer.pad_token_id)
            out[chosen] = reward.heads(**{k: v.to(reward.device) for k, v in batch.items()}).float().cpu()
    reward.train(was_training)
    return out


def reward_stats(reward: RewardModel, groups: Sequence[EncodedGroup], limit: int, batch_size: int = 32,
                 spread_groups: Sequence[EncodedGroup] = ()) -> RewardStats:
    """Mean and std of the rewards of (up to `limit`) responses in `groups`, the normalisation for PPO: of the
    model's reward and (with several heads) of each head; and the 95th percentile of the heads' spread on the
    responses of `spread_groups` (the validation split), the yardstick of RL's `ood_fraction`."""
    from alignloop.reward.uncertainty import normalise_estimates, spread_q95

    encodings = [e for g in groups for e in g.encodings][:limit]
    if not encodings:
        return RewardStats()
    stats = RewardStats.from_heads(head_rewards(reward, encodings, batch_size))
    spread_encodings = [e for g in spread_groups for e in g.encodings][:limit]
    if reward.num_heads > 1 and spread_encodings:
        heads = normalise_estimates(head_rewards(reward, spread_encodings, batch_size),
                                    *stats.head_stats(reward.num_heads))
        stats.spread_q95 = spread_q95(heads)
    return stats


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _status(loss: float, accuracy: Optional[float], lr: float, pairs_per_s: float) -> str:
    acc = f"  acc {accuracy:.3f}" if accuracy is not None else ""
    return f"loss {loss:.4f}{acc}  lr {lr:.2e}  {pairs_per_s:,.1f} pairs/s"


def _global_figures(figures: dict[str, float], has_groups: bool) -> dict[str, float]:
    """A micro-batch's accuracy over every rank's pairs (unchanged in a single process)."""
    if distributed.world_size() == 1:
        return figures
    pairs = figures["pairs"] if has_groups and "accuracy" in figures else 0.0
    accuracy = distributed.global_mean(figures.get("accuracy"), pairs)
    out = {k: v for k, v in figures.items() if k != "accuracy"}
    if accuracy is not None:
        out["accuracy"] = accuracy
    return out


def _selection_value(figures: dict[str, Any], select: str) -> Optional[float]:
    """The validation figure that picks the model kept, higher is better: accuracy, or minus the loss."""
    value = figures.get("accuracy" if select == "accuracy" else "loss")
    if value is None or not math.isfinite(value):
        return None
    return float(value) if select == "accuracy" else -float(value)


def train_reward_model(*, stage: str, stage_dir: Path, reward: RewardModel, data: PreferenceBatches,
                       val_groups: Sequence[EncodedGroup], cfg: RewardTrainConfig, loss_cfg: RewardLossConfig,
                       bootstrap: float = 1.0, resume_state: Optional[dict[str, Any]] = None,
                       stats_groups: Sequence[EncodedGroup] = (), final_dir: Optional[Path] = None,
                       log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> RewardTrainResult:
    """Train `reward` on `data`, validating on `val_groups`; write the best model with its stats to `final_dir`."""
    device = distributed.start(cfg.device)
    distributed.local_slice(cfg.batch_size, "train.batch_size")  # a clear error if it does not split evenly
    with precision_scope(device, cfg.precision):
        return _train(stage=stage, stage_dir=stage_dir, reward=reward, data=data, val_groups=val_groups, cfg=cfg,
                      loss_cfg=loss_cfg, bootstrap=bootstrap, resume_state=resume_state, stats_groups=stats_groups,
                      final_dir=final_dir, device=device, log=log)


def debias_record(loss_cfg: RewardLossConfig, beta: Optional[float]) -> Optional[dict[str, Any]]:
    """What the checkpoint says about how length was kept out of its reward (None: it was not)."""
    length = loss_cfg.length
    record: dict[str, Any] = {}
    if length.odin > 0:
        record["odin"] = {"correlation": length.odin, "orthogonal": length.orthogonal,
                          "scored_with": "the reward heads alone (the length head was dropped)"}
    if length.covariate:
        record["covariate"] = {"beta": beta, "scale": length.covariate_scale, "feature": "tanh((len chosen - len rejected) / sd), characters",
                               "scored_with": "the reward alone"}
    if length.balance:
        record["balance"] = {"bins": length.balance}
    return record or None


def _train(*, stage: str, stage_dir: Path, reward: RewardModel, data: PreferenceBatches,
           val_groups: Sequence[EncodedGroup], cfg: RewardTrainConfig, loss_cfg: RewardLossConfig, bootstrap: float,
           resume_state: Optional[dict[str, Any]], stats_groups: Sequence[EncodedGroup], final_dir: Optional[Path],
           device: torch.device, log: Callable[[str], None]) -> RewardTrainResult:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    reward.to(device)
    route_cpu_products(reward, device)
    if cfg.gradient_checkpointing:
        from alignloop.models.memory import enable_gradient_checkpointing

        enable_gradient_checkpointing(reward.model)
    # Eval mode turns every dropout off (modules and the attention's own rate), which zeroing nn.Dropout
    # alone would not (Llama's attention reads a float); gradient checkpointing still applies (RewardModel.heads).
    reward.train(cfg.dropout)
    length_cfg = loss_cfg.length
    reward.set_length_heads(1 if length_cfg.odin > 0 else 0)  # before the optimizer sees the head
    lengths = LengthInputs(data.groups, covariate=length_cfg.covariate, balance=length_cfg.balance,
                           scale=length_cfg.covariate_scale)
    record = debias_record(loss_cfg, lengths.beta)
    if record is not None:
        setattr(reward.model.config, DEBIAS_KEY, record)
    elif hasattr(reward.model.config, DEBIAS_KEY):  # warm-started from a model trained another way
        delattr(reward.model.config, DEBIAS_KEY)
    if lengths.beta is not None:
        log(f"{stage}: length covariate fitted to the training pairs: beta {lengths.beta:.4f}")
    if data.packed and not reward.can_pack:
        log(f"{stage}: {reward.attention} attention cannot read packed prompt groups; each response is read with "
            f"its prompt instead")
        data.packed = False
    optimizer = make_optimizer(reward.model, cfg)
    # Training calls `outputs` / `packed_outputs`, not `forward`: this adapter routes them through the
    # launcher's wrapper (DDP...), which owns reward.model's parameters; alone it is a plain call. ODIN's
    # orthogonality term reads the head's weights inside that call too, where FSDP has them whole.
    odin = reward.length_heads > 0

    def score(packed: bool, inputs: dict[str, torch.Tensor]):
        outputs = reward.packed_outputs(**inputs) if packed else reward.outputs(**inputs)
        return outputs, (reward.head_orthogonality() if odin else None)

    scorer = distributed.Forward(reward.model, score)
    max_steps = total_steps(cfg, data.batches_per_epoch)
    # best_value: the selection figure (accuracy, or minus the loss), higher is better
    start_step, best_value, best_accuracy, best_step, stale = 0, -math.inf, -1.0, None, 0
    scorer, optimizer = distributed.prepare(scorer, optimizer)
    if resume_state is not None:
        distributed.load_optimizer_state(optimizer, resume_state["optimizer"])  # after prepare: FSDP's shards
        restore_rng_state(resume_state["rng"])
        start_step = int(resume_state["step"])
        best_accuracy = float(resume_state.get("best_accuracy", -1.0))
        best_value = resume_state.get("best_value")  # absent from checkpoints of before `select`: accuracy then
        if best_value is None:
            best_value = best_accuracy if cfg.select == "accuracy" and best_accuracy >= 0 else -math.inf
        best_step = resume_state.get("best_step")
        stale = int(resume_state.get("stale_evals", 0))
        if resume_state.get("stopped_early"):
            max_steps = start_step  # it had stopped early: only the final model is left to write
        log(f"{stage}: resuming from step {start_step}")
    else:
        torch.manual_seed(cfg.seed)
    # Epochs set the run's length, not the warmup. A resume with no step left to run says nothing of it.
    warmup = capped_warmup_logged(cfg.warmup_steps, max_steps, stage, "train.warmup_steps", log) \
        if start_step < max_steps else capped_warmup(cfg.warmup_steps, max_steps)
    metrics = MetricsLog(stage_dir / "metrics.jsonl", resume_step=start_step if resume_state else None)
    best_dir = stage_dir / "best"
    final_dir = final_dir or stage_dir / "final"

    started = time.monotonic()
    window_pairs, window_start, pairs_seen = 0, time.monotonic(), 0
    val_accuracy: Optional[float] = None
    stopped_early, step = False, start_step
    interactive = sys.stderr.isatty()
    timer = StepTimer(max_steps, start_step)
    with training_progress(stage) as progress:
        task = progress.add_task(stage, total=max_steps, completed=start_step, status="")
        for step in range(start_step, max_steps):
            lr = learning_rate(step, max_steps, cfg.lr, warmup, cfg.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            step_loss, step_figures = 0.0, []
            for micro in range(cfg.grad_accum):
                group_ids = data.batch_groups(step * cfg.grad_accum + micro)
                local_ids = group_ids[distributed.uneven_slice(len(group_ids))]
                # A rank left without a group (a short last batch) still runs one, weighted 0:
                # every rank must take part in the gradient averaging.
                ids = local_ids or group_ids[:1]
                batch = _to({**data.collate(ids), **lengths.batch([data.groups[i] for i in ids])}, device)
                with autocast(device):
                    if "packed_mask" in batch:
                        rewards, orthogonality = scorer(True, {k: batch[k] for k in PACKED_INPUTS})
                    else:
                        rewards, orthogonality = scorer(False, {k: batch[k] for k in MODEL_INPUTS if k in batch})
                loss, figures = batch_objective(rewards.float(), batch, margin=loss_cfg.margin,
                                                centering=loss_cfg.centering, rating_weight=loss_cfg.rating_weight,
                                                bootstrap=bootstrap, length_heads=reward.length_heads,
                                                odin=length_cfg.odin, orthogonality=orthogonality,
                                                orthogonal=length_cfg.orthogonal)
                # This rank's part of the mean over the global batch's comparisons (1 alone).
                loss = loss * distributed.global_share(figures["comparisons"] if local_ids else 0.0) / cfg.grad_accum
                step_loss += backward_checked(loss, stage, step, stage_dir)
                step_figures.append(_global_figures(figures, bool(local_ids)))
                window_pairs += int(figures["pairs"]) if local_ids else 0
            grad_norm = distributed.clip_grad_norm(scorer, cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            done = step + 1
            progress.update(task, completed=done)  # every step, so the bar and its ETA move

            accuracies = [f["accuracy"] for f in step_figures if "accuracy" in f]
            accuracy = sum(accuracies) / len(accuracies) if accuracies else None
            correlations = [f["length_corr"] for f in step_figures if "length_corr" in f]
            if done % cfg.log_every == 0 or done == max_steps:
                elapsed = max(time.monotonic() - window_start, 1e-9)
                pairs_per_s = distributed.all_reduce_sum([window_pairs / elapsed])[0]
                pairs_seen += window_pairs
                window_pairs, window_start = 0, time.monotonic()
                metrics.log(done, loss=step_loss, accuracy=accuracy, lr=lr, grad_norm=grad_norm,
                            pairs_per_s=pairs_per_s, epoch=round(done * cfg.grad_accum / data.batches_per_epoch, 3),
                            length_corr=sum(correlations) / len(correlations) if correlations else None)
                progress.update(task, status=_status(step_loss, accuracy, lr, pairs_per_s))
                if not interactive and timer.line_due(done, cfg.log_every * 10):
                    log(f"{stage} step {done}/{max_steps}  {_status(step_loss, accuracy, lr, pairs_per_s)}  "
                        f"{timer.eta(done)}")

            out_of_time = cfg.max_minutes is not None and (time.monotonic() - started) / 60 >= cfg.max_minutes
            if cfg.max_minutes is not None:
                out_of_time = distributed.broadcast_object(out_of_time)  # every rank stops at the same step
            last = done == max_steps or out_of_time
            if val_groups and (done % cfg.eval_every == 0 or last):
                with distributed.full_params(scorer):
                    chosen, rejected, strength = score_groups(reward, val_groups[: cfg.eval_batches * cfg.batch_size],
                                                              cfg.batch_size)
                # Every rank scores the same groups with the same weights; rank 0's figures make sure
                # that every rank takes the same early-stopping decision.
                figures = distributed.broadcast_object(preference_metrics(chosen, rejected, strength))
                val_accuracy = figures["accuracy"]
                metrics.log(done, val_accuracy=val_accuracy, val_loss=figures["loss"], val_ece=figures["ece"],
                            val_n=figures["n"])
                log(f"{stage} step {done}: validation accuracy {val_accuracy:.4f}, loss {figures['loss']:.4f}, "
                    f"ECE {figures['ece']:.4f} on {figures['n']} pairs")
                value = _selection_value(figures, cfg.select)
                if value is not None and value > best_value:
                    best_value, best_accuracy, best_step, stale = value, val_accuracy, done, 0
                    save_final(best_dir, reward.model, reward.tokenizer)
                else:
                    stale += 1
                    if cfg.patience and stale >= cfg.patience:
                        log(f"{stage}: no better validation {cfg.select} in {stale} evaluations; stopping early "
                            f"(best at step {best_step}: validation accuracy {best_accuracy:.4f})")
                        stopped_early = True
            if done % cfg.save_every == 0 or last or stopped_early:
                save_training_checkpoint(stage_dir, done, reward.model, reward.tokenizer, optimizer,
                                         keep_last=cfg.keep_last,
                                         extra_state={"best_accuracy": best_accuracy, "best_value": best_value,
                                                      "best_step": best_step,
                                                      "stale_evals": stale, "stopped_early": stopped_early})
                crash_point(f"{stage}:saved:{done}")
            if out_of_time:
                log(f"{stage}: stopping at step {done} after {cfg.max_minutes} minutes (train.max_minutes)")
                break
            if stopped_early:
                break
    metrics.close()
    wall = time.monotonic() - started

    if best_step is not None and best_dir.exists() and best_step != step + 1:
        from safetensors.torch import load_file

        from alignloop.models.lora import is_lora, load_adapter

        if is_lora(reward.model):  # the adapter (and head) of the best step onto the same frozen base
            load_adapter(reward.model, best_dir)
        else:  # under FSDP each process keeps its shard of the best weights
            distributed.load_full_state_dict(reward.model, load_file(str(best_dir / "model.safetensors")))
        log(f"{stage}: keeping the best model (step {best_step}, validation accuracy {best_accuracy:.4f})")
    with distributed.full_params(scorer):
        reward.stats = reward_stats(reward, stats_groups or val_groups, cfg.stats_responses, cfg.batch_size,
                                    spread_groups=val_groups)
    if reward.stats.n < MIN_STATS_RESPONSES:
        log(f"{stage}: warning: reward_stats.json comes from {reward.stats.n} responses (fewer than "
            f"{MIN_STATS_RESPONSES}): PPO's normalisation by its mean and std will be rough; raise "
            f"train.stats_responses or collect more preferences")
    weights = distributed.full_state_dict(reward.model)  # gathered by every process under FSDP
    from alignloop.atomic import atomic_directory

    if distributed.is_main():
        with atomic_directory(final_dir) as tmp:
            reward.save(tmp, state_dict=weights)
    distributed.barrier()
    return RewardTrainResult(steps=step + 1 if max_steps > start_step else start_step,
                             val_accuracy=best_accuracy if best_step is not None else val_accuracy,
                             best_step=best_step, pairs_per_s=pairs_seen / max(wall, 1e-9), wall_s=wall,
                             stopped_early=stopped_early)
