"""Reading a pretraining corpus into a list of documents, and splitting it.

Accepted inputs (DESIGN.md, "Data formats"):
- a text file: one document per blank-line-separated block, or per
  `<|endoftext|>`-separated story when that marker is present; `.gz` is read too;
- a JSONL file with a text field (name configurable);
- a folder of such files (read recursively, in sorted order);
- a local Hugging Face dataset: a `save_to_disk` folder, or parquet/json files.
"""

from __future__ import annotations

import re
from pathlib import Path

from alignloop.data.jsonl import iter_jsonl, read_text
from alignloop.data.split import split_indices
from alignloop.errors import DataError

STORY_SEPARATOR = "<|endoftext|>"
TEXT_SUFFIXES = {".txt", ".md", ".text"}
JSON_SUFFIXES = {".jsonl", ".json"}


def _base_suffix(path: Path) -> str:
    return Path(path.stem).suffix if path.suffix == ".gz" else path.suffix


def split_text_documents(text: str) -> list[str]:
    """Documents of a plain text: `<|endoftext|>`-separated if marked, else blank-line blocks."""
    if STORY_SEPARATOR in text:
        parts = text.split(STORY_SEPARATOR)
    else:
        parts = re.split(r"\n\s*\n", text)
    return [p.strip() for p in parts if p.strip()]


def read_jsonl_texts(path: Path, text_field: str = "text") -> list[str]:
    """The `text_field` of every record of a JSONL file; a bad line is an error naming its number."""
    docs = []
    for number, record in iter_jsonl(path, "corpus file"):
        value = record.get(text_field)
        if not isinstance(value, str):
            raise DataError(f"{path} line {number}: record has no string {text_field!r} field (set data.text_field)")
        if value.strip():
            docs.append(value.strip())
    return docs


def _read_hf_dataset(path: Path, text_field: str) -> list[str]:
    import datasets  # imported here: slow to import and only needed for this format

    try:
        if (path / "dataset_info.json").exists() or (path / "state.json").exists() or (path / "dataset_dict.json").exists():
            data = datasets.load_from_disk(str(path))
        else:
            parquet = sorted(str(p) for p in path.rglob("*.parquet"))
            data = datasets.load_dataset("parquet", data_files=parquet, split="train")
    except Exception as exc:  # datasets raises many types for a bad folder
        raise DataError(f"cannot load the dataset in {path}: {str(exc).splitlines()[0]}") from None
    if isinstance(data, datasets.DatasetDict):
        split = "train" if "train" in data else next(iter(data))
        data = data[split]
    if text_field not in data.column_names:
        raise DataError(f"dataset {path} has no column {text_field!r} (columns: {', '.join(data.column_names)})")
    return [t.strip() for t in data[text_field] if isinstance(t, str) and t.strip()]


def read_corpus(path: Path | str, text_field: str = "text") -> list[str]:
    """All documents found at `path`; raises `DataError` when missing, unreadable or empty."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"corpus path {path} does not exist")
    if path.is_dir():
        if any(path.glob("*.parquet")) or any(path.glob("*/*.parquet")) or (path / "dataset_info.json").exists() \
                or (path / "dataset_dict.json").exists() or (path / "state.json").exists():
            docs = _read_hf_dataset(path, text_field)
        else:
            docs = []
            for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
                suffix = _base_suffix(file)
                if suffix in JSON_SUFFIXES:
                    docs.extend(read_jsonl_texts(file, text_field))
                elif suffix in TEXT_SUFFIXES:
                    docs.extend(split_text_documents(read_text(file)))
    elif path.suffix == ".parquet":
        import datasets

        try:
            data = datasets.load_dataset("parquet", data_files=[str(path)], split="train")
        except Exception as exc:
            raise DataError(f"cannot read parquet file {path}: {str(exc).splitlines()[0]}") from None
        if text_field not in data.column_names:
            raise DataError(f"{path} has no column {text_field!r}")
        docs = [t.strip() for t in data[text_field] if isinstance(t, str) and t.strip()]
    elif _base_suffix(path) in JSON_SUFFIXES:
        docs = read_jsonl_texts(path, text_field)
    else:
        docs = split_text_documents(read_text(path))
    if not docs:
        raise DataError(f"corpus {path} is empty: no documents found")
    return docs


def train_val_split(docs: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic split of documents by a seeded shuffle; at least one of each when possible."""
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"validation fraction must be in [0, 1), got {val_fraction}")
    train, val = split_indices(len(docs), val_fraction, seed)
    return [docs[i] for i in train], [docs[i] for i in val]
