import json

import pytest

from alignloop.data.corpus import read_corpus, split_text_documents, train_val_split
from alignloop.errors import DataError


def test_text_blocks_and_story_markers(tmp_path):
    assert split_text_documents("a b\n\n\nc d\n  \ne") == ["a b", "c d", "e"]
    assert split_text_documents("one\ntwo\n<|endoftext|>\nthree\n\nfour\n<|endoftext|>\n") == ["one\ntwo", "three\n\nfour"]


def test_jsonl_folder_and_gzip(tmp_path):
    import gzip

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.jsonl").write_text(json.dumps({"body": "first"}) + "\n\n" + json.dumps({"body": "second"}) + "\n")
    (tmp_path / "d" / "b.txt.gz").write_bytes(gzip.compress(b"third\n\nfourth\n"))
    assert read_corpus(tmp_path / "d", text_field="body") == ["first", "second", "third", "fourth"]


def test_hf_dataset_on_disk(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"text": ["x y", "z"], "other": [1, 2]}).save_to_disk(str(tmp_path / "ds"))
    assert read_corpus(tmp_path / "ds") == ["x y", "z"]
    with pytest.raises(DataError, match="no column 'body'"):
        read_corpus(tmp_path / "ds", text_field="body")


def test_bad_inputs_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_corpus(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("\n\n  \n")
    with pytest.raises(DataError, match="empty"):
        read_corpus(tmp_path / "empty.txt")
    (tmp_path / "bin.txt").write_bytes(b"ok\xff\xfe")
    with pytest.raises(DataError, match="not UTF-8"):
        read_corpus(tmp_path / "bin.txt")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{broken\n')
    with pytest.raises(DataError, match=r"bad.jsonl line 2"):
        read_corpus(tmp_path / "bad.jsonl")


def test_split_is_deterministic_and_disjoint():
    docs = [f"doc {i}" for i in range(100)]
    train, val = train_val_split(docs, 0.1, seed=3)
    assert len(val) == 10 and len(train) == 90 and not set(train) & set(val)
    assert train_val_split(docs, 0.1, seed=3) == (train, val)
    assert train_val_split(docs, 0.1, seed=4)[1] != val
