"""Preference readers (TRL, HH, rich), bad input, grouping by prompt, batches and the batch objective."""

from __future__ import annotations

import gzip
import json
import math
import random
from pathlib import Path

import pytest
import torch
from reward_helpers import write_jsonl

from alignloop.errors import DataError
from alignloop.reward.data import (
    PreferenceBatches,
    collate_groups,
    encode_groups,
    group_by_prompt,
    length_grouped_order,
    read_preference_file,
    split_groups,
    strength_margin,
)
from alignloop.reward.objective import batch_objective, bootstrap_mask

SHARED_HH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh_harmless_train_dev.jsonl.gz"


def test_trl_plain_conversational_and_implicit(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."},
        {"prompt": [{"role": "user", "content": "Hi"}],
         "chosen": [{"role": "assistant", "content": "Hello!"}],
         "rejected": [{"role": "assistant", "content": "No."}]},
        {"chosen": "Once upon a time a cat sat.", "rejected": "Once upon a time a dog ran."},
    ])
    prefs = read_preference_file(path)
    plain, chat, implicit = prefs.comparisons
    assert (plain.prompt, plain.chosen, plain.rejected) == ("Hi", "Hello!", "Go away.")
    assert (chat.prompt, chat.chosen, chat.rejected) == ("user: Hi", "assistant: Hello!", "assistant: No.")
    assert (implicit.prompt, implicit.chosen, implicit.rejected) == ("Once upon a time a ", "cat sat.", "dog ran.")
    assert not prefs.skipped


def test_hh_transcripts_split_at_the_final_assistant_turn(tmp_path):
    dialogue = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: help me?\n\nAssistant:"
    path = write_jsonl(tmp_path / "hh.jsonl", [{"chosen": dialogue + " Sure, how?", "rejected": dialogue + " No."}])
    (comparison,) = read_preference_file(path).comparisons
    assert comparison.prompt == dialogue
    assert (comparison.chosen, comparison.rejected) == ("Sure, how?", "No.")


def test_rich_records_pairs_rankings_ratings_and_aggregation(tmp_path):
    responses = [{"id": 7, "text": "good"}, {"id": 8, "text": "bad"}]
    rows = [
        {"kind": "pair", "prompt": "P", "responses": responses, "choice": "a", "strength": 3, "annotator": "x",
         "item_id": 1},
        {"kind": "pair", "prompt": "P", "responses": responses, "choice": "a", "strength": 1, "annotator": "y",
         "item_id": 1},
        {"kind": "pair", "prompt": "P", "responses": responses, "choice": "b", "strength": 2, "annotator": "z",
         "item_id": 1},
        {"kind": "ranking", "prompt": "Q", "responses": ["r1", "r2", "r3"], "ranking": [2, 0, 1], "annotator": "x",
         "item_id": 2},
        {"kind": "rating", "prompt": "R", "responses": ["only"], "ratings": {"0": {"overall": 5, "kind": 3}},
         "annotator": "x", "item_id": 3},
    ]
    path = write_jsonl(tmp_path / "rich.jsonl", rows)
    majority = read_preference_file(path, aggregate="majority", ratings=True)
    pair = [c for c in majority.comparisons if c.prompt == "P"]
    assert len(pair) == 1 and pair[0].chosen == "good" and pair[0].strength == 2.0  # mean of 3 and 1
    ranked = sorted((c.chosen, c.rejected) for c in majority.comparisons if c.prompt == "Q")
    assert ranked == [("r1", "r2"), ("r3", "r1"), ("r3", "r2")]
    assert majority.ratings[0].score == pytest.approx((4.0 - 1.0) / 4.0)  # mean of 5 and 3 on [1, 5]
    every = read_preference_file(path, aggregate="annotator")
    assert len([c for c in every.comparisons if c.prompt == "P"]) == 3
    assert [r.responses for r in every.rankings] == [["r3", "r1", "r2"]]


