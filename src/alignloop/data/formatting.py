"""How a prompt and a response become token ids, the same way in every stage.

The model sees `<bos> prompt [space] response <eos>`. The space is added only
when the prompt does not already end in whitespace and the response does not
start with it, so that a story opening ("...named Tom.") and its continuation
("Tom was happy.") tokenize as they read. Sampling, SFT, reward modelling, PPO
and evaluation all go through these functions, so the token boundary between
prompt and response is the same everywhere.
"""

from __future__ import annotations


def needs_separator(prompt: str, response: str) -> bool:
    return bool(prompt) and bool(response) and not prompt[-1].isspace() and not response[0].isspace()


def encode_prompt(tokenizer, prompt: str, add_bos: bool = True) -> list[int]:
    """Token ids of a prompt, with the BOS token first when the tokenizer has one."""
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    if add_bos and tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id] + ids
    return ids


def encode_response(tokenizer, prompt: str, response: str, add_eos: bool = True) -> list[int]:
    """Token ids of a response that follows `prompt`, ending with EOS."""
    text = (" " + response) if needs_separator(prompt, response) else response
    ids = tokenizer.encode(text, add_special_tokens=False)
    if add_eos and tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]
    return ids


def decode_response(tokenizer, ids: list[int]) -> str:
    """Text of generated response ids, special tokens dropped, outer whitespace stripped."""
    return tokenizer.decode(ids, skip_special_tokens=True).strip()
