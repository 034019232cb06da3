"""The hidden style judge: a word-bigram model with absolute discounting, pinned by hand on a two-line corpus."""

from __future__ import annotations

import math

import pytest

from alignloop.errors import DataError
from alignloop.judges.style import BigramStyleJudge, load_style_judge

# Corpus "a b", "a c": unigram counts a 2, b 1, c 1 (4 words, 3 types + 1 unseen slot), so the add-one
# unigram is (c + 1) / 8; bigrams <s>a 2, ab 1, ac 1; after "a": 2 bigrams, 2 distinct followers; d = 0.75.
JUDGE = BigramStyleJudge(["a b", "A c"], discount=0.75)


def test_probabilities_by_hand():
    assert JUDGE.unigram("a") == pytest.approx(3 / 8) and JUDGE.unigram("zebra") == pytest.approx(1 / 8)
    assert JUDGE.probability("<s>", "a") == pytest.approx((2 - 0.75) / 2 + 0.75 * 1 / 2 * 3 / 8)  # 0.765625
    assert JUDGE.probability("a", "b") == pytest.approx((1 - 0.75) / 2 + 0.75 * 2 / 2 * 2 / 8)  # 0.3125
    assert JUDGE.probability("a", "zebra") == pytest.approx(0.75 * 2 / 2 * 1 / 8)  # only the unigram's share
    assert JUDGE.probability("b", "c") == pytest.approx(2 / 8)  # "b" never starts a bigram: the unigram alone


def test_a_context_distributes_all_its_probability():
    # Over the three seen words and the one slot every unseen word shares.
    total = sum(JUDGE.probability("a", w) for w in ("a", "b", "c")) + JUDGE.probability("a", "zebra")
    assert total == pytest.approx(1.0)


def test_score_is_the_mean_log_probability_per_word():
    expected = (math.log(0.765625) + math.log(0.3125)) / 2
    assert JUDGE.score("A, b!") == pytest.approx(expected)  # case and punctuation are not words
    assert JUDGE.score("a b") > JUDGE.score("b a")  # the corpus's word order reads better
    assert JUDGE.score("") == pytest.approx(math.log(1 / 8))


def test_bad_corpora_are_one_line_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_style_judge(tmp_path / "missing.txt")
    with pytest.raises(DataError, match="holds no words"):
        BigramStyleJudge(["...", "!!"])
