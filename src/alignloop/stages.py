"""Where stages find their inputs in a run directory: the built-in data, the tokenizer, prompts."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from alignloop.data.jsonl import iter_jsonl, read_text
from alignloop.errors import DataError
from alignloop.runs import RunDir
from alignloop.tokenizer import load_tokenizer
from alignloop.train import distributed

BUILTIN_STEM = "stories"


def builtin_paths(run: RunDir) -> dict[str, Path]:
    """The files of the built-in story task inside a run directory."""
    folder = run.root / "data"
    return {
        "corpus": folder / f"{BUILTIN_STEM}.txt",
        "prompts": folder / f"{BUILTIN_STEM}.prompts.jsonl",
        "sft": folder / f"{BUILTIN_STEM}.sft.jsonl",
        "eval_prompts": folder / f"{BUILTIN_STEM}.eval_prompts.jsonl",
    }


def builtin_data(run: RunDir, n: int, seed: int, log: Callable[[str], None]) -> dict[str, Path]:
    """The built-in story corpus of this run, generated on first use (deterministic for the seed).

    With several processes rank 0 writes it and the others then read it.
    """
    paths = builtin_paths(run)
    with distributed.main_first():
        if not all(p.exists() for p in paths.values()):
            from alignloop.data.stories import write_builtin_data

            log(f"generating the built-in story corpus ({n:,} stories, seed {seed}) in {paths['corpus'].parent}")
            written = write_builtin_data(paths["corpus"], n, seed)
            paths.update({k: Path(v) for k, v in written.items() if k in paths})
    return paths


def tokenizer_for(run: RunDir, tokenizer_path: str | None = None, model_path: str | None = None):
    """The tokenizer to use: an explicit one, the model's own, the run's, or None (train one)."""
    if tokenizer_path:
        return load_tokenizer(tokenizer_path)
    if model_path:
        return load_tokenizer(model_path)
    if (run.tokenizer / "tokenizer_config.json").exists():
        return load_tokenizer(run.tokenizer)
    return None


def read_prompts(path: Path | str, field: str = "prompt", limit: int | None = None) -> list[str]:
    """Prompts from JSONL (`field`) or a text file with one prompt per line."""
    path = Path(path)
    prompts: list[str] = []
    if path.suffix in {".jsonl", ".json"} or path.name.endswith(".jsonl.gz"):
        for number, record in iter_jsonl(path, "prompt file"):
            if not isinstance(record.get(field), str):
                raise DataError(f"{path}:{number}: no string field {field!r}")
            prompts.append(record[field])
            if limit is not None and len(prompts) >= limit:
                break
    else:
        prompts = [line.strip() for line in read_text(path, "prompt file").splitlines() if line.strip()][:limit]
    if not prompts:
        raise DataError(f"prompt file {path} holds no prompts")
    return prompts


def sample_fn_for(run: RunDir, tokenizer, train_cfg, prompts: list[str] | None = None):
    """A function model -> a few sample continuations, printed during training."""
    if train_cfg.samples == 0:
        return None
    if prompts is None:
        prompt_file = builtin_paths(run)["eval_prompts"]
        prompts = read_prompts(prompt_file, limit=train_cfg.samples) if prompt_file.exists() else [""]
    chosen = (prompts * train_cfg.samples)[: train_cfg.samples]

    def sample(model) -> list[str]:
        from alignloop.generation.text import complete

        responses = complete(model, tokenizer, chosen, max_new_tokens=train_cfg.sample_tokens, temperature=0.8,
                             top_p=0.95, seed=train_cfg.seed)
        return [f"{p} | {r}" if p else r for p, r in zip(chosen, responses)]

    return sample
