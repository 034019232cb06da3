"""`alignloop demo`: the whole pipeline on the built-in story task, sized for a laptop CPU.

pretrain -> SFT -> three rounds of (sample, simulated feedback, reward model,
PPO, evaluation) -> report.html. The demo is the real stages with small
settings; each skips itself when already finished, so rerunning the demo after
an interruption resumes where it stopped.
"""

from __future__ import annotations

import sys
import time
from typing import Callable

from alignloop.config.base import load_config
from alignloop.loop.config import LoopConfig
from alignloop.loop.report import write_report
from alignloop.loop.rounds import run_loop
from alignloop.loop.summary import print_summary
from alignloop.pretrain.config import PretrainConfig
from alignloop.pretrain.stage import run_pretrain
from alignloop.runs import RunDir
from alignloop.sft.config import SFTConfig
from alignloop.sft.stage import run_sft

# Sized so the whole demo fits in about 18 minutes on 2 CPU cores.
DEMO_PRETRAIN = ["model.preset=small", "data.stories=20000", "data.seq_len=128", "train.max_steps=400",
                 "train.batch_size=16", "train.lr=2e-3", "train.warmup_steps=30", "train.eval_every=200",
                 "train.save_every=100", "train.eval_batches=10", "tokenizer.vocab_size=4096"]
DEMO_SFT = ["train.max_steps=120", "train.eval_every=120", "train.save_every=60", "train.lr=5e-4",
            "train.eval_batches=5"]
# Each round's PPO is leashed to SFT with a KL target that grows by round (loop.kl_target), so the policy
# moves further from SFT every round and the budget, not the draw, sets where round 3 ends: with one SFT
# model and four seeds, a leash to the previous round's policy at a fixed target ended at 5.6-6.9 nats,
# the growing budget inside 6 (BENCHMARKS.md, "The demo"). A short controller horizon (64 instead of 320)
# makes the KL coefficient answer within the round's 25 iterations. At a constant learning rate the last
# update still moved the policy up to 0.9 nats off its target; decaying it to a tenth (min_lr_ratio) lets
# the KL settle just under the target, so round 3 can aim at 6. PPO-ptx holds the held-out perplexity.
# The evaluation answers each held-out prompt four times: with one answer a prompt, one policy's gold win
# rate moved 5 points between evaluation seeds; with four, 2.
DEMO_LOOP = ["rounds=3", "reference=sft", "kl_target=[1.4,3.5,6.0]", "sample.prompts.limit=250", "sample.k=4",
             "sample.pairs_per_prompt=2", "sample.sampling.max_new_tokens=96", "feedback.personas=4",
             "reward.train.epochs=2", "reward.train.stats_responses=500", "ppo.ppo.iterations=25",
             "ppo.ppo.rollout_prompts=32", "ppo.ppo.epochs=2", "ppo.ppo.minibatches=2", "ppo.ppo.lr=1e-4",
             "ppo.ppo.min_lr_ratio=0.1",
             "ppo.ptx.coef=0.1", "ppo.reward.kl_coef=0.2", "ppo.reward.kl_horizon=64",
             "ppo.sampling.max_new_tokens=96", "ppo.run.sample_table_every=0", "eval.prompts.limit=200",
             "eval.samples_per_prompt=4", "eval.sampling.max_new_tokens=96", "eval.text.blocks=32"]
# Seconds instead of minutes: the same stages on a tiny model (used by the tests).
FAST = {
    "pretrain": ["model.preset=tiny", "data.stories=1500", "train.max_steps=30", "train.eval_every=30",
                 "train.save_every=30", "train.samples=0"],
    "sft": ["train.max_steps=6", "train.eval_every=6", "train.save_every=6", "train.samples=0"],
    "loop": ["sample.prompts.limit=8", "sample.k=2", "sample.sampling.max_new_tokens=16", "feedback.personas=2",
             "feedback.both_bad_below=0",  # a 30-step model's stories are all 'both bad': judge them anyway
             "reward.train.epochs=1", "reward.train.stats_responses=16", "ppo.ppo.iterations=2",
             "ppo.ppo.rollout_prompts=4", "ppo.ppo.minibatches=1", "ppo.ppo.epochs=1",
             "ppo.sampling.max_new_tokens=16", "ppo.run.sample_table_every=0", "eval.prompts.limit=8",
             "eval.text.blocks=4", "eval.sampling.max_new_tokens=16"],
}


def run_demo(run: RunDir, log: Callable[[str], None] = lambda m: print(m, file=sys.stderr), fast: bool = False,
             force: bool = False) -> list[dict]:
    """Run every demo stage in order; returns each round's evaluation. `force` replaces work done from other
    inputs (see `alignloop.provenance`)."""
    started = time.monotonic()
    extra = FAST if fast else {}

    log("[pretrain] a small Llama-style model on the built-in story corpus")
    run_pretrain(run, load_config(PretrainConfig, None, DEMO_PRETRAIN + extra.get("pretrain", [])), log, force)
    log("[sft] supervised fine-tuning on kind, well-ended stories")
    run_sft(run, load_config(SFTConfig, None, DEMO_SFT + extra.get("sft", [])), log, force)
    log("[loop] rounds of simulated feedback, reward model and PPO")
    results = run_loop(run, load_config(LoopConfig, None, DEMO_LOOP + extra.get("loop", [])), log=log,
                       force=force)
    report = write_report(run)
    print_summary(results, f"alignloop demo ({(time.monotonic() - started) / 60:.1f} min)", report)
    return results
