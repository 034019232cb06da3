"""GRPO and RLOO: group baselines on real rollouts of a tiny model, and the stage end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch

from alignloop.config.base import load_config
from alignloop.models.causal_lm import load_causal_lm
from alignloop.reward.model import load_reward_model
from alignloop.rl.config import GRPOConfig
from alignloop.rl.grpo import grpo_iteration, grpo_state, run_grpo
from alignloop.rl.rollout import RewardScorer, encode_prompts
from alignloop.runs import RunDir
from alignloop.tokenizer import load_tokenizer
from conftest import RL_PROMPTS, TINY_RL

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("estimator", ["grpo", "rloo"])
def test_every_token_gets_its_response_advantage_centred_within_the_group(rl_run_template, estimator):
    start = rl_run_template / "pretrain" / "final"
    tokenizer = load_tokenizer(start)
    reward_model = load_reward_model(rl_run_template / "rounds" / "001" / "reward" / "final", "cpu")
    cfg = load_config(GRPOConfig, None, [f"grpo.estimator={estimator}", "grpo.group_size=4", *TINY_RL[:2]])
    state = grpo_state(load_causal_lm(start), load_causal_lm(start), RewardScorer(reward_model, tokenizer),
                       tokenizer, cfg)
    prompts = RL_PROMPTS[:3]
    exp, stats = grpo_iteration(state, prompts, encode_prompts(tokenizer, prompts, 64), cfg)
    assert len(exp) == 12 and exp.prompts[:4] == [prompts[0]] * 4
    mask = exp.response_mask
    per_response = exp.advantages[:, 0]
    assert torch.equal(exp.advantages, per_response.unsqueeze(-1) * mask)  # the same on every response token
    assert per_response.view(3, 4).sum(-1).abs().max() < 1e-4  # centred in each group
    if estimator == "rloo":  # r_i - mean of the other three, by hand
        r = exp.rewards.view(3, 4)  # kl_in_loss (the default): the KL is not in the reward
        expected = r - (r.sum(-1, keepdim=True) - r) / 3
        assert torch.allclose(per_response.view(3, 4), expected, atol=1e-5)
    assert abs(stats["kl"]) < 1e-4 and math.isfinite(stats["policy_loss"])


def test_run_grpo_writes_its_policy_and_metrics(rl_run):
    cfg = load_config(GRPOConfig, None, [f"prompts.path={rl_run / 'prompts.jsonl'}", "grpo.iterations=2",
                                         "grpo.rollout_prompts=4", "grpo.group_size=2", "grpo.estimator=rloo",
                                         "grpo.kl_in_loss=false", *TINY_RL])
    result = run_grpo(RunDir(rl_run), cfg, log=lambda message: None)
    assert result.iterations == 2
    assert (rl_run / "rounds" / "001" / "grpo" / "final" / "model.safetensors").exists()
    metrics_file = rl_run / "rounds" / "001" / "grpo" / "metrics.jsonl"
    metrics = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    assert {"score", "kl", "entropy", "clipfrac", "group_score_std", "response_length"} <= set(metrics[0])
