"""The optimisation settings every training stage shares."""

from __future__ import annotations

from typing import Optional

from pydantic import Field

from alignloop.config.base import LearningRate, PrecisionSetting, Section


class TrainConfig(Section):
    """Optimiser, schedule, evaluation and checkpointing of a training loop."""

    max_steps: int = Field(2000, ge=1, description="Optimizer steps to run in all (the schedule spans these).")
    max_minutes: Optional[float] = Field(
        None, gt=0, description="Stop cleanly (and write final/) after this much wall time, even before max_steps.")
    batch_size: int = Field(16, ge=1, description="Sequences per micro-batch.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches accumulated per optimizer step.")
    lr: LearningRate = Field(1e-3, description="Peak learning rate.")
    warmup_steps: int = Field(
        100, ge=0, description="Linear warmup steps before cosine decay (at most a fifth of max_steps).")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Final learning rate as a fraction of the peak.")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay on matrices (not norms or biases).")
    beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1.")
    beta2: float = Field(0.95, ge=0, lt=1, description="AdamW beta2.")
    grad_clip: float = Field(1.0, ge=0, description="Clip the global gradient norm to this (0 disables).")
    eval_every: int = Field(200, ge=1, description="Validate every N steps (and at the end).")
    eval_batches: int = Field(20, ge=1, description="Validation micro-batches per evaluation.")
    save_every: int = Field(200, ge=1, description="Write a resumable checkpoint every N steps.")
    keep_last: int = Field(2, ge=1, description="Resumable checkpoints to keep.")
    log_every: int = Field(10, ge=1, description="Log metrics every N steps.")
    samples: int = Field(2, ge=0, description="Samples printed at each evaluation.")
    sample_tokens: int = Field(48, ge=1, description="Length of those samples in tokens.")
    seed: int = Field(0, description="Seed for initialisation, data order and sampling.")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")
    threads: Optional[int] = Field(None, ge=1, description="CPU threads for torch (default: torch's choice).")
    precision: PrecisionSetting = "auto"
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass instead of keeping them (less memory, "
                           "about a third more compute).")


class PretrainMixConfig(Section):
    """Pretraining text's next-token loss added to every optimizer step (PPO-ptx, Ouyang et al. 2022, eq. 2).

    PPO, SFT and best-of-n distillation take it alike."""

    coef: float = Field(0.0, ge=0, description="Weight gamma of the pretraining loss in each optimizer step "
                                               "(0: off). Holds the held-out perplexity while the policy moves.")
    path: Optional[str] = Field(None, description="Corpus file (text or JSONL). Unset: the train side of the "
                                                  "run's pretraining split (eval's perplexity uses the other side).")
    text_field: str = Field("text", description="Field holding the text in JSONL records.")
    batch_size: int = Field(8, ge=1, description="Blocks of text per optimizer step.")
    seq_len: int = Field(128, ge=8, description="Tokens per block.")
    max_blocks: int = Field(4096, ge=1, description="Blocks read from the corpus (its first documents).")
