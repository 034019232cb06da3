"""`loop.algorithm`: every method runs two tiny rounds, survives kill -9 mid-training, and a round keeps its method."""

import json
import shutil
from pathlib import Path

import pytest

from alignloop.errors import ConfigError
from alignloop.loop.algorithms import claim_round, round_algorithm
from alignloop.loop.report import build_report
from alignloop.runs import RunDir
from conftest import run_cli

# Two tiny rounds: sampling, simulated feedback, reward model and evaluation as small as they go.
ROUNDS = ["--rounds", "2", "sample.n_prompts=6", "sample.k=2", "sample.max_new_tokens=12", "feedback.personas=2",
          "feedback.both_bad_below=0", "overlap=1", "reward.train.epochs=1", "reward.train.batch_size=4",
          "reward.train.eval_every=100", "reward.train.stats_responses=8", "eval.prompts.limit=4",
          "eval.text.blocks=2", "eval.sampling.max_new_tokens=12", "report=false"]
# Each method's step 4 in a few steps, with a checkpoint after every one (the kill lands after the first).
METHOD = {
    "ppo": ["ppo.ppo.iterations=2", "ppo.ppo.rollout_prompts=4", "ppo.ppo.minibatches=1", "ppo.ppo.epochs=1",
            "ppo.run.save_every=1", "ppo.sampling.max_new_tokens=12", "ppo.run.sample_table_every=0",
            "kl_target=[3,5]"],
    "dpo": ["dpo.dpo.epochs=1", "dpo.dpo.batch_size=2", "dpo.dpo.warmup_steps=0", "dpo.data.max_len=64",
            "dpo.data.val_fraction=0", "dpo.run.save_every=1"],
    "bon": ["bon.n=2", "bon.prompts.limit=4", "bon.sampling.max_new_tokens=12", "bon.train.max_steps=2",
            "bon.train.batch_size=2", "bon.train.save_every=1", "bon.train.log_every=1", "bon.train.eval_batches=1",
            "bon.data.max_len=64", "reward.ensemble.heads=2", "bon.reward.uncertainty=min", "bon.ptx.coef=0.5",
            "bon.ptx.seq_len=16", "bon.ptx.batch_size=2"],
}
for _name in ("grpo", "rloo"):
    METHOD[_name] = [f"{_name}.grpo.iterations=2", f"{_name}.grpo.rollout_prompts=2", f"{_name}.grpo.group_size=2",
                     f"{_name}.grpo.minibatches=1", f"{_name}.run.save_every=1", f"{_name}.sampling.max_new_tokens=12",
                     f"{_name}.run.sample_table_every=0"]
# Where each method's training loop is killed, and the manifest stages it leaves in a round.
CRASH_AT = {"ppo": "ppo:saved:1", "grpo": "grpo:saved:1", "rloo": "grpo:saved:1", "dpo": "dpo:saved:1",
            "bon": "distill:saved:1"}
STAGES = {"ppo": ["ppo"], "grpo": ["grpo"], "rloo": ["grpo"], "dpo": ["dpo"], "bon": ["distill-data", "distill"]}


def _stages(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())["stages"]


