"""Configuration of `alignloop reward` and `alignloop reward eval`."""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import Field

from alignloop.config.base import LearningRate, Section
from alignloop.models.lora import LoraSettings
from alignloop.train.config import TrainConfig


class BackboneConfig(Section):
    """What the scalar head sits on."""

    path: Optional[str] = Field(
        None, description="A local HF checkpoint: a causal LM (decoder, scored at its last token), an encoder such "
                          "as MiniLM (pooled), or an earlier reward model (warm start). Unset: this run's sft/final, "
                          "else pretrain/final.")
    scratch: bool = Field(False, description="Ignore path and build a randomly initialised decoder of `preset` "
                                             "(with the run's tokenizer, or one trained on the preference data).")
    preset: Literal["tiny", "small", "base"] = Field("small", description="Size of a from-scratch backbone.")
    tokenizer_vocab: int = Field(8192, ge=300, description="Vocabulary of a tokenizer trained for a scratch backbone.")
    pooling: Literal["mean", "native", "response"] = Field(
        "mean", description="Encoders only: mean over tokens, the model's own pooler (BERT's [CLS]), or mean "
                            "over the response's tokens alone (the second segment; the prompt still conditions "
                            "them through attention).")
    max_length: int = Field(512, ge=8, description="Longest prompt+response in tokens, at most the backbone's "
                                                   "position limit (MiniLM and BERT 512, GPT-2 1024, our presets "
                                                   "their context): the prompt's oldest turns are cut first, a "
                                                   "reply only when it alone does not fit.")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="Train LoRA adapters on the backbone instead "
                                                                         "of every weight (the scalar head trains fully).")


class RewardDataConfig(Section):
    """Where the preferences come from and how they are turned into training groups."""

    path: Optional[str] = Field(
        None, description="Preference JSONL (optionally .gz): TRL {prompt, chosen, rejected} plain or conversational, "
                          "Anthropic HH {chosen, rejected} transcripts, or our rich records. Unset: the run's "
                          "feedback store.")
    lines: Optional[str] = Field(None, description="Use only these 1-based lines of data.path, e.g. '1-1200'.")
    rounds: Union[Literal["all"], list[int]] = Field(
        "all", description="Store rounds whose judgments are used: 'all' or a list of round numbers.")
    aggregate: Literal["majority", "annotator"] = Field(
        "majority", description="Across annotators: the majority label per pair, or every label as its own record.")
    ties: Literal["drop", "keep"] = Field("drop", description="Ties: dropped, or trained toward equal rewards (0.5).")
    ratings: bool = Field(False, description="Also train on Likert ratings (1-5) by regression.")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="Share of prompts held out for validation and early stopping.")
    seed: int = Field(0, description="Seed of the split.")


class LengthDebiasConfig(Section):
    """Ways to keep the reward from paying for length (see BENCHMARKS.md, "Length"); they combine.

    Whatever is used, the model scores with what is left once length is taken out, and its checkpoint says
    which ways it was trained with (`alignloop_length_debias` in config.json).
    """

    odin: float = Field(0.0, ge=0, description="Weight of ODIN's correlation terms (Chen et al. 2024); above 0 a "
                                                "second, length head is trained beside the reward: training "
                                                "scores with their sum, the length head is pushed to correlate "
                                                "with log length within each batch and the reward to not "
                                                "(its squared correlation), and the length head is dropped when "
                                                "the model is saved.")
    orthogonal: float = Field(1.0, ge=0, description="With odin: weight of |w_Q . w_L|, the dot product of the "
                                                     "reward's and the length head's weights (ODIN's "
                                                     "orthogonality term).")
    covariate: bool = Field(False, description="Add beta * tanh((len chosen - len rejected) / sd) to each pair's "
                                               "Bradley-Terry logit, beta fitted to the training pairs before "
                                               "training and held fixed: a length expert that explains what "
                                               "length explains, so the reward learns the rest; scoring drops it.")
    covariate_scale: float = Field(1.0, gt=0, description="With covariate: the fitted beta times this. A "
                                                          "length-only fit understates what length explains "
                                                          "once the rest is known (omitted variables shrink a "
                                                          "logistic coefficient); above 1 makes up for it.")
    balance: int = Field(0, ge=0, description="Reweight the training pairs so that within each of this many bins "
                                              "of |length difference| the pairs where people chose the longer "
                                              "reply and those where they chose the shorter weigh the same "
                                              "(0: off, every pair weighs 1).")


class RewardLossConfig(Section):
    """The objective: Bradley-Terry on pairs and rankings, plus optional terms."""

    margin: float = Field(0.0, ge=0, description="Margin for the strongest preference (strength 3); strength 1 gets "
                                                 "none, 2 half (Llama 2, eq. 2). 0 disables.")
    centering: float = Field(0.0, ge=0, description="Weight of the reward-centering term mean((r_c + r_r)^2) "
                                                    "(Eisenstein et al. 2023; 0.01 is typical).")
    rating_weight: float = Field(1.0, ge=0, description="Weight of the rating regression term (with data.ratings).")
    length: LengthDebiasConfig = Field(default_factory=LengthDebiasConfig)


