"""Reward uncertainty: the conservative rewards and the spread pinned by hand, per-head statistics (old files still
load), and PPO on an ensemble (a head plus a member) with mean - std, logging reward_spread and ood_fraction."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from alignloop.config.base import load_config
from alignloop.errors import CheckpointError, ConfigError
from alignloop.reward.model import RewardStats, read_stats
from alignloop.reward.uncertainty import (
    check_estimates,
    combine_estimates,
    estimate_spread,
    normalise_estimates,
    spread_figures,
)
from conftest import TINY_RL

# Three responses, three estimates each (float64: the sums below are exact to ~1e-15).
ESTIMATES = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [-1.0, 2.0, 5.0]], dtype=torch.float64)
TOL = 1e-12


def close(tensor: torch.Tensor, expected: list[float]) -> bool:
    return all(abs(float(a) - b) <= TOL for a, b in zip(tensor, expected)) and len(tensor) == len(expected)


def test_conservative_rewards_by_hand():
    # Population std (divide by 3): row 0 sqrt((1 + 0 + 1) / 3), row 2 sqrt((9 + 0 + 9) / 3) = sqrt(6).
    assert close(estimate_spread(ESTIMATES), [math.sqrt(2 / 3), 0.0, math.sqrt(6)])
    assert close(combine_estimates(ESTIMATES, "mean"), [2.0, 0.0, 2.0])
    assert close(combine_estimates(ESTIMATES, "mean_minus_std"), [2 - math.sqrt(2 / 3), 0.0, 2 - math.sqrt(6)])
    assert close(combine_estimates(ESTIMATES, "mean_minus_std", 0.5),
                 [2 - 0.5 * math.sqrt(2 / 3), 0.0, 2 - 0.5 * math.sqrt(6)])
    assert close(combine_estimates(ESTIMATES, "min"), [1.0, 0.0, -1.0])
    one = torch.tensor([[0.7], [-0.2]], dtype=torch.float64)
    assert close(estimate_spread(one), [0.0, 0.0]) and close(combine_estimates(one, "mean"), [0.7, -0.2])
    with pytest.raises(ConfigError, match="must be one of mean, mean_minus_std, min"):
        combine_estimates(ESTIMATES, "median")


def test_a_conservative_reward_refuses_a_single_estimate():
    check_estimates("mean", 1)
    check_estimates("min", 2)
    for kind in ("mean_minus_std", "min"):
        with pytest.raises(ConfigError, match=r"gives 1: train it with ensemble.heads>=2 or ensemble.models>=2"):
            check_estimates(kind, 1)


def test_each_estimate_on_its_own_scale_and_the_spread_figures():
    raw = torch.tensor([[1.0, 10.0], [3.0, 20.0]], dtype=torch.float64)
    assert torch.equal(normalise_estimates(raw, [1.0, 10.0], [2.0, 5.0]),
                       torch.tensor([[0.0, 0.0], [1.0, 2.0]], dtype=torch.float64))
    # Spreads sqrt(2/3) ~ 0.816, 0, sqrt(6) ~ 2.449: one of three above 1.0.
    figures = spread_figures(ESTIMATES, 1.0)
    assert abs(figures["reward_spread"] - (math.sqrt(2 / 3) + math.sqrt(6)) / 3) <= 1e-6
    assert figures["ood_fraction"] == pytest.approx(1 / 3, abs=1e-7)
    assert spread_figures(ESTIMATES, 3.0)["ood_fraction"] == 0.0
    assert "ood_fraction" not in spread_figures(ESTIMATES, None)  # no validation figure: no OOD share


def test_per_head_statistics_and_old_files(tmp_path):
    # Heads [N=2, 2]: the shared figures are those of the mean reward (5.5, 8.5), each head has its own.
    stats = RewardStats.from_heads(torch.tensor([[1.0, 10.0], [3.0, 14.0]]))
    assert (stats.mean, stats.n) == (7.0, 2) and abs(stats.std - math.sqrt(4.5)) <= 1e-6
    assert stats.head_mean == [2.0, 12.0]
    assert abs(stats.head_std[0] - math.sqrt(2)) <= 1e-6 and abs(stats.head_std[1] - math.sqrt(8)) <= 1e-6
    stats.spread_q95 = 0.25
    (tmp_path / "reward_stats.json").write_text(json.dumps(stats.to_json()))
    again = read_stats(tmp_path)
    assert again.head_stats(2) == (stats.head_mean, stats.head_std) and again.spread_q95 == 0.25
    # A file from before per-head statistics: the shared ones stand for every head.
    (tmp_path / "reward_stats.json").write_text('{"mean": 0.5, "std": 2.0, "n": 300}')
    old = read_stats(tmp_path)
    assert old.head_stats(3) == ([0.5] * 3, [2.0] * 3) and old.spread_q95 is None
    assert old.to_json() == {"mean": 0.5, "std": 2.0, "n": 300}
    (tmp_path / "reward_stats.json").write_text('{"mean": 0.5, "std": 2.0, "head_mean": [0, 1], "head_std": [1, 0]}')
    with pytest.raises(CheckpointError, match="invalid mean or std"):
        read_stats(tmp_path)


@pytest.mark.usefixtures("single_thread")
def test_ppo_on_an_ensemble_with_mean_minus_std(rl_run):
    from alignloop.reward.model import STATS_FILE
    from alignloop.rl.config import PPOConfig
    from alignloop.rl.ppo import run_ppo
    from alignloop.rl.rollout import open_reward_scorer
    from alignloop.runs import RunDir

    reward_dir = rl_run / "rounds" / "001" / "reward"
    member = reward_dir / "ensemble" / "member-02" / "final"
    shutil.copytree(reward_dir / "final", member)
    # The same weights on another scale: the two normalised estimates differ by a known affine map.
    (member / STATS_FILE).write_text(json.dumps({"mean": -0.3, "std": 0.5, "n": 10}))
    stats = json.loads((reward_dir / "final" / STATS_FILE).read_text())
    (reward_dir / "final" / STATS_FILE).write_text(json.dumps({**stats, "ensemble_spread_q95": 0.05,
                                                               "ensemble_estimates": 2}))

    from alignloop.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(rl_run / "pretrain" / "final")
    scorer = open_reward_scorer(reward_dir / "final", torch.device("cpu"), tokenizer, PPOConfig().reward, 8, "ppo",
                                lambda _: None)
    assert scorer.size == 2 and scorer.spread_threshold == 0.05
    raw = torch.tensor([[1.0, 1.0], [-0.3, -0.3]])
    expected = torch.tensor([[(1.0 - 0.1) / 2.0, (1.0 + 0.3) / 0.5], [(-0.3 - 0.1) / 2.0, 0.0]])
    assert torch.allclose(scorer.normalised(raw), expected, atol=1e-6)
    no_members = load_config(PPOConfig, None, ["reward.members=false", "reward.uncertainty=min"]).reward
    with pytest.raises(ConfigError, match="ensemble.heads>=2 or ensemble.models>=2"):
        open_reward_scorer(reward_dir / "final", torch.device("cpu"), tokenizer, no_members, 8, "ppo", lambda _: None)

    cfg = load_config(PPOConfig, None, [f"prompts.path={rl_run / 'prompts.jsonl'}", "ppo.iterations=2",
                                        "ppo.rollout_prompts=8", "ppo.epochs=1", "ppo.minibatches=1",
                                        "run.precision=fp32", "reward.uncertainty=mean_minus_std",
                                        "reward.clip=null", "reward.missing_eos_penalty=0", *TINY_RL])
    said = []
    run_ppo(RunDir(rl_run), cfg, log=said.append)
    assert any("2 reward estimates (1 head(s) + 1 other ensemble member(s)), reward = mean_minus_std" in line
               for line in said)
    metrics = [json.loads(line) for line in (rl_run / "rounds" / "001" / "ppo" / "metrics.jsonl").read_text()
               .splitlines()]
    for m in metrics:
        assert m["reward_spread"] > 0 and 0 <= m["ood_fraction"] <= 1
        # Both estimates are affine in the one raw score s: mean - std = min of the two, and the mean raw score
        # gives the mean of each; the reward (no clip, no penalty) is their mean-minus-std averaged over responses,
        # never above the plain mean of the normalised estimates.
        plain = ((m["score"] - 0.1) / 2.0 + (m["score"] + 0.3) / 0.5) / 2
        assert m["reward"] <= plain + 1e-5
    entry = json.loads((rl_run / "manifest.json").read_text())["stages"]["ppo:001"]
    assert "reward_member_02" in entry["inputs"]
