"""Provenance: inputs by content, the run/resume/skip/refuse decision, stale stages, the run lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY_PRETRAIN, cli_env, run_cli, write_tiny_corpus

from alignloop.provenance import (
    DONE,
    FRESH,
    RESUME,
    StageInputs,
    config_settings,
    content_id,
    decide,
    describe_changes,
    stale_dependents,
)
from alignloop.runlock import RunBusy, run_lock
from alignloop.runs import RunDir


def _inputs(lr: float = 1e-3, corpus: str = "aaaa") -> StageInputs:
    inputs = StageInputs.of({"train": {"lr": lr, "threads": 2, "log_every": 5}, "data": {"path": "x.txt"}},
                            exclude=("data.path",))
    return inputs.add_value("corpus", corpus, "corpus.txt")


def _entry(inputs: StageInputs, status: str = "done") -> dict:
    return {"status": status, "inputs": inputs.fingerprints, "notes": inputs.notes, "config": inputs.settings}


def test_settings_leave_out_operational_keys_and_paths():
    assert config_settings({"train": {"lr": 0.1, "threads": 4, "log_every": 1, "save_every": 3, "device": "cpu"},
                            "data": {"path": "a.txt", "seq_len": 64}, "round": 3}, exclude=("data.path",)) \
        == {"data.seq_len": 64, "train.lr": 0.1}
    # Operational settings do not change the fingerprint; results-shaping ones do.
    assert _inputs().fingerprints["config"] == StageInputs.of(
        {"train": {"lr": 1e-3, "threads": 1, "log_every": 50}, "data": {"path": "elsewhere.txt"}},
        exclude=("data.path",)).fingerprints["config"]
    assert _inputs(lr=2e-3).fingerprints["config"] != _inputs().fingerprints["config"]


def test_content_id_reads_bytes_not_paths_or_times(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"a": 1}')
    (folder / "model.safetensors").write_bytes(b"\x00" * 100)
    first = content_id(folder)
    os.utime(folder / "model.safetensors", (1, 1))  # a new mtime, the same bytes
    (tmp_path / "link").symlink_to(folder)
    assert content_id(tmp_path / "link") == first == content_id(Path(str(tmp_path) + "/./model"))
    (folder / ".tmp-model-123").mkdir()  # a crash leftover is not content
    assert content_id(folder) == first
    (folder / "model.safetensors").write_bytes(b"\x00" * 99 + b"\x01")  # retrained in place: same size
    assert content_id(folder) != first
    assert content_id(tmp_path / "nowhere") == "missing"


def test_decide_runs_resumes_skips_and_refuses():
    inputs = _inputs()
    assert decide(None, inputs, has_work=False, outputs_intact=False).action == FRESH
    assert decide(_entry(inputs, "running"), inputs, has_work=True, outputs_intact=False).action == RESUME
    assert decide(_entry(inputs), inputs, has_work=True, outputs_intact=True).action == DONE
    assert decide(_entry(inputs), inputs, has_work=False, outputs_intact=False).action == FRESH  # removed: redo
    # Work on disk that no record explains, a replaced artifact, other inputs: refused.
    assert decide(None, inputs, has_work=True, outputs_intact=True).action == "changed"
    assert decide(_entry(inputs), inputs, has_work=True, outputs_intact=False).action == "changed"
    changed = decide(_entry(inputs, "running"), _inputs(lr=2e-3, corpus="bbbb"), has_work=True,
                     outputs_intact=False)
    assert changed.action == "changed"
    assert changed.changes == ["train.lr: 0.001 -> 0.002", "corpus: corpus.txt (content aaaa) -> corpus.txt "
                                                          "(content bbbb)"]
    # A record from before content fingerprints can only be trusted.
    legacy = {"status": "done", "inputs_hash": "abc"}
    assert decide(legacy, inputs, has_work=True, outputs_intact=True).action == DONE


def test_changes_name_added_and_dropped_inputs():
    old = _inputs()
    new = StageInputs.of({"train": {"lr": 1e-3}}).add_value("start", "cccc", "model/")
    assert describe_changes(_entry(old), new) == ["start: (not recorded) -> model/ (content cccc)",
                                                  "corpus: corpus.txt (content aaaa) -> (no longer read)"]


def test_settings_of_another_version_count_only_off_their_defaults():
    from alignloop.pretrain.config import PretrainConfig

    recorded = StageInputs.of(PretrainConfig())
    entry = _entry(recorded)
    del entry["config"]["train.grad_clip"]  # as a version without that setting recorded it
    entry["config"]["train.retired_setting"] = 3  # and one this version no longer has
    entry["inputs"]["config"] = "written-by-another-version"
    assert describe_changes(entry, StageInputs.of(PretrainConfig())) == []
    changed = PretrainConfig.model_validate({"train": {"grad_clip": 0.5}})
    assert describe_changes(entry, StageInputs.of(changed)) == ["train.grad_clip: (unset) -> 0.5"]


def test_stale_dependents_follow_the_chain():
    stages = {
        "sft": {"outputs": {"final": "s1"}},
        "reward:001": {"inputs": {"backbone": "s1"}, "outputs": {"final": "r1"}},
        "ppo:001": {"inputs": {"reward_model": "r1", "policy_start": "s1"}, "outputs": {"final": "p1"}},
        "eval:001": {"inputs": {"policy": "p1"}, "outputs": {"final": "e1"}},
        "reward:002": {"inputs": {"backbone": "r1"}, "outputs": {"final": "r2"}},
        "pretrain": {"outputs": {"final": "t0"}},
    }
    assert sorted(stale_dependents(stages, "reward:001")) == ["eval:001", "ppo:001", "reward:002"]
    assert sorted(stale_dependents(stages, "sft")) == ["eval:001", "ppo:001", "reward:001", "reward:002"]
    assert stale_dependents(stages, "eval:001") == []


def test_run_lock_names_its_holder_and_a_killed_holder_frees_it(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from alignloop.runlock import run_lock\n"
        f"with run_lock({str(run)!r}, 'alignloop loop --run X'):\n"
        "    print('held', flush=True); time.sleep(600)\n")], stdout=subprocess.PIPE, text=True, env=cli_env())
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunBusy, match=rf"in use by pid {holder.pid} \(`alignloop loop --run X`, since "):
            with run_lock(run):
                pass
        busy = run_cli("pretrain", "--run", str(run), "train.max_steps=1")
        assert busy.returncode == 2 and f"in use by pid {holder.pid}" in busy.stderr
        assert len(busy.stderr.strip().splitlines()) == 1
    finally:
        holder.kill()
        holder.wait()
    with run_lock(run):  # the kernel let go of a killed holder's lock: nothing stale in the way
        with run_lock(run):  # nested takes in one process (the loop calling stages) are counted
            pass


def _pretrain(run: Path, corpus: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_cli("pretrain", "--run", str(run), f"data.path={corpus}", "train.max_steps=4", "train.save_every=2",
                   *TINY_PRETRAIN, *extra, env=env)


def _bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_a_finished_stage_is_never_replaced_without_force(tmp_path):
    """Pretrain on one corpus, rerun on another: refused in one line naming what changed; --force starts over
    and marks what was built on it stale."""
    first, second = write_tiny_corpus(tmp_path / "a.txt"), write_tiny_corpus(tmp_path / "b.txt", seed=1)
    run = tmp_path / "run"
    assert _pretrain(run, first).returncode == 0
    final, configs = _bytes(run / "pretrain" / "final"), (run / "run.yaml").read_bytes()
    again = _pretrain(run, first)
    assert again.returncode == 0 and "already finished" in again.stderr
    spelled = _pretrain(run, Path(os.path.relpath(first)), "train.log_every=1", "train.threads=2")
    assert spelled.returncode == 0 and "already finished" in spelled.stderr  # same bytes, other path and cadence

    refused = _pretrain(run, second)
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and len(lines) == 1, refused.stderr
    assert "corpus: " in lines[0] and "b.txt" in lines[0] and "--force" in lines[0] and "new --run" in lines[0]
    longer = _pretrain(run, first, "train.max_steps=6")
    assert longer.returncode == 2 and "train.max_steps: 4 -> 6" in longer.stderr
    assert _bytes(run / "pretrain" / "final") == final and (run / "run.yaml").read_bytes() == configs

    manifest = json.loads((run / "manifest.json").read_text())
    manifest["stages"]["sft"] = {"status": "done", "inputs": {"start": manifest["stages"]["pretrain"]["outputs"]
                                                                       ["final"]}, "outputs": {"final": "x"}}
    (run / "manifest.json").write_text(json.dumps(manifest))
    forced = _pretrain(run, second, "--force")
    assert forced.returncode == 0, forced.stderr
    assert _bytes(run / "pretrain" / "final") != final
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    assert stages["pretrain"]["notes"]["corpus"].endswith("b.txt") and stages["pretrain"]["status"] == "done"
    assert "pretrain was redone with --force" in stages["sft"]["stale"]
    assert _pretrain(run, second).returncode == 0  # and now that is the finished work


@pytest.mark.slow
def test_a_failed_first_run_leaves_nothing_behind(tmp_path):
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("Tom ran.\n")
    run = tmp_path / "run"
    failed = _pretrain(run, tiny, "data.seq_len=64")
    assert failed.returncode == 2 and "too small" in failed.stderr
    assert not run.exists()  # no run.yaml, no tokenizer trained on the bad corpus, no empty folder
    assert _pretrain(run, write_tiny_corpus(tmp_path / "good.txt")).returncode == 0


@pytest.mark.slow
def test_sigterm_stops_cleanly_and_the_rerun_resumes(tmp_path):
    corpus = write_tiny_corpus(tmp_path / "corpus.txt")
    run = tmp_path / "run"
    args = ["--run", str(run), f"data.path={corpus}", "train.max_steps=100000", "train.save_every=2",
            *TINY_PRETRAIN]
    process = subprocess.Popen([sys.executable, "-m", "alignloop", "pretrain", *args], stderr=subprocess.PIPE,
                               text=True, env=cli_env())
    deadline = time.monotonic() + 300
    while not list((run / "pretrain" / "checkpoints").glob("step-*")) and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1] == "error: terminated (SIGTERM); rerun the same command to resume"
    assert json.loads((run / "manifest.json").read_text())["stages"]["pretrain"]["status"] == "running"
    # max_minutes is operational: the same stage resumes (from its checkpoint) and stops at once.
    resumed = run_cli("pretrain", *args, "train.max_minutes=0.001")
    assert resumed.returncode == 0 and "resuming from step" in resumed.stderr, resumed.stderr


def test_an_empty_store_file_is_refused(tmp_path):
    from alignloop.errors import AlignloopError
    from alignloop.feedback import open_store

    empty = tmp_path / "feedback.db"
    empty.write_bytes(b"")
    with pytest.raises(AlignloopError, match="empty file .0 bytes.: it was truncated"):
        open_store(empty)
    assert empty.stat().st_size == 0  # not quietly made into a new store


def test_rounds_counted_from_the_store_and_the_run(tmp_path):
    run = RunDir(tmp_path / "run").ensure()
    (run.round_dir(1) / "reward").mkdir(parents=True)  # a round done by hand, unknown to the store
    (run.root / "rounds" / "002").mkdir()  # an empty folder is not a round
    run.mark_stage("ppo:003", "running")
    assert run.round_numbers() == [1, 3]


SAMPLE = ["k=2", "n_prompts=3", "max_new_tokens=4", "batch_size=8"]


@pytest.mark.slow
def test_sample_numbers_rounds_after_hand_made_ones_and_records_a_cut_off_load(rl_run):
    """rl_run has round 1 done by hand (a reward model, no store): sampling goes to round 2. A kill between
    loading the items and recording the stage is recorded on the rerun, without loading twice."""
    prompts = f"prompts={rl_run / 'prompts.jsonl'}"
    crashed = run_cli("sample", "--run", str(rl_run), prompts, *SAMPLE, env={"ALIGNLOOP_CRASH_AT": "sample:loaded"})
    assert crashed.returncode == -9
    assert (rl_run / "rounds" / "002" / "samples.jsonl").exists()
    assert json.loads((rl_run / "manifest.json").read_text())["stages"]["sample:002"]["status"] == "running"
    again = run_cli("sample", "--run", str(rl_run), prompts, *SAMPLE)
    assert again.returncode == 0 and "round 2 already holds 3 items; nothing to do" in again.stderr, again.stderr
    assert json.loads((rl_run / "manifest.json").read_text())["stages"]["sample:002"]["status"] == "done"
    # Other settings for a round whose items are in the store: refused, the items stay.
    other = run_cli("sample", "--run", str(rl_run), prompts, *SAMPLE, "round=2", "temperature=0.5", "--force")
    assert other.returncode == 2 and "sampling.temperature: 1.0 -> 0.5" in other.stderr and "never replaced" in other.stderr
    third = run_cli("sample", "--run", str(rl_run), prompts, *SAMPLE)
    assert third.returncode == 0 and "round 3: 3 pair items" in third.stderr, third.stderr


PPO = ["ppo.iterations=1", "ppo.rollout_prompts=4", "ppo.minibatches=1", "ppo.epochs=1"]


@pytest.mark.slow
def test_a_reward_model_retrained_in_place_is_noticed_by_ppo(rl_run):
    from conftest import TINY_RL

    import torch
    from alignloop.reward.model import RewardStats, build_reward_model

    args = ["ppo", "--run", str(rl_run), f"prompts.path={rl_run / 'prompts.jsonl'}", *PPO, *TINY_RL]
    assert run_cli(*args).returncode == 0
    again = run_cli(*args)
    assert again.returncode == 0 and "nothing to do" in again.stderr
    policy = _bytes(rl_run / "rounds" / "001" / "policy" / "final")

    torch.manual_seed(7)  # another reward model at the same path, the same size: only its bytes differ
    retrained = build_reward_model(rl_run / "pretrain" / "final")
    retrained.stats = RewardStats(mean=0.1, std=2.0, n=10)
    retrained.save(rl_run / "rounds" / "001" / "reward" / "final")
    refused = run_cli(*args)
    assert refused.returncode == 2, refused.stderr
    assert "nothing to do" not in refused.stderr and "reward_model: " in refused.stderr and "--force" in refused.stderr
    assert _bytes(rl_run / "rounds" / "001" / "policy" / "final") == policy
    forced = run_cli(*args, "--force")
    assert forced.returncode == 0 and "--force: replacing" in forced.stderr, forced.stderr


EVAL = ["sampling.max_new_tokens=6", "sampling.batch_size=8", "text.seq_len=32", "text.blocks=2", "threads=1"]


@pytest.mark.slow
def test_an_adhoc_eval_never_replaces_the_rounds_record(rl_run, tmp_path):
    import shutil

    shutil.copytree(rl_run / "pretrain" / "final", rl_run / "rounds" / "001" / "policy" / "final")
    prompts = f"prompts.path={rl_run / 'prompts.jsonl'}"
    assert run_cli("eval", "--run", str(rl_run), prompts, *EVAL).returncode == 0
    record = rl_run / "rounds" / "001" / "eval.json"
    kept = record.read_bytes()
    out = tmp_path / "other.json"
    adhoc = run_cli("eval", "--run", str(rl_run), prompts, "prompts.limit=3", *EVAL, "--json", str(out))
    assert adhoc.returncode == 0, adhoc.stderr
    assert json.loads(out.read_text())["n"] == 3 and record.read_bytes() == kept
    refused = run_cli("eval", "--run", str(rl_run), prompts, "prompts.limit=3", *EVAL)
    assert refused.returncode == 2 and "prompts.limit: 200 -> 3" in refused.stderr and "--json OUT" in refused.stderr
    assert record.read_bytes() == kept
    same = run_cli("eval", "--run", str(rl_run), prompts, *EVAL)
    assert same.returncode == 0 and "already holds this evaluation" in same.stderr
    assert json.loads(same.stdout.strip().splitlines()[-1]) == json.loads(kept)
