"""Exact resume: 20 steps straight == 10 steps, kill -9, rerun for the other 10."""

import torch
from safetensors.torch import load_file

from conftest import TINY_PRETRAIN, run_cli


def _weights(run):
    return load_file(str(run / "pretrain" / "final" / "model.safetensors"))


def test_kill_and_resume_gives_the_same_weights(tmp_path, tiny_corpus):
    common = [f"data.path={tiny_corpus}", "train.max_steps=20", "train.save_every=10", *TINY_PRETRAIN]
    straight = tmp_path / "straight"
    result = run_cli("pretrain", "--run", str(straight), *common)
    assert result.returncode == 0, result.stderr

    resumed = tmp_path / "resumed"
    crashed = run_cli("pretrain", "--run", str(resumed), *common, env={"ALIGNLOOP_CRASH_AT": "pretrain:saved:10"})
    assert crashed.returncode == -9  # SIGKILL: nothing got to clean up
    assert (resumed / "pretrain" / "checkpoints" / "step-000010").is_dir()
    assert not (resumed / "pretrain" / "final").exists()

    result = run_cli("pretrain", "--run", str(resumed), *common)
    assert result.returncode == 0, result.stderr
    assert "resuming from step 10" in result.stderr

    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)
    # the metrics of the resumed run hold each step once
    steps = [line for line in (resumed / "pretrain" / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert len(steps) == 4  # logged at 5, 10, 15, 20

    # A rerun of a finished stage does nothing.
    again = run_cli("pretrain", "--run", str(resumed), *common)
    assert again.returncode == 0 and "nothing to do" in again.stderr
