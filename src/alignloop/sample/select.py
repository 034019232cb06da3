"""Which pairs people are asked to judge: the maths of `sample select.mode=...` (pure functions, no files).

The candidates are every pair (i, j), i < j, of each prompt's K sampled
responses: sampling is the expensive part, and K responses give K(K-1)/2
pairs for the price of K. The budget is the number of pair items that would
be made without selection. A share of the budget (`random_fraction`) is drawn
uniformly from the candidates first, so the judgments the reward model trains
on keep an unbiased sample of what the policy writes (actively chosen pairs
alone over-represent the regions the model is unsure about; Settles 2009,
section 6.1, on sampling bias). The rest is chosen by the mode:

- uncertain: the pairs where the ensemble's estimates of
  P(a preferred) = sigmoid(r_a - r_b) contradict each other most, by
  `select.score`: `information` (default), the mutual information between the
  judgment and which estimate is right (BALD, Houlsby et al. 2011), or
  `spread`, their standard deviation (committee disagreement). Both are 0 when
  the estimates agree; near P = 0.5 the spread of probabilities is largest for a
  given spread of rewards, so `spread` leans to close calls, where a noisy
  annotator is nearest a coin, while `information` discounts a pair that every
  estimate calls a coin flip (BENCHMARKS.md, "Active feedback queries",
  measured both). With a single estimate there is neither, and the pairs whose
  P(a preferred) is nearest 0.5 are taken instead (margin sampling).
- diverse: greedy farthest-first (k-center; Sener & Savarese 2018) over the
  pair's direction of comparison phi(a) - phi(b), phi a hashed bag of words
  and word pairs. A Bradley-Terry reward model learns from a pair along
  phi(a) - phi(b), so pairs that point in many different directions teach it
  about many different things, where near-duplicates teach it one thing many
  times. Swapping a and b is the same question, so the distance is sign-free:
  min(|d1 - d2|, |d1 + d2|). Needs no reward model, so it works in round 1.
"""

from __future__ import annotations

import random
import re
import zlib
from typing import Optional, Sequence

import torch

from alignloop.reward.ensemble import disagreement, mutual_information

Candidate = tuple[int, int, int]  # (record index, response i, response j), i < j
FEATURE_DIM = 1024
_WORD = re.compile(r"\w+")


def candidate_pairs(response_counts: Sequence[int]) -> list[Candidate]:
    """Every pair of every record's responses, record by record, as (record, i, j) with i < j."""
    return [(r, i, j) for r, count in enumerate(response_counts) for i in range(count) for j in range(i + 1, count)]


def limit_candidates(n: int, limit: Optional[int], rng: random.Random) -> list[int]:
    """Indices of the candidates kept: all of them, or `limit` drawn uniformly (in their original order)."""
    if limit is None or limit >= n:
        return list(range(n))
    return sorted(rng.sample(range(n), limit))


def random_share(n: int, budget: int, fraction: float, rng: random.Random) -> list[int]:
    """round(budget * fraction) candidate indices drawn uniformly without replacement (at most n)."""
    return sorted(rng.sample(range(n), min(n, round(budget * fraction))))


def highest(scores: torch.Tensor, k: int, taken: Sequence[int] = ()) -> list[int]:
    """The `k` indices with the largest score, not in `taken`, largest first (ties: lower index first)."""
    skip = set(taken)
    order = sorted((i for i in range(len(scores)) if i not in skip), key=lambda i: (-float(scores[i]), i))
    return order[:k]


def uncertainty(probabilities: torch.Tensor, score: str = "information") -> tuple[torch.Tensor, str]:
    """(score per pair, higher = ask first; what the score is) from P(a preferred), shape [pairs, estimates];
    `score` information or spread (see the module docstring)."""
    if probabilities.shape[1] >= 2:
        if score == "spread":
            return disagreement(probabilities), "disagreement"
        return mutual_information(probabilities), "information"
    # One estimate has no spread: the pair it is least sure about is the one nearest a coin flip.
    return 0.5 - (probabilities[:, 0] - 0.5).abs(), "nearness to 0.5"


def text_features(text: str, dim: int = FEATURE_DIM) -> torch.Tensor:
    """A unit vector: counts of the lower-cased words and adjacent word pairs, hashed into `dim` buckets.

    crc32, not Python's salted `hash`, so the same text maps to the same vector in every process.
    """
    words = _WORD.findall(text.lower())
    vector = torch.zeros(dim)
    for token in words + [f"{a} {b}" for a, b in zip(words, words[1:])]:
        vector[zlib.crc32(token.encode()) % dim] += 1.0
    norm = vector.norm()
    return vector / norm if norm > 0 else vector


def farthest_first(directions: torch.Tensor, k: int, taken: Sequence[int] = ()) -> list[int]:
    """`k` rows of `directions` [N, D] chosen greedily, each the farthest from all chosen so far.

    `taken` rows count as chosen already (the random share), and are not returned. The distance is
    sign-free (a pair and its swap are one question): d(x, y)^2 = |x|^2 + |y|^2 - 2|x.y|. With nothing
    taken, the first pick is the longest direction (the two most different responses). Ties: lower index.
    """
    n = directions.shape[0]
    k = min(k, n - len(set(taken)))
    if k <= 0:
        return []
    squared = (directions * directions).sum(dim=1)
    available = torch.ones(n, dtype=torch.bool)
    nearest = torch.full((n,), float("inf"))

    def cover(index: int) -> None:
        available[index] = False
        distance = squared + squared[index] - 2 * (directions @ directions[index]).abs()
        torch.minimum(nearest, distance.clamp_min(0), out=nearest)

    for index in taken:
        cover(index)
    chosen = []
    for _ in range(k):
        far = torch.where(available, nearest if taken or chosen else squared, torch.tensor(-1.0))
        pick = int(torch.argmax(far))  # argmax returns the first of equal values: the lower index
        chosen.append(pick)
        cover(pick)
    return chosen
