"""Krippendorff's alpha and Fleiss' kappa on numbers worked out by hand."""

from __future__ import annotations

import math

import pytest

from alignloop.feedback.agreement import coincidences, counts_table, fleiss_kappa, krippendorff_alpha
from alignloop.feedback.stats import agreement_report, gold_accuracy


def test_fleiss_kappa_by_hand():
    # Units rated by 2 raters: (a, a), (b, b), (a, b).
    # P_i = (sum n_ij^2 - n) / (n (n - 1)): 1, 1, 0 -> mean 2/3.
    # p_a = p_b = 3/6 -> chance = 1/4 + 1/4 = 1/2.  kappa = (2/3 - 1/2) / (1 - 1/2) = 1/3.
    assert fleiss_kappa([[2, 0], [0, 2], [1, 1]]) == pytest.approx(1 / 3)


def test_fleiss_kappa_on_the_published_example():
    # Fleiss (1971) as laid out in Wikipedia's worked example: 10 subjects, 14 raters, 5 categories;
    # mean P_i = 0.378, chance = 0.213, kappa = 0.210.
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
             [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    assert fleiss_kappa(table) == pytest.approx(0.210, abs=5e-4)
    with pytest.raises(ValueError):
        fleiss_kappa([[2, 0], [1, 0]])


def test_krippendorff_nominal_by_hand():
    # Same three units. Coincidences: o_aa = 2 (unit 1's two ordered pairs, weight 1/(2-1)),
    # o_bb = 2, o_ab = o_ba = 1.  n_a = n_b = 3, n = 6.
    # alpha = 1 - (n - 1) * sum o_ck d_ck / sum n_c n_k d_ck = 1 - 5 * 2 / (3 * 3 * 2) = 4/9.
    units = [["a", "a"], ["b", "b"], ["a", "b"]]
    assert coincidences(units) == {("a", "a"): 2.0, ("b", "b"): 2.0, ("a", "b"): 1.0, ("b", "a"): 1.0}
    assert krippendorff_alpha(units) == pytest.approx(4 / 9)


def test_krippendorff_handles_missing_values_and_three_raters():
    # Unit 1 (a, a, b): each ordered pair weighs 1/(3-1): o_aa = 2 * 1/2 = 1, o_ab = o_ba = 2 * 1/2 = 1.
    # Unit 2 (b, b): o_bb = 2.  Unit 3 (a) has one value and drops out.
    # n_a = 2, n_b = 3, n = 5.  alpha = 1 - 4 * (1 + 1) / (2 * 3 * 2) = 1 - 8/12 = 1/3.
    assert krippendorff_alpha([["a", "a", "b"], ["b", "b"], ["a"]]) == pytest.approx(1 / 3)


def test_krippendorff_interval_and_ordinal_by_hand():
    # Units (1, 2) and (3, 3).  o_12 = o_21 = 1, o_33 = 2; n_1 = n_2 = 1, n_3 = 2, n = 4.
    # interval d2 = (c - k)^2: observed sum = 1 + 1 = 2; expected sum over ordered pairs c != k:
    # 2 * (n1 n2 * 1 + n1 n3 * 4 + n2 n3 * 1) = 2 * (1 + 8 + 2) = 22.  alpha = 1 - 3 * 2 / 22 = 8/11.
    units = [[1, 2], [3, 3]]
    assert krippendorff_alpha(units, "interval") == pytest.approx(8 / 11)
    # ordinal d2(c, k) = (sum_{g=c..k} n_g - (n_c + n_k) / 2)^2:
    # d(1,2) = (2 - 1)^2 = 1, d(1,3) = (4 - 1.5)^2 = 6.25, d(2,3) = (3 - 1.5)^2 = 2.25.
    # observed = 2 * 1 = 2; expected = 2 * (1 * 1 + 2 * 6.25 + 2 * 2.25) = 36.  alpha = 1 - 3 * 2 / 36 = 5/6.
    assert krippendorff_alpha(units, "ordinal") == pytest.approx(5 / 6)


def test_alpha_extremes():
    assert krippendorff_alpha([["a", "a"], ["b", "b"]]) == pytest.approx(1.0)
    assert math.isnan(krippendorff_alpha([["a", "a"], ["a", "a"]]))  # no variation: undefined
    assert math.isnan(krippendorff_alpha([["a"], ["b"]]))
    assert counts_table([["a", "b", "a"]], ["a", "b", "tie"]) == [[2, 1, 0]]


def _row(item: int, annotator: str, **fields):  # noqa: ANN003
    base = {"item_id": item, "annotator": annotator, "kind": "pair", "responses": [{"id": 1}, {"id": 2}],
            "choice": None, "ranking": None, "ratings": {}, "gold": None}
    base.update(fields)
    return base


def test_agreement_report_and_gold_accuracy():
    rows = [_row(1, "x", choice="a"), _row(1, "y", choice="a"), _row(2, "x", choice="b"), _row(2, "y", choice="a"),
            _row(3, "x", kind="ranking", ranking=[3, 1, 2], gold={"choice": None, "ranking": [3, 1, 2]}),
            _row(3, "y", kind="ranking", ranking=[1, 3, 2], gold={"choice": None, "ranking": [3, 1, 2]}),
            _row(4, "x", choice="a", gold={"choice": "a", "ranking": None})]
    report = agreement_report(rows)
    # Pair units (a, a) and (b, a): o_aa = 2, o_ab = o_ba = 1; n_a = 3, n_b = 1, n = 4.
    # alpha = 1 - 3 * 2 / (3 * 1 * 2) = 0.
    assert report["pair"]["krippendorff_alpha"] == pytest.approx(0.0)
    assert report["pair"]["items"] == 2 and report["ranking"]["response_pairs"] == 3
    gold = gold_accuracy(rows)
    # x: ranking exactly right (1) and pair right (1); y: 2 of 3 response pairs in gold order.
    assert gold == {"x": {"gold_items": 2, "accuracy": 1.0}, "y": {"gold_items": 1, "accuracy": pytest.approx(0.6667)}}
