"""PPO, value, DPO and group-baseline losses, pinned to numbers worked out by hand."""

import math

import pytest
import torch

from alignloop.rl.losses import (
    dpo_loss,
    entropy_from_logits,
    explained_variance,
    group_advantages,
    implicit_reward_accuracy,
    last_token_value_error,
    ppo_policy_loss,
    ppo_value_loss,
)

# Four valid tokens (row 2 has one) with ratios 1.5, 0.5, 1.0 | 0.5 and advantages 1, 1, -1 | -1.
RATIOS = torch.tensor([[1.5, 0.5, 1.0], [0.5, 3.0, 1.0]])
ADVANTAGES = torch.tensor([[1.0, 1.0, -1.0], [-1.0, 5.0, 0.0]])
MASK = torch.tensor([[1, 1, 1], [1, 0, 0]])


def test_ppo_policy_loss_by_hand():
    # clip_range 0.2; per token max(-A * rho, -A * clip(rho, 0.8, 1.2)):
    #   rho 1.5, A  1: max(-1.5, -1.2) = -1.2  (clipped term used)
    #   rho 0.5, A  1: max(-0.5, -0.8) = -0.5
    #   rho 1.0, A -1: max( 1.0,  1.0) =  1.0
    #   rho 0.5, A -1: max( 0.5,  0.8) =  0.8  (clipped term used)
    # loss = (-1.2 - 0.5 + 1.0 + 0.8) / 4 = 0.025; clipfrac = 2 / 4
    # approx_kl = mean((rho - 1) - ln rho) = (0.0945349 + 0.1931472 + 0 + 0.1931472) / 4 = 0.1202073
    # ratio = (1.5 + 0.5 + 1.0 + 0.5) / 4 = 0.875
    old = torch.zeros_like(RATIOS)
    loss, stats = ppo_policy_loss(RATIOS.log(), old, ADVANTAGES, MASK, clip_range=0.2)
    assert loss.item() == pytest.approx(0.025, abs=1e-6)
    assert stats["clipfrac"].item() == pytest.approx(0.5)
    assert stats["approx_kl"].item() == pytest.approx(0.1202073, abs=1e-6)
    assert stats["ratio"].item() == pytest.approx(0.875)


def test_ppo_policy_gradient_is_cut_where_the_clip_is_active():
    # d/d logprob of -A * rho = -A * rho / N (N = 4 tokens); 0 where the clipped term was used.
    logprobs = RATIOS.log().requires_grad_()
    loss, _ = ppo_policy_loss(logprobs, torch.zeros_like(RATIOS), ADVANTAGES, MASK, clip_range=0.2)
    loss.backward()
    assert logprobs.grad[0].tolist() == pytest.approx([0.0, -0.125, 0.25])
    assert logprobs.grad[1].tolist() == pytest.approx([0.0, 0.0, 0.0])


def test_ppo_ratio_is_one_on_policy():
    logprobs = torch.tensor([[-1.0, -2.0]])
    _, stats = ppo_policy_loss(logprobs, logprobs.clone(), torch.tensor([[1.0, -1.0]]), torch.ones(1, 2), 0.2)
    assert stats["ratio"].item() == 1.0 and stats["approx_kl"].item() == 0.0 and stats["clipfrac"].item() == 0.0


def test_ppo_value_loss_by_hand():
    # clip 0.2:
    #   token 1: V 1.0, old 0.5 -> V_clip 0.7; (1 - 2)^2 = 1, (0.7 - 2)^2 = 1.69 -> 1.69 (clipped used)
    #   token 2: V 0.0, old 0.5 -> V_clip 0.3; (0 - 1)^2 = 1, (0.3 - 1)^2 = 0.49 -> 1
    #   token 3: padding
    # loss = 0.5 * (1.69 + 1) / 2 = 0.6725; vf_clipfrac = 1 / 2
    values = torch.tensor([[1.0, 0.0, 2.0]])
    old_values = torch.tensor([[0.5, 0.5, 2.0]])
    returns = torch.tensor([[2.0, 1.0, 0.0]])
    loss, stats = ppo_value_loss(values, old_values, returns, torch.tensor([[1, 1, 0]]), clip_range_value=0.2)
    assert loss.item() == pytest.approx(0.6725)
    assert stats["vf_clipfrac"].item() == pytest.approx(0.5)