class EnsembleConfig(Section):
    """Several reward estimates whose disagreement says which pairs are worth asking people about."""

    heads: int = Field(1, ge=1, description="Scalar heads on one backbone; each sees its own bootstrap share of pairs.")
    models: int = Field(1, ge=1, description="Whole reward models trained with different seeds (members 2..N go to "
                                             "reward/ensemble/).")
    bootstrap: float = Field(0.8, gt=0, le=1, description="Share of the comparisons each head trains on.")


def _reward_train_defaults() -> "RewardTrainConfig":
    return RewardTrainConfig()


class RewardTrainConfig(TrainConfig):
    """Optimisation of the reward model: the shared settings, plus epochs and early stopping.

    `batch_size` counts prompt groups (a pair, or a ranking of K responses) per micro-batch.
    """

    max_steps: int = Field(100000, ge=1, description="Upper bound on optimizer steps (epochs usually decide).")
    epochs: Optional[float] = Field(2.0, gt=0, description="Passes over the training groups; sets the step count.")
    patience: int = Field(3, ge=0, description="Stop after this many evaluations without a better validation "
                                               "figure (`select`; 0: never stop early). The best model is the one kept.")
    select: Literal["accuracy", "loss"] = Field(
        "accuracy", description="The validation figure that chooses the model kept and stops early: accuracy, or "
                                "loss (smoother than accuracy when the labels are noisy or the split small).")
    lr: LearningRate = Field(5e-5, description="Peak learning rate.")
    warmup_steps: int = Field(20, ge=0, description="Linear warmup steps before cosine decay (at most a fifth of the run).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay on matrices.")
    beta2: float = Field(0.999, ge=0, lt=1, description="AdamW beta2.")
    batch_size: int = Field(16, ge=1, description="Prompt groups (pairs or rankings) per micro-batch.")
    eval_every: int = Field(50, ge=1, description="Validate every N steps (and at the end).")
    eval_batches: int = Field(1000, ge=1, description="Validation micro-batches per evaluation (at most).")
    save_every: int = Field(50, ge=1, description="Write a resumable checkpoint every N steps.")
    share_prompt: bool = Field(True, description="Decoders: read each prompt once with all its responses in one row "
                                                 "(same rewards as reading prompt+response apart, less compute).")
    stats_responses: int = Field(2000, ge=2, description="Responses scored for reward_stats.json (mean, std); "
                                                         "fewer than 200 draw a warning.")
    dropout: bool = Field(False, description="Keep the backbone's dropout on while training (HF backbones such "
                                             "as GPT-2 and BERT ship with 0.1). Off, as in TRL and the N+ "
                                             "implementation details: the reward of a response then does not "
                                             "depend on a random mask, in training as in scoring.")
    samples: int = Field(0, ge=0, description="Unused by the reward stage.")


class GoldEvalConfig(Section):
    """Agreement with the gold judge on fresh pairs sampled from the policy (built-in task only)."""

    pairs: int = Field(500, ge=0, description="Fresh pairs to sample and judge (0 disables).")
    policy: Optional[str] = Field(None, description="Checkpoint to sample from. Unset: this run's sft/final.")
    prompts: Optional[str] = Field(None, description="Prompt file. Unset: the run's built-in eval prompts.")
    max_new_tokens: int = Field(64, ge=1, description="Length of each sampled response.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    seed: int = Field(1234, description="Sampling seed (differs from training data's).")
    pairs_file: Optional[str] = Field(None, description="JSONL of pairs to judge instead of sampling "
                                                        "({prompt, a, b} a line, as the gold_pairs.jsonl that "
                                                        "sampling leaves beside the model): the same pairs on "
                                                        "any machine.")


class RewardConfig(Section):
    """Everything `alignloop reward` does, field by field."""

    round: Optional[int] = Field(None, ge=1, description="Round to write rounds/NNN/reward/ into. Unset: the newest "
                                                         "round in the store, or 1.")
    model: BackboneConfig = Field(default_factory=BackboneConfig)
    data: RewardDataConfig = Field(default_factory=RewardDataConfig)
    loss: RewardLossConfig = Field(default_factory=RewardLossConfig)
    ensemble: EnsembleConfig = Field(default_factory=EnsembleConfig)
    train: RewardTrainConfig = Field(default_factory=_reward_train_defaults)


class RewardEvalConfig(Section):
    """Everything `alignloop reward eval` does."""

    round: Optional[int] = Field(None, ge=1, description="Round whose reward model is evaluated. Unset: the newest "
                                                         "round with a reward model.")
    model: Optional[str] = Field(None, description="A reward-model checkpoint instead of the run's.")
    data: RewardDataConfig = Field(default_factory=lambda: RewardDataConfig(val_fraction=0.1))
    split: Literal["auto", "val", "all"] = Field(
        "auto", description="Which preference records to score: the validation split training held out (same seed "
                            "and fraction), or all of them. auto: all of data.path when given, else the store's val.")
    batch_size: int = Field(32, ge=1, description="Sequences per forward pass.")
    bins: int = Field(10, ge=2, description="Bins of the expected calibration error.")
    gold: GoldEvalConfig = Field(default_factory=GoldEvalConfig)
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")
