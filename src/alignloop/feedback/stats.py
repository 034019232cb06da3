"""Quality figures an admin watches: agreement per item kind, gold accuracy per annotator.

Pure functions on the judgment rows of `Store.judgment_rows`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Optional

from alignloop.feedback.agreement import counts_table, fleiss_kappa, krippendorff_alpha
from alignloop.feedback.models import ASPECTS, CHOICES


def _finite(value: float) -> Optional[float]:
    return None if math.isnan(value) else round(value, 4)


def _pair_units(rows: list[dict[str, Any]]) -> list[list[str]]:
    units: dict[int, list[str]] = defaultdict(list)
    for row in rows:
        if row["kind"] == "pair" and row.get("choice"):
            units[row["item_id"]].append(row["choice"])
    return list(units.values())


def _ranking_units(rows: list[dict[str, Any]]) -> list[list[int]]:
    """One unit per (item, two responses): the value says which of the two was ranked higher."""
    units: dict[tuple[int, int, int], list[int]] = defaultdict(list)
    for row in rows:
        if row["kind"] != "ranking" or not row.get("ranking"):
            continue
        place = {rid: i for i, rid in enumerate(row["ranking"])}
        ids = sorted(place)
        for i in range(len(ids)):
            for j in range(i + 1, len(ids)):
                units[(row["item_id"], ids[i], ids[j])].append(int(place[ids[i]] < place[ids[j]]))
    return list(units.values())


def _rating_units(rows: list[dict[str, Any]], aspect: str) -> list[list[int]]:
    units: dict[tuple[int, int], list[int]] = defaultdict(list)
    for row in rows:
        for response_id, scores in (row.get("ratings") or {}).items():
            if aspect in scores:
                units[(row["item_id"], int(response_id))].append(scores[aspect])
    return list(units.values())


def agreement_report(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Krippendorff's alpha per item kind (and Fleiss' kappa for pairs with equal rater counts).

    pair: nominal alpha over the choice (a, b, tie, both_bad) per item.
    ranking: nominal alpha over every pair of responses (which one ranked higher).
    ratings: ordinal alpha per aspect over every rated response.
    None where undefined (too few overlapping judgments or no variation).
    """
    pair_units = [u for u in _pair_units(rows) if len(u) >= 2]
    report: dict[str, Any] = {
        "pair": {"items": len(pair_units), "judgments": sum(map(len, pair_units)),
                 "krippendorff_alpha": _finite(krippendorff_alpha(pair_units, "nominal")), "fleiss_kappa": None},
    }
    if pair_units:
        # Fleiss needs the same number of raters on every unit: use the most common count.
        sizes = defaultdict(int)
        for u in pair_units:
            sizes[len(u)] += 1
        size = max(sizes, key=lambda s: (sizes[s], s))
        same = [u for u in pair_units if len(u) == size]
        report["pair"]["fleiss_kappa"] = _finite(fleiss_kappa(counts_table(same, CHOICES)))
        report["pair"]["fleiss_items"] = len(same)
    ranking_units = [u for u in _ranking_units(rows) if len(u) >= 2]
    report["ranking"] = {"response_pairs": len(ranking_units),
                         "krippendorff_alpha": _finite(krippendorff_alpha(ranking_units, "nominal"))}
    report["rating"] = {}
    for aspect in ASPECTS:
        units = [u for u in _rating_units(rows, aspect) if len(u) >= 2]
        report["rating"][aspect] = {"responses": len(units),
                                    "krippendorff_alpha": _finite(krippendorff_alpha(units, "ordinal"))}
    return report


def gold_accuracy(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per annotator: gold items judged and the share answered as the gold says.

    A pair counts 1 when the choice matches; a ranking counts the share of its
    response pairs ordered as in the gold ranking.
    """
    scores: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        gold = row.get("gold")
        if not gold:
            continue
        if row["kind"] == "pair" and row.get("choice") and gold.get("choice"):
            scores[row["annotator"]].append(float(row["choice"] == gold["choice"]))
        elif row["kind"] == "ranking" and row.get("ranking") and gold.get("ranking"):
            truth = {rid: i for i, rid in enumerate(gold["ranking"])}
            given = {rid: i for i, rid in enumerate(row["ranking"])}
            ids = list(truth)
            pairs = [(a, b) for i, a in enumerate(ids) for b in ids[i + 1:]]
            agree = sum((truth[a] < truth[b]) == (given[a] < given[b]) for a, b in pairs)
            scores[row["annotator"]].append(agree / len(pairs))
    return {name: {"gold_items": len(values), "accuracy": round(sum(values) / len(values), 4)}
            for name, values in sorted(scores.items())}
