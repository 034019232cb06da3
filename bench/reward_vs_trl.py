"""Reward-model training speed: alignloop against TRL's RewardTrainer on the same workload, in one run.

    bash bench/setup_trl_venv.sh            # once: TRL in .venv-trl, never in the project's venv
    .venv/bin/python bench/reward_vs_trl.py [--pairs 512] [--batch-size 16] [--max-length 256] [--threads 2]

The workload, identical on both sides:
- data: Anthropic HH harmless pairs (`../shared/data/hh_harmless_train_dev.jsonl.gz`, training
  lines), prompt = the dialogue up to the final "Assistant:", responses = the two final replies,
  keeping only pairs whose prompt + response fits in `--max-length` tokens (TRL drops longer ones,
  we cut them; neither happens then);
- model: one decoder checkpoint written here, our `small` preset (Llama, about 4M parameters with
  an 8,192-token BPE tokenizer trained on these pairs), with a fresh scalar head, dropout 0;
- optimisation: AdamW, the same learning rate, batch size (pairs per step) and step count (one
  epoch), fp32 on CPU with the same number of threads. TRL's gradient checkpointing and bf16
  defaults are turned off so both sides do the same arithmetic.

What differs is how the work is done: alignloop batches pairs of similar length (less padding)
and reads each prompt once per pair, with both replies in the same row behind a 4D attention mask
(the same rewards as reading prompt+reply twice); TRL pads random batches and reads the prompt
twice. `--no-share-prompt` turns the second off, to see what each contributes.

Each side is timed from the start of its training call to its end (model loading and tokenizing
excluded; our time includes writing the final checkpoint and reward statistics). TRL runs in a
subprocess with `.venv-trl/bin/python`. The two sides run one after the other, `--repeats` times,
alternating, and the best time of each is kept (the machine is shared; the best is the least
disturbed). The last line printed is one JSON object with `speedup_vs_trl`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "hh_harmless_train_dev.jsonl.gz"
TRL_PYTHON = ROOT / ".venv-trl" / "bin" / "python"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


# ---- TRL's side: runs inside .venv-trl, imports nothing of alignloop ------------------------

def trl_side(spec: dict) -> dict:
    import logging

    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    logging.disable(logging.WARNING)
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    records = [json.loads(line) for line in Path(spec["data"]).read_text(encoding="utf-8").splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    model = AutoModelForSequenceClassification.from_pretrained(spec["model"], num_labels=1)
    args = RewardConfig(
        output_dir=spec["out"], per_device_train_batch_size=spec["batch_size"], num_train_epochs=1,
        max_steps=spec["steps"], learning_rate=spec["lr"], lr_scheduler_type="cosine", warmup_steps=spec["warmup"],
        weight_decay=0.0, max_length=spec["max_length"], gradient_checkpointing=False, bf16=False, fp16=False,
        use_cpu=True, save_strategy="no", report_to="none", logging_steps=10, disable_tqdm=True,
        dataloader_num_workers=0, seed=0,
        train_sampling_strategy="group_by_length" if spec.get("group_by_length") else "random")
    trainer = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(records),
                            processing_class=tokenizer)
    kept = len(trainer.train_dataset)
    started = time.monotonic()
    output = trainer.train()
    wall = time.monotonic() - started
    import trl
    import transformers

    return {"wall_s": wall, "pairs": spec["steps"] * spec["batch_size"], "kept_pairs": kept,
            "train_loss": output.training_loss, "trl": trl.__version__, "transformers": transformers.__version__,
            "torch": torch.__version__}


# ---- our side -----------------------------------------------------------------------------

def prepare(args, workdir: Path) -> tuple[Path, Path, int]:
    """Write the shared pairs (TRL format) and the decoder checkpoint; returns (data, model, n_pairs)."""
    sys.path.insert(0, str(ROOT / "src"))
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from alignloop.models.causal_lm import PRESETS
    from alignloop.reward.data import read_preference_file
    from alignloop.reward.model import encode_decoder_pair
    from alignloop.tokenizer import train_tokenizer

    prefs = read_preference_file(DATA, "1-1200")
    tokenizer = train_tokenizer((c.prompt + " " + c.chosen + " " + c.rejected for c in prefs.comparisons), 8192)
    fits = []
    for c in prefs.comparisons:
        # Our encoding (BOS + prompt + response + EOS) is one token longer than TRL's: fit with room for both.
        longest = max(len(encode_decoder_pair(tokenizer, c.prompt, r, 10 ** 6)["input_ids"])
                      for r in (c.chosen, c.rejected))
        if longest <= args.max_length - 1:
            fits.append(c)
    pairs = fits[: args.pairs]
    data = workdir / "pairs.jsonl"
    # TRL joins prompt and response as they are: the separating space goes into the response, as
    # alignloop.data.formatting adds it.
    data.write_text("".join(json.dumps({"prompt": c.prompt, "chosen": " " + c.chosen, "rejected": " " + c.rejected})
                            + "\n" for c in pairs), encoding="utf-8")
    size = PRESETS["small"]
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=size["hidden"], intermediate_size=size["mlp"],
                         num_hidden_layers=size["layers"], num_attention_heads=size["heads"],
                         num_key_value_heads=size["heads"], max_position_embeddings=args.max_length + 8,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model_dir = workdir / "backbone"
    AutoModelForCausalLM.from_config(config).save_pretrained(str(model_dir))
    tokenizer.save_pretrained(str(model_dir))
    return data, model_dir, len(pairs)


def our_side(args, data: Path, model_dir: Path, steps: int, workdir: Path) -> dict:
    import torch

    from alignloop.config.base import load_config
    from alignloop.reward.config import RewardConfig
    from alignloop.reward.data import PreferenceBatches, encode_groups, group_by_prompt, read_preference_file
    from alignloop.reward.model import build_reward_model
    from alignloop.reward.train import train_reward_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = load_config(RewardConfig, None, [
        f"train.batch_size={args.batch_size}", f"train.lr={args.lr}", f"train.warmup_steps={args.warmup}",
        "train.epochs=null", f"train.max_steps={steps}", "train.save_every=100000", "train.eval_every=100000",
        "train.log_every=10", "train.stats_responses=64", f"model.max_length={args.max_length}"])
    reward = build_reward_model(model_dir, max_length=args.max_length)
    pack = cfg.train.share_prompt and reward.can_pack and not args.no_share_prompt
    groups = encode_groups(group_by_prompt(read_preference_file(data)), reward.encode,
                           encode_parts=reward.encode_group if pack else None)
    batches = PreferenceBatches(groups, args.batch_size, reward.tokenizer.pad_token_id, seed=0, packed=pack)
    stage_dir = workdir / f"ours-{time.monotonic_ns()}"
    started = time.monotonic()
    result = train_reward_model(stage="reward", stage_dir=stage_dir, reward=reward, data=batches, val_groups=[],
                                cfg=cfg.train, loss_cfg=cfg.loss, stats_groups=groups[:32], log=lambda m: None)
    wall = time.monotonic() - started
    return {"wall_s": wall, "pairs": steps * args.batch_size, "steps": result.steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=512, help="Training pairs (one epoch).")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="Runs of each side (the best is kept).")
    parser.add_argument("--trl-group-by-length", action="store_true",
                        help="Also time TRL with its group_by_length sampler.")
    parser.add_argument("--no-share-prompt", action="store_true",
                        help="Ours without reading each prompt once per pair (length grouping only).")
    parser.add_argument("--trl-side", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trl_side:
        print(json.dumps(trl_side(json.loads(args.trl_side))))
        return
    if not DATA.exists():
        print(json.dumps({"skipped": f"{DATA} not found"}))
        return
    if not TRL_PYTHON.exists():
        sys.exit(f"{TRL_PYTHON} not found: run `bash bench/setup_trl_venv.sh` first")

    workdir = Path(tempfile.mkdtemp(prefix="reward-vs-trl-"))
    data, model_dir, n_pairs = prepare(args, workdir)
    steps = n_pairs // args.batch_size
    spec = {"data": str(data), "model": str(model_dir), "out": str(workdir / "trl"), "batch_size": args.batch_size,
            "steps": steps, "lr": args.lr, "warmup": args.warmup, "max_length": args.max_length,
            "threads": args.threads}

    def run_trl(group_by_length: bool = False) -> dict:
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
        done = subprocess.run([str(TRL_PYTHON), __file__, "--trl-side",
                               json.dumps({**spec, "group_by_length": group_by_length})],
                              capture_output=True, text=True, env=env)
        if done.returncode != 0:
            sys.exit(f"TRL side failed:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    ours, trl, trl_grouped = [], [], []
    for repeat in range(args.repeats):
        print(f"repeat {repeat + 1}/{args.repeats}: TRL RewardTrainer...", file=sys.stderr, flush=True)
        trl.append(run_trl())
        print(f"  TRL: {trl[-1]['pairs'] / trl[-1]['wall_s']:.2f} pairs/s; alignloop...", file=sys.stderr, flush=True)
        ours.append(our_side(args, data, model_dir, steps, workdir))
        print(f"  alignloop: {ours[-1]['pairs'] / ours[-1]['wall_s']:.2f} pairs/s", file=sys.stderr, flush=True)
        if args.trl_group_by_length:
            trl_grouped.append(run_trl(True))
            print(f"  TRL group_by_length: {trl_grouped[-1]['pairs'] / trl_grouped[-1]['wall_s']:.2f} pairs/s",
                  file=sys.stderr, flush=True)
    best_ours = min(ours, key=lambda r: r["wall_s"])
    best_trl = min(trl, key=lambda r: r["wall_s"])
    ours_rate = best_ours["pairs"] / best_ours["wall_s"]
    trl_rate = best_trl["pairs"] / best_trl["wall_s"]
    summary = {
        "pairs": n_pairs, "steps": steps, "batch_size": args.batch_size, "max_length": args.max_length,
        "threads": args.threads, "trl_kept_pairs": best_trl["kept_pairs"],
        "alignloop_pairs_per_s": round(ours_rate, 3), "trl_pairs_per_s": round(trl_rate, 3),
        "speedup_vs_trl": round(ours_rate / trl_rate, 3),
        "alignloop_wall_s": [round(r["wall_s"], 1) for r in ours], "trl_wall_s": [round(r["wall_s"], 1) for r in trl],
        "versions": {k: best_trl[k] for k in ("trl", "transformers", "torch")},
    }
    if trl_grouped:
        best = min(trl_grouped, key=lambda r: r["wall_s"])
        summary["trl_group_by_length_pairs_per_s"] = round(best["pairs"] / best["wall_s"], 3)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
