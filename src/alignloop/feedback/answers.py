"""Checking an annotator's answer against the item it is for, before it is stored.

Pure functions on plain values, shared by the store (which enforces them) and
the tests; each problem is one `DataError` line naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from alignloop.errors import DataError
from alignloop.feedback.models import ASPECTS, CHOICES

MAX_TEXT = 20_000
MAX_TIME_MS = 24 * 3600 * 1000  # the longest time spent on one judgment that is recorded


@dataclass
class Answer:
    """What an annotator submits for one item (fields unused by the item's kind stay None)."""

    choice: Optional[str] = None
    strength: Optional[int] = None
    ranking: Optional[list[int]] = None
    # {response_id: {aspect: score 1-5}}
    ratings: dict[int, dict[str, int]] = field(default_factory=dict)
    critique: Optional[str] = None
    rewrite: Optional[str] = None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _clean_text(name: str, value: Optional[str]) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, str):
        raise DataError(f"{name} must be text")
    if len(value) > MAX_TEXT:
        raise DataError(f"{name} is longer than {MAX_TEXT} characters")
    return value if value.strip() else None


def normal_choice(choice: Any) -> str:
    """A pair's choice in stored form: `A`/`B` (as the page labels them) are `a`/`b`; else a `DataError`."""
    lowered = choice.lower() if isinstance(choice, str) else choice
    if lowered not in CHOICES:
        shown = repr(choice) if len(repr(choice)) <= 40 else repr(choice)[:40] + "..."
        raise DataError(f"choice must be one of {', '.join(CHOICES)} (A and B also do), not {shown}")
    return lowered


def validate_answer(kind: str, response_ids: list[int], answer: Answer) -> Answer:
    """Return the answer normalised for storage, or raise `DataError` saying what is wrong.

    pair: `choice` in a, b, tie, both_bad; `strength` 1-3 when A or B wins (ignored otherwise).
    ranking: `ranking` lists every response id of the item exactly once, best first.
    rating: all four aspects rated for the item's response.
    Any kind: optional aspect ratings of the item's responses, critique, rewrite.
    """
    out = Answer(critique=_clean_text("critique", answer.critique), rewrite=_clean_text("rewrite", answer.rewrite))

    if kind == "pair":
        out.choice = normal_choice(answer.choice)
        if out.choice in ("a", "b"):
            if not _is_int(answer.strength) or not 1 <= answer.strength <= 3:
                raise DataError(f"strength must be 1, 2 or 3 when A or B is chosen, not {answer.strength!r}")
            out.strength = answer.strength
    elif kind == "ranking":
        ranking = answer.ranking
        if not isinstance(ranking, list) or not all(_is_int(r) for r in ranking):
            raise DataError("ranking must be a list of response ids, best first")
        if sorted(ranking) != sorted(response_ids):
            raise DataError(f"ranking must order exactly the item's responses {sorted(response_ids)}, got {ranking}")
        out.ranking = list(ranking)
    elif kind != "rating":
        raise DataError(f"unknown item kind {kind!r}")

    for response_id, scores in (answer.ratings or {}).items():
        if response_id not in response_ids:
            raise DataError(f"rating for response {response_id}, which is not part of this item")
        if not isinstance(scores, dict):
            raise DataError("ratings must map response id to {aspect: score}")
        clean: dict[str, int] = {}
        for aspect, score in scores.items():
            if aspect not in ASPECTS:
                raise DataError(f"unknown aspect {aspect!r}; use {', '.join(ASPECTS)}")
            if score is None:
                continue
            if not _is_int(score) or not 1 <= score <= 5:
                raise DataError(f"{aspect} rating must be an integer from 1 to 5, not {score!r}")
            clean[aspect] = score
        if clean:
            out.ratings[response_id] = clean
    if kind == "rating":
        given = out.ratings.get(response_ids[0], {})
        missing = [a for a in ASPECTS if a not in given]
        if missing:
            raise DataError(f"a rating item needs every aspect rated; missing {', '.join(missing)}")
    return out
