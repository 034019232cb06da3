"""Batches for language-model training, addressed by index so resume is exact.

`PackedBlocks` (pretraining): documents become `<bos> text <eos>`, are
concatenated and cut into fixed-length blocks; every token is a target.
`SupervisedPairs` (SFT): `<bos> prompt response <eos>`, padded per batch, with
prompt and padding labels set to -100 so only response tokens carry loss.

Training batch `i` draws examples from a permutation of the data seeded by
(seed, epoch), so batch `i` is the same whether or not the run was resumed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from alignloop.data.formatting import encode_prompt, encode_response
from alignloop.data.jsonl import iter_jsonl
from alignloop.errors import DataError

IGNORE_INDEX = -100


class _PermutationCache:
    """Example indices of training batch `index`: epochs reshuffled by (seed, epoch), one cached."""

    def __init__(self, n_examples: int, seed: int):
        self.n, self.seed, self._epoch, self._perm = n_examples, seed, None, None

    def indices(self, index: int, batch_size: int) -> list[int]:
        out = []
        for position in range(index * batch_size, (index + 1) * batch_size):
            epoch, offset = divmod(position, self.n)
            if epoch != self._epoch:
                generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                self._perm, self._epoch = torch.randperm(self.n, generator=generator), epoch
            out.append(int(self._perm[offset]))
        return out


def tokenize_documents(tokenizer, documents: list[str]) -> torch.Tensor:
    """One long 1-D tensor of `<bos> doc <eos>` for every document."""
    encoded = tokenizer(documents, add_special_tokens=False)["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    stream: list[int] = []
    for ids in encoded:
        if bos is not None:
            stream.append(bos)
        stream.extend(ids)
        if eos is not None:
            stream.append(eos)
    return torch.tensor(stream, dtype=torch.long)


def pack_blocks(stream: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Cut a token stream into `[n_blocks, seq_len]` (the tail shorter than a block is dropped)."""
    n_blocks = stream.numel() // seq_len
    return stream[: n_blocks * seq_len].view(n_blocks, seq_len)


class PackedBlocks:
    """Pretraining batches: packed fixed-length blocks; every token is a target."""

    def __init__(self, train_blocks: torch.Tensor, val_blocks: torch.Tensor, batch_size: int, seed: int):
        if train_blocks.shape[0] == 0:
            raise DataError("the corpus is too small for one training block; lower data.seq_len or add text")
        self.train, self.val, self.batch_size = train_blocks, val_blocks, batch_size
        self._order = _PermutationCache(train_blocks.shape[0], seed)

    @property
    def tokens(self) -> int:
        return self.train.numel()

    def _batch(self, blocks: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"input_ids": blocks, "labels": blocks, "attention_mask": torch.ones_like(blocks)}

    def train_batch(self, index: int) -> dict[str, torch.Tensor]:
        return self._batch(self.train[self._order.indices(index, self.batch_size)])

    def val_batches(self, limit: int) -> list[dict[str, torch.Tensor]]:
        source = self.val if self.val.shape[0] else self.train
        return [self._batch(source[i:i + self.batch_size])
                for i in range(0, min(source.shape[0], limit * self.batch_size), self.batch_size)]


@dataclass
class SupervisedExample:
    input_ids: list[int]
    labels: list[int]


def build_supervised_example(tokenizer, prompt: str, response: str, max_len: int,
                             ended: bool = True) -> SupervisedExample:
    """`<bos> prompt response <eos>` with labels only on the response (truncated from the left of the prompt).

    `ended=False` leaves the EOS out: the response was cut, and teaching an end there would teach the model to
    stop mid-sentence.
    """
    prompt_ids = encode_prompt(tokenizer, prompt)
    response_ids = encode_response(tokenizer, prompt, response, add_eos=ended)
    response_ids = response_ids[:max_len - 1]
    room = max_len - len(response_ids)
    if len(prompt_ids) > room:
        prompt_ids = prompt_ids[:1] + prompt_ids[len(prompt_ids) - room + 1:] if room > 1 else prompt_ids[:room]
    return SupervisedExample(prompt_ids + response_ids, [IGNORE_INDEX] * len(prompt_ids) + response_ids)


def collate_supervised(examples: list[SupervisedExample], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch; padding gets attention 0 and label -100."""
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        attention[row, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}


def render_chat(messages: list[dict]) -> list[tuple[str, str]]:
    """(prompt, response) pairs of a chat: each assistant turn answers everything before it."""
    if not isinstance(messages, list) or not messages:
        raise DataError("'messages' must be a non-empty list of {\"role\", \"content\"} objects")
    pairs, history = [], ""
    for message in messages:
        role = message.get("role") if isinstance(message, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(role, str) or not isinstance(content, str):
            raise DataError("each chat message must be an object with string 'role' and 'content' fields")
        if role == "assistant":
            pairs.append((history + "Assistant:", content))
        history += f"{role.capitalize()}: {content}\n"
    return pairs


def read_supervised_records(path: Path) -> list[tuple[str, str, bool]]:
    """(prompt, response, ended) from JSONL `{"prompt","response"}` or chat `{"messages": [...]}` (gzip or not).

    `ended` is the record's optional boolean `"ended"` (default true): false marks a response that was cut
    (best-of-n distillation writes it), taught without EOS. A line of any other shape is an error naming it;
    a record with an empty response is left out.
    """
    pairs = []
    for number, record in iter_jsonl(path, "SFT data"):
        if "messages" in record:
            try:
                pairs.extend((prompt, reply, True) for prompt, reply in render_chat(record["messages"]))
            except DataError as exc:
                raise DataError(f"{path} line {number}: {exc}") from None
        elif isinstance(record.get("prompt"), str) and isinstance(record.get("response"), str):
            ended = record.get("ended", True)
            if not isinstance(ended, bool):
                raise DataError(f"{path} line {number}: 'ended' must be true or false")
            if record["response"].strip():
                pairs.append((record["prompt"], record["response"], ended))
        else:
            raise DataError(f"{path} line {number}: expected {{\"prompt\", \"response\"}} strings or "
                            f"{{\"messages\": [...]}}")
    if not pairs:
        raise DataError(f"SFT data {path} holds no examples")
    return pairs


class SupervisedPairs:
    """SFT batches: dynamically padded prompt/response examples, loss on responses only."""

    def __init__(self, train: list[SupervisedExample], val: list[SupervisedExample], batch_size: int,
                 pad_token_id: int, seed: int):
        if not train:
            raise DataError("no SFT training examples")
        self.train, self.val, self.batch_size, self.pad = train, val, batch_size, pad_token_id
        self._order = _PermutationCache(len(train), seed)

    def train_batch(self, index: int) -> dict[str, torch.Tensor]:
        return collate_supervised([self.train[i] for i in self._order.indices(index, self.batch_size)], self.pad)

    def val_batches(self, limit: int) -> list[dict[str, torch.Tensor]]:
        source = self.val or self.train
        return [collate_supervised(source[i:i + self.batch_size], self.pad)
                for i in range(0, min(len(source), limit * self.batch_size), self.batch_size)]
