"""The built-in story generator and the files it writes."""

from __future__ import annotations

import json
import re

import pytest

from alignloop.data.stories import (
    CLOSING_MARKERS,
    KIND_WORDS,
    UNKIND_WORDS,
    generate_comparisons,
    generate_openings,
    generate_stories,
    write_builtin_data,
)
from alignloop.errors import DataError


def test_same_seed_same_stories_other_seed_other_stories():
    first = generate_stories(50, seed=7)
    again = generate_stories(50, seed=7)
    other = generate_stories(50, seed=8)
    assert [s.text for s in first] == [s.text for s in again]
    assert [s.meta for s in first] == [s.meta for s in again]
    assert sum(a.text != b.text for a, b in zip(first, other)) > 45


def test_story_shape_and_mix():
    stories = generate_stories(2000, seed=0)
    for story in stories[:200]:
        assert story.meta["main"] in story.opening
        assert story.text == story.opening + " " + story.continuation
        assert 1 <= len(re.findall(r"[.!?]", story.opening)) <= 2
    lengths = [len(s.text.split()) for s in stories]
    assert 80 <= sum(lengths) / len(lengths) <= 200
    assert max(lengths) <= 220

    def share(key):
        return sum(bool(s.meta[key]) for s in stories) / len(stories)

    assert 0.45 <= share("kind") <= 0.55
    assert 0.15 <= share("drift") <= 0.25
    assert 0.8 <= share("ending") <= 0.9


def test_meta_matches_the_text():
    for story in generate_stories(300, seed=1):
        words = set(re.findall(r"[a-z]+", story.continuation.lower()))
        last = story.continuation.lower()
        if story.meta["ending"]:
            assert any(marker in last[-80:] for marker in CLOSING_MARKERS)
        if story.meta["truncated"]:
            assert not re.search(r"[.!?\"]$", story.continuation)
        if story.meta["drift"]:
            # The main character never comes back once the story drifts.
            after = story.continuation.split(story.meta["focus"], 1)[1]
            assert story.meta["main"] not in after
        else:
            assert story.meta["main"] in story.continuation or {"she", "he"} & words
        if story.meta["tone"] == "kind":
            assert words & KIND_WORDS
        elif story.meta["tone"] == "unkind":
            assert words & UNKIND_WORDS


def test_vocabulary_is_small():
    vocabulary = {w.lower() for s in generate_stories(3000, seed=2) for w in re.findall(r"[A-Za-z']+", s.text)}
    assert 300 < len(vocabulary) < 3000


def test_comparisons_share_the_opening_and_differ():
    triples = generate_comparisons(100, seed=0)
    assert len(triples) == 100
    assert all(a != b for _, a, b in triples)
    assert generate_comparisons(10, seed=0) == triples[:10]


def test_openings_come_from_their_own_stream():
    corpus = {s.opening for s in generate_stories(500, seed=0)}
    prompts = generate_openings(500, seed=0)
    assert prompts != [s.opening for s in generate_stories(500, seed=0)]
    assert len(set(prompts) - corpus) > 300


@pytest.mark.parametrize("n", [0, -3])
def test_n_below_one_is_a_data_error(tmp_path, n):
    with pytest.raises(DataError):
        generate_stories(n)
    with pytest.raises(DataError):
        write_builtin_data(tmp_path / "stories.txt", n)


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_write_builtin_data_formats(tmp_path):
    paths = write_builtin_data(tmp_path / "stories.txt", 400, seed=3)
    assert set(paths) == {"corpus", "prompts", "eval_prompts", "sft"}
    assert paths["prompts"].name == "stories.prompts.jsonl"
    assert paths["sft"].name == "stories.sft.jsonl"
    assert paths["eval_prompts"].name == "stories.eval_prompts.jsonl"

    blocks = paths["corpus"].read_text().strip().split("\n\n")
    stories = generate_stories(400, seed=3)
    assert blocks == [s.text for s in stories]

    prompts = _jsonl(paths["prompts"])
    assert len(prompts) == 200 and all(set(r) == {"prompt"} and r["prompt"] for r in prompts)
    eval_prompts = _jsonl(paths["eval_prompts"])
    assert len(eval_prompts) == 200
    assert {r["prompt"] for r in prompts} != {r["prompt"] for r in eval_prompts}

    sft = _jsonl(paths["sft"])
    good = [s for s in stories if s.meta["kind"] and not s.meta["drift"] and s.meta["ending"]]
    assert sft == [{"prompt": s.opening, "response": s.continuation} for s in good]
    assert 0.2 * len(stories) < len(sft) < 0.5 * len(stories)


def test_prompt_count_scales_with_n(tmp_path):
    paths = write_builtin_data(tmp_path / "big.txt", 2500, seed=0)
    assert len(_jsonl(paths["prompts"])) == 250
