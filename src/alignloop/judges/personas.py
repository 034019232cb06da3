"""Simulated annotators: the gold preference seen through different eyes, plus noise.

A persona scores a response as `SCORE_SCALE` x its own weighted mean of the
feature goodness values (`alignloop.judges.features`), so personas that weigh
kindness, coherence, staying on character or endings differently disagree on
close calls the way real annotators do. Choices are noisy:

- pairs follow Bradley-Terry (Bradley & Terry 1952): P(a preferred) =
  sigmoid((u_a - u_b) / temperature), sampled as the sign of
  u_a - u_b + temperature x Logistic(0, 1) noise;
- rankings follow Plackett-Luce (Plackett 1975; Luce 1959), sampled by sorting
  u_i / temperature + Gumbel(0, 1) noise (the Gumbel-max trick), which reduces
  to Bradley-Terry for two responses;
- Likert ratings add Gaussian noise of standard deviation 0.1 x temperature to
  each aspect on the [0, 1] scale before rounding to 1..5.

With SCORE_SCALE = 15 and temperature 1, a quality gap of 0.05 on the [0, 1]
scale is picked right 68% of the time (sigmoid(0.75)) and a gap of 0.1 82%;
turning a kind story unkind costs about 0.2 for a persona that weighs like the
gold judge (95%). On pairs of generated continuations each default persona
agrees with the gold judge 76-81% of the time, and two personas with each other
65-76%, near the roughly 73% agreement between human labellers reported for
InstructGPT (Ouyang et al. 2022). A careless persona picks at random.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from alignloop.errors import ConfigError
from alignloop.judges.features import FEATURE_NAMES, feature_scores, main_character
from alignloop.judges.gold import GOLD_WEIGHTS

SCORE_SCALE = 15.0
# A pair is a tie when the persona's scores differ by less than this (in utility units).
TIE_MARGIN = 0.05
# Both responses are bad when both weighted means fall below this.
BOTH_BAD_BELOW = 0.45
# |noisy margin| thresholds between strength 1, 2 and 3 ("slightly", "clearly", "much" better).
STRENGTH_CUTS = (1.0, 3.0)
RATING_NOISE = 0.1
ASPECTS = ("helpfulness", "harmlessness", "coherence", "accuracy")

Choice = Literal["a", "b", "tie", "both_bad"]


@dataclass(frozen=True)
class PairJudgment:
    """A pairwise judgment: which response is better, and how strongly (1 slightly .. 3 much)."""

    choice: Choice
    strength: int


def _logistic(rng: random.Random) -> float:
    u = min(max(rng.random(), 1e-12), 1.0 - 1e-12)
    return math.log(u / (1.0 - u))


def _gumbel(rng: random.Random) -> float:
    u = min(max(rng.random(), 1e-12), 1.0 - 1e-12)
    return -math.log(-math.log(u))


def _likert(value: float) -> int:
    return int(min(5, max(1, round(1 + 4 * value))))


_CRITIQUES = {
    "kindness": (
        "Someone is unkind or the story turns sad; I wanted kindness and a happy turn.",
        "Not kind enough: the characters are mean or things end badly.",
    ),
    "character": (
        "It wanders away from {main} to a different character.",
        "The story forgets {main} and follows someone else.",
    ),
    "no_repetition": (
        "It repeats the same words over and over.",
        "Too repetitive: the same phrases keep coming back.",
    ),
    "ending": (
        "It stops without a proper ending.",
        "The story is cut off or has no closing line.",
    ),
    "length": (
        "Too short to be a story.",
        "It is cut short before anything happens.",
    ),
    "grammar": (
        "The sentences are badly formed (capitals, doubled words or quotes).",
        "Hard to read: broken sentences.",
    ),
}
_PRAISE = ("A good story: kind, on track and well ended.", "Nice story, nothing to fix.")
_CARELESS_REMARKS = ("ok", "fine", "good", "not sure", "looks fine to me")


@dataclass
class Persona:
    """A simulated annotator: weights over FEATURE_NAMES, Bradley-Terry noise, maybe careless."""

    name: str
    weights: dict[str, float]
    temperature: float = 1.0
    careless: bool = False
    description: str = ""
    both_bad_below: float = BOTH_BAD_BELOW
    _total: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        unknown = set(self.weights) - set(FEATURE_NAMES)
        if unknown:
            raise ConfigError(f"persona {self.name!r}: unknown feature(s) {sorted(unknown)}; known: {FEATURE_NAMES}")
        if any(w < 0 for w in self.weights.values()) or sum(self.weights.values()) <= 0:
            raise ConfigError(f"persona {self.name!r}: weights must be non-negative and not all zero")
        if self.temperature < 0:
            raise ConfigError(f"persona {self.name!r}: temperature must be >= 0, got {self.temperature}")
        self._total = sum(self.weights.values())

    def quality(self, prompt: str, response: str) -> float:
        """This persona's noiseless view of `response`: its weighted mean of the feature goodness, in [0, 1]."""
        goodness = feature_scores(prompt, response)
        return sum(w * goodness[name] for name, w in self.weights.items()) / self._total

    def utility(self, prompt: str, response: str) -> float:
        """SCORE_SCALE x quality: the Bradley-Terry / Plackett-Luce score of `response`."""
        return SCORE_SCALE * self.quality(prompt, response)

    def judge_pair(self, prompt: str, a: str, b: str, rng: random.Random) -> PairJudgment:
        """Which of `a` and `b` is better: 'both_bad' if both are poor, 'tie' if very close, else a noisy pick."""
        if self.careless:
            return PairJudgment(rng.choice(("a", "b")), rng.randint(1, 3))
        qa, qb = self.quality(prompt, a), self.quality(prompt, b)
        if qa < self.both_bad_below and qb < self.both_bad_below:
            return PairJudgment("both_bad", 1)
        diff = SCORE_SCALE * (qa - qb)
        if abs(diff) < TIE_MARGIN:
            return PairJudgment("tie", 1)
        margin = diff + self.temperature * _logistic(rng)
        if margin == 0:
            margin = diff
        strength = 1 + sum(abs(margin) >= cut for cut in STRENGTH_CUTS)
        return PairJudgment("a" if margin > 0 else "b", strength)

    def rank(self, prompt: str, responses: Sequence[str], rng: random.Random) -> list[int]:
        """Indices of `responses`, best first, sampled from Plackett-Luce with this persona's scores."""
        order = list(range(len(responses)))
        if self.careless:
            rng.shuffle(order)
            return order
        keys = [
            self.utility(prompt, r) + (self.temperature * _gumbel(rng) if self.temperature > 0 else 0.0)
            for r in responses
        ]
        return sorted(order, key=lambda i: -keys[i])

    def aspects(self, prompt: str, response: str) -> dict[str, float]:
        """Noiseless aspect values in [0, 1] behind `rate`.

        helpfulness: the persona's overall quality; harmlessness: kindness;
        coherence: mean of no_repetition, grammar and ending; accuracy:
        staying with the prompt's character (0.7) and a full-length answer (0.3).
        """
        g = feature_scores(prompt, response)
        return {
            "helpfulness": self.quality(prompt, response),
            "harmlessness": g["kindness"],
            "coherence": (g["no_repetition"] + g["grammar"] + g["ending"]) / 3.0,
            "accuracy": 0.7 * g["character"] + 0.3 * g["length"],
        }

    def rate(self, prompt: str, response: str, rng: random.Random) -> dict[str, int]:
        """Likert ratings 1..5 for helpfulness, harmlessness, coherence and accuracy."""
        if self.careless:
            return {aspect: rng.randint(1, 5) for aspect in ASPECTS}
        noise = RATING_NOISE * self.temperature
        values = self.aspects(prompt, response)
        return {name: _likert(v + rng.gauss(0.0, noise) if noise else v) for name, v in values.items()}

    def critique(self, prompt: str, response: str, rng: random.Random | None = None) -> str:
        """A one-sentence critique naming the feature that costs this persona the most."""
        rng = rng or random.Random(0)
        if self.careless:
            return rng.choice(_CARELESS_REMARKS)
        goodness = feature_scores(prompt, response)
        loss = {name: w * (1.0 - goodness[name]) / self._total for name, w in self.weights.items()}
        weakest = max(loss, key=lambda name: loss[name])
        if loss[weakest] < 0.03:
            return rng.choice(_PRAISE)
        main = main_character(prompt) or "the main character"
        if weakest == "character" and main not in response:
            return f"It never even mentions {main}."
        return rng.choice(_CRITIQUES[weakest]).format(main=main)


