"""`alignloop eval`: a policy against its baseline on held-out prompts.

For each held-out prompt, the policy and the baseline (the SFT model) each
sample one response with the same settings and seed (`samples_per_prompt`
responses each, compared in pairs, where one draw per prompt is too noisy a
figure). Reported:

- `gold_win_rate`: share of pairs where the gold judge (the built-in task's
  noiseless preference) prefers the policy's response; ties count half. Only
  on the built-in task's prompts: elsewhere it is None and `gold_omitted`
  says why;
- `rm_win_rate`: the same with the reward model as judge;
- for both, a 95% interval (paired bootstrap over prompts: a prompt's samples
  are drawn together) and a
  length-controlled win rate (the length difference regressed out), see
  `alignloop.evaluation.statistics`;
- `kl`: mean over prompts of sum_t log pi(y_t) - log pi_ref(y_t) on the
  policy's own samples: an unbiased estimate of KL(policy || reference) per
  response, in nats, with its standard error `kl_se` (over the prompts'
  means);
- `ppl_before`, `ppl_after`: perplexity of the baseline and of the policy on
  held-out pretraining text (the forgetting check).

`eval.json` holds these; `eval_samples.jsonl` holds every pair (`prompt`,
`sft_response`, `policy_response`, with both scores) so anyone can judge the
pairs with another scorer. They are the run's record of the policy (the report
reads them): an evaluation on other settings goes to a file of its own
(`--json OUT`) and leaves them as they are.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from alignloop import atomic
from alignloop.data.formatting import decode_response
from alignloop.errors import CheckpointError
from alignloop.evaluation import statistics
from alignloop.evaluation.config import EvalConfig
from alignloop.evaluation.gold_scope import gold_omission
from alignloop.evaluation.perplexity import held_out_documents, perplexity, text_blocks
from alignloop.judges.gold import gold_score
from alignloop.models.causal_lm import check_checkpoint_dir, load_causal_lm
from alignloop.provenance import DONE, DigestCache, StageInputs, plan_stage, record_finished, record_started
from alignloop.rl.inputs import default_start, load_prompts, prompts_path, reward_dir
from alignloop.rl.rollout import encode_prompts, make_sampler, rollout_logprobs, sample
from alignloop.runs import RunDir, read_record, round_stage_key
from alignloop.tokenizer import load_tokenizer
from alignloop.train.device import pick_device, precision_scope


def win_rate(scores_a: list[float], scores_b: list[float], tolerance: float = 1e-6) -> float:
    """Share of pairs where a scores higher than b, ties (within `tolerance`) counting half."""
    wins = statistics.win_indicators(scores_a, scores_b, tolerance)
    return sum(wins) / len(wins)


WIN_RATE_FIELDS = ("win_rate", "win_rate_ci", "lc_win_rate", "lc_win_rate_ci", "length_slope")


def win_rate_figures(judge: str, scores_policy: Optional[list[float]], scores_baseline: Optional[list[float]],
                     length_policy: list[float], length_baseline: list[float],
                     units: Optional[list[int]] = None) -> dict[str, Any]:
    """`<judge>_win_rate` with its bootstrap interval, the length-controlled win rate with its interval, and
    the fit's length slope (all None without scores).

    Each pair keeps the baseline response it was compared with. `units` (each pair's prompt; default: a
    prompt per pair) are what the bootstrap resamples, so a prompt's several pairs are drawn together.
    """
    if scores_policy is None or scores_baseline is None:
        return {f"{judge}_{field}": None for field in WIN_RATE_FIELDS}
    wins = statistics.win_indicators(scores_policy, scores_baseline)
    units = list(range(len(wins))) if units is None else units
    controlled = statistics.length_controlled_win_rate(wins, length_policy, length_baseline, units=units)
    values = (sum(wins) / len(wins), list(statistics.share_interval(wins, units)), controlled["win_rate"],
              list(controlled["interval"]), controlled["slope"])
    return {f"{judge}_{field}": value for field, value in zip(WIN_RATE_FIELDS, values)}


def newest_policy(run: RunDir) -> tuple[Path, int]:
    """The newest round's PPO policy and that round's number."""
    rounds = run.root / "rounds"
    found = sorted(rounds.glob("[0-9][0-9][0-9]/policy/final")) if rounds.is_dir() else []
    if not found:
        raise CheckpointError(f"no policy to evaluate in {run.root}: no rounds/NNN/policy/final; run "
                              f"`alignloop ppo --run {run.root}` first or pass --checkpoint")
    return found[-1], int(found[-1].parent.parent.name)


def output_folder(run: RunDir, checkpoint: Path, round_number: int) -> Path:
    """Where eval.json goes: the round folder for a round's policy, else beside the checkpoint in the run.

    rounds/001/policy/final -> rounds/001; rounds/001/grpo/final -> rounds/001/grpo; a checkpoint outside
    the run -> rounds/NNN/eval-<name>.
    """
    checkpoint = checkpoint.resolve()
    try:
        checkpoint.relative_to(run.root.resolve())
    except ValueError:
        return run.round_dir(round_number) / f"eval-{checkpoint.name}"
    if checkpoint.name == "final" and checkpoint.parent.name == "policy":
        return checkpoint.parent.parent
    return checkpoint.parent if checkpoint.name == "final" else checkpoint


def sample_responses(model, tokenizer, prompts: list[str], sampling, max_prompt_tokens: int, seed: int
                     ) -> tuple[Any, list[str]]:
    """One sampled response per prompt (seeded), as a rollout batch and as text."""
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    ids = encode_prompts(tokenizer, prompts, max_prompt_tokens)
    batch = sample(model, tokenizer, make_sampler(sampling, tokenizer), ids, generator, sampling.batch_size)
    return batch, [decode_response(tokenizer, r) for r in batch.response_token_lists()]


def judge_pairs(prompts: list[str], policy_responses: list[str], baseline_responses: list[str], reward_model,
                batch_size: int = 32, include_gold: bool = True, style_judge=None,
                units: Optional[list[int]] = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Win rates of the policy's responses over the baseline's by the gold judge and (if given) the reward model
    and the style judge (`alignloop.judges.style`; its figures are left out without one).

    Returns the summary (`gold_win_rate`, `rm_win_rate`, their intervals and length-controlled versions,
    mean scores, mean lengths in characters) and one row per pair (`prompt`, `sft_response`,
    `policy_response` and their scores). `include_gold=False` leaves the gold judge out (its figures None).
    `prompts` holds one entry per pair; `units` says which pairs share a prompt (`win_rate_figures`).
    """
    n = len(prompts)
    length_policy = [float(len(r)) for r in policy_responses]
    length_baseline = [float(len(r)) for r in baseline_responses]
    gold_policy = gold_baseline = rm_policy = rm_baseline = None
    if include_gold:
        gold_policy = [gold_score(p, r) for p, r in zip(prompts, policy_responses)]
        gold_baseline = [gold_score(p, r) for p, r in zip(prompts, baseline_responses)]
    if reward_model is not None:
        rm_policy = reward_model.score_texts(prompts, policy_responses, batch_size).tolist()
        rm_baseline = reward_model.score_texts(prompts, baseline_responses, batch_size).tolist()
    style_policy = style_baseline = None
    if style_judge is not None:
        style_policy = [style_judge.score(r) for r in policy_responses]
        style_baseline = [style_judge.score(r) for r in baseline_responses]
    summary = {**win_rate_figures("gold", gold_policy, gold_baseline, length_policy, length_baseline, units),
               **win_rate_figures("rm", rm_policy, rm_baseline, length_policy, length_baseline, units)}
    if style_judge is not None:
        summary.update(win_rate_figures("style", style_policy, style_baseline, length_policy, length_baseline,
                                        units),
                       style_score_policy=sum(style_policy) / n, style_score_baseline=sum(style_baseline) / n)
    summary.update({
        "gold_score_policy": sum(gold_policy) / n if gold_policy is not None else None,
        "gold_score_baseline": sum(gold_baseline) / n if gold_baseline is not None else None,
        "rm_score_policy": sum(rm_policy) / n if rm_policy is not None else None,
        "rm_score_baseline": sum(rm_baseline) / n if rm_baseline is not None else None,
        "response_chars_policy": sum(length_policy) / n,
        "response_chars_baseline": sum(length_baseline) / n,
        "bootstrap": statistics.bootstrap_settings(),
    })
    rows = []
    for i, prompt in enumerate(prompts):
        row = {"prompt": prompt, "sft_response": baseline_responses[i], "policy_response": policy_responses[i]}
        if gold_policy is not None:
            row.update(gold_sft=round(gold_baseline[i], 4), gold_policy=round(gold_policy[i], 4))
        if rm_policy is not None:
            row.update(rm_sft=round(rm_baseline[i], 4), rm_policy=round(rm_policy[i], 4))
        if style_policy is not None:
            row.update(style_sft=round(style_baseline[i], 4), style_policy=round(style_policy[i], 4))
        rows.append(row)
    return summary, rows


