"""`alignloop reward` and `alignloop reward eval`: preferences -> `rounds/NNN/reward/final/` -> figures.

Rerunning `alignloop reward` resumes from the newest checkpoint; after the
stage finished with the same inputs (settings, backbone and data, by content)
it does nothing. A model made from other inputs is refused unless `--force`;
judgments made after a round's model started are left for the next round.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from alignloop import atomic
from alignloop.errors import CheckpointError, ConfigError, DataError
from alignloop.models.lora import describe, with_lora
from alignloop.provenance import (
    DONE,
    FRESH,
    DigestCache,
    StageInputs,
    plan_stage,
    record_finished,
    record_started,
)
from alignloop.reward.config import RewardConfig, RewardDataConfig, RewardEvalConfig
from alignloop.reward.data import (
    PreferenceBatches,
    Preferences,
    encode_groups,
    group_by_prompt,
    read_preference_file,
    read_store,
    split_groups,
)
from alignloop.reward.ensemble import RewardEnsemble, ensemble_members, load_ensemble
from alignloop.reward.model import RewardModel, build_reward_model, build_scratch_reward_model, load_reward_model
from alignloop.reward.train import RewardTrainResult, train_reward_model
from alignloop.runs import RunDir, read_record
from alignloop.train import distributed
from alignloop.train.checkpoints import latest_checkpoint, load_training_state

STAGE = "reward"
Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def store_location(run: RunDir, db: Optional[str]) -> str:
    return db or str(run.feedback_db)


def newest_store_round(target: str) -> Optional[int]:
    """The highest round number in the store, or None (no store, or no rounds)."""
    if "://" not in target and not Path(target).exists():
        return None
    from alignloop.feedback import open_store

    with open_store(target) as store:
        numbers = [r["number"] for r in store.rounds()]
    return max(numbers) if numbers else None


def resolve_round(run: RunDir, wanted: Optional[int], db: Optional[str]) -> int:
    """The round to write into: the one asked for, else the newest in the store, else 1."""
    if wanted is not None:
        return wanted
    return newest_store_round(store_location(run, db)) or 1


def reward_dir(run: RunDir, round_number: int) -> Path:
    return run.round_dir(round_number) / STAGE


def read_preferences(run: RunDir, data: RewardDataConfig, db: Optional[str], round_number: Optional[int] = None,
                     max_judgment_id: Optional[int] = None) -> Preferences:
    """Preferences from `data.path`, else from the run's feedback store: the judgments of rounds up to
    `round_number` (with data.rounds=all), made no later than `max_judgment_id` when given."""
    if data.path:
        return read_preference_file(data.path, data.lines, data.aggregate, data.ties, data.ratings)
    target = store_location(run, db)
    if "://" not in target and not Path(target).exists():
        raise DataError(f"no preference data: set data.path=FILE, or collect feedback into {target} first "
                        f"(`alignloop sample --run {run.root}` then `alignloop annotate`)")
    return read_store(target, data.rounds, data.aggregate, data.ties, data.ratings, upto_round=round_number,
                      max_judgment_id=max_judgment_id)


def default_backbone(run: RunDir) -> Path:
    for candidate in (run.final("sft"), run.final("pretrain")):
        if candidate.exists():
            return candidate
    raise CheckpointError(f"no backbone for the reward model: {run.root} has no sft/final or pretrain/final; "
                          f"set model.path=CHECKPOINT (e.g. a MiniLM directory) or model.scratch=true")


def _scratch_tokenizer(run: RunDir, prefs: Preferences, cfg: RewardConfig, out_dir: Path, log: Log):
    from alignloop.tokenizer import load_tokenizer

    if (run.tokenizer / "tokenizer_config.json").exists():
        return load_tokenizer(run.tokenizer)
    target = out_dir / "tokenizer"
    # With several processes rank 0 trains and saves it; the others then load what it saved.
    if distributed.is_main():
        _train_scratch_tokenizer(prefs, cfg, target, log)
    distributed.barrier()
    return load_tokenizer(target)


def _train_scratch_tokenizer(prefs: Preferences, cfg: RewardConfig, target: Path, log: Log) -> None:
    from alignloop.tokenizer import train_tokenizer

    texts = [c.prompt + " " + c.chosen + " " + c.rejected for c in prefs.comparisons]
    texts += [r.prompt + " " + " ".join(r.responses) for r in prefs.rankings]
    log(f"{STAGE}: training a byte-level BPE tokenizer (vocab {cfg.model.tokenizer_vocab}) on the preference texts")
    tokenizer = train_tokenizer(texts, cfg.model.tokenizer_vocab)
    with atomic.atomic_directory(target) as tmp:
        tokenizer.save_pretrained(str(tmp))


def _new_reward_model(run: RunDir, cfg: RewardConfig, prefs: Preferences, out_dir: Path, log: Log
                      ) -> tuple[RewardModel, str]:
    heads = cfg.ensemble.heads
    if cfg.model.scratch and cfg.model.lora.enabled:
        raise ConfigError("model.lora needs a trained backbone: a from-scratch reward model (model.scratch=true) "
                          "must train every weight")
    if cfg.model.scratch:
        tokenizer = _scratch_tokenizer(run, prefs, cfg, out_dir, log)
        torch.manual_seed(cfg.train.seed)
        return build_scratch_reward_model(tokenizer, cfg.model.preset, cfg.model.max_length, heads), \
            f"a from-scratch {cfg.model.preset} decoder"
    backbone = Path(cfg.model.path) if cfg.model.path else default_backbone(run)
    torch.manual_seed(cfg.train.seed)  # the fresh head's initial weights depend on the seed alone
    reward = build_reward_model(backbone, heads, cfg.model.max_length, cfg.model.pooling)
    return reward, str(backbone)


def _backbone(run: RunDir, cfg: RewardConfig) -> Optional[Path]:
    return None if cfg.model.scratch else (Path(cfg.model.path) if cfg.model.path else default_backbone(run))


def _stage_inputs(run: RunDir, cfg: RewardConfig, prefs: Optional[Preferences], cache: DigestCache,
                  db: Optional[str]) -> StageInputs:
    """Settings, backbone and data by content: the data file's bytes, or the judgments read from the store."""
    inputs = StageInputs.of(cfg, exclude=("model.path", "data.path"))
    backbone = _backbone(run, cfg)
    if backbone is not None:
        inputs.add_artifact("backbone", backbone, cache)
    elif (run.tokenizer / "tokenizer_config.json").exists():
        inputs.add_artifact("tokenizer", run.tokenizer, cache)
    if cfg.data.path:
        inputs.add_artifact("data", cfg.data.path, cache)
    else:
        inputs.add_value("data", prefs.fingerprint, f"{prefs.judgments} judgments (ids up to {prefs.max_judgment_id}) "
                                                    f"in {store_location(run, db)}")
    return inputs


