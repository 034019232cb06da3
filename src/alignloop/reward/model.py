"""The reward model: a pretrained backbone with a scalar head, saved in Hugging Face format.

On disk a reward model is an `AutoModelForSequenceClassification` checkpoint
(config.json, model.safetensors, tokenizer files) plus `reward_stats.json`,
the mean and standard deviation of its rewards on a reference set, which PPO
uses to normalise rewards. A reward model trained by TRL's RewardTrainer is
the same kind of checkpoint, so it loads here too.

How a sequence gets one number:

- decoder backbones (ours, Llama, GPT-2, ...) read `<bos> prompt response <eos>`
  and are scored at the last non-pad token (InstructGPT, Ouyang et al. 2022,
  section 3.5). The position is found from the attention mask, so left and
  right padding give the same reward, and a tokenizer whose pad token is its
  EOS token does not confuse it.
- encoder backbones (BERT, MiniLM, ...) read the pair `[CLS] prompt [SEP]
  response [SEP]` and pool their output: the mean over real tokens (how
  sentence-transformers' MiniLM was trained) for models we build, or the
  model's own head (e.g. BERT's [CLS] pooler) for checkpoints made elsewhere,
  or (pooling "response") the mean over the response's tokens alone.

With `num_labels = N > 1` the checkpoint is an ensemble of N heads on one
backbone: the reward is their mean and their spread measures disagreement
(see `alignloop.reward.ensemble`).

Trained with ODIN (`loss.length.odin`), the model also has a length head while
it trains: the last output, counted by `alignloop_length_heads` in its config.
Training scores with reward + length head; everything else (`heads`,
`forward`, `score_texts`, hence PPO, best-of-n and `reward eval`) reads the
reward heads alone, and `save` writes them alone, so a finished checkpoint is
an ordinary one whose config records how it was trained
(`alignloop_length_debias`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn

from alignloop.errors import CheckpointError, ConfigError
from alignloop.models.causal_lm import check_checkpoint_dir
from alignloop.models.memory import checkpointed_forward

STATS_FILE = "reward_stats.json"
# Fewer responses than this make the normalisation's mean and std noisy enough to change what a KL coefficient means.
MIN_STATS_RESPONSES = 200
# Extra keys we keep in the checkpoint's config.json (HF configs carry unknown attributes through save/load).
POOLING_KEY = "alignloop_pooling"
MAX_LENGTH_KEY = "alignloop_max_length"
DEFAULT_MAX_LENGTH = 512
LENGTH_HEADS_KEY = "alignloop_length_heads"  # trailing outputs that are length heads (training checkpoints only)
DEBIAS_KEY = "alignloop_length_debias"  # how training kept length out of the reward (`loss.length`), for the record


@dataclass
class RewardStats:
    """Mean and standard deviation of rewards on a reference set (for normalisation in PPO).

    `mean`/`std` are those of the model's reward (the mean of its heads). With several heads, `head_mean` and
    `head_std` are each head's own (heads of a Bradley-Terry model have arbitrary offsets, so each is put on
    its own scale before they are compared or combined); `spread_q95` is the 95th percentile, over the
    validation responses, of the spread (std) of the normalised heads, and `ensemble_spread_q95` the same over
    every estimate of the round's ensemble (`ensemble_estimates` of them: every head of every member).
    Checkpoints written before these existed have the shared figures alone, which then stand for every head.
    """

    mean: float = 0.0
    std: float = 1.0
    n: int = 0
    head_mean: Optional[list[float]] = None
    head_std: Optional[list[float]] = None
    spread_q95: Optional[float] = None
    ensemble_spread_q95: Optional[float] = None
    ensemble_estimates: Optional[int] = None

    def to_json(self) -> dict:
        out = {"mean": self.mean, "std": self.std, "n": self.n}
        for name in ("head_mean", "head_std", "spread_q95", "ensemble_spread_q95", "ensemble_estimates"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out

    def head_stats(self, heads: int) -> tuple[list[float], list[float]]:
        """(means, stds) of each of `heads` heads: their own when recorded for that many, else the shared ones."""
        if self.head_mean is not None and self.head_std is not None and len(self.head_mean) == heads:
            return list(self.head_mean), list(self.head_std)
        return [self.mean] * heads, [self.std] * heads

    @classmethod
    def from_rewards(cls, rewards: torch.Tensor) -> "RewardStats":
        mean, std, n = _mean_std(rewards)
        return cls(mean, std, n)

    @classmethod
    def from_heads(cls, heads: torch.Tensor) -> "RewardStats":
        """Statistics of rewards [N, heads]: the shared ones of their mean, and (with several heads) each head's."""
        stats = cls.from_rewards(heads.mean(dim=1)) if heads.numel() else cls()
        if heads.dim() == 2 and heads.shape[1] > 1:
            per_head = [_mean_std(heads[:, h]) for h in range(heads.shape[1])]
            stats.head_mean = [m for m, _, _ in per_head]
            stats.head_std = [s for _, s, _ in per_head]
        return stats