def write_samples(path: Path, rows: list[dict[str, Any]]) -> None:
    """One JSON object a line, written atomically."""
    atomic.write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def kl_to_reference(batch, reference, temperature: float, batch_size: int) -> list[float]:
    """Per response: sum over its tokens of log pi - log pi_ref, on the policy's own samples (k1 estimator)."""
    ref = rollout_logprobs(reference, batch.input_ids, batch.attention_mask, batch.prompt_length, temperature,
                           batch_size)
    mask = batch.response_mask.float()
    return ((batch.logprobs - ref) * mask).sum(-1).tolist()


def eval_key(run: RunDir, folder: Path, round_number: int) -> str:
    """The manifest entry of an evaluation kept in the run: `eval:001` for a round's policy, else
    `eval:001/grpo`, `eval:001/eval-NAME`."""
    inside = folder.resolve().relative_to(run.round_dir(round_number).resolve()).as_posix()
    return round_stage_key("eval", round_number) + ("" if inside == "." else f"/{inside}")


def _stage_inputs(cfg: EvalConfig, paths: dict[str, Path], cache: DigestCache) -> StageInputs:
    inputs = StageInputs.of(cfg, exclude=("models.baseline", "models.reference", "models.reward", "prompts.path",
                                          "text.path", "style.path"))
    for name, path in paths.items():
        if path is not None and path.exists():
            inputs.add_artifact(name, path, cache)
    return inputs


