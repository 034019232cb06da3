"""Text that can be stored: no lone UTF-16 surrogates anywhere in a value.

JSON allows `"\\ud800"`; Python then holds a string that cannot be encoded as
UTF-8. Stored in a JSON column it comes back on every read and breaks every
page that shows it, so it is refused where data comes in.
"""

from __future__ import annotations

import re
from typing import Any

from alignloop.errors import DataError

_SURROGATE = re.compile("[\ud800-\udfff]")
MAX_DEPTH = 64


def lone_surrogate_at(value: Any, where: str = "", depth: int = 0) -> str | None:
    """Where (a dotted path) a lone surrogate sits in `value` (strings, dict keys and values, lists), or None."""
    if depth > MAX_DEPTH:
        raise DataError(f"{where or 'the value'} is nested more than {MAX_DEPTH} levels deep")
    if isinstance(value, str):
        return where or "text" if _SURROGATE.search(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            here = f"{where}.{key}" if where else str(key)
            if isinstance(key, str) and _SURROGATE.search(key):
                return where or "a key"
            found = lone_surrogate_at(item, here, depth + 1)
            if found:
                return found
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = lone_surrogate_at(item, f"{where}[{index}]", depth + 1)
            if found:
                return found
    return None


def reject_lone_surrogates(value: Any, what: str) -> None:
    """Raise a one-line `DataError` if `value` holds a lone surrogate (text that is not valid Unicode)."""
    found = lone_surrogate_at(value)
    if found:
        # The path may itself hold the surrogate; ascii() keeps the message printable.
        raise DataError(f"{what}: {ascii(found)[1:-1]} holds a lone surrogate (\\ud800-\\udfff), which is not "
                        f"valid Unicode text")