def test_unusable_records_are_counted_with_their_lines(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [
        {"prompt": "a", "chosen": "x", "rejected": "y"},
        {"prompt": "a", "chosen": "", "rejected": "y"},  # empty
        {"prompt": "a", "chosen": "same", "rejected": "same "},  # identical but for a space
        {"prompt": "a", "chosen": "x", "rejected": "z", "tie": True},  # a tie, dropped
        {"prompt": "a", "chosen": "same", "rejected": "same"},
    ])
    prefs = read_preference_file(path)
    assert len(prefs.comparisons) == 1
    assert prefs.skipped == {"empty chosen": 1, "chosen identical to rejected": 2, "tie (data.ties=drop)": 1}
    summary = prefs.skipped_summary()
    assert "skipped 4 records" in summary and "2 chosen identical to rejected (lines 3, 5)" in summary
    assert "1 empty chosen (line 2)" in summary
    only_bad = write_jsonl(tmp_path / "only_bad.jsonl", [{"prompt": "a", "chosen": "s", "rejected": "s"}])
    with pytest.raises(DataError, match="no usable preference records.*identical.*line 1"):
        read_preference_file(only_bad)
    with pytest.raises(DataError, match="does not exist"):
        read_preference_file(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="data.lines"):
        read_preference_file(path, lines="ten")


GOOD = json.dumps({"prompt": "a", "chosen": "x", "rejected": "y"}).encode()
RICH = {"prompt": "p", "responses": [{"id": 4, "text": "r1"}, {"id": 5, "text": "r2"}, {"id": 6, "text": "r3"}]}
MALFORMED = {
    "missing rejected": (b'{"prompt": "a", "chosen": "x"}', "has no 'rejected'"),
    "not UTF-8": (b'{"prompt": "a", "chosen": "\xff\xfe", "rejected": "y"}', "not UTF-8"),
    "not JSON": (b"{not json", "not valid JSON"),
    "truncated last line": (GOOD[:25], "not valid JSON"),
    "not an object": (b"[1, 2]", "expected a JSON object"),
    "NaN": (b'{"prompt": "a", "chosen": "x", "rejected": "y", "strength": NaN}', "NaN"),
    "strength not 1-3": (b'{"prompt": "a", "chosen": "x", "rejected": "y", "strength": "very"}', "strength"),
    "deeply nested": (b'{"prompt": "a", "chosen": "x", "rejected": "y", "m": ' + b"[" * 5000 + b"]" * 5000 + b"}",
                      "nested deeper"),
    "lone surrogate": (b'{"prompt": "a\\udc00", "chosen": "x", "rejected": "y"}', "surrogate"),
    "mixed types": (b'{"prompt": "a", "chosen": ["x"], "rejected": "y"}', "must all be strings"),
    "rich ratings a list": (json.dumps({**RICH, "kind": "rating", "ratings": [1]}).encode(), "'ratings' must be"),
    "rich ratings not per aspect": (json.dumps({**RICH, "kind": "rating", "ratings": {"4": 5}}).encode(),
                                    "ratings of response 4"),
    "rich ranking of unknown ids": (json.dumps({**RICH, "kind": "ranking", "ranking": [4, 9]}).encode(),
                                    "9 is not the id"),
    "rich choice unknown": (json.dumps({**RICH, "responses": ["a", "b"], "kind": "pair", "choice": "c"}).encode(),
                            "'choice'"),
    "rich kind unknown": (json.dumps({**RICH, "kind": "essay"}).encode(), "'kind' must be one of"),
    "rich ids not numbers": (json.dumps({"prompt": "p", "responses": [{"text": "a", "id": [1]}, "b"],
                                         "choice": "a"}).encode(), "ids must be distinct"),
    "rich strength text": (json.dumps({"prompt": "p", "responses": ["a", "b"], "choice": "a",
                                       "strength": "x"}).encode(), "strength"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_line_is_an_error_naming_it(tmp_path, case):
    line, words = MALFORMED[case]
    path = tmp_path / "prefs.jsonl"
    path.write_bytes(GOOD + b"\n" + GOOD + b"\n" + line + (b"" if case == "truncated last line" else b"\n"))
    with pytest.raises(DataError, match=f"prefs.jsonl line 3: .*{words}"):
        read_preference_file(path)
    assert len(read_preference_file(path, lines="1-2").comparisons) == 2  # lines outside data.lines are not read


def test_a_damaged_gzip_file_is_named(tmp_path):
    packed = bytearray(gzip.compress(b"".join(GOOD + b"\n" for _ in range(200))))
    for start, name in ((len(packed) - 12, "truncated"), (20, "corrupt")):
        damaged = bytearray(packed) if name == "corrupt" else packed[:start]
        if name == "corrupt":
            damaged[20:40] = bytes(b ^ 0xFF for b in damaged[20:40])
        path = tmp_path / f"{name}.jsonl.gz"
        path.write_bytes(bytes(damaged))
        with pytest.raises(DataError, match=f"{name}.jsonl.gz is a damaged gzip file"):
            read_preference_file(path)


def test_gzip_and_line_ranges(tmp_path):
    records = [{"prompt": f"p{i}", "chosen": "yes", "rejected": "no"} for i in range(10)]
    path = tmp_path / "p.jsonl.gz"
    path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in records).encode()))
    assert [c.prompt for c in read_preference_file(path, lines="3-5").comparisons] == ["p2", "p3", "p4"]


