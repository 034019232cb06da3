"""Reward-model losses and metrics, pinned to numbers worked out by hand.

Notation in the comments: sp(x) = -log sigmoid(x) = log(1 + e^-x);
sp(0) = log 2 = 0.6931472, sp(0.5) = 0.4740770, sp(1) = 0.3132617,
sp(2) = 0.1269280, sp(-2) = 2 + sp(2) = 2.1269280.
"""

import pytest
import torch

from alignloop.reward.losses import (
    bradley_terry_loss,
    expected_calibration_error,
    head_orthogonality_loss,
    normalize_ratings,
    odin_length_loss,
    pearson_correlation,
    preference_accuracy,
    ranking_loss,
    ranking_pairs,
    rating_regression_loss,
    reward_centering_loss,
    soft_label_loss,
)


def t(*values):
    return torch.tensor(values, dtype=torch.float32)


def test_bradley_terry_without_margin():
    # pairs differ by 1 and 0: (sp(1) + sp(0)) / 2 = (0.3132617 + 0.6931472) / 2
    loss = bradley_terry_loss(t(1.0, 0.0), t(0.0, 0.0))
    assert loss.item() == pytest.approx(0.5032044, abs=1e-6)


def test_bradley_terry_margin_is_subtracted_from_the_difference():
    # margin 0.5 on the first pair: (sp(1 - 0.5) + sp(0)) / 2 = (0.4740770 + 0.6931472) / 2
    loss = bradley_terry_loss(t(1.0, 0.0), t(0.0, 0.0), margin=t(0.5, 0.0))
    assert loss.item() == pytest.approx(0.5836121, abs=1e-6)
    # A float margin applies to every pair: sp(1 - 1) = log 2.
    assert bradley_terry_loss(t(1.0), t(0.0), margin=1.0).item() == pytest.approx(0.6931472, abs=1e-6)


def test_bradley_terry_gradient_pushes_chosen_up_and_rejected_down():
    chosen, rejected = t(0.0).requires_grad_(), t(0.0).requires_grad_()
    bradley_terry_loss(chosen, rejected).backward()
    # d sp(c - r) / dc = -sigmoid(-(c - r)) = -0.5 at c = r.
    assert chosen.grad.item() == pytest.approx(-0.5)
    assert rejected.grad.item() == pytest.approx(0.5)


def test_ranking_pairs_lists_every_pair_once_best_first():
    better, worse = ranking_pairs(3)
    assert better.tolist() == [0, 0, 1]
    assert worse.tolist() == [1, 2, 2]
    assert len(ranking_pairs(5)[0]) == 10  # C(5, 2)


def test_ranking_loss_averages_the_three_pairs_of_a_ranking_of_three():
    # rewards 2 > 1 > 0 in rank order: pair differences 1, 2, 1
    # (sp(1) + sp(2) + sp(1)) / 3 = (0.3132617 + 0.1269280 + 0.3132617) / 3
    assert ranking_loss(t(2.0, 1.0, 0.0).unsqueeze(0)).item() == pytest.approx(0.2511505, abs=1e-6)


def test_ranking_loss_with_explicit_ranks():
    # response 2 is best (rank 0), response 0 worst: the same three pairs as above.
    loss = ranking_loss(t(0.0, 1.0, 2.0).unsqueeze(0), ranks=torch.tensor([[2, 1, 0]]))
    assert loss.item() == pytest.approx(0.2511505, abs=1e-6)


