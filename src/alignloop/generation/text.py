"""Text in, text out: prompts completed by a causal LM through the shared sampler."""

from __future__ import annotations

import torch

from alignloop.data.formatting import decode_response, encode_prompt


def complete(model, tokenizer, prompts: list[str], max_new_tokens: int = 64, temperature: float = 1.0,
             top_p: float = 1.0, top_k: int = 0, seed: int | None = None, batch_size: int = 32,
             min_new_tokens: int = 0) -> list[str]:
    """One sampled continuation per prompt (the response text only, without the prompt)."""
    from alignloop.generation.sampler import generate

    device = next(model.parameters()).device
    generator = torch.Generator(device=device)
    if seed is not None:
        generator.manual_seed(seed)
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        batch = generate(model, [encode_prompt(tokenizer, p) for p in chunk], max_new_tokens=max_new_tokens,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         temperature=temperature, top_k=top_k, top_p=top_p, generator=generator,
                         min_new_tokens=min_new_tokens)
        for row in range(len(chunk)):
            ids = batch.response_ids[row][batch.response_mask[row].bool()].tolist()
            out.append(decode_response(tokenizer, ids))
    return out