def _train_one(run: RunDir, cfg: RewardConfig, prefs: Preferences, stage_dir: Path, seed_offset: int,
               log: Log) -> RewardTrainResult:
    """Train (or resume) one reward model into `stage_dir/final`."""
    groups = group_by_prompt(prefs)
    train_groups, val_groups = split_groups(groups, cfg.data.val_fraction, cfg.data.seed)
    checkpoint = latest_checkpoint(stage_dir)
    state = None
    if checkpoint is not None and cfg.model.lora.enabled:
        # A LoRA checkpoint holds the adapter and head alone: the frozen backbone is rebuilt as at the start.
        reward, _ = _new_reward_model(run, cfg, prefs, stage_dir, log)
        state = load_training_state(checkpoint)
        source = str(checkpoint)
    elif checkpoint is not None:
        reward = build_reward_model(checkpoint, cfg.ensemble.heads, cfg.model.max_length, cfg.model.pooling)
        state = load_training_state(checkpoint)
        source = str(checkpoint)
    else:
        reward, source = _new_reward_model(run, cfg, prefs, stage_dir, log)
    train_cfg = cfg.train.model_copy(update={"seed": cfg.train.seed + seed_offset})
    reward.model = with_lora(reward.model, cfg.model.lora, "seq_cls", checkpoint, train_cfg.seed)
    pack = train_cfg.share_prompt and reward.can_pack
    encoded_train = encode_groups(train_groups, reward.encode, encode_parts=reward.encode_group if pack else None)
    encoded_val = encode_groups(val_groups, reward.encode, first_uid=len(encoded_train))
    batches = PreferenceBatches(encoded_train, train_cfg.batch_size, reward.tokenizer.pad_token_id, train_cfg.seed,
                                packed=pack)
    n_train = sum(g.group.n_comparisons for g in encoded_train)
    n_val = sum(g.group.n_comparisons for g in encoded_val)
    kind = "decoder, last token" if reward.is_decoder else f"encoder, {reward.pooling} pooling"
    log(f"{STAGE}: {n_train:,} training comparisons on {len(encoded_train):,} prompts, {n_val:,} validation "
        f"comparisons on {len(encoded_val):,} prompts; backbone {source} ({kind}), {reward.num_heads} head(s); "
        f"{describe(reward.model)}")
    return train_reward_model(stage=STAGE, stage_dir=stage_dir, reward=reward, data=batches, val_groups=encoded_val,
                              cfg=train_cfg, loss_cfg=cfg.loss, bootstrap=cfg.ensemble.bootstrap,
                              resume_state=state, stats_groups=encoded_train + encoded_val, log=log)


