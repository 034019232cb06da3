"""The gold judge: the noiseless preference of the built-in story task.

A continuation is good when it is kind and positive, stays with the prompt's
main character, is coherent and not repetitive, and ends properly (DESIGN.md,
"Feedback"). `gold_score` is the weighted mean of the feature goodness values
of `alignloop.judges.features`, so it lies in [0, 1].

The gold judge is for evaluation only (win rates, reward-model accuracy
against gold): training sees only the annotations of people or personas.
"""

from __future__ import annotations

from collections.abc import Sequence

from alignloop.errors import DataError
from alignloop.judges.features import FEATURE_NAMES, feature_scores

GOLD_WEIGHTS: dict[str, float] = {
    "kindness": 2.5,
    "character": 2.0,
    "no_repetition": 2.0,
    "ending": 1.5,
    "length": 1.0,
    "grammar": 0.5,
}

TIE_TOLERANCE = 1e-6


def weighted_score(prompt: str, response: str, weights: dict[str, float]) -> float:
    """sum_i w_i g_i / sum_i w_i over the feature goodness values g_i: in [0, 1] for w_i >= 0."""
    goodness = feature_scores(prompt, response)
    total = sum(weights.get(name, 0.0) for name in FEATURE_NAMES)
    return sum(weights.get(name, 0.0) * goodness[name] for name in FEATURE_NAMES) / total


def gold_score(prompt: str, response: str) -> float:
    """The gold judge's score of `response` to `prompt`, in [0, 1], higher is better."""
    return weighted_score(prompt, response, GOLD_WEIGHTS)


def gold_preference(prompt: str, a: str, b: str) -> float:
    """1.0 when the gold judge prefers `a`, 0.0 when it prefers `b`, 0.5 when within 1e-6."""
    diff = gold_score(prompt, a) - gold_score(prompt, b)
    if abs(diff) <= TIE_TOLERANCE:
        return 0.5
    return 1.0 if diff > 0 else 0.0


def gold_win_rate(
    prompts: Sequence[str], policy_responses: Sequence[str], baseline_responses: Sequence[str]
) -> float:
    """Share of prompts where the gold judge prefers the policy's response to the baseline's (ties count half)."""
    if not (len(prompts) == len(policy_responses) == len(baseline_responses)):
        raise DataError(
            f"gold win rate needs as many responses as prompts: {len(prompts)} prompts, "
            f"{len(policy_responses)} policy and {len(baseline_responses)} baseline responses"
        )
    if not prompts:
        raise DataError("gold win rate needs at least one prompt")
    wins = sum(gold_preference(p, a, b) for p, a, b in zip(prompts, policy_responses, baseline_responses))
    return wins / len(prompts)
