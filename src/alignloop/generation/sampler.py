"""Batched sampling with log-probs from any Hugging Face causal LM.

One sampler for every stage that needs the policy to write: PPO and GRPO
rollouts, best-of-n, evaluation, and ``alignloop sample``. It returns a
``RolloutBatch`` in the layout training consumes (left-padded prompt, then a
right-padded response), with the log-prob of every sampled token.

Which log-prob: that of ``softmax(logits / temperature)`` over the whole
vocabulary, *before* top-k / top-p filtering and before ``min_new_tokens``
suppresses EOS. That is the distribution the training forward
(``sequence_logprobs``) recomputes, so the PPO ratio is exactly 1 on the first
minibatch. With filtering on, tokens are drawn from a truncated version of
that distribution; the recorded log-probs still describe the untruncated
policy (the one gradients are taken through), as in TRL and OpenRLHF.

Why not ``model.generate``: on small models its time goes to things a rollout
does not need (profiled on CPU: ``torch.cat`` growing the KV cache every step,
and ``torch.multinomial`` drawing one exponential variate per vocabulary entry
per row). Here the KV cache is pre-allocated once, a token is drawn by
inverse-CDF sampling (one uniform per row), the lm_head runs on the last
position only, and outputs are written into pre-allocated tensors. GPT-2 and
Llama-family models go further, through ``alignloop.generation.fast_decode``
(no transformers forward per step at all); the loop is the same for both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial

import torch
from torch import Tensor

from alignloop.errors import DataError
from alignloop.generation.fast_decode import Stepper, lean_stepper
from alignloop.generation.logprobs import _model_kwargs, position_ids_from_attention_mask, unwrap_model

__all__ = ["RolloutBatch", "Sampler", "generate", "sample_from_logits"]


@dataclass
class RolloutBatch:
    """Prompts and the responses sampled for them, ready for training.

    Shapes (B rows, P = padded prompt width, T = response width):
    - ``input_ids`` [B, P+T] long: left-padded prompt, then the response
      right-padded with ``pad_token_id``.
    - ``attention_mask`` [B, P+T] long: 1 on real prompt tokens and on response
      tokens up to and including EOS.
    - ``prompt_length`` int: P; the response starts at column P.
    - ``response_ids`` [B, T] long, ``response_mask`` [B, T] long (1 up to and
      including EOS, 0 after it).
    - ``logprobs`` [B, T] float32: log-prob of each sampled token under
      softmax(logits / temperature) (see the module docstring); 0 where masked.
    - ``ended_with_eos`` [B] bool: the response ended with EOS (False: cut by
      ``max_new_tokens``).
    T is the number of steps actually taken: less than ``max_new_tokens`` when
    every row stopped at EOS early.
    """

    input_ids: Tensor
    attention_mask: Tensor
    prompt_length: int
    response_ids: Tensor
    response_mask: Tensor
    logprobs: Tensor
    ended_with_eos: Tensor

    @property
    def prompt_ids(self) -> Tensor:
        """[B, P] the left-padded prompts."""
        return self.input_ids[:, : self.prompt_length]

    @property
    def prompt_mask(self) -> Tensor:
        """[B, P] 1 on real prompt tokens."""
        return self.attention_mask[:, : self.prompt_length]

    @property
    def response_lengths(self) -> Tensor:
        """[B] number of response tokens, EOS included."""
        return self.response_mask.sum(-1)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device: torch.device | str) -> RolloutBatch:
        """The same batch with every tensor on ``device``."""
        return replace(
            self,
            **{name: getattr(self, name).to(device) for name in
               ("input_ids", "attention_mask", "response_ids", "response_mask", "logprobs", "ended_with_eos")},
        )

    def response_token_lists(self) -> list[list[int]]:
        """Each row's response tokens (EOS included, padding excluded)."""
        return [ids[mask.bool()].tolist() for ids, mask in zip(self.response_ids.cpu(), self.response_mask.cpu())]

    def decode(self, tokenizer, skip_special_tokens: bool = True) -> list[str]:
        """Each row's response as text."""
        return [tokenizer.decode(ids, skip_special_tokens=skip_special_tokens) for ids in self.response_token_lists()]


# ---------------------------------------------------------------------------
# KV cache: transformers' DynamicCache grows each layer by torch.cat at every
# step, re-copying the whole cache (on CPU, into freshly mmap'd memory): it was
# half of model.generate's time on the benchmark workload. This layer writes
# into one buffer sized for prompt + max_new_tokens and hands attention a view.


