"""PPO speed and memory: alignloop against TRL's PPO trainer, side by side, in one run.

Standard workload (fixed, so numbers compare across commits and machines):
a random-init GPT-2 (4 layers, width 256, 4 heads, vocab 8192) as the policy
and its reference; a random-init GPT-2 sequence classifier of the same shape
as the reward model, which also initialises the critic (value model); 64
prompts of 16 random tokens; exactly 48 new tokens per prompt, sampled at
temperature 1 (no top-k/top-p, EOS never stops a row); one PPO iteration =
rollout + reference, value and reward passes + 1 epoch of 1 minibatch of 64
(policy and critic updated); CPU, float32 on both sides, no gradient
checkpointing, the same number of torch threads.

Four measurements, each in its own process (so peak memory is each one's own):
1. `rollout`: our batched sampler against Hugging Face `model.generate` on the
   same model and prompts, timed alternately (background load hits both
   alike), median of the runs -> `rollout_speedup_vs_hf_generate`.
2. `ours`: `alignloop.rl.ppo.ppo_iteration`, one warm-up iteration, then the
   median of `--iterations` -> seconds per iteration and peak RSS.
3. `trl`: TRL 1.12.0's PPO trainer (`trl.experimental.ppo`, the last TRL with
   PPO) in its own virtualenv (`bash bench/setup_trl_ppo_venv.sh`), the same
   models, prompts and settings; seconds per update from its callbacks, first
   update excluded -> `ppo_iteration_speedup_vs_trl`, `peak_rss_ratio_vs_trl`.
4. `floor`: the weight matrix products of one iteration alone (148 G
   multiply-adds), each shape through the fastest of torch's CPU kernels, with
   nothing between them -> `matmul_floor_speedup_vs_trl`, the most any float32
   PPO iteration making those products could gain over TRL's on this machine.

Usage:
    PYTHONPATH=src .venv/bin/python bench/ppo_vs_trl.py [--iterations 3] [--threads 2] [--rounds 1]
        [--trl-python .venv-trl-ppo/bin/python] [--same-allocator]
Our side runs as `alignloop ppo` does on CPU, which keeps the memory it frees
mapped for reuse (`alignloop.train.host_memory`); TRL runs with glibc's
defaults, as its users get it, unless --same-allocator gives it the same
setting (through MALLOC_* variables). With --rounds N the `ours` and `trl`
workers run alternately N times each and their timed iterations are pooled
(medians over all of them): on a machine shared with other jobs, load that
comes and goes then falls on both sides.
The last line printed is one JSON object with `rollout_speedup_vs_hf_generate`,
`ppo_iteration_speedup_vs_trl` and `peak_rss_ratio_vs_trl` (and the raw figures).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
VOCAB, LAYERS, WIDTH, HEADS = 8192, 4, 256, 4
BATCH, PROMPT_TOKENS, NEW_TOKENS = 64, 16, 48


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # ru_maxrss is in KiB on Linux


# ---------------------------------------------------------------------------
# Shared artifacts: tokenizer, policy, reward model, prompts (made once, in our venv)


def prepare(folder: Path) -> None:
    import torch
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

    from alignloop.tokenizer import train_tokenizer

    text_file = SHARED / "tinystories_train_head.txt.gz"
    if text_file.exists():
        documents = gzip.open(text_file, "rt", encoding="utf-8").read().split("<|endoftext|>")
    else:  # no shared data: the built-in stories make an equally good tokenizer for a speed test
        from alignloop.data.stories import generate_stories

        documents = [s.text for s in generate_stories(5000, 0)]
    tokenizer = train_tokenizer(documents, VOCAB)
    tokenizer.padding_side = "left"
    tokenizer.save_pretrained(str(folder / "policy"))
    tokenizer.save_pretrained(str(folder / "reward"))
    common = dict(n_layer=LAYERS, n_embd=WIDTH, n_head=HEADS, vocab_size=VOCAB, n_positions=128,
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(**common)).save_pretrained(str(folder / "policy"))
    torch.manual_seed(1)
    GPT2ForSequenceClassification(GPT2Config(**common, num_labels=1)).save_pretrained(str(folder / "reward"))
    generator = torch.Generator().manual_seed(2)
    prompts = torch.randint(3, VOCAB, (BATCH, PROMPT_TOKENS), generator=generator).tolist()
    (folder / "prompts.json").write_text(json.dumps(prompts))


# ---------------------------------------------------------------------------
# Workers


def worker_rollout(folder: Path, repeats: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from alignloop.generation.sampler import generate

    model = AutoModelForCausalLM.from_pretrained(str(folder / "policy")).eval()
    prompt_lists = json.loads((folder / "prompts.json").read_text())
    prompts = torch.tensor(prompt_lists)
    pad, eos = model.config.pad_token_id, model.config.eos_token_id
    generator = torch.Generator().manual_seed(3)

    def ours() -> int:
        batch = generate(model, prompt_lists, max_new_tokens=NEW_TOKENS, eos_token_id=eos, pad_token_id=pad,
                         temperature=1.0, generator=generator, min_new_tokens=NEW_TOKENS)
        return int(batch.response_mask.sum())

    def hf() -> int:
        with torch.inference_mode():
            out = model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), do_sample=True,
                                 temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=NEW_TOKENS,
                                 min_new_tokens=NEW_TOKENS, eos_token_id=eos, pad_token_id=pad)
        return int(out.shape[0] * (out.shape[1] - prompts.shape[1]))

    timings: dict[str, list[float]] = {"ours": [], "hf": []}
    cpu: dict[str, list[float]] = {"ours": [], "hf": []}
    tokens = {"ours": ours(), "hf": hf()}  # warm-up
    for _ in range(repeats):
        for name, fn in (("ours", ours), ("hf", hf)):
            start, start_cpu = time.perf_counter(), time.process_time()
            tokens[name] = fn()
            timings[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    ours_tps = tokens["ours"] / statistics.median(timings["ours"])
    hf_tps = tokens["hf"] / statistics.median(timings["hf"])
    return {"ours_rollout_tokens_per_s": ours_tps, "hf_generate_tokens_per_s": hf_tps,
            "ours_rollout_tokens_per_cpu_s": tokens["ours"] / statistics.median(cpu["ours"]),
            "hf_generate_tokens_per_cpu_s": tokens["hf"] / statistics.median(cpu["hf"]),
            "ours_rollout_runs_s": timings["ours"], "hf_generate_runs_s": timings["hf"]}


def worker_ours(folder: Path, iterations: int) -> dict:
    from transformers import AutoModelForCausalLM

    from alignloop.config.base import load_config
    from alignloop.reward.model import load_reward_model
    from alignloop.rl.config import PPOConfig
    from alignloop.rl.critic import critic_from_reward_model
    from alignloop.rl.ppo import ppo_iteration, ppo_state
    from alignloop.rl.rollout import RewardScorer
    from alignloop.tokenizer import load_tokenizer
    from alignloop.train import distributed

    distributed.start("cpu")  # as every training command starts: on CPU, freed memory is kept for reuse
    cfg = load_config(PPOConfig, None, [
        f"sampling.max_new_tokens={NEW_TOKENS}", f"sampling.min_new_tokens={NEW_TOKENS}", "sampling.temperature=1.0",
        f"sampling.batch_size={BATCH}", "ppo.epochs=1", "ppo.minibatches=1", f"ppo.rollout_prompts={BATCH}",
        "reward.adaptive_kl=false", "reward.kl_coef=0.05", "reward.missing_eos_penalty=0", "reward.normalise=false",
        "ppo.lr=1e-6", "ppo.critic_lr=1e-6"])
    tokenizer = load_tokenizer(folder / "policy")
    policy = AutoModelForCausalLM.from_pretrained(str(folder / "policy"))
    reference = AutoModelForCausalLM.from_pretrained(str(folder / "policy"))
    reward_model = load_reward_model(folder / "reward", "cpu")
    critic = critic_from_reward_model(folder / "reward")
    state = ppo_state(policy, reference, critic, RewardScorer(reward_model, tokenizer, batch_size=BATCH), tokenizer,
                      cfg)
    prompt_ids = json.loads((folder / "prompts.json").read_text())
    prompts = [f"prompt {i}" for i in range(BATCH)]  # text is only used for logging here
    timings, cpu, parts = [], [], []
    for i in range(iterations + 1):
        start, start_cpu = time.perf_counter(), time.process_time()
        _, stats = ppo_iteration(state, prompts, prompt_ids, cfg)
        elapsed, elapsed_cpu = time.perf_counter() - start, time.process_time() - start_cpu
        if i:  # the first iteration warms up allocators and kernels
            timings.append(elapsed)
            cpu.append(elapsed_cpu)
            parts.append({k: stats[k] for k in ("rollout_s", "experience_s", "update_s")})
    return {"iteration_s": statistics.median(timings), "iteration_runs_s": timings,
            "iteration_cpu_s": statistics.median(cpu), "iteration_cpu_runs_s": cpu,
            "breakdown_s": {k: statistics.median(p[k] for p in parts) for k in parts[0]},
            "response_length": stats["response_length"], "peak_rss_mb": peak_rss_mb()}


def worker_trl(folder: Path, iterations: int) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(str(folder / "policy"))
    tokenizer.padding_side = "left"
    prompts = json.loads((folder / "prompts.json").read_text())
    dataset = Dataset.from_dict({"input_ids": prompts})
    marks: list[tuple[float, float]] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            marks.append((time.perf_counter(), time.process_time()))

        def on_step_end(self, args, state, control, **kwargs):
            marks.append((time.perf_counter(), time.process_time()))

    with tempfile.TemporaryDirectory() as output_dir:
        args = PPOConfig(
            output_dir=output_dir, per_device_train_batch_size=BATCH, gradient_accumulation_steps=1,
            num_mini_batches=1, num_ppo_epochs=1, local_rollout_forward_batch_size=BATCH,
            response_length=NEW_TOKENS, temperature=1.0, total_episodes=BATCH * (iterations + 1),
            missing_eos_penalty=None, stop_token=None, kl_coef=0.05, learning_rate=1e-6, bf16=False, fp16=False,
            gradient_checkpointing=False, report_to="none", save_strategy="no", num_sample_generations=0,
            logging_steps=1, use_cpu=True, seed=0, disable_tqdm=True, dataloader_num_workers=0,
        )
        trainer = PPOTrainer(
            args=args, processing_class=tokenizer,
            model=AutoModelForCausalLM.from_pretrained(str(folder / "policy")),
            ref_model=AutoModelForCausalLM.from_pretrained(str(folder / "policy")),
            reward_model=AutoModelForSequenceClassification.from_pretrained(str(folder / "reward")),
            value_model=AutoModelForSequenceClassification.from_pretrained(str(folder / "reward")),
            train_dataset=dataset, eval_dataset=dataset.select(range(8)), callbacks=[Clock()],
        )
        trainer.train()
    steps = [b[0] - a[0] for a, b in zip(marks, marks[1:])][1:]  # the first update warms up
    cpu = [b[1] - a[1] for a, b in zip(marks, marks[1:])][1:]
    import trl

    return {"iteration_s": statistics.median(steps), "iteration_runs_s": steps,
            "iteration_cpu_s": statistics.median(cpu), "iteration_cpu_runs_s": cpu, "peak_rss_mb": peak_rss_mb(),
            "trl_version": trl.__version__, "torch_threads": torch.get_num_threads()}


def iteration_products() -> list[tuple[int, int, int]]:
    """The (rows, inner, out) of every weight matrix product one PPO iteration of the workload must make.

    Rollout (prefill of the prompts, then one row per sequence for each new token but the last, the LM head on
    the last position each time); reference, reward-model and critic forwards; the policy's and the critic's
    training forward and backward (input and weight gradients). The LM head runs on the response positions
    only. Attention score products, norms, activations, sampling and the optimizer are left out.
    """
    ffn, rows, predicted = 4 * WIDTH, BATCH * (PROMPT_TOKENS + NEW_TOKENS), BATCH * NEW_TOKENS

    def body(n: int) -> list[tuple[int, int, int]]:
        return [(n, WIDTH, 3 * WIDTH), (n, WIDTH, WIDTH), (n, WIDTH, ffn), (n, ffn, WIDTH)] * LAYERS

    def backward(shapes: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
        return [g for (n, k, o) in shapes for g in ((n, o, k), (o, n, k))]

    head = [(predicted, WIDTH, VOCAB)]
    rollout = body(BATCH * PROMPT_TOKENS) + [(BATCH, WIDTH, VOCAB)] \
        + (body(BATCH) + [(BATCH, WIDTH, VOCAB)]) * (NEW_TOKENS - 1)
    scoring = body(rows) + head + body(rows) + body(rows)
    update = body(rows) + head + backward(body(rows) + head) + backward(body(rows))
    return rollout + scoring + update


def worker_floor(folder: Path, iterations: int) -> dict:
    """Seconds for the products of one iteration alone, each shape through the fastest of torch's kernels here.

    The bound of any float32 PPO iteration that makes these products on this machine: every kernel is timed
    first and the best one kept per shape (MKL into a reused output, oneDNN on a plain or a pre-reordered
    weight), with nothing else between the products.
    """
    import torch

    from alignloop.models.onednn_products import onednn_available
    from alignloop.train.host_memory import keep_freed_memory

    keep_freed_memory()  # fresh outputs reuse freed pages: no page faults in the bound

    def candidates(m: int, k: int, n: int) -> dict:
        a, b, out = torch.randn(m, k), torch.randn(k, n), torch.empty(m, n)
        weight = b.t().contiguous()
        found = {"mkl": lambda: torch.mm(a, b, out=out)}
        if onednn_available():
            reordered = torch.ops.mkldnn._reorder_linear_weight(weight, m)
            found["onednn"] = lambda: torch.ops.mkldnn._linear_pointwise(a, weight, None, "none", [], "")
            found["onednn_reordered"] = lambda: torch.ops.mkldnn._linear_pointwise(a, reordered, None, "none", [], "")
        return found

    def median_time(fn, repeats: int = 7) -> float:
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    shapes = iteration_products()
    best = {}
    for shape in sorted(set(shapes)):
        kernels = candidates(*shape)
        timed = {name: median_time(fn) for name, fn in kernels.items()}
        best[shape] = kernels[min(timed, key=timed.get)]
    timings = [median_time(lambda: [best[shape]() for shape in shapes], repeats=1) for _ in range(iterations)]
    return {"floor_iteration_s": statistics.median(timings), "floor_runs_s": timings,
            "floor_multiply_adds": sum(m * k * n for m, k, n in shapes)}


WORKERS = {"rollout": worker_rollout, "ours": worker_ours, "trl": worker_trl, "floor": worker_floor}


def run_worker(python: str, name: str, folder: Path, count: int, threads: int, extra_env: dict | None = None) -> dict:
    # Both sides get the same OpenMP settings; passive waiting keeps a CPU shared with other work from
    # turning every parallel region into a spin-lock contest (it slowed small matmuls ~10x here).
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS=str(threads), OMP_WAIT_POLICY="PASSIVE",
               HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error",
               TRL_EXPERIMENTAL_SILENCE="1", WANDB_DISABLED="true", **(extra_env or {}))
    result = subprocess.run([python, __file__, "--worker", name, "--dir", str(folder), "--count", str(count),
                             "--threads", str(threads)], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"worker {name} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def pool_rounds(results: list[dict]) -> dict:
    """One side's results over several rounds: medians over every timed iteration, the largest peak RSS."""
    pooled = dict(results[0])
    for key in ("iteration_runs_s", "iteration_cpu_runs_s"):
        pooled[key] = [t for r in results for t in r[key]]
    pooled["iteration_s"] = statistics.median(pooled["iteration_runs_s"])
    pooled["iteration_cpu_s"] = statistics.median(pooled["iteration_cpu_runs_s"])
    pooled["peak_rss_mb"] = max(r["peak_rss_mb"] for r in results)
    if "breakdown_s" in pooled:
        pooled["breakdown_s"] = {k: statistics.median(r["breakdown_s"][k] for r in results)
                                 for k in results[0]["breakdown_s"]}
    return pooled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3, help="Timed PPO iterations per side (after a warm-up).")
    parser.add_argument("--repeats", type=int, default=3, help="Timed rollouts per sampler.")
    parser.add_argument("--threads", type=int, default=2, help="torch threads on both sides.")
    parser.add_argument("--rounds", type=int, default=1,
                        help="Run ours then TRL this many times (alternating) and pool the timed iterations.")
    parser.add_argument("--same-allocator", action="store_true",
                        help="Give TRL the malloc setting alignloop's training stages make for themselves on CPU "
                             "(freed memory kept for reuse; TRL does not ask for it, and gains from it too).")
    parser.add_argument("--trl-python", default=str(ROOT / ".venv-trl-ppo" / "bin" / "python"),
                        help="Python of the TRL 1.12.0 virtualenv (bench/setup_trl_ppo_venv.sh makes it).")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=3, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(WORKERS[args.worker](args.dir, args.count)))
        return

    from alignloop.train.host_memory import GLIBC_ENVIRONMENT

    if not Path(args.trl_python).exists():
        raise SystemExit(f"no TRL virtualenv at {args.trl_python}; run `bash bench/setup_trl_ppo_venv.sh` first")
    with tempfile.TemporaryDirectory(prefix="ppo-vs-trl-") as tmp:
        folder = Path(tmp)
        prepare(folder)
        rollout = run_worker(sys.executable, "rollout", folder, args.repeats, args.threads)
        # Alternating the two sides over rounds spreads the machine's changing background load over both.
        rounds = [(run_worker(sys.executable, "ours", folder, args.iterations, args.threads),
                   run_worker(args.trl_python, "trl", folder, args.iterations, args.threads,
                              GLIBC_ENVIRONMENT if args.same_allocator else None))
                  for _ in range(args.rounds)]
        ours, trl = pool_rounds([r[0] for r in rounds]), pool_rounds([r[1] for r in rounds])
        floor = run_worker(sys.executable, "floor", folder, 3 * args.iterations, args.threads)

    print(f"rollout: ours {rollout['ours_rollout_tokens_per_s']:,.0f} tokens/s, HF generate "
          f"{rollout['hf_generate_tokens_per_s']:,.0f} tokens/s")
    print(f"PPO iteration: ours {ours['iteration_s']:.3f}s (rollout {ours['breakdown_s']['rollout_s']:.3f}s, "
          f"experience {ours['breakdown_s']['experience_s']:.3f}s, update {ours['breakdown_s']['update_s']:.3f}s), "
          f"TRL {trl['iteration_s']:.3f}s; runs ours {['%.2f' % t for t in ours['iteration_runs_s']]}, "
          f"TRL {['%.2f' % t for t in trl['iteration_runs_s']]}")
    print(f"PPO iteration CPU time: ours {ours['iteration_cpu_s']:.3f}s, TRL {trl['iteration_cpu_s']:.3f}s")
    print(f"peak RSS: ours {ours['peak_rss_mb']:,.0f} MB, TRL {trl['peak_rss_mb']:,.0f} MB")
    print(f"weight products alone ({floor['floor_multiply_adds'] / 1e9:.1f} G multiply-adds): "
          f"{floor['floor_iteration_s']:.3f}s an iteration, {trl['iteration_s'] / floor['floor_iteration_s']:.2f}x TRL")
    print(json.dumps({
        "workload": f"gpt2 {LAYERS}x{WIDTH} vocab {VOCAB}, {BATCH} prompts x {PROMPT_TOKENS} tokens, {NEW_TOKENS} new "
                    f"tokens, T=1, 1 epoch x 1 minibatch, cpu fp32, {args.threads} threads, {args.rounds} round(s)"
                    + (", TRL with alignloop's malloc setting" if args.same_allocator else ""),
        "trl_version": trl["trl_version"],
        "ours_rollout_tokens_per_s": round(rollout["ours_rollout_tokens_per_s"], 1),
        "hf_generate_tokens_per_s": round(rollout["hf_generate_tokens_per_s"], 1),
        "ours_iteration_s": round(ours["iteration_s"], 4),
        "trl_iteration_s": round(trl["iteration_s"], 4),
        "ours_iteration_cpu_s": round(ours["iteration_cpu_s"], 4),
        "trl_iteration_cpu_s": round(trl["iteration_cpu_s"], 4),
        "ours_peak_rss_mb": round(ours["peak_rss_mb"], 1),
        "trl_peak_rss_mb": round(trl["peak_rss_mb"], 1),
        "rollout_speedup_vs_hf_generate": round(rollout["ours_rollout_tokens_per_s"]
                                                / rollout["hf_generate_tokens_per_s"], 3),
        "rollout_cpu_time_ratio_vs_hf_generate": round(rollout["ours_rollout_tokens_per_cpu_s"]
                                                       / rollout["hf_generate_tokens_per_cpu_s"], 3),
        "ppo_iteration_speedup_vs_trl": round(trl["iteration_s"] / ours["iteration_s"], 3),
        "ppo_iteration_cpu_time_ratio_vs_trl": round(trl["iteration_cpu_s"] / ours["iteration_cpu_s"], 3),
        "peak_rss_ratio_vs_trl": round(ours["peak_rss_mb"] / trl["peak_rss_mb"], 3),
        "matmul_floor_iteration_s": round(floor["floor_iteration_s"], 4),
        "matmul_floor_speedup_vs_trl": round(trl["iteration_s"] / floor["floor_iteration_s"], 3),
    }))


if __name__ == "__main__":
    main()
