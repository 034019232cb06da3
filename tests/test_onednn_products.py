"""oneDNN weight products for training passes: same outputs and gradients as the layers' own forward."""

import copy

import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile
from transformers.pytorch_utils import Conv1D

from alignloop.models.onednn_products import onednn_available, use_onednn_products

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not onednn_available(), reason="this torch has no oneDNN linear kernel")]


def layers():
    torch.manual_seed(0)
    return {"linear": nn.Linear(24, 40), "linear-no-bias": nn.Linear(24, 40, bias=False), "conv1d": Conv1D(40, 24)}


def kernels_called(fn) -> set[str]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {event.key for event in prof.key_averages()}


@pytest.mark.parametrize("kind", ["linear", "linear-no-bias", "conv1d"])
def test_outputs_and_gradients_equal_the_layers_own(kind):
    own = layers()[kind]
    routed = copy.deepcopy(own)
    assert use_onednn_products(routed) == 1
    base = torch.randn(3, 9, 24)
    outputs, grads = [], []
    for layer in (own, routed):
        x = base[:, 1:8].clone().requires_grad_(True)  # 3-D, as in a transformer
        strided = x[:, ::2]
        out = layer(strided.contiguous() if kind == "conv1d" else strided)  # Conv1D's own forward needs a view
        (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
        outputs.append(out.detach())
        grads.append([x.grad] + [p.grad for p in layer.parameters()])
    assert torch.allclose(outputs[0], outputs[1], atol=1e-5)
    for a, b in zip(*grads):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)
    x = base.requires_grad_(True)
    assert "mkldnn::_linear_pointwise" in kernels_called(lambda: routed(x).sum().backward())
    assert "mkldnn::_linear_pointwise" not in kernels_called(lambda: own(x).sum().backward())


def test_frozen_weights_get_no_gradient_and_inputs_still_do():
    layer = layers()["linear"]
    use_onednn_products(layer)
    layer.requires_grad_(False)
    x = torch.randn(5, 24, requires_grad=True)
    layer(x).sum().backward()
    assert layer.weight.grad is None and x.grad is not None
    assert torch.allclose(x.grad, layer.weight.sum(0).expand(5, -1), atol=1e-5)


def test_other_dtypes_and_autocast_use_the_layers_own_forward():
    layer = layers()["linear"]
    use_onednn_products(layer)
    x = torch.randn(4, 24)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        called = kernels_called(lambda: layer(x))
        assert layer(x).dtype == torch.bfloat16
    assert "mkldnn::_linear_pointwise" not in called
    double = copy.deepcopy(layer).double()
    assert "mkldnn::_linear_pointwise" not in kernels_called(lambda: double(x.double()))


def test_a_model_is_routed_once_and_keeps_its_state_dict():
    model = nn.Sequential(nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 2), nn.LayerNorm(2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert use_onednn_products(model) == 2
    assert use_onednn_products(model) == 0
    assert model.state_dict().keys() == before.keys()


def test_training_stages_route_a_cpu_model_and_leave_a_cuda_one():
    from alignloop.train.device import route_cpu_products

    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2))
    assert route_cpu_products(model, torch.device("cuda")) == 0  # decided on the device alone: no GPU needed
    assert all("forward" not in vars(layer) for layer in model)
    assert route_cpu_products(model, torch.device("cpu")) == 2
    x = torch.randn(3, 8)
    assert "mkldnn::_linear_pointwise" in kernels_called(lambda: model(x))