def _preallocated_cache(model, capacity: int):
    """A transformers Cache whose plain layers never reallocate; None if this
    transformers has no layered cache API (the model then makes its own)."""
    try:
        from transformers.cache_utils import DynamicCache, DynamicLayer
    except ImportError:  # pragma: no cover - transformers < 4.56
        return None

    class PreallocatedLayer(DynamicLayer):
        def __init__(self, capacity: int):
            super().__init__()
            self.capacity = capacity
            self.length = 0

        def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
            batch, heads, _, _ = key_states.shape
            self.device = key_states.device
            self.key_buffer = key_states.new_empty(batch, heads, self.capacity, key_states.shape[-1])
            self.value_buffer = value_states.new_empty(batch, heads, self.capacity, value_states.shape[-1])
            self.keys = self.key_buffer[:, :, :0]
            self.values = self.value_buffer[:, :, :0]
            self.is_initialized = True

        def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            end = self.length + key_states.shape[-2]
            if end > self.capacity:  # never in our loop; stay correct if it happens
                grow = max(end, 2 * self.capacity) - self.capacity
                self.key_buffer = torch.cat([self.key_buffer, self.key_buffer.new_empty(
                    *self.key_buffer.shape[:2], grow, self.key_buffer.shape[-1])], dim=-2)
                self.value_buffer = torch.cat([self.value_buffer, self.value_buffer.new_empty(
                    *self.value_buffer.shape[:2], grow, self.value_buffer.shape[-1])], dim=-2)
                self.capacity += grow
            written = key_states.shape[-2]
            self.key_buffer.narrow(2, self.length, written).copy_(key_states)
            self.value_buffer.narrow(2, self.length, written).copy_(value_states)
            self.length = end
            self.keys = self.key_buffer.narrow(2, 0, end)
            self.values = self.value_buffer.narrow(2, 0, end)
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.length

    config = getattr(unwrap_model(model), "config", None)
    try:
        cache = DynamicCache(config=config) if config is not None else DynamicCache()
    except TypeError:  # pragma: no cover - DynamicCache without a config argument
        cache = DynamicCache()
    layers = getattr(cache, "layers", None)
    if layers is None:  # pragma: no cover
        return cache
    # Only plain full-attention layers are replaced; sliding-window or other
    # special layers keep transformers' own implementation.
    for index, layer in enumerate(layers):
        if type(layer) is DynamicLayer:
            layers[index] = PreallocatedLayer(capacity)
    if not layers and getattr(cache, "layer_class_to_replicate", None) is DynamicLayer:
        cache.layer_class_to_replicate = partial(PreallocatedLayer, capacity)
    return cache


def _transformers_stepper(model, capacity: int) -> Stepper:
    """The model's own forward with a pre-allocated cache, as a ``Stepper`` (any architecture)."""
    cache = _preallocated_cache(model, capacity)

    def step(input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor) -> Tensor:
        nonlocal cache
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                    **_model_kwargs(model, use_cache=True, logits_to_keep=1, cache=cache))
        if cache is None:  # pragma: no cover - old transformers: reuse what the model returned
            cache = getattr(out, "past_key_values", None)
        if getattr(out, "logits", None) is None:  # pragma: no cover
            raise RuntimeError("the model returned no logits")
        return out.logits[:, -1, :]

    return step


# ---------------------------------------------------------------------------
# Drawing one token per row.


# Inverse-CDF sampling runs in two levels: block totals, then one block. A
# single float32 cumsum over a large vocabulary would drop tail tokens whose
# weight is below half an ulp of the running sum (p < ~6e-8 each, up to 1%
# of the mass at V = 150k). Block totals come from float32 sums (vectorised,
# pairwise: relative error ~1e-7 of the block), and the running sums, across
# blocks and within the chosen block, are float64; this keeps every token's
# probability and is faster than one full-width sequential cumsum.
_BLOCK = 256


