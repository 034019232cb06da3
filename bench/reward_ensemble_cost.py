"""What K reward estimates cost: K heads on one backbone (`ensemble.heads=K`) against K separate models
(`ensemble.models=K`), scoring the built-in task's SFT responses.

    .venv/bin/python bench/reward_ensemble_cost.py [--k 4] [--preset tiny] [--responses 512] [--batch-size 64]
        [--repeats 3] [--device auto] [--threads N]

Both are scored the way RL scores them (`RewardScorer.estimates` reads every head of every model; here by
text, `score_texts(all_heads=True)`), on the same responses: the story openings of the built-in SFT data
with their reference stories. The models are untrained (scratch decoders of the preset, the built-in
task's tokenizer): the cost of a forward pass does not depend on the weights. Printed: the median wall
time over `--repeats` passes, responses per second, the weights' memory, and on CUDA the peak memory
allocated while scoring. The last line is one JSON object. BENCHMARKS.md, "Reward uncertainty", has the
figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def responses(folder: Path, n: int) -> tuple[list[str], list[str]]:
    """`n` (opening, story) pairs of the built-in SFT data (generated in `folder`)."""
    from alignloop.runs import RunDir
    from alignloop.stages import builtin_data

    paths = builtin_data(RunDir(folder).ensure(), 2000, 0, lambda m: None)
    records = [json.loads(line) for line in paths["sft"].read_text(encoding="utf-8").splitlines()[:n]]
    return [r["prompt"] for r in records], [r["response"] for r in records]


def weight_bytes(models) -> int:
    return sum(p.numel() * p.element_size() for m in models for p in m.parameters())


def measure(models, prompts, texts, batch_size: int, repeats: int, device) -> dict:
    import torch

    from alignloop.reward.ensemble import RewardEnsemble

    ensemble = RewardEnsemble(models)
    ensemble.score_texts(prompts[:batch_size], texts[:batch_size], batch_size)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        scores = ensemble.score_texts(prompts, texts, batch_size)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    seconds = statistics.median(times)
    out = {"estimates": int(scores.shape[1]), "seconds": round(seconds, 3),
           "responses_per_s": round(len(texts) / seconds, 1), "weights_mib": round(weight_bytes(models) / 2**20, 2)}
    if device.type == "cuda":
        out["peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--preset", default="tiny", choices=["tiny", "small", "base"])
    parser.add_argument("--responses", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    import torch

    from alignloop.reward.model import build_scratch_reward_model
    from alignloop.tokenizer import train_tokenizer
    from alignloop.train.device import pick_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    with tempfile.TemporaryDirectory() as folder:
        prompts, texts = responses(Path(folder), args.responses)
    tokenizer = train_tokenizer([p + " " + t for p, t in zip(prompts, texts)], 2048)
    torch.manual_seed(0)

    def build(heads: int):
        return build_scratch_reward_model(tokenizer, args.preset, 256, heads).to(device).eval()

    results = {}
    heads = [build(args.k)]
    results["heads"] = measure(heads, prompts, texts, args.batch_size, args.repeats, device)
    del heads
    if device.type == "cuda":
        torch.cuda.empty_cache()
    models = [build(1) for _ in range(args.k)]
    results["models"] = measure(models, prompts, texts, args.batch_size, args.repeats, device)
    for name, figures in results.items():
        print(f"{args.k} {name:6s} ({args.preset}, {device.type}): {figures['seconds']:.2f}s for {len(texts)} "
              f"responses ({figures['responses_per_s']:.0f}/s), weights {figures['weights_mib']:.1f} MiB"
              + (f", peak {figures['peak_mib']:.0f} MiB" if "peak_mib" in figures else ""), file=sys.stderr)
    ratio = results["models"]["seconds"] / results["heads"]["seconds"]
    print(f"K models take {ratio:.2f}x the time of K heads", file=sys.stderr)
    print(json.dumps({"k": args.k, "preset": args.preset, "device": device.type, "responses": len(texts),
                      "threads": torch.get_num_threads(), **results, "time_ratio": round(ratio, 2)}))


if __name__ == "__main__":
    main()
