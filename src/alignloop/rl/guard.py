"""The over-optimisation guard of PPO and GRPO/RLOO: a fixed check of the policy every `guard.every` iterations.

A policy trained against a reward model first gets better by the truth too,
then, as it moves further (KL) from where it started, keeps raising the
reward model's score (the proxy) while the truth falls (Gao et al. 2022,
"Scaling laws for reward model overoptimization"). Each check samples the
same held-out prompts with the same seed and records:

- proxy: mean reward of the RL reward model (the reward RL maximises, before clip and penalties);
- heldout: mean score of a judge the policy is not trained on (`guard.heldout`: the gold judge of the
  built-in task, or another reward model), and with the gold judge its win rate against the reference;
- spread and ood_fraction: disagreement of the reward model's estimates (`alignloop.reward.uncertainty`);
- kl: mean KL to the reference per response (k1, nats); length: mean response tokens.

One JSON line per check goes to `guard.jsonl` in the stage folder. `guard_verdict`
(pure) fires when the proxy rose while the held-out score fell `patience`
checks in a row, or a threshold is passed. Whenever a check within the
thresholds beats every earlier one by held-out score its policy is saved to `guard/best-NNNNNN/`
(NNNNNN: the iteration); with `guard.stop=true` a firing check stops the run
and that policy becomes the stage's final one.

Resuming: the history is `guard.jsonl` up to the resumed iteration, and the
best policy the newest `guard/best-NNNNNN/` up to it; later lines and best
policies, written after the checkpoint the run resumes from, are dropped and
made again. An older best policy is removed once a checkpoint covers a newer one.
"""

from __future__ import annotations

import json
import operator
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from alignloop import atomic
from alignloop.errors import ConfigError, DataError
from alignloop.rl.config import GuardConfig

GUARD_FILE = "guard.jsonl"
GUARD_DIR = "guard"
BEST_RECORD = "guard_best.json"


# ---------------------------------------------------------------------------
# The decision (pure)


def diverging_checks(history: Sequence[dict[str, Any]]) -> int:
    """How many times in a row, up to the last check, the proxy rose while the held-out score fell."""
    count = 0
    for before, after in zip(reversed(history[:-1]), reversed(history[1:])):
        if before.get("heldout") is None or after.get("heldout") is None:
            break
        if not (after["proxy"] > before["proxy"] and after["heldout"] < before["heldout"]):
            break
        count += 1
    return count


def limits_passed(history: Sequence[dict[str, Any]], cfg: GuardConfig) -> list[str]:
    """The thresholds the last check of `history` passes (`max_kl`, `max_spread`, `max_ood_fraction`, or a mean
    length above `max_length_ratio` or below `min_length_ratio` times the first check's), each as the sentence
    the warning gives."""
    if not history:
        return []
    last, reasons = history[-1], []
    for key, limit, what in (("kl", cfg.max_kl, "KL"), ("spread", cfg.max_spread, "reward spread"),
                             ("ood_fraction", cfg.max_ood_fraction, "out-of-distribution share")):
        if limit is not None and last.get(key) is not None and last[key] > limit:
            reasons.append(f"{what} {last[key]:.4g} > guard.max_{key} {limit:g}")
    first_length = history[0].get("length")
    if first_length:
        for ratio, past, sign, name in ((cfg.max_length_ratio, operator.gt, ">", "max"),
                                        (cfg.min_length_ratio, operator.lt, "<", "min")):
            if ratio is not None and past(last["length"], ratio * first_length):
                reasons.append(f"mean length {last['length']:.1f} {sign} guard.{name}_length_ratio {ratio:g} x "
                               f"the first check's {first_length:.1f}")
    return reasons


def guard_verdict(history: Sequence[dict[str, Any]], cfg: GuardConfig) -> Optional[str]:
    """Why the guard fires at the last check of `history` (oldest first), or None.

    Fires when the proxy rose while the held-out score fell from each check to the next `cfg.patience` times in
    a row, or when the last check passes a threshold (`limits_passed`).
    """
    if not history:
        return None
    reasons = []
    streak = diverging_checks(history)
    if streak >= cfg.patience:
        reasons.append(f"the proxy rose while the held-out score fell {streak} checks in a row "
                       f"(guard.patience={cfg.patience})")
    reasons += limits_passed(history, cfg)
    return "; ".join(reasons) or None


