"""The ETA of training loops and the table `loop` and `demo` end with."""

from alignloop.loop.summary import summary_rows
from alignloop.train.progress import StepTimer, clock, eta_text


def test_eta_is_the_mean_step_time_times_the_steps_left():
    assert eta_text(elapsed=10.0, steps_run=5, steps_left=20) == "eta 0:40"  # 2 s a step, 20 steps
    assert eta_text(elapsed=3600.0, steps_run=1, steps_left=2) == "eta 2:00:00"
    assert eta_text(elapsed=5.0, steps_run=0, steps_left=10) == "eta ?"  # nothing run yet in this process
    assert clock(65) == "1:05" and clock(3725) == "1:02:05"


def test_a_resumed_run_counts_only_its_own_steps():
    timer = StepTimer(total=100, start=90)
    timer.started -= 20.0  # 20 s in this process...
    assert timer.eta(95) == "eta 0:20"  # ...for 5 steps: 4 s each, 5 left


def test_log_lines_come_every_n_steps_at_the_end_and_after_a_quiet_minute():
    timer = StepTimer(total=50, start=0, every_seconds=60.0)
    assert [done for done in range(1, 51) if timer.line_due(done, 20)] == [20, 40, 50]
    timer.last_line -= 61.0
    assert timer.line_due(3, 20)


def test_summary_rows_per_round_with_missing_figures_as_na():
    rows = summary_rows([
        {"gold_win_rate": 0.625, "rm_win_rate": 0.5, "kl": 1.234, "ppl_before": 10.0, "ppl_after": 11.5},
        {"gold_win_rate": 0.7, "rm_win_rate": None, "kl": 2.0, "ppl_before": 10.0, "ppl_after": 12.0,
         "algorithm": "dpo"},
    ])
    assert rows == [["1", "n/a", "62.5%", "50.0%", "1.23", "10.00 -> 11.50"],
                    ["2", "dpo", "70.0%", "n/a", "2.00", "10.00 -> 12.00"]]


def test_summary_rows_carry_intervals_and_the_kl_standard_error():
    rows = summary_rows([{"gold_win_rate": 0.785, "gold_win_rate_ci": [0.73, 0.84], "rm_win_rate": 0.955,
                          "rm_win_rate_ci": [0.925, 0.98], "kl": 4.81, "kl_se": 0.16, "ppl_before": 2.7,
                          "ppl_after": 2.86, "algorithm": "ppo"}])
    assert rows == [["1", "ppo", "78.5% [73.0%, 84.0%]", "95.5% [92.5%, 98.0%]", "4.81 +- 0.16", "2.70 -> 2.86"]]
