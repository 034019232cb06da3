"""KL estimators, per-token rewards and KL controllers, pinned to numbers worked out by hand."""

import math

import pytest
import torch

from alignloop.config.base import load_config
from alignloop.errors import ConfigError
from alignloop.rl.config import GRPOConfig, PPOConfig
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


# A one-token "response" from a categorical policy pi = softmax(theta) over 3 outcomes, and a reference.
# Every expectation below is a sum over the 3 outcomes: exact, no sampling.
PI = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
REF = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
# KL(pi || ref) = 0.5 ln 2.5 + 0.2 ln 0.4 = 0.2748872196; its gradient in theta, d KL / d theta_j =
# pi_j (ln(pi_j / ref_j) - KL): [0.5 (0.9162907 - 0.2748872), 0.3 (0 - 0.2748872), 0.2 (-0.9162907 - 0.2748872)]
GRAD_KL = [0.3207017562, -0.0824661659, -0.2382355903]
# float64 sums of three terms: a few ulps of 1e-16 on numbers below 1; the hand figures carry 10 digits.
EXACT = 1e-12
BY_HAND = 1e-9


def reward_penalty_gradient(kind: str, beta: float = 1.0) -> torch.Tensor:
    """Exact policy gradient of E_pi[R] with R = -beta * k(x), the reward held fixed (score function):
    sum_x pi(x) R(x) grad log pi(x), as PPO/RLOO take it through the clipped surrogate at ratio 1."""
    theta = PI.log().clone().requires_grad_(True)
    logp = theta.log_softmax(-1)
    reward = -beta * kl_penalty(logp.detach(), REF.log(), kind)
    surrogate = (logp.detach().exp() * reward * logp).sum()
    return torch.autograd.grad(surrogate, theta)[0]


def loss_term_gradient(kind: str) -> torch.Tensor:
    """Exact gradient of E_x~pi_old[k(x)], differentiated through log pi at pi = pi_old (GRPO's KL loss term)."""
    theta = PI.log().clone().requires_grad_(True)
    logp = theta.log_softmax(-1)
    return torch.autograd.grad((logp.detach().exp() * kl_penalty(logp, REF.log(), kind)).sum(), theta)[0]


def analytic_kl_gradient(reverse: bool = False) -> tuple[float, torch.Tensor]:
    """KL(pi || ref) (or KL(ref || pi)) in closed form and its gradient in theta, by autograd."""
    theta = PI.log().clone().requires_grad_(True)
    pi = theta.softmax(-1)
    kl = (REF * (REF / pi).log()).sum() if reverse else (pi * (pi / REF).log()).sum()
    return float(kl.detach()), torch.autograd.grad(kl, theta)[0]


def test_the_analytic_kl_gradient_by_hand():
    kl, gradient = analytic_kl_gradient()
    assert kl == pytest.approx(0.2748872196, abs=BY_HAND)
    assert gradient.tolist() == pytest.approx(GRAD_KL, abs=BY_HAND)
    # KL(ref || pi) = sum ref log ref - sum ref log pi: d / d theta_j = pi_j - ref_j = [0.3, 0, -0.3]
    assert analytic_kl_gradient(reverse=True)[1].tolist() == pytest.approx([0.3, 0.0, -0.3], abs=EXACT)


def test_a_k1_reward_penalty_has_exactly_the_kl_gradient():
    # sum_x pi (log pi - log ref) grad log pi = grad KL (the "+ grad sum pi" term is 0).
    for beta in (1.0, 0.05):
        penalty = reward_penalty_gradient("k1", beta)
        assert (penalty / -beta).tolist() == pytest.approx(analytic_kl_gradient()[1].tolist(), abs=EXACT)


def test_a_k3_reward_penalty_does_not_have_the_kl_gradient_and_can_raise_the_kl():
    # k3 = ref/pi - 1 - log(ref/pi): sum_x pi k3 grad log pi = grad KL + sum_x ref(x) grad log pi(x)
    #    = grad KL + (ref - pi) = [0.3207 - 0.3, -0.0825 + 0, -0.2382 + 0.3] = [0.0207018, -0.0824662, 0.0617644]
    descent = -reward_penalty_gradient("k3")  # the direction of KL *descent* the penalty asks for, per beta
    assert descent.tolist() == pytest.approx([0.0207017562, -0.0824661659, 0.0617644097], abs=BY_HAND)
    # Following the k3 reward's gradient (theta += eta * -descent) changes the KL by -eta * descent . grad KL:
    # descent . grad KL = 0.0207 * 0.3207 + 0.0825^2 - 0.0618 * 0.2382 = -0.0012747 < 0, so the KL rises.
    assert float(descent @ torch.tensor(GRAD_KL, dtype=torch.float64)) == pytest.approx(-0.0012747225, abs=BY_HAND)
    # k2 in the reward is no better: sum_x pi (log r)^2 / 2 grad log pi is not grad KL either.
    assert (reward_penalty_gradient("k2") + torch.tensor(GRAD_KL, dtype=torch.float64)).abs().max() > 1e-2


def test_k2_and_k3_as_loss_terms_have_their_kl_gradients():
    # k2 through log pi: (log pi - log ref) grad log pi, expectation grad KL(pi || ref).
    assert loss_term_gradient("k2").tolist() == pytest.approx(analytic_kl_gradient()[1].tolist(), abs=EXACT)
    # k3 through log pi: (1 - ref/pi) grad log pi, expectation -sum_x ref grad log pi = grad KL(ref || pi) = pi - ref.
    assert loss_term_gradient("k3").tolist() == pytest.approx(analytic_kl_gradient(True)[1].tolist(), abs=EXACT)
    # k1 through log pi: E_pi[grad log pi] = 0, no pull towards the reference at all.
    assert loss_term_gradient("k1").abs().max() < EXACT


def test_configs_refuse_k2_and_k3_in_a_reward_penalty():
    for cls, extra in ((PPOConfig, []), (GRPOConfig, ["grpo.kl_in_loss=false"]), (GRPOConfig, [])):
        for kind in ("k2", "k3"):
            with pytest.raises(ConfigError, match=r"reward.kl_estimator.*must be k1.*not the KL's gradient"):
                load_config(cls, None, [f"reward.kl_estimator={kind}", *extra])
    # The defaults are k1 in the reward (GRPO's RLOO set-up included) and k3 in GRPO's loss term.
    assert PPOConfig().reward.kl_estimator == "k1" and GRPOConfig().reward.kl_estimator == "k1"
    assert load_config(GRPOConfig, None, ["grpo.kl_in_loss=false"]).reward.kl_estimator == "k1"
    assert GRPOConfig().grpo.kl_loss_estimator == "k3"
    assert load_config(GRPOConfig, None, ["grpo.kl_loss_estimator=k2"]).grpo.kl_loss_estimator == "k2"


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
