"""`alignloop demo`: the whole pipeline on the built-in story task, sized for a laptop CPU.

The demo is a fixed sequence of the real stages with small settings; each
stage skips itself when already finished, so rerunning the demo after an
interruption resumes where it stopped.
"""

from __future__ import annotations

import sys
import time
from typing import Callable

from rich.console import Console
from rich.table import Table

from alignloop.config.base import load_config
from alignloop.pretrain.config import PretrainConfig
from alignloop.pretrain.stage import run_pretrain
from alignloop.runs import RunDir
from alignloop.sft.config import SFTConfig
from alignloop.sft.stage import run_sft

# Sized so the whole demo fits in about 15 minutes on 2 CPU cores.
DEMO_PRETRAIN = ["model.preset=small", "data.stories=20000", "data.seq_len=192", "train.max_steps=700",
                 "train.batch_size=16", "train.lr=2e-3", "train.warmup_steps=50", "train.eval_every=350",
                 "train.save_every=100", "train.eval_batches=10", "tokenizer.vocab_size=4096"]
DEMO_SFT = ["train.max_steps=150", "train.eval_every=150", "train.save_every=50", "train.lr=5e-4"]


def run_demo(run: RunDir, log: Callable[[str], None] = lambda m: print(m, file=sys.stderr), fast: bool = False) -> dict:
    """Run every demo stage in order; returns the summary figures."""
    started = time.monotonic()
    pretrain_overrides = DEMO_PRETRAIN + (["train.max_steps=40", "model.preset=tiny", "data.stories=2000"] if fast else [])
    sft_overrides = DEMO_SFT + (["train.max_steps=10"] if fast else [])
    summary: dict = {}

    log("[1/2] pretraining on the built-in story corpus")
    result = run_pretrain(run, load_config(PretrainConfig, None, pretrain_overrides), log)
    summary["pretrain_val_loss"] = (result.val_loss if result else run.read_manifest()["stages"]["pretrain"].get("val_loss"))

    log("[2/2] supervised fine-tuning on kind, well-ended stories")
    result = run_sft(run, load_config(SFTConfig, None, sft_overrides), log)
    summary["sft_val_loss"] = (result.val_loss if result else run.read_manifest()["stages"]["sft"].get("val_loss"))

    summary["minutes"] = (time.monotonic() - started) / 60
    _print_summary(run, summary)
    return summary


def _print_summary(run: RunDir, summary: dict) -> None:
    table = Table(title=f"alignloop demo: {run.root}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        table.add_row(key, f"{value:.3f}" if isinstance(value, float) else str(value))
    Console(stderr=True).print(table)
