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
    # A pair whose two transcripts are the same teaches nothing: left out (helpful-online line 199).
    kept = [r for r in records if r["chosen"] != r["rejected"]]
    assert _round_trip(store, records, "hh") == kept
    # The same pairs as TRL: prompt is the dialogue up to the last "Assistant:", chosen/rejected the replies.
    trl = export_lines(store, "trl")
    assert all(r["prompt"] + r["chosen"] == o["chosen"] for r, o in zip(trl, kept))


def test_hh_edge_cases_round_trip(store):
    records = [
        {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go away"},
        {"chosen": "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant:", "rejected":
            "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: d"},  # empty reply, no space
        {"chosen": "\n\nHuman: x\n\nAssistant: same", "rejected": "\n\nHuman: x\n\nAssistant: other", "id": 7},
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
    assert import_text(store, text) == {"format": "responses", "records": 2, "items": 2, "already": 0, "skipped": {}}
    assert import_text(store, text.splitlines()[0], kind="pair")["items"] == 3  # another --kind: new items
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


# ---- each importer checks the shape of the format it was told ------------------------------------

TRL = {"prompt": "Once upon a time", "chosen": " a kind cat helped.", "rejected": " a cat."}
TRL_IMPLICIT = {"chosen": "The sky is blue.", "rejected": "The sky is green."}
TRL_CHAT = {"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello!"}],
            "rejected": [{"role": "assistant", "content": "Go away."}]}
