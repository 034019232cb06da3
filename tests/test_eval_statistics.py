"""The statistics of evaluation, each pinned to numbers worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from alignloop.evaluation import statistics
from alignloop.reward.evaluate import length_diagnostics, preference_metrics, truncation_accuracy

# The logistic fit carries a ridge of 1e-6: it moves the optimum by about ridge * |theta| / curvature, where
# the curvature is at least n p (1 - p) ~ 1 for these samples, so 1e-5 bounds the difference with room.
FIT_TOLERANCE = 1e-5


def test_percentile_interval_interpolates_between_order_statistics():
    # Sorted: 0.1 0.2 0.3 0.4 0.5. The 2.5% quantile sits at position 0.025 * 4 = 0.1: 0.1 + 0.1 * 0.1 = 0.11;
    # the 97.5% one at 3.9: 0.4 + 0.9 * 0.1 = 0.49.
    low, high = statistics.percentile_interval([0.5, 0.1, 0.3, 0.2, 0.4])
    assert low == pytest.approx(0.11, abs=1e-12) and high == pytest.approx(0.49, abs=1e-12)
    assert statistics.percentile_interval([0.5, 0.1, float("nan")], level=0.0) == pytest.approx((0.3, 0.3))


def test_resampled_ratios_pool_the_drawn_units():
    # Per prompt: comparisons right (numerator) and comparisons (denominator).
    right, total = [1, 0, 2], [1, 2, 2]
    draws = np.array([[0, 0, 1], [2, 2, 2], [1, 2, 0]])
    # (1+1+0)/(1+1+2) = 0.5; (2+2+2)/(2+2+2) = 1; (0+2+1)/(2+2+1) = 0.6.
    assert statistics.resampled_ratios(right, total, draws).tolist() == pytest.approx([0.5, 1.0, 0.6], abs=1e-12)


def test_bootstrap_indices_are_seeded():
    one = statistics.bootstrap_indices(7, 50, seed=3)
    assert one.shape == (50, 7) and one.min() >= 0 and one.max() <= 6
    assert (one == statistics.bootstrap_indices(7, 50, seed=3)).all()
    assert not (one == statistics.bootstrap_indices(7, 50, seed=4)).all()


def test_bootstrap_interval_of_a_two_prompt_sample():
    """Values 0 and 1: a draw of two has mean 0, 1/2 or 1 with chances 1/4, 1/2, 1/4. Each extreme is far more
    likely than 2.5%, so the 95% interval runs exactly from 0 to 1; the 50% interval (25th-75th percentile,
    around 250 draws on either side) stays strictly inside it."""
    assert statistics.mean_interval([0.0, 1.0]) == (0.0, 1.0)
    low, high = statistics.mean_interval([0.0, 1.0], level=0.5)
    assert 0.0 <= low <= 0.5 <= high <= 1.0
    assert statistics.mean_interval([0.7, 0.7, 0.7]) == pytest.approx((0.7, 0.7), abs=1e-12)


def test_share_interval_resamples_prompts_not_comparisons():
    """Prompt A: 4 comparisons, all right; prompt B: one, wrong. Drawing two prompts gives an accuracy of
    1 (AA), 4/5 (AB, BA) or 0 (BB), so the 95% interval reaches 0. Drawing the five comparisons as if they
    were independent would need all five draws on B's (chance 5^-5) to reach 0: its interval stays above 0."""
    values, units = [1, 1, 1, 1, 0], ["A", "A", "A", "A", "B"]
    assert statistics.per_unit(values, units) == ([4.0, 0.0], [4, 1])
    assert statistics.share_interval(values, units) == (0.0, 1.0)
    assert statistics.mean_interval(values)[0] > 0.0


