"""Best-of-n with the reward model: the KL bound, the choice, and the stage's report."""

from __future__ import annotations

import json
import math

import pytest
import torch

from alignloop.config.base import load_config
from alignloop.models.causal_lm import load_causal_lm
from alignloop.reward.model import load_reward_model
from alignloop.rl.bon import best_of_n, best_of_n_kl, run_bon
from alignloop.rl.config import BoNConfig
from alignloop.rl.rollout import RewardScorer
from alignloop.runs import RunDir
from alignloop.tokenizer import load_tokenizer
from conftest import RL_PROMPTS, TINY_RL

pytestmark = pytest.mark.usefixtures("single_thread")


def test_best_of_n_kl_bound():
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(2) == pytest.approx(math.log(2) - 0.5)
    assert best_of_n_kl(16) == pytest.approx(math.log(16) - 15 / 16)


def test_best_of_n_keeps_the_highest_scored_candidate(rl_run_template):
    start = rl_run_template / "pretrain" / "final"
    tokenizer = load_tokenizer(start)
    reward_model = load_reward_model(rl_run_template / "rounds" / "001" / "reward" / "final", "cpu")
    scorer = RewardScorer(reward_model, tokenizer)
    cfg = load_config(BoNConfig, None, TINY_RL[:2])
    policy = load_causal_lm(start).eval()
    chosen = best_of_n(policy, tokenizer, scorer, RL_PROMPTS[:3], 4, cfg.sampling, 64, torch.Generator().manual_seed(0))
    assert [c["prompt"] for c in chosen] == RL_PROMPTS[:3]
    assert all(c["score"] >= c["mean_score"] - 1e-6 for c in chosen)
    assert any(c["score"] > c["mean_score"] + 1e-6 for c in chosen)  # the best beats the average somewhere
    # n = 1 is one plain sample.
    single = best_of_n(policy, tokenizer, scorer, RL_PROMPTS[:3], 1, cfg.sampling, 64, torch.Generator().manual_seed(0))
    assert all(c["score"] == c["mean_score"] for c in single)
    # A pick cut at the length limit says so, for distillation to teach it without an end token.
    cut_sampling = cfg.sampling.model_copy(update={"max_new_tokens": 1, "min_new_tokens": 1})
    cut = best_of_n(policy, tokenizer, scorer, RL_PROMPTS[:3], 2, cut_sampling, 64, torch.Generator().manual_seed(0))
    assert [c["ended"] for c in cut] == [False] * 3


def test_run_bon_reports_win_rates_and_the_kl_bound(rl_run):
    cfg = load_config(BoNConfig, None, [f"prompts.path={rl_run / 'prompts.jsonl'}", "bon.n=2", *TINY_RL])
    result = run_bon(RunDir(rl_run), cfg, log=lambda message: None)
    saved = json.loads((rl_run / "rounds" / "001" / "bon" / "eval.json").read_text())
    assert saved == result and result["n"] == 8 and result["kl"] == pytest.approx(best_of_n_kl(2))
    assert 0 <= result["rm_win_rate"] <= 1
    # These prompts are not the built-in story task's: the gold judge is left out, saying why.
    assert result["gold_win_rate"] is None and "the gold judge scores the built-in story task only" in result["gold_omitted"]
    rows = (rl_run / "rounds" / "001" / "bon" / "eval_samples.jsonl").read_text().splitlines()
    assert len(rows) == 8 and {"prompt", "sft_response", "policy_response"} <= set(json.loads(rows[0]))
