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


def test_a_nan_loss_stops_with_one_line_and_keeps_the_checkpoint(tmp_path, tiny_corpus):
    # A learning rate of 1e6 sends the weights to inf within a few steps, so the loss turns NaN.
    run = tmp_path / "run"
    result = run_cli("pretrain", "--run", str(run), f"data.path={tiny_corpus}", *TINY_PRETRAIN, "train.max_steps=20",
                     "train.save_every=1", "train.warmup_steps=0", "train.lr=1e6", "train.grad_clip=0")
    assert result.returncode != 0
    message = result.stderr.strip().splitlines()[-1]
    # Either check may see it first: the weights at a checkpoint, or the loss of the next step.
    assert message.startswith(("error: pretrain: loss became nan at step", "error: pretrain: the weights became inf"))
    assert "lower" in message and "is intact" in message
    assert "Traceback" not in result.stderr
    # Every checkpoint left holds finite weights: a rerun with a lower rate resumes from sound ones.
    checkpoints = sorted((run / "pretrain" / "checkpoints").iterdir())
    assert checkpoints
    for checkpoint in checkpoints:
        assert all(torch.isfinite(t).all() for t in load_file(str(checkpoint / "model.safetensors")).values())
    assert not (run / "pretrain" / "final").exists()


def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(tmp_path, tiny_corpus):
    common = [f"data.path={tiny_corpus}", "train.max_steps=20", "train.save_every=5", *TINY_PRETRAIN,
              "train.keep_last=3"]
    straight = tmp_path / "straight"
    assert run_cli("pretrain", "--run", str(straight), *common).returncode == 0
    run = tmp_path / "run"
    crashed = run_cli("pretrain", "--run", str(run), *common, env={"ALIGNLOOP_CRASH_AT": "pretrain:saved:10"})
    assert crashed.returncode == -9
    newest = run / "pretrain" / "checkpoints" / "step-000010"
    weights = newest / "model.safetensors"
    damaged = bytearray(weights.read_bytes())
    damaged[-1] ^= 0xFF  # one flipped bit in the last weight: safetensors would load it without a word
    weights.write_bytes(bytes(damaged))

    result = run_cli("pretrain", "--run", str(run), *common)
    assert result.returncode == 0, result.stderr
    assert "step-000010 is damaged (model.safetensors does not match its checksum)" in result.stderr
    assert "resuming from step 5" in result.stderr
    assert (run / "pretrain" / "checkpoints" / ".corrupt-step-000010" / "model.safetensors").exists()  # kept aside
    a, b = _weights(straight), _weights(run)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)
