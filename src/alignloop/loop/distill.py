"""Best-of-n distillation, step 4 of a loop round with `loop.algorithm=bon`.

Two manifest stages, each resumable:

1. `distill-data:NNN`: the current policy answers each training prompt n times
   (`alignloop.rl.bon.best_of_n`: the shared sampler, the round's reward model
   picks), and the (prompt, best response) pairs go to
   `rounds/NNN/bon_distill/data.jsonl`, written atomically. A rerun after a
   crash reuses the file when it was made from the same inputs.
2. `distill:NNN`: the SFT stage's training (`alignloop.sft.stage.fine_tune`) of
   the current policy on those pairs; checkpoints in `rounds/NNN/distill/`,
   the policy in `rounds/NNN/policy/final/`.

This is expert iteration with the reward model as the expert (the "best-of-n
distillation" of the RLHF literature; Touvron et al. 2023 call it rejection
sampling fine-tuning). It is not `alignloop bon`, which measures best-of-n on
the evaluation prompts and trains nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

from alignloop.loop.config import BoNDistillConfig
from alignloop.provenance import DONE, DigestCache, StageInputs, plan_stage, record_finished, record_started
from alignloop.rl.inputs import load_prompts, prompts_path, reward_dir
from alignloop.runs import RunDir, round_stage_key
from alignloop.sft.config import SFTConfig, StartConfig, SupervisedDataConfig

Log = Callable[[str], None]

DATA_STAGE, TRAIN_STAGE = "distill-data", "distill"
NEW_RUN_HINT = "start a new run directory"


def distill_data_file(run: RunDir, number: int) -> Path:
    """Where round `number`'s (prompt, best response) pairs are kept."""
    return run.round_dir(number) / "bon_distill" / "data.jsonl"


def write_distill_data(run: RunDir, cfg: BoNDistillConfig, number: int, policy: Path, log: Log,
                       force: bool = False) -> Path:
    """Stage `distill-data:NNN`: the best of n responses of `policy` to each prompt, by the round's reward model."""
    import torch

    from alignloop.evaluation.stage import write_samples
    from alignloop.models.causal_lm import load_causal_lm
    from alignloop.rl.bon import best_of_n
    from alignloop.rl.rollout import open_reward_scorer
    from alignloop.tokenizer import load_tokenizer
    from alignloop.train.device import pick_device, precision_scope

    key, target = round_stage_key(DATA_STAGE, number), distill_data_file(run, number)
    reward, prompt_file = reward_dir(run, number), prompts_path(run, cfg.prompts)
    cache = DigestCache.for_run(run)
    # What shapes the pairs: the sampling settings (not the training ones, which read the file), the policy,
    # the reward model and the prompts.
    settings = {"n": cfg.n, "seed": cfg.seed, "prompts": cfg.prompts.model_dump(mode="json"),
                "sampling": cfg.sampling.model_dump(mode="json")}
    if cfg.reward != type(cfg.reward)():  # only when set, so rounds written before the setting existed still resume
        settings["reward"] = cfg.reward.model_dump(mode="json")
    inputs = StageInputs.of(settings, exclude=("prompts.path",))
    inputs.add_artifact("policy_start", policy, cache).add_artifact("reward_model", reward, cache)
    inputs.add_artifact("prompts", prompt_file, cache)
    plan = plan_stage(run, key, inputs, final=target, work=[target], force=force, log=log,
                      new_run_hint=NEW_RUN_HINT, cache=cache)
    if plan.action == DONE:
        log(f"{DATA_STAGE}: round {number} already written ({target}); nothing to do")
        return target
    record_started(run, key, inputs)
    if not target.exists():  # on a resume with the same inputs the file, written atomically, is whole
        prompts = load_prompts(run, cfg.prompts)
        device = pick_device(cfg.train.device)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        with precision_scope(device, cfg.train.precision, "bon.train.precision"), torch.no_grad():
            tokenizer = load_tokenizer(policy)
            model = load_causal_lm(policy).to(device).eval()
            scorer = open_reward_scorer(reward, device, tokenizer, cfg.reward, cfg.sampling.batch_size, DATA_STAGE,
                                        log)
            log(f"{DATA_STAGE}: round {number}: best of {cfg.n} from {policy} by {reward} on {len(prompts):,} "
                f"prompts from {prompt_file}")
            generator = torch.Generator(device=device).manual_seed(cfg.seed + 1000 * number)
            chosen = best_of_n(model, tokenizer, scorer, prompts, cfg.n, cfg.sampling, cfg.prompts.max_tokens,
                               generator, cfg.reward)
        write_samples(target, chosen)
    record_finished(run, key, inputs, target, cache, pairs=sum(1 for _ in target.open(encoding="utf-8")))
    return target


def run_distill(run: RunDir, cfg: BoNDistillConfig, number: int, policy: Path, final: Path,
                log: Log = lambda m: print(m, file=sys.stderr), force: bool = False):
    """Best-of-n distillation of round `number`: the pairs, then `policy` fine-tuned on them into `final`."""
    from alignloop.sft.stage import fine_tune

    data = write_distill_data(run, cfg, number, policy, log, force)
    sft_cfg = SFTConfig(model=StartConfig(path=str(policy)),
                        data=SupervisedDataConfig(path=str(data), **cfg.data.model_dump()),
                        train=cfg.train.model_dump(), ptx=cfg.ptx)
    return fine_tune(run, sft_cfg, key=round_stage_key(TRAIN_STAGE, number),
                     stage_dir=run.round_dir(number) / TRAIN_STAGE, final=final, start=policy, data_path=data,
                     new_run_hint=NEW_RUN_HINT, log=log, force=force)
