"""LoRA through peft: only the adapters train, the reference is the policy with its adapter off,
`final/` is a merged HF checkpoint with the adapter beside it, and a killed LoRA run resumes exactly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignloop.config.base import load_config
from alignloop.errors import ConfigError
from alignloop.models.causal_lm import load_causal_lm
from alignloop.models.lora import LoraSettings, ReferenceView, add_lora, with_lora
from alignloop.reward.model import load_reward_model
from alignloop.rl.config import PPOConfig
from alignloop.rl.critic import Critic, critic_from_reward_model
from alignloop.rl.inputs import open_models, resolve_stage_inputs
from alignloop.rl.ppo import ppo_iteration, ppo_state, run_ppo
from alignloop.rl.rollout import RewardScorer, encode_prompts, rollout_logprobs
from alignloop.runs import RunDir
from conftest import TINY_RL, run_cli

pytestmark = pytest.mark.usefixtures("single_thread")

LORA_PPO = ["models.lora.r=4", "ppo.rollout_prompts=8", "ppo.epochs=2", "ppo.minibatches=2", "ppo.lr=0.01",
            "ppo.critic_lr=0.01", "run.save_every=1"]


def _split(model) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(frozen weights, trainable weights) of a model, copied."""
    frozen, trainable = {}, {}
    for name, parameter in model.named_parameters():
        (trainable if parameter.requires_grad else frozen)[name] = parameter.detach().clone()
    return frozen, trainable


def test_lora_ppo_trains_only_the_adapters_against_the_adapter_free_reference(rl_run):
    cfg = load_config(PPOConfig, None, [f"prompts.path={rl_run / 'prompts.jsonl'}", *LORA_PPO, *TINY_RL])
    _, paths, _, prompts = resolve_stage_inputs(RunDir(rl_run), cfg.models, cfg.prompts, None)
    models = open_models(paths, rl_run / "unused", "cpu", 1, 0, cfg.models.lora)
    policy, reference = models.policy, models.reference
    assert isinstance(reference, ReferenceView)  # no second copy of the start model
    frozen, adapters = _split(policy)
    assert adapters and all("lora_" in name for name in adapters)
    critic = Critic(with_lora(critic_from_reward_model(paths.reward).model, cfg.models.lora, "seq_cls"))
    critic_frozen, critic_trainable = _split(critic)
    assert any("score" in name for name in critic_trainable)  # the value head trains fully
    scorer = RewardScorer(load_reward_model(paths.reward, "cpu"), models.tokenizer, batch_size=8)
    state = ppo_state(policy, reference, critic, scorer, models.tokenizer, cfg)
    ids = encode_prompts(models.tokenizer, prompts, 64)
    text = torch.tensor([ids[0] + list(range(40, 52))])
    # At the start B = 0: the adapted policy is the reference, bit for bit.
    assert torch.equal(rollout_logprobs(policy, text, torch.ones_like(text), len(ids[0]), 1.0, 8),
                       rollout_logprobs(reference, text, torch.ones_like(text), len(ids[0]), 1.0, 8))

    exp, first = ppo_iteration(state, prompts, ids, cfg)
    assert abs(first["kl"]) < 1e-4 and first["ratio_dev"] < 1e-5
    _, second = ppo_iteration(state, prompts, ids, cfg)

    after_frozen, after_adapters = _split(policy)
    assert after_frozen.keys() == frozen.keys()
    assert all(torch.equal(frozen[name], after_frozen[name]) for name in frozen)  # every base weight as it was
    assert all(not torch.equal(adapters[name], after_adapters[name]) for name in adapters if "lora_B" in name)
    critic_after_frozen, critic_after = _split(critic)
    assert all(torch.equal(critic_frozen[name], critic_after_frozen[name]) for name in critic_frozen)
    assert any(not torch.equal(critic_trainable[name], critic_after[name]) for name in critic_trainable)
    # The adapter moved the policy, while the reference is still exactly the start checkpoint.
    start = load_causal_lm(paths.policy).eval()
    args = (exp.input_ids, exp.attention_mask, exp.prompt_length, 1.0, 8)
    assert torch.allclose(rollout_logprobs(reference, *args), rollout_logprobs(start, *args), atol=1e-6)
    assert not torch.allclose(rollout_logprobs(policy, *args), rollout_logprobs(start, *args), atol=1e-3)
    assert second["kl"] != 0


