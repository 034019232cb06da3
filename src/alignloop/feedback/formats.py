"""Preference data in and out: TRL, Anthropic HH, our rich records, and responses to annotate.

Formats (one JSON object per line):

- `trl`: TRL's preference format. Standard `{"prompt": str, "chosen": str,
  "rejected": str}`, conversational (the three are lists of `{"role",
  "content"}` messages), or implicit prompt (`chosen`/`rejected` only, the
  prompt being their shared beginning). Other keys are kept and written back.
- `hh`: Anthropic HH-RLHF, `{"chosen": transcript, "rejected": transcript}`,
  turns introduced by `\\n\\nHuman: ` and `\\n\\nAssistant: `. The prompt is the
  dialogue up to the final `\\n\\nAssistant:`; the two replies follow it.
- `responses`: model outputs to annotate, `{"prompt": str, "responses": [str
  or {"text", "model"}], "model"?, "kind"?, "gold"?, "overlap"?}`.
- `rich` (export only): every judgment with its prompt, responses, annotator,
  choice and strength or ranking, aspect ratings, critique, rewrite, timing.

Import is all or nothing: every line is parsed and checked first (a bad line
is reported with its number), then everything is stored in one transaction.
Import then export of `trl` or `hh` gives back the same records.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from alignloop import atomic
from alignloop.errors import DataError

if TYPE_CHECKING:
    from alignloop.feedback.store import Store

IMPORT_FORMATS = ("auto", "trl", "hh", "responses")
EXPORT_FORMATS = ("trl", "hh", "rich")
HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"


def parse_jsonl(text: str, name: str) -> list[tuple[int, Any]]:
    """(line number, object) for every non-blank line; a bad line raises `DataError` naming it."""
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append((number, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise DataError(f"{name} line {number}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not out:
        raise DataError(f"{name} holds no records")
    return out


def detect_format(obj: Any) -> str:
    if isinstance(obj, dict):
        if "chosen" in obj and "rejected" in obj:
            if "prompt" not in obj and isinstance(obj["chosen"], str) and obj["chosen"].startswith(HUMAN):
                return "hh"
            return "trl"
        if "prompt" in obj:
            return "responses"
    raise DataError("cannot tell the format from the first record; pass --format trl, hh or responses")


# ---- TRL ------------------------------------------------------------------------------

def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)


def _messages_text(messages: list[dict[str, Any]]) -> str:
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)


def _common_prefix(a: list | str, b: list | str) -> int:
    n = 0
    while n < len(a) and n < len(b) and a[n] == b[n]:
        n += 1
    return n


def trl_to_record(obj: Any, where: str) -> dict[str, Any]:
    """A TRL preference line as a store preference record (text for display, exact form in meta)."""
    if not isinstance(obj, dict) or "chosen" not in obj or "rejected" not in obj:
        raise DataError(f"{where}: a TRL record needs 'chosen' and 'rejected'")
    chosen, rejected, prompt = obj["chosen"], obj["rejected"], obj.get("prompt")
    extra = {k: v for k, v in obj.items() if k not in ("prompt", "chosen", "rejected")}
    meta: dict[str, Any] = {"format": "trl", "extra": extra} if extra else {"format": "trl"}
    if all(isinstance(v, str) for v in (chosen, rejected)) and (prompt is None or isinstance(prompt, str)):
        if prompt is None:
            # Implicit prompt: the shared beginning of the two texts.
            cut = _common_prefix(chosen, rejected)
            prompt, chosen, rejected = chosen[:cut], chosen[cut:], rejected[cut:]
            meta["implicit"] = True
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "prompt_meta": meta}
    if _is_messages(chosen) and _is_messages(rejected) and (prompt is None or _is_messages(prompt)):
        if prompt is None:
            cut = _common_prefix(chosen, rejected)
            prompt, chosen, rejected = chosen[:cut], chosen[cut:], rejected[cut:]
            meta["implicit"] = True
        meta["messages"] = prompt
        return {"prompt": _messages_text(prompt), "chosen": _messages_text(chosen),
                "rejected": _messages_text(rejected), "prompt_meta": meta,
                "chosen_meta": {"messages": chosen}, "rejected_meta": {"messages": rejected}}
    raise DataError(f"{where}: 'prompt', 'chosen' and 'rejected' must all be strings or all lists of "
                    "{role, content} messages")


def record_to_trl(record: dict[str, Any]) -> dict[str, Any]:
    """A preference record in TRL's format (conversational when it was imported so)."""
    meta = record.get("prompt_meta") or {}
    chosen_meta, rejected_meta = record.get("chosen_meta") or {}, record.get("rejected_meta") or {}
    if meta.get("format") == "hh":
        prompt = record["prompt"]
        chosen = chosen_meta.get("hh_sep", " ") + record["chosen"]
        rejected = rejected_meta.get("hh_sep", " ") + record["rejected"]
    elif "messages" in meta and "messages" in chosen_meta and "messages" in rejected_meta:
        prompt, chosen, rejected = meta["messages"], chosen_meta["messages"], rejected_meta["messages"]
    else:
        prompt, chosen, rejected = record["prompt"], record["chosen"], record["rejected"]
    if meta.get("implicit"):
        out = {"chosen": prompt + chosen, "rejected": prompt + rejected}
    else:
        out = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    for key, value in (meta.get("extra") or {}).items():
        out.setdefault(key, value)
    if record.get("tie"):
        out["tie"] = True
    return out


