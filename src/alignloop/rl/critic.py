"""The critic of PPO: a transformer backbone with a value head, one value per token.

It is stored as an `AutoModelForSequenceClassification` with one label, the
same kind of checkpoint as a reward model: the classification head (`score`,
a Linear(hidden, 1)) applied to every position instead of the last one gives
the value V(s_t) of each prefix. So the critic can start from the reward
model itself (backbone and head: its initial values already predict the final
score, which is what a value is at the last token; Ouyang et al. 2022, §3.5)
or from the policy (its backbone, a zero head), and it saves and loads with
`save_pretrained` / `from_pretrained` like every other checkpoint here.

PPO's rewards are normalised, (score - mean) / std with the reward model's
`reward_stats.json`, so a critic copied from the reward model is put on that
scale: its head is divided by std and the values are shifted by -mean / std.
Decoder heads have no bias to absorb the shift, so it is a constant kept in
the checkpoint's config.json (`alignloop_value_offset`), added to every value.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from alignloop.errors import CheckpointError
from alignloop.generation.logprobs import position_ids_from_attention_mask, unwrap_model
from alignloop.models.causal_lm import check_checkpoint_dir
from alignloop.reward.model import RewardStats

# A constant added to every value (the critic's config.json carries it through save and load).
OFFSET_KEY = "alignloop_value_offset"


class Critic(nn.Module):
    """Per-token values of a sequence, from a sequence-classification model with one scalar head."""

    def __init__(self, model):
        super().__init__()
        self.model = model  # a transformers model, or one wrapped with LoRA adapters (alignloop.models.lora)
        inner = unwrap_model(model)
        head = getattr(inner, "score", None)
        plain = getattr(head, "original_module", head)  # under LoRA: peft's trainable copy of the head
        if not isinstance(plain, nn.Linear) or plain.out_features != 1:
            raise CheckpointError(f"{type(inner).__name__} has no scalar `score` head to use as a value head")
        self.backbone = getattr(inner, inner.base_model_prefix)
        self.head = head
        self.offset = float(getattr(inner.config, OFFSET_KEY, None) or 0.0)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, response_start: int) -> Tensor:
        """Values of the states before each response token: [B, L - response_start].

        The hidden state at position j summarises tokens 0..j, the state in
        which token j + 1 is chosen, so the value for response token t reads
        position response_start - 1 + t: the same alignment as the policy's
        logits (`alignloop.generation.logprobs.response_logits`).
        """
        from alignloop.models.memory import checkpointed_forward

        with checkpointed_forward(self.model):
            hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                                   position_ids=position_ids_from_attention_mask(attention_mask), use_cache=False)[0]
        hidden = hidden[:, response_start - 1:-1]
        return self.head(hidden).squeeze(-1).float() + self.offset

    def save_pretrained(self, directory, **kwargs) -> None:
        """Save as an HF sequence-classification checkpoint (used by the checkpoint code)."""
        self.model.save_pretrained(directory, **kwargs)


def _load_classifier(path: Path, num_labels: int | None = None):
    import transformers

    transformers.logging.set_verbosity_error()
    kwargs = {"local_files_only": True}
    if num_labels is not None:
        kwargs["num_labels"] = num_labels
    try:
        return transformers.AutoModelForSequenceClassification.from_pretrained(str(path), **kwargs)
    except Exception as exc:  # transformers, safetensors and json errors all mean "cannot use this"
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"cannot build a critic on {path}: {first[:200]}") from None


def critic_from_reward_model(path: Path | str, normalised_by: RewardStats | None = None) -> Critic:
    """A critic that starts as the reward model: same backbone, its head (the mean of an ensemble's heads).

    `normalised_by`: the statistics PPO normalises the scores with (None: raw scores). The head becomes
    (w / std, b / std) and the values are shifted by -mean / std, so that the value read where the reward
    model reads its score is the normalised score, (w.h + b - mean) / std, the reward PPO gives there.
    """
    model = _load_classifier(check_checkpoint_dir(path))
    head = model.score
    if head.out_features != 1:
        # An ensemble of N heads: one head with their mean weights predicts their mean reward.
        single = nn.Linear(head.in_features, 1, bias=head.bias is not None)
        with torch.no_grad():
            single.weight.copy_(head.weight.mean(0, keepdim=True))
            if head.bias is not None:
                single.bias.copy_(head.bias.mean(0, keepdim=True))
        model.score = single
        model.config.num_labels = 1
    if normalised_by is not None:
        with torch.no_grad():
            model.score.weight.div_(normalised_by.std)
            if model.score.bias is not None:
                model.score.bias.div_(normalised_by.std)
        setattr(model.config, OFFSET_KEY, -normalised_by.mean / normalised_by.std)
    return Critic(model)


def critic_from_policy(path: Path | str) -> Critic:
    """A critic on the policy's backbone with a zero value head (every value starts at 0)."""
    model = _load_classifier(check_checkpoint_dir(path), num_labels=1)
    with torch.no_grad():
        model.score.weight.zero_()
        if model.score.bias is not None:
            model.score.bias.zero_()
    return Critic(model)


def load_critic(path: Path | str) -> Critic:
    """A critic saved by `Critic.save_pretrained` (resuming PPO)."""
    return Critic(_load_classifier(check_checkpoint_dir(path)))
