"""Over-optimisation on the built-in story task: PPO pushed far from the SFT model, with and without a
conservative reward, and the guard's choice of checkpoint.

It reads a finished run with judgments of at least two rounds (e.g. `runs/demo` after `alignloop demo`) and
adds to it, in rounds 101.. so that the run's own rounds are untouched:

1. round 101: the proxy reward model, 4 heads on one backbone, trained on round 1's judgments;
   round 102: a held-out reward model, trained on round 2's judgments only (disjoint from the proxy's);
2. round 111: PPO on the proxy's mean reward with a weak fixed KL penalty (`--kl-coef`), so the KL runs to 12+
   nats; the guard checks every `--every` iterations with the gold judge as its held-out judge (not stopping),
   which records the gold win rate against the SFT model along the way: the Gao et al. 2022 curve;
   round 112: the same with the conservative reward mean - std (Coste et al. 2023);
   round 113: the same as 111 with the guard on as a user would run it: the held-out reward model of round 102
   as its judge and `guard.stop=true`; its kept checkpoint is then judged by gold on the guard's prompts;
   round 114: the same as 113 with a KL budget as well (`guard.max_kl`, `--guard-max-kl`): it stops at the first
   check past the budget and keeps the best held-out check within it;
   round 115: the same as 113 with a floor on the mean response length instead (`guard.min_length_ratio`,
   `--guard-min-length-ratio`, against the first check's): a policy collapsing to short replies is stopped.
3. A table: per run the gold win rate at each check and KL, the best, the KL where gold peaks, and for 113-115 the
   checkpoint kept and its gold win rate.

`--seed N` sets every PPO run's seed (`run.seed`): another trajectory from the same models, for a second look at
a setting chosen on the first; use a fresh copy of the run, since the rounds' numbers are the same.

Usage: PYTHONPATH=src .venv/bin/python bench/overoptimisation.py --run runs/demo [--iterations 60] [--every 5]
       [--kl-coef 0.01] [--threads 1] [--only 111,112,113,114,115] [--guard-max-kl 6]
       [--guard-min-length-ratio 0.5] [--seed 0] [--check-prompts 64]
Results: bench/results/overoptimisation.json (with --only: overoptimisation_111_112.json, ...; with
--check-prompts N other than 64, _promptsN; with round 115 and --guard-min-length-ratio R other than 0.5, _floorR;
with --seed N other than 0, _seedN before .json).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rl_builtin import NEW_TOKENS, RESULTS, alignloop  # noqa: E402

PROXY, HELDOUT = 101, 102
RUNS = {111: "mean", 112: "mean_minus_std", 113: "mean + guard (held-out RM, stop)",
        114: "mean + guard (held-out RM, max_kl, stop)", 115: "mean + guard (held-out RM, min_length_ratio, stop)"}
GUARDED = (113, 114, 115)


def reward_models(run: Path, threads: int, log: Path) -> None:
    common = ["train.epochs=2", "train.stats_responses=500", f"train.threads={threads}"]
    alignloop("reward", "--run", str(run), f"round={PROXY}", "data.rounds=[1]", "ensemble.heads=4", *common, log=log)
    alignloop("reward", "--run", str(run), f"round={HELDOUT}", "data.rounds=[2]", *common, log=log)


def ppo(run: Path, number: int, args, log: Path) -> None:
    final = run / "rounds" / f"{PROXY:03d}" / "reward" / "final"
    settings = [f"run.round={number}", f"models.reward={final}", f"models.policy={run / 'sft' / 'final'}",
                f"models.reference={run / 'sft' / 'final'}", f"ppo.iterations={args.iterations}",
                "ppo.rollout_prompts=32", "ppo.epochs=2", "ppo.minibatches=2", "ppo.lr=1e-4",
                "reward.adaptive_kl=false", f"reward.kl_coef={args.kl_coef}", f"sampling.max_new_tokens={NEW_TOKENS}",
                "run.sample_table_every=0", f"run.threads={args.threads}", f"guard.every={args.every}",
                f"guard.prompts.limit={args.check_prompts}", f"run.seed={args.seed}"]
    if number == 112:
        settings.append("reward.uncertainty=mean_minus_std")
    if number in GUARDED:
        held = run / "rounds" / f"{HELDOUT:03d}" / "reward" / "final"
        settings += [f"guard.heldout={held}", "guard.stop=true", "guard.patience=2"]
        if number == 114:
            settings.append(f"guard.max_kl={args.guard_max_kl}")
        if number == 115:
            settings.append(f"guard.min_length_ratio={args.guard_min_length_ratio}")
    else:
        settings.append("guard.heldout=gold")
    alignloop("ppo", "--run", str(run), *settings, log=log)


def checks(run: Path, number: int) -> list[dict]:
    path = run / "rounds" / f"{number:03d}" / "ppo" / "guard.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def kept_gold(run: Path, number: int, args, log: Path) -> dict:
    """The gold win rate of a guarded round's final policy on the guard's prompts, as `alignloop eval` measures it."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:  # the figures are kept in the results, the samples are not
        out = Path(folder) / "eval.json"
        alignloop("eval", "--run", str(run), f"round={number}", f"prompts.limit={args.check_prompts}",
                  f"sampling.max_new_tokens={NEW_TOKENS}", f"models.baseline={run / 'sft' / 'final'}", "text.blocks=8",
                  f"threads={args.threads}", "--json", str(out), log=log)
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=Path("runs/demo"))
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--kl-coef", type=float, default=0.01)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--guard-max-kl", type=float, default=6.0,
                        help="round 114's guard.max_kl: a KL budget in nats, the demo's bar by default")
    parser.add_argument("--guard-min-length-ratio", type=float, default=0.5,
                        help="round 115's guard.min_length_ratio: stop when replies fall below this share of the "
                             "first check's length")
    parser.add_argument("--seed", type=int, default=0, help="run.seed of every PPO run")
    parser.add_argument("--check-prompts", type=int, default=64,
                        help="held-out prompts per guard check (guard.prompts.limit) and for judging a guarded "
                             "round's kept policy: more narrow the gold figures' intervals and steady the held-out "
                             "score, at the cost of a longer check")
    parser.add_argument("--only", default="111,112,113,114,115", help="which PPO runs (rounds) to make")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    log = RESULTS / "overoptimisation.log"
    reward_models(args.run, args.threads, log)
    wanted = [int(x) for x in args.only.split(",") if x]
    for number in wanted:
        ppo(args.run, number, args, log)
    results = {}
    for number in wanted:
        history = checks(args.run, number)
        row = {"reward": RUNS[number], "checks": [{k: c.get(k) for k in ("iteration", "kl", "proxy", "heldout",
                                                                           "heldout_win_rate", "spread", "fired")}
                                                  for c in history]}
        golds = [c for c in history if c.get("heldout_win_rate") is not None]
        if golds:
            peak = max(golds, key=lambda c: c["heldout_win_rate"])
            row.update(best_gold=peak["heldout_win_rate"], kl_at_best=peak["kl"], iteration_at_best=peak["iteration"],
                       last_gold=golds[-1]["heldout_win_rate"], last_kl=golds[-1]["kl"])
        if number in GUARDED:
            stopped = [c for c in history if c.get("stopped")]
            row["stopped_at"] = stopped[0]["iteration"] if stopped else None
            row["kept"] = history[-1].get("kept") if history else None
            evaluation = kept_gold(args.run, number, args, log)
            row["kept_gold_win_rate"] = evaluation.get("gold_win_rate")
            row["kept_gold_win_rate_ci"] = evaluation.get("gold_win_rate_ci")
            row["kept_kl"] = evaluation.get("kl")
        results[number] = row
        print(json.dumps({"round": number, **{k: v for k, v in row.items() if k != "checks"}}))
        for c in row["checks"]:
            gold = "" if c.get("heldout_win_rate") is None else f"  gold {c['heldout_win_rate']:.1%}"
            print(f"  it {c['iteration']:>3}  kl {c['kl']:6.2f}  proxy {c['proxy']:+.3f}  held-out "
                  f"{c['heldout'] if c['heldout'] is None else round(c['heldout'], 4)}{gold}"
                  f"{'  FIRED' if c.get('fired') else ''}")
    name = "overoptimisation" if wanted == sorted(RUNS) else f"overoptimisation_{'_'.join(map(str, wanted))}"
    name += f"_prompts{args.check_prompts}" if args.check_prompts != 64 else ""
    name += f"_floor{args.guard_min_length_ratio:g}" if 115 in wanted and args.guard_min_length_ratio != 0.5 else ""
    name += f"_seed{args.seed}.json" if args.seed else ".json"
    (RESULTS / name).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