def _mean_std(rewards: torch.Tensor) -> tuple[float, float, int]:
    """(mean, std, count) of `rewards`; std 1 when there are fewer than two or they are all equal."""
    values = rewards.detach().double().flatten()
    if values.numel() < 2:
        return (float(values.mean()) if values.numel() else 0.0), 1.0, int(values.numel())
    std = float(values.std())
    return float(values.mean()), std if std > 1e-8 else 1.0, int(values.numel())


def _optional_floats(data: dict, key: str) -> Optional[list[float]]:
    value = data.get(key)
    if value is None:
        return None
    values = [float(v) for v in value]
    if not all(math.isfinite(v) for v in values):
        raise ValueError(key)
    return values


def read_stats(path: Path) -> RewardStats:
    """The `reward_stats.json` of a checkpoint; mean 0 and std 1 when there is none."""
    file = Path(path) / STATS_FILE
    if not file.exists():
        return RewardStats()
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        stats = RewardStats(float(data["mean"]), float(data["std"]), int(data.get("n", 0)),
                            head_mean=_optional_floats(data, "head_mean"), head_std=_optional_floats(data, "head_std"))
        for key in ("spread_q95", "ensemble_spread_q95"):
            if data.get(key) is not None:
                setattr(stats, key, float(data[key]))
        if data.get("ensemble_estimates") is not None:
            stats.ensemble_estimates = int(data["ensemble_estimates"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError, AttributeError):
        raise CheckpointError(f"{file} is corrupt: expected {{\"mean\", \"std\", \"n\"}}") from None
    stds = [stats.std] + (stats.head_std or [])
    if not (math.isfinite(stats.mean) and all(math.isfinite(s) and s > 0 for s in stds)) \
            or len(stats.head_mean or []) != len(stats.head_std or []):
        raise CheckpointError(f"{file} has an invalid mean or std ({stats.mean}, {stats.std})")
    return stats


def stats_warning(path: Path | str, stats: RewardStats) -> Optional[str]:
    """A warning when the reward statistics of the model in `path` are too thin to normalise by, else None."""
    file = Path(path) / STATS_FILE
    if not file.exists():
        return f"{path} has no {STATS_FILE}: the scores are not normalised (mean 0, std 1 assumed)"
    if stats.n < MIN_STATS_RESPONSES:
        return (f"{file} comes from {stats.n} responses (fewer than {MIN_STATS_RESPONSES}): the mean and std that "
                f"normalise the rewards are rough estimates")
    return None


def config_is_decoder(config) -> bool:
    """Whether a transformers config describes a decoder (causal LM) rather than a bidirectional encoder.

    Encoders are the architectures that have a masked-LM head (BERT, RoBERTa, DistilBERT, MiniLM...).
    """
    explicit = getattr(config, "alignloop_is_decoder", None)
    if explicit is not None:
        return bool(explicit)
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return config.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


# The prompt's last tokens a reply always keeps (at most a quarter of max_length): what it answers.
PROMPT_TAIL = 8
# Which part of a reply too long to fit on its own is read (`keep_part`); chosen by the measurement in
# BENCHMARKS.md ("Length"), and recorded in the checkpoint.
KEEP_RESPONSE_KEY = "alignloop_keep_response"
KEEP_RESPONSE = ("start", "end", "both")
DEFAULT_KEEP_RESPONSE = "start"


def prompt_reserve(prompt_tokens: int, max_length: int) -> int:
    """How many of the prompt's tokens are kept however long the reply: `PROMPT_TAIL`, at most a quarter of
    `max_length`, at least one (a decoder's BOS), never more than the prompt has."""
    return min(prompt_tokens, max(1, min(PROMPT_TAIL, max_length // 4)))


def keep_part(ids: Sequence[int], n: int, keep: str = DEFAULT_KEEP_RESPONSE, last: int = 0) -> list[int]:
    """`ids` cut to `n` tokens: its start, its end, or both halves (the start's half rounded up).

    The final `last` tokens (a decoder's EOS) are kept whatever `keep` says, inside the `n`.
    """
    ids = list(ids)
    if len(ids) <= n:
        return ids
    if keep not in KEEP_RESPONSE:
        raise ConfigError(f"keep_response must be one of {', '.join(KEEP_RESPONSE)}, not {keep!r}")
    last = min(last, n)
    body, tail = ids[:len(ids) - last], ids[len(ids) - last:]
    room = n - last
    if keep == "start":
        body = body[:room]
    elif keep == "end":
        body = body[len(body) - room:] if room else []
    else:
        head = (room + 1) // 2
        body = body[:head] + (body[len(body) - (room - head):] if room > head else [])
    return body + tail


def cut_prompt_left(prompt_ids: Sequence[int], room: int, start_token: Optional[int]) -> list[int]:
    """The prompt's last `room` tokens; a leading `start_token` (a decoder's BOS) stays first when there is room."""
    prompt_ids = list(prompt_ids)
    if len(prompt_ids) <= room:
        return prompt_ids
    head = prompt_ids[:1] if prompt_ids and start_token is not None and prompt_ids[0] == start_token else []
    if room <= len(head):
        return head[:max(room, 0)]
    return head + prompt_ids[len(prompt_ids) - (room - len(head)):]


def encode_decoder_pair(tokenizer, prompt: str, response: str, max_length: int,
                        keep: str = DEFAULT_KEEP_RESPONSE) -> dict[str, list[int]]:
    """`<bos> prompt response <eos>` as the policy sees it (`alignloop.data.formatting`), cut to fit.

    Over-long inputs lose the prompt's oldest tokens (after BOS) first: the reward is read at the end and the
    latest turns matter most. The reply itself is cut only when it alone (with the prompt's last
    `PROMPT_TAIL` tokens) does not fit; it then keeps `keep` and its EOS, so the scored position is still
    "the reply is over".
    """
    prompt_ids, (response_ids,) = encode_decoder_group(tokenizer, prompt, [response], max_length, keep)
    return {"input_ids": prompt_ids + response_ids}


def encode_decoder_group(tokenizer, prompt: str, responses: Sequence[str], max_length: int,
                         keep: str = DEFAULT_KEEP_RESPONSE) -> tuple[list[int], list[list[int]]]:
    """(prompt ids, [response ids]) for reading one prompt once with all its responses (`pack_groups`).

    Cut as `encode_decoder_pair` cuts, so that prompt + the longest response fits `max_length`.
    """
    from alignloop.data.formatting import encode_prompt, encode_response

    prompt_ids = encode_prompt(tokenizer, prompt)
    room = max_length - prompt_reserve(len(prompt_ids), max_length)
    response_ids = [keep_part(encode_response(tokenizer, prompt, r), room, keep, last=1) for r in responses]
    prompt_ids = cut_prompt_left(prompt_ids, max_length - max(len(r) for r in response_ids), tokenizer.bos_token_id)
    return prompt_ids, response_ids


def pack_groups(groups: Sequence[tuple[list[int], list[list[int]]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """One row per prompt: `prompt r_1 r_2 ... r_K`, each response seeing only the prompt and itself.

    A decoder then reads every prompt once instead of once per response (InstructGPT's "each
    response once per prompt", taken one step further for the shared prompt). Each response's
    positions continue from the prompt's end, so its hidden states equal those of `prompt r_i`
    read alone; the reward is read at each response's last token (`score_row`, `score_col`).
    The attention mask is 4D (batch, 1, query, key); padding rows attend to themselves only.
    """
    width = max(len(p) + sum(len(r) for r in rs) for p, rs in groups)
    n = len(groups)
    ids = torch.full((n, width), pad_token_id, dtype=torch.long)
    positions = torch.zeros((n, width), dtype=torch.long)
    allowed = torch.zeros((n, width, width), dtype=torch.bool)
    causal = torch.tril(torch.ones((width, width), dtype=torch.bool))
    rows, cols = [], []
    for row, (prompt, responses) in enumerate(groups):
        p = len(prompt)
        ids[row, :p] = torch.tensor(prompt, dtype=torch.long)
        positions[row, :p] = torch.arange(p)
        allowed[row, :p, :p] = causal[:p, :p]
        start = p
        for response in responses:
            end = start + len(response)
            ids[row, start:end] = torch.tensor(response, dtype=torch.long)
            positions[row, start:end] = torch.arange(p, p + len(response))
            allowed[row, start:end, :p] = True
            allowed[row, start:end, start:end] = causal[: end - start, : end - start]
            rows.append(row)
            cols.append(end - 1)
            start = end
        pad = torch.arange(start, width)
        allowed[row, pad, pad] = True
    return {"input_ids": ids, "position_ids": positions, "packed_mask": allowed.unsqueeze(1),
            "score_row": torch.tensor(rows, dtype=torch.long), "score_col": torch.tensor(cols, dtype=torch.long)}


def pair_template(tokenizer) -> tuple[tuple[list[int], list[int], list[int]], tuple[int, int, int]]:
    """Where an encoder's tokenizer puts its special tokens around a pair: ((before the first text, between
    the two, after the second), (the segment id of the first text, of the second, of what follows the second)).

    Read from the tokenizer itself on a probe pair (BERT: `[CLS] a [SEP] b [SEP]`, RoBERTa: `<s> a </s></s> b
    </s>`), so a pair can be put together from ids cut by hand, exactly as the tokenizer would have.
    """
    cached = getattr(tokenizer, "_alignloop_pair_template", None)
    if cached is not None:
        return cached
    a = tokenizer("a", add_special_tokens=False)["input_ids"]
    b = tokenizer("b", add_special_tokens=False)["input_ids"]
    pair = tokenizer("a", "b")
    ids, types = list(pair["input_ids"]), list(pair.get("token_type_ids") or [0] * len(pair["input_ids"]))
    first = next((i for i in range(len(ids)) if ids[i:i + len(a)] == a), None)
    second = None if first is None else next(
        (i for i in range(first + len(a), len(ids)) if ids[i:i + len(b)] == b), None)
    if second is None:
        raise CheckpointError("the reward model's tokenizer does not encode a pair of texts as text, specials, text")
    template = ((ids[:first], ids[first + len(a):second], ids[second + len(b):]),
                (types[first], types[second], types[-1] if second + len(b) < len(ids) else types[second]))
    try:
        tokenizer._alignloop_pair_template = template
    except AttributeError:  # a tokenizer that takes no new attributes is read again next time
        pass
    return template


def encode_encoder_pair(tokenizer, prompt: str, response: str, max_length: int,
                        keep: str = DEFAULT_KEEP_RESPONSE) -> dict[str, list[int]]:
    """The pair (prompt, response) with the tokenizer's special tokens, cut to fit.

    The prompt loses its oldest tokens first (in a dialogue the latest turns matter most; the leading
    [CLS] stays, being a special token). The reply is cut only when it alone (with the prompt's last
    `PROMPT_TAIL` tokens) does not fit, and then keeps `keep`.
    """
    (before, between, after), (type_a, type_b, type_after) = pair_template(tokenizer)
    budget = max_length - len(before) - len(between) - len(after)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    response_ids = keep_part(tokenizer(response, add_special_tokens=False)["input_ids"],
                             max(budget - prompt_reserve(len(prompt_ids), max_length), 1), keep)
    prompt_ids = cut_prompt_left(prompt_ids, budget - len(response_ids), None)
    ids = before + prompt_ids + between + response_ids + after
    types = [type_a] * (len(before) + len(prompt_ids) + len(between)) + [type_b] * len(response_ids) \
        + [type_after] * len(after)
    out = {"input_ids": ids}
    if "token_type_ids" in tokenizer.model_input_names:
        out["token_type_ids"] = types
    return out


def pad_batch(examples: Sequence[dict[str, list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad tokenized examples to the longest one (dynamic padding)."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    types = torch.zeros((len(examples), width), dtype=torch.long) if "token_type_ids" in examples[0] else None
    for row, example in enumerate(examples):
        n = len(example["input_ids"])
        ids[row, :n] = torch.tensor(example["input_ids"], dtype=torch.long)
        mask[row, :n] = 1
        if types is not None:
            types[row, :n] = torch.tensor(example["token_type_ids"], dtype=torch.long)
    batch = {"input_ids": ids, "attention_mask": mask}
    if types is not None:
        batch["token_type_ids"] = types
    return batch


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row, for left or right padding alike."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions * attention_mask.long()).argmax(dim=-1)


def masked_mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the hidden states over real tokens (sentence-transformers' pooling)."""
    weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def response_mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor,
                       token_type_ids: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean of the hidden states over the response's tokens: real tokens of segment 1 (`token_type_ids`).

    An encoder reads `[CLS] prompt [SEP] response [SEP]`; the two responses of a pair share the prompt,
    and a mean that includes it dilutes each response by its share of the tokens, unequally when their
    lengths differ. Rows with no segment-1 token (or no `token_type_ids`) fall back to every real token.
    """
    if token_type_ids is None:
        return masked_mean_pool(hidden, attention_mask)
    response = attention_mask.long() * (token_type_ids == 1).long()
    empty = response.sum(dim=1, keepdim=True) == 0
    return masked_mean_pool(hidden, torch.where(empty, attention_mask.long(), response))


class RewardModel(nn.Module):
    """A sequence-classification checkpoint read as a scalar reward r(prompt, response)."""

    def __init__(self, model, tokenizer, stats: Optional[RewardStats] = None):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.stats = stats or RewardStats()
        config = model.config
        self.is_decoder = config_is_decoder(config)
        self.max_length = int(getattr(config, MAX_LENGTH_KEY, None) or DEFAULT_MAX_LENGTH)
        limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        if limit:
            self.max_length = min(self.max_length, int(limit))
        self.pooling = "last" if self.is_decoder else (getattr(config, POOLING_KEY, None) or "native")
        self.length_heads = int(getattr(config, LENGTH_HEADS_KEY, None) or 0)
        # Checkpoints from before the setting (and from elsewhere) kept a long reply's start.
        self.keep_response = getattr(config, KEEP_RESPONSE_KEY, None) or "start"
        if tokenizer.pad_token_id is None:
            if tokenizer.eos_token is None:
                raise CheckpointError("the reward model's tokenizer has neither a pad nor an eos token")
            tokenizer.pad_token = tokenizer.eos_token
        if config.pad_token_id is None:
            config.pad_token_id = tokenizer.pad_token_id

    @property
    def _hf_model(self):
        """The transformers model (inside a LoRA wrapper, when there is one)."""
        from alignloop.generation.logprobs import unwrap_model

        return unwrap_model(self.model)

    @property
    def _backbone(self):
        inner = self._hf_model
        return getattr(inner, inner.base_model_prefix)

    @property
    def _head(self) -> Optional[nn.Module]:
        """The scalar head, when it is a plain linear layer we can apply to pooled states (else None:
        the model's own forward is used). Under LoRA it is peft's trainable copy of that layer."""
        head = getattr(self._hf_model, "score" if self.is_decoder else "classifier", None)
        return head if isinstance(getattr(head, "original_module", head), nn.Linear) else None

    @property
    def num_heads(self) -> int:
        """Reward heads (the length head of ODIN training not counted)."""
        return int(self.model.config.num_labels) - self.length_heads

    @property
    def _head_name(self) -> str:
        return "score" if self.is_decoder else "classifier"

    def set_length_heads(self, wanted: int) -> None:
        """Give the model `wanted` (0 or 1) length heads after its reward heads: a fresh output row of the head,
        initialised as transformers initialises heads, or the reward rows alone. Before the optimizer is made."""
        if wanted == self.length_heads:
            return
        head = getattr(self._hf_model, self._head_name, None)
        if type(head) is not nn.Linear:
            raise ConfigError("loss.length.odin needs a reward head that is one linear layer read on pooled "
                              "states, on a model without LoRA adapters (model.lora); this model's is "
                              f"{type(head).__name__}")
        rows = self.num_heads + wanted
        grown = nn.Linear(head.in_features, rows, bias=head.bias is not None, device=head.weight.device,
                          dtype=head.weight.dtype)
        with torch.no_grad():
            keep = min(rows, head.out_features)
            grown.weight[:keep].copy_(head.weight[:keep])
            std = float(getattr(self.model.config, "initializer_range", 0.02) or 0.02)
            grown.weight[keep:].normal_(0.0, std)
            if head.bias is not None:
                grown.bias[:keep].copy_(head.bias[:keep])
                grown.bias[keep:].zero_()
        setattr(self._hf_model, self._head_name, grown)
        self.length_heads = wanted
        self._label_config(rows, wanted)

    def _label_config(self, rows: int, length_heads: int) -> None:
        config = self.model.config
        config.id2label = {i: (f"reward_{i}" if i < rows - length_heads else "length") for i in range(rows)}
        config.label2id = {v: k for k, v in config.id2label.items()}
        config.num_labels = rows
        if length_heads:
            setattr(config, LENGTH_HEADS_KEY, length_heads)
        elif hasattr(config, LENGTH_HEADS_KEY):
            delattr(config, LENGTH_HEADS_KEY)

    def head_orthogonality(self) -> torch.Tensor:
        """ODIN's orthogonality term of the head's reward rows against its length rows (`losses`)."""
        from alignloop.reward.losses import head_orthogonality_loss

        weight = self._head.weight
        return head_orthogonality_loss(weight[:self.num_heads], weight[self.num_heads:])

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def heads(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
              token_type_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The reward of every head, shape [B, num_heads] (a length head left out)."""
        return self.outputs(input_ids, attention_mask, token_type_ids)[:, :self.num_heads]

    def outputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Every output of the head, length heads included (what training reads), shape [B, num_labels]."""
        # Training keeps eval mode (dropout off) unless asked: checkpointing, when on, must still apply.
        with checkpointed_forward(self.model):
            return self._heads(input_ids, attention_mask, token_type_ids)

    def _heads(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               token_type_ids: Optional[torch.Tensor]) -> torch.Tensor:
        if self._head is None or self.pooling == "native":
            kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
            if self.is_decoder:
                # HF finds the scored position from pad ids; position ids from the mask make padding harmless.
                kwargs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
                kwargs["use_cache"] = False  # eval mode would otherwise keep every layer's keys and values
            return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits.float()
        backbone = self._backbone
        if self.is_decoder:
            positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
            hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                              use_cache=False)[0]
            rows = torch.arange(hidden.shape[0], device=hidden.device)
            pooled = hidden[rows, last_token_index(attention_mask)]
        else:
            kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
            hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, **kwargs)[0]
            if self.pooling == "response":
                pooled = response_mean_pool(hidden, attention_mask, token_type_ids)
            else:
                pooled = masked_mean_pool(hidden, attention_mask)
        return self._head(pooled).float()

    @property
    def attention(self) -> str:
        """The backbone's attention implementation (transformers' name: sdpa, eager, flash_attention_2...)."""
        return str(getattr(self._hf_model.config, "_attn_implementation", None) or "eager")

    @property
    def can_pack(self) -> bool:
        """Whether `packed_heads` applies: a decoder whose head we call ourselves, with SDPA attention.

        `pack_groups`' 4-D boolean mask means "may attend" to SDPA only: eager attention adds it to the
        scores as 0/1 (every response would see the others, rewards off by ~1e-2) and flash attention
        ignores it. Other implementations read each response with its prompt instead.
        """
        return self.is_decoder and self._head is not None and self.attention == "sdpa"

    def packed_heads(self, input_ids: torch.Tensor, position_ids: torch.Tensor, packed_mask: torch.Tensor,
                     score_row: torch.Tensor, score_col: torch.Tensor) -> torch.Tensor:
        """Rewards [responses, heads] of a `pack_groups` batch, in the order the responses were packed."""
        return self.packed_outputs(input_ids, position_ids, packed_mask, score_row, score_col)[:, :self.num_heads]

    def packed_outputs(self, input_ids: torch.Tensor, position_ids: torch.Tensor, packed_mask: torch.Tensor,
                       score_row: torch.Tensor, score_col: torch.Tensor) -> torch.Tensor:
        """`packed_heads` with length heads included (what training reads)."""
        if not self.can_pack:
            raise ConfigError(f"packed reading needs a decoder with SDPA attention (this one: "
                              f"{'decoder' if self.is_decoder else 'encoder'}, {self.attention}); "
                              f"set train.share_prompt=false")
        with checkpointed_forward(self.model):
            hidden = self._backbone(input_ids=input_ids, attention_mask=packed_mask, position_ids=position_ids,
                                    use_cache=False)[0]
        return self._head(hidden[score_row, score_col]).float()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """One reward per sequence, shape [B] (the mean of the heads for an ensemble)."""
        return self.heads(input_ids, attention_mask, token_type_ids).mean(dim=-1)

    def encode(self, prompt: str, response: str) -> dict[str, list[int]]:
        """Token ids of one (prompt, response), the way this model reads it."""
        if self.is_decoder:
            return encode_decoder_pair(self.tokenizer, prompt, response, self.max_length, self.keep_response)
        return encode_encoder_pair(self.tokenizer, prompt, response, self.max_length, self.keep_response)

    def encode_group(self, prompt: str, responses: list[str]) -> tuple[list[int], list[list[int]]]:
        """(prompt ids, [response ids]) for packed reading (decoders only)."""
        return encode_decoder_group(self.tokenizer, prompt, responses, self.max_length, self.keep_response)

    def collate(self, examples: Sequence[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        return pad_batch(examples, self.tokenizer.pad_token_id)

    @torch.no_grad()
    def score_texts(self, prompts: list[str], responses: list[str], batch_size: int = 32,
                    all_heads: bool = False) -> torch.Tensor:
        """Rewards of `responses` to `prompts`, shape [B] (or [B, heads] with `all_heads`), on the CPU."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        was_training = self.training
        self.eval()
        encoded = [self.encode(p, r) for p, r in zip(prompts, responses)]
        # Similar lengths together: less padding; results go back to the caller's order.
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]["input_ids"]))
        out = torch.zeros((len(encoded), self.num_heads))
        device = self.device
        for start in range(0, len(order), batch_size):
            chosen = order[start:start + batch_size]
            batch = {k: v.to(device) for k, v in self.collate([encoded[i] for i in chosen]).items()}
            out[chosen] = self.heads(**batch).float().cpu()
        self.train(was_training)
        return out if all_heads else out.mean(dim=-1)

    def normalise(self, rewards: torch.Tensor) -> torch.Tensor:
        """(r - mean) / std with the reference-set statistics of `reward_stats.json`."""
        return (rewards - self.stats.mean) / self.stats.std

    def head_stats(self) -> tuple[list[float], list[float]]:
        """(means, stds) that put each head on its own scale (`RewardStats.head_stats`)."""
        return self.stats.head_stats(self.num_heads)

    def save(self, directory: Path | str, state_dict: Optional[dict] = None) -> None:
        """Write the checkpoint (HF format), tokenizer and `reward_stats.json` into `directory`.

        With LoRA the checkpoint is the merged model, with the adapter (and head) in `adapter/`.
        `state_dict`: the gathered weights when FSDP shards them (`distributed.full_state_dict`).
        """
        from alignloop import atomic
        from alignloop.train.checkpoints import save_pretrained

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.model.config.architectures = [type(self._hf_model).__name__]
        rows, length_heads = int(self.model.config.num_labels), self.length_heads
        if length_heads:  # the config of the reward heads alone; the weights follow below
            self._label_config(self.num_heads, 0)
        try:
            save_pretrained(directory, self.model, state_dict=state_dict)
        finally:
            if length_heads:
                self._label_config(rows, length_heads)
        if length_heads:
            drop_head_rows(directory, self._head_name, self.num_heads)
        self.tokenizer.save_pretrained(str(directory))
        atomic.write_json(directory / STATS_FILE, self.stats.to_json())


def drop_head_rows(directory: Path, head: str, keep: int) -> None:
    """Keep the first `keep` outputs of the head `head` in the safetensors files of `directory` (ODIN's
    length head goes; the reward heads stay, bit for bit)."""
    from safetensors.torch import load_file, save_file

    for file in sorted(Path(directory).glob("*.safetensors")):
        tensors = load_file(str(file))
        names = [n for n in (f"{head}.weight", f"{head}.bias") if n in tensors and tensors[n].shape[0] > keep]
        if names:
            for name in names:
                tensors[name] = tensors[name][:keep].contiguous()
            save_file(tensors, str(file), metadata={"format": "pt"})


def _quiet_transformers():
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


def _load_tokenizer(path: Path):
    from alignloop.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(path)
    # load_tokenizer pads on the left for sampling; our batches are padded by `pad_batch` anyway.
    tokenizer.padding_side = "right"
    return tokenizer


def load_reward_model(path: Path | str, device: Optional[torch.device | str] = None) -> RewardModel:
    """Open a reward-model checkpoint (ours or TRL's); a one-line `CheckpointError` if it cannot be read.

    `device`: where to put it (default: CUDA when available, else CPU). The model is in eval mode.
    """
    from alignloop.train.device import pick_device

    path = check_checkpoint_dir(path)
    transformers = _quiet_transformers()
    try:
        model = transformers.AutoModelForSequenceClassification.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # safetensors, json and transformers errors all mean "not a reward model here"
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"reward model {path} is corrupt or unreadable: {first[:200]}") from None
    reward = RewardModel(model, _load_tokenizer(path), read_stats(path))
    reward.to(pick_device("auto") if device is None else torch.device(device))
    return reward.eval()


def build_reward_model(backbone: Path | str, num_heads: int = 1, max_length: int = DEFAULT_MAX_LENGTH,
                       pooling: str = "mean", tokenizer_path: Path | str | None = None) -> RewardModel:
    """A reward model on a local HF checkpoint: a causal LM (ours), an encoder (MiniLM) or a reward model.

    A fresh scalar head (or `num_heads` heads) is put on the backbone; a checkpoint that already is a
    reward model with as many heads keeps its head (warm start across rounds). `pooling` applies to
    encoders: "mean" over tokens, "native" (the model's own pooler, e.g. BERT's [CLS]), or "response"
    (mean over the response's tokens; the tokenizer must mark them with token_type_ids).
    """
    path = check_checkpoint_dir(backbone)
    transformers = _quiet_transformers()
    try:
        config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
        previous_heads = int(getattr(config, "num_labels", 0)) if getattr(config, "architectures", None) and any(
            a.endswith("ForSequenceClassification") for a in config.architectures) else 0
        # A training checkpoint of ODIN keeps its length head (resuming); anything else gets `num_heads` heads.
        length_heads = int(getattr(config, LENGTH_HEADS_KEY, None) or 0) if previous_heads else 0
        if previous_heads != num_heads + length_heads:
            length_heads = 0
        rows = num_heads + length_heads
        config.num_labels = rows
        config.problem_type = "regression"
        config.id2label = {i: (f"reward_{i}" if i < num_heads else "length") for i in range(rows)}
        config.label2id = {v: k for k, v in config.id2label.items()}
        if not length_heads and hasattr(config, LENGTH_HEADS_KEY):
            delattr(config, LENGTH_HEADS_KEY)
        setattr(config, MAX_LENGTH_KEY, max_length)
        setattr(config, KEEP_RESPONSE_KEY, DEFAULT_KEEP_RESPONSE)
        if not config_is_decoder(config):
            setattr(config, POOLING_KEY, getattr(config, POOLING_KEY, None) if previous_heads else pooling)
        model = transformers.AutoModelForSequenceClassification.from_pretrained(
            str(path), config=config, local_files_only=True,
            ignore_mismatched_sizes=bool(previous_heads and previous_heads != rows))
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"cannot build a reward model on {path}: {first[:200]}") from None
    tokenizer = _load_tokenizer(Path(tokenizer_path) if tokenizer_path else path)
    if pooling == "response" and config_is_decoder(config):
        raise ConfigError("model.pooling=response is for encoders; a decoder backbone is scored at its last token")
    if getattr(config, POOLING_KEY, None) == "response" and 1 not in tokenizer("a", "b").get("token_type_ids", []):
        raise ConfigError(f"model.pooling=response needs a tokenizer that marks the response with "
                          f"token_type_ids; {path}'s does not (use pooling=mean)")
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    return RewardModel(model, tokenizer)


def build_scratch_reward_model(tokenizer, preset: str = "small", max_length: int = DEFAULT_MAX_LENGTH,
                               num_heads: int = 1) -> RewardModel:
    """A randomly initialised Llama-style decoder of one of our presets, with a scalar head."""
    from transformers import AutoModelForSequenceClassification, LlamaConfig

    from alignloop.models.causal_lm import PRESETS

    _quiet_transformers()
    size = PRESETS[preset]
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=size["hidden"], intermediate_size=size["mlp"],
        num_hidden_layers=size["layers"], num_attention_heads=size["heads"], num_key_value_heads=size["heads"],
        max_position_embeddings=max_length, tie_word_embeddings=False, rms_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, num_labels=num_heads, problem_type="regression")
    setattr(config, MAX_LENGTH_KEY, max_length)
    setattr(config, KEEP_RESPONSE_KEY, DEFAULT_KEEP_RESPONSE)
    tokenizer.padding_side = "right"
    return RewardModel(AutoModelForSequenceClassification.from_config(config), tokenizer)