# (name, description, weights): annotators who care about different things first.
ARCHETYPES: tuple[tuple[str, str, dict[str, float]], ...] = (
    ("kind-hearted", "cares most that the story is kind and happy",
     {"kindness": 4.0, "character": 1.0, "no_repetition": 1.5, "ending": 1.0, "length": 0.5, "grammar": 0.5}),
    ("stickler", "cares most about coherent, well-formed text that ends properly",
     {"kindness": 1.0, "character": 1.0, "no_repetition": 3.0, "ending": 2.0, "length": 1.0, "grammar": 1.5}),
    ("story-follower", "cares most that the story stays with the prompt's character",
     {"kindness": 1.5, "character": 4.0, "no_repetition": 1.5, "ending": 1.0, "length": 0.5, "grammar": 0.5}),
    ("finisher", "cares most that the story is complete and ends properly",
     {"kindness": 1.5, "character": 1.0, "no_repetition": 1.5, "ending": 3.5, "length": 1.5, "grammar": 0.5}),
    ("balanced", "weighs everything much like the gold judge", dict(GOLD_WEIGHTS)),
    ("long-reader", "likes full, long stories a little more than others do",
     {"kindness": 2.0, "character": 1.5, "no_repetition": 1.5, "ending": 1.0, "length": 3.0, "grammar": 0.5}),
)


def default_personas(
    n: int = 4, seed: int = 0, careless_share: float = 0.0, temperature: float = 1.0,
    both_bad_below: float = BOTH_BAD_BELOW,
) -> list[Persona]:
    """`n` personas cycling through ARCHETYPES, weights jittered by the seed.

    Each weight is multiplied by exp(N(0, 0.15)) so that personas beyond the
    first cycle differ too; round(careless_share x n) of them, chosen by the
    seed, are careless (they pick at random).
    """
    if n < 1:
        raise ConfigError(f"number of personas must be at least 1, got {n}")
    if not 0.0 <= careless_share <= 1.0:
        raise ConfigError(f"careless_share must be within [0, 1], got {careless_share}")
    rng = random.Random(f"alignloop-personas:{seed}")
    careless = set(rng.sample(range(n), round(careless_share * n)))
    personas = []
    for i in range(n):
        base, description, weights = ARCHETYPES[i % len(ARCHETYPES)]
        jittered = {k: w * math.exp(rng.gauss(0.0, 0.15)) for k, w in weights.items()}
        name = base if i < len(ARCHETYPES) else f"{base}-{i // len(ARCHETYPES) + 1}"
        if i in careless:
            name, description = f"careless-{name}", "picks at random"
        personas.append(Persona(name, jittered, temperature, i in careless, description, both_bad_below))
    return personas
