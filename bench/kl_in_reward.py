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
3. the reference is the final checkpoint; the policy starts from
   reference + mix x (an earlier checkpoint - reference): near the reference
   (mix 0.15, about a nat of KL), where k3's gradient fails, and far from it
   (mix 1, the earlier checkpoint itself), where k3 ~ k1 - 1 per token and both
   pull back;
4. PPO and RLOO with a fixed beta, once with k1 and once with k3 in the reward.

k3 in the reward is refused since issue 16, so its runs need the code from
before the fix: pass a checkout of it with `--old-src` (the k1 runs use this
checkout's code). Results go to `bench/results/kl_in_reward.json`.

Usage: PYTHONPATH=src .venv/bin/python bench/kl_in_reward.py --old-src OLD_CHECKOUT/src
       [--run runs/kl-in-reward] [--iterations 40] [--mixes 0.15,1] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rl_builtin import RESULTS, ROOT, alignloop  # bench/ is the script's folder, first on sys.path


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


def start_policy(run: Path, early: Path, mix: float) -> Path:
    """A checkpoint with weights reference + mix * (early - reference) (mix 1: the early checkpoint itself)."""
    if mix == 1:
        return early
    out = run / f"start-mix-{mix:g}"
    if not (out / "config.json").exists():
        from alignloop.models.causal_lm import load_causal_lm
        from alignloop.tokenizer import load_tokenizer
        from alignloop.train.checkpoints import save_final

        model = load_causal_lm(run / "pretrain" / "final")
        far = load_causal_lm(early).state_dict()
        model.load_state_dict({name: weight + mix * (far[name] - weight) if weight.is_floating_point() else weight
                               for name, weight in model.state_dict().items()})
        save_final(out, model, load_tokenizer(early))
    return out


def kl_curve(metrics: Path) -> list[float]:
    return [json.loads(line)["kl"] for line in metrics.read_text().splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old-src", type=Path, required=True, help="src/ of a checkout from before the fix.")
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "kl-in-reward")
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--mixes", default="0.15,1", help="Where the policy starts: 0 = the reference, 1 = the "
                                                           "earliest kept pretraining checkpoint.")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    run, new_src = args.run, ROOT / "src"
    run.mkdir(parents=True, exist_ok=True)
    log = run / "bench.log"
    if not (run / "pretrain" / "final").exists():
        alignloop("pretrain", "--run", str(run), "model.preset=tiny", "tokenizer.vocab_size=2000",
                  "data.stories=4000", "data.seq_len=128", "train.max_steps=600", "train.save_every=150",
                  "train.keep_last=4", "train.eval_every=10000", "train.samples=0", f"train.threads={args.threads}",
                  log=log)
    early = sorted((run / "pretrain" / "checkpoints").glob("step-*"))[0]  # the earliest kept
    reward = zero_reward_model(run)

    common = [f"models.reference={run / 'pretrain' / 'final'}", f"models.reward={reward}",
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
    results = []
    mixes = [float(m) for m in args.mixes.split(",")]
    cases = [(mix, *case) for mix in mixes for case in sorted(runs.items())]
    for number, (mix, (method, estimator), (src, command, settings)) in enumerate(cases, start=1):
        metrics = run / "rounds" / f"{number:03d}" / command / "metrics.jsonl"
        if not metrics.exists() or len(kl_curve(metrics)) < args.iterations:
            seconds = alignloop(command, "--run", str(run), f"run.round={number}", f"reward.kl_estimator={estimator}",
                                f"models.policy={start_policy(run, early, mix)}", *common, *settings, log=log, src=src)
            print(f"start {mix:g}, {method} {estimator}: {seconds:.0f} s", file=sys.stderr)
        curve = kl_curve(metrics)
        results.append({"start_mix": mix, "method": method, "estimator": estimator, "kl_first": curve[0],
                        "kl_last": curve[-1], "kl_min": min(curve), "kl_max": max(curve), "kl": curve})
    RESULTS.mkdir(parents=True, exist_ok=True)
    setup = {"early_checkpoint": str(early.relative_to(run)), "reference": "pretrain/final", "kl_coef": 0.1,
             "iterations": args.iterations, "task_reward": 0.0}
    (RESULTS / "kl_in_reward.json").write_text(json.dumps({"setup": setup, "runs": results}, indent=1) + "\n")
    print("| policy starts at (mix) | method | KL estimator in the reward | KL at iteration 1 | at the last | "
          "min | max |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['start_mix']:g} | {r['method']} | {r['estimator']} | {r['kl_first']:.3f} | {r['kl_last']:.3f} | "
              f"{r['kl_min']:.3f} | {r['kl_max']:.3f} |")


if __name__ == "__main__":
    main()