def test_entropy_from_logits():
    # uniform over 4: ln 4 = 1.3862944
    # p = (0.25, 0.75): -(0.25 ln 0.25 + 0.75 ln 0.75) = 0.3465736 + 0.2157616 = 0.5623351
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [0.0, math.log(3.0), -math.inf, -math.inf]]])
    assert entropy_from_logits(logits).tolist()[0] == pytest.approx([1.3862944, 0.5623351], abs=1e-6)


def test_entropy_of_finite_logits_matches_the_definition():
    logits = torch.randn(2, 3, 11, generator=torch.Generator().manual_seed(0))
    p = logits.softmax(-1)
    assert torch.allclose(entropy_from_logits(logits), -(p * p.log()).sum(-1), atol=1e-6)


def test_explained_variance():
    returns = torch.tensor([[1.0, 2.0, 3.0, 50.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    assert explained_variance(returns.clone(), returns, mask).item() == pytest.approx(1.0)
    # residuals (0, 1, 0): variance 1/3; Var(returns 1, 2, 3) = 1 -> 1 - 1/3
    assert explained_variance(torch.tensor([[1.0, 1.0, 3.0, 0.0]]), returns, mask).item() == pytest.approx(2 / 3)
    # a constant prediction explains nothing: residuals (-1, 0, 1) have the returns' variance
    assert explained_variance(torch.full((1, 4), 2.0), returns, mask).item() == pytest.approx(0.0)
    assert math.isnan(explained_variance(torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2)).item())


def test_last_token_value_error_by_hand():
    # Last tokens: row 1 at index 2 (V 0.5, G 2.0: -1.5), row 2 at index 0 (V 1.0, G 0.25: +0.75),
    # row 3 has no token and is left out; padding (99) is never read.
    values = torch.tensor([[9.0, 9.0, 0.5], [1.0, 99.0, 99.0], [7.0, 7.0, 7.0]])
    returns = torch.tensor([[0.0, 0.0, 2.0], [0.25, 99.0, 99.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    # (0.5 - 2.0 + 1.0 - 0.25) / 2 = -0.375
    assert last_token_value_error(values, returns, mask).item() == pytest.approx(-0.375)
    assert last_token_value_error(values, returns, torch.zeros_like(mask)).item() == 0.0


def test_dpo_loss_by_hand():
    # log-ratios: chosen -10 - (-11) = 1, rejected -12 - (-11) = -1; h = 2; beta * h = 0.2
    # loss = -ln sigmoid(0.2) = ln(1 + e^-0.2) = 0.5981389
    # implicit rewards: 0.1 * 1, 0.1 * -1
    loss, chosen, rejected = dpo_loss(
        torch.tensor([-10.0]), torch.tensor([-12.0]), torch.tensor([-11.0]), torch.tensor([-11.0]), beta=0.1)
    assert loss.item() == pytest.approx(0.5981389, abs=1e-6)
    assert chosen.item() == pytest.approx(0.1) and rejected.item() == pytest.approx(-0.1)


def test_dpo_label_smoothing_by_hand():
    # cDPO, s = 0.1: 0.9 * (-ln sigmoid(0.2)) + 0.1 * (-ln sigmoid(-0.2))
    #             = 0.9 * 0.5981389 + 0.1 * (0.2 + 0.5981389) = 0.6181389
    loss, _, _ = dpo_loss(torch.tensor([-10.0]), torch.tensor([-12.0]), torch.tensor([-11.0]),
                          torch.tensor([-11.0]), beta=0.1, label_smoothing=0.1)
    assert loss.item() == pytest.approx(0.6181389, abs=1e-6)


def test_dpo_at_the_reference_is_log_two_and_gradient_only_reaches_the_policy():
    policy = torch.tensor([-3.0, -4.0]).requires_grad_()
    reference = torch.tensor([-3.0, -4.0]).requires_grad_()
    loss, _, _ = dpo_loss(policy[:1], policy[1:], reference[:1], reference[1:], beta=0.5)
    assert loss.item() == pytest.approx(math.log(2))
    loss.backward()
    # d/d chosen of -ln sigmoid(beta * h) at h = 0: -beta * 0.5 = -0.25
    assert policy.grad.tolist() == pytest.approx([-0.25, 0.25])
    assert reference.grad is None


SCORES = torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0, 6.0])  # two prompts, three samples each


def test_implicit_reward_accuracy_counts_ties_half():
    chosen = torch.tensor([0.3, 0.0, -0.2, 1e-7])
    rejected = torch.tensor([0.1, 0.0, 0.5, 0.0])
    # win, tie, loss, win (1e-7 above with no resolution): (1 + 0.5 + 0 + 1) / 4
    assert implicit_reward_accuracy(chosen, rejected).item() == pytest.approx(0.625)
    # 1e-7 within a resolution of 1e-6 is a tie: (1 + 0.5 + 0 + 0.5) / 4
    assert implicit_reward_accuracy(chosen, rejected, 1e-6).item() == pytest.approx(0.5)
    # at the start (policy = reference) every margin is 0: chance, not 0
    assert implicit_reward_accuracy(torch.zeros(5), torch.zeros(5)).item() == 0.5


def test_grpo_advantages_by_hand():
    # group 1: mean 2, unbiased std 1 -> (-1, 0, 1)
    # group 2: mean 2, deviations (-2, -2, 4), std sqrt((4 + 4 + 16) / 2) = sqrt(12) -> (-0.5773503, -0.5773503, 1.1547005)
    advantages = group_advantages(SCORES, group_size=3, kind="grpo", eps=0.0)
    assert advantages.tolist() == pytest.approx([-1.0, 0.0, 1.0, -0.5773503, -0.5773503, 1.1547005], abs=1e-6)
    # default eps 1e-4: 1 / (1 + 1e-4) = 0.9999000
    assert group_advantages(SCORES, 3)[2].item() == pytest.approx(0.9999000, abs=1e-6)
    # without scaling (Dr. GRPO): just the deviation from the group mean
    assert group_advantages(SCORES, 3, scale=False).tolist() == pytest.approx([-1, 0, 1, -2, -2, 4])


def test_grpo_group_with_equal_scores_gets_zero_advantage():
    assert group_advantages(torch.tensor([0.7, 0.7, 0.7, 0.7]), 4).tolist() == [0.0, 0.0, 0.0, 0.0]


def test_rloo_advantages_by_hand():
    # leave-one-out baselines in group 1: (2 + 3) / 2 = 2.5, (1 + 3) / 2 = 2, (1 + 2) / 2 = 1.5
    # -> 1 - 2.5, 2 - 2, 3 - 1.5 = (-1.5, 0, 1.5); group 2: (0 - 3, 0 - 3, 6 - 0) = (-3, -3, 6)
    advantages = group_advantages(SCORES, group_size=3, kind="rloo")
    assert advantages.tolist() == pytest.approx([-1.5, 0.0, 1.5, -3.0, -3.0, 6.0])


def test_group_advantages_refuses_bad_groups():
    with pytest.raises(ValueError):
        group_advantages(SCORES, 4)
    with pytest.raises(ValueError):
        group_advantages(SCORES, 1)
    with pytest.raises(ValueError):
        group_advantages(SCORES, 3, kind="ppo")
