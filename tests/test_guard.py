"""The over-optimisation guard: the decision on constructed histories, and PPO stopped by it end to end
(the final policy is the best check's; a kill -9 and rerun neither loses nor repeats a check)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignloop.rl.config import GuardConfig
from alignloop.rl.guard import diverging_checks, guard_verdict, new_best, read_history
from conftest import RL_PROMPTS, TINY_RL, run_cli


def checks(proxy, heldout, **extra):
    return [{"iteration": i + 1, "proxy": p, "heldout": h, "kl": 0.1 * i, "length": 10.0, **extra}
            for i, (p, h) in enumerate(zip(proxy, heldout))]


def test_fires_when_the_proxy_rises_while_the_heldout_score_falls():
    cfg = GuardConfig(every=1, patience=2)
    diverging = checks([0.1, 0.2, 0.3, 0.4], [0.50, 0.55, 0.52, 0.49])
    assert [diverging_checks(diverging[:n]) for n in range(1, 5)] == [0, 0, 1, 2]
    assert guard_verdict(diverging[:3], cfg) is None  # one fall is not yet `patience` of them
    assert "fell 2 checks in a row" in guard_verdict(diverging, cfg)
    assert guard_verdict(checks([0.1, 0.2, 0.3, 0.4], [0.50, 0.55, 0.60, 0.61]), cfg) is None  # both rise
    assert guard_verdict(checks([0.4, 0.3, 0.2, 0.1], [0.6, 0.5, 0.4, 0.3]), cfg) is None  # both fall
    # A rise in between breaks the streak; no held-out score, no streak.
    assert guard_verdict(checks([0.1, 0.2, 0.3, 0.4], [0.5, 0.4, 0.45, 0.44]), cfg) is None
    assert guard_verdict(checks([0.1, 0.2, 0.3], [None, None, None]), cfg) is None
    assert guard_verdict([], cfg) is None


def test_thresholds():
    history = checks([0.1, 0.2], [0.5, 0.6])
    history[-1].update(kl=3.0, spread=0.4, ood_fraction=0.3, length=25.0)
    assert guard_verdict(history, GuardConfig(every=1)) is None
    assert guard_verdict(history, GuardConfig(every=1, max_kl=3.0)) is None  # at the limit is not past it
    assert guard_verdict(history, GuardConfig(every=1, max_kl=2.5)) == "KL 3 > guard.max_kl 2.5"
    assert "reward spread 0.4 > guard.max_spread 0.3" in guard_verdict(history, GuardConfig(every=1, max_spread=0.3))
    assert "guard.max_ood_fraction 0.2" in guard_verdict(history, GuardConfig(every=1, max_ood_fraction=0.2))
    assert guard_verdict(history, GuardConfig(every=1, max_length_ratio=2.5)) is None  # 25 = 2.5 x 10
    assert "mean length 25.0 > guard.max_length_ratio 2" in guard_verdict(history,
                                                                           GuardConfig(every=1, max_length_ratio=2))
    shorter = checks([0.1, 0.2, 0.3], [0.5, 0.6, 0.7])
    shorter[1]["length"], shorter[2]["length"] = 5.0, 4.0
    assert guard_verdict(shorter[:2], GuardConfig(every=1, min_length_ratio=0.5)) is None  # 5 = 0.5 x 10
    assert guard_verdict(shorter, GuardConfig(every=1, min_length_ratio=0.5)) == \
        "mean length 4.0 < guard.min_length_ratio 0.5 x the first check's 10.0"
    both = guard_verdict(history, GuardConfig(every=1, max_kl=1, max_spread=0.1))
    assert "KL" in both and "spread" in both


def test_the_kept_check_is_the_best_heldout_score_within_the_thresholds():
    # kl 0.0, 0.1, 0.2, 0.3 (checks()); the held-out model likes the third check best, which is past max_kl.
    history = checks([0.1, 0.2, 0.3, 0.4], [0.50, 0.55, 0.70, 0.60])
    plain, capped = GuardConfig(every=1), GuardConfig(every=1, max_kl=0.15)

    def kept(cfg):
        best = None
        for n in range(1, len(history) + 1):
            best = history[n - 1] if new_best(history[:n], best, cfg) else best
        return best["iteration"]

    assert (kept(plain), kept(capped)) == (3, 2)
    assert not new_best(checks([0.1], [None]), None, plain)  # no held-out score: nothing to keep by
    # No held-out judge, a guard that stops on max_kl: the latest check within it is kept, so the budget holds.
    blind = checks([0.1, 0.2, 0.3, 0.4], [None] * 4)
    budget = GuardConfig(every=1, max_kl=0.15, stop=True)
    assert [new_best(blind[:n], None, budget) for n in range(1, 5)] == [True, True, False, False]
    assert not any(new_best(blind[:n], None, GuardConfig(every=1, max_kl=0.15)) for n in range(1, 5))  # no stop
    assert not new_best(blind[:1], None, GuardConfig(every=1, stop=True))  # no threshold: nothing to keep to
    assert new_best(checks([0.1, 0.2], [0.5, 0.5]), {"heldout": 0.5}, plain) is False  # a tie keeps the earlier
    longer = checks([0.1, 0.2], [0.5, 0.9])
    longer[-1]["length"] = 30.0
    assert not new_best(longer, {"heldout": 0.5}, GuardConfig(every=1, max_length_ratio=2))
    longer[-1]["length"] = 4.0
    assert not new_best(longer, {"heldout": 0.5}, GuardConfig(every=1, min_length_ratio=0.5))
    assert new_best(longer, {"heldout": 0.5}, GuardConfig(every=1, min_length_ratio=0.4))


def test_history_keeps_the_checks_up_to_the_resumed_iteration(tmp_path):
    path = tmp_path / "guard.jsonl"
    path.write_text("".join(json.dumps({"iteration": i, "proxy": 0.0}) + "\n" for i in (2, 4, 6))
                    + '{"iteration": 8, "pro')  # the last line cut short by a kill
    assert [r["iteration"] for r in read_history(path, 6)] == [2, 4, 6]
    assert [r["iteration"] for r in read_history(path, 4)] == [2, 4]
    assert len(path.read_text().splitlines()) == 2
    assert read_history(tmp_path / "missing.jsonl", 4) == []


# ---- end to end --------------------------------------------------------------------------------

PPO_ARGS = ["ppo.iterations=6", "ppo.rollout_prompts=8", "ppo.epochs=2", "ppo.minibatches=2", "ppo.lr=1e-3",
            "run.precision=fp32", "guard.every=1", "guard.heldout=gold", "guard.max_kl=0.3", "guard.stop=true"]


def ppo(run: Path, *extra: str, env: dict[str, str] | None = None):
    return run_cli("ppo", "--run", str(run), f"prompts.path={run / 'prompts.jsonl'}", *PPO_ARGS, *TINY_RL, *extra,
                   env=env)


def guard_run(rl_run: Path) -> Path:
    """The tiny RL run with its prompts as the built-in task's evaluation prompts (the gold judge's scope)."""
    from alignloop.runs import RunDir
    from alignloop.stages import builtin_paths

    prompts = builtin_paths(RunDir(rl_run))["eval_prompts"]
    prompts.parent.mkdir(parents=True, exist_ok=True)
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in RL_PROMPTS))
    return rl_run


def kept_by_hand(history: list[dict], max_kl: float) -> dict | None:
    """The check the guard keeps: the highest held-out score among the checks within `max_kl` (the earlier on a
    tie), or None when no check is within it."""
    within = [h for h in history if h["kl"] <= max_kl]
    return max(within, key=lambda h: h["heldout"]) if within else None


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.usefixtures("single_thread")
def test_ppo_stops_keeps_the_best_checkpoint_and_resumes_after_kill(rl_run, tmp_path):
    run = guard_run(rl_run)
    crashed, blind = tmp_path / "crashed", tmp_path / "blind"
    shutil.copytree(run, crashed)
    shutil.copytree(run, blind)

    done = ppo(run, "run.save_every=2")
    assert done.returncode == 0, done.stderr
    stage = run / "rounds" / "001" / "ppo"
    history = [json.loads(line) for line in (stage / "guard.jsonl").read_text().splitlines()]
    stop = history[-1]
    # Stopped by the KL threshold at the first check past it, before the 6 iterations were done.
    assert stop["stopped"] and "guard.max_kl 0.3" in stop["fired"] and stop["iteration"] < 6
    assert all(not h["fired"] and h["kl"] <= 0.3 for h in history[:-1])
    assert [h["iteration"] for h in history] == list(range(1, stop["iteration"] + 1))
    assert "over-optimisation guard fired" in done.stderr
    for h in history:
        assert 0 <= h["heldout"] <= 1 and 0 <= h["heldout_win_rate"] <= 1 and h["length"] > 0
    # The final policy is the best check's by held-out score, not the last one's.
    best = kept_by_hand(history, 0.3)
    assert best is not None and stop["kept"] == best["iteration"] == max(h["iteration"] for h in history if h["best"])
    final = run / "rounds" / "001" / "policy" / "final"
    assert same(weights(final), weights(stage / "guard" / f"best-{best['iteration']:06d}"))
    assert [p.name for p in (stage / "guard").iterdir()] == [f"best-{best['iteration']:06d}"]
    assert not (final / "guard_best.json").exists()
    last = stage / "checkpoints" / f"step-{stop['iteration']:06d}"
    if best["iteration"] != stop["iteration"]:
        assert not same(weights(final), weights(last))
    entry = json.loads((run / "manifest.json").read_text())["stages"]["ppo:001"]
    assert entry["status"] == "done" and entry["guard_stopped_at"] == stop["iteration"]
    assert entry["guard_kept_iteration"] == best["iteration"] and "max_kl" in entry["guard_reason"]
    metrics = [json.loads(line) for line in (stage / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, stop["iteration"] + 1))
    from alignloop.loop.report import build_report
    from alignloop.runs import RunDir

    report = build_report(RunDir(run))
    assert "rounds/001/ppo guard" in report  # the proxy and held-out score against KL
    assert (f"Over-optimisation guard: stopped at iteration {stop['iteration']}" in report
            and f"kept the policy of iteration {best['iteration']}" in report)

    # Killed right after the check of an iteration whose checkpoint was not written yet, then rerun: the check
    # is made again (not twice), and the run ends as the uninterrupted one did.
    crash_at = stop["iteration"] - 1 if stop["iteration"] % 2 == 0 else stop["iteration"]
    killed = ppo(crashed, "run.save_every=2", env={"ALIGNLOOP_CRASH_AT": f"ppo:guard:{crash_at}"})
    assert killed.returncode == -9
    resumed = ppo(crashed, "run.save_every=2")
    assert resumed.returncode == 0, resumed.stderr
    again = [json.loads(line) for line in (crashed / "rounds" / "001" / "ppo" / "guard.jsonl").read_text()
             .splitlines()]
    assert [h["iteration"] for h in again] == [h["iteration"] for h in history]
    for a, b in zip(again, history):
        assert {k: a[k] for k in ("kl", "proxy", "heldout", "best", "kept", "fired")} == \
            {k: b[k] for k in ("kl", "proxy", "heldout", "best", "kept", "fired")}
    assert same(weights(crashed / "rounds" / "001" / "policy" / "final"), weights(final))
    rerun = ppo(crashed, "run.save_every=2")
    assert rerun.returncode == 0 and "nothing to do" in rerun.stderr

    # With no held-out judge, max_kl is a budget: the final policy is the last check's within it.
    budget = ppo(blind, "run.save_every=2", "guard.heldout=none")
    assert budget.returncode == 0, budget.stderr
    stage = blind / "rounds" / "001" / "ppo"
    checked = [json.loads(line) for line in (stage / "guard.jsonl").read_text().splitlines()]
    stop = checked[-1]
    assert stop["stopped"] and stop["kl"] > 0.3 and all(h["kl"] <= 0.3 for h in checked[:-1])
    if len(checked) > 1:
        assert stop["kept"] == checked[-2]["iteration"] and "the last check within the thresholds" in budget.stderr
        assert same(weights(blind / "rounds" / "001" / "policy" / "final"),
                    weights(stage / "guard" / f"best-{stop['kept']:06d}"))
    else:
        assert stop["kept"] is None and "no check was within the thresholds" in budget.stderr


def test_bad_guard_and_uncertainty_settings_are_one_line_errors(rl_run):
    """The tiny run's prompts are not the built-in task's: no gold judge; a missing held-out model; a conservative
    reward of a one-head model. Each stops before training with one line, exit 2."""
    for extra, message in ((["guard.heldout=gold"], "set guard.prompts.path"),
                           ([f"guard.prompts={rl_run / 'prompts.jsonl'}"], "guard.heldout=gold: the gold judge scores the built-in story task only"),
                           ([f"guard.heldout={rl_run / 'nowhere'}"], "guard heldout"),
                           (["guard.every=0", "reward.uncertainty=min"], "reward.uncertainty=min needs at least two "
                                                                         "reward estimates")):
        result = ppo(rl_run, *extra)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr
        assert not (rl_run / "rounds" / "001" / "policy" / "final").exists()
