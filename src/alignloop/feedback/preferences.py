"""From stored judgments to preference pairs: ranking expansion and aggregation across annotators.

Pure functions on the plain judgment rows that `Store.judgment_rows` returns,
shared by `alignloop feedback export` and the reward-model stage.

- A pair judgment gives one vote: A > B, B > A, tie, or both bad, with its strength.
- A ranking of K responses gives K(K-1)/2 votes, one per pair (best > each lower one).
- `aggregate="annotator"` keeps every vote as a record; `aggregate="majority"`
  merges the votes on the same two responses of the same item: the outcome with
  strictly the most votes wins, and a draw between "A > B" and "B > A" is a tie.
- Ties (and both-bad) are dropped unless `ties="keep"`; both-bad is never a
  preference, but kept ties come out as records with `tie: true`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Optional

AGGREGATES = ("majority", "annotator")
TIE_POLICIES = ("drop", "keep")


@dataclass(frozen=True)
class Vote:
    """One annotator's verdict on two responses of one item. `outcome`: 'first', 'tie' or 'both_bad'."""

    row: int  # index of the judgment row it came from
    first: int  # response id preferred (or the item's first, for tie / both_bad)
    second: int
    outcome: str
    strength: Optional[int]


def votes(rows: list[dict[str, Any]]) -> list[Vote]:
    """Every pairwise vote in the judgment rows, ranking items expanded to all their pairs."""
    out: list[Vote] = []
    for index, row in enumerate(rows):
        ids = [r["id"] for r in row["responses"]]
        if row["kind"] == "pair" and row.get("choice"):
            a, b = ids
            choice = row["choice"]
            if choice == "a":
                out.append(Vote(index, a, b, "first", row.get("strength")))
            elif choice == "b":
                out.append(Vote(index, b, a, "first", row.get("strength")))
            else:
                out.append(Vote(index, a, b, choice, None))
        elif row["kind"] == "ranking" and row.get("ranking"):
            ranking = row["ranking"]
            for i in range(len(ranking)):
                for j in range(i + 1, len(ranking)):
                    out.append(Vote(index, ranking[i], ranking[j], "first", None))
    return out


def _record(row: dict[str, Any], chosen: int, rejected: int, tie: bool, both_bad: bool,
            strength: Optional[float], annotators: list[str], vote_count: dict[str, int]) -> dict[str, Any]:
    texts = {r["id"]: r for r in row["responses"]}
    return {
        "prompt": row["prompt"],
        "chosen": texts[chosen]["text"],
        "rejected": texts[rejected]["text"],
        "strength": strength,
        "annotator": annotators[0] if len(annotators) == 1 else None,
        "annotators": annotators,
        "round": row.get("round"),
        "tie": tie,
        "both_bad": both_bad,
        "item_id": row["item_id"],
        "kind": row["kind"],
        "chosen_id": chosen,
        "rejected_id": rejected,
        "chosen_model": texts[chosen].get("model"),
        "rejected_model": texts[rejected].get("model"),
        "votes": vote_count,
        "prompt_meta": row.get("prompt_meta"),
        "chosen_meta": texts[chosen].get("meta"),
        "rejected_meta": texts[rejected].get("meta"),
    }


def preference_records(rows: list[dict[str, Any]], aggregate: str = "majority",
                       ties: str = "drop") -> list[dict[str, Any]]:
    """Preference records (`prompt`, `chosen`, `rejected`, `strength`, `annotator`, `round`, `tie`, ...)."""
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {AGGREGATES}")
    if ties not in TIE_POLICIES:
        raise ValueError(f"ties must be one of {TIE_POLICIES}")
    all_votes = votes(rows)
    records: list[dict[str, Any]] = []
    if aggregate == "annotator":
        for v in all_votes:
            if v.outcome != "first" and (ties == "drop" or v.outcome == "both_bad"):
                continue
            row = rows[v.row]
            records.append(_record(row, v.first, v.second, v.outcome == "tie", False, v.strength,
                                   [row["annotator"]], {"first": int(v.outcome == "first")}))
        return records

    # Majority: group the votes on the same two responses of the same item, in first-seen order.
    groups: dict[tuple[int, frozenset], list[Vote]] = defaultdict(list)
    for v in all_votes:
        groups[(rows[v.row]["item_id"], frozenset((v.first, v.second)))].append(v)
    for (_item, _pair), group in groups.items():
        row = rows[group[0].row]
        ids = [r["id"] for r in row["responses"]]
        x, y = sorted(_pair, key=ids.index)  # item order: A before B
        tally = {f"{x}>{y}": 0, f"{y}>{x}": 0, "tie": 0, "both_bad": 0}
        for v in group:
            key = f"{v.first}>{v.second}" if v.outcome == "first" else v.outcome
            tally[key] += 1
        best = max(tally.values())
        winners = [k for k, n in tally.items() if n == best]
        annotators = sorted({rows[v.row]["annotator"] for v in group})
        counts = {"a_over_b": tally[f"{x}>{y}"], "b_over_a": tally[f"{y}>{x}"], "tie": tally["tie"],
                  "both_bad": tally["both_bad"]}
        if winners == [f"{x}>{y}"] or winners == [f"{y}>{x}"]:
            chosen, rejected = (x, y) if winners[0] == f"{x}>{y}" else (y, x)
            strengths = [v.strength for v in group if v.outcome == "first" and v.first == chosen
                         and v.strength is not None]
            strength = round(sum(strengths) / len(strengths), 3) if strengths else None
            records.append(_record(row, chosen, rejected, False, False, strength, annotators, counts))
        elif winners == ["both_bad"]:
            continue
        elif ties == "keep":
            records.append(_record(row, x, y, True, False, None, annotators, counts))
    return records


def ranking_records(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each ranking judgment as `{prompt, responses (best first), annotator, round, item_id}`."""
    out = []
    for row in rows:
        if row["kind"] != "ranking" or not row.get("ranking"):
            continue
        texts = {r["id"]: r["text"] for r in row["responses"]}
        out.append({"prompt": row["prompt"], "responses": [texts[i] for i in row["ranking"]],
                    "response_ids": list(row["ranking"]), "annotator": row["annotator"],
                    "round": row.get("round"), "item_id": row["item_id"]})
    return out


def rating_records(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every aspect rating as `{prompt, response, aspect scores, annotator, round, item_id}`."""
    out = []
    for row in rows:
        texts = {r["id"]: r["text"] for r in row["responses"]}
        for response_id, scores in (row.get("ratings") or {}).items():
            out.append({"prompt": row["prompt"], "response": texts[int(response_id)],
                        "response_id": int(response_id), "ratings": dict(scores), "annotator": row["annotator"],
                        "round": row.get("round"), "item_id": row["item_id"], "kind": row["kind"]})
    return out