HH = {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go away"}
RESPONSES = {"prompt": "Tell a story.", "responses": ["Once a cat sat.", "A dog ran."]}
TRL_FOR = {"trl": TRL, "hh": HH, "responses": RESPONSES}
HH_AS_TRL = {"prompt": "\n\nHuman: hi\n\nAssistant:", "chosen": " hello", "rejected": " go away"}


@pytest.mark.parametrize(("record", "told", "matches"), [
    (TRL, "hh", "trl"), (TRL_IMPLICIT, "hh", "trl"), (TRL_CHAT, "hh", "trl"), (TRL, "responses", "trl"),
    (HH, "responses", "hh"), (RESPONSES, "trl", "responses"), (RESPONSES, "hh", "responses"),
    ({"prompt": "p"}, "hh", "responses"),
])
def test_a_record_of_another_format_is_refused_naming_the_one_it_matches(store, record, told, matches):
    with pytest.raises(DataError, match=f"in.txt line 2: this record .* is in the {matches} format, not {told}; "
                                        f"pass --format {matches}"):
        import_text(store, _jsonl([TRL_FOR[told], record]), told, name="in.txt")
    assert store.counts()["prompts"] == 0


def test_auto_reads_the_format_off_the_first_record_and_holds_every_line_to_it(store):
    for record, fmt in ((TRL, "trl"), (TRL_IMPLICIT, "trl"), (TRL_CHAT, "trl"), (HH, "hh"), (RESPONSES, "responses")):
        assert import_text(store, _jsonl([record]))["format"] == fmt
    with pytest.raises(DataError, match="line 2: .* is in the responses format, not trl"):
        import_text(store, _jsonl([{**TRL, "prompt": "other"}, RESPONSES]))
    # A TRL line without 'rejected' used to pass for a prompt to annotate.
    with pytest.raises(DataError, match="line 1: a TRL record needs both 'chosen' and 'rejected' .*no 'rejected'"):
        import_text(store, _jsonl([{"prompt": "p", "chosen": "a"}]))
    with pytest.raises(DataError, match="cannot tell the format"):
        import_text(store, _jsonl([{"text": "a corpus line"}]))


def test_an_hh_pair_is_also_a_trl_pair_with_an_implicit_prompt(store):
    import_text(store, _jsonl([HH]), "trl")
    [record] = export_lines(store, "trl")
    assert record == HH  # written back as it came
    assert store.judgment_rows()[0]["prompt"] == "\n\nHuman: hi\n\nAssistant: "


@pytest.mark.parametrize(("record", "fmt", "words"), [
    ({"prompt": " ", "chosen": "a", "rejected": "b"}, "trl", "the prompt is empty"),
    ({"chosen": "Yes.", "rejected": "No."}, "trl", "share none; add a 'prompt'"),
    ({"chosen": "\n\nHuman: hi\n\nAssistant: a", "rejected": "no transcript"}, "hh", "'rejected' is not an HH"),
    ({"chosen": "\n\nHuman: hi", "rejected": "\n\nHuman: ho"}, "hh", "share no"),
    ({"prompt": "p", "chosen": [{"role": "user", "content": 5}], "rejected": []}, "trl", "must all be strings"),
    ({"prompt": "", "responses": ["a"]}, "responses", "the prompt is empty"),
    ({"prompt": "p", "responses": ["a"], "response": "b"}, "responses", "not both"),
    ({"prompt": "p", "responses": "hello"}, "responses", "'responses' must be a list"),
    ({"prompt": "p", "responses": ["a", "b", "c"], "kind": "pair"}, "responses", "3 responses do not make a pair"),
    ({"prompt": "p", "responses": ["a", "b"], "kind": 5}, "responses", "'kind' must be one of"),
    ({"prompt": "p", "responses": ["a", "b"], "model": 5}, "responses", "'model' must be a string"),
    ({"prompt": "p", "responses": [{"text": "a", "sampling": "hot"}, "b"]}, "responses", "'sampling' must be"),
    ({"prompt": "p", "responses": ["a", "b"], "gold": {"choice": ["a"]}}, "responses", "'gold' must be"),
    ({"prompt": "p", "responses": ["a", "b", "c"], "gold": {"ranking": [0, 0, 1]}}, "responses", "positions"),
    ({"prompt": "p", "responses": ["a", "b"], "overlap": True}, "responses", "'overlap' .* not true"),
    ({"prompt": "p", "responses": ["a", "b"], "overlap": 1e30}, "responses", "'overlap' .* not 1e"),
    ({"prompt": "p", "responses": ["a", "b"], "overlap": 2 ** 70}, "responses", "'overlap' .* whole number"),
    ({"prompt": "p", "responses": ["a", "b"], "overlap": 0}, "responses", "'overlap'"),
    ({"prompt": "p", "responses": ["a", "b"], "overlap": "2"}, "responses", "'overlap'"),
])
def test_a_malformed_record_is_refused_by_line(store, record, fmt, words):
    with pytest.raises(DataError, match=f"in.jsonl line 2: .*{words}"):
        import_text(store, _jsonl([TRL_FOR[fmt], record]), fmt, name="in.jsonl")
    assert store.counts()["prompts"] == 0


# Text that is not standard JSON or that no store can hold; "{}" stands for the bad value.
BAD_VALUES = {
    "NaN": ('{"prompt": "p", "chosen": "a", "rejected": "b", "score": NaN}', "NaN is not valid JSON"),
    "Infinity": ('{"prompt": "p", "chosen": "a", "rejected": "b", "score": -Infinity}', "-Infinity is not valid"),
    "overlap NaN": ('{"prompt": "p", "responses": ["a", "b"], "overlap": NaN}', "NaN"),
    "lone surrogate": ('{"prompt": "p\\ud800", "chosen": "a", "rejected": "b"}', "lone UTF-16 surrogate"),
    "NUL": ('{"prompt": "p\\u0000", "chosen": "a", "rejected": "b"}', "NUL character"),
    "NUL in a kept key": ('{"prompt": "p", "chosen": "a", "rejected": "b", "x\\u0000": 1}', "NUL character"),
    "huge int": ('{"prompt": "p", "chosen": "a", "rejected": "b", "id": ' + "9" * 5000 + "}", "too long"),
    "deep": ('{"prompt": "p", "chosen": "a", "rejected": "b", "m": ' + "[" * 100000 + "]" * 100000 + "}",
             "nested deeper"),
    "truncated": ('{"prompt": "p", "chosen": "a", "rej', "not valid JSON"),
}


@pytest.mark.postgres
def test_values_no_store_can_hold_are_refused_on_sqlite_and_postgresql(store_url):
    with open_store(store_url) as store:
        for case, (line, words) in BAD_VALUES.items():
            with pytest.raises(DataError, match=f"line 2: .*{words}"):
                import_text(store, json.dumps(TRL) + "\n" + line + "\n", "auto")
            assert store.counts()["prompts"] == 0, case
        # What is valid is kept as it is on both: a big integer in a kept key, text past U+FFFF,
        # and U+2028 (a line separator to str.splitlines, not to JSON lines).
        odd = {"prompt": "p\u2028q", "chosen": "a \U0001F600", "rejected": "b", "id": 2 ** 70}
        assert import_text(store, json.dumps(odd, ensure_ascii=False) + "\n")["records"] == 1
        assert export_lines(store, "trl") == [odd]


def test_import_is_idempotent_by_content(store, tmp_path):
    records = [TRL, {**TRL, "prompt": "Another"}, TRL_CHAT]
    first = import_text(store, _jsonl(records))
    assert (first["records"], first["already"]) == (3, 0)
    before = store.counts()
    again = import_text(store, json.dumps(TRL_CHAT, indent=None, sort_keys=True) + "\n" + _jsonl(records[:2]))
    assert (again["records"], again["items"], again["already"]) == (0, 0, 3)  # key order does not matter
    assert store.counts() == before
    more = import_text(store, _jsonl(records + [HH_AS_TRL, TRL, {**TRL, "chosen": "x", "rejected": "x"}]))
    assert (more["records"], more["already"]) == (1, 3)
    assert more["skipped"] == {"repeated in the file": [5], "chosen identical to rejected": [6]}
    assert len(store.judgment_rows()) == 4  # the labels are not duplicated
    # Responses to annotate: the same again adds no items; as another --kind it is other items.
    assert import_text(store, _jsonl([RESPONSES]))["items"] == 1
    assert import_text(store, _jsonl([RESPONSES]))["already"] == 1
    assert import_text(store, _jsonl([RESPONSES]), kind="ranking")["items"] == 1


def test_import_file_reads_gzip_and_checks_before_opening_a_store(tmp_path):
    from alignloop.feedback.formats import describe_import, import_file, read_import_file

    path = tmp_path / "prefs.jsonl.gz"
    path.write_bytes(gzip.compress(_jsonl([TRL, HH_AS_TRL]).encode()))
    with open_store(tmp_path / "feedback.db") as store:
        summary = import_file(store, path)
        assert (summary["format"], summary["records"]) == ("trl", 2)
        again = import_file(store, path)
    assert describe_import(again, "prefs.jsonl.gz") == ("nothing new imported from prefs.jsonl.gz; 2 trl records "
                                                        "were already in the store (imported before)")
    damaged = tmp_path / "damaged.jsonl.gz"
    damaged.write_bytes(path.read_bytes()[:-9])
    with pytest.raises(DataError, match="damaged.jsonl.gz is a damaged gzip file"):
        read_import_file(damaged)
    named = tmp_path / "plain.jsonl.gz"
    named.write_text(_jsonl([TRL]))
    with pytest.raises(DataError, match="ends in .gz but is not gzip-compressed"):
        read_import_file(named)