def run_reward(run: RunDir, cfg: RewardConfig, log: Log = _stderr, db: Optional[str] = None, force: bool = False
               ) -> Optional[RewardTrainResult]:
    """Train (or resume, or skip if finished) the reward model of a round; returns None when skipped.

    From the feedback store, round N's model reads the judgments of rounds 1..N; once it has started, the
    judgments made after that are left for the next round (or `force`, which starts over on all of them).
    A finished or half-done model made from other inputs is refused unless `force`.
    """
    distributed.start(cfg.train.device)  # under a launcher, join the other processes before touching files
    round_number = resolve_round(run, cfg.round, db)
    stage_dir = reward_dir(run, round_number)
    manifest_key = f"{STAGE}:{round_number:03d}"
    final = stage_dir / "final"
    cache = DigestCache.for_run(run)
    entry = run.read_manifest()["stages"].get(manifest_key) or {}
    prefs = None if cfg.data.path else read_preferences(run, cfg.data, db, round_number, entry.get("data_upto"))
    inputs = _stage_inputs(run, cfg, prefs, cache, db)
    plan = plan_stage(run, manifest_key, inputs, final=final,
                      work=[stage_dir / name for name in ("checkpoints", "best", "ensemble", "tokenizer", "eval.json")],
                      force=force, log=log, new_run_hint=f"train a new round's model (round={round_number + 1})",
                      cache=cache)
    if plan.action == DONE:
        later = f"; {prefs.newer} judgments made since then are left for the next round" if prefs and prefs.newer \
            else ""
        log(f"{STAGE}: already finished ({final}){later}; nothing to do")
        return None
    if plan.action == FRESH and prefs is not None and prefs.newer:
        prefs = read_preferences(run, cfg.data, db, round_number)  # starting over: every judgment there is now
        inputs = _stage_inputs(run, cfg, prefs, cache, db)
    if prefs is None:
        prefs = read_preferences(run, cfg.data, db)
    if prefs.skipped:
        log(f"{STAGE}: {prefs.skipped_summary()}")
    run.record_config(STAGE, cfg)
    record_started(run, manifest_key, inputs, data_upto=prefs.max_judgment_id, round=round_number)

    result = _train_one(run, cfg, prefs, stage_dir, 0, log)
    for member in range(2, cfg.ensemble.models + 1):
        log(f"{STAGE}: ensemble member {member} of {cfg.ensemble.models}")
        _train_one(run, cfg, prefs, stage_dir / "ensemble" / f"member-{member:02d}", member - 1, log)
    if cfg.ensemble.models > 1 and distributed.is_main():
        record_ensemble_spread(stage_dir, prefs, cfg, log)
    record_finished(run, manifest_key, inputs, final, cache, final=str(final), val_accuracy=result.val_accuracy,
                    round=round_number, data_upto=prefs.max_judgment_id, judgments=prefs.judgments or None)
    accuracy = f"; validation accuracy {result.val_accuracy:.4f}" if result.val_accuracy is not None else ""
    log(f"{STAGE}: done in {result.wall_s:.0f}s ({result.pairs_per_s:.1f} pairs/s){accuracy}; model in {final}")
    return result


