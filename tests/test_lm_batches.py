import json

import pytest
import torch

from alignloop.data.lm_batches import PackedBlocks, build_supervised_example, pack_blocks, read_supervised_records
from alignloop.errors import DataError
from alignloop.tokenizer import train_tokenizer


def test_pack_blocks_drops_the_tail():
    blocks = pack_blocks(torch.arange(10), 4)
    assert blocks.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_batches_are_a_function_of_the_index():
    blocks = torch.arange(40).view(10, 4)
    a = PackedBlocks(blocks, blocks[:0], batch_size=3, seed=1)
    b = PackedBlocks(blocks, blocks[:0], batch_size=3, seed=1)
    # b is asked out of order (as after a resume): same answers
    later = b.train_batch(5)["input_ids"]
    assert torch.equal(a.train_batch(0)["input_ids"], b.train_batch(0)["input_ids"])
    assert torch.equal(a.train_batch(5)["input_ids"], later)
    # one epoch covers every block exactly once (10 blocks, batches 0..2 cover 9, batch 3 crosses)
    seen = torch.cat([a.train_batch(i)["input_ids"][:, 0] for i in range(3)]).tolist()
    assert len(set(seen)) == 9


def test_supervised_example_masks_prompt_and_keeps_response():
    tokenizer = train_tokenizer(["Tom went home. Tom was happy. The end."] * 20, vocab_size=300)
    ex = build_supervised_example(tokenizer, "Tom went home.", "Tom was happy.", max_len=64)
    n_prompt = ex.labels.count(-100)
    assert ex.input_ids[0] == tokenizer.bos_token_id and ex.input_ids[-1] == tokenizer.eos_token_id
    assert ex.labels[n_prompt:] == ex.input_ids[n_prompt:]
    assert tokenizer.decode(ex.input_ids[n_prompt:], skip_special_tokens=True) == " Tom was happy."
    short = build_supervised_example(tokenizer, "Tom went home. " * 10, "Tom was happy.", max_len=12)
    assert len(short.input_ids) == 12 and short.input_ids[0] == tokenizer.bos_token_id


def test_a_cut_response_is_taught_without_an_end_token(tmp_path):
    tokenizer = train_tokenizer(["Tom went home. Tom was happy. The end."] * 20, vocab_size=300)
    whole = build_supervised_example(tokenizer, "Tom went home.", "Tom was happy.", max_len=64)
    cut = build_supervised_example(tokenizer, "Tom went home.", "Tom was happy.", max_len=64, ended=False)
    assert cut.input_ids == whole.input_ids[:-1] and cut.labels == whole.labels[:-1]
    assert tokenizer.eos_token_id not in cut.input_ids
    data = tmp_path / "sft.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in [{"prompt": "a", "response": "b"},
                                                       {"prompt": "c", "response": "d", "ended": False}]))
    assert read_supervised_records(data) == [("a", "b", True), ("c", "d", False)]
    data.write_text(json.dumps({"prompt": "a", "response": "b", "ended": "no"}))
    with pytest.raises(DataError, match="line 1: 'ended' must be true or false"):
        read_supervised_records(data)
