"""Features, the gold judge, and the simulated annotators of the built-in story task."""

from __future__ import annotations

import random

import pytest

from alignloop.data.stories import generate_comparisons
from alignloop.errors import ConfigError, DataError
from alignloop.judges.features import (
    FEATURE_NAMES,
    character_consistency,
    feature_scores,
    grammar,
    kindness,
    length_score,
    main_character,
    proper_ending,
    repetition,
)
from alignloop.judges.gold import gold_preference, gold_score, gold_win_rate
from alignloop.judges.personas import ASPECTS, PairJudgment, Persona, default_personas

PROMPT = "Once upon a time, there was a little girl named Lily. She loved to play in the park."
GOOD = (
    "One day, Lily saw a small dog named Max. Max was sad because he had lost his ball. "
    "Lily wanted to help. She looked under the big tree and found the ball. Max wagged his tail. "
    '"Thank you, Lily!" he said. Lily smiled. They played together all afternoon. '
    "From that day on, Lily and Max were best friends. The end."
)
UNKIND = (
    "One day, Lily saw a small dog named Max. Max asked to play with her ball. "
    'Lily grabbed the ball and yelled, "No! It is mine!" She pushed Max away and laughed at him. '
    "Max began to cry and walked home alone. Lily was mean to everyone that day. "
    "Nobody wanted to play with her. From that day on, Lily played all alone. The end."
)
OTHER_CHARACTER = (
    "Far away, there was a boy named Tom. Tom had a red kite. One day, Tom met a cat named Kiki. "
    "Kiki was sad because she had lost her hat. Tom looked under the bench and found the hat. "
    '"Thank you, Tom!" said Kiki. Tom smiled. From that day on, Tom and Kiki were best friends. The end.'
)
REPETITIVE = " ".join(["the dog ran"] * 14)
TRUNCATED = (
    "One day, Lily saw a small dog named Max. Max was sad because he had lost his ball. "
    "Lily wanted to help. She looked under the big"
)


# ---- features on hand-made texts -------------------------------------------


def test_repetition_counts_repeated_trigrams():
    assert repetition("a b c d") == 0.0
    # 3-grams: (a b c) (b c a) (c a b) (a b c): one of four repeats.
    assert repetition("a b c a b c") == pytest.approx(1 / 4)
    assert repetition("hi") == 0.0


def test_proper_ending_levels():
    assert proper_ending("They played. The end.") == 1.0
    assert proper_ending("From that day on, Lily and Max were best friends.") == 1.0
    assert proper_ending("They played in the park.") == 0.5
    assert proper_ending("They played in the") == 0.0
    assert proper_ending("") == 0.0


def test_length_score_penalises_short_and_cut_texts():
    assert length_score("Too short.") == 0.0
    full = " ".join(["word"] * 50) + "."
    assert length_score(full) == 1.0
    assert length_score(full[:-1]) == pytest.approx(0.8)
    assert length_score(" ".join(["word"] * 22) + ".") == pytest.approx(17 / 35)


def test_grammar_heuristics():
    assert grammar('Tom ran. "Hi!" said Sue. They played.') == pytest.approx(1.0)
    assert grammar("tom ran. sue played.") == pytest.approx(0.5)
    # 1 doubled word among 5 gaps: 0.3 x (1 - 10 x 0.2) floors at 0.
    assert grammar("Tom ran ran to Sue.") == pytest.approx(0.7)
    assert grammar('Tom said, "Hi.') == pytest.approx(0.9)


def test_kindness_sign_and_negation():
    assert kindness("Lily helped Max and gave him a big hug. They were happy.") > 0.4
    assert kindness("Lily pushed Max and yelled at him. Max cried.") < -0.3
    assert kindness("Lily did not help.") < kindness("Lily helped.")
    assert kindness("") == 0.0