def run_eval(run: RunDir, cfg: EvalConfig, checkpoint: Optional[Path] = None, json_out: Optional[Path] = None,
             log: Callable[[str], None] = lambda m: print(m, file=sys.stderr), force: bool = False) -> dict[str, Any]:
    """Evaluate a policy (default: the newest round's) against the baseline.

    Without `json_out` the result is the run's record of that policy's evaluation (`eval.json` and
    `eval_samples.jsonl` in its round folder, manifest entry `eval:NNN`): kept when it was made from the
    same inputs, refused (unless `force`) when from others. With `json_out` the result goes to that file
    alone (its samples beside it), and nothing in the run directory changes.
    """
    from alignloop.reward.model import load_reward_model

    started = time.monotonic()
    if checkpoint is None:
        checkpoint, round_number = (newest_policy(run) if cfg.round is None else
                                    (run.round_dir(cfg.round) / "policy" / "final", cfg.round))
    else:
        round_number = cfg.round or _round_of(run, checkpoint)
    checkpoint = check_checkpoint_dir(checkpoint)
    baseline_path = check_checkpoint_dir(Path(cfg.models.baseline) if cfg.models.baseline else default_start(run))
    reference_path = check_checkpoint_dir(Path(cfg.models.reference) if cfg.models.reference else baseline_path)
    reward_path = Path(cfg.models.reward) if cfg.models.reward else reward_dir(run, round_number)
    prompt_file = prompts_path(run, cfg.prompts, "eval_prompts")
    prompts = load_prompts(run, cfg.prompts, "eval_prompts")
    folder = output_folder(run, checkpoint, round_number)
    if json_out is None:
        key, cache = eval_key(run, folder, round_number), DigestCache.for_run(run)
        inputs = _stage_inputs(cfg, {"policy": checkpoint, "baseline": baseline_path, "reference": reference_path,
                                     "reward_model": reward_path, "prompts": prompt_file,
                                     "text": Path(cfg.text.path) if cfg.text.path else None,
                                     "style_corpus": Path(cfg.style.path) if cfg.style.path else None}, cache)
        plan = plan_stage(run, key, inputs, final=folder / "eval.json",
                          work=[folder / "eval.json", folder / "eval_samples.jsonl"], force=force, log=log,
                          new_run_hint="write this evaluation to a file of its own with --json OUT", cache=cache)
        if plan.action == DONE:
            log(f"eval: {folder / 'eval.json'} already holds this evaluation; nothing to do")
            return read_record(folder / "eval.json")
        record_started(run, key, inputs)

    style_judge = None
    if cfg.style.path:
        from alignloop.judges.style import load_style_judge

        style_judge = load_style_judge(cfg.style.path, cfg.style.text_field, cfg.style.documents)
    device = pick_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    tokenizer = load_tokenizer(checkpoint)
    baseline_tokenizer = load_tokenizer(baseline_path)
    policy = load_causal_lm(checkpoint).to(device).eval()
    baseline = load_causal_lm(baseline_path).to(device).eval()
    n, copies = len(prompts), cfg.samples_per_prompt
    log(f"eval: {checkpoint} against {baseline_path} on {n} prompts from {prompt_file}"
        + (f", {copies} samples each" if copies > 1 else ""))

    # The prompts repeated whole, so the first n pairs hold one sample of every prompt.
    asked, units = prompts * copies, list(range(n)) * copies
    with precision_scope(device, cfg.precision, "precision"):
        policy_batch, policy_responses = sample_responses(policy, tokenizer, asked, cfg.sampling,
                                                          cfg.prompts.max_tokens, cfg.seed)
        _, baseline_responses = sample_responses(baseline, baseline_tokenizer, asked, cfg.sampling,
                                                 cfg.prompts.max_tokens, cfg.seed)
        reference = (baseline if reference_path == baseline_path
                     else load_causal_lm(reference_path).to(device).eval())
        kls = kl_to_reference(policy_batch, reference, cfg.sampling.temperature, cfg.sampling.batch_size)

        reward_model = load_reward_model(reward_path, device) if reward_path.exists() else None
        if reward_model is None:
            log(f"eval: no reward model at {reward_path}; rm_win_rate is left out")
        gold_omitted = gold_omission(run, prompts, prompt_file)
        if gold_omitted:
            log(f"eval: gold_win_rate is left out: {gold_omitted}")
        judged, rows = judge_pairs(asked, policy_responses, baseline_responses, reward_model,
                                   cfg.sampling.batch_size, include_gold=gold_omitted is None,
                                   style_judge=style_judge, units=units)

        documents, text_source = held_out_documents(run, cfg.text.path, cfg.text.text_field)
        ppl_before = perplexity(baseline, text_blocks(baseline_tokenizer, documents, cfg.text.seq_len,
                                                      cfg.text.blocks))
        ppl_after = perplexity(policy, text_blocks(tokenizer, documents, cfg.text.seq_len, cfg.text.blocks))

    kl_sums, kl_counts = statistics.per_unit(kls, units)
    result: dict[str, Any] = {
        "n": n,
        "samples_per_prompt": copies,
        "gold_win_rate": judged["gold_win_rate"],
        "rm_win_rate": judged["rm_win_rate"],
        "kl": sum(kls) / len(kls),
        "kl_se": statistics.standard_error([s / c for s, c in zip(kl_sums, kl_counts)]),
        "ppl_before": ppl_before,
        "ppl_after": ppl_after,
        "ppl_change": ppl_after / ppl_before - 1.0,
        **{k: v for k, v in judged.items() if k not in ("gold_win_rate", "rm_win_rate")},
        "gold_omitted": gold_omitted,
        "response_length_policy": float(policy_batch.response_lengths.float().mean()),
        "eos_rate_policy": float(policy_batch.ended_with_eos.float().mean()),
        "policy": str(checkpoint),
        "baseline": str(baseline_path),
        "reference": str(reference_path),
        "reward_model": str(reward_path) if reward_model is not None else None,
        "prompts": str(prompt_file),
        "held_out_text": text_source,
        "style_corpus": cfg.style.path,
        "sampling": cfg.sampling.model_dump(mode="json"),
        "seed": cfg.seed,
        "seconds": round(time.monotonic() - started, 1),
    }
    for index, (row, kl) in enumerate(zip(rows, kls)):
        row["kl"] = round(kl, 4)
        if copies > 1:
            row["sample"] = index // n
    if json_out is not None:
        json_out = Path(json_out)
        written = json_out
        atomic.write_json(json_out, result)
        write_samples(json_out.with_name(json_out.stem + "_samples.jsonl"), rows)
    else:
        written = folder / "eval.json"
        write_samples(folder / "eval_samples.jsonl", rows)
        atomic.write_json(written, result)
        record_finished(run, key, inputs, written, cache, gold_win_rate=result.get("gold_win_rate"),
                        kl=result.get("kl"))
    log(f"eval: {summary_line(result)}; written to {written}")
    return result


