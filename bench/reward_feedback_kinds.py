"""Pairs or rankings: what the same replies teach a reward model, judged by the same simulated annotators.

    OMP_NUM_THREADS=1 .venv/bin/python bench/reward_feedback_kinds.py --run runs/X --work runs/bench-kinds \
        [--kinds pairs,ranking,all_pairs] [--rounds 1,2,3] [--seed 0] [SETTING=VALUE ...]

From a loop run's sampled replies (rounds/NNN/samples.jsonl, K replies a prompt), the simulated annotators
(the 4 default personas, one drawn at random for each item) make three kinds of feedback on the same replies:
- pairs: two random pairs of each prompt's replies, what the demo asks for (`sample.pairs_per_prompt=2`);
- ranking: one K-way ranking of each prompt's replies (Plackett-Luce), what `sample.item_kind=ranking` asks;
- all_pairs: every pair of each prompt's replies (K(K-1)/2 judgments a prompt).
Ties and "both bad" verdicts are dropped, as the reward stage drops them. A reward model is trained on each
(`alignloop reward train data.path=<that file> model.path=<run>/sft/final`, then the SETTINGs, such as
train.lr=5e-4) in its own run under --work, and scored as `bench/reward_gold_pairs.py` scores one: on every pair
of the replies each evaluation wrote to a prompt, over all pairs and over pairs that end alike. The files
scored are the run's rounds/NNN/eval_samples.jsonl for the rounds given. The last line printed is one JSON
object; BENCHMARKS.md, "The demo", has the figures.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))


def feedback(samples: list[tuple[int, dict]], kind: str, seed: int) -> list[dict]:
    """Rich JSONL records of `kind` on the sampled replies, each judged by one of the 4 default personas."""
    from alignloop.judges.personas import default_personas

    personas = default_personas(4, seed=0)
    rng = random.Random(f"feedback-kinds:{kind}:{seed}")
    records = []
    for round_number, row in samples:
        prompt, replies = row["prompt"], row["responses"]
        if kind == "ranking":
            persona = rng.choice(personas)
            records.append({"kind": "ranking", "prompt": prompt, "responses": replies,
                            "ranking": persona.rank(prompt, replies, rng), "annotator": persona.name,
                            "round": round_number})
            continue
        pairs = list(itertools.combinations(range(len(replies)), 2))
        for i, j in (rng.sample(pairs, min(2, len(pairs))) if kind == "pairs" else pairs):
            persona = rng.choice(personas)
            verdict = persona.judge_pair(prompt, replies[i], replies[j], rng)
            if verdict.choice in ("a", "b"):
                records.append({"kind": "pair", "prompt": prompt, "responses": [replies[i], replies[j]],
                                "choice": verdict.choice, "strength": verdict.strength, "annotator": persona.name,
                                "round": round_number})
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, type=Path, help="a loop run with sft/final and rounds/NNN/")
    parser.add_argument("--work", required=True, type=Path, help="where the feedback files and models go")
    parser.add_argument("--kinds", default="pairs,ranking,all_pairs", help="which kinds of feedback to compare")
    parser.add_argument("--rounds", default="1,2,3", help="rounds whose samples are judged and whose evaluation "
                                                          "replies are scored")
    parser.add_argument("--seed", type=int, default=0, help="seed of the annotators' choices and noise")
    parser.add_argument("settings", nargs="*", help="reward settings after data.path and model.path")
    args = parser.parse_args()

    import torch

    from alignloop.config.base import load_config
    from alignloop.reward.config import RewardConfig
    from alignloop.reward.ensemble import load_ensemble
    from alignloop.reward.stage import run_reward
    from alignloop.runs import RunDir
    from reward_gold_pairs import score_file

    torch.set_num_threads(1)
    rounds = [int(r) for r in args.rounds.split(",")]
    samples = [(n, json.loads(line)) for n in rounds
               for line in (args.run / "rounds" / f"{n:03d}" / "samples.jsonl").read_text().splitlines()]
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    out = {"run": str(args.run), "seed": args.seed, "settings": args.settings}
    for kind in args.kinds.split(","):
        work = args.work / f"{kind}-seed{args.seed}"
        work.mkdir(parents=True, exist_ok=True)
        records = feedback(samples, kind, args.seed)
        data = work / "feedback.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in records))
        cfg = load_config(RewardConfig, None, [f"data.path={data}", f"model.path={args.run / 'sft' / 'final'}",
                                               "round=1"] + args.settings)
        run_reward(RunDir(work / "run"), cfg, log)
        reward = load_ensemble(work / "run" / "rounds" / "001" / "reward" / "final").eval()
        scored = {"records": len(records)}
        for n in rounds:
            scored[f"round {n}"] = score_file(reward, args.run / "rounds" / f"{n:03d}" / "eval_samples.jsonl")
        out[kind] = scored
        log(f"{kind}: {scored}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