def test_ranking_loss_mask_handles_prompts_with_fewer_responses():
    # Prompt 1 ranks three responses (0.2511505 as above); prompt 2 only two
    # (one pair, difference 1: sp(1) = 0.3132617); its third slot is padding
    # whatever its value. Each prompt weighs the same: (0.2511505 + 0.3132617) / 2.
    rewards = torch.tensor([[2.0, 1.0, 0.0], [1.0, 0.0, 99.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    assert ranking_loss(rewards, mask=mask).item() == pytest.approx(0.2822061, abs=1e-6)


def test_ranking_loss_ties_form_no_pair():
    # responses 0 and 1 tie for first: only the pairs (0, 2) and (1, 2), each difference 1: sp(1).
    loss = ranking_loss(t(1.0, 1.0, 0.0).unsqueeze(0), ranks=torch.tensor([[0, 0, 1]]))
    assert loss.item() == pytest.approx(0.3132617, abs=1e-6)


def test_ranking_loss_of_two_is_bradley_terry():
    chosen, rejected = t(0.3, -1.0, 2.0), t(0.1, 0.5, 2.5)
    pairs = torch.stack([chosen, rejected], dim=1)
    assert ranking_loss(pairs).item() == pytest.approx(bradley_terry_loss(chosen, rejected).item(), abs=1e-6)


def test_soft_label_tie_target():
    # equal rewards and target 0.5: BCE(0.5, 0.5) = log 2
    assert soft_label_loss(t(0.0), t(0.0), 0.5).item() == pytest.approx(0.6931472, abs=1e-6)
    # difference 2, target 0.5: 0.5 * sp(2) + 0.5 * sp(-2) = 0.5 * (0.1269280 + 2.1269280)
    assert soft_label_loss(t(2.0), t(0.0), t(0.5)).item() == pytest.approx(1.1269280, abs=1e-6)


def test_soft_label_with_target_one_is_bradley_terry():
    chosen, rejected = t(1.0, 0.0), t(0.0, 0.0)
    assert soft_label_loss(chosen, rejected, 1.0).item() == pytest.approx(0.5032044, abs=1e-6)


def test_rating_regression_normalised_and_masked():
    # Likert 1..5 -> (r - 1) / 4
    assert normalize_ratings(t(1.0, 3.0, 5.0), 1, 5).tolist() == [0.0, 0.5, 1.0]
    # ((0.5 - 1)^2 + (0 - 0)^2) / 2 = 0.125; the masked third rating is ignored
    loss = rating_regression_loss(t(0.5, 0.0, 1.0), t(1.0, 0.0, 0.0), mask=torch.tensor([1, 1, 0]))
    assert loss.item() == pytest.approx(0.125)
    with pytest.raises(ValueError):
        normalize_ratings(t(1.0), 5, 5)


def test_reward_centering():
    # ((1 + -1)^2 + (-1 + 3)^2) / 2 = (0 + 4) / 2
    assert reward_centering_loss(t(1.0, -1.0), t(-1.0, 3.0)).item() == pytest.approx(2.0)


def test_preference_accuracy_counts_ties_as_half():
    # win, loss, tie, win: (1 + 0 + 0.5 + 1) / 4
    assert preference_accuracy(t(1.0, 2.0, 3.0, 0.0), t(0.0, 3.0, 3.0, -1.0)).item() == pytest.approx(0.625)


def test_expected_calibration_error_by_hand():
    # bins of width 0.1:
    #   [0.0, 0.1): p 0.05, label 0           -> 1 * |0 - 0.05|     = 0.05
    #   [0.1, 0.2): p 0.15, 0.12, labels 1, 0 -> 2 * |0.5 - 0.135|  = 0.73
    #   [0.8, 0.9): p 0.85, label 1           -> 1 * |1 - 0.85|     = 0.15
    #   [0.9, 1.0]: p 0.95, label 1           -> 1 * |1 - 0.95|     = 0.05
    # ECE = (0.05 + 0.73 + 0.15 + 0.05) / 5 = 0.196
    probs = t(0.05, 0.15, 0.12, 0.95, 0.85)
    labels = t(0.0, 1.0, 0.0, 1.0, 1.0)
    assert expected_calibration_error(probs, labels).item() == pytest.approx(0.196, abs=1e-6)


def test_expected_calibration_error_is_zero_when_calibrated():
    assert expected_calibration_error(t(0.5, 0.5, 0.5, 0.5), t(1.0, 0.0, 1.0, 0.0)).item() == pytest.approx(0.0)
    # p = 1.0 falls in the last bin, not past it
    assert expected_calibration_error(t(1.0), t(1.0)).item() == pytest.approx(0.0)


# ---- keeping length out of the reward (loss.length) -----------------------------------------------------

EPS32 = float(torch.finfo(torch.float32).eps)


def test_bradley_terry_weights_scale_each_pair_and_average_over_pairs():
    # (2 sp(1) + 0.5 sp(0)) / 2 = (0.6265234 + 0.3465736) / 2: a mean over the 2 pairs, not over the weights.
    loss = bradley_terry_loss(t(1.0, 0.0), t(0.0, 0.0), weights=t(2.0, 0.5))
    assert loss.item() == pytest.approx(0.4865485, rel=8 * EPS32)
    # Weights of 1 are no weights.
    assert bradley_terry_loss(t(1.0, 0.0), t(0.0, 0.0), weights=t(1.0, 1.0)).item() == \
        pytest.approx(bradley_terry_loss(t(1.0, 0.0), t(0.0, 0.0)).item(), rel=4 * EPS32)


def test_pearson_correlation_by_hand():
    # x - mean = (-1, 0, 1), y - mean = (-1, 1, 0): sum of products 1, sums of squares 2 and 2: rho = 1/2.
    assert pearson_correlation(t(1.0, 2.0, 3.0), t(1.0, 3.0, 2.0)).item() == pytest.approx(0.5, rel=8 * EPS32)
    assert pearson_correlation(t(1.0, 2.0, 3.0), t(6.0, 4.0, 2.0)).item() == pytest.approx(-1.0, rel=8 * EPS32)
    assert pearson_correlation(t(1.0, 1.0, 1.0), t(1.0, 2.0, 3.0)).item() == 0.0  # a constant side


def test_odin_length_loss_on_a_constructed_batch():
    lengths = t(0.0, 1.0, 2.0, 3.0)  # - mean = (-1.5, -0.5, 0.5, 1.5), sum of squares 5
    # Reward head 1: (1, 0, 0, 1), centred (.5, -.5, -.5, .5): products sum to 0, rho = 0; sd 0.5.
    # Reward head 2: (3, 2, 1, 0): rho = -1; sd sqrt(5 / 4) = 1.1180340.
    quality = torch.stack([t(1.0, 0.0, 0.0, 1.0), t(3.0, 2.0, 1.0, 0.0)], dim=1)
    # Length head (0, 1, 0, 1), centred (-.5, .5, -.5, .5): products .75 - .25 - .25 + .75 = 1, squares 1:
    # rho = 1 / sqrt(5) = 0.4472136; sd 0.5.
    length_reward = t(0.0, 1.0, 0.0, 1.0)
    # mean(0.5 * 0^2, 1.1180340 * (-1)^2) - 0.5 * 0.4472136 = 0.5590170 - 0.2236068 = 0.3354102
    loss = odin_length_loss(quality, length_reward, lengths)
    assert loss.item() == pytest.approx(0.3354102, rel=16 * EPS32)
    # One reward head ([N]): the length head is the length doubled (sd 2 sqrt(1.25), rho 1): 0 - 2.2360680.
    assert odin_length_loss(quality[:, 0], lengths * 2, lengths).item() == pytest.approx(-2.2360680, rel=8 * EPS32)
    # A reward correlated 1/2 with length (x, y of test_pearson_correlation_by_hand, sd sqrt(2/3)) costs
    # sqrt(2/3) / 4 = 0.2041241; the length head (1, 2, 3) is the length: - sqrt(2/3) = -0.8164966.
    half = odin_length_loss(t(1.0, 3.0, 2.0), t(1.0, 2.0, 3.0), t(1.0, 2.0, 3.0))
    assert half.item() == pytest.approx(0.2041241 - 0.8164966, rel=16 * EPS32)
    # The sd's carry no gradient: scaling a reward does not change how hard a given correlation pushes it
    # (a bare correlation's gradient would shrink as 1 / scale).
    grads = []
    for scale in (1.0, 100.0):
        q = (t(3.0, 2.0, 0.0, 1.0) * scale).requires_grad_()  # rho = -0.8 (at +-1 a correlation is flat)
        l = t(0.0, 1.0, 0.0, 1.0).requires_grad_()
        odin_length_loss(q, l, lengths).backward()
        assert float((q.grad * (lengths - lengths.mean())).sum()) < 0  # descending it makes q less anti-correlated
        assert float((l.grad * (lengths - lengths.mean())).sum()) < 0  # ... and l more correlated
        grads.append(q.grad)
    assert torch.allclose(grads[0], grads[1], rtol=64 * EPS32, atol=0)


def test_head_orthogonality_loss_by_hand():
    # |(3, 4) . (4, 3)| = 24
    assert head_orthogonality_loss(t(3.0, 4.0)[None], t(4.0, 3.0)[None]).item() == 24.0
    # Orthogonal heads cost nothing; the sign does not matter.
    assert head_orthogonality_loss(t(3.0, 4.0)[None], t(-4.0, 3.0)[None]).item() == 0.0
    assert head_orthogonality_loss(t(3.0, 4.0)[None], t(-4.0, -3.0)[None]).item() == 24.0
    # Two reward heads against one length head: mean(|(3,4).(0,2)| = 8, |(1,0).(0,2)| = 0) = 4
    quality = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    assert head_orthogonality_loss(quality, t(0.0, 2.0)[None]).item() == 4.0
    # Its gradient on a reward head is the length head's weights (times the sign): small heads, small push.
    w = t(3.0, 4.0)[None].requires_grad_()
    head_orthogonality_loss(w, t(0.0, 0.5)[None]).backward()
    assert w.grad.tolist() == [[0.0, 0.5]]
