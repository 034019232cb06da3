"""Gold win rate against KL along the straight line in weight space from the SFT model to a round's policy.

    .venv/bin/python bench/policy_interpolation.py --run runs/demo --round 3 [--alphas 0.8 0.9 0.95 1.0]
        [--work DIR] [--out FILE.jsonl] [--threads N]

For each alpha the policy's weights become SFT + alpha * (policy - SFT) (alpha 1 is the round's policy, 0
the SFT model), written under --work (default RUN/bench-interpolation), and `alignloop eval` scores them
with the demo's evaluation settings (`alignloop.loop.demo.DEMO_LOOP`'s `eval.*`: 200 held-out prompts, up
to 96 new tokens) and the round's reward model, into --work/alpha-A/eval.json. The run's own records are
not touched (`eval --json`). Printed: one row per alpha (gold win rate with its interval, reward-model
win rate, KL to SFT, perplexity change); with --out, one JSON object per alpha. BENCHMARKS.md, "The
demo", has the figures.

Why: interpolating towards the initial model trades reward for KL without training (Wortsman et al.
2022, WiSE-FT; Rame et al. 2024, WARP); whether it moves the demo's gold-against-KL frontier is what this
measures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def interpolate(policy: Path, sft: Path, alpha: float, out: Path) -> None:
    """Save SFT + alpha * (policy - SFT) to `out`, with the policy's config and tokenizer files."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(policy)
    start = AutoModelForCausalLM.from_pretrained(sft).state_dict()
    with torch.no_grad():
        # Parameters, not the state dict: tied weights (embedding and output layer) appear once, so they are
        # moved once, not alpha squared.
        for name, weight in model.named_parameters():
            weight.copy_(start[name] + alpha * (weight - start[name]))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    for path in policy.iterdir():  # tokenizer and generation files; the weights are the new ones
        if path.is_file() and not (out / path.name).exists():
            shutil.copy(path, out / path.name)


def demo_eval_settings() -> list[str]:
    """The demo loop's evaluation settings as `alignloop eval` takes them (without the `eval.` prefix)."""
    from alignloop.loop.demo import DEMO_LOOP

    return [item[len("eval."):] for item in DEMO_LOOP if item.startswith("eval.")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a run with sft/final and rounds/NNN/policy/final")
    parser.add_argument("--round", type=int, required=True)
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.8, 0.9, 0.95, 1.0])
    parser.add_argument("--work", type=Path, help="where the interpolated models go (default RUN/bench-interpolation)")
    parser.add_argument("--out", type=Path, help="also write one JSON object per alpha here")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS of the evaluations")
    args = parser.parse_args()

    folder = args.run / "rounds" / f"{args.round:03d}"
    policy, sft, reward = folder / "policy" / "final", args.run / "sft" / "final", folder / "reward" / "final"
    for path in (policy, sft, reward):
        if not (path / "config.json").exists():
            sys.exit(f"error: {path} holds no model; run the loop to round {args.round} first")
    work = args.work or args.run / "bench-interpolation"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    rows = []
    for alpha in args.alphas:
        where = work / f"round{args.round:03d}-alpha-{alpha:g}"
        interpolate(policy, sft, alpha, where / "model")
        done = subprocess.run([sys.executable, "-m", "alignloop", "eval", "--run", str(args.run), "--checkpoint",
                               str(where / "model"), "--json", str(where / "eval.json"), *demo_eval_settings(),
                               f"models.reward={reward}"], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"error: eval of alpha {alpha:g} failed: {done.stderr.strip().splitlines()[-1]}")
        result = json.loads((where / "eval.json").read_text())
        row = {"alpha": alpha, "round": args.round, "gold_win_rate": result["gold_win_rate"],
               "gold_win_rate_ci": result["gold_win_rate_ci"], "gold_lc_win_rate": result["gold_lc_win_rate"],
               "rm_win_rate": result["rm_win_rate"], "kl": result["kl"], "kl_se": result["kl_se"],
               "ppl_change": result["ppl_change"], "run": str(args.run)}
        rows.append(row)
        low, high = row["gold_win_rate_ci"]
        print(f"alpha {alpha:<5g} gold {100 * row['gold_win_rate']:.1f}% [{100 * low:.1f}, {100 * high:.1f}]  "
              f"RM {100 * row['rm_win_rate']:.1f}%  KL {row['kl']:.2f} +- {row['kl_se']:.2f}  "
              f"ppl {100 * row['ppl_change']:+.1f}%", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
