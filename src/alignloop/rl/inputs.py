"""Where stage 4 finds its inputs in a run directory: the round, the models, the prompts.

Defaults (each overridable in the config):
- round: the newest `rounds/NNN/` that holds a reward model, else 1;
- policy start: the run's `sft/final`, else `pretrain/final`;
- reference: the same checkpoint as the policy start;
- reward model: the round's `rounds/NNN/reward/final`;
- prompts: the built-in story openings (`data/stories.prompts.jsonl`);
  evaluation prompts: `data/stories.eval_prompts.jsonl`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from alignloop.errors import CheckpointError, DataError
from alignloop.models.causal_lm import check_checkpoint_dir
from alignloop.models.lora import LoraSettings, ReferenceView, with_lora
from alignloop.provenance import DigestCache, StageInputs, StagePlan, plan_stage
from alignloop.rl.config import PromptsConfig, RLModelsConfig
from alignloop.runs import RunDir
from alignloop.stages import builtin_paths, read_prompts


def reward_dir(run: RunDir, round_number: int) -> Path:
    return run.round_dir(round_number) / "reward" / "final"


def resolve_round(run: RunDir, requested: Optional[int]) -> int:
    """The round to work in: the requested one, else the newest with a reward model, else 1."""
    if requested is not None:
        return requested
    rounds = run.root / "rounds"
    numbers = sorted(int(p.name) for p in rounds.glob("[0-9][0-9][0-9]") if p.name.isdigit()) \
        if rounds.is_dir() else []
    for number in reversed(numbers):
        if reward_dir(run, number).exists():
            return number
    return numbers[-1] if numbers else 1


def default_start(run: RunDir) -> Path:
    """The run's SFT model, else its pretrained model."""
    for candidate in (run.final("sft"), run.final("pretrain")):
        if candidate.exists():
            return candidate
    raise CheckpointError(f"no policy to start from in {run.root}: neither sft/final nor pretrain/final exists; "
                          f"run `alignloop sft --run {run.root}` first or set models.policy")


@dataclass(frozen=True)
class ModelPaths:
    """The checkpoints of one stage-4 run, resolved and checked."""

    policy: Path
    reference: Path
    reward: Optional[Path]


def resolve_models(run: RunDir, cfg: RLModelsConfig, round_number: int, need_reward: bool = True) -> ModelPaths:
    """Fill unset model paths from the run directory and check that each is a readable checkpoint."""
    policy = Path(cfg.policy) if cfg.policy else default_start(run)
    reference = Path(cfg.reference) if cfg.reference else policy
    reward = None
    if need_reward:
        reward = Path(cfg.reward) if cfg.reward else reward_dir(run, round_number)
        if not reward.exists():
            raise CheckpointError(f"no reward model at {reward}; run `alignloop reward --run {run.root}` first "
                                  f"or set models.reward")
        check_checkpoint_dir(reward)
    return ModelPaths(check_checkpoint_dir(policy), check_checkpoint_dir(reference), reward)


def reward_members(reward: Optional[Path | str], setting: Optional[bool]) -> list[Path]:
    """The other members of the reward model's ensemble (`ensemble/member-*/final` next to its `final/`) that
    RL scores with: all of them when `setting` is None or true, none when false; a one-line error when
    `setting` is true and there are none."""
    from alignloop.errors import ConfigError
    from alignloop.reward.ensemble import ensemble_members

    if reward is None or setting is False:
        return []
    reward = Path(reward)
    found = [p for p in ensemble_members(reward.parent) if p.resolve() != reward.resolve()] \
        if (reward.parent / "ensemble").is_dir() else []
    if setting and not found:
        raise ConfigError(f"reward.members=true but {reward.parent / 'ensemble'} holds no member-*/final; train "
                          f"the reward model with ensemble.models>=2, or set reward.members=false")
    return found


def prompts_path(run: RunDir, cfg: PromptsConfig, kind: str = "prompts") -> Path:
    """The prompt file: the configured one, else the built-in set of this kind (prompts or eval_prompts)."""
    if cfg.path:
        return Path(cfg.path)
    path = builtin_paths(run)[kind]
    if not path.exists():
        raise DataError(f"no prompts: {path} does not exist (it is written by `alignloop pretrain` on the "
                        f"built-in corpus); set prompts.path")
    return path


def load_prompts(run: RunDir, cfg: PromptsConfig, kind: str = "prompts", limit: Optional[int] = None) -> list[str]:
    """The prompts of a stage-4 run (see `prompts_path`), at most `limit` (or `cfg.limit`)."""
    cap = min(x for x in (limit, cfg.limit) if x is not None) if (limit or cfg.limit) else None
    return read_prompts(prompts_path(run, cfg, kind), cfg.field, cap)


