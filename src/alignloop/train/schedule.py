"""Learning-rate schedule: linear warmup then cosine decay to a floor."""

from __future__ import annotations

import math


def learning_rate(step: int, max_steps: int, peak: float, warmup_steps: int, min_ratio: float) -> float:
    """The learning rate for optimizer step `step` (0-based).

    Warmup: peak * (step + 1) / warmup_steps for step < warmup_steps.
    Then cosine from peak down to peak * min_ratio at `max_steps`.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    span = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    floor = peak * min_ratio
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))


def capped_warmup(warmup_steps: int, max_steps: int) -> int:
    """Warmup steps for a run of `max_steps`: as configured, but at most a fifth of the run.

    A setting tuned for a long run (100 steps) would otherwise spend a short one (30 steps)
    warming up and never train at the peak rate.
    """
    return min(warmup_steps, max_steps // 5)


def capped_warmup_logged(warmup_steps: int, max_steps: int, stage: str, setting: str, log) -> int:
    """`capped_warmup`, saying so through `log` when the cap shortens the configured `setting`."""
    warmup = capped_warmup(warmup_steps, max_steps)
    if warmup < warmup_steps:
        log(f"{stage}: warmup of {warmup} steps instead of {setting}={warmup_steps}: "
            f"at most a fifth of the {max_steps}-step run")
    return warmup
