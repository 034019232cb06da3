"""The alignment result on the built-in story task: PPO against best-of-16, DPO and GRPO.

One run, every stage through the `alignloop` command as a user would run it:

1. pretrain a `small` model on the built-in story corpus for a few minutes;
2. SFT on the built-in story pairs;
3. sample 4 responses to each of 334 prompts (2,004 pairs) into the feedback
   store and have simulated annotators judge 2,000 of them (one judgment each);
4. train the reward model on those judgments;
5. PPO; then best-of-16, DPO (on the same judgments) and GRPO;
6. evaluate each against the SFT model on the 200 held-out prompts: gold-judge
   win rate (ties half), reward-model win rate, KL to the SFT model per
   response, held-out perplexity before/after.

Each stage is skipped when already finished, so rerunning continues. Results
go to `bench/results/rl_builtin.json`, the curves (reward-model score and KL
against PPO iterations) to `bench/results/rl_builtin_curves.png`, and the
table printed last is what BENCHMARKS.md quotes.

Usage: PYTHONPATH=src .venv/bin/python bench/rl_builtin.py [--run runs/bench-rl] [--pretrain-minutes 12]
       [--ppo-minutes 25] [--grpo-minutes 10] [--threads 2] [--skip dpo,grpo]
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
RESULTS = ROOT / "bench" / "results"
NEW_TOKENS = 96


def alignloop(*args: str, log: Path, src: Path = ROOT / "src") -> float:
    """Run one `alignloop` command (the package in `src`), its output appended to `log`; returns seconds taken."""
    # Passive OpenMP waiting: on a CPU shared with other work, spinning threads slowed small matmuls ~10x.
    env = dict(os.environ, PYTHONPATH=str(src), ALIGNLOOP_QUIET="1", OMP_WAIT_POLICY="PASSIVE")
    started = time.monotonic()
    with log.open("a", encoding="utf-8") as out:
        out.write(f"\n$ PYTHONPATH={src} alignloop {' '.join(args)}\n")
        out.flush()
        code = subprocess.run([sys.executable, "-m", "alignloop", *args], stdout=out, stderr=subprocess.STDOUT,
                              env=env).returncode
    if code != 0:
        raise SystemExit(f"`alignloop {' '.join(args)}` failed (exit {code}); see {log}")
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "bench-rl")
    parser.add_argument("--pretrain-minutes", type=float, default=12)
    parser.add_argument("--sft-minutes", type=float, default=6)
    parser.add_argument("--ppo-minutes", type=float, default=30)
    parser.add_argument("--ppo-iterations", type=int, default=120)
    parser.add_argument("--grpo-minutes", type=float, default=10)
    parser.add_argument("--dpo-epochs", type=int, default=1)
    parser.add_argument("--bon-prompts", type=int, default=100, help="Evaluation prompts for best-of-16 (of 200).")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip", default="", help="Comma-separated methods to leave out: bon, dpo, grpo.")
    parser.add_argument("--summarise", action="store_true",
                        help="Run nothing: rebuild the table, JSON and curves from the results already written.")
    args = parser.parse_args()
    if args.summarise:
        summarise(args.run, args.threads, {})
        return
    run, skip = args.run, set(filter(None, args.skip.split(",")))
    run.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    log = run / "bench.log"
    threads = f"{args.threads}"
    seconds: dict[str, float] = {}
    sampling = [f"sampling.max_new_tokens={NEW_TOKENS}", "sampling.batch_size=64"]

    seconds["pretrain"] = alignloop("pretrain", "--run", str(run), "model.preset=small", "train.max_steps=4000",
                                    f"train.max_minutes={args.pretrain_minutes}", "train.eval_every=500",
                                    "train.save_every=200", "train.samples=0", f"train.threads={threads}", log=log)
    seconds["sft"] = alignloop("sft", "--run", str(run), f"train.max_minutes={args.sft_minutes}", "train.samples=0",
                               f"train.threads={threads}", log=log)
    seconds["sample"] = alignloop("sample", "--run", str(run), "round=1", "k=4", "prompts.limit=334",
                                  f"sampling.max_new_tokens={NEW_TOKENS}", "overlap=1", log=log)
    if not (run / "bench_annotated").exists():
        seconds["annotate"] = alignloop("annotate", "--run", str(run), "--simulated", "max_judgments=2000", "overlap=1",
                                        log=log)
        (run / "bench_annotated").write_text("2000 judgments\n")
    seconds["reward"] = alignloop("reward", "--run", str(run), "round=1", f"train.threads={threads}", log=log)

    common = ["run.round=1", f"run.threads={threads}", *sampling]
    seconds["ppo"] = alignloop("ppo", "--run", str(run), *common, f"ppo.iterations={args.ppo_iterations}",
                               f"run.max_minutes={args.ppo_minutes}", "ppo.rollout_prompts=32", "ppo.epochs=2",
                               "ppo.minibatches=2", "ppo.lr=3e-5", "ppo.critic_lr=1e-4", "reward.kl_coef=0.2",
                               "reward.kl_target=4", "reward.kl_horizon=320", "run.sample_table_every=10",
                               "run.save_every=10", log=log)
    evals = {}
    eval_args = ["--run", str(run), *sampling, "threads=" + threads]
    seconds["eval_ppo"] = alignloop("eval", *eval_args, "--json", str(RESULTS / "rl_builtin_ppo.json"), log=log)
    evals["PPO"] = json.loads((RESULTS / "rl_builtin_ppo.json").read_text())
    if "bon" not in skip:
        seconds["bon"] = alignloop("bon", "--run", str(run), *common, "bon.n=16", f"prompts.limit={args.bon_prompts}",
                                   log=log)
        evals["best-of-16"] = json.loads((run / "rounds" / "001" / "bon" / "eval.json").read_text())
    if "dpo" not in skip:
        seconds["dpo"] = alignloop("dpo", "--run", str(run), "run.round=1", f"run.threads={threads}",
                                   f"dpo.epochs={args.dpo_epochs}", log=log)
        out = RESULTS / "rl_builtin_dpo.json"
        seconds["eval_dpo"] = alignloop("eval", *eval_args, "--checkpoint", str(run / "rounds/001/dpo/final"),
                                        "--json", str(out), log=log)
        evals["DPO"] = json.loads(out.read_text())
    if "grpo" not in skip:
        seconds["grpo"] = alignloop("grpo", "--run", str(run), *common, "grpo.iterations=40", "grpo.rollout_prompts=8",
                                    "grpo.group_size=8", f"run.max_minutes={args.grpo_minutes}", "grpo.lr=3e-5",
                                    "run.save_every=10", log=log)
        out = RESULTS / "rl_builtin_grpo.json"
        seconds["eval_grpo"] = alignloop("eval", *eval_args, "--checkpoint", str(run / "rounds/001/grpo/final"),
                                         "--json", str(out), log=log)
        evals["GRPO"] = json.loads(out.read_text())

    summarise(run, args.threads, seconds)


def summarise(run: Path, threads: int, seconds: dict[str, float]) -> None:
    """Collect the evaluations, draw the PPO curves, write rl_builtin.json and print the table."""
    evals = {}
    for name, path in (("PPO", RESULTS / "rl_builtin_ppo.json"), ("best-of-16", run / "rounds/001/bon/eval.json"),
                       ("DPO", RESULTS / "rl_builtin_dpo.json"), ("GRPO", RESULTS / "rl_builtin_grpo.json")):
        if path.exists():
            evals[name] = json.loads(path.read_text())
    previous = RESULTS / "rl_builtin.json"
    if not seconds and previous.exists():
        seconds = json.loads(previous.read_text()).get("seconds", {})
    metrics = [json.loads(line) for line in (run / "rounds/001/ppo/metrics.jsonl").read_text().splitlines()]
    plot_curves(metrics, RESULTS / "rl_builtin_curves.png")
    summary = {
        "methods": {name: {k: e.get(k) for k in ("gold_win_rate", "rm_win_rate", "kl", "ppl_before", "ppl_after", "n")}
                    for name, e in evals.items()},
        "ppo_iterations": len(metrics),
        "seconds": {k: round(v) for k, v in seconds.items()},
        "threads": threads,
    }
    (RESULTS / "rl_builtin.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("| method | gold win rate vs SFT | RM win rate vs SFT | KL (nats/response) | perplexity before -> after |")
    print("|---|---|---|---|---|")
    for name, e in summary["methods"].items():
        ppl = f"{e['ppl_before']:.2f} -> {e['ppl_after']:.2f}" if e.get("ppl_before") else "unchanged (no training)"
        rm = f"{e['rm_win_rate']:.1%}" if e.get("rm_win_rate") is not None else "n/a"
        print(f"| {name} | {e['gold_win_rate']:.1%} | {rm} | {e['kl']:.2f} | {ppl} |")
    print(json.dumps(summary))


def plot_curves(metrics: list[dict], path: Path) -> None:
    """Reward-model score and KL per response against PPO iterations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [m["step"] for m in metrics]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.plot(steps, [m["score"] for m in metrics], label="reward-model score (raw)")
    left.plot(steps, [m["reward_with_kl"] for m in metrics], label="normalised score - KL penalty")
    left.set_xlabel("PPO iteration")
    left.legend(fontsize=8, loc="lower right")
    left.set_title("reward")
    right.plot(steps, [m["kl"] for m in metrics], label="KL to reference (nats/response)")
    right.set_ylabel("nats per response")
    coefficient = right.twinx()
    coefficient.plot(steps, [m["kl_coef"] for m in metrics], color="tab:orange", linestyle="--",
                     label="KL coefficient (right axis)")
    coefficient.set_ylabel("beta")
    right.set_xlabel("PPO iteration")
    lines = right.get_legend_handles_labels()
    extra = coefficient.get_legend_handles_labels()
    right.legend(lines[0] + extra[0], lines[1] + extra[1], fontsize=8, loc="upper left")
    right.set_title("KL")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
