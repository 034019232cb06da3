"""Pretraining benchmark: the `small` preset on the built-in story corpus, in a fixed wall-time budget.

    .venv/bin/python bench/pretrain_builtin.py [--minutes 5] [--run runs/bench-pretrain]

Calibrates steps/s on a short run, sizes `train.max_steps` so the whole
schedule (warmup + cosine) fits the budget, runs `alignloop pretrain`, and
prints the validation loss and perplexity next to the unigram entropy of the
corpus (the loss of a model that knows only token frequencies), tokens/s and
wall time. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE = ["model.preset=small", "data.stories=20000", "data.seq_len=256", "train.batch_size=16",
        "train.lr=2e-3", "train.warmup_steps=50", "train.eval_batches=20", "train.samples=3", "train.log_every=10"]


def alignloop(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    return subprocess.run([sys.executable, "-m", "alignloop", *args], env=env, text=True, capture_output=True)


def unigram_cross_entropy(run: Path, seq_len: int) -> float:
    """Cross-entropy (nats/token) of the validation text under the training unigram distribution."""
    sys.path.insert(0, str(ROOT / "src"))
    from alignloop.data.corpus import read_corpus, train_val_split
    from alignloop.data.lm_batches import tokenize_documents
    from alignloop.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(run / "tokenizer")
    train, val = train_val_split(read_corpus(run / "data" / "stories.txt"), 0.05, 0)
    counts = Counter(tokenize_documents(tokenizer, train).tolist())
    total = sum(counts.values())
    val_tokens = tokenize_documents(tokenizer, val).tolist()
    # add-one smoothing so a token unseen in training does not give infinite loss
    vocab = len(tokenizer)
    return -sum(math.log((counts[t] + 1) / (total + vocab)) for t in val_tokens) / len(val_tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "bench-pretrain")
    args = parser.parse_args()
    shutil.rmtree(args.run, ignore_errors=True)
    calibrate = args.run.with_name(args.run.name + "-calibrate")
    shutil.rmtree(calibrate, ignore_errors=True)

    # Calibration: 30 steps (after corpus + tokenizer, which the real run reuses from its own dir).
    started = time.monotonic()
    result = alignloop("pretrain", "--run", str(calibrate), *BASE, "train.max_steps=30", "train.eval_every=1000",
                       "train.samples=0")
    if result.returncode != 0:
        sys.exit(result.stderr)
    metrics = [json.loads(l) for l in (calibrate / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    tokens_per_s = [m["tokens_per_s"] for m in metrics if "tokens_per_s" in m][1:]
    rate = sorted(tokens_per_s)[len(tokens_per_s) // 2] / (16 * 256)
    # keep ~12% of the budget for set-up, evaluation and checkpoints
    steps = int(rate * args.minutes * 60 * 0.88)
    print(f"calibration: {rate:.2f} steps/s -> train.max_steps={steps}", file=sys.stderr)
    shutil.rmtree(calibrate, ignore_errors=True)

    started = time.monotonic()
    result = alignloop("pretrain", "--run", str(args.run), *BASE, f"train.max_steps={steps}",
                       f"train.eval_every={max(steps // 4, 1)}", f"train.save_every={max(steps // 4, 1)}",
                       f"train.max_minutes={args.minutes}")
    wall = time.monotonic() - started
    sys.stderr.write(result.stderr[-3000:])
    if result.returncode != 0:
        sys.exit(1)
    metrics = [json.loads(l) for l in (args.run / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    val = [m for m in metrics if "val_loss" in m][-1]
    speeds = [m["tokens_per_s"] for m in metrics if "tokens_per_s" in m]
    samples = [line.split("sample: ", 1)[1] for line in result.stderr.splitlines() if "sample: " in line][-3:]
    figures = {
        "preset": "small", "steps": val["step"], "val_loss": round(val["val_loss"], 4),
        "val_perplexity": round(val["val_perplexity"], 2),
        "unigram_entropy_nats": round(unigram_cross_entropy(args.run, 256), 4),
        "tokens_per_s": round(sum(speeds) / len(speeds)), "wall_s": round(wall, 1),
        "threads": os.cpu_count(), "samples": samples,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
