"""Account names: what a valid name is, which prefixes are reserved, and when two names are the same.

Pure functions, shared by the store (which enforces them on every path that
creates an account) and migration 0003 (which keys the existing names).

Two names are the same account name when their keys are equal: the key is the
name after Unicode compatibility normalisation (NFKC: full-width letters,
ligatures), case folding, and a short table that maps the Cyrillic and Greek
letters that look like Latin ones to those Latin letters. So `Admin`, `ａｄｍｉｎ`
and `аdmin` (Cyrillic а) cannot be taken once `admin` exists.
"""

from __future__ import annotations

import unicodedata
from typing import Optional

from alignloop.errors import DataError

MAX_NAME = 100
MAX_KEY = 255
# A prefix -> the only origin whose accounts may carry it. Imported labels are attributed to
# `import:<source>`; simulated annotators are `sim-<persona>`. A person taking either name
# would have labels that are not theirs counted as theirs.
RESERVED_PREFIXES = {"import:": "import", "sim-": "simulated"}
ORIGINS = ("person", "simulated", "import")

# Lower-case Cyrillic and Greek letters drawn like Latin ones (after case folding).
_LOOKALIKES = str.maketrans({
    "а": "a", "е": "e", "о": "o", "р": "p", "с": "c", "у": "y", "х": "x", "ѕ": "s", "і": "i", "ј": "j",
    "ԁ": "d", "һ": "h", "ӏ": "l", "ԛ": "q", "ԝ": "w", "ѵ": "v", "ү": "y", "ғ": "f",
    "α": "a", "ο": "o", "ρ": "p", "ν": "v", "ι": "i", "κ": "k", "υ": "u", "χ": "x", "τ": "t", "ϲ": "c",
    "ϳ": "j", "ѡ": "w",
})
# Control, format (zero-width, bidirectional overrides), surrogate, private-use, unassigned.
_INVISIBLE = {"Cc", "Cf", "Cs", "Co", "Cn"}


def name_key(name: str) -> str:
    """The form two account names are compared in (see the module docstring)."""
    folded = unicodedata.normalize("NFKC", name).casefold().translate(_LOOKALIKES)
    return unicodedata.normalize("NFKC", folded)


def reserved_prefix(name: str) -> Optional[str]:
    """The reserved prefix `name` starts with (compared by key), or None."""
    key = name_key(name)
    return next((prefix for prefix in RESERVED_PREFIXES if key.startswith(prefix)), None)


def check_name(name: object, origin: str = "person") -> str:
    """The name, stripped, if an account of `origin` may have it; else a `DataError` saying why."""
    if not isinstance(name, str):
        raise DataError("a user name must be text")
    name = name.strip()
    shown = name if len(name) <= 40 else name[:40] + "..."
    if not name or len(name) > MAX_NAME:
        raise DataError(f"a user name must be 1-{MAX_NAME} characters")
    if any(c.isspace() for c in name) or any(unicodedata.category(c) in _INVISIBLE for c in name):
        raise DataError(f"user name {ascii(shown)} must not contain spaces, control or invisible characters")
    key = name_key(name)
    if len(key) > MAX_KEY or any(c.isspace() for c in key):
        raise DataError(f"user name {ascii(shown)} uses characters that cannot be told apart from spaces")
    if origin not in ORIGINS:
        raise DataError(f"origin must be one of {', '.join(ORIGINS)}, not {origin!r}")
    prefix = reserved_prefix(name)
    if prefix is not None and RESERVED_PREFIXES[prefix] != origin:
        raise DataError(f"names starting with {prefix!r} are reserved for {RESERVED_PREFIXES[prefix]} accounts")
    return name