@pytest.mark.skipif(not SHARED_HH.exists(), reason="../shared/data/hh_harmless_train_dev.jsonl.gz not present")
def test_reads_the_shared_hh_file():
    train = read_preference_file(SHARED_HH, lines="1-1200")
    dev = read_preference_file(SHARED_HH, lines="1201-1500")
    assert len(train.comparisons) + sum(train.skipped.values()) == 1200
    assert len(dev.comparisons) + sum(dev.skipped.values()) == 300
    assert all(c.prompt.endswith("\n\nAssistant:") for c in train.comparisons)
    assert all(c.chosen.strip() != c.rejected.strip() for c in dev.comparisons)


def _groups_from(records, tmp_path):
    return group_by_prompt(read_preference_file(write_jsonl(tmp_path / "g.jsonl", records)))


def test_grouping_encodes_each_response_once(tmp_path):
    groups = _groups_from([
        {"prompt": "P", "chosen": "a", "rejected": "b", "strength": 3},
        {"prompt": "P", "chosen": "a", "rejected": "c"},
        {"prompt": "P", "chosen": "c", "rejected": "b", "tie": True},
        {"prompt": "Q", "chosen": "x", "rejected": "y"},
    ], tmp_path)
    assert [g.responses for g in groups] == [["a", "b", "c"], ["x", "y"]]
    assert groups[0].pairs[0][:2] == (0, 1) and groups[0].pairs[0][2] == 3.0
    assert math.isnan(groups[0].pairs[1][2])
    assert groups[0].ties == []  # ties dropped by default
    encoded = encode_groups(groups, lambda p, r: {"input_ids": [ord(ch) for ch in p + r]})
    batch = collate_groups(encoded, pad_token_id=0)
    assert batch["input_ids"].shape[0] == 5  # five distinct responses, not 2 x 3 pairs
    assert batch["pair_index"].tolist() == [[0, 1], [0, 2], [3, 4]]


def test_split_is_by_prompt_and_repeatable(tmp_path):
    groups = _groups_from([{"prompt": f"p{i}", "chosen": "a", "rejected": "b"} for i in range(20)], tmp_path)
    train, val = split_groups(groups, 0.25, seed=3)
    again_train, again_val = split_groups(groups, 0.25, seed=3)
    assert len(val) == 5 and [g.prompt for g in val] == [g.prompt for g in again_val]
    assert not {g.prompt for g in train} & {g.prompt for g in val}


def test_length_grouped_batches_cover_everything_with_little_padding():
    lengths = [random.Random(i).randint(1, 100) for i in range(64)]
    batches = length_grouped_order(lengths, 4, random.Random(0), mega=4)
    assert sorted(i for b in batches for i in b) == list(range(64))
    # Within a mega-batch of 16 sorted by length, each batch of 4 spans at most that mega-batch's range.
    padding = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)
    shuffled = [list(range(64))[i:i + 4] for i in range(0, 64, 4)]
    padding_plain = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in shuffled)
    assert padding < padding_plain


def test_batches_are_a_pure_function_of_the_index(tmp_path):
    groups = _groups_from([{"prompt": f"p{i}", "chosen": "a" * i, "rejected": "b"} for i in range(1, 11)], tmp_path)
    encoded = encode_groups(groups, lambda p, r: {"input_ids": [1] * len(p + r)})
    one = PreferenceBatches(encoded, 3, 0, seed=5)
    two = PreferenceBatches(encoded, 3, 0, seed=5)
    assert one.batches_per_epoch == 4
    for index in (0, 5, 3, 9):  # out of order, across epochs
        assert torch.equal(one.train_batch(index)["input_ids"], two.train_batch(index)["input_ids"])


def test_strength_margin_by_hand():
    margins = strength_margin(torch.tensor([1.0, 2.0, 3.0, float("nan")]), scale=1.0)
    assert margins.tolist() == [0.0, 0.5, 1.0, 0.0]