def record_ensemble_spread(stage_dir: Path, prefs: Preferences, cfg: RewardConfig, log: Log) -> None:
    """Write the spread of the whole ensemble on the validation responses into final/'s reward_stats.json
    (`ensemble_spread_q95`, `ensemble_estimates`): RL's yardstick when it scores with every member."""
    from alignloop.reward.model import STATS_FILE, read_stats
    from alignloop.train.device import pick_device

    _, val_groups = split_groups(group_by_prompt(prefs), cfg.data.val_fraction, cfg.data.seed)
    pairs = [(g.prompt, r) for g in val_groups for r in g.responses][:cfg.train.stats_responses]
    if not pairs:
        return
    ensemble = load_ensemble(stage_dir, pick_device(cfg.train.device))
    stats = read_stats(stage_dir / "final")
    stats.ensemble_spread_q95 = ensemble.spread_q95([p for p, _ in pairs], [r for _, r in pairs],
                                                    cfg.train.batch_size)
    stats.ensemble_estimates = ensemble.size
    atomic.write_json(stage_dir / "final" / STATS_FILE, stats.to_json())
    log(f"{STAGE}: spread of the ensemble's {ensemble.size} estimates on {len(pairs)} validation responses: "
        f"95th percentile {stats.ensemble_spread_q95:.3f} (normalised units)")


# ---- evaluation ---------------------------------------------------------------------------

def newest_reward_round(run: RunDir) -> Optional[int]:
    rounds = sorted((run.root / "rounds").glob(f"[0-9][0-9][0-9]/{STAGE}/final")) \
        if (run.root / "rounds").exists() else []
    return int(rounds[-1].parent.parent.name) if rounds else None


def _eval_data_config(run: RunDir, cfg: RewardEvalConfig, explicit: set[str]) -> RewardDataConfig:
    """The data settings of evaluation: those training used (for the same split), unless given."""
    recorded = run.read_configs().get(STAGE, {}).get("data") if not cfg.data.path else None
    if not recorded:
        return cfg.data
    merged = {**recorded, **{k: v for k, v in cfg.data.model_dump().items() if k in explicit}}
    return RewardDataConfig.model_validate(merged)


def read_gold_pairs(path: Path) -> tuple[list[str], list[str], list[str]]:
    """(prompts, responses a, responses b) of a JSONL file with one {prompt, a, b} object a line."""
    from alignloop.data.jsonl import iter_jsonl

    prompts, a, b = [], [], []
    for number, record in iter_jsonl(path, "gold pairs file"):
        if not all(isinstance(record.get(k), str) for k in ("prompt", "a", "b")):
            raise DataError(f"{path}:{number}: a gold pair needs string fields prompt, a and b")
        prompts.append(record["prompt"])
        a.append(record["a"])
        b.append(record["b"])
    if not prompts:
        raise DataError(f"{path}: no pairs")
    return prompts, a, b


