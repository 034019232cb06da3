"""Prompt tokens contribute nothing to the SFT loss or its gradient."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from alignloop.data.lm_batches import IGNORE_INDEX, SupervisedExample, collate_supervised


def _model():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def _example(prompt, response):
    return SupervisedExample(prompt + response, [IGNORE_INDEX] * len(prompt) + response)


def test_loss_equals_response_only_cross_entropy():
    model = _model()
    prompt, response = [1, 5, 6, 7, 8], [9, 10, 11, 2]
    batch = collate_supervised([_example(prompt, response), _example([1, 4], [12, 2])], pad_token_id=0)
    out = model(**batch)
    # By hand: position t predicts token t+1; only targets that are response tokens count.
    logits = out.logits
    terms = []
    for row, (p, r) in enumerate([(prompt, response), ([1, 4], [12, 2])]):
        for j, token in enumerate(r):
            position = len(p) + j - 1
            terms.append(-torch.log_softmax(logits[row, position], -1)[token])
    assert torch.allclose(out.loss, torch.stack(terms).mean(), atol=1e-6)


def test_prompt_targets_get_zero_gradient_and_do_not_change_loss():
    model = _model()
    prompt, response = [1, 5, 6, 7, 8], [9, 10, 2]
    batch = collate_supervised([_example(prompt, response)], pad_token_id=0)
    outputs = model(**batch)
    logits = outputs.logits
    logits.retain_grad()
    outputs.loss.backward()
    # logits at positions 0..len(prompt)-2 predict prompt tokens: no gradient at all.
    assert torch.count_nonzero(logits.grad[0, : len(prompt) - 1]) == 0
    # the position that predicts the first response token does get gradient
    assert torch.count_nonzero(logits.grad[0, len(prompt) - 1]) > 0
    # the padding/last position (predicting past the end) gets none
    assert torch.count_nonzero(logits.grad[0, -1]) == 0

    # Changing which prompt tokens are *targets* (labels) cannot matter: they are all ignored.
    batch2 = {k: v.clone() for k, v in batch.items()}
    assert (batch2["labels"][0, : len(prompt)] == IGNORE_INDEX).all()
