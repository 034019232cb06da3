"""`alignloop bon`: best-of-n sampling with the reward model, the baseline every RL method must beat.

For each prompt, sample n responses from the policy (one batch, the shared
sampler) and keep the one the reward model scores highest. No training; the
distribution of the kept response is at most log n - (n - 1) / n nats (KL)
from the policy's (Stiennon et al. 2020, appendix G.3; Beirami et al. 2024
show it is an upper bound), the number reported as `kl`.

The stage writes `rounds/NNN/bon/samples.jsonl` (every prompt's best
response and its score) and `rounds/NNN/bon/eval.json`: the same win rates as
`alignloop eval` (gold judge and reward model) against one sample of the
baseline (SFT) model, on the evaluation prompts by default.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from alignloop import atomic
from alignloop.data.formatting import decode_response
from alignloop.models.causal_lm import load_causal_lm
from alignloop.provenance import DONE, DigestCache, plan_stage, record_finished, record_started
from alignloop.reward.uncertainty import estimate_spread
from alignloop.rl.config import BoNConfig, RewardEstimatesConfig
from alignloop.rl.inputs import load_prompts, prompts_path, resolve_models, resolve_round, stage_inputs
from alignloop.rl.rollout import RewardScorer, encode_prompts, make_sampler, open_reward_scorer, sample
from alignloop.runs import RunDir, read_record, round_stage_key
from alignloop.tokenizer import load_tokenizer
from alignloop.train.device import pick_device, precision_scope

STAGE = "bon"


def best_of_n_kl(n: int) -> float:
    """log n - (n - 1) / n: the KL (in nats) of best-of-n from the sampling policy."""
    return math.log(n) - (n - 1) / n


@torch.no_grad()
def best_of_n(policy, tokenizer, scorer: RewardScorer, prompts: list[str], n: int, sampling, max_prompt_tokens: int,
              generator: torch.Generator, reward: Optional[RewardEstimatesConfig] = None) -> list[dict[str, Any]]:
    """For each prompt: the best of n sampled responses by the reward `reward.uncertainty` makes of the ensemble's
    estimates (default: their mean), with its raw score (`score`), that reward (`reward`), the spread of its
    estimates (`spread`), whether it ended with EOS (`ended`: False when cut at `max_new_tokens`) and the mean
    raw score of the n."""
    reward = reward or RewardEstimatesConfig()
    prompt_ids = encode_prompts(tokenizer, prompts, max_prompt_tokens)
    sampler = make_sampler(sampling, tokenizer)
    chosen: list[dict[str, Any]] = []
    # Whole groups per batch, so a prompt's n candidates are scored together.
    per_batch = max(1, sampling.batch_size // n)
    for start in range(0, len(prompts), per_batch):
        group_prompts = prompts[start:start + per_batch]
        repeated_ids = [ids for ids in prompt_ids[start:start + per_batch] for _ in range(n)]
        repeated = [p for p in group_prompts for _ in range(n)]
        batch = sample(policy, tokenizer, sampler, repeated_ids, generator, max(sampling.batch_size, n))
        responses = [decode_response(tokenizer, r) for r in batch.response_token_lists()]
        assessed = scorer.assess(batch, repeated, responses, reward)
        scores = assessed.scores.cpu().view(len(group_prompts), n)
        rewards = assessed.combined.cpu().view(len(group_prompts), n)
        spread = estimate_spread(assessed.estimates).cpu().view(len(group_prompts), n)
        best = rewards.argmax(-1)
        ended = batch.ended_with_eos.cpu().view(len(group_prompts), n)
        for g, prompt in enumerate(group_prompts):
            k = int(best[g])
            chosen.append({"prompt": prompt, "response": responses[g * n + k], "score": float(scores[g, k]),
                           "reward": float(rewards[g, k]), "spread": float(spread[g, k]),
                           "ended": bool(ended[g, k]), "mean_score": float(scores[g].mean()), "n": n})
    return chosen


def run_bon(run: RunDir, cfg: BoNConfig, log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
            force: bool = False) -> dict[str, Any]:
    """Best-of-n on the evaluation prompts (by default), judged against the baseline; writes rounds/NNN/bon/.

    Kept when it was made from the same inputs; refused (unless `force`) when from others.
    """
    started = time.monotonic()
    round_number = resolve_round(run, cfg.run.round)
    paths = resolve_models(run, cfg.models, round_number)
    prompt_file = prompts_path(run, cfg.prompts, "eval_prompts")
    prompts = load_prompts(run, cfg.prompts, "eval_prompts")
    folder = run.round_dir(round_number) / STAGE
    key, cache = round_stage_key(STAGE, round_number), DigestCache.for_run(run)
    inputs = stage_inputs(cfg, paths, cache, prompt_file)
    files = [folder / name for name in ("eval.json", "samples.jsonl", "eval_samples.jsonl")]
    plan = plan_stage(run, key, inputs, final=files[0], work=files, force=force, log=log,
                      new_run_hint=f"run it in a new round (run.round={round_number + 1})", cache=cache)
    if plan.action == DONE:
        log(f"{STAGE}: round {round_number} already finished ({folder}); nothing to do")
        return read_record(files[0])
    record_started(run, key, inputs)
    device = pick_device(cfg.run.device)
    with precision_scope(device, cfg.run.precision, "run.precision"):
        result = _best_of_n_stage(run, cfg, round_number, paths, prompt_file, prompts, device, started, log)
    record_finished(run, key, inputs, files[0], cache, gold_win_rate=result.get("gold_win_rate"))
    return result


def _best_of_n_stage(run: RunDir, cfg: BoNConfig, round_number: int, paths, prompt_file: Path, prompts: list[str],
                     device: torch.device, started: float, log: Callable[[str], None]) -> dict[str, Any]:
    from alignloop.evaluation.gold_scope import gold_omission
    from alignloop.evaluation.stage import judge_pairs, rate_text, sample_responses, write_samples
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    tokenizer = load_tokenizer(paths.policy)
    policy = load_causal_lm(paths.policy).to(device).eval()
    scorer = open_reward_scorer(paths.reward, device, tokenizer, cfg.reward, cfg.sampling.batch_size, STAGE, log)
    reward_model = scorer.reward_model
    log(f"bon: best of {cfg.bon.n} from {paths.policy} by {paths.reward} on {len(prompts)} prompts from {prompt_file}")

    generator = torch.Generator(device=device).manual_seed(cfg.run.seed)
    chosen = best_of_n(policy, tokenizer, scorer, prompts, cfg.bon.n, cfg.sampling, cfg.prompts.max_tokens, generator,
                       cfg.reward)
    # The baseline is one plain sample of the starting policy (the reference), as `alignloop eval` draws it.
    reference_tokenizer = load_tokenizer(paths.reference)
    reference = policy if paths.reference == paths.policy else load_causal_lm(paths.reference).to(device).eval()
    _, baseline = sample_responses(reference, reference_tokenizer, prompts, cfg.sampling, cfg.prompts.max_tokens,
                                   cfg.run.seed)
    gold_omitted = gold_omission(run, prompts, prompt_file)
    if gold_omitted:
        log(f"bon: gold_win_rate is left out: {gold_omitted}")
    judged, rows = judge_pairs(prompts, [c["response"] for c in chosen], baseline, reward_model,
                               cfg.sampling.batch_size, include_gold=gold_omitted is None)
    folder = run.round_dir(round_number) / STAGE
    result = {
        "n": len(prompts),
        "best_of": cfg.bon.n,
        **judged,
        "gold_omitted": gold_omitted,
        "kl": best_of_n_kl(cfg.bon.n),
        "kl_note": "analytic upper bound log n - (n-1)/n",
        "policy": str(paths.policy),
        "reward_model": str(paths.reward),
        "prompts": str(prompt_file),
        "seconds": round(time.monotonic() - started, 1),
    }
    atomic.write_json(folder / "eval.json", result)
    write_samples(folder / "samples.jsonl", chosen)
    write_samples(folder / "eval_samples.jsonl", rows)
    log(f"bon: gold win rate {rate_text(result, 'gold')}, reward-model win rate {rate_text(result, 'rm')} "
        f"against one sample of {paths.reference}; written to {folder}")
    return result
