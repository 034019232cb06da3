"""Gold win rate against KL of merged policies: towards SFT (interpolation) or across runs (a uniform soup).

    .venv/bin/python bench/policy_merging.py --run runs/demo --round 3 --alphas 0.8 0.9 0.95 1.0
    .venv/bin/python bench/policy_merging.py --run runs/demo --round 3 --soup runs/a runs/b [--seeds 0 1 2]
        [--work DIR] [--out FILE.jsonl] [--threads N]

`--alphas`: the round's policy becomes SFT + alpha * (policy - SFT), one model per alpha (1 is the policy,
0 the SFT model). `--soup`: the uniform average of the round's policies of --run and of each run named,
which must have started from the same SFT model (Rame et al. 2023, rewarded soups; Rame et al. 2024, WARP).
Each merged model is written under --work (default RUN/bench-merging) and scored by `alignloop eval` with
the demo's evaluation settings (`alignloop.loop.demo.DEMO_LOOP`'s `eval.*`: 200 held-out prompts answered
four times each since commit 6194cc1, once before; up to 96 new tokens), against --run's SFT model, with
--run's round reward model, once per evaluation seed (`--seeds`, default 0: the evaluation the loop
records). The runs' own records are not touched (`eval --json`). Printed: one row per model and seed (gold
win rate with its interval, reward-model win rate, KL to SFT, perplexity change); with --out, one JSON
object each. BENCHMARKS.md, "The demo", has the figures.
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

from alignloop.runs import RunDir  # noqa: E402


def merge(models: list[Path], weights: list[float], out: Path) -> None:
    """Save sum_i weights[i] * models[i] (every parameter) to `out`, with the first model's config and tokenizer."""
    import torch

    from alignloop.models.causal_lm import load_causal_lm

    merged = load_causal_lm(models[0])
    others = [load_causal_lm(path).state_dict() for path in models[1:]]
    with torch.no_grad():
        # Parameters, not the state dict: tied weights (embedding and output layer) appear once, so they are
        # combined once.
        for name, weight in merged.named_parameters():
            total = weights[0] * weight
            for state, share in zip(others, weights[1:]):
                total += share * state[name]
            weight.copy_(total)
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out)
    for path in models[0].iterdir():  # tokenizer and generation files; the weights are the new ones
        if path.is_file() and not (out / path.name).exists():
            shutil.copy(path, out / path.name)


def demo_eval_settings() -> list[str]:
    """The demo loop's evaluation settings as `alignloop eval` takes them (without the `eval.` prefix)."""
    from alignloop.loop.demo import DEMO_LOOP

    return [item[len("eval."):] for item in DEMO_LOOP if item.startswith("eval.")]


def checked(path: Path, number: int) -> Path:
    """`path`, checked to be a checkpoint (a one-line exit otherwise)."""
    from alignloop.errors import CheckpointError
    from alignloop.models.causal_lm import check_checkpoint_dir

    try:
        return check_checkpoint_dir(path)
    except CheckpointError as e:
        sys.exit(f"error: {e}; run the loop to round {number} first")


def plans(args, policy: Path, sft: Path) -> list[tuple[str, dict, list[Path], list[float]]]:
    """(folder name, what the row records, models, weights) of each merged model the arguments ask for."""
    if args.soup:
        members = [policy] + [checked(RunDir(run).round_dir(args.round) / "policy" / "final", args.round)
                              for run in args.soup]
        label = {"merge": "soup", "members": [str(path) for path in members]}
        return [(f"round{args.round:03d}-soup-{len(members)}", label, members, [1 / len(members)] * len(members))]
    return [(f"round{args.round:03d}-alpha-{alpha:g}", {"merge": "interpolate", "alpha": alpha}, [policy, sft],
             [alpha, 1 - alpha]) for alpha in args.alphas]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a run with sft/final and rounds/NNN/policy/final")
    parser.add_argument("--round", type=int, required=True)
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.8, 0.9, 0.95, 1.0])
    parser.add_argument("--soup", type=Path, nargs="+", help="other runs whose round policies join --run's")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="evaluation seeds")
    parser.add_argument("--work", type=Path, help="where the merged models go (default RUN/bench-merging)")
    parser.add_argument("--out", type=Path, help="also append one JSON object per model and seed here")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS of the evaluations")
    args = parser.parse_args()

    from alignloop.evaluation.stage import summary_line

    folder = RunDir(args.run).round_dir(args.round)
    policy, sft, reward = (checked(path, args.round) for path in (folder / "policy" / "final",
                                                                   args.run / "sft" / "final",
                                                                   folder / "reward" / "final"))
    work = args.work or args.run / "bench-merging"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    settings = demo_eval_settings()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
    for name, label, models, weights in plans(args, policy, sft):
        merge(models, weights, work / name / "model")
        for seed in args.seeds:
            out = work / name / f"eval-seed{seed}.json"
            done = subprocess.run([sys.executable, "-m", "alignloop", "eval", "--run", str(args.run), "--checkpoint",
                                   str(work / name / "model"), "--json", str(out), *settings,
                                   f"models.reward={reward}", f"seed={seed}"], env=env, capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"error: eval of {name} failed: {done.stderr.strip().splitlines()[-1]}")
            result = json.loads(out.read_text())
            row = {**label, "round": args.round, "seed": seed, "samples_per_prompt": result["samples_per_prompt"],
                   "gold_win_rate": result["gold_win_rate"],
                   "gold_win_rate_ci": result["gold_win_rate_ci"], "gold_lc_win_rate": result["gold_lc_win_rate"],
                   "rm_win_rate": result["rm_win_rate"], "kl": result["kl"], "kl_se": result["kl_se"],
                   "ppl_change": result["ppl_change"], "run": str(args.run)}
            print(f"{name} seed {seed}: {summary_line(result)}", flush=True)
            if args.out:
                with args.out.open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
