"""Weight products of float32 models on CPU through oneDNN, for the passes that train and score.

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

__all__ = ["onednn_available", "use_onednn_products"]


@functools.cache
def onednn_available() -> bool:
    """Whether this torch has oneDNN and the linear kernel with its weight reordering."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise") \
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


def _product(x: Tensor, weight_out_in: Tensor, bias: Optional[Tensor]) -> Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight_out_in, bias, "none", [], "")


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
    return _OneDNNProduct.apply(x, weight, self.bias, type(self) is not nn.Linear)


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
        if (type(module) is nn.Linear or type(module).__name__ == "Conv1D") and "forward" not in vars(module):
            module.forward = types.MethodType(_routed_forward, module)
            routed += 1
    return routed
