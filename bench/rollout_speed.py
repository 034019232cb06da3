"""Rollout speed: our batched sampler against Hugging Face ``model.generate``.

Workload (fixed, so numbers compare across commits): a random-init GPT-2
(4 layers, width 256, 4 heads, vocab 8192), 64 prompts of 16 tokens, exactly
48 new tokens per prompt (min_new_tokens = max_new_tokens), sampling at
temperature 1 with no top-k/top-p, in float32, on CPU with 2 torch threads (or
``--device cuda``).
Both run on the same model and prompts (ours also through the model's own
forward, ``fast_decode=False``, to show what the lean decode path adds); each
gets a warm-up call, then they are timed alternately (so background load hits
all alike) and the median of ``--repeats`` runs is reported. A last timing, the weight matrix
products alone through torch's default path (no attention, norms, activations,
sampling or Python), is the ceiling of any float32 sampler that multiplies as
``generate`` does (``matmul_floor_speedup_vs_hf_generate``). Ours on CPU runs
the decoding products through oneDNN on pre-reordered weights, faster per
product than that path, so the floor is a reference rather than its limit.

Usage: ``PYTHONPATH=src python bench/rollout_speed.py [--repeats 3] [--threads 2] [--device cpu]``
The last line printed is one JSON object with ``ours_tokens_per_s``,
``hf_generate_tokens_per_s`` and ``rollout_speedup_vs_hf_generate``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from alignloop.generation.sampler import generate

PAD, EOS = 0, 2


def build_model(vocab_size: int, device: str = "cpu") -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=4, n_embd=256, n_head=4, vocab_size=vocab_size, n_positions=128,
        bos_token_id=1, eos_token_id=EOS, pad_token_id=PAD,
    )
    return GPT2LMHeadModel(config).eval().to(device)


def linear_floor(model: GPT2LMHeadModel, batch: int, prompt_tokens: int, new_tokens: int, device: str = "cpu") -> int:
    """Only the matrix products a sampler cannot avoid, for timing.

    Prefill of every prompt token through each block's four weight matrices,
    then one row per sequence per new token, and the lm_head on one position
    per step. No attention, norms, activations or sampling: a bound for any
    float32 sampler doing these products through torch's default kernels.
    """
    with torch.inference_mode():
        width = model.config.n_embd
        for rows, steps in ((batch * prompt_tokens, 1), (batch, new_tokens - 1)):
            x = torch.randn(rows, width, device=device)
            for _ in range(steps):
                for block in model.transformer.h:
                    for layer in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc):
                        out = torch.addmm(layer.bias, x, layer.weight)
                    torch.addmm(block.mlp.c_proj.bias, out, block.mlp.c_proj.weight)
        last = torch.randn(batch, width, device=device)
        for _ in range(new_tokens):
            last @ model.lm_head.weight.T
    return batch * new_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda to time both samplers on the GPU.")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    model = build_model(args.vocab, args.device)
    prompts = torch.randint(3, args.vocab, (args.batch, args.prompt_tokens), generator=torch.Generator().manual_seed(1))
    prompt_lists = prompts.tolist()
    prompts = prompts.to(args.device)
    generator = torch.Generator(device=args.device).manual_seed(2)

    def finish() -> None:
        """On a GPU, wait for the queued kernels: a timing ends when the work is done, not when it is queued."""
        if args.device != "cpu":
            torch.cuda.synchronize()

    def ours() -> int:
        batch = generate(model, prompt_lists, max_new_tokens=args.new_tokens, eos_token_id=EOS, pad_token_id=PAD,
                         temperature=1.0, generator=generator, min_new_tokens=args.new_tokens)
        return int(batch.response_mask.sum())

    def generic() -> int:  # the same sampler through the model's own forward (no lean decode path)
        batch = generate(model, prompt_lists, max_new_tokens=args.new_tokens, eos_token_id=EOS, pad_token_id=PAD,
                         temperature=1.0, generator=generator, min_new_tokens=args.new_tokens, fast_decode=False)
        return int(batch.response_mask.sum())

    def hf() -> int:
        with torch.inference_mode():
            out = model.generate(
                input_ids=prompts, attention_mask=torch.ones_like(prompts), do_sample=True, temperature=1.0,
                top_k=0, top_p=1.0, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                eos_token_id=EOS, pad_token_id=PAD,
            )
        finish()
        return int(out.shape[0] * (out.shape[1] - prompts.shape[1]))

    def floor() -> int:
        tokens = linear_floor(model, args.batch, args.prompt_tokens, args.new_tokens, args.device)
        finish()
        return tokens

    runners = (("ours", ours), ("ours_generic", generic), ("hf", hf), ("matmul_floor", floor))
    timings: dict[str, list[float]] = {name: [] for name, _ in runners}
    cpu_times: dict[str, list[float]] = {name: [] for name, _ in runners}
    tokens: dict[str, int] = {}
    for name, fn in runners:
        tokens[name] = fn()  # warm-up
    for _ in range(args.repeats):
        for name, fn in runners:
            start, cpu_start = time.perf_counter(), time.process_time()
            tokens[name] = fn()
            timings[name].append(time.perf_counter() - start)
            cpu_times[name].append(time.process_time() - cpu_start)

    ours_tps = tokens["ours"] / statistics.median(timings["ours"])
    hf_tps = tokens["hf"] / statistics.median(timings["hf"])
    floor_tps = tokens["matmul_floor"] / statistics.median(timings["matmul_floor"])
    for name, _ in runners:
        print(f"{name:>13}: {tokens[name]} tokens, wall " + ", ".join(f"{t:.3f}s" for t in timings[name])
              + "; cpu " + ", ".join(f"{t:.3f}s" for t in cpu_times[name]))
    print(json.dumps({
        "workload": f"gpt2 4x256 vocab {args.vocab}, {args.batch} prompts x {args.prompt_tokens} tokens, "
                    f"{args.new_tokens} new tokens, T=1, {args.device} fp32"
                    + (f", {args.threads} threads" if args.device == "cpu" else ""),
        "ours_tokens_per_s": round(ours_tps, 1),
        "hf_generate_tokens_per_s": round(hf_tps, 1),
        "rollout_speedup_vs_hf_generate": round(ours_tps / hf_tps, 3),
        # CPU seconds are less disturbed than wall time when other processes share the cores
        # (with --threads 1 they measure the work done; with more, OpenMP spin-waits count too)
        "ours_cpu_s": round(statistics.median(cpu_times["ours"]), 3),
        "hf_generate_cpu_s": round(statistics.median(cpu_times["hf"]), 3),
        "ours_generic_cpu_s": round(statistics.median(cpu_times["ours_generic"]), 3),
        "matmul_floor_cpu_s": round(statistics.median(cpu_times["matmul_floor"]), 3),
        # the weight matmuls alone: what any float32 sampler of this model is bounded by
        "matmul_floor_tokens_per_s": round(floor_tps, 1),
        "matmul_floor_speedup_vs_hf_generate": round(floor_tps / hf_tps, 3),
    }))


if __name__ == "__main__":
    main()