def _loop(run: Path, algorithm: str, *extra: str, env=None):
    # grpo also checks loop.reference=previous: its round 2 is leashed to round 1's policy, not SFT.
    reference = ["reference=previous"] if algorithm == "grpo" else []
    return run_cli("loop", "--run", str(run), f"algorithm={algorithm}", *ROUNDS, *METHOD[algorithm], *reference,
                   *extra, env=env)


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["ppo", "grpo", "rloo", "dpo", "bon"])
def test_two_rounds_killed_mid_training_and_rerun(sft_run, tmp_path, algorithm):
    run = tmp_path / "run"
    shutil.copytree(sft_run, run)
    crashed = _loop(run, algorithm, env={"ALIGNLOOP_CRASH_AT": CRASH_AT[algorithm]})
    assert crashed.returncode == -9, crashed.stderr[-3000:]
    before = _stages(run)
    finished = ["sample:001", "feedback:001", "reward:001"] + (["distill-data:001"] if algorithm == "bon" else [])
    for key in finished:
        assert before[key]["status"] == "done", (key, before)
    training = f"{STAGES[algorithm][-1]}:001"
    assert before[training]["status"] == "running" and "eval:001" not in before
    assert before["algorithm:001"]["algorithm"] == algorithm

    result = _loop(run, algorithm)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming" in result.stderr  # the killed stage went on from its checkpoint
    after = _stages(run)
    for key in finished:
        assert after[key] == before[key], f"{key} was redone"
    for number in (1, 2):
        folder = run / "rounds" / f"{number:03d}"
        for key in STAGES[algorithm] + ["eval", "algorithm"]:
            assert after[f"{key}:{number:03d}"]["status"] == "done", (key, number)
        assert after[f"algorithm:{number:03d}"]["algorithm"] == algorithm
        assert (folder / "policy" / "final" / "config.json").exists()
        assert after[f"eval:{number:03d}"]["inputs"]["policy"] == \
            after[f"{STAGES[algorithm][-1]}:{number:03d}"]["outputs"]["final"]
        assert json.loads((folder / "eval.json").read_text())["kl"] is not None
        other = {"ppo", "grpo", "dpo", "distill-data", "distill"} - set(STAGES[algorithm])
        assert not any(f"{key}:{number:03d}" in after for key in other)
    # Round 2 started from round 1's policy.
    notes = after[f"{STAGES[algorithm][-1]}:002"]["notes"]
    assert notes.get("policy_start", notes.get("start")) == str(run / "rounds" / "001" / "policy" / "final")
    assert f"{algorithm} " in result.stderr.split("policy of each round")[-1]  # the summary's algorithm column
    round_one = str(run / "rounds" / "001" / "policy" / "final")
    if algorithm in ("ppo", "grpo", "rloo", "dpo"):
        reference = after[f"{STAGES[algorithm][-1]}:002"]["notes"]["reference"]
        assert reference == (round_one if algorithm == "grpo" else str(run / "sft" / "final"))
    if algorithm == "bon":
        pairs = [json.loads(line) for line in (run / "rounds" / "002" / "bon_distill" / "data.jsonl").open()]
        # The best answer is picked by the worst of the two heads' estimates (bon.reward.uncertainty=min).
        assert len(pairs) == 4 and all(p["n"] == 2 and p["spread"] > 0 for p in pairs)
        assert "distill-data: 2 reward estimates (2 head(s)), reward = min" in result.stderr
        page = build_report(RunDir(run))
        assert "<td>1</td><td>bon</td>" in page and "<h3>RL (bon)</h3>" in page
        assert "rounds/002/distill curves" in page
        # Pretraining text joined every distillation step (bon.ptx), in the killed round's resume too.
        for number in (1, 2):
            metrics = run / "rounds" / f"{number:03d}" / "distill" / "metrics.jsonl"
            steps = [json.loads(line) for line in metrics.open()]
            assert all(s["ptx_loss"] > 0 for s in steps if "loss" in s) and any("loss" in s for s in steps)
        assert "ptx: " in result.stderr and after["distill:002"]["config"]["ptx.coef"] == 0.5
    if algorithm == "dpo":  # online: each round trains on its own judgments only
        assert after["dpo:001"]["config"]["data.feedback_round"] == 1
        assert after["dpo:002"]["config"]["data.feedback_round"] == 2

    if algorithm == "ppo":  # loop.kl_target names each round's target, in the resumed round too
        assert [after[f"ppo:{n:03d}"]["config"]["reward.kl_target"] for n in (1, 2)] == [3.0, 5.0]
        # Rerunning a round with another algorithm is refused in one line, and nothing is touched.
        made = {p: p.read_bytes() for p in (run / "rounds" / "002" / "policy" / "final").iterdir()}
        refused = _loop(run, "dpo")
        assert refused.returncode == 2, refused.stderr[-2000:]
        message = refused.stderr.strip().splitlines()[-1]
        assert message.startswith("error: round 1 was trained with algorithm=ppo, not dpo: rerun with "
                                  "algorithm=ppo"), message
        assert "--run" in message and "Traceback" not in refused.stderr
        assert _stages(run) == after
        assert {p: p.read_bytes() for p in (run / "rounds" / "002" / "policy" / "final").iterdir()} == made
        # A per-round list is read round by round: round 1's entry agrees with the run, round 2's does not.
        refused = run_cli("loop", "--run", str(run), "algorithm=[ppo,dpo]", *ROUNDS, *METHOD["ppo"])
        assert refused.returncode == 2, refused.stderr[-2000:]
        assert refused.stderr.strip().splitlines()[-1].startswith(
            "error: round 2 was trained with algorithm=ppo, not dpo"), refused.stderr[-2000:]
        assert _stages(run) == after


def _run_with(tmp_path: Path, stages: dict) -> RunDir:
    run = RunDir(tmp_path / "run").ensure()
    (run.root / "manifest.json").write_text(json.dumps({"stages": stages}))
    return run


def test_a_round_keeps_its_algorithm(tmp_path):
    run = _run_with(tmp_path, {"algorithm:001": {"status": "done", "algorithm": "bon"},
                               "distill-data:001": {"status": "done"}, "distill:001": {"status": "running"}})
    claim_round(run, 1, "bon", force=False, log=print)
    with pytest.raises(ConfigError, match="round 1 was trained with algorithm=bon, not rloo: rerun with "
                                          "algorithm=bon to continue this run, or use a new --run directory"):
        claim_round(run, 1, "rloo", force=False, log=print)
    assert run.read_manifest()["stages"]["algorithm:001"]["algorithm"] == "bon"
    claim_round(run, 2, "rloo", force=False, log=print)  # a new round may take another one
    assert round_algorithm(run.read_manifest()["stages"], 2) == "rloo"


