"""Weight products of float32 models on CPU through oneDNN: for decoding (``ReorderedProduct``) and for the
passes that train and score (``use_onednn_products``).

torch's default CPU path for ``x W^T + b`` (MKL's sgemm) runs the products of
small transformers' training passes at 100-185 GFLOP/s on this project's
2-core development machine; oneDNN's kernel, which torch ships and exposes as
``torch.ops.mkldnn._linear_pointwise``, runs the same products at 180-210.
``use_onednn_products`` routes a model's plain ``nn.Linear`` and GPT-2
``Conv1D`` layers through it: the forward product and the input gradient by
oneDNN, the weight gradient (a product over the batch) by ``mm``, the bias
gradient by a sum. One PPO iteration on the benchmark's GPT-2 took 5.5% less
wall time (BENCHMARKS.md, "PPO speed").

Only float32 CPU tensors outside autocast take this path; anything else (CUDA,
half precision, autocast, a oneDNN build without the kernel) calls the layer's
own forward, so a model prepared this way runs anywhere. The results equal
the default path's to float rounding (another summation order).
"""

from __future__ import annotations

import functools
import types
from typing import Optional

import torch
from torch import Tensor, nn

__all__ = ["ReorderedProduct", "linear_weight", "onednn_available", "use_onednn_products"]


@functools.cache
def onednn_available() -> bool:
    """Whether this torch has oneDNN and the linear kernel with its weight reordering."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise") \
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


def _is_conv1d(module: nn.Module) -> bool:
    """GPT-2's Conv1D: x @ W + b with W [in, out] (recognised by name; transformers' class moves between versions)."""
    return type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None


def linear_weight(module: nn.Module) -> Optional[tuple[Tensor, Optional[Tensor]]]:
    """(weight as [out, in], bias) of a plain nn.Linear or GPT-2 Conv1D (a view, no copy); None for anything else."""
    if type(module) is nn.Linear:
        return module.weight, module.bias
    if _is_conv1d(module):
        return module.weight.t(), module.bias
    return None


def _product(x: Tensor, weight_out_in: Tensor, bias: Optional[Tensor], post: str = "none",
             algorithm: str = "") -> Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight_out_in, bias, post, [], algorithm)


class ReorderedProduct:
    """x W^T + b (then GELU, or plus a residual) for inference, on a weight copied and reordered once for `rows`.

    At decoding sizes (one row per sequence, widths of a few hundred) the
    default CPU BLAS path runs these products at a fraction of the machine's
    rate; oneDNN's kernel on a weight laid out ahead for the row count was
    1.3-2.3x faster on them (BENCHMARKS.md, "PPO speed"), and the fused GELU
    saves a pass over the MLP's widest activation; adding the residual
    inside the product saves an elementwise kernel, whose thread wake-up
    alone costs about as much as a small product. The result equals the
    module's to float rounding (different summation order). The copy does
    not follow later changes to the weight: make one per use (a rollout).
    """

    def __init__(self, weight: Tensor, bias: Optional[Tensor], rows: int, gelu_tanh: bool = False):
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), rows)
        self.bias = None if bias is None else bias.detach()
        self.post, self.algorithm = ("gelu", "tanh") if gelu_tanh else ("none", "")

    def __call__(self, x: Tensor) -> Tensor:
        return _product(x, self.weight, self.bias, self.post, self.algorithm)

    def plus(self, x: Tensor, residual: Tensor) -> Tensor:
        """residual + (x W^T + b), in one kernel."""
        return torch.ops.mkldnn._linear_pointwise.binary(x, residual, self.weight, self.bias, "add")


class _OneDNNProduct(torch.autograd.Function):
    """x W^T + b with W given as [out, in] (nn.Linear) or [in, out] (Conv1D, `in_out`)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Optional[Tensor], in_out: bool) -> Tensor:
        x = x.contiguous()
        ctx.save_for_backward(x, weight)
        ctx.in_out, ctx.has_bias = in_out, bias is not None
        return _product(x, weight.t() if in_out else weight, bias)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:  # grad_x = grad W, a product whose weight argument is W^T: [in, out]
            grad_x = _product(grad, weight if ctx.in_out else weight.t(), None)
        rows = grad.reshape(-1, grad.shape[-1])
        if ctx.needs_input_grad[1]:
            inputs = x.reshape(-1, x.shape[-1])
            grad_weight = inputs.t().mm(rows) if ctx.in_out else rows.t().mm(inputs)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = rows.sum(0)
        return grad_x, grad_weight, grad_bias, None


def _routed_forward(self: nn.Module, x: Tensor) -> Tensor:
    weight = self.weight
    if (x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32
            or type(weight) not in (torch.Tensor, nn.Parameter) or torch.is_autocast_enabled("cpu")):
        return type(self).forward(self, x)  # the class's: a deep copy of the module falls back to itself
    return _OneDNNProduct.apply(x, weight, self.bias, _is_conv1d(self))


def use_onednn_products(model: nn.Module) -> int:
    """Route `model`'s plain nn.Linear and GPT-2 Conv1D layers through oneDNN on CPU float32, in place.

    Returns how many layers were routed (0 when oneDNN's kernel is missing).
    The layers stay what they are (same parameters, state dict, hooks, LoRA
    wrappers around them); only the arithmetic of their forward changes, and
    only for float32 CPU inputs outside autocast.
    """
    if not onednn_available():
        return 0
    routed = 0
    for module in model.modules():
        if linear_weight(module) is not None and "forward" not in vars(module):
            module.forward = types.MethodType(_routed_forward, module)
            routed += 1
    return routed