def test_unit_bootstrap_draws_a_prompts_samples_together():
    """Units a, b with two items each (positions 0, 2 and 1, 3): a draw of units (b, a) brings items 1, 3, 0, 2.

    Every item copied k times as one unit gives back the single items' intervals: each drawn unit's share is
    its item's value, so the resampled means are the same numbers. The length-controlled fit on k copies
    differs from the fit on one only by its ridge term (1e-6 against a curvature of about n k / 4; no draw of
    these 60 outcomes separates the data, where the ridge would hold the fit)."""
    drawn = statistics.bootstrap_indices(2, 5, seed=1)
    expected = np.array([[0, 2], [1, 3]])[drawn].reshape(5, 4)
    assert (statistics.unit_bootstrap_indices(["a", "b", "a", "b"], 5, seed=1) == expected).all()
    assert (statistics.unit_bootstrap_indices(list(range(7)), 50, seed=3)
            == statistics.bootstrap_indices(7, 50, seed=3)).all()
    with pytest.raises(ValueError, match="same number of items"):
        statistics.unit_bootstrap_indices(["a", "a", "b"])

    wins, length_a, length_b = _two_length_groups((32, 40), (10, 20))
    n, copies = len(wins), 3
    units = list(range(n)) * copies
    assert statistics.share_interval(wins * copies, units) == statistics.mean_interval(wins)
    alone = statistics.length_controlled_win_rate(wins, length_a, length_b)
    together = statistics.length_controlled_win_rate(wins * copies, length_a * copies, length_b * copies,
                                                     units=units)
    assert together["win_rate"] == pytest.approx(alone["win_rate"], abs=FIT_TOLERANCE)
    assert together["interval"] == pytest.approx(alone["interval"], abs=FIT_TOLERANCE)
    # The copies resampled as if independent would claim three times the evidence: a narrower interval.
    loose = statistics.length_controlled_win_rate(wins * copies, length_a * copies, length_b * copies)
    assert loose["interval"][1] - loose["interval"][0] < 0.8 * (together["interval"][1] - together["interval"][0])


def test_win_indicators_and_standard_error():
    assert statistics.win_indicators([1.0, 0.0, 0.5], [0.0, 1.0, 0.5 + 1e-9]) == [1.0, 0.0, 0.5]
    with pytest.raises(ValueError):
        statistics.win_indicators([], [])
    # [1, 2, 3, 4]: mean 2.5, squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5, variance 5/3, se sqrt(5/3)/2.
    assert statistics.standard_error([1, 2, 3, 4]) == pytest.approx(math.sqrt(5 / 3) / 2, rel=1e-12)
    assert statistics.standard_error([3.0]) is None


def _two_length_groups(longer: tuple[int, int], shorter: tuple[int, int]):
    """Prompts where the policy's response is 10 characters longer (wins, prompts) and 10 shorter."""
    wins = [1.0] * longer[0] + [0.0] * (longer[1] - longer[0]) + [1.0] * shorter[0] + [0.0] * (shorter[1] - shorter[0])
    length_a = [20.0] * longer[1] + [10.0] * shorter[1]
    length_b = [10.0] * longer[1] + [20.0] * shorter[1]
    return wins, length_a, length_b


def test_length_controlled_win_rate_of_two_length_groups():
    """With two length differences (+10 and -10, feature +t and -t) the logistic fit is saturated: it
    reproduces each group's win share, sigmoid(a + b t) = p1 and sigmoid(a - b t) = p2, so
    a = (logit p1 + logit p2) / 2.

    Longer: 8 of 10 won (logit 0.8 = log 4); shorter: 1 of 2 (logit 0): a = log 2, LC win rate 2/3,
    while the plain win rate is 9/12 = 0.75 (most of the policy's wins came with more length)."""
    wins, length_a, length_b = _two_length_groups((8, 10), (1, 2))
    assert sum(wins) / len(wins) == 0.75
    controlled = statistics.length_controlled_win_rate(wins, length_a, length_b)
    assert controlled["win_rate"] == pytest.approx(2 / 3, abs=FIT_TOLERANCE)
    assert controlled["slope"] > 0
    low, high = controlled["interval"]
    assert 0 <= low <= controlled["win_rate"] + FIT_TOLERANCE and controlled["win_rate"] - FIT_TOLERANCE <= high <= 1

    # Longer: 4 of 6 won (logit log 2); shorter: 1 of 3 (logit -log 2): a = 0, LC 1/2 against a plain 5/9.
    wins, length_a, length_b = _two_length_groups((4, 6), (1, 3))
    controlled = statistics.length_controlled_win_rate(wins, length_a, length_b)
    assert controlled["win_rate"] == pytest.approx(0.5, abs=FIT_TOLERANCE)