def test_force_marks_the_old_methods_stages_stale(tmp_path):
    run = _run_with(tmp_path, {"algorithm:001": {"status": "done", "algorithm": "bon"},
                               "distill-data:001": {"status": "done"}, "distill:001": {"status": "done"},
                               "dpo:002": {"status": "done"}})
    messages = []
    claim_round(run, 1, "dpo", force=True, log=messages.append)
    stages = run.read_manifest()["stages"]
    assert stages["algorithm:001"] == {**stages["algorithm:001"], "status": "running", "algorithm": "dpo"}
    assert "dpo" in stages["distill:001"]["stale"] and "dpo" in stages["distill-data:001"]["stale"]
    assert "stale" not in stages["dpo:002"]
    assert messages == ["round 1: --force: retraining with dpo instead of bon"]


def test_rounds_the_loop_did_not_record_are_ppo_rounds():
    # Runs made before `loop.algorithm` (and `alignloop ppo` itself) write the round's policy with PPO.
    assert round_algorithm({"ppo:001": {"status": "done"}}, 1) == "ppo"
    assert round_algorithm({"ppo:001": {"status": "done"}}, 2) is None
    assert round_algorithm({"dpo:001": {"status": "done"}}, 1) is None  # `alignloop dpo` writes rounds/001/dpo


def test_rloo_takes_rloos_defaults_and_refuses_the_grpo_estimator():
    from alignloop.config.base import load_config
    from alignloop.loop.config import LoopConfig

    cfg = load_config(LoopConfig, None, ["rloo.grpo.group_size=4"])
    assert (cfg.rloo.grpo.estimator, cfg.rloo.grpo.kl_in_loss, cfg.rloo.reward.kl_estimator) == ("rloo", False, "k1")
    assert cfg.rloo.grpo.group_size == 4 and cfg.grpo.grpo.estimator == "grpo" and cfg.grpo.grpo.kl_in_loss
    with pytest.raises(ConfigError, match="rloo.grpo.estimator"):
        load_config(LoopConfig, None, ["rloo.grpo.estimator=grpo"])
    with pytest.raises(ConfigError, match="algorithm"):
        load_config(LoopConfig, None, ["algorithm=sac"])


def test_a_list_names_each_rounds_algorithm_and_its_last_entry_repeats():
    from alignloop.config.base import load_config
    from alignloop.loop.config import LoopConfig

    cfg = load_config(LoopConfig, None, ["algorithm=[bon,bon,ppo]"])
    assert [cfg.algorithm_of(n) for n in (1, 2, 3, 4, 7)] == ["bon", "bon", "ppo", "ppo", "ppo"]
    assert [load_config(LoopConfig, None, ["algorithm=dpo"]).algorithm_of(n) for n in (1, 5)] == ["dpo", "dpo"]
    with pytest.raises(ConfigError, match="algorithm"):
        load_config(LoopConfig, None, ["algorithm=[]"])
    with pytest.raises(ConfigError, match="algorithm"):
        load_config(LoopConfig, None, ["algorithm=[bon,sac]"])


def test_kl_target_is_one_for_every_round_or_one_per_round():
    from alignloop.config.base import load_config
    from alignloop.loop.config import LoopConfig

    cfg = load_config(LoopConfig, None, ["kl_target=[2,4,6]", "reference=sft"])
    assert [cfg.kl_target_of(n) for n in (1, 2, 3, 4)] == [2.0, 4.0, 6.0, 6.0]
    assert load_config(LoopConfig, None, ["kl_target=3"]).kl_target_of(5) == 3.0
    assert load_config(LoopConfig, None, []).kl_target_of(1) is None  # each section's own reward.kl_target
    for bad in ("kl_target=[]", "kl_target=0", "kl_target=[2,-1]"):
        with pytest.raises(ConfigError, match="kl_target"):
            load_config(LoopConfig, None, [bad])
    # grpo's beta is fixed by default: a target it would not follow is refused, not ignored.
    with pytest.raises(ConfigError, match="grpo.reward.adaptive_kl=true"):
        load_config(LoopConfig, None, ["kl_target=[2]", "algorithm=[ppo,grpo]"])
    assert load_config(LoopConfig, None, ["kl_target=[2]", "algorithm=grpo", "grpo.reward.adaptive_kl=true"])
    assert load_config(LoopConfig, None, ["kl_target=[2]", "algorithm=[dpo,bon]"])  # no controller to set


def test_the_loops_prompt_file_reaches_every_method_that_samples():
    from alignloop.config.base import load_config
    from alignloop.loop.config import LoopConfig

    cfg = load_config(LoopConfig, None, ["prompts=mine.jsonl", "bon.prompts=own.jsonl"])
    assert [s.prompts.path for s in (cfg.ppo, cfg.grpo, cfg.rloo, cfg.eval)] == ["mine.jsonl"] * 4
    assert cfg.bon.prompts.path == "own.jsonl"
