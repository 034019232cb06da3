"""Token log-probs (and entropy) from logits with one [N, V] buffer, forward and backward.

log p(token) = logit[token] - logsumexp(logits) written with autograd ops
allocates several [N, V] tensors: the shifted logits, their exponentials, and
in the backward the softmax, a zero tensor the gather's gradient is scattered
into, and their sum. At RL sizes (a few thousand response tokens times a
vocabulary of thousands) each is hundreds of megabytes, and on CPU every
fresh one is paid in page faults as well as passes over memory: on the PPO
benchmark they were a fifth of the update's time.

Here the forward makes one buffer, w = exp(logits - max), and keeps it for
the backward; the backward turns it in place into the gradient,

    d log p(token) / d logits = onehot(token) - softmax(logits) = onehot(token) - w / sum(w),

and the entropy, H = logsumexp - sum(softmax * logits), comes out of the same
buffer (a dot product per row) for logging, without a graph.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["token_logprobs_and_entropy"]


# Rows per block of the entropy pass: about 256k floats (1 MB in float32), so that a block stays in cache
# across the few passes made over it.
_BLOCK_ELEMENTS = 1 << 18


def _exp_with_shifted_dot(shifted: Tensor) -> Tensor:
    """Turn ``shifted`` = logits - max into w = exp(shifted) in place; return sum(w * shifted) per row [N, 1].

    That sum gives the entropy, H = log sum(w) - sum(w * (logits - max)) / sum(w),
    in a form where the large weights sit on small terms; torch's cascaded sum
    keeps it accurate (closer to float64 than a dot product at V = 8192).
    """
    rows = max(1, _BLOCK_ELEMENTS // shifted.shape[-1])
    scratch = torch.empty((min(rows, shifted.shape[0]), shifted.shape[-1]), dtype=shifted.dtype,
                          device=shifted.device)
    dots = shifted.new_empty((shifted.shape[0], 1))
    for start in range(0, shifted.shape[0], rows):
        block = shifted[start:start + rows]
        weights = torch.exp(block, out=scratch[: block.shape[0]])
        torch.sum(block.mul_(weights), dim=-1, keepdim=True, out=dots[start:start + rows])
        block.copy_(weights)
    return dots


class _TokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, tokens: Tensor, with_entropy: bool, overwrite: bool):
        # logits [N, V] float32/float64, tokens [N] long
        row_max = logits.amax(-1, keepdim=True)
        picked = logits.gather(-1, tokens.unsqueeze(-1))
        if overwrite:
            # The caller's logits become the buffer (one [N, V] tensor fewer). Their version counter moves
            # on, so a graph that had saved them would refuse to run backward rather than use wrong values.
            shifted = logits.detach().sub_(row_max)
        else:
            shifted = torch.sub(logits, row_max)
        shifted_dot = _exp_with_shifted_dot(shifted) if with_entropy else None
        weights = shifted if with_entropy else shifted.exp_()
        total = weights.sum(-1, keepdim=True)
        log_total = total.log()
        logprobs = (picked - log_total - row_max).squeeze(-1)
        entropy = None
        if with_entropy:
            entropy = (log_total - shifted_dot / total).squeeze(-1)
            ctx.mark_non_differentiable(entropy)
        ctx.save_for_backward(weights, total, tokens)
        ctx.consumed = False
        return logprobs, entropy

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_logprobs: Tensor, grad_entropy: Tensor | None):
        if ctx.consumed:
            raise RuntimeError("token_logprobs_and_entropy: a second backward through the same graph is not "
                               "supported (the saved buffer became the first gradient)")
        ctx.consumed = True
        weights, total, tokens = ctx.saved_tensors
        grad = grad_logprobs.unsqueeze(-1)
        gradient = weights.mul_(-grad / total)  # -g * softmax, in the saved buffer
        gradient.scatter_add_(-1, tokens.unsqueeze(-1), grad)  # + g at the token
        return gradient, None, None, None


def token_logprobs_and_entropy(logits: Tensor, tokens: Tensor, with_entropy: bool = True, overwrite: bool = False
                               ) -> tuple[Tensor, Tensor | None]:
    """log softmax(logits)[token] (differentiable) and the entropy of softmax(logits) (not), per position.

    logits: [..., V] float32 or float64, finite (a model's output); tokens:
    [...] long. Returns ([...], [...] or None when ``with_entropy`` is False),
    in the logits' dtype. Equal to ``logprobs_from_logits`` and
    ``alignloop.rl.losses.entropy_from_logits`` to float rounding. The graph
    supports one backward pass (no ``retain_graph`` second pass).
    ``overwrite``: the logits are the caller's to give away (nothing else
    reads them afterwards): they become the buffer, saving one [..., V]
    tensor; they must then be contiguous.
    """
    if logits.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"token_logprobs_and_entropy needs float32/float64 logits, got {logits.dtype}")
    if logits.shape[:-1] != tokens.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and tokens {tuple(tokens.shape)} do not match")
    shape = tokens.shape
    if overwrite and not logits.is_contiguous():
        overwrite = False  # a reshape would copy anyway: that copy is the buffer
    flat_logits = logits.reshape(-1, logits.shape[-1])
    logprobs, entropy = _TokenLogprobs.apply(flat_logits, tokens.reshape(-1), with_entropy, overwrite)
    return logprobs.view(shape), None if entropy is None else entropy.view(shape)
