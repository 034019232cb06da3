"""Any local Hugging Face causal LM goes through every stage: SFT, reward model, PPO, GRPO and DPO.

Tiny random-init Llama, Qwen2, GPT-2 and Mistral checkpoints (with our BPE tokenizer) are saved to
disk and run through the chain, a step or two per stage; two of them train LoRA adapters, so the
adapters are exercised on both linear layers (Llama family) and GPT-2's Conv1D, and two of them use
gradient checkpointing (one with LoRA, one without).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from alignloop.config.base import load_config
from alignloop.reward.config import RewardConfig
from alignloop.reward.stage import run_reward
from alignloop.rl.config import DPOConfig, GRPOConfig, PPOConfig
from alignloop.rl.dpo import run_dpo
from alignloop.rl.grpo import run_grpo
from alignloop.rl.ppo import run_ppo
from alignloop.runs import RunDir
from alignloop.sft.config import SFTConfig
from alignloop.sft.stage import run_sft
from conftest import RL_PROMPTS, TINY_RL
from reward_helpers import good_bad_pairs, write_jsonl

pytestmark = pytest.mark.usefixtures("single_thread")

# architecture -> (config class, its keyword arguments for a 2-layer model of width 32, LoRA?, gradient checkpointing?)
ARCHITECTURES = {
    "llama": ("LlamaConfig", {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                              "num_attention_heads": 2, "num_key_value_heads": 2}, False, False),
    "qwen2": ("Qwen2Config", {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                              "num_attention_heads": 2, "num_key_value_heads": 1}, True, False),
    "gpt2": ("GPT2Config", {"n_embd": 32, "n_layer": 2, "n_head": 2}, True, True),
    "mistral": ("MistralConfig", {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                                  "num_attention_heads": 2, "num_key_value_heads": 1}, False, True),
}


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    from alignloop.tokenizer import train_tokenizer

    docs = [f"{r['prompt']} {r['chosen']} {r['rejected']}" for r in good_bad_pairs(200)] + RL_PROMPTS
    directory = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(docs, 400).save_pretrained(str(directory))
    return directory


def save_random_model(arch: str, tokenizer_dir: Path, directory: Path) -> Path:
    """A random-init checkpoint of `arch` with the test tokenizer, as any HF user would have one on disk."""
    import transformers

    from alignloop.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir)
    class_name, sizes, _, _ = ARCHITECTURES[arch]
    config = getattr(transformers, class_name)(
        vocab_size=len(tokenizer), max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **sizes)
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory


def quiet(_: str) -> None:
    pass


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_every_stage_runs_on_a_local_checkpoint(arch, tokenizer_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    start = save_random_model(arch, tokenizer_dir, tmp_path / "start")
    _, _, lora, checkpointing = ARCHITECTURES[arch]
    pairs = good_bad_pairs(12)
    sft_file = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": r["prompt"], "response": r["chosen"]} for r in pairs])
    prefs_file = write_jsonl(tmp_path / "prefs.jsonl", pairs)
    prompts_file = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in RL_PROMPTS])
    run = RunDir(tmp_path / "run")
    on = (["models.lora.r=4"] if lora else []) + (["run.gradient_checkpointing=true"] if checkpointing else [])
    train = (["model.lora.r=4"] if lora else []) + (["train.gradient_checkpointing=true"] if checkpointing else [])

    run_sft(run, load_config(SFTConfig, None, [
        f"model.path={start}", f"data.path={sft_file}", "data.val_fraction=0.2", "train.max_steps=2",
        "train.batch_size=4", "train.warmup_steps=0", "train.eval_batches=1", "train.samples=0", "train.threads=1",
        *train]), log=quiet)
    sft_final = run.final("sft")
    assert AutoModelForCausalLM.from_pretrained(str(sft_final), local_files_only=True) is not None
    assert (sft_final / "adapter").is_dir() == lora

    run_reward(run, load_config(RewardConfig, None, [
        f"data.path={prefs_file}", "train.epochs=1", "train.batch_size=4", "train.warmup_steps=0", "train.threads=1",
        "train.stats_responses=8", "model.max_length=48", *train]), log=quiet)
    reward_final = tmp_path / "run" / "rounds" / "001" / "reward" / "final"
    assert AutoModelForSequenceClassification.from_pretrained(str(reward_final), local_files_only=True) is not None

    rl = [f"prompts.path={prompts_file}", *TINY_RL, *on, "run.precision=fp32"]  # KL 0 at the start is an fp32 claim
    assert run_ppo(run, load_config(PPOConfig, None, [
        *rl, "ppo.iterations=1", "ppo.rollout_prompts=4", "ppo.epochs=1", "ppo.minibatches=1"]),
        log=quiet).iterations == 1
    assert run_grpo(run, load_config(GRPOConfig, None, [
        *rl, "grpo.iterations=1", "grpo.rollout_prompts=2", "grpo.group_size=2", "grpo.minibatches=1"]),
        log=quiet).iterations == 1
    dpo_final = run_dpo(run, load_config(DPOConfig, None, [
        f"data.path={prefs_file}", "data.val_fraction=0", "dpo.epochs=1", "dpo.batch_size=6", "run.threads=1",
        *on]), log=quiet)
    rounds = tmp_path / "run" / "rounds" / "001"
    for final in (rounds / "policy" / "final", rounds / "grpo" / "final", dpo_final):
        model = AutoModelForCausalLM.from_pretrained(str(final), local_files_only=True)
        assert model.config.model_type == arch
        assert (final / "adapter").is_dir() == lora
    metrics = [json.loads(line) for line in (rounds / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert abs(metrics[0]["kl"]) < 1e-4  # the reference (a copy, or the policy with its adapter off) is the start
