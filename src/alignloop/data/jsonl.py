"""Reading data files (JSON lines, text; gzip or not) with errors that name the file and line.

Every reader of user data goes through here, so that every one of them is as
strict as the others: a file is gzip-decompressed when it is gzip (by its first
bytes, whatever its name), must be UTF-8, and each line must be standard JSON
(RFC 8259): `NaN` and `Infinity`, lone UTF-16 surrogates (`"\\ud800"`, which no
UTF-8 text can hold), integers of thousands of digits and nesting deeper than
`MAX_DEPTH` are refused with the line's number, never a traceback.

Lines are split at `\\n` only (a `\\r` before it is dropped): `str.splitlines`
would also split inside a JSON string holding U+2028 or U+0085, which
`json.dumps(..., ensure_ascii=False)` writes as they are.
"""

from __future__ import annotations

import gzip
import json
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alignloop.errors import DataError

GZIP_MAGIC = b"\x1f\x8b"
# Deeper than any record a person or a tool writes; far below the depth at which json recurses out.
MAX_DEPTH = 64
_SURROGATE = re.compile("[\ud800-\udfff]")


class _Refused(ValueError):
    """A value refused although `json.loads` reads it (NaN, a lone surrogate, runaway nesting, NUL)."""


def _refuse_constant(name: str) -> Any:
    raise _Refused(f"{name} is not valid JSON (write null or a number)")


def read_bytes(path: Path | str, what: str = "file") -> bytes:
    """The bytes of `path`, decompressed when they are gzip; a missing or damaged file is a DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} {path} does not exist")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    if raw[:2] == GZIP_MAGIC:
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{path} is a damaged gzip file ({exc})") from None
    if path.suffix == ".gz":
        raise DataError(f"{path} ends in .gz but is not gzip-compressed")
    return raw


def decode_utf8(raw: bytes, path: Path | str, first_line: int = 1) -> str:
    """`raw` (the file `path` from line `first_line` on) as text; a bad byte is a DataError naming its line."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = first_line + raw.count(b"\n", 0, exc.start)
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise DataError(f"{path} line {line}: not UTF-8 text (bad byte at column {column})") from None


def read_text(path: Path | str, what: str = "file") -> str:
    """The whole UTF-8 text of `path` (gzip-compressed or not)."""
    return decode_utf8(read_bytes(path, what), path)


def split_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) for every line that is not blank; split at `\\n` only."""
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            yield number, line.removesuffix("\r")


def _check_values(value: Any, forbid_nul: bool) -> None:
    """Refuse nesting past MAX_DEPTH, lone surrogates and (optionally) NUL in any string or key.

    Iterative, so a value nested as deep as `json` allows cannot exhaust the stack here.
    """
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            strings = (item,)
        elif isinstance(item, dict):
            strings = tuple(item)
            children = item.values()
        elif isinstance(item, list):
            strings, children = (), item
        else:
            continue
        for text in strings:
            if _SURROGATE.search(text):
                raise _Refused("a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff escape) is not text")
            if forbid_nul and "\x00" in text:
                raise _Refused("text holds a NUL character (\\u0000), which the feedback store cannot keep")
        if isinstance(item, (dict, list)):
            if depth > MAX_DEPTH:
                raise _Refused(f"nested deeper than {MAX_DEPTH} levels")
            stack.extend((child, depth + 1) for child in children)


def parse_json(text: str, where: str, forbid_nul: bool = False) -> Any:
    """One JSON value, strictly (see the module docstring); the error reads `WHERE: why`."""
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
        _check_values(value, forbid_nul)
        return value
    except json.JSONDecodeError as exc:
        at = "" if exc.msg.endswith(" at") else " at"  # "Unterminated string starting at"
        position = f"line {exc.lineno} column {exc.colno}" if exc.lineno > 1 else f"column {exc.colno}"
        why = f"not valid JSON ({exc.msg}{at} {position})"
    except RecursionError:
        why = f"nested deeper than {MAX_DEPTH} levels"
    except _Refused as exc:
        why = str(exc)
    except ValueError as exc:  # int("9" * 5000): past Python's digit limit
        why = f"a number too long to read ({str(exc).split(';')[0]})"
    raise DataError(f"{where}: {why}")


def jsonl_values(path: Path | str, what: str = "file", forbid_nul: bool = False) -> Iterator[tuple[int, Any]]:
    """(line number, value) for every non-blank line of a JSON-lines file."""
    path = Path(path)
    for number, line in split_lines(read_text(path, what)):
        yield number, parse_json(line, f"{path} line {number}", forbid_nul)


def iter_jsonl(path: Path | str, what: str = "file") -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) for every non-blank line; a line that is not a JSON object is a DataError."""
    for number, record in jsonl_values(path, what):
        if not isinstance(record, dict):
            raise DataError(f"{path} line {number}: expected a JSON object, got {type(record).__name__}")
        yield number, record
