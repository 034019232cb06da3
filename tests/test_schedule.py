import math

import pytest

from alignloop.train.schedule import learning_rate


def test_warmup_is_linear_from_peak_over_steps():
    # step 0 of 10 warmup steps: 1e-3 * 1/10
    assert learning_rate(0, 100, 1e-3, 10, 0.1) == pytest.approx(1e-4)
    assert learning_rate(9, 100, 1e-3, 10, 0.1) == pytest.approx(1e-3)


def test_cosine_midpoint_and_end():
    # after warmup 10 of 110 steps: span 100; step 60 is halfway -> floor + (peak-floor)/2
    peak, floor = 1e-3, 1e-4
    assert learning_rate(60, 110, peak, 10, 0.1) == pytest.approx(floor + 0.5 * (peak - floor))
    assert learning_rate(110, 110, peak, 10, 0.1) == pytest.approx(floor)
    # a quarter of the way: cos(pi/4)
    expected = floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi / 4))
    assert learning_rate(35, 110, peak, 10, 0.1) == pytest.approx(expected)


def test_no_warmup_starts_at_peak():
    assert learning_rate(0, 10, 2e-3, 0, 0.0) == pytest.approx(2e-3)


def test_warmup_is_capped_at_a_fifth_of_a_short_run():
    from alignloop.train.schedule import capped_warmup

    assert capped_warmup(100, 30) == 6  # a long run's setting on a 30-step run
    assert capped_warmup(100, 2000) == 100  # untouched where the run is long enough
    assert capped_warmup(20, 4) == 0  # four steps: no warmup at all, the peak from step 0


def test_a_capped_warmup_is_announced_once_and_only_when_capped():
    from alignloop.train.schedule import capped_warmup_logged

    said: list[str] = []
    assert capped_warmup_logged(10, 30, "dpo", "dpo.warmup_steps", said.append) == 6
    assert said == ["dpo: warmup of 6 steps instead of dpo.warmup_steps=10: at most a fifth of the 30-step run"]
    assert capped_warmup_logged(10, 100, "dpo", "dpo.warmup_steps", said.append) == 10
    assert len(said) == 1


def test_rl_iterations_warm_up_then_decay_to_min_lr_ratio_at_the_last():
    from types import SimpleNamespace

    import torch

    from alignloop.rl.state import set_learning_rates

    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
    optimizer.param_groups[0]["peak_lr"] = 1e-4
    state = SimpleNamespace(optimizers=lambda: [optimizer])

    def rates(iterations, warmup, ratio):
        out = []
        for iteration in range(iterations):
            set_learning_rates(state, iteration, iterations, warmup, ratio)
            out.append(optimizer.param_groups[0]["lr"])
        return out

    # 1.0 (the default): the warmup, then the peak to the end, as before the setting existed.
    assert rates(6, 2, 1.0) == pytest.approx([5e-5, 1e-4, 1e-4, 1e-4, 1e-4, 1e-4])
    # 0.1 over 5 iterations, no warmup: the cosine over 4 steps, 1e-5 + 9e-5 * (1 + cos(pi k / 4)) / 2.
    expected = [1e-5 + 4.5e-5 * (1 + math.cos(math.pi * k / 4)) for k in range(5)]
    assert rates(5, 0, 0.1) == pytest.approx(expected)
    assert rates(5, 0, 0.1)[-1] == pytest.approx(1e-5) and rates(1, 0, 0.1) == pytest.approx([1e-4])