def load_policy_and_reference(paths: ModelPaths, checkpoint: Optional[Path], lora: LoraSettings,
                              device: torch.device, gradient_checkpointing: bool = False, seed: int = 0
                              ) -> tuple[object, object]:
    """The policy (resumed from `checkpoint` when given) and its frozen reference, on `device`.

    With LoRA the policy is the start checkpoint plus adapters (from `checkpoint` when resuming),
    and when the reference is that same start checkpoint it is the policy with its adapter off
    (`ReferenceView`): one copy of the weights instead of two.
    """
    from alignloop.models.causal_lm import load_causal_lm
    from alignloop.models.memory import enable_gradient_checkpointing

    if lora.enabled:
        policy = with_lora(load_causal_lm(paths.policy), lora, "causal_lm", checkpoint, seed).to(device)
    else:
        policy = load_causal_lm(checkpoint or paths.policy).to(device)
    if gradient_checkpointing:
        enable_gradient_checkpointing(policy)
    if lora.enabled and paths.reference.resolve() == paths.policy.resolve():
        reference = ReferenceView(policy)
    else:
        reference = load_causal_lm(paths.reference).to(device)
    return policy, reference


@dataclass
class OpenedModels:
    """The policy (from the newest checkpoint when resuming), its tokenizer and the reference, on a device."""

    device: torch.device
    checkpoint: Optional[Path]
    source: Path
    tokenizer: object
    policy: object
    reference: object


def open_models(paths: ModelPaths, stage_dir: Path, device_name: str, threads: Optional[int], seed: int,
                lora: Optional[LoraSettings] = None, gradient_checkpointing: bool = False) -> OpenedModels:
    """Load what every stage-4 trainer starts with; the policy resumes from `stage_dir`'s newest checkpoint."""
    from alignloop.tokenizer import load_tokenizer
    from alignloop.train import distributed
    from alignloop.train.checkpoints import latest_checkpoint

    device = distributed.start(device_name)  # under a launcher: join the others, take this rank's device
    if threads:
        torch.set_num_threads(threads)
    checkpoint = latest_checkpoint(stage_dir)
    source = checkpoint or paths.policy
    tokenizer = load_tokenizer(source)
    torch.manual_seed(seed)
    policy, reference = load_policy_and_reference(paths, checkpoint, lora or LoraSettings(), device,
                                                  gradient_checkpointing, seed)
    return OpenedModels(device, checkpoint, source, tokenizer, policy, reference)


def resolve_stage_inputs(run: RunDir, models: RLModelsConfig, prompts: PromptsConfig, round_request: Optional[int]
                         ) -> tuple[int, ModelPaths, Path, list[str]]:
    """(round, model paths, prompt file, prompts) of a PPO or GRPO run."""
    round_number = resolve_round(run, round_request)
    return (round_number, resolve_models(run, models, round_number), prompts_path(run, prompts),
            load_prompts(run, prompts))


# Settings that name files: the files are fingerprinted by content instead.
PATH_SETTINGS = ("models.policy", "models.reference", "models.reward", "prompts.path", "data.path", "data.store")


def stage_inputs(cfg, paths: ModelPaths, cache: DigestCache, prompt_file: Optional[Path] = None) -> StageInputs:
    """What a stage-4 run reads, by content: its settings, the policy's start, the reference, the reward model
    and the prompt file."""
    inputs = StageInputs.of(cfg, exclude=PATH_SETTINGS)
    inputs.add_artifact("policy_start", paths.policy, cache).add_artifact("reference", paths.reference, cache)
    if paths.reward is not None:
        inputs.add_artifact("reward_model", paths.reward, cache)
        reward_section = getattr(cfg, "reward", None)
        for number, member in enumerate(reward_members(paths.reward, getattr(reward_section, "members", False)), 2):
            inputs.add_artifact(f"reward_member_{number:02d}", member, cache)
    guard = getattr(cfg, "guard", None)
    if guard is not None and guard.every and guard.heldout not in ("none", "gold"):
        inputs.add_artifact("guard_heldout", guard.heldout, cache)
    if prompt_file is not None:
        inputs.add_artifact("prompts", prompt_file, cache)
    return inputs


def plan_round_stage(run: RunDir, key: str, inputs: StageInputs, round_number: int, stage_dir: Path, final: Path,
                     force: bool, log, cache: DigestCache) -> StagePlan:
    """`plan_stage` for a stage-4 run of a round: its checkpoints are the work cleared by `force`."""
    # The guard's history and best policy belong to the checkpoints' run: `force` clears them with those.
    work = [stage_dir / "checkpoints", stage_dir / "guard", stage_dir / "guard.jsonl"]
    return plan_stage(run, key, inputs, final=final, work=work, force=force, log=log,
                      new_run_hint=f"run it in a new round (run.round={round_number + 1})", cache=cache)