def _ppo_cli(run: Path, env: dict[str, str] | None = None):
    return run_cli("ppo", "--run", str(run), f"prompts.path={run / 'prompts.jsonl'}", "ppo.iterations=3", *LORA_PPO,
                   *TINY_RL, env=env)


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")  # peft's own call, in from_pretrained
def test_lora_ppo_final_is_a_merged_checkpoint_and_a_killed_run_resumes_exactly(rl_run, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    crashed = tmp_path / "crashed"
    shutil.copytree(rl_run, crashed)
    cfg = load_config(PPOConfig, None, [f"prompts.path={rl_run / 'prompts.jsonl'}", "ppo.iterations=3", *LORA_PPO,
                                        *TINY_RL])
    assert run_ppo(RunDir(rl_run), cfg, log=lambda message: None).iterations == 3
    final = rl_run / "rounds" / "001" / "policy" / "final"
    checkpoint = rl_run / "rounds" / "001" / "ppo" / "checkpoints" / "step-000003"
    # Training checkpoints hold adapters (policy and critic) and optimizer state, not whole models.
    assert (checkpoint / "adapter" / "adapter_model.safetensors").exists()
    assert (checkpoint / "critic" / "adapter" / "adapter_model.safetensors").exists()
    assert not (checkpoint / "model.safetensors").exists()

    merged = AutoModelForCausalLM.from_pretrained(str(final), local_files_only=True).eval()
    start_dir = rl_run / "pretrain" / "final"
    adapted = PeftModel.from_pretrained(load_causal_lm(start_dir), str(final / "adapter")).eval()
    ids = torch.tensor([[1, 40, 41, 42, 43, 44]])
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, adapted(input_ids=ids).logits, atol=1e-5)
        assert not torch.allclose(merged(input_ids=ids).logits, load_causal_lm(start_dir)(input_ids=ids).logits,
                                  atol=1e-4)

    killed = _ppo_cli(crashed, env={"ALIGNLOOP_CRASH_AT": "ppo:saved:2"})
    assert killed.returncode == -9
    resumed = _ppo_cli(crashed)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming round 1 from iteration 2" in resumed.stderr
    metrics = [json.loads(line) for line in (final.parent.parent / "ppo" / "metrics.jsonl").read_text().splitlines()]
    resumed_metrics = [json.loads(line) for line in
                       (crashed / "rounds" / "001" / "ppo" / "metrics.jsonl").read_text().splitlines()]
    for key in ("score", "kl", "policy_loss", "value_loss"):
        assert resumed_metrics[2][key] == metrics[2][key], key
    weights = load_file(str(final / "model.safetensors"))
    resumed_weights = load_file(str(crashed / "rounds" / "001" / "policy" / "final" / "model.safetensors"))
    assert all(torch.equal(weights[k], resumed_weights[k]) for k in weights)


def test_lora_settings_errors_are_one_line(rl_run):
    model = load_causal_lm(rl_run / "pretrain" / "final")
    with pytest.raises(ConfigError, match=r"lora.target_modules \['nope'\] match no layer of LlamaForCausalLM.*q_proj"):
        add_lora(model, LoraSettings(r=4, target_modules=["q_proj", "nope"]), "causal_lm")
    with pytest.raises(ConfigError, match=r"do not fit LlamaForCausalLM"):  # a layer, but not one LoRA can adapt
        add_lora(model, LoraSettings(r=4, target_modules=["act_fn"]), "causal_lm")
    only_qv = LoraSettings(r=4, target_modules=["q_proj", "v_proj"])
    adapted = add_lora(load_causal_lm(rl_run / "pretrain" / "final"), only_qv, "causal_lm")
    assert {name.split(".")[-4] for name, p in adapted.named_parameters() if p.requires_grad} == {"q_proj", "v_proj"}
    result = run_cli("ppo", "--run", str(rl_run), "models.lora.r=4", "models.lora.target_modules=[nope]",
                     "ppo.iterations=1", f"prompts.path={rl_run / 'prompts.jsonl'}", *TINY_RL)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "lora.target_modules ['nope'] match no layer" in result.stderr


