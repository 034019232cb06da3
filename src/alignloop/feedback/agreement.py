"""Inter-annotator agreement: Krippendorff's alpha and Fleiss' kappa, as pure functions.

Krippendorff's alpha (Krippendorff, "Computing Krippendorff's Alpha-Reliability", 2011):
    alpha = 1 - D_o / D_e,   D_o = (1/n) sum_{c,k} o_ck d2(c, k),
                             D_e = 1/(n (n-1)) sum_{c,k} n_c n_k d2(c, k)
where o_ck is the coincidence matrix (each unit with m_u >= 2 values adds
1/(m_u - 1) for every ordered pair of its values), n_c its margins and n the
number of pairable values. It allows any number of annotators per unit and
missing values, so it fits items that got different numbers of judgments.

Fleiss' kappa (Fleiss, "Measuring nominal scale agreement among many raters", 1971):
    P_i = (sum_j n_ij^2 - n) / (n (n-1)),  p_j = sum_i n_ij / (N n),
    kappa = (mean(P_i) - sum_j p_j^2) / (1 - sum_j p_j^2)
for N units each rated by the same number n of raters into categories j.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Hashable, Sequence

METRICS = ("nominal", "ordinal", "interval")


def coincidences(units: Sequence[Sequence[Hashable]]) -> dict[tuple[Hashable, Hashable], float]:
    """The coincidence matrix o_ck of the values in units (units with fewer than 2 values drop out)."""
    matrix: dict[tuple[Hashable, Hashable], float] = defaultdict(float)
    for values in units:
        m = len(values)
        if m < 2:
            continue
        counts = Counter(values)
        for c, n_c in counts.items():
            for k, n_k in counts.items():
                pairs = n_c * (n_k - 1) if c == k else n_c * n_k
                if pairs:
                    matrix[(c, k)] += pairs / (m - 1)
    return dict(matrix)


def _distance(metric: str, margins: dict[Hashable, float]):  # noqa: ANN202
    if metric == "nominal":
        return lambda c, k: 0.0 if c == k else 1.0
    if metric == "interval":
        return lambda c, k: float(c - k) ** 2
    if metric == "ordinal":
        # d2(c, k) = (sum of margins from c to k - (n_c + n_k) / 2)^2 over the sorted values.
        order = sorted(margins)
        cumulative, total = {}, 0.0
        for value in order:
            total += margins[value]
            cumulative[value] = total

        def ordinal(c: Hashable, k: Hashable) -> float:
            lo, hi = (c, k) if c <= k else (k, c)
            between = cumulative[hi] - cumulative[lo] + margins[lo]
            return (between - (margins[c] + margins[k]) / 2.0) ** 2

        return ordinal
    raise ValueError(f"metric must be one of {METRICS}, not {metric!r}")


def krippendorff_alpha(units: Sequence[Sequence[Hashable]], metric: str = "nominal") -> float:
    """Krippendorff's alpha of `units`, each the list of values annotators gave one unit.

    Returns nan when it is undefined: fewer than two pairable values, or no
    variation at all (every value the same, so D_e = 0).
    """
    matrix = coincidences(units)
    margins: dict[Hashable, float] = defaultdict(float)
    for (c, _k), weight in matrix.items():
        margins[c] += weight
    n = sum(margins.values())
    if n < 2:
        return math.nan
    d2 = _distance(metric, margins)
    observed = sum(weight * d2(c, k) for (c, k), weight in matrix.items())
    expected = sum(margins[c] * margins[k] * d2(c, k) for c in margins for k in margins)
    if expected == 0:
        return math.nan
    return 1.0 - (n - 1) * observed / expected


def fleiss_kappa(counts: Sequence[Sequence[int]]) -> float:
    """Fleiss' kappa of a units x categories table of counts; every row must sum to the same n >= 2."""
    if not counts:
        return math.nan
    raters = sum(counts[0])
    if raters < 2 or any(sum(row) != raters for row in counts):
        raise ValueError("every unit must have the same number (>= 2) of ratings")
    units = len(counts)
    per_unit = [(sum(c * c for c in row) - raters) / (raters * (raters - 1)) for row in counts]
    observed = sum(per_unit) / units
    shares = [sum(row[j] for row in counts) / (units * raters) for j in range(len(counts[0]))]
    chance = sum(p * p for p in shares)
    if chance == 1.0:
        return math.nan
    return (observed - chance) / (1.0 - chance)


def counts_table(units: Sequence[Sequence[Hashable]], categories: Sequence[Hashable]) -> list[list[int]]:
    """Per-unit category counts, the input of `fleiss_kappa`."""
    index = {c: i for i, c in enumerate(categories)}
    table = []
    for values in units:
        row = [0] * len(categories)
        for value in values:
            row[index[value]] += 1
        table.append(row)
    return table