def _batch(pairs, strengths=None, ties=(), rankings=()):
    n_pairs = len(pairs)
    width = max((len(r) for r in rankings), default=0)
    return {
        "pair_index": torch.tensor(pairs, dtype=torch.long).reshape(-1, 2),
        "pair_strength": torch.tensor(strengths or [float("nan")] * n_pairs),
        "pair_uid": torch.arange(n_pairs),
        "tie_index": torch.tensor(list(ties), dtype=torch.long).reshape(-1, 2),
        "tie_uid": torch.arange(len(ties)),
        "ranking_index": torch.tensor([list(r) for r in rankings], dtype=torch.long).reshape(len(rankings), width),
        "ranking_mask": torch.ones((len(rankings), width), dtype=torch.long),
        "ranking_uid": torch.arange(len(rankings)),
        "rating_index": torch.zeros(0, dtype=torch.long),
        "rating_target": torch.zeros(0),
        "rating_uid": torch.zeros(0, dtype=torch.long),
    }


def test_objective_by_hand():
    log2 = math.log(2.0)
    rewards = torch.tensor([[1.0], [1.0], [0.0]])
    # One pair with equal rewards: -log sigmoid(0) = log 2; accuracy counts the tie half.
    loss, figures = batch_objective(rewards, _batch([[0, 1]]))
    assert loss.item() == pytest.approx(log2)
    assert figures["accuracy"] == 0.5
    # Margin 1 for strength 3: -log sigmoid(1 - 0 - 1) = log 2.
    loss, _ = batch_objective(rewards, _batch([[0, 2]], [3.0]), margin=1.0)
    assert loss.item() == pytest.approx(log2)
    # Centering adds 0.5 * (1 + 0)^2 to -log sigmoid(1).
    loss, _ = batch_objective(rewards, _batch([[0, 2]]), centering=0.5)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1.0)) + 0.5)
    # A pair (log 2) and a tie at 0.5 between rewards 1 and 0 (BCE = log(1 + e^-1) * .5 + log(1 + e) * .5),
    # weighted by their counts (1 each).
    tie = 0.5 * math.log(1 + math.exp(-1.0)) + 0.5 * math.log(1 + math.exp(1.0))
    loss, _ = batch_objective(rewards, _batch([[0, 1]], ties=[(0, 2)]))
    assert loss.item() == pytest.approx((log2 + tie) / 2)
    # A ranking 0 > 1 > 2 of rewards 1, 1, 0: pairs (1,1), (1,0), (1,0), averaged over its 3 pairs.
    expected = (log2 + 2 * math.log(1 + math.exp(-1.0))) / 3
    loss, _ = batch_objective(rewards, _batch([], rankings=[(0, 1, 2)]))
    assert loss.item() == pytest.approx(expected)


def test_bootstrap_masks_differ_per_head_and_keep_about_the_share():
    uids = torch.arange(2000)
    first, second = bootstrap_mask(uids, 0, 3, 0.8), bootstrap_mask(uids, 1, 3, 0.8)
    assert 0.75 < first.double().mean() < 0.85
    assert not torch.equal(first, second)
    assert bootstrap_mask(uids, 0, 1, 0.8).all()


def test_objective_trains_every_head():
    rewards = torch.zeros((2, 3), requires_grad=True)
    loss, _ = batch_objective(rewards, _batch([[0, 1]]), bootstrap=1.0)
    loss.backward()
    assert (rewards.grad[0] < 0).all() and (rewards.grad[1] > 0).all()


def test_packed_batches_keep_the_response_order(tmp_path):
    groups = _groups_from([
        {"prompt": "P", "chosen": "a", "rejected": "b"},
        {"prompt": "P", "chosen": "a", "rejected": "c"},
        {"prompt": "Q", "chosen": "x", "rejected": "y"},
    ], tmp_path)
    encoded = encode_groups(groups, lambda p, r: {"input_ids": [ord(ch) for ch in p + r]},
                            encode_parts=lambda p, rs: ([ord(p)], [[ord(r)] for r in rs]))
    batch = collate_groups(encoded, pad_token_id=0, packed=True)
    assert batch["input_ids"].tolist() == [[ord("P"), ord("a"), ord("b"), ord("c")], [ord("Q"), ord("x"), ord("y"), 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 1, 1], [0, 1, 1, 0]]
    assert list(zip(batch["score_row"].tolist(), batch["score_col"].tolist())) == [(0, 1), (0, 2), (0, 3), (1, 1), (1, 2)]
    # Response "c" sees the prompt and itself, not "a" or "b".
    assert batch["packed_mask"][0, 0, 3].tolist() == [True, False, False, True]
    assert batch["pair_index"].tolist() == [[0, 1], [0, 2], [3, 4]]
