"""Import and export: TRL and Anthropic HH round-trip losslessly; a bad line commits nothing."""

from __future__ import annotations

import gzip
import json
from itertools import islice
from pathlib import Path

import pytest

from alignloop.errors import DataError
from alignloop.feedback import Answer, open_store
from alignloop.feedback.formats import export_lines, import_text

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
HH_FILES = ["hh_harmless_train_dev.jsonl.gz", "hh_helpful_base_train_dev.jsonl.gz",
            "hh_helpful_online_test.jsonl.gz"]


@pytest.fixture
def store(tmp_path):
    with open_store(tmp_path / "feedback.db") as opened:
        yield opened


def _jsonl(records) -> str:  # noqa: ANN001
    return "".join(json.dumps(r) + "\n" for r in records)


def _round_trip(store, records, fmt: str) -> list[dict]:  # noqa: ANN001
    import_text(store, _jsonl(records), fmt)
    return export_lines(store, fmt)


@pytest.mark.parametrize("name", HH_FILES)
def test_real_hh_pairs_round_trip(store, name):
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"{path} is not here (shared data)")
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        records = [json.loads(line) for line in islice(handle, 300)]
    assert _round_trip(store, records, "hh") == records
    # The same pairs as TRL: prompt is the dialogue up to the last "Assistant:", chosen/rejected the replies.
    trl = export_lines(store, "trl")
    assert all(r["prompt"] + r["chosen"] == o["chosen"] for r, o in zip(trl, records))


def test_hh_edge_cases_round_trip(store):
    records = [
        {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go away"},
        {"chosen": "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant:", "rejected":
            "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: d"},  # empty reply, no space
        {"chosen": "\n\nHuman: x\n\nAssistant: same", "rejected": "\n\nHuman: x\n\nAssistant: same", "id": 7},
        {"chosen": "\n\nHuman: q\n\nAssistant: one\n\nHuman: more\n\nAssistant: fine",
         "rejected": "\n\nHuman: q\n\nAssistant: two\n\nHuman: more\n\nAssistant: fine"},  # differ earlier
    ]
    assert _round_trip(store, records, "hh") == records


def test_trl_standard_conversational_and_implicit_round_trip(store):
    records = [
        {"prompt": "Once upon a time", "chosen": " a kind cat helped.", "rejected": " a cat.", "score": 0.5},
        {"prompt": "Say 'hi'; DROP TABLE prompts; --", "chosen": "hi", "rejected": "<script>x</script>"},
        {"prompt": [{"role": "user", "content": "What colour is the sky?"}],
         "chosen": [{"role": "assistant", "content": "Blue."}],
         "rejected": [{"role": "assistant", "content": "Green."}]},
        {"chosen": "The sky is blue.", "rejected": "The sky is green."},
        {"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
         "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go away."}]},
    ]
    assert _round_trip(store, records, "trl") == records
    item = store.judgment_rows()[0]
    assert item["prompt"] == "Once upon a time" and item["annotator"] == "import:trl"
    assert store.counts()["queued_items"] == 0  # labelled data is not put in front of annotators


def test_malformed_line_is_reported_by_number_and_nothing_is_committed(store, tmp_path):
    good = json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"})
    for text, line in ((f"{good}\n{good}\n{{not json\n{good}\n", 3), (f"{good}\n\n{json.dumps([1])}\n", 3)):
        with pytest.raises(DataError, match=f"line {line}"):
            import_text(store, text, "trl", name="prefs.jsonl")
    with pytest.raises(DataError, match="line 2"):
        import_text(store, f"{good}\n" + json.dumps({"prompt": "p", "chosen": 1, "rejected": "b"}), "trl")
    with pytest.raises(DataError, match="line 1"):
        import_text(store, json.dumps({"chosen": "no transcript", "rejected": 5}), "hh")
    with pytest.raises(DataError, match="line 2"):
        import_text(store, json.dumps({"prompt": "p", "responses": ["a", "b"]}) + "\n" +
                    json.dumps({"prompt": "p", "responses": [3]}), "responses")
    assert store.counts() == {"rounds": 0, "prompts": 0, "responses": 0, "items": 0, "queued_items": 0,
                              "judgments": 0, "users": 0}


def test_responses_import_makes_items_by_count_or_kind(store):
    text = _jsonl([{"prompt": "p", "responses": ["a", "b", "c"], "model": "m1"}, {"prompt": "q", "response": "x"}])
    assert import_text(store, text) == {"format": "responses", "records": 2, "items": 2}
    assert import_text(store, text.splitlines()[0], kind="pair")["items"] == 3
    kinds = [store.get_item(i).kind for i in range(1, 6)]
    assert kinds == ["ranking", "rating", "pair", "pair", "pair"]
    assert store.get_item(1).responses[0].model_name == "m1"


def test_export_expands_rankings_and_handles_ties(store):
    store.set_overlap(2)
    [tie_item] = store.add_samples(None, [{"prompt": "t", "responses": ["x", "y"]}], seed=3)
    [rank_item] = store.add_samples(None, [{"prompt": "r", "responses": ["1", "2", "3", "4"]}], "ranking")
    users = [store.add_user(f"u{i}", None) for i in range(2)]
    for user in users:
        while (view := store.next_assignment(user)) is not None:
            if view.item.kind == "pair":
                store.submit(view.id, user, Answer(choice="tie"))
            else:
                ids = {r.text: r.id for r in view.item.responses}
                store.submit(view.id, user, Answer(ranking=[ids[t] for t in "4321"], ratings={ids["4"]: {
                    "helpfulness": 5}}))
    trl = export_lines(store, "trl")
    assert len(trl) == 6 and ("4", "1") in {(r["chosen"], r["rejected"]) for r in trl}
    kept = export_lines(store, "trl", ties="keep")
    assert len(kept) == 7 and [r for r in kept if r.get("tie")] == [
        {"prompt": "t", "chosen": kept[0]["chosen"], "rejected": kept[0]["rejected"], "tie": True}]
    assert len(export_lines(store, "trl", aggregate="annotator")) == 12
    assert len(export_lines(store, "trl", aggregate="annotator", ties="keep")) == 14
    hh = export_lines(store, "hh")
    assert hh[0]["chosen"].startswith("\n\nHuman: r\n\nAssistant: ")
    rich = export_lines(store, "rich")
    assert len(rich) == 4 and {r["kind"] for r in rich} == {"pair", "ranking"}
    ranked = [r for r in rich if r["kind"] == "ranking"][0]
    assert list(ranked["ratings"].values()) == [{"helpfulness": 5}]
    assert tie_item != rank_item