def test_main_character_and_consistency():
    assert main_character(PROMPT) == "Lily"
    assert main_character("Once upon a time, there was a dog.") is None
    assert character_consistency(PROMPT, GOOD) == 1.0
    assert character_consistency(PROMPT, OTHER_CHARACTER) == 0.0
    assert character_consistency(PROMPT, "She played all day. The end.") == 0.6
    assert character_consistency("There was a dog.", OTHER_CHARACTER) == 1.0
    # Lily once, then Tom four times; the second half ("ran Tom sat Tom hid") is all Tom:
    # 0.2 (named) + 0.3 x 1/4 (outnumbered overall) + 0.5 x 0 (taken over late).
    assert character_consistency(PROMPT, "Lily met Tom. Tom ran. Tom sat. Tom hid.") == pytest.approx(0.275)


def test_feature_scores_are_goodness_in_unit_range():
    for response in (GOOD, UNKIND, OTHER_CHARACTER, REPETITIVE, TRUNCATED, ""):
        scores = feature_scores(PROMPT, response)
        assert tuple(scores) == FEATURE_NAMES
        assert all(0.0 <= v <= 1.0 for v in scores.values())


# ---- the gold judge ---------------------------------------------------------


@pytest.mark.parametrize("worse", [UNKIND, OTHER_CHARACTER, REPETITIVE, TRUNCATED])
def test_gold_prefers_kind_on_character_well_ended(worse):
    assert gold_score(PROMPT, GOOD) > gold_score(PROMPT, worse) + 0.05
    assert gold_preference(PROMPT, GOOD, worse) == 1.0
    assert gold_preference(PROMPT, worse, GOOD) == 0.0


def test_gold_preference_tie_and_win_rate():
    assert gold_preference(PROMPT, GOOD, GOOD) == 0.5
    prompts = [PROMPT] * 4
    policy = [GOOD, GOOD, UNKIND, GOOD]
    baseline = [UNKIND, REPETITIVE, GOOD, GOOD]
    assert gold_win_rate(prompts, policy, baseline) == pytest.approx((1 + 1 + 0 + 0.5) / 4)
    with pytest.raises(DataError):
        gold_win_rate(prompts, policy, baseline[:3])
    with pytest.raises(DataError):
        gold_win_rate([], [], [])


# ---- personas ---------------------------------------------------------------


@pytest.fixture(scope="module")
def pairs():
    return generate_comparisons(300, seed=11)


def _choices(persona, pairs, seed):
    rng = random.Random(seed)
    return [persona.judge_pair(p, a, b, rng).choice for p, a, b in pairs]


def _agreement(x, y):
    both = [(i, j) for i, j in zip(x, y) if i in "ab" and j in "ab"]
    return sum(i == j for i, j in both) / len(both)


def _gold_agreement(choices, pairs):
    gold = ["a" if gold_preference(p, a, b) == 1.0 else "b" for p, a, b in pairs]
    return _agreement(choices, gold)


def test_default_personas_differ():
    personas = default_personas(4, seed=0)
    assert len({p.name for p in personas}) == 4
    assert max(personas[0].weights, key=personas[0].weights.get) == "kindness"
    assert max(personas[1].weights, key=personas[1].weights.get) == "no_repetition"
    assert max(personas[2].weights, key=personas[2].weights.get) == "character"
    assert not any(p.careless for p in personas)
    mixed = default_personas(10, seed=0, careless_share=0.3)
    assert sum(p.careless for p in mixed) == 3
    assert len({p.name for p in mixed}) == 10
    with pytest.raises(ConfigError):
        default_personas(0)
    with pytest.raises(ConfigError):
        default_personas(3, careless_share=1.5)
    with pytest.raises(ConfigError):
        Persona("x", {"wit": 1.0})


def test_personas_disagree_but_are_informative(pairs):
    p0, p1 = default_personas(2, seed=0)
    c0, c1 = _choices(p0, pairs, seed=1), _choices(p1, pairs, seed=2)
    assert 0.55 < _agreement(c0, c1) < 0.85
    for choices in (c0, c1):
        assert _gold_agreement(choices, pairs) > 0.62


