"""kill -9 in the middle of each stage of a loop round, rerun: same judgments, no finished stage redone."""

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from conftest import run_cli

# One tiny round; small batches and save_every=1 so every training stage has a mid-stage checkpoint.
LOOP = ["--rounds", "1", "sample.n_prompts=6", "sample.k=2", "sample.max_new_tokens=12", "feedback.personas=2",
        "feedback.both_bad_below=0",
        "overlap=2", "reward.train.epochs=1", "reward.train.batch_size=2", "reward.train.save_every=1",
        "reward.train.eval_every=100", "reward.train.stats_responses=8", "ppo.ppo.iterations=2",
        "ppo.ppo.rollout_prompts=4", "ppo.ppo.minibatches=1", "ppo.ppo.epochs=1", "ppo.run.save_every=1",
        "ppo.sampling.max_new_tokens=12", "ppo.run.sample_table_every=0", "eval.prompts.limit=6",
        "eval.text.blocks=2", "eval.sampling.max_new_tokens=12", "report=false"]


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory) -> Path:
    """A run with tiny pretraining and SFT on the built-in stories, copied by each test."""
    run = tmp_path_factory.mktemp("loop") / "base"
    result = run_cli("pretrain", "--run", str(run), "model.preset=tiny", "data.stories=600", "data.seq_len=64",
                     "tokenizer.vocab_size=600", "train.max_steps=6", "train.batch_size=4", "train.samples=0",
                     "train.eval_batches=1", "train.threads=1")
    assert result.returncode == 0, result.stderr
    result = run_cli("sft", "--run", str(run), "train.max_steps=2", "train.batch_size=2", "train.samples=0",
                     "train.eval_batches=1", "data.max_len=64", "train.threads=1")
    assert result.returncode == 0, result.stderr
    return run


@pytest.fixture(scope="module")
def uninterrupted(sft_run, tmp_path_factory) -> dict:
    run = tmp_path_factory.mktemp("straight") / "run"
    shutil.copytree(sft_run, run)
    result = run_cli("loop", "--run", str(run), *LOOP)
    assert result.returncode == 0, result.stderr
    return {"judgments": _judgments(run), "run": run}


def _judgments(run: Path) -> int:
    with sqlite3.connect(run / "feedback.db") as db:
        return db.execute("select count(*) from judgments").fetchone()[0]


def _stages(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())["stages"]


@pytest.mark.slow
@pytest.mark.parametrize("crash_at, finished_before", [
    ("sample:written", ["pretrain", "sft"]),
    ("annotate:sim-kind-hearted:2", ["pretrain", "sft", "sample:001"]),
    ("reward:saved:1", ["pretrain", "sft", "sample:001", "feedback:001"]),
    ("ppo:saved:1", ["pretrain", "sft", "sample:001", "feedback:001", "reward:001"]),
    ("loop:1:trained", ["pretrain", "sft", "sample:001", "feedback:001", "reward:001", "ppo:001"]),
])
def test_kill_mid_stage_and_rerun(sft_run, uninterrupted, tmp_path, crash_at, finished_before):
    run = tmp_path / "run"
    shutil.copytree(sft_run, run)
    crashed = run_cli("loop", "--run", str(run), *LOOP, env={"ALIGNLOOP_CRASH_AT": crash_at})
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    before = _stages(run)
    for stage in finished_before:
        assert before[stage]["status"] == "done", (stage, before)

    result = run_cli("loop", "--run", str(run), *LOOP)
    assert result.returncode == 0, result.stderr[-3000:]
    after = _stages(run)
    for stage in finished_before:
        assert after[stage] == before[stage], f"{stage} was redone"
    assert _judgments(run) == uninterrupted["judgments"]
    assert after["eval:001"]["status"] == "done"
    assert (run / "rounds" / "001" / "eval.json").exists()