def test_bf16_on_cpu_is_a_one_line_error(pretrained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(pretrained_run, run)
    data = tmp_path / "sft.jsonl"
    data.write_text(json.dumps({"prompt": "Tom went", "response": "to the park."}) + "\n")
    result = run_cli("sft", "--run", str(run), f"data.path={data}", "data.val_fraction=0", "train.precision=bf16",
                     "train.device=cpu", "train.max_steps=1")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "train.precision=bf16 needs a CUDA device" in result.stderr


REWARD_FAST = ["train.batch_size=8", "train.lr=3e-3", "train.warmup_steps=2", "train.eval_every=4",
               "train.save_every=4", "train.log_every=2", "train.threads=1", "train.patience=0", "model.max_length=48",
               "train.epochs=2", "model.lora.r=4"]


def test_lora_reward_model_resumes_exactly_and_keeps_its_head_trainable(tmp_path):
    from reward_helpers import good_bad_pairs, tiny_decoder, write_jsonl

    from alignloop.reward.config import RewardConfig
    from alignloop.reward.stage import run_reward

    backbone = tiny_decoder(tmp_path / "backbone")
    prefs = write_jsonl(tmp_path / "prefs.jsonl", good_bad_pairs(48))
    args = [f"data.path={prefs}", f"model.path={backbone}", *REWARD_FAST]
    crashed = run_cli("reward", "--run", str(tmp_path / "resumed"), *args, env={"ALIGNLOOP_CRASH_AT": "reward:saved:4"})
    assert crashed.returncode != 0
    checkpoint = tmp_path / "resumed" / "rounds" / "001" / "reward" / "checkpoints" / "step-000004"
    adapter = load_file(str(checkpoint / "adapter" / "adapter_model.safetensors"))
    assert any("score" in key for key in adapter)  # the head is saved (and trained) with the adapters
    resumed = run_cli("reward", "--run", str(tmp_path / "resumed"), *args)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from step 4" in resumed.stderr

    run_reward(RunDir(tmp_path / "straight"), load_config(RewardConfig, None, args), log=lambda message: None)
    finals = [tmp_path / name / "rounds" / "001" / "reward" / "final" for name in ("resumed", "straight")]
    one, two = (load_file(str(final / "model.safetensors")) for final in finals)
    assert one.keys() == two.keys() and all(torch.allclose(one[k], two[k], atol=1e-6) for k in one)
    base = load_file(str(backbone / "model.safetensors"))
    q_proj = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(one[q_proj], base[q_proj])  # the adapters were merged in
    reward = load_reward_model(finals[0], "cpu")  # an ordinary reward-model checkpoint, adapters merged
    assert reward.score_texts(["Tom found a ball."], ["Tom was happy. The end."]).shape == (1,)


def test_best_adapter_is_restored_onto_the_same_base(tmp_path):
    from reward_helpers import tiny_decoder

    from alignloop.models.lora import load_adapter
    from alignloop.reward.model import build_reward_model
    from alignloop.train.checkpoints import save_final

    reward = build_reward_model(tiny_decoder(tmp_path / "backbone"))
    reward.model = with_lora(reward.model, LoraSettings(r=4), "seq_cls")
    best = {name: p.detach().clone() for name, p in reward.model.named_parameters()}
    save_final(tmp_path / "best", reward.model, reward.tokenizer)
    with torch.no_grad():
        for name, parameter in reward.model.named_parameters():
            if parameter.requires_grad:
                parameter.add_(1.0)
    load_adapter(reward.model, tmp_path / "best")
    assert all(torch.equal(best[name], p) for name, p in reward.model.named_parameters())


def test_lora_sft_resumes_exactly_and_pretrain_needs_a_model_path(tmp_path):
    from reward_helpers import good_bad_pairs, tiny_decoder, write_jsonl

    from alignloop.pretrain.config import PretrainConfig
    from alignloop.pretrain.stage import run_pretrain
    from alignloop.sft.config import SFTConfig
    from alignloop.sft.stage import run_sft

    start = tiny_decoder(tmp_path / "start")
    data = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": r["prompt"], "response": r["chosen"]}
                                                for r in good_bad_pairs(24)])
    args = [f"model.path={start}", f"data.path={data}", "model.lora.r=4", "train.batch_size=4", "train.lr=0.01",
            "train.warmup_steps=0", "train.samples=0", "train.eval_batches=1", "train.threads=1", "train.max_steps=4",
            "train.save_every=2"]
    killed = run_cli("sft", "--run", str(tmp_path / "resumed"), *args, env={"ALIGNLOOP_CRASH_AT": "sft:saved:2"})
    assert killed.returncode == -9
    resumed = run_cli("sft", "--run", str(tmp_path / "resumed"), *args)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from step 2" in resumed.stderr and "LoRA r=4:" in resumed.stderr
    run_sft(RunDir(tmp_path / "straight"), load_config(SFTConfig, None, args), log=lambda message: None)
    one, two = (load_file(str(tmp_path / name / "sft" / "final" / "model.safetensors"))
                for name in ("resumed", "straight"))
    assert all(torch.equal(one[k], two[k]) for k in one)
    base = load_file(str(start / "model.safetensors"))
    assert not torch.equal(one["model.layers.0.mlp.up_proj.weight"], base["model.layers.0.mlp.up_proj.weight"])

    with pytest.raises(ConfigError, match="model.lora needs model.path"):
        run_pretrain(RunDir(tmp_path / "scratch"), load_config(PretrainConfig, None, [
            f"data.path={data}", "model.lora.r=4", "model.preset=tiny"]), log=lambda message: None)
