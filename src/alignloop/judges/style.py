"""A hidden style judge: how much a response reads like stories from a corpus that nothing was tuned on.

The gold judge scores what the simulated annotators were built to like
(kindness, the prompt's character, repetition, the ending, length, grammar),
so a policy can please it and still drift away from plain story language
(odd phrasing, made-up words, stock formulas). This judge looks at none of
those features: it is a word-bigram language model fitted to a reference
corpus (e.g. real TinyStories, which neither the corpus generator, the
annotators nor the reward model saw), with absolute discounting interpolated
with an add-one unigram model (Ney, Essen and Kneser 1994). A response's score
is its mean log-probability per word, so longer responses are not punished
for being longer.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Iterable

from alignloop.data.corpus import read_corpus
from alignloop.errors import DataError
from alignloop.judges.features import words

START = "<s>"


def tokens(text: str) -> list[str]:
    """Lower-cased words of `text`, after a start symbol."""
    return [START] + [w.lower() for w in words(text)]


class BigramStyleJudge:
    """Word-bigram model of a corpus: P(w | v) = max(c(v, w) - d, 0) / c(v) + d * N1+(v .) / c(v) * P1(w)."""

    def __init__(self, documents: Iterable[str], discount: float = 0.75):
        if not 0 < discount < 1:
            raise ValueError(f"discount must lie in (0, 1), not {discount}")
        self.discount = discount
        self.unigrams: Counter[str] = Counter()
        self.bigrams: Counter[tuple[str, str]] = Counter()
        for document in documents:
            seq = tokens(document)
            self.unigrams.update(seq[1:])
            self.bigrams.update(zip(seq, seq[1:]))
        if not self.unigrams:
            raise DataError("the style judge's corpus holds no words")
        self.total = sum(self.unigrams.values())
        self.vocabulary = len(self.unigrams) + 1  # one slot for every unseen word
        self.context: Counter[str] = Counter()  # c(v): bigrams starting with v
        self.followers: Counter[str] = Counter()  # N1+(v .): distinct words after v
        for (v, _), count in self.bigrams.items():
            self.context[v] += count
            self.followers[v] += 1

    def unigram(self, word: str) -> float:
        """Add-one unigram probability; every unseen word shares one count."""
        return (self.unigrams.get(word, 0) + 1) / (self.total + self.vocabulary)

    def probability(self, previous: str, word: str) -> float:
        """P(word | previous) by interpolated absolute discounting (the unigram alone after an unseen word)."""
        seen = self.context.get(previous, 0)
        if not seen:
            return self.unigram(word)
        kept = max(self.bigrams.get((previous, word), 0) - self.discount, 0.0) / seen
        return kept + self.discount * self.followers[previous] / seen * self.unigram(word)

    def score(self, text: str) -> float:
        """Mean log-probability per word of `text` (an empty text scores as one unseen word)."""
        seq = tokens(text)
        if len(seq) == 1:
            return math.log(self.unigram(""))
        return sum(math.log(self.probability(v, w)) for v, w in zip(seq, seq[1:])) / (len(seq) - 1)


def load_style_judge(path: Path | str, text_field: str = "text", documents: int = 0) -> BigramStyleJudge:
    """The style judge fitted to a corpus file (text, JSONL, gz; the first `documents`, 0: all)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"style.path {path} does not exist")
    texts = read_corpus(path, text_field)
    return BigramStyleJudge(texts[:documents] if documents else texts)
