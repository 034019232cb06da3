"""Deterministic train/validation splits."""

from __future__ import annotations

import random


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, validation) indices of `n` items, each sorted: a seeded shuffle, the first share held out.

    With a positive fraction at least one item is held out (when there are two or more).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1), got {val_fraction}")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_val = int(round(n * val_fraction))
    if val_fraction > 0 and n_val == 0 and n > 1:
        n_val = 1
    return sorted(order[n_val:]), sorted(order[:n_val])
