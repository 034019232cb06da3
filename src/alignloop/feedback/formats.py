"""Preference data in and out: TRL, Anthropic HH, our rich records, and responses to annotate.

Formats (one JSON object per line; a file may be gzip-compressed):

- `trl`: TRL's preference format. Standard `{"prompt": str, "chosen": str,
  "rejected": str}`, conversational (the three are lists of `{"role",
  "content"}` messages, role and content strings), or implicit prompt
  (`chosen`/`rejected` only, the prompt being their shared beginning). Other
  keys are kept and written back. The prompt may not be empty.
- `hh`: Anthropic HH-RLHF, `{"chosen": transcript, "rejected": transcript}`,
  turns introduced by `\\n\\nHuman: ` and `\\n\\nAssistant: `; both transcripts
  start with a Human turn. The prompt is the dialogue up to the final
  `\\n\\nAssistant:`; the two replies follow it. No `prompt` key (that is TRL).
- `responses`: model outputs to annotate, `{"prompt": str, "responses": [str
  or {"text", "model"?, "sampling"?, "meta"?}], "model"?, "kind"?, "gold"?,
  "overlap"?, "meta"?}` (`response`: one string, for one response; no
  responses: the prompt alone, for `alignloop sample`).
- `rich` (export only): every judgment with its prompt, responses, annotator,
  choice and strength or ranking, aspect ratings, critique, rewrite, timing.

`--format auto` reads the format off the first record's keys (`record_format`);
every line must then be in that format, and a line in another format is an
error naming the format it is in. Lines are standard JSON (no NaN, no lone
surrogates, no NUL in text: `alignloop.data.jsonl`).

Import is all or nothing: every line is parsed and checked first (a bad line
is reported with its number), then everything is stored in one transaction.
A preference whose chosen and rejected are the same is left out and listed by
line. Import is idempotent: each record's content key (`content_key`) is kept
with its prompt, and a record the store already holds is not stored again.
Import then export of `trl` or `hh` gives back the same records.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from alignloop import atomic
from alignloop.data.jsonl import decode_utf8, parse_json, read_bytes, split_lines
from alignloop.errors import DataError
from alignloop.feedback.models import CHOICES, ITEM_KINDS

if TYPE_CHECKING:
    from alignloop.feedback.store import Store

IMPORT_FORMATS = ("auto", "trl", "hh", "responses")
EXPORT_FORMATS = ("trl", "hh", "rich")
HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"
# Integer columns are 32-bit on PostgreSQL: a larger overlap cannot be stored.
INT32_MAX = 2**31 - 1
IDENTICAL = "chosen identical to rejected"
REPEATED = "repeated in the file"


def parse_jsonl(text: str, name: str) -> list[tuple[int, Any]]:
    """(line number, value) for every non-blank line, strictly (`alignloop.data.jsonl.parse_json`).

    Text that the store could not hold (a NUL character: PostgreSQL refuses it) is refused
    here too, so a file imports alike into SQLite and PostgreSQL.
    """
    out = [(number, parse_json(line, f"{name} line {number}", forbid_nul=True)) for number, line in split_lines(text)]
    if not out:
        raise DataError(f"{name} holds no records")
    return out


def record_format(obj: Any) -> Optional[str]:
    """The import format a record's keys say it is in (`trl`, `hh`, `responses`), or None.

    `chosen`/`rejected` make a preference: HH when there is no `prompt` and `chosen`
    is a transcript (starts with `\\n\\nHuman:`), else TRL. A `prompt` alone is a
    responses record.
    """
    if not isinstance(obj, dict):
        return None
    if "chosen" in obj or "rejected" in obj:
        if "prompt" not in obj and isinstance(obj.get("chosen"), str) and obj["chosen"].startswith(HUMAN):
            return "hh"
        return "trl"
    if "prompt" in obj or "responses" in obj or "response" in obj:
        return "responses"
    return None


def detect_format(obj: Any, where: str = "the first record") -> str:
    """The format of the first record, for `--format auto`."""
    fmt = record_format(obj)
    if fmt is None:
        raise DataError(f"{where}: cannot tell the format (a JSON object with 'chosen' and 'rejected', or "
                        f"with 'prompt' and 'responses', was expected); pass --format trl, hh or responses")
    return fmt


def _check_format(obj: Any, fmt: str, where: str) -> None:
    """A record of another format than the one told is an error naming the one it matches."""
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    matches = record_format(obj)
    if matches is not None and matches != fmt and not (fmt == "trl" and matches == "hh"):
        # (An HH pair is also a TRL pair with an implicit prompt, so --format trl takes it.)
        keys = ", ".join(repr(k) for k in obj if k in ("prompt", "chosen", "rejected", "responses", "response"))
        raise DataError(f"{where}: this record ({keys}) is in the {matches} format, not {fmt}; "
                        f"pass --format {matches}")


def _missing_keys(obj: dict, keys: tuple[str, ...]) -> str:
    missing = [k for k in keys if k not in obj]
    return f" (this one has no {' and no '.join(repr(k) for k in missing)})" if missing else ""


# ---- TRL ------------------------------------------------------------------------------

def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value)


def messages_text(messages: list[dict[str, Any]]) -> str:
    """A chat as one text, for display and for models that read text: `role: content` turns."""
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)


def common_prefix(a: list | str, b: list | str) -> int:
    """The length of the shared beginning of two strings or lists."""
    n = 0
    while n < len(a) and n < len(b) and a[n] == b[n]:
        n += 1
    return n


def _empty_prompt(where: str, implicit: bool) -> DataError:
    if implicit:
        return DataError(f"{where}: the prompt is empty: TRL's implicit prompt is the shared beginning of "
                         f"'chosen' and 'rejected', and these share none; add a 'prompt'")
    return DataError(f"{where}: the prompt is empty")


def trl_to_record(obj: Any, where: str) -> dict[str, Any]:
    """A TRL preference line as a store preference record (text for display, exact form in meta)."""
    if not isinstance(obj, dict) or "chosen" not in obj or "rejected" not in obj:
        detail = _missing_keys(obj, ("chosen", "rejected")) if isinstance(obj, dict) else ""
        raise DataError(f"{where}: a TRL record needs both 'chosen' and 'rejected'{detail}")
    chosen, rejected, prompt = obj["chosen"], obj["rejected"], obj.get("prompt")
    extra = {k: v for k, v in obj.items() if k not in ("prompt", "chosen", "rejected")}
    meta: dict[str, Any] = {"format": "trl", "extra": extra} if extra else {"format": "trl"}
    implicit = prompt is None
    if all(isinstance(v, str) for v in (chosen, rejected)) and (prompt is None or isinstance(prompt, str)):
        if implicit:
            # Implicit prompt: the shared beginning of the two texts.
            cut = common_prefix(chosen, rejected)
            prompt, chosen, rejected = chosen[:cut], chosen[cut:], rejected[cut:]
            meta["implicit"] = True
        if not prompt.strip():
            raise _empty_prompt(where, implicit)
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "prompt_meta": meta}
    if _is_messages(chosen) and _is_messages(rejected) and (prompt is None or _is_messages(prompt)):
        if implicit:
            cut = common_prefix(chosen, rejected)
            prompt, chosen, rejected = chosen[:cut], chosen[cut:], rejected[cut:]
            meta["implicit"] = True
        if not any(m["content"].strip() for m in prompt):
            raise _empty_prompt(where, implicit)
        meta["messages"] = prompt
        return {"prompt": messages_text(prompt), "chosen": messages_text(chosen),
                "rejected": messages_text(rejected), "prompt_meta": meta,
                "chosen_meta": {"messages": chosen}, "rejected_meta": {"messages": rejected}}
    raise DataError(f"{where}: 'prompt', 'chosen' and 'rejected' must all be strings or all lists of "
                    "{role, content} messages with string role and content")


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
    for name, text in (("chosen", chosen), ("rejected", rejected)):
        if not text.startswith(HUMAN):
            raise DataError(f"{where}: '{name}' is not an HH transcript (it must start with '\\n\\nHuman:')")
    prompt, chosen_rest = _split_final_reply(chosen)
    if not rejected.startswith(prompt) or not prompt:
        # The dialogues differ before the final turn: keep only what they share.
        shared = chosen[:common_prefix(chosen, rejected)]
        prompt, _ = _split_final_reply(shared)
        chosen_rest = chosen[len(prompt):]
    if not prompt:
        raise DataError(f"{where}: the two transcripts share no '\\n\\nAssistant:' turn, so no prompt comes before "
                        f"the replies")
    rejected_rest = rejected[len(prompt):]
    chosen_text, chosen_meta = _reply(chosen_rest)
    rejected_text, rejected_meta = _reply(rejected_rest)
    extra = {k: v for k, v in obj.items() if k not in ("chosen", "rejected")}
    meta: dict[str, Any] = {"format": "hh"}
    if extra:
        meta["extra"] = extra
    return {"prompt": prompt, "chosen": chosen_text, "rejected": rejected_text, "prompt_meta": meta,
            "chosen_meta": chosen_meta or None, "rejected_meta": rejected_meta or None}


def identical(chosen: str, rejected: str) -> bool:
    """Two responses that teach nothing when compared: the same text, whitespace around it aside."""
    return chosen.strip() == rejected.strip()


def preference_record(obj: Any, where: str, fmt: Optional[str] = None) -> dict[str, Any]:
    """A TRL or HH line (format told, or read from its keys) as a preference record."""
    fmt = fmt or record_format(obj)
    if fmt == "hh":
        return hh_to_record(obj, where)
    if fmt == "trl" or (isinstance(obj, dict) and "prompt" in obj):
        return trl_to_record(obj, where)
    raise DataError(f"{where}: a preference record needs 'chosen' and 'rejected' (TRL or Anthropic HH)")


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

def _whole_number(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_optional(record: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str, where: str) -> None:
    if record.get(key) is not None and not isinstance(record[key], kind):
        raise DataError(f"{where}: '{key}' must be {what}, not {json.dumps(record[key])[:40]}")


def _check_gold(gold: Any, kind: str, count: int, where: str) -> None:
    if kind == "pair" and (not isinstance(gold, dict) or gold.get("choice") not in CHOICES):
        raise DataError(f"{where}: a pair's 'gold' must be {{\"choice\": \"a\"}} (a, b, tie or both_bad)")
    if kind == "ranking":
        positions = gold.get("ranking") if isinstance(gold, dict) else None
        if not isinstance(positions, list) or not all(_whole_number(p) for p in positions) \
                or sorted(positions) != list(range(count)):
            raise DataError(f"{where}: a ranking's 'gold' must be {{\"ranking\": [...]}} listing the positions "
                            f"0..{count - 1}, best first")
    if kind == "rating":
        raise DataError(f"{where}: a rating item cannot have 'gold'")


def responses_record(obj: Any, where: str, kind: str = "auto") -> dict[str, Any]:
    """Check one `responses` line; a line with `response` (singular) is a one-response record.

    `kind` is the import's `--kind`: "auto" takes the record's own `kind` or its count.
    """
    if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
        raise DataError(f"{where}: a responses record needs a 'prompt' string")
    if not obj["prompt"].strip():
        raise DataError(f"{where}: the prompt is empty")
    record = dict(obj)
    if "response" in record:
        if "responses" in record:
            raise DataError(f"{where}: give 'responses' (a list) or 'response' (one), not both")
        record["responses"] = [record.pop("response")]
    responses = record.get("responses")
    responses = [] if responses is None else responses
    if not isinstance(responses, list):
        raise DataError(f"{where}: 'responses' must be a list of strings or {{\"text\": ...}} objects")
    _check_optional(record, "model", str, "a string", where)
    _check_optional(record, "meta", dict, "an object", where)
    clean = []
    for r in responses:
        if isinstance(r, str):
            clean.append({"text": r, "model": record.get("model")})
        elif isinstance(r, dict) and isinstance(r.get("text"), str):
            for key, types, what in (("model", str, "a string"), ("sampling", dict, "an object"),
                                     ("meta", dict, "an object")):
                _check_optional(r, key, types, what, where)
            clean.append({**r, "model": r.get("model", record.get("model"))})
        else:
            raise DataError(f"{where}: each response must be a string or an object with a 'text' string")
    record["responses"] = clean
    own = record.get("kind")
    if own is not None and own not in ITEM_KINDS:
        raise DataError(f"{where}: 'kind' must be one of {', '.join(ITEM_KINDS)}, not {json.dumps(own)[:40]}")
    n = len(clean)
    if kind == "auto":  # one item of the record's kind, or of its count's
        item_kind = own or {0: None, 1: "rating", 2: "pair"}.get(n, "ranking")
        fits = item_kind is None or {"pair": n == 2, "ranking": n >= 2, "rating": n == 1}[item_kind]
    else:  # --kind: all pairs, one ranking, or one rating item per response
        item_kind = kind
        fits = n >= 2 or (kind == "rating" and n == 1)
    if not fits:
        raise DataError(f"{where}: {n} responses do not make a {item_kind} item")
    overlap = record.get("overlap")
    if overlap is not None and not (_whole_number(overlap) and 1 <= overlap <= INT32_MAX):
        raise DataError(f"{where}: 'overlap' (annotators per item) must be a positive whole number, "
                        f"not {json.dumps(overlap)[:40]}")
    if record.get("gold") is not None:
        if kind != "auto" or not clean:
            raise DataError(f"{where}: 'gold' is for a record that makes one item (responses, and --kind auto)")
        _check_gold(record["gold"], item_kind, n, where)
    return record


# ---- import ---------------------------------------------------------------------------------

@dataclass
class ImportPlan:
    """What an import file holds, checked: the records to store (each with its content key) and
    the lines left out and why. Reading it touches no store."""

    format: str
    name: str
    kind: str = "auto"
    records: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, list[int]] = field(default_factory=dict)  # reason -> line numbers


def content_key(fmt: str, kind: str, obj: Any) -> str:
    """What makes two imported records the same: format, --kind, and the record itself (key order aside)."""
    text = json.dumps([fmt, kind if fmt == "responses" else None, obj], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def plan_import(text: str, fmt: str = "auto", *, name: str = "input", kind: str = "auto") -> ImportPlan:
    """Parse and check a whole import file; any bad line is a `DataError` naming it, and nothing is stored.

    A preference whose chosen and rejected texts are the same, and a record repeated in the file,
    are left out (and listed in `.skipped` by line).
    """
    if fmt not in IMPORT_FORMATS:
        raise DataError(f"import format must be one of {', '.join(IMPORT_FORMATS)}, not {fmt!r}")
    if kind != "auto" and kind not in ITEM_KINDS:
        raise DataError(f"--kind must be auto, {', '.join(ITEM_KINDS)}, not {kind!r}")
    lines = parse_jsonl(text, name)
    if fmt == "auto":
        fmt = detect_format(lines[0][1], f"{name} line {lines[0][0]}")
    if kind != "auto" and fmt != "responses":
        raise DataError(f"--kind is for the responses format; {name} is {fmt}")
    plan = ImportPlan(fmt, name, kind)
    seen: set[str] = set()
    for number, obj in lines:
        where = f"{name} line {number}"
        _check_format(obj, fmt, where)
        if fmt == "responses":
            record = responses_record(obj, where, kind)
        else:
            record = preference_record(obj, where, fmt)
            if identical(record["chosen"], record["rejected"]):
                plan.skipped.setdefault(IDENTICAL, []).append(number)
                continue
        key = content_key(fmt, kind, obj)
        if key in seen:
            plan.skipped.setdefault(REPEATED, []).append(number)
            continue
        seen.add(key)
        record["import_key"] = key
        plan.records.append(record)
    return plan


def apply_import(store: "Store", plan: ImportPlan, round_id: Optional[int] = None) -> dict[str, Any]:
    """Store the plan's records that the store does not hold yet (by content key), in one transaction.

    Returns `{"format", "records", "items", "already", "skipped"}`: records stored now, items made,
    records found already imported, and the lines left out by reason.
    """
    from sqlalchemy.exc import IntegrityError

    known = store.known_import_keys([r["import_key"] for r in plan.records])
    new = [r for r in plan.records if r["import_key"] not in known]
    try:
        if not new:
            items = []
        elif plan.format in ("trl", "hh"):
            items = store.import_preferences(new, source=plan.format, round_id=round_id)
        elif plan.kind == "auto":
            items = store.add_items(new, round_id=round_id, source=f"import:{plan.format}")
        else:
            items = store.add_samples(round_id, new, plan.kind, source=f"import:{plan.format}")
    except IntegrityError:
        raise DataError(f"another import of records from {plan.name} ran at the same time; nothing was stored "
                        f"by this one: run it again to add what is still missing") from None
    return {"format": plan.format, "records": len(new), "items": len(items),
            "already": len(plan.records) - len(new), "skipped": plan.skipped}


def import_text(store: "Store", text: str, fmt: str = "auto", *, name: str = "input",
                round_id: Optional[int] = None, kind: str = "auto") -> dict[str, Any]:
    """Import JSONL `text` (see `plan_import` and `apply_import`). Nothing is stored on any error.

    `kind` (responses only): "auto" (1 response: rating, 2: pair, more:
    ranking, unless the record says), or "pair" (every pair of the
    responses), "ranking" or "rating" for all records.
    """
    return apply_import(store, plan_import(text, fmt, name=name, kind=kind), round_id)


def read_import_file(path: Path, fmt: str = "auto", kind: str = "auto") -> ImportPlan:
    """Read and check an import file (gzip or not) before any store is opened."""
    path = Path(path)
    return plan_import(decode_utf8(read_bytes(path, "import file"), path), fmt, name=str(path), kind=kind)


def import_file(store: "Store", path: Path, fmt: str = "auto", *, round_id: Optional[int] = None,
                kind: str = "auto") -> dict[str, Any]:
    return apply_import(store, read_import_file(path, fmt, kind), round_id)


def describe_import(summary: dict[str, Any], source: str) -> str:
    """One line for people: what was imported, what was already there, what was left out (by line)."""
    fmt = summary["format"]
    if summary["records"]:
        parts = [f"imported {summary['records']} {fmt} records as {summary['items']} items from {source}"]
    else:
        parts = [f"nothing new imported from {source}"]
    if summary["already"]:
        parts.append(f"{summary['already']} {fmt} records were already in the store (imported before)")
    for reason, lines in summary["skipped"].items():
        parts.append(f"left out {len(lines)} {reason} ({line_list(lines)})")
    return "; ".join(parts)


def line_list(lines: list[int], limit: int = 8) -> str:
    """'line 4' / 'lines 4, 9 and 3 more'."""
    shown = ", ".join(str(n) for n in lines[:limit])
    more = f" and {len(lines) - limit} more" if len(lines) > limit else ""
    return f"line{'s' if len(lines) > 1 else ''} {shown}{more}"


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