def test_careless_annotator_is_at_chance(pairs):
    careless = default_personas(1, seed=0, careless_share=1.0)[0]
    assert careless.careless
    assert 0.4 < _gold_agreement(_choices(careless, pairs, seed=3), pairs) < 0.6


def test_judge_pair_ties_both_bad_and_noiseless_limit():
    persona = default_personas(1)[0]
    rng = random.Random(0)
    assert persona.judge_pair(PROMPT, GOOD, GOOD, rng) == PairJudgment("tie", 1)
    assert persona.judge_pair(PROMPT, REPETITIVE, "ran ran ran", rng).choice == "both_bad"
    noiseless = Persona("exact", dict(persona.weights), temperature=0.0)
    judged = noiseless.judge_pair(PROMPT, GOOD, UNKIND, rng)
    assert judged.choice == "a" and 1 <= judged.strength <= 3
    assert noiseless.judge_pair(PROMPT, UNKIND, GOOD, rng).choice == "b"


def test_pair_probability_follows_bradley_terry():
    persona = default_personas(1)[0]
    diff = persona.utility(PROMPT, GOOD) - persona.utility(PROMPT, TRUNCATED)
    rng = random.Random(5)
    picks = [persona.judge_pair(PROMPT, GOOD, TRUNCATED, rng).choice for _ in range(4000)]
    expected = 1 / (1 + pow(2.718281828459045, -diff))
    assert picks.count("a") / len(picks) == pytest.approx(expected, abs=0.03)


def test_rank_rate_and_critique():
    persona = default_personas(4)[2]  # the one who cares most about staying on character
    responses = [REPETITIVE, GOOD, OTHER_CHARACTER]
    noiseless = Persona("exact", dict(persona.weights), temperature=0.0)
    assert noiseless.rank(PROMPT, responses, random.Random(0)) == [1, 2, 0]
    order = persona.rank(PROMPT, responses, random.Random(0))
    assert sorted(order) == [0, 1, 2]

    good = persona.rate(PROMPT, GOOD, random.Random(0))
    bad = persona.rate(PROMPT, UNKIND, random.Random(0))
    assert set(good) == set(ASPECTS)
    assert all(1 <= v <= 5 for v in good.values())
    assert good["harmlessness"] > bad["harmlessness"]
    assert noiseless.rate(PROMPT, REPETITIVE, random.Random(0))["coherence"] <= 2

    assert "Lily" in persona.critique(PROMPT, OTHER_CHARACTER, random.Random(0))
    assert "mentions Lily" in persona.critique(PROMPT, REPETITIVE, random.Random(0))
    stickler = default_personas(4)[1]
    assert "repe" in stickler.critique(PROMPT, REPETITIVE, random.Random(0)).lower()
    assert stickler.critique(PROMPT, GOOD, random.Random(0)) in {
        "A good story: kind, on track and well ended.", "Nice story, nothing to fix."}


def test_a_simulated_verdict_does_not_depend_on_the_order_items_are_served(pairs):
    """The personas judge in threads, so the order each is served items changes with timing; a verdict must not."""
    from alignloop.feedback.simulate import SimulateConfig, item_rng, judgment_for

    persona = default_personas(1, seed=0)[0]
    config = SimulateConfig(critique_share=0.5)
    items = [{"id": 100 + i, "kind": "pair", "prompt": p, "responses": [{"id": 1, "text": a}, {"id": 2, "text": b}]}
             for i, (p, a, b) in enumerate(pairs[:20])]

    def judge(order):
        return {item["id"]: judgment_for(persona, item, item_rng(0, 0, item["id"]), config) for item in order}

    forward, backward = judge(items), judge(items[::-1])
    assert forward == backward
    # ...and the noise is really drawn per item: the verdicts are not all alike, and another seed changes some.
    assert len({(v["choice"], v.get("strength")) for v in forward.values()}) > 1
    other = {item["id"]: judgment_for(persona, item, item_rng(1, 0, item["id"]), config) for item in items}
    assert other != forward
