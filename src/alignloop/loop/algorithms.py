"""Step 4 of a loop round: the round's policy, by the method `loop.algorithm` names.

Every method starts from the previous round's policy (round 1: the SFT model)
and writes `rounds/NNN/policy/final/`, so evaluation, the next round's
sampling, the report and the summary read every round alike:

- ppo: `alignloop ppo` against the round's reward model (section `ppo`).
- grpo, rloo: `alignloop grpo` against the round's reward model, with the
  group-normalised (grpo) or leave-one-out (rloo: k1 KL in the reward)
  baseline (sections `grpo`, `rloo`); manifest stage `grpo:NNN` for both.
- dpo: online, iterative DPO (Xiong et al. 2024): `alignloop dpo` on this
  round's judgments alone (`data.feedback_round` is the round), which rate
  responses the current policy wrote, so every round's pairs are on-policy
  (section `dpo`). The reward model is still trained every round: the
  evaluation's reward-model win rate and the report's reward-model checks
  use it, and it costs little next to the round's sampling.
- bon: best-of-n distillation (`alignloop.loop.distill`, section `bon`).

The frozen reference (KL leash, DPO's reference) is the SFT model, as in
Ouyang et al. 2022 and Xiong et al. 2024's main runs; `loop.reference=previous`
takes the previous round's policy instead (a trust region per round).

`loop.kl_target=[2,4,6]` sets each round's KL target (ppo, grpo, rloo): with
the SFT reference, a budget to SFT that grows by round.

`loop.algorithm` may also be a list, one per round with the last repeating
(`[bon,bon,ppo]`): cheap best-of-n rounds first, PPO after.

A round keeps the algorithm it was started with: the loop records it in the
manifest (`algorithm:NNN`) before step 4 starts, and a rerun of that round
with another algorithm is refused in one line (or, with `--force`, the old
method's stages are marked stale and the round is trained again).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

from alignloop.errors import ConfigError
from alignloop.loop.config import KL_CONTROLLED, LoopConfig
from alignloop.runs import RunDir, round_stage_key

Log = Callable[[str], None]

# The manifest stages each algorithm leaves in a round.
STAGES = {"ppo": ("ppo",), "grpo": ("grpo",), "rloo": ("grpo",), "dpo": ("dpo",), "bon": ("distill-data", "distill")}
CHOICE = "algorithm"  # manifest entry `algorithm:NNN`: the method that makes rounds/NNN/policy/final


def round_algorithm(stages: dict[str, dict[str, Any]], number: int) -> Optional[str]:
    """The algorithm round `number` was started with, from the manifest's stages; None before its step 4."""
    entry = stages.get(round_stage_key(CHOICE, number)) or {}
    if entry.get("algorithm"):
        return entry["algorithm"]
    # A round trained before the loop recorded its choice, or by `alignloop ppo` itself, which writes the
    # round's policy/final: PPO.
    return "ppo" if round_stage_key("ppo", number) in stages else None


def claim_round(run: RunDir, number: int, algorithm: str, force: bool, log: Log) -> None:
    """Record `algorithm` as round `number`'s, or refuse when the round was started with another one."""
    stages = run.read_manifest()["stages"]
    recorded = round_algorithm(stages, number)
    if recorded is not None and recorded != algorithm:
        if not force:
            raise ConfigError(
                f"round {number} was trained with algorithm={recorded}, not {algorithm}: rerun with "
                f"algorithm={recorded} to continue this run, or use a new --run directory for {algorithm} "
                f"(--force retrains round {number} with {algorithm})")
        old = [key for key in (round_stage_key(s, number) for s in STAGES[recorded]) if key in stages]
        log(f"round {number}: --force: retraining with {algorithm} instead of {recorded}")
        run.mark_stale(old, reason=f"round {number} was retrained with {algorithm} (--force)")
    key = round_stage_key(CHOICE, number)
    if (stages.get(key) or {}).get("algorithm") != algorithm:
        run.mark_stage(key, "running", reset=True, algorithm=algorithm)


def train_policy(run: RunDir, cfg: LoopConfig, number: int, policy: Path, sft: Path, log: Log,
                 force: bool = False) -> str:
    """Step 4 of round `number` from `policy` with that round's algorithm (`LoopConfig.algorithm_of`), into
    rounds/NNN/policy/final; returns the algorithm."""
    algorithm = cfg.algorithm_of(number)
    claim_round(run, number, algorithm, force, log)
    final = run.round_dir(number) / "policy" / "final"
    reference = sft if cfg.reference == "sft" else policy
    if algorithm == "bon":
        from alignloop.loop.distill import run_distill

        log(f"round {number}: [4/5] best-of-{cfg.bon.n} distillation from {policy}")
        run_distill(run, cfg.bon, number, policy, final, log, force)
    else:
        log(f"round {number}: [4/5] {algorithm} from {policy}, reference {reference}")
        section = getattr(cfg, algorithm).model_copy(deep=True)
        section.run.round = number
        section.models.policy, section.models.reference = str(policy), str(reference)
        target = cfg.kl_target_of(number)
        if algorithm in KL_CONTROLLED and target is not None:
            section.reward.kl_target = target
        if algorithm == "ppo":
            from alignloop.rl.ppo import run_ppo

            run_ppo(run, section, log, force=force)  # PPO writes the round's policy/final itself
        elif algorithm == "dpo":
            from alignloop.rl.dpo import run_dpo

            section.data.feedback_round = number  # this round's judgments: on-policy pairs
            run_dpo(run, section, log, force=force, final=final)
        else:
            from alignloop.rl.grpo import run_grpo

            run_grpo(run, section, log, force=force, final=final)
    key = round_stage_key(CHOICE, number)
    if (run.read_manifest()["stages"].get(key) or {}).get("status") != "done":
        run.mark_stage(key, "done", algorithm=algorithm)
    return algorithm