def new_best(history: Sequence[dict[str, Any]], best: Optional[dict[str, Any]], cfg: GuardConfig) -> bool:
    """Whether the last check of `history` becomes the policy to keep: it passes none of the thresholds and has
    a held-out score above the best check's so far, or, with no held-out judge, it is the latest check within
    the thresholds of a guard that stops on them. A check past the KL, spread or length a user set is not one
    they would keep, however a held-out reward model (fooled like the proxy) scores it; without a judge,
    `guard.max_kl` with `guard.stop=true` is then a KL budget the final policy keeps to."""
    last = history[-1]
    if limits_passed(history, cfg):
        return False
    if last.get("heldout") is None:
        return cfg.stop and has_limits(cfg)
    return best is None or last["heldout"] > best["heldout"]


def has_limits(cfg: GuardConfig) -> bool:
    """Whether any threshold of `limits_passed` (the config's max_* and min_* settings) is set."""
    return any(value is not None for name, value in cfg if name.startswith(("max_", "min_")))


# ---------------------------------------------------------------------------
# History on disk


def read_history(path: Path, upto: int) -> list[dict[str, Any]]:
    """The checks of `path` at iterations <= `upto`; the file is rewritten (atomically) without the others,
    and without a line cut short by a kill."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("iteration"), int) and record["iteration"] <= upto:
            kept.append(record)
    if len(kept) != len(lines):
        atomic.write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
    return kept


def append_line(path: Path, record: dict[str, Any]) -> None:
    """One JSON line at the end of `path`, flushed to disk (a kill can cut it short; `read_history` drops that)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


# ---------------------------------------------------------------------------
# Held-out judges

HeldoutFn = Callable[[list[str], list[str]], dict[str, float]]


def gold_judge(baseline: Callable[[], list[str]]) -> HeldoutFn:
    """The gold judge: mean gold score, and win rate against `baseline()` (the reference's responses, drawn once)."""
    from alignloop.judges.gold import gold_score, gold_win_rate

    cache: list[list[str]] = []

    def judge(prompts: list[str], responses: list[str]) -> dict[str, float]:
        if not cache:
            cache.append(baseline())
        return {"heldout": sum(gold_score(p, r) for p, r in zip(prompts, responses)) / len(prompts),
                "heldout_win_rate": gold_win_rate(prompts, responses, cache[0])}

    return judge


def reward_model_judge(path: Path, device: torch.device, batch_size: int) -> HeldoutFn:
    """Another reward model: the mean of its scores of the responses, normalised by its own statistics."""
    from alignloop.reward.model import load_reward_model

    model = load_reward_model(path, device)

    def judge(prompts: list[str], responses: list[str]) -> dict[str, float]:
        scores = model.normalise(model.score_texts(prompts, responses, batch_size))
        return {"heldout": float(scores.mean())}

    return judge


# ---------------------------------------------------------------------------
# The guard of one run


