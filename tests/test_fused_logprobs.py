"""Token log-probs and entropy from one buffer: values and gradients against plain autograd."""

import pytest
import torch

from alignloop.generation.fused_logprobs import token_logprobs_and_entropy
from alignloop.rl.losses import entropy_from_logits


def reference(logits, tokens):
    logprobs = torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return logprobs, entropy_from_logits(logits)


def test_values_match_log_softmax_and_entropy():
    # (the entropy is also closer to a float64 computation than entropy_from_logits: ~1e-6 vs ~2e-5 at V = 8192)
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 300, generator=generator) * 4
    tokens = torch.randint(0, 300, (3, 5), generator=generator)
    logprobs, entropy = token_logprobs_and_entropy(logits, tokens)
    expected_logprobs, expected_entropy = reference(logits, tokens)
    assert logprobs.shape == entropy.shape == (3, 5)
    assert torch.allclose(logprobs, expected_logprobs, atol=1e-5)
    assert torch.allclose(entropy, expected_entropy, atol=1e-5)
    assert token_logprobs_and_entropy(logits, tokens, with_entropy=False)[1] is None


def test_worked_example():
    # two equally likely tokens and one with logit -inf-ish: p = (1/2, 1/2, ~0), H = log 2
    logits = torch.tensor([[0.0, 0.0, -200.0]])
    logprobs, entropy = token_logprobs_and_entropy(logits, torch.tensor([1]))
    assert logprobs.item() == pytest.approx(-torch.log(torch.tensor(2.0)).item(), abs=1e-6)
    assert entropy.item() == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=1e-6)


def test_gradient_matches_autograd():
    generator = torch.Generator().manual_seed(1)
    logits = (torch.randn(4, 6, 50, generator=generator, dtype=torch.float64) * 3).requires_grad_()
    tokens = torch.randint(0, 50, (4, 6), generator=generator)
    upstream = torch.randn(4, 6, generator=generator, dtype=torch.float64)
    logprobs, entropy = token_logprobs_and_entropy(logits, tokens)
    assert not entropy.requires_grad
    (grad,) = torch.autograd.grad((logprobs * upstream).sum(), logits)
    plain = logits.detach().clone().requires_grad_()
    (expected,) = torch.autograd.grad((reference(plain, tokens)[0] * upstream).sum(), plain)
    assert torch.allclose(grad, expected, atol=1e-12)


@pytest.mark.parametrize("with_entropy", [True, False])
def test_overwriting_the_logits_gives_the_same_values_and_gradient(with_entropy):
    generator = torch.Generator().manual_seed(2)
    hidden = torch.randn(2, 7, 16, generator=generator, requires_grad=True)
    head = torch.randn(300, 16, generator=generator)
    tokens = torch.randint(0, 300, (2, 7), generator=generator)
    results = []
    for overwrite in (False, True):
        logits = hidden @ head.T
        logprobs, entropy = token_logprobs_and_entropy(logits, tokens, with_entropy, overwrite=overwrite)
        (grad,) = torch.autograd.grad(logprobs.sum(), hidden)
        results.append((logprobs, entropy, grad))
    (kept, kept_entropy, kept_grad), (over, over_entropy, over_grad) = results
    assert torch.allclose(kept, over, atol=1e-6) and torch.allclose(kept_grad, over_grad, atol=1e-6)
    if with_entropy:
        assert torch.allclose(kept_entropy, over_entropy, atol=1e-6)


def test_overwritten_logits_that_a_graph_still_needs_are_caught():
    logits = torch.randn(3, 20, requires_grad=True)
    squared = logits * 1.0
    kept_for_backward = squared.square()  # saves `squared` for its backward
    logprobs, _ = token_logprobs_and_entropy(squared, torch.tensor([0, 1, 2]), overwrite=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (logprobs.sum() + kept_for_backward.sum()).backward()


def test_a_second_backward_is_refused_not_wrong():
    logits = torch.randn(2, 10, requires_grad=True)
    logprobs, _ = token_logprobs_and_entropy(logits, torch.tensor([1, 2]))
    logprobs.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="second backward"):
        logprobs.sum().backward()


def test_half_precision_is_refused():
    with pytest.raises(TypeError):
        token_logprobs_and_entropy(torch.zeros(2, 4, dtype=torch.bfloat16), torch.zeros(2, dtype=torch.long))