def _gold_pairs(run: RunDir, cfg: RewardEvalConfig, log: Log, save_to: Optional[Path] = None
                ) -> tuple[Optional[tuple[list[str], list[str], list[str]]], Optional[str]]:
    """(pairs, None): fresh pairs sampled from the policy on the built-in task's evaluation prompts (written to
    `save_to`), or those of `gold.pairs_file`; (None, why) when there are none to judge."""
    from alignloop.evaluation.gold_scope import gold_omission
    from alignloop.stages import builtin_paths, read_prompts

    if cfg.gold.pairs_file:
        pairs = read_gold_pairs(Path(cfg.gold.pairs_file))
        reason = gold_omission(run, pairs[0], cfg.gold.pairs_file)
        return (None, reason) if reason else (pairs, None)
    prompt_file = Path(cfg.gold.prompts) if cfg.gold.prompts else builtin_paths(run)["eval_prompts"]
    if cfg.gold.pairs == 0:
        return None, "gold.pairs=0"
    if not prompt_file.exists():
        return None, gold_omission(run, [], prompt_file) or f"no prompt file {prompt_file}"
    policy = Path(cfg.gold.policy) if cfg.gold.policy else run.final("sft")
    if not policy.exists():
        return None, f"no policy at {policy} to sample gold pairs from"
    reason = gold_omission(run, read_prompts(prompt_file), prompt_file)
    if reason:
        return None, reason
    from alignloop.generation.text import complete
    from alignloop.models.causal_lm import load_causal_lm
    from alignloop.tokenizer import load_tokenizer
    from alignloop.train.device import pick_device

    prompts = read_prompts(prompt_file)
    prompts = (prompts * (cfg.gold.pairs // len(prompts) + 1))[: cfg.gold.pairs]
    model = load_causal_lm(policy).to(pick_device(cfg.device)).eval()
    tokenizer = load_tokenizer(policy)
    log(f"{STAGE} eval: sampling {len(prompts)} fresh pairs from {policy} for the gold judge")
    a = complete(model, tokenizer, prompts, max_new_tokens=cfg.gold.max_new_tokens,
                 temperature=cfg.gold.temperature, seed=cfg.gold.seed, batch_size=64)
    b = complete(model, tokenizer, prompts, max_new_tokens=cfg.gold.max_new_tokens,
                 temperature=cfg.gold.temperature, seed=cfg.gold.seed + 1, batch_size=64)
    if save_to is not None:
        # Sampling differs between machines (CPU and CUDA draw differently): the file lets another machine
        # judge exactly these pairs (gold.pairs_file).
        atomic.write_text(save_to, "".join(json.dumps({"prompt": p, "a": x, "b": y}) + "\n"
                                           for p, x, y in zip(prompts, a, b)))
    return (prompts, a, b), None


def _eval_inputs(cfg: RewardEvalConfig, path: Path, cache: DigestCache) -> StageInputs:
    inputs = StageInputs.of(cfg, exclude=("model", "data.path", "gold.pairs_file", "gold.prompts", "gold.policy"))
    inputs.add_artifact("reward_model", path, cache)
    for name, value in (("data", cfg.data.path), ("gold_pairs", cfg.gold.pairs_file), ("gold_prompts", cfg.gold.prompts),
                        ("gold_policy", cfg.gold.policy)):
        if value:
            inputs.add_artifact(name, value, cache)
    return inputs


def run_reward_eval(run: RunDir, cfg: RewardEvalConfig, log: Log = _stderr, db: Optional[str] = None,
                    explicit: Optional[set[str]] = None, keep_record: bool = True, force: bool = False
                    ) -> dict[str, Any]:
    """Accuracy (with its 95% interval), loss, ECE, accuracy by margin, length and truncation diagnostics of a
    reward model (`alignloop.reward.evaluate.preference_report`), and agreement with the gold judge on the built-in
    task (elsewhere `gold_omitted` says why there is none).

    `explicit`: the data.* keys the user set, which win over those recorded by training. For a round's own
    model with `keep_record`, the figures are the run's record (`rounds/NNN/reward/eval.json`, with the gold
    pairs in `gold_pairs.jsonl`, manifest entry `reward-eval:NNN`): kept when made from the same inputs,
    refused (unless `force`) when from others. Without `keep_record` nothing in the run changes.
    """
    from alignloop.reward.evaluate import gold_agreement, preference_report

    if cfg.model:
        path = Path(cfg.model)
        round_number = cfg.round
    else:
        round_number = cfg.round or newest_reward_round(run)
        if round_number is None:
            raise CheckpointError(f"no reward model in {run.root}; run `alignloop reward --run {run.root}` first "
                                  f"or pass model=PATH")
        path = reward_dir(run, round_number) / "final"
    keep_record = keep_record and round_number is not None and not cfg.model
    if keep_record:
        key, cache, record = f"{STAGE}-eval:{round_number:03d}", DigestCache.for_run(run), \
            reward_dir(run, round_number) / "eval.json"
        inputs = _eval_inputs(cfg, path, cache)
        plan = plan_stage(run, key, inputs, final=record, work=[record], force=force, log=log,
                          new_run_hint="write these figures to a file of their own with --json OUT", cache=cache)
        if plan.action == DONE:
            log(f"{STAGE} eval: {record} already holds this evaluation; nothing to do")
            return read_record(record)
        record_started(run, key, inputs)
    reward = load_reward_model(path, device=None if cfg.device == "auto" else cfg.device)
    result: dict[str, Any] = {"model": str(path)}
    ensemble = _scored_ensemble(reward, [] if cfg.model or round_number is None else
                                ensemble_members(reward_dir(run, round_number)), result, log)

    data = _eval_data_config(run, cfg, explicit or set())
    has_store = "://" in store_location(run, db) or Path(store_location(run, db)).exists()
    if data.path or has_store:
        # The round's own model is checked on the judgments it was trained on (the same validation split).
        trained = {} if cfg.model or round_number is None else \
            run.read_manifest()["stages"].get(f"{STAGE}:{round_number:03d}", {})
        prefs = read_preferences(run, data, db, None if cfg.model else round_number, trained.get("data_upto"))
        if prefs.skipped:
            log(f"{STAGE} eval: {prefs.skipped_summary()}")
        groups = group_by_prompt(prefs)
        split = cfg.split if cfg.split != "auto" else ("all" if cfg.data.path else "val")
        if split == "val":
            _, groups = split_groups(groups, data.val_fraction, data.seed)
        encoded = encode_groups(groups, reward.encode)
        figures = preference_report(reward, encoded, cfg.batch_size, cfg.bins)
        result.update(figures)
        result["data"] = prefs.source
        result["split"] = split
        result["skipped"] = dict(prefs.skipped)
        if figures["n"]:
            log(f"{STAGE} eval: {accuracy_line(figures)} on {figures['n']} pairs ({split} split of {prefs.source})")
            log(f"{STAGE} eval: {length_line(figures)}")
            if ensemble is not None:  # the members read alike (`_scored_ensemble`), so the same ids serve
                result["ensemble"] = preference_report(ensemble, encoded, cfg.batch_size, cfg.bins)
                log(f"{STAGE} eval: the {ensemble_words(ensemble)}: {accuracy_line(result['ensemble'])}")
                log(f"{STAGE} eval: the {ensemble_words(ensemble)}: {length_line(result['ensemble'])}")

    save_to = reward_dir(run, round_number) / "gold_pairs.jsonl" if keep_record else None
    pairs, gold_omitted = _gold_pairs(run, cfg, log, save_to)
    result["gold_omitted"] = gold_omitted
    if gold_omitted:
        log(f"{STAGE} eval: no agreement with the gold judge: {gold_omitted}")
    if pairs is not None:
        gold = gold_agreement(reward, *pairs, batch_size=cfg.batch_size, bins=cfg.bins)
        result["gold"] = gold
        source = f"pairs from {cfg.gold.pairs_file}" if cfg.gold.pairs_file else "fresh pairs"
        log(f"{STAGE} eval: agreement with the gold judge: {accuracy_line(gold)} on {gold['n']} {source} "
            f"({gold['gold_ties_skipped']} gold ties left out)")
        if "accuracy" not in result:
            result.update({k: gold[k] for k in ("accuracy", "loss", "ece", "n")})
        if ensemble is not None:
            result["gold_ensemble"] = gold_agreement(ensemble, *pairs, batch_size=cfg.batch_size, bins=cfg.bins)
            log(f"{STAGE} eval: agreement of the {ensemble_words(ensemble)} with the gold judge: "
                f"{accuracy_line(result['gold_ensemble'])}")
    if "accuracy" not in result:
        raise DataError("nothing to evaluate on: give data.path=FILE, or collect feedback in the run's store"
                        + (f" (no gold check: {gold_omitted})" if gold_omitted else ""))
    if keep_record:
        atomic.write_json(record, result)
        record_finished(run, key, inputs, record, cache, accuracy=result.get("accuracy"))
    return result


def _scored_ensemble(reward: RewardModel, members: list[Path], result: dict[str, Any], log: Log
                     ) -> Optional[RewardEnsemble]:
    """The reward RL optimises by default, when it is more than `reward` alone: every head of `reward` and of
    the round's other ensemble `members` (`final/` first), as `RewardEnsemble` scores them. None when there is
    one estimate, or (said in `result["ensemble_omitted"]`) when the members read replies differently."""
    if len(members) < 2 and reward.num_heads < 2:
        return None
    ensemble = RewardEnsemble([reward, *(load_reward_model(p, reward.device) for p in members[1:])])
    problem = ensemble.reading_problem()
    if problem:
        result["ensemble_omitted"] = problem
        log(f"{STAGE} eval: no figures for the ensemble: {problem}")
        return None
    result["ensemble_estimates"] = {"models": len(ensemble.members), "estimates": ensemble.size}
    return ensemble


def ensemble_words(ensemble: RewardEnsemble) -> str:
    """How the logs name an ensemble's reward: what it is made of."""
    return (f"ensemble's mean normalised reward ({len(ensemble.members)} model(s), {ensemble.size} estimates, "
            f"what RL optimises with reward.uncertainty=mean)")


def accuracy_line(figures: dict[str, Any]) -> str:
    """Accuracy with its 95% interval, loss and ECE, in a few words."""
    if figures.get("accuracy") is None:
        return "accuracy n/a"
    interval = figures.get("accuracy_ci")
    return (f"accuracy {figures['accuracy']:.4f}" + (f" [{interval[0]:.4f}, {interval[1]:.4f}]" if interval else "")
            + f", loss {figures['loss']:.4f}, ECE {figures['ece']:.4f}")


def length_line(figures: dict[str, Any]) -> str:
    """The length diagnostics in one line: where a reward model that pays for length shows it."""
    length, cut = figures.get("length") or {}, (figures.get("truncation") or {}).get("cut") or {}

    def share(value: Optional[float]) -> str:
        return "n/a" if value is None else f"{value:.1%}"

    rho = length.get("reward_length_spearman")
    return (f"accuracy where people chose the longer reply {share((length.get('chosen_longer') or {}).get('accuracy'))}"
            f", the shorter {share((length.get('chosen_shorter') or {}).get('accuracy'))}; "
            f"'longer wins' scores {share(length.get('longer_wins_accuracy'))}, the model prefers the longer reply "
            f"{share(length.get('model_prefers_longer'))}; rank correlation of reward with length "
            f"{'n/a' if rho is None else f'{rho:.2f}'}; {cut.get('n', 0)} pairs with a reply cut at max_length "
            f"(accuracy {share(cut.get('accuracy'))})")