# ---- Anthropic HH ------------------------------------------------------------------------

def _split_final_reply(transcript: str) -> tuple[str, str]:
    cut = transcript.rfind(ASSISTANT)
    if cut < 0:
        return "", transcript
    cut += len(ASSISTANT)
    return transcript[:cut], transcript[cut:]


def _reply(rest: str) -> tuple[str, dict[str, Any]]:
    # The reply text without the one space that follows "Assistant:"; anything else is remembered.
    if rest.startswith(" "):
        return rest[1:], {}
    return rest, {"hh_sep": ""}


def hh_to_record(obj: Any, where: str) -> dict[str, Any]:
    """An HH line as a store preference record: the dialogue so far, then the two final replies."""
    if not isinstance(obj, dict) or not isinstance(obj.get("chosen"), str) or not isinstance(obj.get("rejected"), str):
        raise DataError(f"{where}: an HH record needs 'chosen' and 'rejected' transcripts (strings)")
    chosen, rejected = obj["chosen"], obj["rejected"]
    prompt, chosen_rest = _split_final_reply(chosen)
    if not rejected.startswith(prompt) or not prompt:
        # The dialogues differ before the final turn: keep only what they share.
        shared = chosen[:_common_prefix(chosen, rejected)]
        prompt, _ = _split_final_reply(shared)
        chosen_rest = chosen[len(prompt):]
    rejected_rest = rejected[len(prompt):]
    chosen_text, chosen_meta = _reply(chosen_rest)
    rejected_text, rejected_meta = _reply(rejected_rest)
    extra = {k: v for k, v in obj.items() if k not in ("chosen", "rejected")}
    meta: dict[str, Any] = {"format": "hh"}
    if extra:
        meta["extra"] = extra
    return {"prompt": prompt, "chosen": chosen_text, "rejected": rejected_text, "prompt_meta": meta,
            "chosen_meta": chosen_meta or None, "rejected_meta": rejected_meta or None}


