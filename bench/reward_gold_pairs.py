"""How a reward model orders a policy's own replies, against the gold judge of the built-in story task.

    .venv/bin/python bench/reward_gold_pairs.py --model runs/X/rounds/003/reward/final \
        --samples runs/X/rounds/002/eval_samples.jsonl [--samples ...] [--field policy_response] [--label NAME]

PPO only ever compares replies of one policy to the same prompt, so that is what this scores: every pair of
the replies an evaluation (`eval.samples_per_prompt` >= 2) wrote to each prompt, in `--field` of each
eval_samples.jsonl. Printed for each file: the share of pairs the gold judge does not tie on where the reward
model (the ensemble's mean reward) orders the two as gold does, over all such pairs and over the pairs whose
replies end alike (the gold judge's `ending` feature equal: both closed, both cut off...). On this task the
ending is the easiest thing to read off a reply, and once a policy closes nearly every story, the pairs that end
alike are where the rest of what gold weighs (kindness above all) has to be read. With --losses, also which
gold feature costs the most in each answer that loses to SFT's, and each feature's mean for both. The last
line printed is one JSON object. BENCHMARKS.md, "The demo", has the figures.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def grouped(path: Path, field: str) -> dict[str, list[str]]:
    """Prompt -> the replies in `field` of each row of an eval_samples.jsonl, in file order."""
    replies: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        replies.setdefault(row["prompt"], []).append(row[field])
    return replies


def pairs(replies: dict[str, list[str]]) -> dict[str, tuple[list[str], list[str], list[str]]]:
    """(prompts, replies a, replies b) of every pair of each prompt's replies, and of those that end alike."""
    from alignloop.judges.features import feature_scores

    out = {"all": ([], [], []), "same_ending": ([], [], [])}
    for prompt, texts in replies.items():
        ending = [feature_scores(prompt, t)["ending"] for t in texts]
        for i, j in itertools.combinations(range(len(texts)), 2):
            for subset in ("all", "same_ending") if ending[i] == ending[j] else ("all",):
                for column, value in zip(out[subset], (prompt, texts[i], texts[j])):
                    column.append(value)
    return out


def losses(path: Path) -> dict:
    """Where the policy loses to SFT in one eval_samples.jsonl: for each answer the gold judge scores under SFT's
    answer, the feature whose weighted difference costs the most; and each feature's mean goodness for both."""
    from collections import Counter

    from alignloop.judges.features import feature_scores
    from alignloop.judges.gold import GOLD_WEIGHTS

    rows = [json.loads(line) for line in path.read_text().splitlines()]
    policy = [feature_scores(r["prompt"], r["policy_response"]) for r in rows]
    sft = [feature_scores(r["prompt"], r["sft_response"]) for r in rows]
    worst = Counter(min(GOLD_WEIGHTS, key=lambda f: GOLD_WEIGHTS[f] * (p[f] - b[f]))
                    for r, p, b in zip(rows, policy, sft) if r["gold_policy"] < r["gold_sft"])
    means = {who: {f: round(sum(x[f] for x in found) / len(found), 3) for f in GOLD_WEIGHTS}
             for who, found in (("policy", policy), ("sft", sft))}
    return {"answers": len(rows), "lost": sum(worst.values()), "lost_most_on": dict(worst.most_common()),
            "mean_goodness": means}


def score_file(reward, path: Path, field: str = "policy_response") -> dict:
    """The reward model's (or ensemble's) agreement with gold (`alignloop.reward.evaluate.gold_agreement`, gold
    ties left out) on every pair of the replies in `field` of one eval_samples.jsonl, and on those that end
    alike."""
    from alignloop.reward.evaluate import gold_agreement

    out = {}
    for subset, (prompts, a, b) in pairs(grouped(path, field)).items():
        metrics = gold_agreement(reward, prompts, a, b)
        out[subset], out[f"{subset}_pairs"] = round(metrics["accuracy"], 4), metrics["n"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, type=Path, help="a reward model (or ensemble) directory")
    parser.add_argument("--samples", required=True, type=Path, action="append",
                        help="an eval_samples.jsonl with several replies a prompt (repeatable)")
    parser.add_argument("--field", default="policy_response", choices=("policy_response", "sft_response"))
    parser.add_argument("--label", default=None, help="name printed with the figures (default: --model)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--losses", action="store_true", help="also: which gold feature each answer that loses "
                                                                "to SFT's loses most on, and each feature's mean")
    args = parser.parse_args()

    import torch

    from alignloop.reward.ensemble import load_ensemble

    torch.set_num_threads(args.threads)
    reward = load_ensemble(args.model).eval()
    out = {"label": args.label or str(args.model), "field": args.field}
    for path in args.samples:
        out[str(path)] = score_file(reward, path, args.field)
        if args.losses:
            out[str(path)]["losses"] = losses(path)
        print(f"{path}: {out[str(path)]}", file=sys.stderr)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
