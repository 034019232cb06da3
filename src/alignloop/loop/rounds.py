"""`alignloop loop`: round after round of sample -> feedback -> reward model -> RL -> evaluation.

Each round `r` reads and writes `rounds/00r/`. The policy of round r starts
from round r-1's (round 1: SFT); the reference stays the SFT model (unless
`reference=previous`); the reward model is retrained on all feedback so far,
warm-started from round r-1's. The RL step is `loop.algorithm`'s
(`alignloop.loop.algorithms`: ppo, grpo, rloo, dpo or best-of-n distillation).

Crash safety: every step records itself in manifest.json (`sample:00r`,
`feedback:00r`, `reward:00r`, `reward-eval:00r`, the algorithm's stages such as
`ppo:00r`, `eval:00r`) and is itself resumable
(samples.jsonl before the store, judgments committed one by one, training
checkpoints), so after `kill -9` the same command picks up where it died, redoes
no finished step, and loses no judgment.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable

from alignloop.errors import AlignloopError, DataError
from alignloop.evaluation.stage import run_eval
from alignloop.feedback import open_store
from alignloop.feedback.simulate import run_simulated
from alignloop.loop.algorithms import train_policy
from alignloop.loop.config import LoopConfig
from alignloop.loop.report import write_report
from alignloop.reward.stage import run_reward, run_reward_eval
from alignloop.runs import RunDir, round_stage_key
from alignloop.sample.stage import run_sample
from alignloop.sft.stage import start_checkpoint
from alignloop.train.crash import crash_point

Log = Callable[[str], None]


def sft_model(run: RunDir) -> Path:
    """The model every round is measured against and kept close to: SFT, else the pretrained model."""
    return run.final("sft") if run.final("sft").exists() else start_checkpoint(run, None)


def round_policy(run: RunDir, number: int) -> Path:
    """The policy a round starts from: the previous round's, or the SFT model for round 1."""
    return sft_model(run) if number == 1 else run.round_dir(number - 1) / "policy" / "final"


def round_judgments(store, number: int) -> tuple[int, int]:
    """(judgments made, judgments wanted) for the items of round `number`."""
    from sqlalchemy import func, select

    from alignloop.feedback.models import Item, Judgment, Round

    with store.read() as session:
        round_id = session.scalar(select(Round.id).where(Round.number == number))
        made = session.scalar(select(func.count(Judgment.id)).join(Item, Judgment.item_id == Item.id)
                              .where(Item.round_id == round_id)) or 0
        # An item without its own overlap takes the store's setting.
        own = session.scalar(select(func.sum(Item.overlap)).where(Item.round_id == round_id)) or 0
        inherited = session.scalar(select(func.count(Item.id)).where(Item.round_id == round_id,
                                                                     Item.overlap.is_(None))) or 0
    return int(made), int(own) + int(inherited) * store.overlap


def collect_simulated(run: RunDir, cfg: LoopConfig, number: int, log: Log) -> int:
    store = open_store(run.feedback_db)
    try:
        settings = cfg.feedback.model_copy(update={"seed": cfg.feedback.seed + number})
        run_simulated(store, settings, log=log)
        made, wanted = round_judgments(store, number)
    finally:
        store.close()
    if made < wanted:
        raise AlignloopError(f"round {number}: only {made} of {wanted} judgments came in; add personas "
                             f"(feedback.personas >= overlap) and rerun")
    return made


def collect_human(run: RunDir, cfg: LoopConfig, number: int, log: Log) -> int:
    """Serve the annotation app and wait until the round's quota of judgments is in."""
    from alignloop.web.app import create_app
    from alignloop.web.server import background

    store = open_store(run.feedback_db)
    try:
        made, wanted = round_judgments(store, number)
        quota = min(cfg.human.quota or wanted, wanted)
        with background(create_app(store), host=cfg.human.host, port=cfg.human.port) as url:
            log(f"round {number}: annotation app at {url} — waiting for {quota} judgments "
                f"(create accounts with `alignloop users add NAME --run {run.root}`)")
            last = -1
            while made < quota:
                if made != last:
                    log(f"round {number}: {made}/{quota} judgments")
                    last = made
                time.sleep(cfg.human.poll_seconds)
                made, _ = round_judgments(store, number)
            log(f"round {number}: {made}/{quota} judgments — quota reached")
            time.sleep(cfg.human.linger_seconds)
        return made
    finally:
        store.close()


def run_round(run: RunDir, cfg: LoopConfig, number: int, human: bool, log: Log, force: bool = False) -> dict:
    """One round, each step skipped when the manifest says it is done with the same inputs.

    A step whose recorded work came from other inputs is refused unless `force` (see `alignloop.provenance`).
    """
    policy = round_policy(run, number)
    reference = sft_model(run)

    log(f"round {number}: [1/5] sampling from {policy}")
    store = open_store(run.feedback_db)
    try:
        store.set_overlap(cfg.overlap)
    finally:
        store.close()
    sample_cfg = cfg.sample.model_copy(update={"round": number, "seed": cfg.sample.seed + 1000 * number})
    run_sample(run, sample_cfg, policy, log=log, force=force)
    crash_point(f"loop:{number}:sampled")

    key = round_stage_key("feedback", number)
    if not run.stage_done(key):
        log(f"round {number}: [2/5] feedback from {'people' if human else 'simulated annotators'}")
        run.mark_stage(key, "running")
        made = collect_human(run, cfg, number, log) if human else collect_simulated(run, cfg, number, log)
        run.mark_stage(key, "done", judgments=made)
    crash_point(f"loop:{number}:judged")

    log(f"round {number}: [3/5] reward model on all feedback so far")
    reward_cfg = cfg.reward.model_copy(deep=True)
    reward_cfg.round = number
    previous_reward = run.round_dir(number - 1) / "reward" / "final"
    if number > 1 and previous_reward.exists() and not cfg.reward.model.path:
        reward_cfg.model.path = str(previous_reward)  # warm start
    run_reward(run, reward_cfg, log, force=force)
    reward_eval_cfg = cfg.reward_eval.model_copy(deep=True)
    reward_eval_cfg.round = number
    try:
        run_reward_eval(run, reward_eval_cfg, log, force=force)
    except DataError as exc:  # a diagnostic for the report: a round too small to check still trains
        log(f"round {number}: the reward model was not evaluated: {exc}")
    crash_point(f"loop:{number}:rewarded")

    algorithm = train_policy(run, cfg, number, policy, reference, log, force)
    crash_point(f"loop:{number}:trained")

    log(f"round {number}: [5/5] evaluation against the SFT model")
    eval_cfg = cfg.eval.model_copy(deep=True)
    eval_cfg.round = number
    eval_cfg.models.baseline = str(reference)
    result = run_eval(run, eval_cfg, checkpoint=run.round_dir(number) / "policy" / "final", log=log, force=force)
    return {**result, "algorithm": algorithm}


def run_loop(run: RunDir, cfg: LoopConfig, human: bool = False,
             log: Log = lambda m: print(m, file=sys.stderr), force: bool = False) -> list[dict]:
    """Run rounds 1..cfg.rounds (finished ones are skipped); returns each round's evaluation."""
    sft_model(run)  # fail early, with the command to run, when there is no model yet
    run.record_config("loop", cfg)
    results = []
    for number in range(1, cfg.rounds + 1):
        results.append(run_round(run, cfg, number, human, log, force))
        if cfg.report:
            write_report(run)
    return results
