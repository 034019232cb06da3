"""KL estimators, per-token rewards and KL controllers, pinned to numbers worked out by hand."""

import math

import pytest
import torch

from alignloop.rl.kl import (
    AdaptiveKLController,
    FixedKLController,
    kl_controller_from_state,
    kl_penalty,
    token_rewards,
)

# log r = ref - logprobs = [-0.5, 1.0]
LOGPROBS = torch.tensor([[-1.0, -2.0]])
REF_LOGPROBS = torch.tensor([[-1.5, -1.0]])


def test_k1_is_the_log_ratio():
    # -log r
    assert kl_penalty(LOGPROBS, REF_LOGPROBS, "k1").tolist() == [[0.5, -1.0]]


def test_k2_is_half_the_squared_log_ratio():
    # (log r)^2 / 2: 0.25 / 2, 1 / 2
    assert kl_penalty(LOGPROBS, REF_LOGPROBS, "k2").tolist() == [[0.125, 0.5]]


def test_k3():
    # (r - 1) - log r: e^-0.5 - 1 + 0.5 = 0.1065307; e - 1 - 1 = 0.7182818
    assert kl_penalty(LOGPROBS, REF_LOGPROBS, "k3")[0].tolist() == pytest.approx([0.1065307, 0.7182818], abs=1e-6)


def test_abs():
    assert kl_penalty(LOGPROBS, REF_LOGPROBS, "abs").tolist() == [[0.5, 1.0]]


def test_unknown_estimator_is_refused():
    with pytest.raises(ValueError, match="k4"):
        kl_penalty(LOGPROBS, REF_LOGPROBS, "k4")


def test_k1_and_k3_are_unbiased_for_the_exact_kl():
    # Expectation over tokens drawn from the policy p, computed exactly:
    # E_p[k1] = sum p log(p/q) = KL(p||q); E_p[k3] = sum p (q/p - 1 - log(q/p)) = (1 - 1) + KL.
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    q = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    exact = (p * (p / q).log()).sum().item()  # 0.5 ln 2.5 + 0.2 ln 0.4 = 0.2749
    for kind in ("k1", "k3"):
        estimate = (p * kl_penalty(p.log(), q.log(), kind)).sum().item()
        assert estimate == pytest.approx(exact, abs=1e-12)
    assert exact == pytest.approx(0.5 * math.log(2.5) + 0.2 * math.log(0.4))


def test_token_rewards_put_the_score_on_the_last_response_token():
    # beta = 0.5: every token gets -0.5 * kl; the score lands on the last valid token
    # row 1 (3 tokens): [-0.05, -0.1, -0.15 + 1.0]
    # row 2 (2 tokens, then padding): [-0.2, -0.25 + 2.0, 0 (padding: not 2.0, not -0.3)]
    score = torch.tensor([1.0, 2.0])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    rewards = token_rewards(score, kl, mask, beta=0.5)
    assert rewards[0].tolist() == pytest.approx([-0.05, -0.1, 0.85])
    assert rewards[1].tolist() == pytest.approx([-0.2, 1.75, 0.0])


def test_token_rewards_row_without_tokens_gets_nothing():
    rewards = token_rewards(torch.tensor([5.0]), torch.tensor([[0.3, 0.3]]), torch.tensor([[0, 0]]), beta=1.0)
    assert rewards.tolist() == [[0.0, 0.0]]


def test_adaptive_controller_by_hand():
    # Ziegler et al. 2019: e = clip(KL / target - 1, -0.2, 0.2); beta *= 1 + e * n / horizon
    controller = AdaptiveKLController(init_beta=0.2, target=6.0, horizon=10000)
    # KL 9: e = 0.5 -> 0.2;  beta = 0.2 * (1 + 0.2 * 256 / 10000) = 0.2 * 1.00512
    assert controller.update(9.0, 256) == pytest.approx(0.201024)
    # KL 3: e = -0.5 -> -0.2; beta = 0.201024 * 0.99488
    assert controller.update(3.0, 256) == pytest.approx(0.19999475712)
    # KL 6.6: e = 0.1 (inside the clip); beta *= 1 + 0.1 * 256 / 10000 = 1.00256
    assert controller.update(6.6, 256) == pytest.approx(0.19999475712 * 1.00256)
    assert controller.beta == pytest.approx(0.2005067437)


def test_adaptive_controller_resumes_from_its_state():
    controller = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    controller.update(12.0, 1000)
    state = controller.state_dict()
    resumed = AdaptiveKLController(0.5, target=1.0, horizon=5)
    resumed.load_state_dict(state)
    assert (resumed.beta, resumed.target, resumed.horizon) == (controller.beta, 6.0, 10000)
    rebuilt = kl_controller_from_state(state)
    assert rebuilt.update(3.0, 10) == pytest.approx(controller.update(3.0, 10))


def test_fixed_controller():
    controller = FixedKLController(0.05)
    assert controller.update(100.0, 512) == 0.05
    restored = kl_controller_from_state(controller.state_dict())
    assert isinstance(restored, FixedKLController) and restored.beta == 0.05