def rate_text(result: dict[str, Any], judge: str) -> str:
    """A win rate with its 95% interval and length-controlled value, or n/a."""
    rate, interval = result.get(f"{judge}_win_rate"), result.get(f"{judge}_win_rate_ci")
    if rate is None:
        return "n/a"
    text = f"{rate:.1%}" + (f" [{interval[0]:.1%}, {interval[1]:.1%}]" if interval else "")
    controlled = result.get(f"{judge}_lc_win_rate")
    return text + (f" (length-controlled {controlled:.1%})" if controlled is not None else "")


def summary_line(result: dict[str, Any]) -> str:
    """The figures of an evaluation in one line: win rates with 95% intervals, KL +- its standard error, perplexity."""
    kl_se = result.get("kl_se")
    kl = f"KL {result['kl']:.2f}" + (f" +- {kl_se:.2f}" if kl_se is not None else "") + " nats"
    style = f", style win rate {rate_text(result, 'style')}" if result.get("style_win_rate") is not None else ""
    return (f"gold win rate {rate_text(result, 'gold')}, reward-model win rate {rate_text(result, 'rm')}{style}, "
            f"{kl}, perplexity {result['ppl_before']:.2f} -> {result['ppl_after']:.2f} ({result['ppl_change']:+.1%})")


def _round_of(run: RunDir, checkpoint: Path) -> int:
    """The round a checkpoint lives in (rounds/NNN/...), else the newest round, else 1."""
    for part in Path(checkpoint).resolve().parts[::-1]:
        if len(part) == 3 and part.isdigit():
            return int(part)
    from alignloop.rl.inputs import resolve_round

    return resolve_round(run, None)