def test_length_controlled_win_rate_without_length_differences_is_the_win_rate():
    # Every difference is 0: the feature is 0, the fit is sigmoid(a) = mean win = (1 + 1 + 0 + 0.5) / 4.
    controlled = statistics.length_controlled_win_rate([1.0, 1.0, 0.0, 0.5], [5, 5, 5, 5], [5, 5, 5, 5])
    assert controlled["win_rate"] == pytest.approx(0.625, abs=FIT_TOLERANCE)


def test_length_controlled_win_rate_stays_finite_on_separable_data():
    """The longer response always wins, as often longer as shorter: by symmetry the rate at equal length is
    1/2, and the ridge keeps the (otherwise infinite) slope finite."""
    wins, length_a, length_b = _two_length_groups((5, 5), (0, 5))
    controlled = statistics.length_controlled_win_rate(wins, length_a, length_b)
    assert controlled["win_rate"] == pytest.approx(0.5, abs=FIT_TOLERANCE)
    assert math.isfinite(controlled["slope"]) and controlled["slope"] > 5


def test_average_ranks_and_spearman():
    assert statistics.average_ranks([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]
    # Ranks x: 1 2.5 2.5 4, y: 1 2 3 4. Deviations (-1.5 0 0 1.5) and (-1.5 -.5 .5 1.5):
    # covariance 4.5, sums of squares 4.5 and 5: rho = 4.5 / sqrt(22.5) = sqrt(0.9).
    assert statistics.spearman([1, 2, 2, 3], [10, 20, 30, 40]) == pytest.approx(math.sqrt(0.9), rel=1e-12)
    assert statistics.spearman([1, 2, 3], [9, 4, 1]) == pytest.approx(-1.0, rel=1e-12)
    assert statistics.spearman([1, 1, 1], [1, 2, 3]) is None


def test_length_diagnostics_split_by_the_longer_reply():
    """Four pairs on three prompts. Chosen longer in pairs 0 and 1 (the model is right on both), shorter in
    pair 2 (wrong) and equally long in pair 3 (a model tie: 1/2)."""
    chosen = torch.tensor([2.0, 3.0, 0.0, 1.0])
    rejected = torch.tensor([1.0, 1.0, 1.0, 1.0])
    figures = length_diagnostics(chosen, rejected, chosen_length=[10, 12, 3, 5], rejected_length=[4, 6, 9, 5],
                                 units=[0, 0, 1, 2], response_scores=[2.0, 3.0, 0.0, 1.0],
                                 response_lengths=[10, 12, 3, 5])
    assert figures["chosen_longer"]["n"] == 2 and figures["chosen_longer"]["accuracy"] == 1.0
    assert figures["chosen_longer"]["accuracy_ci"] == [1.0, 1.0]
    assert figures["chosen_shorter"] == {"n": 1, "accuracy": 0.0, "accuracy_ci": [0.0, 0.0]}
    assert figures["same_length"]["accuracy"] == 0.5
    # "Longer wins": right on pairs 0 and 1, wrong on 2, half on 3: 2.5 / 4.
    assert figures["longer_wins_accuracy"] == pytest.approx(0.625, abs=1e-12)
    # Unequal pairs 0, 1, 2: the longer reply scores 2 > 1, 3 > 1, 1 > 0: always preferred.
    assert figures["model_prefers_longer"] == 1.0
    assert figures["reward_length_spearman"] == pytest.approx(1.0, rel=1e-12)
    assert figures["unit"] == "characters"


def test_truncation_accuracy_splits_cut_pairs():
    chosen, rejected = torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 1.0, 1.0])
    assert truncation_accuracy(chosen, rejected, [True, True, False]) == {
        "cut": {"n": 2, "accuracy": 0.5}, "whole": {"n": 1, "accuracy": 1.0}}
    assert truncation_accuracy(chosen, rejected, [False] * 3)["cut"] == {"n": 0, "accuracy": None}


def test_preference_metrics_buckets_are_unchanged():
    figures = preference_metrics(torch.tensor([1.0, 0.2, 3.0]), torch.tensor([0.0, 0.4, 0.0]),
                                 torch.tensor([1.0, 1.0, float("nan")]))
    assert figures["accuracy_by_margin"] == {"0-0.5": {"n": 1, "accuracy": 0.0}, "1-2": {"n": 1, "accuracy": 1.0},
                                             "2+": {"n": 1, "accuracy": 1.0}}
    assert figures["accuracy_by_strength"] == {"1": {"n": 2, "accuracy": 0.5}}