def _inverse_cdf_sample(weights: Tensor, generator: torch.Generator | None) -> Tensor:
    """Index drawn with probability proportional to ``weights`` [B, C] (>= 0).

    Returns [B, 1] long. One uniform per row, located in the cumulative sum:
    exact categorical sampling (not an approximation) that costs a cumsum
    instead of the C exponential variates per row that ``torch.multinomial``
    draws. A drawn index always has positive weight: searchsorted(right=True)
    returns the first i with cdf[i] > target >= cdf[i-1], so cdf rose at i,
    and the target is kept strictly below the total.
    """
    batch, size = weights.shape
    width = min(_BLOCK, size)
    n_blocks = -(-size // width)
    if n_blocks * width != size:
        weights = torch.nn.functional.pad(weights, (0, n_blocks * width - size))
    blocks = weights.view(batch, n_blocks, width)
    block_cdf = blocks.sum(-1).to(torch.float64).cumsum(-1)  # [B, n_blocks]
    total = block_cdf[:, -1:]
    zero = torch.zeros_like(total)
    uniform = torch.rand(total.shape, generator=generator, device=weights.device, dtype=torch.float64)
    target = torch.minimum(uniform * total, torch.nextafter(total, zero))
    block = torch.searchsorted(block_cdf, target, right=True)  # [B, 1]
    before = torch.where(block > 0, block_cdf.gather(-1, (block - 1).clamp(min=0)), zero)
    inner = blocks.gather(1, block.unsqueeze(-1).expand(batch, 1, width)).squeeze(1).to(torch.float64).cumsum(-1)
    inner_target = torch.minimum(target - before, torch.nextafter(inner[:, -1:], zero))
    return block * width + torch.searchsorted(inner, inner_target, right=True)


def sample_from_logits(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    banned_token_ids: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Draw one token per row and return it with its log-prob.

    logits: [B, V] (any float dtype; computed in float32).
    Returns (tokens [B] long, logprobs [B] float32), the log-prob being that of
    softmax(logits / temperature) over the full vocabulary: filtering by
    top_k (keep the k most likely; 1 = greedy argmax), top_p (keep the
    smallest most-likely set whose mass reaches p; Holtzman et al. 2020) and
    ``banned_token_ids`` only changes which tokens can be drawn.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 (use top_k=1 for greedy), got {temperature}")
    scaled = logits.float()
    if temperature != 1.0:
        scaled = scaled / temperature
    # softmax in one fused pass (max, exp, sum, divide): the draw needs only relative weights, and the
    # log-prob log p[token] equals logit - logsumexp to float rounding (~1e-7).
    weights = torch.softmax(scaled, dim=-1)
    filtered = top_k > 0 or top_p < 1.0

    if banned_token_ids is not None:
        weights.index_fill_(-1, banned_token_ids, 0.0)
    candidates = scaled
    if banned_token_ids is not None and filtered:
        candidates = scaled.index_fill(-1, banned_token_ids, float("-inf"))

    if top_k == 1:
        tokens = candidates.argmax(-1, keepdim=True)
    elif filtered:
        if top_k > 0:
            candidates, candidate_ids = candidates.topk(min(top_k, candidates.shape[-1]), dim=-1)
        else:
            candidates, candidate_ids = candidates.sort(dim=-1, descending=True)
        candidate_weights = (candidates - candidates[:, :1]).exp_()
        if top_p < 1.0:
            probs = candidate_weights / candidate_weights.sum(-1, keepdim=True)
            # Keep a candidate while the mass strictly before it is below top_p:
            # the most likely token is always kept.
            mass_before = probs.cumsum(-1) - probs
            candidate_weights.masked_fill_(mass_before >= top_p, 0.0)
        tokens = candidate_ids.gather(-1, _inverse_cdf_sample(candidate_weights, generator))
    else:
        tokens = _inverse_cdf_sample(weights, generator)

    # Banning and filtering only zeroed other tokens' weights: a drawn token's p is the untruncated one.
    picked = weights.gather(-1, tokens)
    if bool((picked < torch.finfo(picked.dtype).tiny).any()):
        # p underflowed (a token ~90 nats below the best, drawn after filtering): exact in log space
        logprobs = scaled.gather(-1, tokens) - torch.logsumexp(scaled, dim=-1, keepdim=True)
    else:
        logprobs = picked.log_()
    return tokens.squeeze(-1), logprobs.squeeze(-1)


# ---------------------------------------------------------------------------


def _model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover
        return torch.device("cpu")


def _eos_tensor(eos_token_id: int | Sequence[int] | None, device: torch.device) -> Tensor | None:
    if eos_token_id is None:
        return None
    ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    return torch.tensor(ids, dtype=torch.long, device=device) if ids else None


def generate(
    model,
    prompt_ids: Sequence[Sequence[int]],
    max_new_tokens: int,
    eos_token_id: int | Sequence[int] | None,
    pad_token_id: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    min_new_tokens: int = 0,
    stop_at_eos: bool = True,
    fast_decode: bool = True,
) -> RolloutBatch:
    """Sample a response for every prompt, in one batch, with log-probs.

    prompt_ids: B token lists of any lengths (each non-empty); they are
    left-padded with ``pad_token_id`` to the longest. Each row stops at its
    first EOS (when ``stop_at_eos``): later columns hold ``pad_token_id`` and
    mask 0. EOS cannot be drawn before ``min_new_tokens`` tokens. ``generator``
    (on the model's device) makes the draw reproducible. The model runs in
    eval mode (dropout off) under ``torch.inference_mode``; its train/eval mode
    is restored afterwards. ``fast_decode`` runs GPT-2 and Llama-family
    models through ``alignloop.generation.fast_decode`` (same log-probs, less
    overhead per step); False, or any other architecture, runs the model's own
    forward. See ``RolloutBatch`` for the result.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not 0 <= min_new_tokens <= max_new_tokens:
        raise ValueError(f"min_new_tokens must be in [0, max_new_tokens={max_new_tokens}], got {min_new_tokens}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    if not prompt_ids:
        raise DataError("no prompts to sample from")
    for index, prompt in enumerate(prompt_ids):
        if len(prompt) == 0:
            raise DataError(f"prompt {index} is empty: a prompt needs at least one token (e.g. BOS)")

    config = getattr(unwrap_model(model), "config", None)
    max_positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    longest = max(len(p) for p in prompt_ids)
    if isinstance(max_positions, int) and longest + max_new_tokens > max_positions:
        raise DataError(f"a prompt of {longest} tokens plus max_new_tokens={max_new_tokens} exceeds the model's "
                        f"{max_positions} positions: shorten the prompts or max_new_tokens")

    device = _model_device(model)
    batch, prompt_width = len(prompt_ids), longest
    total_width = prompt_width + max_new_tokens
    eos = _eos_tensor(eos_token_id, device)

    # Left padding puts every prompt's last token in the same column, so one
    # forward step serves the whole batch.
    input_ids = torch.full((batch, total_width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, total_width), dtype=torch.long)
    for row, prompt in enumerate(prompt_ids):
        input_ids[row, prompt_width - len(prompt):prompt_width] = torch.tensor(list(prompt), dtype=torch.long)
        attention_mask[row, prompt_width - len(prompt):prompt_width] = 1
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    prompt_lengths = attention_mask[:, :prompt_width].sum(-1, keepdim=True)

    # While generating, every response column is attended: a finished row keeps
    # running (on pad tokens) but its outputs are discarded, so what it attends
    # to does not matter, and the mask is a slice instead of a growing cat.
    step_mask = attention_mask.clone()
    step_mask[:, prompt_width:] = 1

    response_ids = input_ids[:, prompt_width:]  # a view: writing it fills input_ids
    response_mask = attention_mask[:, prompt_width:]
    logprobs = torch.zeros((batch, max_new_tokens), dtype=torch.float32, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    ended_with_eos = torch.zeros(batch, dtype=torch.bool, device=device)

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            step_forward = (lean_stepper(model, batch, total_width) if fast_decode else None) \
                or _transformers_stepper(model, total_width)
            logits = step_forward(input_ids[:, :prompt_width], step_mask[:, :prompt_width],
                                  position_ids_from_attention_mask(step_mask[:, :prompt_width]))
            steps = 0
            for step in range(max_new_tokens):
                banned = eos if (eos is not None and step < min_new_tokens) else None
                tokens, token_logprobs = sample_from_logits(
                    logits, temperature, top_k, top_p, generator, banned_token_ids=banned)
                alive = ~finished
                tokens = torch.where(alive, tokens, pad_token_id)
                response_ids[:, step] = tokens
                response_mask[:, step] = alive
                logprobs[:, step] = torch.where(alive, token_logprobs, 0.0)
                steps = step + 1
                if eos is not None:
                    hit = alive & torch.isin(tokens, eos)
                    if stop_at_eos:
                        ended_with_eos |= hit
                        finished |= hit
                        if bool(finished.all()):
                            break
                    else:  # rows run on: only the final token counts
                        ended_with_eos.copy_(hit)
                if steps == max_new_tokens:
                    break  # the last token needs no forward pass
                logits = step_forward(tokens.unsqueeze(-1), step_mask[:, : prompt_width + steps],
                                      prompt_lengths + step)
    finally:
        model.train(was_training)

    width = prompt_width + steps
    return RolloutBatch(
        input_ids=input_ids[:, :width].clone(),
        attention_mask=attention_mask[:, :width].clone(),
        prompt_length=prompt_width,
        response_ids=response_ids[:, :steps].clone(),
        response_mask=response_mask[:, :steps].clone(),
        logprobs=logprobs[:, :steps].clone(),
        ended_with_eos=ended_with_eos,
    )


@dataclass(frozen=True)
class Sampler:
    """Sampling settings bound once, applied to many batches of prompts.

    ``Sampler(max_new_tokens=48, eos_token_id=2, pad_token_id=0)(model, prompts)``
    is ``generate(model, prompts, 48, 2, 0)``; see ``generate``.
    """

    max_new_tokens: int
    eos_token_id: int | tuple[int, ...] | None
    pad_token_id: int
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_new_tokens: int = 0
    stop_at_eos: bool = True

    def __call__(self, model, prompt_ids: Sequence[Sequence[int]],
                 generator: torch.Generator | None = None) -> RolloutBatch:
        return generate(
            model, prompt_ids, max_new_tokens=self.max_new_tokens, eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
            generator=generator, min_new_tokens=self.min_new_tokens, stop_at_eos=self.stop_at_eos,
        )
