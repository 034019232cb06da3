"""Masked statistics, whitening and GAE, pinned to numbers worked out by hand."""

import math

import pytest
import torch

from alignloop.rl.advantages import gae, masked_mean, masked_var, masked_whiten

X = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[1, 1, 0], [1, 0, 0]])  # selects 1, 2, 4


def test_masked_mean():
    # (1 + 2 + 4) / 3
    assert masked_mean(X, MASK).item() == pytest.approx(7 / 3)
    # per row: (1 + 2) / 2, 4 / 1
    assert masked_mean(X, MASK, dim=1).tolist() == pytest.approx([1.5, 4.0])


def test_masked_mean_of_nothing_is_zero_not_nan():
    assert masked_mean(X, torch.zeros_like(MASK)).item() == 0.0


def test_masked_var():
    # 1, 2, 4: mean 7/3, squared deviations 16/9 + 1/9 + 25/9 = 42/9
    # unbiased: 42/9 / 2 = 7/3; biased: 42/9 / 3 = 14/9
    assert masked_var(X, MASK).item() == pytest.approx(7 / 3)
    assert masked_var(X, MASK, unbiased=False).item() == pytest.approx(14 / 9)
    assert masked_var(X, MASK).item() == pytest.approx(torch.tensor([1.0, 2.0, 4.0]).var().item())
    # a single element has no observed spread
    assert masked_var(X, torch.tensor([[1, 0, 0], [0, 0, 0]])).item() == 0.0


def test_masked_whiten():
    # (x - 7/3) / sqrt(7/3) for x = 1, 2, 4; padding (100) ignored and zeroed
    x = torch.tensor([[1.0, 2.0, 4.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    whitened = masked_whiten(x, mask)
    assert whitened[0].tolist() == pytest.approx([-0.8728716, -0.2182179, 1.0910895, 0.0], abs=1e-5)
    assert masked_mean(whitened, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert masked_var(whitened, mask).item() == pytest.approx(1.0, abs=1e-5)


def test_masked_whiten_without_shift_keeps_the_mean():
    # the above plus 7/3
    x = torch.tensor([[1.0, 2.0, 4.0, 100.0]])
    whitened = masked_whiten(x, torch.tensor([[1, 1, 1, 0]]), shift_mean=False)
    assert whitened[0].tolist() == pytest.approx([1.4604618, 2.1151154, 3.4244228, 0.0], abs=1e-5)


REWARDS = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 7.0]])
VALUES = torch.tensor([[0.5, 0.4, 0.6], [1.0, 0.5, 9.0]])
RESPONSE_MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])  # row 2 is one token shorter; 7.0 and 9.0 are padding


def test_gae_by_hand():
    # gamma = 0.9, lam = 0.5, so gamma * lam = 0.45; V after the last valid token = 0.
    # row 1:
    #   t=2: delta = 1 + 0.9 * 0   - 0.6 = 0.4;   A = 0.4
    #   t=1: delta = 0 + 0.9 * 0.6 - 0.4 = 0.14;  A = 0.14 + 0.45 * 0.4  = 0.32
    #   t=0: delta = 0 + 0.9 * 0.4 - 0.5 = -0.14; A = -0.14 + 0.45 * 0.32 = 0.004
    # row 2 (last valid token at t=1; t=2 is padding):
    #   t=1: delta = 2 + 0.9 * 0   - 0.5 = 1.5;   A = 1.5
    #   t=0: delta = 0 + 0.9 * 0.5 - 1.0 = -0.55; A = -0.55 + 0.45 * 1.5 = 0.125
    # returns = A + V
    advantages, returns = gae(REWARDS, VALUES, RESPONSE_MASK, gamma=0.9, lam=0.5)
    assert advantages.tolist()[0] == pytest.approx([0.004, 0.32, 0.4], abs=1e-6)
    assert advantages.tolist()[1] == pytest.approx([0.125, 1.5, 0.0], abs=1e-6)
    assert returns.tolist()[0] == pytest.approx([0.504, 0.72, 1.0], abs=1e-6)
    assert returns.tolist()[1] == pytest.approx([1.125, 2.0, 0.0], abs=1e-6)


def test_gae_limits():
    # lam = 1, gamma = 1: A_t = (sum of rewards from t on) - V_t, so returns are Monte Carlo returns.
    advantages, returns = gae(REWARDS, VALUES, RESPONSE_MASK, gamma=1.0, lam=1.0)
    assert returns.tolist()[0] == pytest.approx([1.0, 1.0, 1.0])
    assert returns.tolist()[1] == pytest.approx([2.0, 2.0, 0.0])
    # lam = 0: A_t is the one-step TD residual delta_t (row 1: -0.14, 0.14, 0.4 with gamma 0.9).
    advantages, _ = gae(REWARDS, VALUES, RESPONSE_MASK, gamma=0.9, lam=0.0)
    assert advantages.tolist()[0] == pytest.approx([-0.14, 0.14, 0.4], abs=1e-6)


def test_gae_ignores_whatever_padding_holds():
    noisy_rewards, noisy_values = REWARDS.clone(), VALUES.clone()
    noisy_rewards[1, 2], noisy_values[1, 2] = math.nan, math.inf
    a1, r1 = gae(REWARDS, VALUES, RESPONSE_MASK, 0.9, 0.5)
    a2, r2 = gae(noisy_rewards, noisy_values, RESPONSE_MASK, 0.9, 0.5)
    assert torch.equal(a1, a2) and torch.equal(r1, r2)


def test_gae_returns_targets_without_gradient():
    values = VALUES.clone().requires_grad_()
    advantages, returns = gae(REWARDS, values, RESPONSE_MASK, 0.9, 0.5)
    assert not advantages.requires_grad and not returns.requires_grad


def test_masked_statistics_ignore_nan_in_padding():
    x = torch.tensor([[1.0, 2.0, math.nan], [4.0, math.inf, math.nan]])
    assert masked_mean(x, MASK).item() == pytest.approx(7 / 3)
    assert masked_var(x, MASK).item() == pytest.approx(7 / 3)
    assert torch.isfinite(masked_whiten(x, MASK)).all()
