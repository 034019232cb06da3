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


def _round_one(run: Path) -> tuple[dict, dict]:
    """Every file of round 1 (bytes) and its manifest entries."""
    files = {str(p.relative_to(run)): p.read_bytes() for p in sorted((run / "rounds" / "001").rglob("*"))
             if p.is_file()}
    return files, {k: v for k, v in _stages(run).items() if k.endswith(":001")}


@pytest.mark.slow
def test_a_kill_in_round_two_leaves_round_one_bit_identical(sft_run, tmp_path):
    """Round 2 writes to the store round 1 read from: round 1's reward model must not be retrained (it was,
    when the store was fingerprinted by size and mtime), nor anything else of round 1 touched."""
    run = tmp_path / "run"
    shutil.copytree(sft_run, run)
    assert run_cli("loop", "--run", str(run), *LOOP).returncode == 0
    before = _round_one(run)
    two = [a if a != "1" else "2" for a in LOOP]  # --rounds 2
    crashed = run_cli("loop", "--run", str(run), *two, env={"ALIGNLOOP_CRASH_AT": "loop:2:judged"})
    assert crashed.returncode == -9
    finished = run_cli("loop", "--run", str(run), *two)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert _round_one(run) == before
    assert _stages(run)["eval:002"]["status"] == "done"


@pytest.mark.slow
def test_the_loop_refuses_to_replace_a_round_done_by_hand(sft_run, tmp_path):
    from reward_helpers import good_bad_pairs, write_jsonl

    run = tmp_path / "run"
    shutil.copytree(sft_run, run)
    prefs = write_jsonl(tmp_path / "prefs.jsonl", good_bad_pairs(16))
    hand = run_cli("reward", "--run", str(run), f"data.path={prefs}", "train.epochs=1", "train.batch_size=4",
                   "train.eval_every=100", "train.stats_responses=8")
    assert hand.returncode == 0, hand.stderr
    made = {p.name: p.read_bytes() for p in (run / "rounds" / "001" / "reward" / "final").iterdir()}

    refused = run_cli("loop", "--run", str(run), *LOOP)
    assert refused.returncode == 2, refused.stderr[-2000:]
    message = refused.stderr.strip().splitlines()[-1]
    assert message.startswith("error: reward:001: ") and "data: " in message and "prefs.jsonl" in message
    assert "--force" in message and "Traceback" not in refused.stderr
    assert {p.name: p.read_bytes() for p in (run / "rounds" / "001" / "reward" / "final").iterdir()} == made
    assert "ppo:001" not in _stages(run)

    forced = run_cli("loop", "--run", str(run), *LOOP, "--force")
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert _stages(run)["reward:001"]["notes"]["data"].endswith("feedback.db")