class Guard:
    """The checks of one RL run: when they are due, running one, the history, the best policy, the stop."""

    def __init__(self, cfg: GuardConfig, stage: str, stage_dir: Path, prompts: list[str], max_prompt_tokens: int,
                 sampling, reward_cfg, heldout: Optional[HeldoutFn], start: int, log: Callable[[str], None]):
        self.cfg, self.stage, self.stage_dir, self.prompts = cfg, stage, stage_dir, prompts
        self.max_prompt_tokens, self.sampling, self.reward_cfg = max_prompt_tokens, sampling, reward_cfg
        self.heldout, self.log = heldout, log
        self.path = stage_dir / GUARD_FILE
        self.folder = stage_dir / GUARD_DIR
        # A best policy saved after the checkpoint the run resumes from belongs to checks that will be made again.
        for iteration, folder in self._best_dirs():
            if iteration > start:
                shutil.rmtree(folder, ignore_errors=True)
        self.history = read_history(self.path, start)
        self.best = self._read_best()

    def _best_dirs(self) -> list[tuple[int, Path]]:
        """(iteration, folder) of every saved best policy, oldest first."""
        found = []
        for folder in self.folder.glob("best-*") if self.folder.is_dir() else []:
            suffix = folder.name[len("best-"):]
            if suffix.isdigit() and (folder / BEST_RECORD).exists():
                found.append((int(suffix), folder))
        return sorted(found)

    @property
    def best_dir(self) -> Optional[Path]:
        """The folder of the best check's policy (`guard/best-NNNNNN`), or None."""
        folders = self._best_dirs()
        return folders[-1][1] if folders else None

    def _read_best(self) -> Optional[dict[str, Any]]:
        folder = self.best_dir
        if folder is None:
            return None
        try:
            return json.loads((folder / BEST_RECORD).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None

    def checkpointed(self, step: int) -> None:
        """A resumable checkpoint of `step` was written: older best policies than the newest one up to `step`
        are no longer needed to resume (the newest stays until a later checkpoint covers its successor)."""
        from alignloop.train import distributed

        covered = [(i, f) for i, f in self._best_dirs() if i <= step]
        if distributed.is_main():
            for _, folder in covered[:-1]:
                shutil.rmtree(folder, ignore_errors=True)

    def due(self, iteration: int) -> bool:
        return bool(self.cfg.every) and iteration % self.cfg.every == 0

    @property
    def stopped(self) -> Optional[dict[str, Any]]:
        """The check that stopped the run, when one did."""
        return self.history[-1] if self.history and self.history[-1].get("stopped") else None

    def check(self, state, iteration: int) -> dict[str, Any]:
        """Sample the held-out prompts with the policy, record the check, keep the best policy; the record."""
        from alignloop.evaluation.stage import kl_to_reference, sample_responses
        from alignloop.reward.uncertainty import spread_figures
        from alignloop.train import distributed

        with state.rollout_weights():
            batch, responses = sample_responses(state.sampling_policy, state.tokenizer, self.prompts, self.sampling,
                                                self.max_prompt_tokens, self.cfg.seed)
            kl = kl_to_reference(batch, state.reference, self.sampling.temperature, self.sampling.batch_size)
        assessed = state.scorer.assess(batch, self.prompts, responses, self.reward_cfg)
        figures = spread_figures(assessed.estimates, state.scorer.spread_threshold)
        record: dict[str, Any] = {
            "iteration": iteration,
            "kl": sum(kl) / len(kl),
            "proxy": float(assessed.combined.mean()),
            "spread": figures["reward_spread"],
            "ood_fraction": figures.get("ood_fraction"),
            "length": float(batch.response_mask.float().sum(-1).mean()),
        }
        if self.heldout is not None:
            record.update(self.heldout(self.prompts, responses))
        # Under a launcher every rank samples the check (FSDP's forward needs them all), but rank 0's figures
        # decide: a verdict that differed in the last bit between ranks would leave one rank waiting for the
        # others at the best policy's save or at the stop.
        record = distributed.broadcast_object(record)
        record["best"] = new_best(self.history + [record], self.best, self.cfg)
        if record["best"]:
            from alignloop.train.checkpoints import save_final

            self.best = {"iteration": iteration, "heldout": record.get("heldout")}
            save_final(self.folder / f"best-{iteration:06d}", state.policy, state.tokenizer,
                       extra_files={BEST_RECORD: json.dumps(self.best)})
        record["kept"] = self.best["iteration"] if self.best else None
        record["fired"] = guard_verdict(self.history + [record], self.cfg)
        record["stopped"] = bool(record["fired"]) and self.cfg.stop
        self.history.append(record)
        if distributed.is_main():
            append_line(self.path, record)
        self.log(self.describe(record))
        return record

    def describe(self, record: dict[str, Any]) -> str:
        """The log line of a check (with the warning when it fired)."""
        heldout = "" if record.get("heldout") is None else f"  held-out {record['heldout']:+.4f}"
        if record.get("heldout_win_rate") is not None:
            heldout += f" (win rate {record['heldout_win_rate']:.1%})"
        ood = "" if record.get("ood_fraction") is None else f"  ood {record['ood_fraction']:.1%}"
        line = (f"{self.stage} guard it {record['iteration']}: proxy {record['proxy']:+.4f}{heldout}  "
                f"kl {record['kl']:.2f}  spread {record['spread']:.3f}{ood}  len {record['length']:.1f}"
                + ("  (best so far)" if record["best"] else ""))
        if record["fired"]:
            line += f"\n{self.stage}: warning: over-optimisation guard fired at iteration {record['iteration']}: " \
                    f"{record['fired']}"
            if record["stopped"]:
                why = "the last check within the thresholds" if record.get("heldout") is None \
                    else "best held-out score"
                kept = f"the policy of iteration {record['kept']} ({why})" if record["kept"] \
                    else "the last policy (no check was within the thresholds)"
                line += f"; stopping (guard.stop=true), keeping {kept}"
        return line

    def keep_best(self, final: Path) -> Optional[int]:
        """After a stop, copy the best check's policy to `final` (atomically); its iteration, or None when there
        is none (no check within the thresholds), and the last policy stays the final one."""
        best = self.best_dir
        if self.stopped is None or self.best is None or best is None:
            return None
        from alignloop.train import distributed

        if distributed.is_main():
            with atomic.atomic_directory(final) as tmp:
                shutil.copytree(best, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(BEST_RECORD))
        distributed.barrier()
        return int(self.best["iteration"])

    def summary(self) -> dict[str, Any]:
        """What the manifest records of the guard: the stop (iteration, why) and the iteration kept."""
        stop = self.stopped
        if stop is None:
            return {}
        return {"guard_stopped_at": stop["iteration"], "guard_reason": stop["fired"],
                "guard_kept_iteration": self.best["iteration"] if self.best else stop["iteration"]}


def open_guard(run, cfg, stage: str, stage_dir: Path, start: int, device: torch.device,
               log: Callable[[str], None]) -> Optional[Guard]:
    """The guard of an RL stage with config `cfg` (its `guard` section), or None when `guard.every=0`."""
    from alignloop.evaluation.gold_scope import gold_omission
    from alignloop.rl.inputs import load_prompts, prompts_path

    settings: GuardConfig = cfg.guard
    if not settings.every:
        return None
    try:
        prompt_file = prompts_path(run, settings.prompts, "eval_prompts")
    except DataError as exc:  # the same message, naming the guard's setting
        raise DataError(f"guard: {str(exc).replace('set prompts.path', 'set guard.prompts.path')}") from None
    prompts = load_prompts(run, settings.prompts, "eval_prompts")
    heldout: Optional[HeldoutFn] = None
    if settings.heldout == "gold":
        reason = gold_omission(run, prompts, prompt_file)
        if reason:
            raise ConfigError(f"guard.heldout=gold: {reason}; set guard.heldout=none or the PATH of a reward model")
        heldout = gold_judge(lambda: _reference_responses(run, cfg, prompts))
    elif settings.heldout != "none":
        heldout = reward_model_judge(Path(settings.heldout), device, cfg.sampling.batch_size)
    stops = "; stops the run when it fires" if settings.stop else ""
    log(f"{stage}: over-optimisation guard every {settings.every} iterations on {len(prompts)} prompts from "
        f"{prompt_file}, held-out judge: {settings.heldout}{stops}")
    return Guard(settings, stage, stage_dir, prompts, cfg.prompts.max_tokens, cfg.sampling, cfg.reward, heldout,
                 start, log)


def _reference_responses(run, cfg, prompts: list[str]) -> list[str]:
    """The reference checkpoint's responses to the guard's prompts (seeded as the checks are)."""
    from alignloop.evaluation.stage import sample_responses
    from alignloop.models.causal_lm import load_causal_lm
    from alignloop.rl.inputs import resolve_models, resolve_round
    from alignloop.tokenizer import load_tokenizer
    from alignloop.train.device import pick_device

    paths = resolve_models(run, cfg.models, resolve_round(run, cfg.run.round), need_reward=False)
    model = load_causal_lm(paths.reference).to(pick_device(cfg.run.device)).eval()
    _, responses = sample_responses(model, load_tokenizer(paths.reference), prompts, cfg.sampling,
                                    cfg.prompts.max_tokens, cfg.guard.seed)
    return responses