def record_to_hh(record: dict[str, Any]) -> dict[str, Any]:
    """A preference record as an HH pair of transcripts."""
    meta = record.get("prompt_meta") or {}
    if meta.get("format") == "hh":
        prefix = record["prompt"]
    elif record["prompt"].startswith(HUMAN) and record["prompt"].endswith(ASSISTANT):
        # A TRL export of HH data (prompt = the dialogue, replies with their leading space).
        out = {"chosen": record["prompt"] + record["chosen"], "rejected": record["prompt"] + record["rejected"]}
        if record.get("tie"):
            out["tie"] = True
        return out
    elif "messages" in meta:
        turns = [f"\n\n{'Human' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in meta["messages"]]
        prefix = "".join(turns) + ASSISTANT
    else:
        prefix = f"{HUMAN} {record['prompt']}{ASSISTANT}"
    chosen_sep = (record.get("chosen_meta") or {}).get("hh_sep", " ")
    rejected_sep = (record.get("rejected_meta") or {}).get("hh_sep", " ")
    out = {"chosen": prefix + chosen_sep + record["chosen"], "rejected": prefix + rejected_sep + record["rejected"]}
    for key, value in (meta.get("extra") or {}).items():
        out.setdefault(key, value)
    if record.get("tie"):
        out["tie"] = True
    return out


# ---- responses to annotate -----------------------------------------------------------------

def responses_record(obj: Any, where: str) -> dict[str, Any]:
    """Check one `responses` line; a line with `response` (singular) is a one-response record."""
    if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
        raise DataError(f"{where}: a responses record needs a 'prompt' string")
    record = dict(obj)
    if "response" in record and "responses" not in record:
        record["responses"] = [record.pop("response")]
    responses = record.get("responses", [])
    if not isinstance(responses, list):
        raise DataError(f"{where}: 'responses' must be a list")
    clean = []
    for r in responses:
        if isinstance(r, str):
            clean.append({"text": r, "model": record.get("model")})
        elif isinstance(r, dict) and isinstance(r.get("text"), str):
            clean.append({**r, "model": r.get("model", record.get("model"))})
        else:
            raise DataError(f"{where}: each response must be a string or an object with a 'text' string")
    record["responses"] = clean
    return record


# ---- import and export ----------------------------------------------------------------------

def import_text(store: "Store", text: str, fmt: str = "auto", *, name: str = "input",
                round_id: Optional[int] = None, kind: str = "auto") -> dict[str, Any]:
    """Import JSONL `text`; returns `{"format", "records", "items"}`. Nothing is stored on any error.

    `kind` (responses only): "auto" (1 response: rating, 2: pair, more:
    ranking, unless the record says), or "pair" (every pair of the
    responses), "ranking" or "rating" for all records.
    """
    if fmt not in IMPORT_FORMATS:
        raise DataError(f"import format must be one of {', '.join(IMPORT_FORMATS)}, not {fmt!r}")
    lines = parse_jsonl(text, name)
    if fmt == "auto":
        fmt = detect_format(lines[0][1])
    source = f"import:{fmt}"
    if fmt in ("trl", "hh"):
        convert = trl_to_record if fmt == "trl" else hh_to_record
        records = [convert(obj, f"{name} line {number}") for number, obj in lines]
        items = store.import_preferences(records, source=fmt, round_id=round_id)
    else:
        records = [responses_record(obj, f"{name} line {number}") for number, obj in lines]
        if kind == "auto":
            items = store.add_items(records, round_id=round_id, source=source)
        else:
            items = store.add_samples(round_id, records, kind, source=source)
    return {"format": fmt, "records": len(records), "items": len(items)}


def import_file(store: "Store", path: Path, fmt: str = "auto", **kwargs: Any) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text") from None
    return import_text(store, text, fmt, name=str(path), **kwargs)


def rich_record(row: dict[str, Any]) -> dict[str, Any]:
    """One judgment as our rich record."""
    keep = ("judgment_id", "item_id", "kind", "round", "item_source", "prompt", "responses", "annotator",
            "annotator_origin", "choice", "strength", "ranking", "ratings", "critique", "rewrite",
            "time_spent_ms", "created_at", "gold")
    out = {k: row.get(k) for k in keep}
    out["ratings"] = {str(k): v for k, v in (row.get("ratings") or {}).items()}
    return out


def export_lines(store: "Store", fmt: str, *, round_id: Optional[int] = None, aggregate: str = "majority",
                 ties: str = "drop") -> list[dict[str, Any]]:
    """The records `alignloop feedback export` writes, as dicts."""
    if fmt not in EXPORT_FORMATS:
        raise DataError(f"export format must be one of {', '.join(EXPORT_FORMATS)}, not {fmt!r}")
    if fmt == "rich":
        return [rich_record(row) for row in store.judgment_rows(round_id)]
    records = store.preference_records(round_id, aggregate=aggregate, ties=ties)
    convert = record_to_trl if fmt == "trl" else record_to_hh
    return [convert(r) for r in records]


def export_file(store: "Store", fmt: str, out: Path, **kwargs: Any) -> int:
    """Write the export to `out` atomically; returns the number of records."""
    lines = export_lines(store, fmt, **kwargs)
    atomic.write_text(Path(out), "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
    return len(lines)
