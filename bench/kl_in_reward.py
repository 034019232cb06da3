"""Which KL estimator may sit in the reward: on a zero task reward, the KL penalty is all there is to follow.

With a task reward of exactly 0 the only learning signal of PPO and RLOO
(`grpo.estimator=rloo grpo.kl_in_loss=false`) is the KL penalty in the reward,
so a correct penalty can only pull the policy back towards the reference: the
KL must fall. With k1 = log pi - log pi_ref it does (its policy gradient is the
KL's); with k3 = (r - 1) - log r the policy gradient is grad KL + sum ref grad
log pi, ~0 near the reference and not a descent direction (tests/test_kl.py
works it out exactly on a categorical policy).

The set-up, all through the `alignloop` command:
1. pretrain a tiny model on the built-in story corpus, keeping its checkpoints;
2. the reward model is that model with a zero head (every score 0), no
   normalisation, no missing-EOS penalty: the task reward is 0 for every response;
3. the policy starts from an earlier pretraining checkpoint, the reference is
   the final one, so the KL starts well above 0;
4. PPO and RLOO with a fixed beta, once with k1 and once with k3 in the reward.

k3 in the reward is refused since issue 16, so its runs need the code from
before the fix: pass a checkout of it with `--old-src` (the k1 runs use this
checkout's code). Results go to `bench/results/kl_in_reward.json`.

Usage: PYTHONPATH=src .venv/bin/python bench/kl_in_reward.py --old-src OLD_CHECKOUT/src
       [--run runs/kl-in-reward] [--iterations 40] [--threads 2]
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


def alignloop(src: Path, *args: str, log: Path) -> None:
    """Run `alignloop ARGS` with the package in `src`, output appended to `log`."""
    env = dict(os.environ, PYTHONPATH=str(src), OMP_WAIT_POLICY="PASSIVE")
    with log.open("a", encoding="utf-8") as out:
        out.write(f"\n$ PYTHONPATH={src} alignloop {' '.join(args)}\n")
        out.flush()
        code = subprocess.run([sys.executable, "-m", "alignloop", *args], stdout=out, stderr=subprocess.STDOUT,
                              env=env).returncode
    if code != 0:
        raise SystemExit(f"`alignloop {' '.join(args)}` failed (exit {code}); see {log}")


def zero_reward_model(run: Path) -> Path:
    """The final pretrained model with a zero scalar head: every response scores exactly 0."""
    import torch

    from alignloop.reward.model import RewardStats, build_reward_model

    out = run / "zero_reward"
    if not (out / "config.json").exists():
        reward = build_reward_model(run / "pretrain" / "final")
        with torch.no_grad():
            reward.model.score.weight.zero_()
        reward.stats = RewardStats(0.0, 1.0, 1000)
        reward.save(out)
    return out


def kl_curve(metrics: Path) -> list[float]:
    return [json.loads(line)["kl"] for line in metrics.read_text().splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old-src", type=Path, required=True, help="src/ of a checkout from before the fix.")
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "kl-in-reward")
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    run, new_src = args.run, ROOT / "src"
    run.mkdir(parents=True, exist_ok=True)
    log = run / "bench.log"
    if not (run / "pretrain" / "final").exists():
        alignloop(new_src, "pretrain", "--run", str(run), "model.preset=tiny", "tokenizer.vocab_size=2000",
                  "data.stories=4000", "data.seq_len=128", "train.max_steps=600", "train.save_every=150",
                  "train.keep_last=4", "train.eval_every=10000", "train.samples=0", f"train.threads={args.threads}",
                  log=log)
    checkpoints = sorted((run / "pretrain" / "checkpoints").glob("step-*"))
    start = checkpoints[0]  # the earliest kept: the policy starts away from the reference
    reward = zero_reward_model(run)

    common = [f"models.policy={start}", f"models.reference={run / 'pretrain' / 'final'}", f"models.reward={reward}",
              "reward.normalise=false", "reward.missing_eos_penalty=0", "reward.adaptive_kl=false",
              "reward.kl_coef=0.1", "sampling.max_new_tokens=32", f"run.threads={args.threads}",
              "run.sample_table_every=0", "run.precision=fp32"]
    runs = {
        ("rloo", "k1"): (new_src, "grpo", ["grpo.estimator=rloo", "grpo.kl_in_loss=false", "grpo.group_size=4",
                                          "grpo.rollout_prompts=16", f"grpo.iterations={args.iterations}",
                                          "grpo.lr=1e-4"]),
        ("ppo", "k1"): (new_src, "ppo", ["ppo.rollout_prompts=64", "ppo.epochs=2", "ppo.minibatches=2",
                                        f"ppo.iterations={args.iterations}", "ppo.lr=1e-4"]),
    }
    runs[("rloo", "k3")] = (args.old_src.resolve(), *runs[("rloo", "k1")][1:])
    runs[("ppo", "k3")] = (args.old_src.resolve(), *runs[("ppo", "k1")][1:])
    results = {}
    for number, ((method, estimator), (src, command, settings)) in enumerate(sorted(runs.items()), start=1):
        metrics = run / "rounds" / f"{number:03d}" / command / "metrics.jsonl"
        if not metrics.exists() or len(kl_curve(metrics)) < args.iterations:
            started = time.monotonic()
            alignloop(src, command, "--run", str(run), f"run.round={number}", f"reward.kl_estimator={estimator}",
                      *common, *settings, log=log)
            print(f"{method} {estimator}: {time.monotonic() - started:.0f} s", file=sys.stderr)
        curve = kl_curve(metrics)
        results[f"{method}_{estimator}"] = {"kl_first": curve[0], "kl_last": curve[-1],
                                            "kl_min": min(curve), "kl_max": max(curve), "kl": curve}
    RESULTS.mkdir(parents=True, exist_ok=True)
    setup = {"policy": str(start.relative_to(run)), "reference": "pretrain/final", "kl_coef": 0.1,
             "iterations": args.iterations, "task_reward": 0.0}
    (RESULTS / "kl_in_reward.json").write_text(json.dumps({"setup": setup, "runs": results}, indent=1) + "\n")
    print("| method | KL estimator in the reward | KL at iteration 1 | KL at the last | min | max |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        method, estimator = name.split("_")
        print(f"| {method} | {estimator} | {r['kl_first']:.3f} | {r['kl_last']:.3f} | {r['kl_min']:.3f} | "
              f"{r['kl_max']:.3f} |")


if __name__ == "__main__":
    main()
