"""Peak memory of a PPO run: LoRA against full fine-tuning (and each with gradient checkpointing).

Workload (the same for every variant): a random-init Llama-style policy
(`--hidden` wide, `--layers` deep, a BPE vocabulary of up to 8192 trained on
the built-in stories, tied embeddings) saved as an HF
checkpoint, a reward model on that same backbone with a scalar head, and the
PPO stage exactly as `alignloop ppo` runs it (`alignloop.rl.ppo.run_ppo`):
policy, reference, reward model and a critic started from the reward model,
`--iterations` iterations of `--prompts` prompts with exactly `--new-tokens`
new tokens, 1 epoch of 1 minibatch, then `final/` written.

Variants, each in its own process so that its peak is its own:
- full: every weight trains; the reference is a second copy of the policy;
- lora: `models.lora.r=R` on the policy and the critic (value head trainable);
  the reference is the policy with its adapter off;
- full+gc, lora+gc: the same with `run.gradient_checkpointing=true`.

Memory is peak RSS of the worker process on CPU (`ru_maxrss`, which includes
Python, torch and the tokenizer: `baseline_rss_mb` is a worker that only
imports them), or `torch.cuda.max_memory_allocated` on CUDA.

Usage:
    PYTHONPATH=src .venv/bin/python bench/lora_memory.py [--hidden 768 --layers 12] [--iterations 2]
        [--variants full,lora,full+gc,lora+gc] [--rank 8] [--threads 2]
The last line printed is one JSON object with each variant's peak and the ratios to `full`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 8192


def prepare(folder: Path, hidden: int, layers: int, prompts: int) -> tuple[int, int]:
    """Tokenizer, policy checkpoint, reward model and prompts in `folder`; (policy parameters, vocabulary)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from alignloop.data.stories import generate_stories
    from alignloop.reward.model import RewardStats, build_reward_model
    from alignloop.tokenizer import train_tokenizer

    stories = [s.text for s in generate_stories(3000, 0)]
    tokenizer = train_tokenizer(stories, VOCAB)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 8 // 3,
                         num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64,
                         max_position_embeddings=256, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    policy = LlamaForCausalLM(config)
    policy.save_pretrained(str(folder / "policy"))
    tokenizer.save_pretrained(str(folder / "policy"))
    count = sum(p.numel() for p in policy.parameters())
    del policy
    reward = build_reward_model(folder / "policy", max_length=256)
    reward.stats = RewardStats(0.0, 1.0, 1)
    reward.save(folder / "reward")
    openings = [" ".join(s.split()[:6]) for s in stories[:prompts]]
    (folder / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in openings))
    return count, len(tokenizer)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def worker(folder: Path, variant: str, args: argparse.Namespace) -> dict:
    """One PPO run of `variant` in this process; its peak memory and wall time."""
    import torch

    from alignloop.config.base import load_config
    from alignloop.models.lora import trainable_parameters
    from alignloop.rl.config import PPOConfig
    from alignloop.runs import RunDir

    if variant == "baseline":  # what importing torch, transformers and alignloop costs alone
        import alignloop.rl.ppo  # noqa: F401

        return {"peak_rss_mb": peak_rss_mb()}
    from alignloop.rl.ppo import run_ppo

    overrides = [
        f"models.policy={folder / 'policy'}", f"models.reward={folder / 'reward'}",
        f"prompts.path={folder / 'prompts.jsonl'}", f"ppo.iterations={args.iterations}",
        f"ppo.rollout_prompts={args.prompts}", "ppo.epochs=1", "ppo.minibatches=1",
        f"sampling.max_new_tokens={args.new_tokens}", f"sampling.min_new_tokens={args.new_tokens}",
        f"sampling.batch_size={args.prompts}", "run.sample_table_every=0", f"run.threads={args.threads}",
        "run.precision=fp32" if args.device == "cpu" else "run.precision=auto", f"run.device={args.device}",
    ]
    if variant.startswith("lora"):
        overrides.append(f"models.lora.r={args.rank}")
    if variant.endswith("+gc"):
        overrides.append("run.gradient_checkpointing=true")
    cfg = load_config(PPOConfig, None, overrides)
    trained = {}

    def log(message: str) -> None:
        print(message, file=sys.stderr)

    started = time.perf_counter()
    # Count the trained parameters the way the optimizer sees them, from the state run_ppo builds.
    import alignloop.rl.ppo as ppo

    original = ppo.ppo_state

    def counting_state(policy, reference, critic, scorer, tokenizer, config):
        trained["policy"] = trainable_parameters(policy)
        trained["critic"] = trainable_parameters(critic)
        trained["reference_is_a_copy"] = hasattr(reference, "state_dict")
        return original(policy, reference, critic, scorer, tokenizer, config)

    ppo.ppo_state = counting_state
    with tempfile.TemporaryDirectory(prefix="lora-memory-run-") as run_dir:
        run_ppo(RunDir(Path(run_dir)), cfg, log=log)
    out = {"wall_s": time.perf_counter() - started, "peak_rss_mb": peak_rss_mb(),
           "trained_policy_parameters": trained["policy"], "trained_critic_parameters": trained["critic"],
           "reference_is_a_copy": trained["reference_is_a_copy"]}
    if torch.cuda.is_available() and args.device != "cpu":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def run_worker(folder: Path, variant: str, args: argparse.Namespace) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS=str(args.threads),
               OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error", ALIGNLOOP_QUIET="1")
    command = [sys.executable, __file__, "--worker", variant, "--dir", str(folder)]
    for key in ("iterations", "prompts", "new_tokens", "rank", "threads", "device"):
        command += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"worker {variant} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=768, help="Width of the random-init policy (multiple of 64).")
    parser.add_argument("--layers", type=int, default=12, help="Decoder layers of the policy.")
    parser.add_argument("--iterations", type=int, default=2, help="PPO iterations per run.")
    parser.add_argument("--prompts", type=int, default=8, help="Prompts per iteration.")
    parser.add_argument("--new-tokens", type=int, default=24, help="Tokens sampled per prompt (exactly).")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank of the lora variants.")
    parser.add_argument("--threads", type=int, default=2, help="torch threads.")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda.")
    parser.add_argument("--variants", default="full,lora,full+gc,lora+gc", help="Comma-separated variants to run.")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"

    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(worker(args.dir, args.worker, args)))
        return

    variants = [v for v in args.variants.split(",") if v]
    with tempfile.TemporaryDirectory(prefix="lora-memory-") as tmp:
        folder = Path(tmp)
        parameters, vocab = prepare(folder, args.hidden, args.layers, args.prompts)
        results = {"baseline": run_worker(folder, "baseline", args)}
        for variant in variants:
            results[variant] = run_worker(folder, variant, args)
            print(f"{variant}: peak RSS {results[variant]['peak_rss_mb']:,.0f} MB"
                  + (f", CUDA peak {results[variant]['cuda_peak_mb']:,.0f} MB" if "cuda_peak_mb" in results[variant]
                     else "") + f", {results[variant]['wall_s']:.1f}s, trained policy parameters "
                  f"{results[variant]['trained_policy_parameters']:,}", file=sys.stderr)
    key = "cuda_peak_mb" if args.device != "cpu" else "peak_rss_mb"
    summary = {
        "workload": f"llama {args.layers}x{args.hidden} ({parameters / 1e6:.1f}M parameters, vocab {vocab}), PPO "
                    f"{args.iterations} iterations x {args.prompts} prompts x {args.new_tokens} new tokens, 1 epoch x "
                    f"1 minibatch, critic from the reward model, lora r={args.rank} on all linear layers, "
                    f"{args.device}, {args.threads} threads",
        "memory": "cuda max_memory_allocated" if key == "cuda_peak_mb" else "peak RSS of the worker process",
        "baseline_rss_mb": round(results["baseline"]["peak_rss_mb"], 1),
    }
    for variant in variants:
        summary[f"{variant}_peak_mb"] = round(results[variant][key], 1)
        summary[f"{variant}_wall_s"] = round(results[variant]["wall_s"], 1)
        summary[f"{variant}_trained_parameters"] = (results[variant]["trained_policy_parameters"]
                                                    + results[variant]["trained_critic_parameters"])
    if "full" in variants:
        for variant in variants:
            if variant != "full":
                summary[f"{variant}_over_full"] = round(results[variant][key] / results["full"][key], 3)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
